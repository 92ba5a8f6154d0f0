"""Partner jobs on a real Slurm cluster, reached over SSH: submitted through the API, run by
slurmd, followed, cancelled, their log, output and usage brought back; a stopped slurmctld
neither loses nor doubles a job."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime, timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from portal.clusters import services
from portal.clusters.models import Cluster, ClusterJob, Partition
from portal.jobs import scheduler, selectors
from portal.jobs.models import Job
from portal.jobs.services import job_cancel
from portal.notifications.models import Notification
from tests.clusters.conftest import until
from tests.factories import AcceleratorFactory, HostFactory, tarball

pytestmark = pytest.mark.once
HOUR = timedelta(hours=1)


def submit(member, stack, **fields):
    client = APIClient()
    client.force_authenticate(member.user)
    body = {
        "project": member.project.slug, "name": "asr", "stack": stack.name, "count": 1,
        "walltime": 1, "code_licence": "Apache-2.0", "data_licence": "CC-BY-4.0",
        "model_freedom": "free", "partition": "test/gpu", **fields,
    }  # fmt: skip
    response = client.post("/api/jobs/", body, format="multipart")
    assert response.status_code == 201, response.json()
    return Job.objects.get(pk=response.json()["id"])


def pass_of(cluster: Cluster):
    return lambda: services.cluster_pass(cluster.pk)


def slurm_jobs(slurm_cluster, name: str) -> list[dict]:
    answer = slurm_cluster.run("squeue", "--json", "--states=all")
    return [j for j in json.loads(answer.stdout)["jobs"] if j["name"] == name]


def test_it_runs_a_partner_job_on_the_cluster_and_brings_back_log_output_and_usage(
    cluster, partition, stack, member, slurm_cluster, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    # A fleet host with the stack and free devices: the fleet's scheduler must leave the job.
    AcceleratorFactory(host=HostFactory(), index=0).host.stacks.add(stack)
    script = (
        "cat data.txt\n"
        'echo "gpus: $SLURM_JOB_GPUS epochs: $EPOCHS"\n'
        'echo weights > "$PORTERBOX_OUTPUT/model.bin"\n'
        "sleep 2\n"
    )
    archive = SimpleUploadedFile("in.tar.gz", tarball({"data.txt": b"corpus v1\n"}))
    job = submit(
        member, stack, script=script, count=2, env=json.dumps({"EPOCHS": "3"}),
        input_archive=archive,
    )  # fmt: skip

    assert scheduler.schedule().placed == {}
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED and job.host is None

    until(lambda: Job.objects.get(pk=job.pk).state in Job.FINISHED, then=pass_of(cluster))

    job.refresh_from_db()
    cj = ClusterJob.objects.get(job=job)
    assert (job.state, job.exit_status, cj.done, cj.slurm_state) == (
        Job.State.SUCCEEDED, 0, True, "COMPLETED"
    )  # fmt: skip
    assert "stack cuda-12 ready\ncorpus v1\ngpus: " in job.log
    assert "epochs: 3" in job.log
    with tarfile.open(fileobj=io.BytesIO(job.output.read()), mode="r:gz") as out:
        assert out.extractfile("./model.bin").read() == b"weights\n"
    # Slurm ran it as asked: its name, partition, account and two GPUs.
    (seen,) = slurm_jobs(slurm_cluster, cj.slurm_name)
    assert seen["job_id"] == cj.slurm_job_id
    assert (seen["partition"], seen["account"]) == ("gpu", "speech")
    assert "gpu:2" in seen["tres_per_node"]
    # Usage: Slurm's elapsed time x 2 GPUs, in the project's usage and the monthly quota.
    elapsed = job.ended_at - job.started_at
    assert elapsed >= timedelta(seconds=2)
    assert job.started_at == datetime.fromtimestamp(seen["start_time"], UTC)
    now = timezone.now()
    hours = 2 * elapsed / HOUR
    assert selectors.project_usage(member.project, now).total == pytest.approx(hours, abs=1e-4)
    assert scheduler.month_usage(now)[member.project.pk] == pytest.approx(hours)
    # Its end was told, as the fleet's jobs' is (the outbox; by default no mail at the start).
    told = Notification.objects.filter(data__job=job.pk).values_list("event", "data__state")
    assert ("job.finished", "succeeded") in set(told)
    # More passes change nothing: counted once.
    services.cluster_pass(cluster.pk)
    assert selectors.project_usage(member.project, now).total == pytest.approx(hours, abs=1e-4)


def test_a_cancel_reaches_slurm(cluster, partition, stack, member, slurm_cluster):
    job = submit(member, stack, script="echo started\nsleep 300\n")
    until(lambda: Job.objects.get(pk=job.pk).state == Job.State.RUNNING, then=pass_of(cluster))

    job_cancel(job=job, actor=member.user)
    report = services.cluster_pass(cluster.pk)

    cj = ClusterJob.objects.get(job=job)
    assert report.cancelled == [job.pk]
    until(
        lambda: [j["job_state"] for j in slurm_jobs(slurm_cluster, cj.slurm_name)] == ["CANCELLED"]
    )
    until(lambda: Job.objects.get(pk=job.pk).state == Job.State.CANCELLED, then=pass_of(cluster))
    job.refresh_from_db()
    assert "started" in job.log and job.ended_at is not None


def test_a_job_submitted_while_slurmctld_is_stopped_is_neither_lost_nor_doubled(
    cluster, partition, stack, member, slurm_cluster
):
    slurm_cluster.stop_slurmctld()
    try:
        job = submit(member, stack, script="echo once\n")
        report = services.cluster_pass(cluster.pk)

        assert report.error and report.submitted == []
        cluster.refresh_from_db()
        job.refresh_from_db()
        assert not cluster.reachable and "slurmctld" in cluster.last_error.lower()
        assert job.state == Job.State.QUEUED
        assert "cannot be reached" in job.wait_reason
        assert ClusterJob.objects.get(job=job).slurm_job_id is None
    finally:
        slurm_cluster.start_slurmctld()
        slurm_cluster.wait_controller()

    until(lambda: Job.objects.get(pk=job.pk).state in Job.FINISHED, then=pass_of(cluster))
    job.refresh_from_db()
    cluster.refresh_from_db()
    assert cluster.reachable and job.state == Job.State.SUCCEEDED
    assert job.log.count("once") == 1
    cj = ClusterJob.objects.get(job=job)
    assert [j["job_id"] for j in slurm_jobs(slurm_cluster, cj.slurm_name)] == [cj.slurm_job_id]


def test_a_submission_whose_answer_was_lost_is_found_by_name_not_made_twice(
    cluster, partition, stack, member, slurm_cluster
):
    job = submit(member, stack, script="echo mine\n")
    cj = ClusterJob.objects.get(job=job)
    # sbatch reached slurmctld, and its answer never came back to the portal.
    (slurm_cluster.dir / "work" / cj.slurm_name).mkdir(parents=True)
    earlier = slurm_cluster.run(
        "sbatch", "--parsable", f"--job-name={cj.slurm_name}", "--partition=gpu", "--time=1",
        f"--output={slurm_cluster.dir}/work/{cj.slurm_name}/log", "--wrap=echo mine",
    )  # fmt: skip
    assert earlier.returncode == 0, earlier.stderr

    report = services.cluster_pass(cluster.pk)

    assert report.adopted == [job.pk] and report.submitted == []
    cj.refresh_from_db()
    assert cj.slurm_job_id == int(earlier.stdout.strip())
    until(lambda: Job.objects.get(pk=job.pk).state in Job.FINISHED, then=pass_of(cluster))
    assert len(slurm_jobs(slurm_cluster, cj.slurm_name)) == 1


def test_a_job_slurm_refuses_fails_with_slurms_words_and_the_others_go_on(
    cluster, partition, stack, member, slurm_cluster
):
    # Registered in the portal, unknown to Slurm: sbatch refuses the job.
    Partition.objects.create(cluster=cluster, name="nosuch", gpus_per_node=2)
    good = submit(member, stack, script="echo fine\n")
    bad = submit(member, stack, script="echo never\n", partition="test/nosuch")

    report = services.cluster_pass(cluster.pk)

    assert report.submitted == [good.pk] and not report.error
    bad.refresh_from_db()
    assert bad.state == Job.State.FAILED
    assert "Slurm refused the job" in bad.last_error and "partition" in bad.last_error.lower()
    cluster.refresh_from_db()
    assert cluster.reachable
    until(lambda: Job.objects.get(pk=good.pk).state in Job.FINISHED, then=pass_of(cluster))
    assert Job.objects.get(pk=good.pk).state == Job.State.SUCCEEDED


def test_a_job_slurm_lost_before_it_started_is_submitted_again_once(
    cluster, partition, stack, member, slurm_cluster
):
    job = submit(member, stack, script="echo again\n")
    # As if sbatch had answered 999999 and slurmctld had then crashed before saving the job:
    # the portal holds an id Slurm does not know, and the job never started (no log).
    ClusterJob.objects.filter(job=job).update(slurm_job_id=999_999)
    Job.objects.filter(pk=job.pk).update(state=Job.State.SCHEDULED)

    services.cluster_pass(cluster.pk)

    job.refresh_from_db()
    assert job.state == Job.State.QUEUED and "lost job 999999" in job.wait_reason
    until(lambda: Job.objects.get(pk=job.pk).state in Job.FINISHED, then=pass_of(cluster))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED and job.log.count("again") == 1
    cj = ClusterJob.objects.get(job=job)
    assert [j["job_id"] for j in slurm_jobs(slurm_cluster, cj.slurm_name)] == [cj.slurm_job_id]
