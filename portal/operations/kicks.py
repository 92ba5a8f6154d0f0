"""Kicks: a host's pass at the very instant one of its sessions must open or close.

The loop is level-triggered (docs/architecture.md): each tick passes over every host and
converges it, so on ticks alone a session opens up to a tick (plus the broker's delivery)
after its slot starts. Each tick therefore also looks a little ahead, and for every host with
a slot that starts or ends before the next ticks it sends the host's pass with an ETA just
before that instant, and the pass decides at the instant: a kick. One kick per host and instant
(claimed in the cache by whichever tick sees it first). A kick is only an early pass; nothing
depends on it:
- lost (a worker restarted, the broker dropped it): the next tick does the same, a tick later;
- sent twice (the cache forgot the claim): the lease keeps the passes apart, the second finds
  the host in line;
- early: it is meant to come LEAD early, to read the host's status (a round trip to the agent)
  while it waits; the pass decides only at the instant. Earlier still, it waits, and a kick
  more than a tick early (another machine's clock) is left to the ticks;
- late: its message expires a few ticks after the instant, when ticks have done its work;
- the host held by another worker: it waits for the lease, unless that worker's pass began at
  or after the instant and so sees what the kick was sent for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from portal.booking.models import Reservation
from portal.inventory.models import Host
from portal.operations import services

# How often a kick whose host is held looks at the lease again.
LEASE_POLL_SECONDS = 0.05
MAX_PATIENCE = 5
# How much before its instant a kick is sent for: about the time the host takes to answer
# `status`, which the pass reads first (services.reconcile_host's decide_at).
LEAD = timedelta(seconds=0.5)


def look_ahead() -> timedelta:
    """How far a tick looks: two ticks, so one late or lost tick loses no kick."""
    return timedelta(seconds=2 * settings.PORTAL_RECONCILE_SECONDS)


def patience() -> timedelta:
    """How long a kick may wait, for its instant and then its host: up to a tick, after which
    ticks do as well, and at most 5 s, which the task's time limits allow for."""
    return timedelta(seconds=min(max(1, settings.PORTAL_RECONCILE_SECONDS), MAX_PATIENCE))


def instants(host_ids: Iterable[int], now: datetime) -> set[tuple[int, datetime]]:
    """(host, instant) of every slot of these hosts that starts or ends within look_ahead."""
    hosts = set(host_ids)
    until = now + look_ahead()
    live = Reservation.objects.filter(host_id__in=hosts)
    starts = live.filter(state__in=services.LIVE, start__gt=now, start__lte=until)
    ends = live.filter(
        state__in=services.CLOSING, revoked_at__isnull=True, end__gt=now, end__lte=until
    )
    return set(starts.values_list("host_id", "start")) | set(ends.values_list("host_id", "end"))


def send_kicks(
    host_ids: Iterable[int], now: datetime, send: Callable[[int, datetime], None]
) -> int:
    """Send (`send(host_id, at)`) each upcoming kick no tick has sent yet; returns how many."""
    sent = 0
    for host_id, at in sorted(instants(host_ids, now), key=lambda pair: pair[1]):
        key = f"porterbox:kick:{host_id}:{at.timestamp():.6f}"
        keep = int((at - now).total_seconds()) + 60
        if not cache.add(key, True, timeout=keep):
            continue  # an earlier tick sent it
        try:
            send(host_id, at)
        except Exception:
            cache.delete(key)  # the next tick tries again
            raise
        sent += 1
    return sent


def run_kick(host_id: int, at: datetime) -> str:
    """The kicked pass: from LEAD before `at`, as soon as the host's lease is free; it decides
    at `at`, not before."""
    give_up = timezone.now() + patience()
    if at > give_up:
        return f"kick for {at.isoformat()} came too early: left to the ticks"
    if (early := (at - LEAD - timezone.now()).total_seconds()) > 0:
        time.sleep(early)
    while True:
        line = services.reconcile_host(host_id, decide_at=at)
        if line != services.LEASE_HELD:
            return line
        if _held_since(host_id) >= at:
            return f"the pass that holds the host began after {at.isoformat()}"
        if timezone.now() >= give_up:
            return f"{line}: kick for {at.isoformat()} left to the ticks"
        time.sleep(LEASE_POLL_SECONDS)


def _held_since(host_id: int) -> datetime:
    """When the host's current lease was claimed (the lease runs PORTAL_LEASE_SECONDS)."""
    until = Host.objects.filter(pk=host_id).values_list("lease_until", flat=True).first()
    if until is None:  # released meanwhile: its pass may have begun before the instant
        return datetime.min.replace(tzinfo=UTC)
    return until - timedelta(seconds=settings.PORTAL_LEASE_SECONDS)
