"""Every decision of the reconcile loop's job part, against a fake agent (no host).

A job is submitted and placed by the real scheduler; each pass of `reconcile_host` then starts,
follows, finishes, stops or requeues it through the fake agent, which answers as docs/agent.md
says the host does. test_jobs_on_host.py proves the same on the test host with the real agent.
"""

import io
import logging
import tarfile
from datetime import timedelta

import pytest
import time_machine
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.booking.models import Allocation
from portal.inventory.models import Host
from portal.jobs import scheduler
from portal.jobs.models import Job
from portal.jobs.services import job_cancel, job_submit, job_submit_tasks, write_array_tasks
from portal.operations import services
from provisioning.client import DeviceRef
from tests.factories import (
    PartnerMembershipFactory,
)
from tests.operations.loop import NOW, gpu_host, healthy

pytestmark = pytest.mark.django_db
J = Job.State


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def host(clock, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    settings.JOBS_STOP_GRACE_SECONDS = 7
    return gpu_host()


@pytest.fixture
def agent(fake_agents, host):
    return healthy(fake_agents[host])


@pytest.fixture
def member(db):
    return PartnerMembershipFactory(project__max_walltime_hours=48)


def submit(member, host, script="python3 train.py\n", **kwargs) -> Job:
    job = job_submit(
        project=member.project, submitter=member.user, name="train", script=script,
        stack=host.stacks.get(name="cuda-12"), walltime=timedelta(hours=1), code_licence="MIT",
        data_licence="CC0-1.0", model_freedom="free", **kwargs,
    )  # fmt: skip
    assert job.pk in scheduler.schedule().placed
    return Job.objects.get(pk=job.pk)


def reconcile(host) -> str:
    return services.reconcile_host(host.pk)


def fresh(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


def held(job: Job) -> Allocation:
    return Allocation.objects.get(job=job)


def tarball(files: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return data.getvalue()


def test_it_starts_a_placed_job_as_its_projects_account_on_its_devices(host, agent, member):
    job = submit(member, host, env={"EPOCHS": "3"}, input_git_url="https://example.org/m.git")
    device = held(job).accelerator

    reconcile(host)

    assert agent.called("job-start") == [
        {
            "job": f"j{job.pk}",
            "account": f"pj-{member.project_id}",
            "stack": "cuda-12",
            "devices": [DeviceRef("nvidia", device.index)],
            "script": "python3 train.py\n",
            "env": {"EPOCHS": "3"},
            "walltime_s": 3600,
            "grace_s": 7,
            "input": {"git": "https://example.org/m.git"},
        }
    ]
    job = fresh(job)
    assert (job.state, job.started_at) == (J.RUNNING, NOW)
    assert held(job).start == NOW  # usage counts from its start


def test_it_tells_each_task_of_an_array_its_array_and_index(host, agent, member):
    (first,) = job_submit_tasks(
        project=member.project, submitter=member.user, name="sweep", script="true\n",
        stack=host.stacks.get(name="cuda-12"), walltime=timedelta(hours=1), code_licence="MIT",
        data_licence="CC0-1.0", model_freedom="free", array=2,
    )  # fmt: skip
    assert write_array_tasks() == 1  # the schedule task's first step: the array's other task
    second = Job.objects.get(array=first, array_index=1)
    assert {first.pk, second.pk} <= set(scheduler.schedule().placed)

    reconcile(host)

    started = {call["job"]: call["array"] for call in agent.called("job-start")}
    assert started == {f"j{first.pk}": (first.pk, 0), f"j{second.pk}": (first.pk, 1)}


def test_it_streams_an_archive_input_after_the_request(host, agent, member):
    archive = tarball({"data.txt": b"numbers"})
    job = submit(member, host, input_archive=SimpleUploadedFile("in.tar.gz", archive))

    reconcile(host)

    assert agent.called("job-start")[0]["input"] == {"archive_bytes": len(archive)}
    assert agent.jobs[f"j{job.pk}"].archive == archive


def test_a_package_test_run_sends_autopkgtest_and_no_script(host, agent, member):
    archive = tarball({"foo_1.0.dsc": b"Source: foo\n", "foo_1.0.tar.xz": b"xz"})
    job = submit(member, host, input_archive=SimpleUploadedFile("foo.tar.gz", archive))
    run = {"dsc": "foo_1.0.dsc", "tests": ["smoke"]}
    Job.objects.filter(pk=job.pk).update(autopkgtest=run)  # as portal.packages queues a run

    reconcile(host)

    [call] = agent.called("job-start")
    assert (call["script"], call["autopkgtest"]) == ("", run)
    assert call["input"] == {"archive_bytes": len(archive)}
    assert fresh(job).state == J.RUNNING


def test_a_job_the_host_refuses_fails_and_is_charged_nothing(host, agent, member):
    job = submit(member, host)
    agent.refuse("job-start", "unknown_stack", "stack: not configured")

    reconcile(host)

    job = fresh(job)
    assert job.state == J.FAILED and job.ended_at == NOW
    assert job.last_error == "The host refused the job: unknown_stack: stack: not configured"
    assert not held(job).active  # never ran: no usage


def test_it_copies_a_running_jobs_log_as_it_grows(host, agent, member, clock):
    job = submit(member, host)
    reconcile(host)
    name = f"j{job.pk}"
    agent.jobs[name].log = b"epoch 1\n"
    clock.shift(timedelta(seconds=5))

    reconcile(host)
    assert (fresh(job).log, fresh(job).log_offset) == ("epoch 1\n", 8)

    agent.jobs[name].log += b"epoch 2\n"
    clock.shift(timedelta(seconds=5))
    reconcile(host)

    job = fresh(job)
    assert (job.state, job.log, job.log_offset) == (J.RUNNING, "epoch 1\nepoch 2\n", 16)
    # Each pass reads on from where the last stopped, until the host has nothing more.
    assert [c["offset"] for c in agent.called("job-logs")] == [0, 8, 8, 16]


def test_a_finished_job_gets_its_exit_status_output_and_log_then_is_cleaned(
    host, agent, member, clock
):
    job = submit(member, host)
    reconcile(host)
    name = f"j{job.pk}"
    output = tarball({"output/model.bin": b"weights"})
    agent.finish_job(name, "failed", exit_status=3, log=b"loss: nan\n", output=output)
    clock.shift(timedelta(minutes=10))

    reconcile(host)

    job = fresh(job)
    assert (job.state, job.exit_status, job.ended_at) == (J.FAILED, 3, NOW + timedelta(minutes=10))
    assert job.log == "loss: nan\n"
    assert job.output.open("rb").read() == output
    assert held(job).end == job.ended_at  # the device is free from the job's end
    assert agent.called("job-clean") == [{"job": name}] and agent.jobs == {}


@pytest.mark.parametrize(
    ("on_host", "final"),
    [("succeeded", J.SUCCEEDED), ("timed_out", J.TIMED_OUT), ("stopped", J.CANCELLED)],
)
def test_the_hosts_end_of_a_job_is_its_state(host, agent, member, clock, on_host, final):
    job = submit(member, host)
    reconcile(host)
    agent.finish_job(f"j{job.pk}", on_host, exit_status=0 if on_host == "succeeded" else None)
    clock.shift(timedelta(seconds=5))

    reconcile(host)

    assert fresh(job).state == final


def test_an_output_over_the_limit_is_not_kept_and_the_job_says_so(
    host, agent, member, clock, settings
):
    settings.JOBS_MAX_OUTPUT_MB = 1
    job = submit(member, host)
    reconcile(host)
    agent.finish_job(f"j{job.pk}", output=b"x" * (1024 * 1024 + 1))
    clock.shift(timedelta(seconds=5))

    reconcile(host)

    job = fresh(job)
    assert job.state == J.SUCCEEDED and not job.output
    assert "over 1 MB" in job.last_error


def test_a_cancelled_running_job_is_stopped_then_recorded_cancelled(host, agent, member, clock):
    job = submit(member, host)
    reconcile(host)
    job_cancel(job=fresh(job), actor=member.user)
    clock.shift(timedelta(seconds=5))

    reconcile(host)  # stop asked; the fake records the stop at once
    assert agent.called("job-stop") == [{"job": f"j{job.pk}", "grace_s": 7}]
    clock.shift(timedelta(seconds=5))
    reconcile(host)

    assert fresh(job).state == J.CANCELLED
    assert agent.jobs == {}


def test_a_job_the_host_no_longer_knows_is_requeued(host, agent, member, clock):
    job = submit(member, host)
    reconcile(host)
    del agent.jobs[f"j{job.pk}"]  # the host was reinstalled
    clock.shift(timedelta(seconds=5))

    reconcile(host)

    job = fresh(job)
    assert (job.state, job.host_id, job.requeues) == (J.REQUEUED, None, 1)
    assert "no longer knows the job" in job.last_error


def test_jobs_of_a_host_that_fails_are_requeued_and_the_old_attempt_dropped_on_its_return(
    host, agent, member, clock, settings
):
    job = submit(member, host)
    reconcile(host)
    agent.unreachable = True
    clock.shift(timedelta(seconds=5))
    reconcile(host)
    assert fresh(job).state == J.RUNNING  # within the limit: it may come back

    clock.shift(timedelta(seconds=settings.JOBS_HOST_FAILURE_SECONDS))
    reconcile(host)

    job = fresh(job)
    assert (job.state, job.host_id, job.requeues) == (J.REQUEUED, None, 1)
    assert held(job).end == NOW + timedelta(seconds=5 + settings.JOBS_HOST_FAILURE_SECONDS)
    assert Host.objects.get(pk=host.pk).state == Host.State.MAINTENANCE

    agent.unreachable = False  # it comes back with the old attempt still running
    clock.shift(timedelta(seconds=5))
    reconcile(host)

    old = f"j{job.pk}"
    assert agent.called("job-stop") == [{"job": old, "grace_s": 7}]
    assert agent.called("job-clean") == [{"job": old}] and agent.jobs == {}


def test_a_job_past_its_requeues_fails(host, agent, member, clock, settings):
    settings.JOBS_MAX_REQUEUES = 0
    job = submit(member, host)
    reconcile(host)
    del agent.jobs[f"j{job.pk}"]
    clock.shift(timedelta(seconds=5))

    reconcile(host)

    job = fresh(job)
    assert job.state == J.FAILED and "requeued 0 times already" in job.last_error


def test_a_pass_that_loses_the_host_mid_job_leaves_the_job_for_the_next(host, agent, member, clock):
    job = submit(member, host)
    reconcile(host)
    agent.refuse("job-status", "internal_error", "boom")  # a refusal: logged, the pass goes on
    clock.shift(timedelta(seconds=5))

    reconcile(host)

    assert fresh(job).state == J.RUNNING


def test_a_job_start_and_end_are_logged_with_host_and_job(host, agent, member, clock, caplog):
    job = submit(member, host)
    with caplog.at_level(logging.INFO, logger="portal.operations"):
        reconcile(host)
        agent.finish_job(f"j{job.pk}")
        clock.shift(timedelta(seconds=5))
        reconcile(host)

    records = [r for r in caplog.records if f"j{job.pk}" in r.getMessage()]
    assert [(r.host, r.job) for r in records] == [("gpu1", job.pk)] * 2
    assert "started" in records[0].getMessage() and "ended" in records[1].getMessage()
