"""Celery tasks of the reconcile loop: thin wrappers that glue a primary key to a service."""

from celery import shared_task
from django.conf import settings

from portal.operations import services


@shared_task(ignore_result=True)
def reconcile(**_kwargs) -> int:
    """Beat, every few seconds: one reconcile_host task per host the loop may talk to."""
    hosts = services.hosts_to_reconcile()
    # A pass not started within a few ticks is superseded by later ones: let it expire (not
    # sooner: a polling broker or a busy worker takes a moment to deliver it).
    expires = max(10, 3 * settings.PORTAL_RECONCILE_SECONDS)
    for host in hosts:
        reconcile_host.apply_async((host.pk,), expires=expires)
    return len(hosts)


# The lease outlives the hard limit, so a host is never reconciled by two workers at once.
@shared_task(
    ignore_result=True,
    soft_time_limit=settings.PORTAL_LEASE_SECONDS - 20,
    time_limit=settings.PORTAL_LEASE_SECONDS - 10,
)
def reconcile_host(host_id: int, **_kwargs) -> str:
    return services.reconcile_host(host_id)


@shared_task(ignore_result=True, soft_time_limit=150, time_limit=170)
def host_sync_inventory(host_id: int, **_kwargs) -> None:
    from portal.operations import registration

    registration.host_sync_inventory_by_id(host_id)


@shared_task(ignore_result=True, soft_time_limit=600, time_limit=660)
def telemetry_retention(**_kwargs) -> str:
    """Beat, hourly: roll old readings into hourly rows and expire old rows."""
    from django.utils import timezone

    from portal.operations import telemetry

    done = telemetry.retain(timezone.now())
    return f"{done.rolled_up} hours rolled up, {done.readings_deleted} readings and " \
        f"{done.hours_deleted} hours deleted"  # fmt: skip


# Checks run one host after another, each within the SSH command timeout; a day's run of a
# few dozen hosts fits well inside the limit.
@shared_task(ignore_result=True, soft_time_limit=3300, time_limit=3500)
def health_checks(**_kwargs) -> str:
    """Beat, every PORTAL_HEALTH_CHECK_HOURS: one device of each vendor on each host."""
    from django.utils import timezone

    from portal.operations import checks

    done = checks.run_checks(timezone.now())
    return "; ".join(done) or "no host to check"
