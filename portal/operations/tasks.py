"""Celery tasks of the reconcile loop: thin wrappers that glue a primary key to a service."""

from datetime import datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from portal.operations import kicks, services


def _expires() -> int:
    # A pass not started within a few ticks is superseded by later ones: let it expire (not
    # sooner: a polling broker or a busy worker takes a moment to deliver it).
    return max(10, 3 * settings.PORTAL_RECONCILE_SECONDS)


@shared_task(ignore_result=True)
def reconcile(**_kwargs) -> int:
    """Beat, every few seconds: one reconcile_host task per host the loop may talk to, and a
    kick (reconcile_host_at) at each instant a session of theirs opens or closes before the
    next ticks (kicks.py)."""
    hosts = services.hosts_to_reconcile()
    for host in hosts:
        reconcile_host.apply_async((host.pk,), expires=_expires())
    kicks.send_kicks([h.pk for h in hosts], timezone.now(), _send_kick)
    return len(hosts)


def _send_kick(host_id: int, at: datetime) -> None:
    expires = at + timedelta(seconds=_expires())
    eta = at - kicks.LEAD
    reconcile_host_at.apply_async((host_id, at.isoformat()), eta=eta, expires=expires)


# The lease outlives the hard limit, so a host is never reconciled by two workers at once.
@shared_task(
    ignore_result=True,
    soft_time_limit=settings.PORTAL_LEASE_SECONDS - 20,
    time_limit=settings.PORTAL_LEASE_SECONDS - 10,
)
def reconcile_host(host_id: int, **_kwargs) -> str:
    return services.reconcile_host(host_id)


# As reconcile_host, plus a wait for the instant or the lease before it claims the host (at most
# kicks.MAX_PATIENCE) and one for the instant after (at most services.MAX_DECIDE_WAIT, within
# the lease): the lease still outlives the hard limit.
@shared_task(
    ignore_result=True,
    soft_time_limit=settings.PORTAL_LEASE_SECONDS - 20 + kicks.MAX_PATIENCE,
    time_limit=settings.PORTAL_LEASE_SECONDS - 10 + kicks.MAX_PATIENCE,
)
def reconcile_host_at(host_id: int, at: str, **_kwargs) -> str:
    """A kick: the host's pass at `at` (ISO 8601), the instant a session opens or closes."""
    return kicks.run_kick(host_id, datetime.fromisoformat(at))


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
