"""Celery tasks of test runs: thin wrappers around portal/packages/runs.py."""

from celery import shared_task

from portal.packages import runs


@shared_task(ignore_result=True, soft_time_limit=600, time_limit=660)
def record(**_kwargs) -> int:
    """Beat: record the results of runs whose job has ended (a batch a pass), retry tmpfails,
    mail the results. Returns how many it recorded."""
    return runs.record_results()
