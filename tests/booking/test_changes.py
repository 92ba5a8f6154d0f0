"""Extend, shorten, end now, cancel, approve: each checked, locked, and written to the audit log."""

from datetime import UTC, datetime, timedelta

import pytest

from portal.booking.models import Allocation, AuditEntry, Reservation
from portal.booking.services import (
    Blocked,
    BookingError,
    Conflict,
    extension_limit,
    reservation_cancel,
    reservation_create,
    reservation_decide,
    reservation_end_now,
    reservation_extend,
    reservation_shorten,
)
from portal.inventory.models import Host, MaintenanceWindow
from tests.factories import UserFactory
from tests.helpers import NOW

H = timedelta(hours=1)
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def book(user, host, stack, start=START, end=START + 2 * H, indices=(0,)):
    return reservation_create(
        user=user, host=host, stack=stack, start=start, end=end, now=NOW, ip="192.0.2.7",
        accelerators=[host.accelerators.get(index=i) for i in indices],
    )  # fmt: skip


def test_it_extends_and_records_who_did_it(member, host, stack):
    r = book(member, host, stack)
    reservation_extend(reservation=r, end=START + 4 * H, actor=member, ip="2001:db8::1", now=NOW)
    r.refresh_from_db()
    assert r.end == START + 4 * H
    assert set(r.allocations.values_list("end", flat=True)) == {START + 4 * H}
    entry = AuditEntry.objects.filter(action="extend").get()
    assert (entry.actor, entry.ip, entry.reservation) == (member, "2001:db8::1", r)
    assert entry.detail == {"old_end": (START + 2 * H).isoformat(), "end": r.end.isoformat()}
    assert AuditEntry.objects.get(action="create").ip == "192.0.2.7"


def test_it_says_how_far_an_extension_can_go_and_who_blocks_it(member, host, stack):
    r = book(member, host, stack)
    neighbour = UserFactory(debian_member_source="salsa")
    book(neighbour, host, stack, start=START + 5 * H, end=START + 6 * H)
    latest, reason, blockers = extension_limit(r, NOW)
    assert latest == START + 5 * H and reason == "the next booking of its devices"
    assert [b.start for b in blockers] == [START + 5 * H]
    with pytest.raises(Conflict) as exc:
        reservation_extend(reservation=r, end=START + 6 * H, actor=member, now=NOW)
    assert "extended to 2026-11-23 15:00 UTC at most" in exc.value.message
    assert "gpu1 #0 is booked from 2026-11-23 15:00" in exc.value.message
    assert [b.reservation.user for b in exc.value.blockers] == [neighbour]
    r.refresh_from_db()
    assert r.end == START + 2 * H  # nothing half-written
    reservation_extend(reservation=r, end=START + 5 * H, actor=member, now=NOW)  # up to it


def test_it_caps_an_extension_at_the_longest_booking_and_at_maintenance(
    member, host, stack, policy
):
    r = book(member, host, stack)
    policy.max_hours = 10
    policy.save()
    assert extension_limit(r, NOW)[:2] == (START + 10 * H, "the longest allowed booking")
    MaintenanceWindow.objects.create(host=host, start=START + 7 * H, end=START + 9 * H, reason="fw")
    assert extension_limit(r, NOW)[:2] == (START + 7 * H, "maintenance (fw)")
    with pytest.raises(Blocked, match="maintenance"):
        reservation_extend(reservation=r, end=START + 8 * H, actor=member, now=NOW)


def test_it_refuses_an_extension_off_the_grid_or_not_later(member, host, stack):
    r = book(member, host, stack)
    for end, code in [(START + 3 * H + timedelta(minutes=5), "granularity"), (START, "not_later")]:
        with pytest.raises(BookingError) as exc:
            reservation_extend(reservation=r, end=end, actor=member, now=NOW)
        assert exc.value.code == code


def test_it_shortens_and_frees_the_rest(member, host, stack, policy):
    r = book(member, host, stack, end=START + 4 * H)
    reservation_shorten(reservation=r, end=START + H, actor=member, now=NOW)
    other = UserFactory(debian_member_source="salsa")
    book(other, host, stack, start=START + H, end=START + 2 * H)  # now free
    policy.min_minutes = 30
    policy.save()
    with pytest.raises(BookingError, match="at least 30 minutes"):
        reservation_shorten(reservation=r, end=START + H / 4, actor=member, now=NOW)


def test_it_says_to_cancel_when_shortening_leaves_nothing_before_the_start(member, host, stack):
    r = book(member, host, stack, start=START + 2 * H, end=START + 4 * H)
    # The new end is at or before the start, whether still to come or already passed.
    for end in (START + 2 * H, START + H, NOW - timedelta(minutes=7)):
        with pytest.raises(BookingError) as exc:
            reservation_shorten(reservation=r, end=end, actor=member, now=NOW)
        assert exc.value.code == "before_start"
        assert "cancel it instead" in exc.value.message and "end now" not in exc.value.message
    r.refresh_from_db()
    assert r.end == START + 4 * H


def test_it_says_to_end_now_when_shortening_a_running_one_into_the_past(member, host, stack):
    r = book(member, host, stack, end=START + 4 * H)
    for end in (START + H, START, START - H):  # a started one cannot be cancelled
        with pytest.raises(BookingError) as exc:
            reservation_shorten(reservation=r, end=end, actor=member, now=START + 2 * H)
        assert exc.value.code == "in_past" and "end it now instead" in exc.value.message


def test_it_ends_a_running_reservation_now(member, host, stack):
    r = book(member, host, stack)
    Reservation.objects.filter(pk=r.pk).update(state=Reservation.State.ACTIVE)
    moment = START + H + timedelta(minutes=3)
    reservation_end_now(reservation=r, actor=member, now=moment)
    r.refresh_from_db()
    assert (r.state, r.end) == (Reservation.State.ENDING, moment)
    assert Allocation.objects.get(reservation=r).end == moment
    with pytest.raises(BookingError) as exc:
        reservation_extend(reservation=r, end=START + 3 * H, actor=member, now=moment)
    assert exc.value.code == "immutable"


def test_it_cancels_only_before_the_start(member, host, stack):
    r = book(member, host, stack)
    with pytest.raises(BookingError, match="end it now"):
        reservation_cancel(reservation=r, actor=member, now=START + H)
    reservation_cancel(reservation=r, actor=member, now=NOW)
    r.refresh_from_db()
    assert r.state == Reservation.State.CANCELLED
    assert not Allocation.objects.filter(active=True).exists()
    book(member, host, stack)  # the slot is free again
    with pytest.raises(BookingError) as exc:
        reservation_cancel(reservation=r, actor=member, now=NOW)
    assert exc.value.code == "immutable"


def test_it_keeps_past_reservations_immutable(member, host, stack):
    r = book(member, host, stack)
    later = START + 3 * H
    for change in (
        lambda: reservation_extend(reservation=r, end=later + H, actor=member, now=later),
        lambda: reservation_shorten(reservation=r, end=START + H, actor=member, now=later),
        lambda: reservation_end_now(reservation=r, actor=member, now=later),
        lambda: reservation_cancel(reservation=r, actor=member, now=later),
    ):
        with pytest.raises(BookingError) as exc:
            change()
        assert exc.value.code == "immutable"


def test_it_refuses_changes_to_someone_elses_reservation(member, host, stack):
    r = book(member, host, stack)
    stranger = UserFactory(debian_member_source="salsa")
    with pytest.raises(BookingError) as exc:
        reservation_cancel(reservation=r, actor=stranger, now=NOW)
    assert exc.value.code == "not_yours"
    staff = UserFactory(is_staff=True)
    reservation_cancel(reservation=r, actor=staff, now=NOW)  # staff may
    assert AuditEntry.objects.get(action="cancel").actor == staff


def test_it_waits_for_approval_then_staff_decide(member, host, stack):
    Host.objects.filter(pk=host.pk).update(access=Host.Access.APPROVAL)
    host.refresh_from_db()
    r = book(member, host, stack)
    assert r.state == Reservation.State.PENDING_APPROVAL
    with pytest.raises(BookingError, match="Only staff"):
        reservation_decide(reservation=r, approve=True, actor=member, now=NOW)
    staff = UserFactory(is_staff=True)
    reservation_decide(reservation=r, approve=False, actor=staff, now=NOW)
    r.refresh_from_db()
    assert r.state == Reservation.State.CANCELLED
    assert not r.allocations.filter(active=True).exists()
    r2 = book(member, host, stack)
    reservation_decide(reservation=r2, approve=True, actor=staff, now=NOW)
    r2.refresh_from_db()
    assert r2.state == Reservation.State.SCHEDULED


def test_it_refuses_bookings_inside_maintenance(member, host, stack):
    MaintenanceWindow.objects.create(
        host=host, start=START + H, end=START + 2 * H, reason="driver upgrade"
    )
    with pytest.raises(Blocked) as exc:
        book(member, host, stack)
    assert exc.value.code == "maintenance" and "driver upgrade" in exc.value.message
    book(member, host, stack, start=START + 2 * H, end=START + 3 * H)  # after it is fine
