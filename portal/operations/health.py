"""Host health: find what is wrong with a host, drain it, and tell the people it affects.

The reconcile loop turns each pass into a list of problems (`telemetry_problems` from the
agent's reading, `unreachable_problem` when the host has not answered) and hands it to
`update`; so does each health check (checks.py). `update` is the only writer of
`Host.health_problems`: each problem belongs to one source (`source_of`), and what a source
finds replaces only what it found before, so a telemetry pass never drops a failed check's
problem, which stays until a check of that vendor passes.

A host with a problem is drained: put in maintenance with a cause (`Host.DrainCause`, data the
code decides by) and a reason (words for people), so the booking service, the availability
search and the job scheduler place nothing new on it, and staff and the owners of its upcoming
reservations are mailed. Every change of the host's state is a conditional UPDATE
(docs/architecture.md, "State machines"), so two workers never both drain, resume or mail; the
only transaction here is the short merge of the problems, and mails go out after the claim.

A drain waits for staff (`resume`), with one exception taken from Slurm's ReturnToService for
DOWN nodes: a host drained as unreachable comes back by itself once the loop finds it answering
with no problem.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypedDict
from urllib.parse import urlencode

from django.conf import settings
from django.db import transaction
from django.db.models import Max, Prefetch
from django.urls import reverse
from django.utils import timezone

from portal.accounts.audit import staff_log
from portal.booking.availability import Need, availability, ceil_to
from portal.booking.models import Allocation, BookingPolicy, Reservation
from portal.inventory.hwspec import NATIVE_KIND, Hwspec
from portal.inventory.models import Host
from portal.notifications.outbox import notify, notify_staff_text
from portal.operations.logs import context

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Held(TypedDict):
        active_allocations: list[Allocation]

    # A reservation read with the allocations that hold its devices (notify_affected).
    AffectedReservation = WithAnnotations[Reservation, _Held]

log = logging.getLogger(__name__)

Problem = dict  # {"code": str, "message": str}, and "vendor" for a health check's
Cause = Host.DrainCause

S = Reservation.State
# Reservations whose session has not started yet: the ones a drain or a maintenance can still
# spare their owner a wasted wait.
NOT_STARTED = (S.PENDING_APPROVAL, S.SCHEDULED, S.FAILED)
ALTERNATIVES = 3
ALTERNATIVE_DAYS = 2

UNREACHABLE = "Unreachable"
HEALTH_CHECK = "health_check"  # the code of a failed check's problem

# The sources of problems: the reconcile loop (reachability, the agent, the readings), and the
# health check of each vendor's devices (`check_source`).
LOOP = "loop"

# What a problem drains a host for; a code not listed is "other" (waits for staff).
CAUSES = {
    "unreachable": Cause.UNREACHABLE,
    "agent_error": Cause.AGENT_ERROR,
    "probe_failed": Cause.AGENT_ERROR,
    "device_count": Cause.DEVICES,
    "device_missing": Cause.DEVICES,
    "too_hot": Cause.TOO_HOT,
    HEALTH_CHECK: Cause.HEALTH_CHECK,
}


def _problem(code: str, message: str) -> Problem:
    return {"code": code, "message": message}


def _device(vendor: object, index: object) -> str:  # as a reading says them: anything
    return f"{vendor} #{index}"


def check_source(vendor: str) -> str:
    return f"check:{vendor}"


def source_of(problem: Problem) -> str:
    """Who found the problem, and so who alone may replace it: a check's, by its vendor."""
    if problem.get("code") == HEALTH_CHECK and problem.get("vendor"):
        return check_source(problem["vendor"])
    return LOOP


def cause_of(problems) -> str:
    """The drain cause of a list of problems: unreachable only if that is all they say."""
    causes = [CAUSES.get(p.get("code"), Cause.OTHER) for p in problems]
    return next((c for c in causes if c != Cause.UNREACHABLE), Cause.UNREACHABLE)


# -- finding problems -----------------------------------------------------------------------------


def telemetry_problems(host, telemetry: dict, accelerators) -> list[Problem]:
    """What the agent's telemetry answer says is wrong, against the host's inventory.

    `accelerators` are the host's accelerators that are not retired. A vendor whose probe
    failed is reported once as such, not again device by device.
    """
    problems = []
    failed = set()
    for error in telemetry.get("errors") or []:
        vendor = str(error.get("vendor") or "unknown")
        failed.add(vendor)
        message = str(error.get("message") or "no detail").strip()[:500]
        problems.append(_problem("probe_failed", f"The {vendor} probe failed: {message}"))

    samples = [s for s in telemetry.get("samples") or [] if isinstance(s, dict)]
    seen: dict[str, set] = defaultdict(set)
    for sample in samples:
        seen[str(sample.get("vendor"))].add(sample.get("index"))
    sample_count: dict[str, int] = defaultdict(int)
    for sample in samples:
        sample_count[str(sample.get("vendor"))] += 1
    inventory: dict[str, list[int]] = defaultdict(list)
    for acc in accelerators:
        inventory[acc.vendor].append(acc.index)

    for vendor in sorted(set(inventory) | set(sample_count)):
        if vendor in failed:
            continue
        expected, found = len(inventory[vendor]), sample_count[vendor]
        if expected != found:
            problems.append(
                _problem(
                    "device_count",
                    f"The host reports {found} {vendor} device{'s' if found != 1 else ''}; "
                    f"the inventory has {expected}.",
                )
            )
        for index in sorted(inventory[vendor]):
            if index not in seen[vendor]:
                problems.append(
                    _problem(
                        "device_missing",
                        f"{_device(vendor, index)} is in the inventory but sent no reading.",
                    )
                )

    limit = host.max_temperature_c
    for sample in samples:
        temperature = sample.get("temperature_c")
        if isinstance(temperature, int | float) and temperature > limit:
            problems.append(
                _problem(
                    "too_hot",
                    f"{_device(sample.get('vendor'), sample.get('index'))} is at "
                    f"{temperature:g} °C, above the host's limit of {limit} °C.",
                )
            )
    return problems


def unreachable_problem(host, now) -> Problem | None:
    """A problem if the host has not answered for JOBS_HOST_FAILURE_SECONDS (or ever)."""
    cutoff = now - timedelta(seconds=settings.JOBS_HOST_FAILURE_SECONDS)
    if host.last_seen is None:
        if host.created > cutoff:
            return None  # just added: give the loop its first chance
        since = f"it was added on {host.created.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    elif host.last_seen < cutoff:
        since = f"{host.last_seen.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
    else:
        return None
    return _problem("unreachable", f"{UNREACHABLE}: no answer since {since}")


# -- acting on them -------------------------------------------------------------------------------


def _reason(problems) -> str:
    return "; ".join(p["message"] for p in problems)


def update(host, problems: list[Problem], now, *, sources=(LOOP,)) -> None:
    """Record what `sources` found now: drain the host if they found a problem, or, for the
    loop, let a host drained as unreachable return by itself.

    The problems replace those of `sources` and no other's; a problem handed in that belongs to
    another source (the loop passing on what it last read) is left as that source recorded it.
    Only what `sources` found drains: a check's old problem does not drain a host staff resumed.
    """
    sources = set(sources)
    found = [dict(p) for p in problems if source_of(p) in sources]
    with transaction.atomic():  # the loop and the checks both merge into the same row
        current = (
            Host.objects.select_for_update()
            .filter(pk=host.pk)
            .values_list("health_problems", flat=True)
            .first()
        )
        if current is None:
            return
        kept = [p for p in current or [] if source_of(p) not in sources]
        merged = kept + found
        if merged != current:  # most passes find what the last one found
            Host.objects.filter(pk=host.pk).update(health_problems=merged)
    host.health_problems = merged
    if found:
        reason, cause = _reason(found), cause_of(found)
        if not drain(host, reason, now, cause=cause, problems=found):
            _keep_for_staff(host, reason, cause)
        return
    if LOOP in sources:
        _return_to_service(host, now)


@transaction.atomic  # the state change and its notifications, or neither
def _keep_for_staff(host, reason: str, cause: str) -> None:
    """A host drained as unreachable that answers with other problems now waits for staff."""
    if cause == Cause.UNREACHABLE:
        return
    if Host.objects.filter(
        pk=host.pk,
        state=Host.State.MAINTENANCE,
        drained_at__isnull=False,
        drain_cause=Cause.UNREACHABLE,
    ).update(drain_cause=cause, drain_reason=reason):
        host.drain_cause, host.drain_reason = cause, reason
        notify_staff_text(
            "host.alert",
            f"{host.name} answers again, but stays drained: {_subject(reason)}",
            f"{host.name} was drained because it could not be reached. It answers again, but "
            f"reports:\n\n{_listed(host.health_problems)}\n\nIt stays drained until staff "
            f"resume it:\n{_resume_howto(host)}",
            data={"host": host.name},
        )


@transaction.atomic  # the state change and its notifications, or neither
def _return_to_service(host, now) -> None:
    """Resume a host drained as unreachable, now that it answers with no problem."""
    drained_as_unreachable = Host.objects.filter(
        pk=host.pk,
        state=Host.State.MAINTENANCE,
        drained_at__isnull=False,
        drain_cause=Cause.UNREACHABLE,
    )
    reason = drained_as_unreachable.values_list("drain_reason", flat=True).first()
    if reason is None:
        return
    if not drained_as_unreachable.update(
        state=Host.State.ACTIVE, drained_at=None, drain_cause="", drain_reason=""
    ):
        return  # another worker, or staff, did it
    host.state, host.drained_at, host.drain_cause, host.drain_reason = (
        Host.State.ACTIVE, None, "", ""
    )  # fmt: skip
    log.warning("%s answers again with no problem: back in service", host.name, extra=context(host))
    notify_staff_text(
        "host.alert",
        f"{host.name} is back in service",
        f"{host.name} was drained because it could not be reached ({reason}). It answers "
        f"again, at {now.astimezone(UTC):%Y-%m-%d %H:%M} UTC, with no problem, so it was put "
        "back in service by itself.",
        data={"host": host.name},
    )


def drain(host, reason: str, now, *, cause=Cause.STAFF, problems=(), actor=None) -> bool:
    """Take an active host out of service with a cause and a reason; True if this call did it.

    The cause is what code decides by (only UNREACHABLE returns by itself); a caller that names
    none drains as staff would, until staff resume. The claim is one conditional UPDATE, so of
    two workers (or a worker and staff) only one drains and mails. Users whose reservations on
    the host have not started are told, with other slots to book: searched before the
    transaction (the host's row, once claimed, is not held for the searches), and only while
    the host is active (a drained host's passes search nothing).
    """
    reason = reason.strip() or "no reason given"
    if not Host.objects.filter(pk=host.pk, state=Host.State.ACTIVE).exists():
        return False
    horizon = _upcoming_end(host, now)
    notices = None
    if horizon is not None:  # the host is out until staff resume it: none of its slots
        notices = plan_notices(
            host, now, horizon, reason, "operations/mail_drained.txt",
            blocked=(host.pk, now, datetime.max.replace(tzinfo=UTC)),
        )  # fmt: skip
    with transaction.atomic():  # the state change and its notifications, or neither
        return _drained(host, reason, now, cause, problems, actor, notices)


def _upcoming_end(host, now):
    """The end of the last reservation on the host still to start (None: none)."""
    upcoming = Reservation.objects.filter(host=host, state__in=NOT_STARTED, end__gt=now)
    return upcoming.aggregate(end=Max("end"))["end"]


def _drained(host, reason, now, cause, problems, actor, notices: Notices | None) -> bool:
    if not Host.objects.filter(pk=host.pk, state=Host.State.ACTIVE).update(
        state=Host.State.MAINTENANCE, drained_at=now, drain_cause=cause, drain_reason=reason
    ):
        return False
    host.state, host.drained_at, host.drain_cause, host.drain_reason = (
        Host.State.MAINTENANCE, now, cause, reason
    )  # fmt: skip
    by = f" by {actor}" if actor is not None else ""
    log.warning("%s drained%s (%s): %s", host.name, by, cause, reason, extra=context(host))

    # Everyone with a reservation still to start: the host is out until staff say otherwise.
    horizon = _upcoming_end(host, now)  # again: one may have been booked since the plan
    told = 0
    if horizon is not None:
        notices = notices or Notices(host, reason, "operations/mail_drained.txt")
        told = send_notices(notices, now, horizon)
    listed = _listed(problems) if problems else reason
    notify_staff_text(
        "host.drained",
        f"{host.name} drained: {_subject(reason)}",
        f"{host.name} was taken out of service{by} at {now.astimezone(UTC):%Y-%m-%d %H:%M} UTC."
        f"\n\n{listed}\n\nNothing new starts on it; {told} user{'s' if told != 1 else ''} with "
        f"an upcoming reservation {'were' if told != 1 else 'was'} told. Once it is fixed, "
        f"resume it:\n{_resume_howto(host)}",
        data={"host": host.name, "reason": reason},
        actor=actor,
    )
    return True


def resume(host, actor, now=None) -> bool:
    """Staff put a drained host back in service; False if it was not drained. A host put in
    maintenance by hand in the admin (no drain time) counts as drained: staff resume it too."""
    now = now or timezone.now()
    drained = (
        Host.objects.filter(pk=host.pk)
        .values_list("drained_at", "drain_cause", "drain_reason")
        .first()
    )
    if not Host.objects.filter(pk=host.pk, state=Host.State.MAINTENANCE).update(
        state=Host.State.ACTIVE, drained_at=None, drain_cause="", drain_reason=""
    ):
        return False
    host.state, host.drained_at, host.drain_cause, host.drain_reason = (
        Host.State.ACTIVE, None, "", ""
    )  # fmt: skip
    drained_at, cause, reason = drained or (None, "", "")
    log.warning(
        "%s resumed by %s at %s (drained at %s, %s: %s)", host.name, actor, now.isoformat(),
        drained_at.isoformat() if drained_at else "?", cause or "no cause", reason,
    )  # fmt: skip
    if drained_at:
        staff_log(
            actor, host, f"Resumed; it was drained at {drained_at:%Y-%m-%d %H:%M} UTC: {reason}"
        )
    else:
        staff_log(actor, host, "Resumed; it was in maintenance, set by hand")
    return True


# -- telling people -------------------------------------------------------------------------------


def _subject(reason: str) -> str:
    line = " ".join(reason.split())
    return line if len(line) <= 120 else line[:119] + "…"


def _listed(problems) -> str:
    return "\n".join(f"- {p['message']}" for p in problems)


def site_url() -> str:
    """The portal's address for links in mails (SITE_URL)."""
    return settings.SITE_URL


def _resume_howto(host) -> str:
    page = site_url() + host.get_absolute_url()
    return (
        f"- on its page, {page} (Resume), or\n"
        "- in the admin: Hosts, select it, action 'Resume the selected drained hosts'."
    )


def _need(r: AffectedReservation) -> Need:
    """What the reservation holds, as a need another host could meet."""
    devices = [a.accelerator for a in r.active_allocations]
    vendors = {d.vendor for d in devices}
    hwspec = Hwspec(NATIVE_KIND[vendors.pop()]) if len(vendors) == 1 else None
    return Need(count=max(len(devices), 1), hwspec=hwspec, stack=r.stack)


def _alternatives(
    r: AffectedReservation, now, step: timedelta, base: str, cache: dict, blocked=None
) -> list[dict]:
    """Up to ALTERNATIVES other slots for what `r` holds, soonest first. `blocked`, (host pk,
    start, end): a change not written yet (the search runs before its transaction), whose slots
    are left out as the database will soon leave them out."""
    need = _need(r)
    earliest = ceil_to(max(r.start, now), step)
    key = (need, r.end - r.start, earliest)
    if key not in cache:
        cache[key] = availability(
            need,
            duration=r.end - r.start,
            earliest=earliest,
            days=ALTERNATIVE_DAYS,
            step=step,
            limit=ALTERNATIVES + 1,  # one slot a host: one host may be left out below
        )
    found = []
    for slot in cache[key]:
        on_blocked = blocked and slot.host.pk == blocked[0]
        if on_blocked and slot.start < blocked[2] and slot.end > blocked[1]:
            continue
        # The booking form reads ?start= (an aware time, so the reader's zone does not matter).
        query = urlencode({"start": slot.start.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")})
        url = f"{base}{reverse('booking:book', args=[slot.host.name])}?{query}"
        found.append({"host": slot.host, "start": slot.start, "end": slot.end, "url": url})
    return found[:ALTERNATIVES]


def _affected(host, start, end, now, already=None):
    """Reservations on the host that overlap [start, end) and have not started their session,
    with their devices; `already`, a (start, end) announced before, spares those it overlaps."""
    affected = (
        Reservation.objects.filter(
            host=host,
            state__in=NOT_STARTED,
            granted_at__isnull=True,
            start__lt=end,
            end__gt=start,
        )
        .filter(end__gt=now)
        .select_related("user", "stack", "host")
        .prefetch_related(
            Prefetch(
                "allocations",
                Allocation.objects.filter(active=True).select_related("accelerator"),
                to_attr="active_allocations",
            )
        )
        .order_by("start", "pk")
    )
    if already is not None:
        affected = affected.exclude(start__lt=already[1], end__gt=already[0])
    return affected


@dataclass
class Notices:
    """What a change to a host's time tells the owners of the reservations it hits: who, and
    each one's other slots, searched before the change's transaction (`plan_notices`), so the
    host's row is not held for the searches; `send_notices` writes them in the transaction."""

    host: Host
    why: str
    template: str
    already: tuple | None = None
    blocked: tuple | None = None
    search: bool = True  # the template shows other slots
    alternatives: dict[int, list[dict]] = field(default_factory=dict)  # by reservation pk


def plan_notices(host, start, end, why: str, template: str, *, already=None, blocked=None,
                 search: bool = True) -> Notices:  # fmt: skip
    """Search other slots for the reservations that [start, end) will hit, before the change
    is written (`blocked`: its host, start and end, left out of the slots found)."""
    notices = Notices(host, why, template, already, blocked, search)
    if search:
        now, step = timezone.now(), BookingPolicy.current().granularity
        cache: dict = {}  # reservations that need the same get the same search
        for r in _affected(host, start, end, now, already):
            if r.user.email:
                notices.alternatives[r.pk] = _alternatives(r, now, step, site_url(), cache, blocked)
    return notices


def send_notices(notices: Notices, start, end) -> int:
    """In the change's transaction: tell the owner of every reservation that [start, end) hits
    now; one booked since the plan (rare) has its slots searched here. Returns the mails."""
    now, base = timezone.now(), site_url()
    step = BookingPolicy.current().granularity
    cache: dict = {}
    told = 0
    for r in _affected(notices.host, start, end, now, notices.already):
        if not r.user.email:
            continue
        alternatives: list[dict] = []
        if notices.search:
            planned = notices.alternatives.get(r.pk)
            alternatives = (
                planned
                if planned is not None
                else _alternatives(r, now, step, base, cache, notices.blocked)
            )
        context = {
            "r": r,
            "host": notices.host,
            "why": notices.why,
            "start": start,
            "end": end,
            "devices": ", ".join(
                _device(a.accelerator.vendor, a.accelerator.index)
                for a in sorted(r.active_allocations, key=lambda a: a.accelerator.index)
            ),
            "alternatives": alternatives,
            "reservation_url": base + r.get_absolute_url(),
        }
        data = {"host": notices.host.name}
        told += bool(notify("reservation.affected", r.user, notices.template, context, data=data))
    return told


def notify_affected(host, start, end, why: str, template: str, *, already=None,
                    search: bool = True) -> int:  # fmt: skip
    """Mail the owner of every reservation on the host that overlaps [start, end) and has not
    started its session, with up to three other slots (unless `search` is off); returns the
    number of mails. `already`, a (start, end) announced before, spares the reservations that
    overlap it: they know. Searches where it is called: after the change is written."""
    notices = plan_notices(host, start, end, why, template, already=already, search=search)
    return send_notices(notices, start, end)


def maintenance_notices(host, start, end, reason: str, *, before=None) -> Notices:
    """The notices of a maintenance window about to be written (planned or moved from
    `before`, its old start and end), searched before its transaction."""
    return plan_notices(
        host, start, end, f"maintenance: {reason}", "operations/mail_maintenance.txt",
        already=before, blocked=(host.pk, start, end),
    )  # fmt: skip


def maintenance_announce(window, *, before=None) -> int:
    """Tell the owners of reservations that a new maintenance window overlaps; for a window
    moved from `before` (its old start and end), only those it now overlaps and did not."""
    return notify_affected(
        window.host,
        window.start,
        window.end,
        f"maintenance: {window.reason}",
        "operations/mail_maintenance.txt",
        already=before,
    )
