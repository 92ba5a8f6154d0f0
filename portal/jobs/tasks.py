"""Celery tasks of training jobs: thin wrappers around the scheduler."""

from celery import shared_task

from portal.jobs import scheduler


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=90)
def schedule(**_kwargs) -> int:
    """Beat: one fair-share pass; the reconcile loop then starts what it placed."""
    return len(scheduler.schedule().placed)
