"""Idle reclaim: a running reservation nobody uses is warned, then ended (docs/decisions.md).

Used means: the reservation's account has a process on the host (`status` counts them: a login
is an sshd and a shell of the user's), or one of its devices shows use in the latest telemetry
reading (utilisation above zero, or a process of the account). When neither has been true for
the host's `idle_reclaim_minutes` (0: never), the owner gets a warning; still unused
PORTAL_IDLE_WARNING_MINUTES later, the reservation is ended now (its devices are free at once,
and the loop revokes the session as for any end). Use after the warning cancels it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Prefetch

from portal.booking.models import Allocation, Reservation
from portal.booking.services import BookingError, about, reservation_reclaim
from portal.inventory.models import Host
from portal.notifications.outbox import notify
from provisioning.client import Status

log = logging.getLogger(__name__)
S = Reservation.State
ACTIVITY_RESOLUTION = timedelta(minutes=1)


def _used_devices(host: Host) -> dict[tuple[str, int], set[str]]:
    """(vendor, index) -> the users of its processes, for devices the last reading saw in use."""
    used = {}
    for sample in (host.telemetry or {}).get("samples", []):
        users = {p["user"] for p in sample.get("processes", []) if p.get("user")}
        if users or (sample.get("utilization_pct") or 0) > 0:
            used[(sample["vendor"], sample["index"])] = users
    return used


def track(host: Host, status: Status, now: datetime) -> list[str]:
    """Note who uses their reservation, warn the idle ones, end those warned long enough."""
    if not host.idle_reclaim_minutes:
        return []
    logged_in = {u.user for u in status.users if u.processes}
    used = _used_devices(host)
    running = list(
        Reservation.objects.filter(host=host, state=S.ACTIVE, start__lte=now, end__gt=now)
        .select_related("user", "host")
        .prefetch_related(
            Prefetch(
                "allocations",
                Allocation.objects.filter(active=True).select_related("accelerator"),
                to_attr="active_allocations",
            )
        )
    )
    idle_for = timedelta(minutes=host.idle_reclaim_minutes)
    warning = timedelta(minutes=settings.PORTAL_IDLE_WARNING_MINUTES)
    done = []
    for r in running:
        account = r.unix_user
        devices = [(a.accelerator.vendor, a.accelerator.index) for a in r.active_allocations]
        # A device counts as used by this reservation when it is busy and no one else is on
        # it (someone else on it is a squatter, not this user's work).
        in_use = account in logged_in or any(
            d in used and (not used[d] or account in used[d]) for d in devices
        )
        if in_use:
            # Written at most once a minute (not on every 5-second pass): the idle times are
            # minutes long.
            stale = r.last_active_at is None or now - r.last_active_at >= ACTIVITY_RESOLUTION
            if stale or r.idle_warned_at is not None:
                Reservation.objects.filter(pk=r.pk).update(last_active_at=now, idle_warned_at=None)
            continue
        since = r.last_active_at or r.granted_at or r.start
        if r.idle_warned_at is None:
            if now - since >= idle_for:
                with transaction.atomic():  # the claim and the notice, or neither
                    claimed = Reservation.objects.filter(
                        pk=r.pk, idle_warned_at__isnull=True
                    ).update(idle_warned_at=now)
                    if claimed:
                        context = {"r": r, "idle": idle_for, "deadline": now + warning}
                        notify(
                            "session.idle", r.user, "operations/mail_idle_warning.txt", context,
                            data=about(r),
                        )  # fmt: skip
                if claimed:
                    done.append(f"warned idle {r.session_name}")
        elif now - r.idle_warned_at >= warning:
            try:
                reservation_reclaim(reservation=r, now=now, idle=idle_for)
            except BookingError as exc:  # it was ended or changed meanwhile
                log.info("%s: not reclaimed: %s", r.session_name, exc)
                continue
            done.append(f"reclaimed idle {r.session_name}")
    return done
