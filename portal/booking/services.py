"""The one booking service: pages, API, CLI and the job scheduler all book through here.

To consume capacity (the pretix way): validate first, then in one short durable transaction
lock late and in sorted order (the user's row for quotas, then the accelerators' rows), check
again, and write. On PostgreSQL the exclusion constraint `allocation_no_overlap` is the last
word under any concurrency; on SQLite the transaction takes the write lock at BEGIN. A lock
that cannot be had in time becomes a retry, and exhausted retries a clear "busy" error.
"""

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time

from django.db import IntegrityError, OperationalError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from portal.accounts.models import User
from portal.booking.models import Allocation, BookingPolicy, Reservation
from portal.inventory.models import Accelerator, DriverStack, Host

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RETRIES = 4
OPEN_STATES = [
    Reservation.State.PENDING_APPROVAL,
    Reservation.State.SCHEDULED,
    Reservation.State.PROVISIONING,
    Reservation.State.ACTIVE,
]


class BookingError(Exception):
    """A request the service refuses; `code` is machine-readable, the message is for people."""

    status = 400

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Conflict(BookingError):
    status = 409

    def __init__(self, message: str, blockers: Sequence[Allocation] = ()):
        super().__init__("conflict", message)
        self.blockers = list(blockers)


class Busy(BookingError):
    status = 503

    def __init__(self):
        super().__init__("busy", "The booking system is busy; please try again in a moment.")


def floor_to(moment: datetime, step: timedelta) -> datetime:
    return moment - (moment - EPOCH) % step


def check_times(policy: BookingPolicy, start: datetime, end: datetime, now: datetime) -> None:
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise BookingError("naive_time", "Times need a time zone (or a UTC offset).")
    if end <= start:
        raise BookingError("end_before_start", "The end must be after the start.")
    step = policy.granularity
    for name, moment in (("start", start), ("end", end)):
        if (moment - EPOCH) % step:
            raise BookingError(
                "granularity",
                f"The {name} must fall on a multiple of {policy.granularity_minutes} minutes.",
            )
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
    usable = list(host.accelerators.filter(retired=False).order_by("pk"))
    if whole_host:
        if not usable:
            raise BookingError("no_devices", f"{host.name} has no accelerator to book.")
        return usable
    if not accelerators:
        raise BookingError("no_devices", "Choose at least one accelerator, or the whole host.")
    ids = {a.pk for a in accelerators}
    if len(ids) != len(accelerators):
        raise BookingError("duplicate_device", "The same accelerator is listed twice.")
    by_id = {a.pk: a for a in usable}
    for acc in accelerators:
        if acc.host_id != host.pk:
            raise BookingError("wrong_host", f"Accelerator {acc} is not on {host.name}.")
        if acc.pk not in by_id:
            raise BookingError("retired_device", f"Accelerator {acc} is retired.")
    return sorted(accelerators, key=lambda a: a.pk)


def _check_quotas(policy: BookingPolicy, user: User, devices, start, end, now) -> None:
    open_count = user.reservations.filter(state__in=OPEN_STATES, end__gt=now).count()
    if open_count >= policy.max_concurrent_reservations:
        raise BookingError(
            "quota_concurrent",
            f"You already have {open_count} upcoming or active reservations "
            f"(at most {policy.max_concurrent_reservations}).",
        )
    week = timedelta(days=7)
    day = start.astimezone(UTC).date()
    week_start = datetime.combine(day - timedelta(days=day.weekday()), dt_time(0), UTC)
    booked = (
        Allocation.objects.filter(
            reservation__user=user, active=True, start__gte=week_start, start__lt=week_start + week
        ).aggregate(total=Sum(F("end") - F("start")))["total"]
        or timedelta()
    )
    wanted = (end - start) * len(devices)
    limit = timedelta(hours=policy.max_device_hours_per_week)
    if booked + wanted > limit:
        raise BookingError(
            "quota_hours",
            f"This would make {(booked + wanted) / timedelta(hours=1):g} device-hours in the "
            f"week of {week_start:%Y-%m-%d} (at most {policy.max_device_hours_per_week}).",
        )


def _describe(blockers: Sequence[Allocation], user: User) -> str:
    parts = []
    for b in blockers[:5]:
        whose = (
            "your own booking" if b.reservation and b.reservation.user_id == user.pk else "booked"
        )
        parts.append(
            f"{b.accelerator.host.name} #{b.accelerator.index} is {whose} "
            f"from {b.start:%Y-%m-%d %H:%M} to {b.end:%Y-%m-%d %H:%M} UTC"
        )
    return "Not free: " + "; ".join(parts) + "."


def reservation_create(
    *,
    user: User,
    host: Host,
    stack: DriverStack,
    start: datetime,
    end: datetime,
    accelerators: Sequence[Accelerator] | None = None,
    whole_host: bool = False,
    purpose: str = "",
    now: datetime | None = None,
) -> Reservation:
    """Book accelerators of one host for [start, end); raise BookingError (or Conflict)."""
    now = now or timezone.now()
    policy = BookingPolicy.current()
    if not user.is_debian_member:
        raise BookingError("not_member", "Only Debian members may book; ask staff for access.")
    check_times(policy, start, end, now)
    if host.state != Host.State.ACTIVE:
        raise BookingError("host_unavailable", f"{host.name} is {host.get_state_display()}.")
    if not host.stacks.filter(pk=stack.pk).exists():
        raise BookingError("stack_missing", f"{host.name} does not offer the stack {stack.name}.")
    devices = _devices(host, accelerators, whole_host)
    ids = [d.pk for d in devices]
    state = (
        Reservation.State.PENDING_APPROVAL
        if host.access == Host.Access.APPROVAL
        else Reservation.State.SCHEDULED
    )

    for attempt in range(RETRIES):
        try:
            with transaction.atomic(durable=True):
                User.objects.select_for_update().filter(pk=user.pk).first()  # quota race
                list(Accelerator.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
                blockers = list(
                    Allocation.objects.filter(
                        accelerator__in=ids, active=True, start__lt=end, end__gt=start
                    )
                    .select_related("accelerator__host", "reservation")
                    .order_by("start", "accelerator__index")
                )
                if blockers:
                    raise Conflict(_describe(blockers, user), blockers)
                _check_quotas(policy, user, devices, start, end, now)
                reservation = Reservation.objects.create(
                    user=user, host=host, stack=stack, whole_host=whole_host,
                    purpose=purpose, start=start, end=end, state=state,
                )  # fmt: skip
                Allocation.objects.bulk_create(
                    Allocation(accelerator_id=i, reservation=reservation, start=start, end=end)
                    for i in ids
                )
                return reservation
        except IntegrityError as exc:
            if "allocation_no_overlap" in str(exc):
                raise Conflict("Someone booked these accelerators a moment ago.") from None
            raise
        except OperationalError:
            # A lock not had in time (SQLite "database is locked", a PostgreSQL lock timeout
            # or deadlock): nothing was written; back off and try again.
            time.sleep(0.05 * 2**attempt)
    raise Busy()
