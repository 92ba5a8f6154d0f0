"""A job lost with its host goes back to the queue, a limited number of times."""

from datetime import timedelta

from portal.booking.models import Allocation
from portal.jobs import scheduler
from portal.jobs.models import Job
from portal.operations.jobs import requeue, requeue_from_failed_host
from tests.factories import AcceleratorFactory, JobFactory
from tests.helpers import NOW


def running_job(**kwargs):
    acc = AcceleratorFactory()
    job = JobFactory(state="running", host=acc.host, **kwargs)
    Allocation.objects.create(accelerator=acc, job=job, start=NOW - timedelta(hours=1),
                              end=NOW + timedelta(hours=1))  # fmt: skip
    return job


def test_it_requeues_a_lost_job_and_keeps_what_it_used(db):
    job = running_job()
    requeue(job, NOW, "gpu1 could not be reached")

    job.refresh_from_db()
    assert (job.state, job.requeues, job.host, job.queued_at) == ("requeued", 1, None, NOW)
    assert job.last_error == "gpu1 could not be reached"
    assert Allocation.objects.get(job=job).end == NOW  # held until now: its usage so far
    assert job.session_name == f"j{job.pk}-1"


def test_it_fails_a_job_lost_too_often(db, settings):
    settings.JOBS_MAX_REQUEUES = 2
    job = running_job(requeues=2)
    requeue(job, NOW, "gpu1 could not be reached")

    job.refresh_from_db()
    assert job.state == "failed"
    assert "requeued 2 times already" in job.last_error


def test_it_waits_before_declaring_a_host_failed(db, settings):
    settings.JOBS_HOST_FAILURE_SECONDS = 300
    job = running_job()
    host = job.host
    host.last_seen = NOW - timedelta(seconds=100)

    assert requeue_from_failed_host(host, NOW) == 0
    host.last_seen = NOW - timedelta(seconds=301)
    assert requeue_from_failed_host(host, NOW) == 1
    assert Job.objects.get(pk=job.pk).state == "requeued"


def test_a_requeued_job_gets_its_turn_again_at_the_next_pass(db):
    job = running_job()
    requeue(job, NOW, "gpu1 could not be reached")

    scheduler.store_queue(NOW)  # the queue part of a pass

    assert Job.objects.get(pk=job.pk).queue_position == 1
