"""The one booking service: pages, API, CLI and the job scheduler all book through here.

To consume capacity (the pretix way): validate first, then in one short durable transaction
lock late and in sorted order (the user's row for quotas, then the accelerators' rows), check
again, and write. On PostgreSQL the exclusion constraint `allocation_no_overlap` is the last
word under any concurrency; on SQLite the transaction takes the write lock at BEGIN. A lock
that cannot be had in time becomes a retry, and exhausted retries a clear "busy" error.
"""

import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Count, DurationField, F, IntegerField, Subquery, Sum
from django.utils import timezone

from portal import errors, rows
from portal.accounts.models import User
from portal.booking.availability import (
    EPOCH,
    Need,
    floor_to,
    free_accelerators,
    maintenance_overlaps,
)
from portal.booking.models import Allocation, AuditEntry, BookingPolicy, Reservation
from portal.errors import Busy, ServiceError, is_lock_failure
from portal.inventory.models import Accelerator, DriverStack, Host, MaintenanceWindow
from portal.notifications.outbox import notify, notify_staff

T = TypeVar("T")
# Devices named as the API names them: (vendor or None, index) on one host.
DeviceNames = Sequence[tuple[str | None, int]]
NO_DEVICES = "Choose at least one accelerator, or the whole host."

RETRIES = 4


# A refusal of the booking service: portal/errors.py's, under the name booking's callers know.
BookingError = ServiceError


class Conflict(errors.Conflict):
    """Someone's booking is in the way; `blockers` are its allocations, where known."""

    def __init__(self, message: str, blockers: Sequence[Allocation] = ()):
        super().__init__("conflict", message)
        self.blockers = list(blockers)


class Blocked(errors.Conflict):
    """Maintenance or another hard stop that is not someone else's booking."""


def _check_on_grid(policy: BookingPolicy, name: str, moment: datetime) -> None:
    if (moment - EPOCH) % policy.granularity:
        raise BookingError(
            "granularity",
            f"The {name} must fall on a multiple of {policy.granularity_minutes} minutes.",
        )


def check_times(policy: BookingPolicy, start: datetime, end: datetime, now: datetime) -> None:
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise BookingError("naive_time", "Times need a time zone (or a UTC offset).")
    if end <= start:
        raise BookingError("end_before_start", "The end must be after the start.")
    step = policy.granularity
    _check_on_grid(policy, "start", start)
    _check_on_grid(policy, "end", end)
    if start < floor_to(now, step):
        raise BookingError("in_past", "The start is in the past; history cannot be booked.")
    if end - start < timedelta(minutes=policy.min_minutes):
        raise BookingError("too_short", f"A booking lasts at least {policy.min_minutes} minutes.")
    if end - start > timedelta(hours=policy.max_hours):
        raise BookingError("too_long", f"A booking lasts at most {policy.max_hours} hours.")
    if start > now + timedelta(days=policy.max_days_ahead):
        raise BookingError(
            "too_far_ahead", f"Bookings open at most {policy.max_days_ahead} days ahead."
        )


def _devices(host: Host, accelerators: Sequence[Accelerator] | None, whole_host: bool):
    """The chosen devices, checked on the objects in hand (the caller has just read them;
    the lock in the transaction checks again). None where the locked read chooses them (the
    whole host, or devices named by index: `_lock_devices`)."""
    if whole_host or accelerators is None:
        return None
    if not accelerators:
        raise BookingError("no_devices", NO_DEVICES)
    ids = {a.pk for a in accelerators}
    if len(ids) != len(accelerators):
        raise BookingError("duplicate_device", "The same accelerator is listed twice.")
    for acc in accelerators:
        if acc.host_id != host.pk:
            raise BookingError("wrong_host", f"Accelerator {acc} is not on {host.name}.")
        if acc.retired:
            raise BookingError("retired_device", f"Accelerator {acc} is retired.")
    return sorted(accelerators, key=lambda a: a.pk)


def _pick(host: Host, found: Sequence[Accelerator], devices: DeviceNames) -> list[Accelerator]:
    """The host's accelerators named by index, or by (vendor, index) where an index is two."""
    chosen = []
    for vendor, index in devices:
        matching = [a for a in found if a.index == index and vendor in (None, a.vendor)]
        if not matching:
            name = f"{vendor} #{index}" if vendor else f"#{index}"
            raise BookingError("no_device", f"{host.name} has no accelerator {name}.", "devices")
        if len(matching) > 1:
            vendors = ", ".join(sorted(a.vendor for a in matching))
            raise BookingError(
                "ambiguous_device",
                f"{host.name} has two accelerators #{index} ({vendors}): give "
                f'{{"vendor": "{matching[0].vendor}", "index": {index}}}.',
                "devices",
            )
        chosen.append(matching[0])
    if len({a.pk for a in chosen}) != len(chosen):
        raise BookingError("duplicate_device", "The same accelerator is listed twice.", "devices")
    return sorted(chosen, key=lambda a: a.pk)


def _lock_devices(
    host: Host, *, checked: list[Accelerator] | None, devices: DeviceNames | None, whole_host: bool
) -> list[Accelerator]:
    """The devices of a booking, locked in pk order: the one read of them where they are named
    by index or are the whole host, a second look at devices the caller checked."""
    mine = host.accelerators.select_for_update().order_by("pk")  # their .host is `host`
    if checked is not None:
        locked = list(mine.filter(pk__in=[a.pk for a in checked]))
        if any(a.retired for a in locked):
            raise BookingError("retired_device", "An accelerator was retired a moment ago.")
        return locked
    if whole_host:
        locked = list(mine.filter(retired=False))
        if not locked:
            raise BookingError("no_devices", f"{host.name} has no accelerator to book.")
        return locked
    if not devices:
        raise BookingError("no_devices", NO_DEVICES)
    chosen = _pick(host, list(mine.filter(index__in={i for _, i in devices})), devices)
    for acc in chosen:
        if acc.retired:
            raise BookingError("retired_device", f"Accelerator {acc} is retired.", "devices")
    return chosen


def _week_of(start: datetime) -> datetime:
    """The start of the UTC week (from Monday) of `start`."""
    day = start.astimezone(UTC).date()
    return datetime.combine(day - timedelta(days=day.weekday()), dt_time(0), UTC)


def _week_allocations(user_id: int, week_start: datetime):
    """The user's active allocations that start in the week. Bounded on the reservation too
    (index user, end): an allocation starts with its reservation, so one that starts in the
    week belongs to a reservation that ends after the week's start; without that bound the
    sum read the user's whole history."""
    week_end = week_start + timedelta(days=7)
    return Allocation.objects.filter(
        reservation__user=user_id,
        reservation__end__gt=week_start,
        reservation__start__lt=week_end,
        active=True,
        start__gte=week_start,
        start__lt=week_end,
    )


def _week_booked(user_id: int, start: datetime) -> tuple[datetime, timedelta]:
    """The UTC week (from Monday) of `start`, and the device-time the user holds in it."""
    week_start = _week_of(start)
    booked = _week_allocations(user_id, week_start).aggregate(total=Sum(F("end") - F("start")))[
        "total"
    ]
    return week_start, booked or timedelta()


def _refuse_week_hours(policy, week_start: datetime, total: timedelta) -> None:
    if total > timedelta(hours=policy.max_device_hours_per_week):
        raise BookingError(
            "quota_hours",
            f"This would make {total / timedelta(hours=1):g} device-hours in the "
            f"week of {week_start:%Y-%m-%d} (at most {policy.max_device_hours_per_week}).",
        )


def _check_week_hours(policy, user_id: int, start: datetime, wanted: timedelta) -> None:
    week_start, booked = _week_booked(user_id, start)
    _refuse_week_hours(policy, week_start, booked + wanted)


def _check_quotas(policy: BookingPolicy, reservation: Reservation, now: datetime) -> None:
    """The user's quotas, counted with `reservation` just written, in one statement of two
    aggregates the database computes: their other open reservations (index user, end), and
    the device-time of their active allocations that start in the reservation's week
    (`_week_allocations`, bounded to the week's reservations). Two numbers come back, however
    many reservations a user with raised quotas holds."""
    user_id, week_start = reservation.user_id, _week_of(reservation.start)
    others = Reservation.objects.filter(user=user_id, state__in=Reservation.OPEN, end__gt=now)
    # One group (the user's), so each subquery yields one value, or none (no rows).
    open_count = (
        others.exclude(pk=reservation.pk)
        .order_by()
        .values("user")
        .annotate(n=Count("pk"))
        .values("n")
    )
    booked = (
        _week_allocations(user_id, week_start)
        .order_by()
        .values("reservation__user")
        .annotate(total=Sum(F("end") - F("start")))
        .values("total")
    )
    open_n, hours = (
        Reservation.objects.filter(pk=reservation.pk)
        .values_list(
            Subquery(open_count, output_field=IntegerField()),
            Subquery(booked, output_field=DurationField()),
        )
        .get()
    )
    if (open_n or 0) >= policy.max_concurrent_reservations:
        raise BookingError(
            "quota_concurrent",
            f"You already have {open_n} upcoming or active reservations "
            f"(at most {policy.max_concurrent_reservations}).",
        )
    _refuse_week_hours(policy, week_start, hours or timedelta())


def _describe(blockers: Sequence[Allocation], user: User) -> str:
    parts = []
    for b in blockers[:5]:
        if b.job_id:
            whose = "held by a training job"
        elif b.reservation and b.reservation.user_id == user.pk:
            whose = "your own booking"
        else:
            whose = "booked"
        parts.append(
            f"{b.accelerator.host.name} #{b.accelerator.index} is {whose} "
            f"from {b.start:%Y-%m-%d %H:%M} to {b.end:%Y-%m-%d %H:%M} UTC"
        )
    return "Not free: " + "; ".join(parts) + "."


def _blockers(ids, start, end, *, exclude: Reservation | None = None) -> list[Allocation]:
    found = Allocation.objects.filter(
        accelerator__in=ids, active=True, start__lt=end, end__gt=start
    )
    if exclude is not None:
        found = found.exclude(reservation=exclude)
    return list(
        found.select_related("accelerator__host", "reservation").order_by(
            "start", "accelerator__index"
        )
    )


def _check_maintenance(host: Host, start: datetime, end: datetime) -> None:
    window = maintenance_overlaps(host, start, end).first()
    if window:
        raise Blocked(
            "maintenance",
            f"{host.name} is in maintenance from {window.start:%Y-%m-%d %H:%M} to "
            f"{window.end:%Y-%m-%d %H:%M} UTC ({window.reason}).",
        )


def audit(actor, ip, action: str, reservation: Reservation | None = None, **detail) -> None:
    AuditEntry.objects.create(
        actor=actor, ip=ip or None, action=action, reservation=reservation, detail=detail
    )


def _constraint_decides() -> bool:
    """Whether the database's exclusion constraint refuses overlaps (PostgreSQL, migration
    0002). Where it does, no check reads the allocations before the insert: the constraint
    answers, and the blockers are read only to name them after it refused."""
    return connection.vendor == "postgresql"


def _write(work: Callable[[], T], *, overlap: Callable[[], Conflict] | None = None) -> T:
    """Run `work` in one short durable transaction; a lock not had in time is retried.

    `overlap` says what the exclusion constraint's refusal is, in the users' words (the
    blockers read after the rollback); without it, a generic conflict.
    """
    for attempt in range(RETRIES):
        try:
            with transaction.atomic(durable=True):
                return work()
        except IntegrityError as exc:
            if "allocation_no_overlap" in str(exc):
                if overlap is not None:
                    raise overlap() from None
                raise Conflict("Someone booked these accelerators a moment ago.") from None
            raise
        except OperationalError as exc:
            # A lock not had in time (SQLite "database is locked", a PostgreSQL lock timeout,
            # deadlock or serialization failure): nothing was written; back off and try again.
            # Anything else (a lost connection, a schema error) is no contention: it propagates.
            if not is_lock_failure(exc):
                raise
            time.sleep(0.05 * 2**attempt)
    raise Busy()


def _refuse_overlap(ids, start, end, user: User) -> None:
    blockers = _blockers(ids, start, end)
    if blockers:
        raise Conflict(_describe(blockers, user), blockers)


def _named_overlap(ids, start, end, user: User) -> Callable[[], Conflict]:
    """After the constraint refused: name what is in the way, as the check before it would."""

    def named() -> Conflict:
        blockers = _blockers(ids, start, end)
        if blockers:
            return Conflict(_describe(blockers, user), blockers)
        # Held at the insert, given back since: still this moment's conflict.
        return Conflict("Someone booked these accelerators a moment ago.")

    return named


@dataclass(frozen=True, slots=True)
class Refs:
    """What a booking names, read at once (`booking_refs`): the host and stack (None if no
    such) and whether the host offers the stack."""

    host: Host | None
    stack: DriverStack | None
    offered: bool


def booking_refs(host_name: str | None, stack_name: str) -> Refs:
    """The host (by name) and stack (by name) of a booking and whether the host offers the
    stack: one query where looking each up costs three (the API's path)."""
    # Names from the models, values as parameters.
    sql = (
        f"SELECT {rows.columns(Host, 'h')}, {rows.columns(DriverStack, 's')}, "  # noqa: S608
        f"EXISTS (SELECT 1 FROM {rows.table(Host.stacks.through)} hs"
        " WHERE hs.host_id = h.id AND hs.driverstack_id = s.id) "
        "FROM (SELECT 1 AS one) o"
        f" LEFT JOIN {rows.table(Host)} h ON h.name = %s"
        f" LEFT JOIN {rows.table(DriverStack)} s ON s.name = %s"
    )
    (host, stack), (offered,) = rows.fetch_one(sql, [host_name, stack_name], Host, DriverStack)
    return Refs(host=host, stack=stack, offered=bool(offered))


def reservation_create(
    *,
    user: User,
    host: Host,
    stack: DriverStack,
    start: datetime,
    end: datetime,
    accelerators: Sequence[Accelerator] | None = None,
    devices: DeviceNames | None = None,
    whole_host: bool = False,
    purpose: str = "",
    ip: str | None = None,
    now: datetime | None = None,
    offered: bool | None = None,
) -> Reservation:
    """Book accelerators of one host for [start, end); raise BookingError (or Conflict).

    The devices: `accelerators` (objects the caller read), or `devices` as (vendor or None,
    index) pairs, which the transaction's locked read resolves (the API's path: the host's
    accelerators are read once), or `whole_host`. `offered`: whether the host offers the
    stack, as `booking_refs` read it with them."""
    now = now or timezone.now()
    policy = BookingPolicy.current()
    if not user.is_debian_member:
        raise BookingError("not_member", "Only Debian members may book; ask staff for access.")
    check_times(policy, start, end, now)
    if host.state != Host.State.ACTIVE:
        raise BookingError("host_unavailable", f"{host.name} is {host.get_state_display()}.")
    if offered is None:
        offered = host.stacks.filter(pk=stack.pk).exists()
    if not offered:
        raise BookingError("stack_missing", f"{host.name} does not offer the stack {stack.name}.")
    checked = _devices(host, accelerators, whole_host)
    state = (
        Reservation.State.PENDING_APPROVAL
        if host.access == Host.Access.APPROVAL
        else Reservation.State.SCHEDULED
    )
    ids: list[int] = []  # the locked devices' pks, for the overlap's words after a refusal

    def work() -> Reservation:
        User.objects.select_for_update().filter(pk=user.pk).first()  # quota race (and extend)
        locked = _lock_devices(host, checked=checked, devices=devices, whole_host=whole_host)
        ids[:] = [d.pk for d in locked]
        _check_maintenance(host, start, end)
        if not _constraint_decides():
            _refuse_overlap(ids, start, end, user)
        # Written first, then the quotas counted with it (one statement): a conflict is
        # answered before a quota, as ever, on both databases; a refusal rolls it all back.
        reservation = Reservation.objects.create(
            user=user, host=host, stack=stack, whole_host=whole_host,
            purpose=purpose, start=start, end=end, state=state,
        )  # fmt: skip
        allocations = Allocation.objects.bulk_create(
            Allocation(accelerator=d, reservation=reservation, start=start, end=end) for d in locked
        )
        _check_quotas(policy, reservation, now)
        audit(
            user, ip, "create", reservation, host=host.name, start=start.isoformat(),
            end=end.isoformat(), devices=sorted(d.index for d in locked), state=state,
        )  # fmt: skip
        _hand_over(reservation, allocations)
        if state == Reservation.State.PENDING_APPROVAL:
            notify_staff(
                "reservation.pending", "booking/mail_pending.txt", {"r": reservation},
                data=about(reservation),
            )  # fmt: skip
        return reservation

    return _write(work, overlap=_named_overlap(ids, start, end, user))


def _hand_over(reservation: Reservation, allocations: list[Allocation]) -> None:
    """Give the new reservation its allocations (with their accelerators) as if prefetched,
    so a caller that shows it (the API's answer) reads nothing back. These are the attributes
    `prefetch_related("allocations")` fills (Django's own, not in its stubs)."""
    for allocation in allocations:
        allocation.reservation = reservation
    cached = reservation.allocations.all()
    cached._result_cache = allocations
    cached._prefetch_done = True  # type: ignore[attr-defined]
    reservation._prefetched_objects_cache = {"allocations": cached}  # type: ignore[attr-defined]


def reservation_create_for_need(
    *,
    user: User,
    need: Need,
    start: datetime,
    end: datetime,
    host: Host | None = None,
    purpose: str = "",
    ip: str | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Book `need.count` matching accelerators on one host (the service picks them)."""
    if need.stack is None:
        raise BookingError("stack_required", "Choose the driver stack for the session.")
    check_times(BookingPolicy.current(), start, end, now or timezone.now())
    candidates = free_accelerators(need, start, end, host=host)
    if not candidates:
        where = f"on {host.name} " if host else ""
        raise Conflict(
            f"No host {where}has {need.describe()} free from {start:%Y-%m-%d %H:%M} "
            f"to {end:%Y-%m-%d %H:%M} UTC; the availability search shows the next free slots."
        )
    last: Conflict | None = None
    for found_host, free in candidates:
        try:
            return reservation_create(
                user=user, host=found_host, stack=need.stack, start=start, end=end,
                accelerators=free[: need.count], purpose=purpose, ip=ip, now=now,
            )  # fmt: skip
        except Conflict as exc:  # taken between our search and our lock: try the next host
            last = exc
    raise last or Conflict("The matching accelerators were taken a moment ago.")


# -- Changes to a reservation -------------------------------------------------------------------


def _locked(reservation: Reservation, now: datetime) -> Reservation:
    """The reservation's row, locked; refused if it is history (history is immutable)."""
    # of=("self",): lock the reservation only. Locking its host row too (the join) would block
    # every booking's foreign-key check on that host and deadlock with it.
    current = (
        Reservation.objects.select_for_update(of=("self",))
        .select_related("host")
        .get(pk=reservation.pk)
    )
    if current.state not in Reservation.OPEN or current.end <= now:
        raise BookingError(
            "immutable",
            f"This reservation is {current.get_state_display()}"
            + (" and over" if current.end <= now else "")
            + "; past reservations cannot be changed.",
        )
    return current


def _may_change(reservation: Reservation, actor: User) -> None:
    if reservation.user_id != actor.pk and not actor.is_staff:
        raise BookingError("not_yours", "This is someone else's reservation.")


def extension_limit(
    reservation: Reservation, now: datetime | None = None
) -> tuple[datetime, str, list[Allocation]]:
    """How far the reservation's end can move, what stops it there, and the blocking bookings."""
    now = now or timezone.now()
    policy = BookingPolicy.current()
    step = policy.granularity
    ids = list(reservation.allocations.filter(active=True).values_list("accelerator", flat=True))
    limits = [
        (reservation.start + timedelta(hours=policy.max_hours), "the longest allowed booking"),
        (floor_to(now + timedelta(days=policy.max_days_ahead), step), "how far ahead one books"),
    ]
    horizon = min(moment for moment, _ in limits)
    blockers = _blockers(ids, reservation.end, horizon, exclude=reservation)
    if blockers:
        limits.append((floor_to(blockers[0].start, step), "the next booking of its devices"))
    window = maintenance_overlaps(reservation.host, reservation.end, horizon).first()
    if window:
        limits.append((floor_to(window.start, step), f"maintenance ({window.reason})"))
    latest, reason = min(limits, key=lambda item: item[0])
    latest = max(latest, reservation.end)
    first = [b for b in blockers if b.start < latest + step] or blockers[:1]
    return latest, reason, first


def _move_end(current: Reservation, end: datetime, actor, ip, action: str) -> Reservation:
    old = current.end
    Allocation.objects.filter(reservation=current, active=True).update(end=end)
    current.end = end
    current.save(update_fields=["end", "updated"])
    audit(actor, ip, action, current, old_end=old.isoformat(), end=end.isoformat())
    return current


def reservation_extend(
    *,
    reservation: Reservation,
    end: datetime,
    actor: User,
    ip: str | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Move the end later; a refusal says how far it could go and what blocks it."""
    now = now or timezone.now()
    policy = BookingPolicy.current()
    _may_change(reservation, actor)

    def work() -> Reservation:
        # The user's row first, as create takes it: the weekly sum below must see every other
        # extension or booking of theirs (without it, four at once overran the quota).
        User.objects.select_for_update().filter(pk=reservation.user_id).first()
        current = _locked(reservation, now)
        if end <= current.end:
            raise BookingError("not_later", "An extension must end later than the reservation.")
        _check_on_grid(policy, "end", end)
        ids = list(
            Accelerator.objects.select_for_update(of=("self",))
            .filter(allocations__reservation=current, allocations__active=True)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        latest, reason, blockers = extension_limit(current, now)
        if end > latest:
            message = (
                f"It can be extended to {latest:%Y-%m-%d %H:%M} UTC at most; {reason} stops it."
            )
            if blockers:
                raise Conflict(message + " " + _describe(blockers, current.user), blockers)
            raise Blocked("extension_limit", message)
        _check_week_hours(policy, current.user_id, current.start, (end - current.end) * len(ids))
        return _move_end(current, end, actor, ip, "extend")

    return _write(work)


def reservation_shorten(
    *,
    reservation: Reservation,
    end: datetime,
    actor: User,
    ip: str | None = None,
    now: datetime | None = None,
) -> Reservation:
    now = now or timezone.now()
    policy = BookingPolicy.current()
    _may_change(reservation, actor)

    def work() -> Reservation:
        current = _locked(reservation, now)
        if end >= current.end:
            raise BookingError("not_earlier", "Shortening must move the end earlier.")
        _check_on_grid(policy, "end", end)
        # Say what the page (and the API) offers instead: before the start that is a cancel,
        # and "end now" exists only once the reservation has started.
        if end <= current.start and current.start > now:
            raise BookingError(
                "before_start",
                "The new end is not after the start; to give the reservation back, "
                "cancel it instead.",
            )
        if end <= now:
            raise BookingError("in_past", "The new end has passed; end it now instead.")
        if end - current.start < timedelta(minutes=policy.min_minutes):
            raise BookingError(
                "too_short", f"A booking lasts at least {policy.min_minutes} minutes."
            )
        return _move_end(current, end, actor, ip, "shorten")

    return _write(work)


def reservation_end_now(
    *, reservation: Reservation, actor: User, ip: str | None = None, now: datetime | None = None
) -> Reservation:
    """End a running reservation now: the devices are free at once, the loop revokes access."""
    _may_change(reservation, actor)
    return _end_now(reservation, actor, ip, now or timezone.now(), "end")


def reservation_reclaim(*, reservation: Reservation, now: datetime, idle: timedelta) -> Reservation:
    """End an idle reservation now, by the portal itself (portal/operations/activity.py); the
    owner is told, in the same transaction."""
    tell = ("operations/mail_idle_ended.txt", {"idle": idle})
    return _end_now(reservation, None, None, now, "reclaim idle", tell=tell)


def reservation_withdraw(*, reservation: Reservation, reason: str, now: datetime) -> Reservation:
    """End a running reservation whose user may no longer hold it (inactive, not a member);
    the owner is told why, in the same transaction."""
    tell = ("operations/mail_withdrawn.txt", {"reason": reason})
    return _end_now(reservation, None, None, now, "withdraw access", tell=tell, reason=reason)


def about(r: Reservation) -> dict:
    """What a webhook receiver is given about a reservation beside the text."""
    return {
        "reservation": r.pk,
        "host": r.host.name,
        "session": r.session_name,
        "start": r.start.isoformat(),
        "end": r.end.isoformat(),
        "url": settings.SITE_URL + r.get_absolute_url(),
    }


def may_hold(user: User) -> bool:
    """Whether the user may hold a session now: decided at every pass, not at booking time."""
    return user.is_active and user.is_debian_member


def _end_now(
    reservation: Reservation,
    actor,
    ip,
    now: datetime,
    action: str,
    *,
    tell: tuple[str, dict] | None = None,
    **detail,
) -> Reservation:
    def work() -> Reservation:
        current = _locked(reservation, now)
        if current.start >= now:
            raise BookingError("not_started", "It has not started; cancel it instead.")
        old = current.end
        current.state = (
            Reservation.State.ENDING
            # A session may exist on the host: the reconcile loop revokes it, then ends it.
            if current.state
            in (Reservation.State.PROVISIONING, Reservation.State.ACTIVE, Reservation.State.FAILED)
            else Reservation.State.ENDED
        )
        current.end = now
        Allocation.objects.filter(reservation=current, active=True).update(end=now)
        current.save(update_fields=["end", "state", "updated"])
        audit(actor, ip, action, current, old_end=old.isoformat(), end=now.isoformat(), **detail)
        if tell is not None:
            template, context = tell
            notify(
                "session.ended", current.user, template, {"r": current, **context},
                data=about(current),
            )  # fmt: skip
        return current

    return _write(work)


def reservation_cancel(
    *, reservation: Reservation, actor: User, ip: str | None = None, now: datetime | None = None
) -> Reservation:
    """Give a reservation back before it starts; its devices are free at once."""
    now = now or timezone.now()
    _may_change(reservation, actor)

    def work() -> Reservation:
        current = _locked(reservation, now)
        if current.start <= now:
            raise BookingError("started", "It has started; end it now instead of cancelling.")
        current.state = Reservation.State.CANCELLED
        current.save(update_fields=["state", "updated"])
        Allocation.objects.filter(reservation=current).update(active=False)
        audit(actor, ip, "cancel", current)
        return current

    return _write(work)


def reservation_decide(
    *,
    reservation: Reservation,
    approve: bool,
    actor: User,
    reason: str = "",
    ip: str | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Staff approve or reject a reservation that waits for approval; the reason (why it was
    rejected, shown to its owner) goes into the audit entry's detail."""
    now = now or timezone.now()
    reason = reason.strip()[:2000]
    if not actor.is_staff:
        raise BookingError("not_staff", "Only staff approve reservations.")

    def work() -> Reservation:
        current = _locked(reservation, now)
        if current.state != Reservation.State.PENDING_APPROVAL:
            raise BookingError("not_pending", "This reservation does not wait for approval.")
        if approve:
            current.state = Reservation.State.SCHEDULED
        else:
            current.state = Reservation.State.CANCELLED
            Allocation.objects.filter(reservation=current).update(active=False)
        current.save(update_fields=["state", "updated"])
        detail = {"reason": reason} if reason else {}
        audit(actor, ip, "approve" if approve else "reject", current, **detail)
        notify(
            "reservation.approved" if approve else "reservation.rejected",
            current.user,
            "operations/mail_approved.txt" if approve else "operations/mail_rejected.txt",
            {"r": current, "reason": reason, "reservation_url": about(current)["url"]},
            data=about(current),
        )
        return current

    return _write(work)


# -- Other owners (training jobs) --------------------------------------------------------------


@dataclass(frozen=True)
class Hold:
    """One owner's devices over [start, end), for allocate_many."""

    owner: int
    accelerators: Sequence[int]
    start: datetime
    end: datetime


class _NotHeld(Exception):
    """An owner allocate_many cannot hold after all."""


def allocate_many(
    *,
    owner_field: str,
    holds: Sequence[Hold],
    claim: Callable[[Sequence[tuple[int, int]]], Collection[int]],
) -> dict[int, str]:
    """Hold devices for owners other than reservations, all in one short transaction; returns
    owner id -> why it was not held.

    `owner_field` names the Allocation field that points to the owner (`"job_id"`), so booking
    holds devices for the apps above it without importing them. The booking invariant as for a
    reservation, in bulk: the devices locked once, in pk order; the maintenance and overlap
    checks from one read each, a hold counting against the later ones; on PostgreSQL the
    exclusion constraint has the last word. The users' rules (grid, quotas) do not apply: the
    owner's app applies its own. `claim([(owner, host), ...])` is the owners' own move (a job:
    waiting -> scheduled), in the same transaction before their allocations are written; it
    returns the owners it moved, and the others are not held, so an owner never holds devices
    twice.

    The writes of all the holds that pass the checks are one batch: one claim, one INSERT of
    their allocations, in a savepoint. Only if the exclusion constraint refuses that batch
    (someone who does not lock the devices booked some meanwhile) is it rolled back and each
    hold written again in a savepoint of its own, so that only the refused ones are left out.
    """
    if owner_field == "reservation_id" or owner_field not in {
        f.attname for f in Allocation._meta.fields
    }:
        raise ValueError(f"Allocation has no other owner field {owner_field!r}")
    if not holds:
        return {}
    ids = sorted({pk for hold in holds for pk in hold.accelerators})
    first, last = min(h.start for h in holds), max(h.end for h in holds)

    def work() -> dict[int, str]:
        refused: dict[int, str] = {}
        locked = {
            pk: (host_id, retired)
            for pk, host_id, retired in Accelerator.objects.select_for_update()
            .filter(pk__in=ids)
            .order_by("pk")
            .values_list("pk", "host_id", "retired")
        }
        hosts = {host_id for host_id, _ in locked.values()}
        maintenance = _spans(
            MaintenanceWindow.objects.filter(host_id__in=hosts, start__lt=last, end__gt=first),
            "host_id",
        )
        booked = _spans(
            Allocation.objects.filter(
                accelerator_id__in=ids, active=True, start__lt=last, end__gt=first
            ),
            "accelerator_id",
        )
        checked: list[tuple[Hold, int]] = []  # (hold, its host), free as far as the reads say
        for hold in holds:
            try:
                if any(pk not in locked or locked[pk][1] for pk in hold.accelerators):
                    raise _NotHeld("an accelerator was retired")
                (host_id,) = {locked[pk][0] for pk in hold.accelerators}
                if _overlaps(maintenance[host_id], hold):
                    raise _NotHeld("its host goes into maintenance")
                if any(_overlaps(booked[pk], hold) for pk in hold.accelerators):
                    raise _NotHeld("booked meanwhile")
            except _NotHeld as exc:
                refused[hold.owner] = str(exc)
                continue
            checked.append((hold, host_id))
            for pk in hold.accelerators:  # no later hold may take them
                booked[pk].append((hold.start, hold.end))
        try:
            with transaction.atomic():  # the batch's savepoint
                refused |= _hold_all(owner_field, checked, claim)
        except IntegrityError as exc:
            if "allocation_no_overlap" not in str(exc):
                raise
            for hold, host_id in checked:  # one at a time, to find the refused ones
                try:
                    with transaction.atomic():  # the owner's savepoint
                        refused |= _hold_all(owner_field, [(hold, host_id)], claim)
                except IntegrityError as exc:
                    if "allocation_no_overlap" not in str(exc):
                        raise
                    refused[hold.owner] = "booked meanwhile"
        return refused

    return _write(work)


def _hold_all(
    owner_field: str,
    holds: Sequence[tuple[Hold, int]],
    claim: Callable[[Sequence[tuple[int, int]]], Collection[int]],
) -> dict[int, str]:
    """Claim the owners of (hold, host) pairs, then write the allocations of those claimed, in
    two statements (a few more on SQLite for many rows); returns the unclaimed -> why."""
    if not holds:
        return {}
    claimed = set(claim([(hold.owner, host_id) for hold, host_id in holds]))
    _insert_allocations(owner_field, [hold for hold, _ in holds if hold.owner in claimed])
    return {hold.owner: "no longer waiting" for hold, _ in holds if hold.owner not in claimed}


def _spans(rows, key: str) -> dict[int, list[tuple[datetime, datetime]]]:
    """key -> the (start, end) of each row."""
    spans: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    for pk, start, end in rows.values_list(key, "start", "end"):
        spans[pk].append((start, end))
    return spans


def _overlaps(spans: list[tuple[datetime, datetime]], hold: Hold) -> bool:
    return any(start < hold.end and end > hold.start for start, end in spans)


def _insert_allocations(owner_field: str, holds: Sequence[Hold]) -> None:
    """Allocation.objects.bulk_create() of the holds' rows without a model object per row (a
    scheduler pass writes a thousand): on PostgreSQL one INSERT ... SELECT FROM unnest() of
    one array per column, whatever the number of rows; elsewhere multi-row INSERTs, as many
    rows each as the database takes parameters."""
    rows = [
        (pk, hold.owner, hold.start, hold.end, True) for hold in holds for pk in hold.accelerators
    ]
    if not rows:
        return
    meta = Allocation._meta
    column = {f.attname: f.column for f in meta.concrete_fields}
    names = ("accelerator_id", owner_field, "start", "end", "active")
    columns = ", ".join(connection.ops.quote_name(column[name]) for name in names)
    table = connection.ops.quote_name(meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays = [list(values) for values in zip(*rows, strict=True)]
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT * FROM unnest("  # noqa: S608 (names from the model, values as parameters)
                "%s::bigint[], %s::bigint[], %s::timestamptz[], %s::timestamptz[], "
                "%s::boolean[])",
                arrays,
            )
            return
        adapt = connection.ops.adapt_datetimefield_value
        size = max(1, (connection.features.max_query_params or 999) // len(names))
        for at in range(0, len(rows), size):
            chunk = rows[at : at + size]
            cursor.execute(
                f"INSERT INTO {table} ({columns}) VALUES "  # noqa: S608 (names from the model, values as parameters)
                + ", ".join(["(%s, %s, %s, %s, %s)"] * len(chunk)),
                [v for pk, owner, s, e, a in chunk for v in (pk, owner, adapt(s), adapt(e), a)],
            )
