"""Celery tasks of training jobs: thin wrappers around the scheduler and the start estimates."""

import logging
import time

from celery import shared_task
from django.conf import settings

from portal.jobs import estimates, scheduler, services

log = logging.getLogger(__name__)

# How long a pass writes arrays' tasks at most (in batches, each committed), of its 60 s: more
# than ~100,000 tasks pending at once are written over the next passes.
ARRAY_WRITE_SECONDS = 20


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=90)
def schedule(**_kwargs) -> int:
    """Beat: one fair-share pass; the reconcile loop then starts what it placed. A pass that
    placed jobs or changed the first turns asks for fresh start estimates now rather than at
    their next beat, so the /jobs/ page's estimates lag the turns by moments (estimates.py).
    First the arrays' pending tasks are written, so the pass places them (Slurm splits an
    array's tasks off its one record as it schedules them)."""
    started = time.perf_counter()
    written = services.write_array_tasks(seconds=ARRAY_WRITE_SECONDS)
    if written:
        log.info(
            "wrote %d tasks of job arrays in %.1f ms", written,
            (time.perf_counter() - started) * 1000,
        )  # fmt: skip
    result = scheduler.schedule()
    if result.estimates_stale:
        estimate_job_starts.apply_async(expires=max(10, 3 * settings.JOBS_ESTIMATE_SECONDS))
    return len(result.placed)


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=90)
def estimate_job_starts(**_kwargs) -> int:
    """Beat, and after a pass that moved the queue: the start estimates of the first turns."""
    return estimates.estimate_queue()
