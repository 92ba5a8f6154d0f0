"""Training jobs end to end on the test host: scheduled, started, logged, finished, charged.

The scheduler places jobs in the database; the reconcile loop starts them on the host through
the agent, copies their logs, records how they ended and frees their devices.
"""

import tarfile
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.booking.models import Allocation
from portal.booking.services import reservation_create
from portal.inventory.models import Host
from portal.jobs import scheduler
from portal.jobs.models import Job
from portal.jobs.services import job_submit
from portal.operations import services
from tests.factories import PartnerMembershipFactory
from tests.operations.harness import wait_for

pytestmark = [pytest.mark.host, pytest.mark.django_db(transaction=True)]

J = Job.State


@pytest.fixture
def member(registered, settings):
    settings.JOBS_STOP_GRACE_SECONDS = 1
    return PartnerMembershipFactory(project__slug="lm", project__max_walltime_hours=48)


def submit(member, host, script, walltime=timedelta(hours=1), **kwargs):
    return job_submit(
        project=member.project, submitter=member.user, name="train", script=script,
        stack=host.stacks.get(name="cuda-12"), walltime=walltime, code_licence="MIT",
        data_licence="CC0-1.0", model_freedom="free", **kwargs,
    )  # fmt: skip


def run_until(host, job, states, timeout=60):
    """Reconcile passes until the job reaches one of states (as the worker's beat would)."""

    def reached():
        services.reconcile_host(host.pk)
        return Job.objects.get(pk=job.pk).state in states

    wait_for(reached, timeout=timeout, interval=0.3, what=f"job {job.pk} in {states}")
    return Job.objects.get(pk=job.pk)


def test_it_runs_a_job_on_a_free_device_and_charges_its_device_hours(
    registered, member, testhost, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    job = submit(
        member, registered,
        'echo "hello from $(id -un) on $CUDA_VISIBLE_DEVICES with $EPOCHS"\n'
        'echo weights > "$PORTERBOX_OUTPUT/model.bin"\nexit 0\n',
        env={"EPOCHS": "3"},
    )  # fmt: skip

    placed = scheduler.schedule()
    assert list(placed.placed) == [job.pk]
    job = run_until(registered, job, Job.FINISHED)

    assert (job.state, job.exit_status) == (J.SUCCEEDED, 0)
    device = Allocation.objects.get(job=job).accelerator.index
    assert f"hello from pj-{member.project_id} on {device} with 3" in job.log
    held = Allocation.objects.get(job=job)
    assert held.end == job.ended_at  # the device is free again from the job's end
    assert timedelta(0) < held.end - held.start < timedelta(minutes=1)
    assert 0 < scheduler.month_usage(timezone.now())[member.project_id] < 1 / 60
    assert not testhost.exists(f"/var/lib/porterbox/jobs/j{job.pk}")  # cleaned on the host
    with tarfile.open(fileobj=job.output.open("rb"), mode="r:gz") as kept:
        assert kept.extractfile("output/model.bin").read() == b"weights\n"


def test_a_job_that_would_overlap_a_reservation_waits(registered, member, person):
    alice = person("alice")
    start = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=30)
    reservation_create(
        user=alice.user, host=registered, stack=registered.stacks.get(), start=start,
        end=start + timedelta(hours=1), whole_host=True,
    )  # fmt: skip
    long = submit(member, registered, "sleep 1", walltime=timedelta(hours=2))

    result = scheduler.schedule()

    assert long.pk not in result.placed
    long.refresh_from_db()
    assert long.state == J.QUEUED and "free for its walltime" in long.wait_reason


def test_a_job_past_its_walltime_is_killed(registered, member, testhost):
    job = submit(member, registered, "trap '' TERM\nsleep 1000\n", walltime=timedelta(seconds=2))
    scheduler.schedule()

    job = run_until(registered, job, Job.FINISHED)

    assert job.state == J.TIMED_OUT
    assert "porterbox: " in job.log  # the supervisor says what it did
    assert testhost.processes(testhost.uid(f"pj-{member.project_id}")) == []


def test_a_running_job_is_cancelled_by_a_member(registered, member, testhost):
    from portal.jobs.services import job_cancel

    job = submit(member, registered, "sleep 1000\n")
    scheduler.schedule()
    run_until(registered, job, (J.RUNNING,))

    job_cancel(job=job, actor=member.user)
    job = run_until(registered, job, Job.FINISHED)

    assert job.state == J.CANCELLED
    assert testhost.processes(testhost.uid(f"pj-{member.project_id}")) == []


def test_a_job_whose_host_fails_is_requeued_and_its_old_attempt_dropped(
    registered, member, testhost, settings
):
    settings.JOBS_HOST_FAILURE_SECONDS = 0
    job = submit(member, registered, "sleep 1000\n")
    scheduler.schedule()
    run_until(registered, job, (J.RUNNING,))

    testhost.stop_sshd()
    testhost.exec(["pkill", "-KILL", "-f", "^sshd: porterbox"])  # the portal's connection
    try:
        services.reconcile_host(registered.pk)
    finally:
        testhost.start_sshd()

    job.refresh_from_db()
    assert (job.state, job.requeues, job.host) == (J.REQUEUED, 1, None)
    assert not Allocation.objects.filter(job=job, end__gt=timezone.now()).exists()
    # Unreachable past JOBS_HOST_FAILURE_SECONDS, the host was drained too; its first answer
    # puts it back in service (docs/decisions.md, "Telemetry and health").
    assert Host.objects.get(pk=registered.pk).state == Host.State.MAINTENANCE
    services.reconcile_host(registered.pk)
    assert Host.objects.get(pk=registered.pk).state == Host.State.ACTIVE
    # The host is back with the first attempt still running: it is stopped, and the requeued
    # job starts again as a new attempt.
    scheduler.schedule()
    job = run_until(registered, job, (J.RUNNING, *Job.FINISHED))
    assert job.state == J.RUNNING, (job.last_error, job.wait_reason, job.log)
    assert job.session_name == f"j{job.pk}-1"
    assert not testhost.exists(f"/var/lib/porterbox/jobs/j{job.pk}")
    assert testhost.exists(f"/var/lib/porterbox/jobs/j{job.pk}-1")


def test_it_charges_a_job_only_from_when_it_started_on_the_host(registered, member):
    job = submit(member, registered, "sleep 1\n")
    # Placed half an hour ago, and not started since (its host was away, say).
    placed_at = timezone.now() - timedelta(minutes=30)
    Job.objects.filter(pk=job.pk).update(queued_at=placed_at - timedelta(minutes=1))
    assert list(scheduler.schedule(placed_at).placed) == [job.pk]
    assert scheduler.month_usage(timezone.now()).get(member.project_id, 0) == 0

    job = run_until(registered, job, Job.FINISHED)

    assert job.state == J.SUCCEEDED, (job.last_error, job.log)
    held = Allocation.objects.get(job=job)
    assert (held.start, held.end) == (job.started_at, job.ended_at)
    assert 0 < scheduler.month_usage(timezone.now())[member.project_id] < 1 / 60
