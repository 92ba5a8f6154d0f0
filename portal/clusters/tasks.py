"""Celery tasks of the Slurm clusters: thin wrappers around the services."""

from celery import shared_task

from portal.clusters import services
from portal.clusters.mirror import mirror_all


@shared_task(ignore_result=True, soft_time_limit=120, time_limit=180)
def clusters_pass(**_kwargs) -> int:
    """Beat: submit, follow and cancel the jobs of every enabled cluster."""
    return sum(len(r.submitted) + len(r.finished) for r in services.clusters_pass().values())


@shared_task(ignore_result=True, soft_time_limit=120, time_limit=180)
def mirror_bookings(**_kwargs) -> int:
    """Beat: the bookings of hosts that are Slurm nodes, as Slurm reservations."""
    return sum(len(r.created) + len(r.updated) + len(r.deleted) for r in mirror_all())
