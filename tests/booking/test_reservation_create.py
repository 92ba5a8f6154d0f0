"""The booking service's rules, each refused with a precise code and message."""

import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest

from portal.booking.models import Allocation, Reservation
from portal.booking.services import (
    BookingError,
    Conflict,
    reservation_cancel,
    reservation_create,
)
from portal.http import status_of
from portal.inventory.models import Host
from tests.factories import AcceleratorFactory, DriverStackFactory, UserFactory
from tests.helpers import NOW

H = timedelta(hours=1)
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def book(user, host, stack, start=START, end=START + 2 * H, **kw):
    kw.setdefault("accelerators", list(host.accelerators.all()[:1]))
    return reservation_create(
        user=user, host=host, stack=stack, start=start, end=end, now=NOW, **kw
    )


def test_it_books_chosen_devices(member, host, stack):
    r = book(member, host, stack, accelerators=list(host.accelerators.all()[:2]))
    assert r.state == Reservation.State.SCHEDULED
    assert sorted(a.accelerator.index for a in r.allocations.all()) == [0, 1]
    assert all(a.start == START and a.end == START + 2 * H for a in r.allocations.all())


def test_it_books_a_whole_host(member, host, stack):
    r = book(member, host, stack, accelerators=None, whole_host=True)
    assert r.allocations.count() == 4 and r.whole_host


def test_it_refuses_an_overlap_and_names_what_blocks(member, host, stack):
    book(member, host, stack)
    other = UserFactory(debian_member_source="salsa")
    with pytest.raises(Conflict) as exc:
        book(other, host, stack, start=START + H, end=START + 3 * H)
    assert status_of(exc.value) == 409  # the API and pages answer 409
    assert "gpu1 #0 is booked from 2026-11-23 10:00 to 2026-11-23 12:00 UTC" in exc.value.message
    assert Reservation.objects.count() == 1 and Allocation.objects.count() == 1


def test_it_allows_back_to_back_slots(member, host, stack):
    book(member, host, stack)
    book(member, host, stack, start=START + 2 * H, end=START + 3 * H)  # [) ranges touch
    assert Allocation.objects.count() == 2


def test_it_refuses_a_whole_host_when_one_device_is_taken(member, host, stack):
    book(member, host, stack, accelerators=[host.accelerators.get(index=3)])
    with pytest.raises(Conflict, match="#3"):
        book(member, host, stack, accelerators=None, whole_host=True)


def test_it_books_across_a_daylight_saving_change_in_berlin(member, host, stack):
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    # 2027-03-28 02:00 CET jumps to 03:00 CEST: 01:00 to 04:00 local is two real hours.
    now = datetime(2027, 3, 20, tzinfo=UTC)
    start = datetime(2027, 3, 28, 1, 0, tzinfo=berlin)
    end = datetime(2027, 3, 28, 4, 0, tzinfo=berlin)
    r = reservation_create(user=member, host=host, stack=stack, start=start, end=end,
                           accelerators=[host.accelerators.first()], now=now)  # fmt: skip
    r.refresh_from_db()
    assert r.end - r.start == 2 * H
    assert r.start == datetime(2027, 3, 28, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "code"),
    [
        (START, START, "end_before_start"),
        (START, START - H, "end_before_start"),
        (START + timedelta(minutes=7), START + H, "granularity"),
        (START, START + timedelta(minutes=50, seconds=1), "granularity"),
        (START - 2 * H, START, "in_past"),
        (START, START + 73 * H, "too_long"),
        (START + timedelta(days=31), START + timedelta(days=31) + H, "too_far_ahead"),
        (START.replace(tzinfo=None), START + H, "naive_time"),
    ],
)
def test_it_refuses_bad_times(member, host, stack, start, end, code):
    with pytest.raises(BookingError) as exc:
        book(member, host, stack, start=start, end=end)
    assert exc.value.code == code
    assert not Reservation.objects.exists()


def test_it_refuses_too_short_slots(member, host, stack, policy):
    policy.min_minutes = 30
    policy.save()
    with pytest.raises(BookingError, match="at least 30 minutes"):
        book(member, host, stack, end=START + timedelta(minutes=15))


def test_it_accepts_the_current_slot(member, host, stack):
    r = book(member, host, stack, start=datetime(2026, 11, 23, 9, 0, tzinfo=UTC), end=START)
    assert r.start < NOW


def test_it_refuses_non_members(host, stack):
    with pytest.raises(BookingError) as exc:
        book(UserFactory(), host, stack)
    assert exc.value.code == "not_member"


@pytest.mark.parametrize("state", [Host.State.MAINTENANCE, Host.State.OFFLINE, Host.State.RETIRED])
def test_it_refuses_hosts_out_of_service(member, host, stack, state):
    host.state = state
    host.save()
    with pytest.raises(BookingError) as exc:
        book(member, host, stack)
    assert exc.value.code == "host_unavailable"


def test_it_refuses_a_stack_the_host_lacks(member, host):
    with pytest.raises(BookingError) as exc:
        book(member, host, DriverStackFactory(name="rocm-6", hwspecs=["rocm"]))
    assert exc.value.code == "stack_missing"


def test_it_refuses_devices_of_another_host_or_retired(member, host, stack):
    with pytest.raises(BookingError) as exc:
        book(member, host, stack, accelerators=[AcceleratorFactory()])
    assert exc.value.code == "wrong_host"
    acc = host.accelerators.get(index=2)
    acc.retired = True
    acc.save()
    with pytest.raises(BookingError) as exc:
        book(member, host, stack, accelerators=[acc])
    assert exc.value.code == "retired_device"


def test_it_holds_reservations_on_approval_hosts(member, host, stack):
    host.access = Host.Access.APPROVAL
    host.save()
    assert book(member, host, stack).state == Reservation.State.PENDING_APPROVAL


def test_it_limits_concurrent_reservations(member, host, stack, policy):
    policy.max_concurrent_reservations = 2
    policy.save()
    book(member, host, stack)
    book(member, host, stack, start=START + 2 * H, end=START + 3 * H)
    with pytest.raises(BookingError) as exc:
        book(member, host, stack, start=START + 3 * H, end=START + 4 * H)
    assert exc.value.code == "quota_concurrent"


def test_quotas_count_only_what_still_holds(member, host, stack, policy):
    """A cancelled reservation counts for neither quota; one in another week counts as open but
    not for this week's hours; a reservation of several devices is one reservation."""
    policy.max_concurrent_reservations, policy.max_device_hours_per_week = 2, 10
    policy.save()
    every = list(host.accelerators.all())
    cancelled = book(member, host, stack, accelerators=every, end=START + 2 * H)  # 8 h
    reservation_cancel(reservation=cancelled, actor=member, now=NOW)
    book(member, host, stack, accelerators=every, start=START + 7 * 24 * H,
         end=START + 7 * 24 * H + 2 * H)  # fmt: skip
    book(member, host, stack, accelerators=every[:2], end=START + 5 * H)  # 2 x 5 = 10 h
    with pytest.raises(BookingError) as exc:
        book(member, host, stack, start=START + 6 * H, end=START + 7 * H)
    assert exc.value.code == "quota_concurrent"
    assert "already have 2 upcoming or active" in exc.value.message
    policy.max_concurrent_reservations = 3
    policy.save()
    with pytest.raises(BookingError) as exc:
        book(member, host, stack, start=START + 6 * H, end=START + 7 * H)
    assert exc.value.code == "quota_hours"
    assert "11 device-hours in the week of 2026-11-23" in exc.value.message


def test_it_limits_device_hours_per_week(member, host, stack, policy):
    policy.max_device_hours_per_week = 10
    policy.save()
    book(member, host, stack, accelerators=list(host.accelerators.all()), end=START + 2 * H)  # 8
    with pytest.raises(BookingError) as exc:
        book(member, host, stack, start=START + 2 * H, end=START + 5 * H)  # +3 = 11
    assert exc.value.code == "quota_hours"
    assert "11 device-hours in the week of 2026-11-23" in exc.value.message
