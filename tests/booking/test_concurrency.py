"""Many people booking the same devices at once: no device-time is ever held twice.

Runs on whichever database the suite uses; CI runs the suite on PostgreSQL (where the
exclusion constraint decides) and on SQLite (where BEGIN IMMEDIATE serializes writers).
Every booker is a thread with its own database connection.
"""

import itertools
import random
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from portal.booking.models import Allocation, BookingPolicy
from portal.booking.services import (
    BookingError,
    Conflict,
    reservation_create,
    reservation_extend,
)
from portal.inventory.models import Accelerator, DriverStack, Host
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

BOOKERS = 32
# Not tests.helpers.NOW (off the 15-minute grid): bookings here start whole quarters from now.
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
Q = timedelta(minutes=15)


@pytest.fixture
def setup():
    BookingPolicy.objects.update_or_create(
        pk=1, defaults={"max_concurrent_reservations": 1000, "max_device_hours_per_week": 10000}
    )
    host = HostFactory(name="contended")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(4):
        AcceleratorFactory(host=host, index=i)
    users = [UserFactory(debian_member_source="salsa") for _ in range(BOOKERS)]
    return host, users


def run_round(host, users, wishes):
    """Start every booker at once; return each one's outcome."""
    stack = DriverStack.objects.get(name="cuda-12")
    host = Host.objects.get(pk=host.pk)
    barrier = threading.Barrier(len(users))
    outcomes = [None] * len(users)

    def book(n):
        indices, start, end = wishes[n]
        try:
            accs = list(Accelerator.objects.filter(host=host, index__in=indices))
            barrier.wait()
            reservation_create(user=users[n], host=host, stack=stack, start=start, end=end,
                               accelerators=accs, now=NOW)  # fmt: skip
            outcomes[n] = "won"
        except Conflict:
            outcomes[n] = "conflict"
        except Exception as exc:  # anything else is a bug the test must show
            outcomes[n] = f"error: {exc!r}"
        finally:
            connection.close()

    threads = [threading.Thread(target=book, args=(n,)) for n in range(len(users))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def assert_never_held_twice():
    by_device = defaultdict(list)
    for a in Allocation.objects.filter(active=True):
        by_device[a.accelerator_id].append((a.start, a.end))
    for ranges in by_device.values():
        ranges.sort()
        for (_, end), (next_start, _) in itertools.pairwise(ranges):
            assert end <= next_start, "an accelerator is allocated twice"


def test_it_lets_exactly_one_of_many_identical_requests_win(setup):
    host, users = setup
    start = NOW + 2 * Q * 4
    for round_ in range(3):
        slot = (start + round_ * 4 * Q, start + (round_ + 1) * 4 * Q)
        outcomes = run_round(host, users, [([0, 1], *slot)] * BOOKERS)
        assert outcomes.count("won") == 1, outcomes
        assert outcomes.count("conflict") == BOOKERS - 1, outcomes
    assert_never_held_twice()


def test_it_never_allocates_a_device_twice_under_random_overlapping_requests(setup):
    host, users = setup
    rng = random.Random(20261122)
    total = defaultdict(int)
    for _ in range(6):
        wishes = []
        for _ in range(BOOKERS):
            indices = rng.sample(range(4), rng.randint(1, 2))
            start = NOW + Q * rng.randint(4, 40)
            wishes.append((indices, start, start + Q * rng.randint(1, 8)))
        for outcome in run_round(host, users, wishes):
            total[outcome] += 1
    assert set(total) <= {"won", "conflict"}, dict(total)
    assert total["won"] > 0 and total["conflict"] > 0
    assert_never_held_twice()


def test_it_never_double_books_when_extensions_race_new_bookings(setup):
    """Half the threads stretch their reservations while the other half book the gaps."""
    host, users = setup
    stack = DriverStack.objects.get(name="cuda-12")
    rng = random.Random(7)
    owned = []
    for n in range(BOOKERS // 2):
        index, start = n % 4, NOW + Q * (4 + 12 * (n // 4))
        owned.append(book_one(users[n], host, stack, index, start, start + 4 * Q))
    barrier = threading.Barrier(BOOKERS)
    outcomes = [None] * BOOKERS

    def act(n):
        try:
            if n < len(owned):
                r = owned[n]
                barrier.wait()
                new_end = r.end + Q * rng.randint(1, 8)
                reservation_extend(reservation=r, end=new_end, actor=users[n], now=NOW)
            else:
                index, start = rng.randrange(4), NOW + Q * rng.randint(4, 60)
                end = start + Q * rng.randint(1, 6)
                barrier.wait()
                book_one(users[n], host, stack, index, start, end)
            outcomes[n] = "won"
        except Conflict:
            outcomes[n] = "conflict"
        except Exception as exc:  # anything else is a bug the test must show
            outcomes[n] = f"error: {exc!r}"
        finally:
            connection.close()

    threads = [threading.Thread(target=act, args=(n,)) for n in range(BOOKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(outcomes) <= {"won", "conflict"}, outcomes
    assert "won" in outcomes
    assert_never_held_twice()
    for r in owned:  # a reservation and its allocations always agree
        r.refresh_from_db()
        assert set(r.allocations.values_list("end", flat=True)) == {r.end}


def book_one(user, host, stack, index, start, end):
    accs = [Accelerator.objects.get(host=host, index=index)]
    return reservation_create(
        user=user, host=host, stack=stack, accelerators=accs, start=start, end=end, now=NOW
    )


@pytest.mark.postgres  # on SQLite writers are serialized anyway; the row lock is PostgreSQL's
def test_it_keeps_the_weekly_quota_under_concurrent_extensions():
    # One user, four reservations on four devices, each extended at once by 5 h: the quota
    # leaves room for one extension only (the race once reached 72 device-hours against 60).
    BookingPolicy.objects.update_or_create(
        pk=1, defaults={"max_concurrent_reservations": 10, "max_device_hours_per_week": 60}
    )
    host = HostFactory(name="quota")
    stack = DriverStackFactory(name="cuda-12")
    host.stacks.add(stack)
    devices = [AcceleratorFactory(host=host, index=i) for i in range(4)]
    user = UserFactory(debian_member_source="salsa")
    start = NOW + timedelta(hours=1)
    reservations = [
        reservation_create(
            user=user,
            host=host,
            stack=stack,
            start=start,
            end=start + timedelta(hours=13),
            accelerators=[d],
            now=NOW,
        )
        for d in devices
    ]  # fmt: skip  (52 device-hours of 60)
    barrier = threading.Barrier(len(reservations))
    outcomes = []

    def extend(r):
        try:
            barrier.wait()
            reservation_extend(reservation=r, end=r.end + timedelta(hours=5), actor=user, now=NOW)
            outcomes.append("extended")
        except BookingError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=extend, args=(r,)) for r in reservations]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sorted(outcomes) == ["extended"] + ["quota_hours"] * 3
    held = sum(((a.end - a.start) for a in Allocation.objects.filter(active=True)), timedelta())
    assert held == timedelta(hours=57)
