"""Booking by need and the availability search, computed in the database."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from portal.booking import availability as availability_module
from portal.booking.availability import Need, availability, earliest_starts, free_accelerators
from portal.booking.models import Allocation, Reservation
from portal.booking.services import Conflict, reservation_create, reservation_create_for_need
from portal.inventory.hwspec import Hwspec
from portal.inventory.models import Host, MaintenanceWindow
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory
from tests.helpers import NOW

H = timedelta(hours=1)
MIN = timedelta(minutes=1)
STEP = timedelta(minutes=15)
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture
def cuda(db):
    return DriverStackFactory(name="cuda-12", hwspecs=["cuda", "opencl"])


@pytest.fixture
def fleet(cuda):
    """h100: two 80 GB sm_90; a100: four 40 GB sm_80; mi: 2 AMD (no cuda stack)."""
    h100 = HostFactory(name="h100")
    a100 = HostFactory(name="a100")
    mi = HostFactory(name="mi")
    rocm = DriverStackFactory(name="rocm-6", hwspecs=["rocm", "opencl"])
    h100.stacks.add(cuda)
    a100.stacks.add(cuda)
    mi.stacks.add(rocm)
    for i in range(2):
        AcceleratorFactory(host=h100, index=i, memory_mib=81559, arch="sm_90")
        AcceleratorFactory(host=mi, index=i, vendor="amd", model="MI210", arch="gfx90a")
    for i in range(4):
        AcceleratorFactory(host=a100, index=i, memory_mib=40960, arch="sm_80", model="A100")
    return {"h100": h100, "a100": a100, "mi": mi}


def need(cuda, count=1, spec="cuda", gb=0):
    return Need(
        count=count,
        hwspec=Hwspec.parse(spec) if spec else None,
        min_memory_mib=gb * 1000**3 // 1024**2,
        stack=cuda,
    )


def hold(host, indices, start, end, user=None):
    user = user or UserFactory(debian_member_source="staff")
    return reservation_create(
        user=user, host=host, stack=host.stacks.first(), start=start, end=end, now=NOW,
        accelerators=[host.accelerators.get(index=i) for i in indices],
    )  # fmt: skip


def search(n, **kw):
    kw.setdefault("duration", 2 * H)
    kw.setdefault("earliest", START)
    kw.setdefault("days", 2)
    return [(s.host.name, s.start) for s in availability(n, step=STEP, **kw)]


def test_it_books_by_need_on_one_host_picking_the_smallest_fitting_devices(member, fleet, cuda):
    r = reservation_create_for_need(
        user=member, need=need(cuda, count=2, gb=40), start=START, end=START + 2 * H, now=NOW
    )
    assert r.host.name == "a100"  # sorted by host name, and the A100s suffice
    assert sorted(a.accelerator.index for a in r.allocations.all()) == [0, 1]


def test_it_books_by_need_where_the_qualifier_and_memory_fit(member, fleet, cuda):
    r = reservation_create_for_need(
        user=member, need=need(cuda, spec="cuda:sm_90", gb=80), start=START, end=START + H,
        now=NOW,
    )  # fmt: skip
    assert r.host.name == "h100" and r.allocations.count() == 1


def test_it_moves_to_the_next_host_when_the_first_is_full(member, fleet, cuda):
    hold(fleet["a100"], [0, 1, 2], START, START + 4 * H)
    r = reservation_create_for_need(
        user=member, need=need(cuda, count=2), start=START, end=START + H, now=NOW
    )
    assert r.host.name == "h100"


def test_it_refuses_a_need_no_host_can_meet_with_a_clear_conflict(member, fleet, cuda):
    hold(fleet["h100"], [0, 1], START, START + 4 * H)
    with pytest.raises(Conflict, match="No host has 5 cuda devices"):
        reservation_create_for_need(
            user=member, need=need(cuda, count=5), start=START, end=START + H, now=NOW
        )
    assert Reservation.objects.filter(user=member).count() == 0


def test_it_finds_every_host_free_at_the_start(fleet, cuda):
    assert search(need(cuda)) == [("a100", START), ("h100", START)]


def test_it_finds_the_slot_that_opens_when_a_booking_ends(fleet, cuda):
    hold(fleet["h100"], [0], START, START + 3 * H)
    hold(fleet["h100"], [1], START + H, START + 5 * H)
    hold(fleet["a100"], [0, 1, 2, 3], START, START + 6 * H)
    # Two devices of 80 GB for two hours: h100 once both are free.
    assert search(need(cuda, count=2, gb=80)) == [("h100", START + 5 * H)]
    # One device of 80 GB: the first one frees at +3 h; the other is busy from +1 h.
    assert search(need(cuda, gb=80)) == [("h100", START + 3 * H)]


def test_it_fits_a_slot_into_a_gap_only_if_it_is_long_enough(fleet, cuda):
    for i in range(4):
        hold(fleet["a100"], [i], START, START + H)
        hold(fleet["a100"], [i], START + 2 * H, START + 8 * H)
    hold(fleet["h100"], [0, 1], START, START + 10 * H)
    assert search(need(cuda), duration=H) == [("a100", START + H), ("h100", START + 10 * H)]
    assert search(need(cuda), duration=2 * H) == [("a100", START + 8 * H), ("h100", START + 10 * H)]


def test_it_skips_maintenance_windows(fleet, cuda):
    MaintenanceWindow.objects.create(
        host=fleet["h100"], start=START + H, end=START + 4 * H, reason="firmware"
    )
    assert search(need(cuda, gb=80)) == [("h100", START + 4 * H)]


def test_it_ignores_hosts_out_of_service_retired_devices_and_other_stacks(fleet, cuda):
    Host.objects.filter(name="a100").update(state=Host.State.MAINTENANCE)
    fleet["h100"].accelerators.filter(index=1).update(retired=True)
    assert search(need(cuda, count=2)) == []
    assert search(need(cuda, spec="rocm")) == []  # mi has no cuda-12 stack
    assert search(need(cuda, spec="opencl")) == [("h100", START)]


def test_it_looks_no_further_than_the_days_asked(fleet, cuda):
    hold(fleet["h100"], [0, 1], START, START + 47 * H)
    assert search(need(cuda, gb=80), days=1) == []
    assert search(need(cuda, gb=80), days=2) == [("h100", START + 47 * H)]


@pytest.mark.parametrize("read", ["at once", "a day first"])
def test_it_finds_slots_across_the_end_of_the_first_day(read, fleet, cuda, monkeypatch):
    """Read a day first and then from there on (a large fleet), or all at once (a few devices):
    a gap that spans the end of the first day, a start the day's end vetoes, the same slots."""
    if read == "a day first":
        monkeypatch.setattr(availability_module, "SMALL", 0)
        monkeypatch.setattr(availability_module, "SHARE", 1)
    hold(fleet["h100"], [0, 1], START, START + 23 * H + 30 * MIN)
    hold(fleet["h100"], [0, 1], START + 27 * H, START + 40 * H)
    n = need(cuda, count=2, gb=80)
    assert search(n, duration=2 * H) == [("h100", START + 23 * H + 30 * MIN)]
    assert search(n, duration=4 * H) == [("h100", START + 40 * H)]  # 3.5 h are too few
    MaintenanceWindow.objects.create(
        host=fleet["h100"], start=START + 23 * H, end=START + 24 * H + 15 * MIN, reason="bios"
    )
    # The gap begins on the first day; its first start allowed is on the second.
    assert search(n, duration=2 * H) == [("h100", START + 24 * H + 15 * MIN)]
    assert earliest_starts(
        need(cuda, gb=80), {(2, 2 * H), (2, 4 * H)}, earliest=START, days=2, step=STEP
    ) == {(2, 2 * H): START + 24 * H + 15 * MIN, (2, 4 * H): START + 40 * H}


def test_it_rounds_an_early_end_up_to_the_grid(member, fleet, cuda):
    from portal.booking.services import reservation_end_now

    r = hold(fleet["h100"], [0, 1], START, START + 5 * H, user=member)
    reservation_end_now(reservation=r, actor=member, now=START + H + timedelta(minutes=7))
    assert search(need(cuda, gb=80)) == [("h100", START + H + STEP)]


def _first_free_by_brute_force(n, earliest, horizon, duration, step):
    """The reference: every grid point, asked one by one (free_accelerators, the booking's own
    check), per host the first where the need fits."""
    first = {}
    at = earliest
    while at < horizon:
        for host, accs in free_accelerators(n, at, at + duration):
            first.setdefault(host.name, (at, len(accs)))
        at += step
    return sorted(first.items(), key=lambda item: (item[1][0], item[0]))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("read", ["at once", "a day first"])
def test_it_finds_what_asking_every_grid_point_finds(seed, read, cuda, monkeypatch):
    """Random calendars (ends off the grid, back-to-back allocations, maintenance windows):
    the sweep's first slot per host and its free count are those of a walk over the grid,
    whether the calendar is read over the whole horizon at once (a few devices, as here) or a
    day first and then from there on (a large fleet: SMALL and SHARE set to take that path)."""
    if read == "a day first":
        monkeypatch.setattr(availability_module, "SMALL", 0)
        monkeypatch.setattr(availability_module, "SHARE", 1)
    rng = random.Random(seed)
    owner = UserFactory(debian_member_source="staff")
    for h in range(3):
        host = HostFactory(name=f"h{h}")
        host.stacks.add(cuda)
        reservation = Reservation.objects.create(
            user=owner, host=host, stack=cuda, start=START, end=START + 48 * H
        )
        for i in range(rng.randint(1, 4)):
            acc = AcceleratorFactory(host=host, index=i, memory_mib=rng.choice([40960, 81559]))
            at = START - 2 * H + timedelta(minutes=5 * rng.randint(0, 24))
            while at < START + 30 * H:
                length = timedelta(minutes=5 * rng.randint(3, 60))
                if rng.random() < 0.6:
                    Allocation.objects.create(
                        accelerator=acc, reservation=reservation, start=at, end=at + length
                    )
                at += length + timedelta(minutes=5 * rng.choice([0, 0, 3, 12, 30]))
        if rng.random() < 0.5:
            begin = START + timedelta(minutes=5 * rng.randint(0, 200))
            MaintenanceWindow.objects.create(
                host=host, start=begin, end=begin + timedelta(minutes=5 * rng.randint(1, 60))
            )
    for count, gb, hours in [(1, 0, 1), (2, 0, 2), (2, 80, 1), (3, 0, 3), (1, 80, 5)]:
        n, duration = need(cuda, count=count, gb=gb), hours * H
        found = availability(n, duration=duration, earliest=START, days=1, step=H)
        assert [(s.host.name, (s.start, s.free)) for s in found] == _first_free_by_brute_force(
            n, START, START + 24 * H, duration, H
        ), (count, gb, hours)
    # Past the first day (the search's first window): every host, and stopping once one fits.
    n = need(cuda, count=2)
    reference = _first_free_by_brute_force(n, START, START + 48 * H, 6 * H, H)
    for limit in (1, 10):
        found = availability(n, duration=6 * H, earliest=START, days=2, step=H, limit=limit)
        assert [(s.host.name, (s.start, s.free)) for s in found] == reference[:limit]
    # Many (count, duration) asks answered from one read, as the scheduler's estimates are.
    asks = {(1, H), (1, 5 * H), (1, 12 * H), (2, 2 * H), (2, 10 * H), (3, 3 * H), (5, H)}
    answers = earliest_starts(need(cuda), asks, earliest=START, days=2, step=H)
    one_by_one = {}
    for count, duration in asks:
        slots = availability(
            need(cuda, count=count), duration=duration, earliest=START, days=2, step=H, limit=1
        )
        one_by_one[(count, duration)] = slots[0].start if slots else None
    assert answers == one_by_one
