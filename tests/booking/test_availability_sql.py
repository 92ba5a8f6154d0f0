"""The availability search's hand-written statements on PostgreSQL hold to what the ORM asks:
the same devices for every kind of need, the same first window as `_windows`, the same gaps,
and whole hosts in the slots."""

from datetime import UTC, datetime, timedelta

import pytest

from portal.booking import availability as availability_module
from portal.booking.availability import (
    Need,
    _gaps,
    _matching_sql,
    _raw,
    _read_at_once,
    _windows,
    availability,
    matching_accelerators,
)
from portal.booking.models import Allocation, Reservation
from portal.inventory.hwspec import Hwspec
from portal.inventory.models import Host, MaintenanceWindow
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

H = timedelta(hours=1)
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture
def stacks(db):
    return {
        "cuda": DriverStackFactory(name="cuda-12", hwspecs=["cuda", "opencl"]),
        "rocm": DriverStackFactory(name="rocm-6", hwspecs=["rocm", "opencl"]),
        "none": DriverStackFactory(name="nothing", hwspecs=["cpu"]),
    }


@pytest.fixture
def fleet(stacks):
    """Hosts of every kind the conditions tell apart: vendors, qualifiers, memory, a host's
    architecture and state, a retired device, a host without the stack."""
    made = {}
    for name, vendor, arch, mib, count, stack, extra in [
        ("h100", "nvidia", "sm_90", 81559, 4, "cuda", {}),
        ("a100", "nvidia", "sm_80", 40960, 2, "cuda", {}),
        ("mi", "amd", "gfx90a", 65520, 3, "rocm", {}),
        ("mi-arm", "amd", "gfx90a", 65520, 2, "rocm", {"architecture": "arm64"}),
        ("pvc", "intel", "pvc", 49152, 2, None, {}),
        ("down", "nvidia", "sm_90", 81559, 2, "cuda", {"state": Host.State.MAINTENANCE}),
        ("bare", "nvidia", "sm_90", 81559, 2, None, {}),
    ]:
        host = HostFactory(name=name, **extra)
        if stack:
            host.stacks.add(stacks[stack])
        for i in range(count):
            AcceleratorFactory(host=host, index=i, vendor=vendor, arch=arch, memory_mib=mib)
        made[name] = host
    AcceleratorFactory(host=made["h100"], index=9, retired=True)
    return made


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("spec", "gb", "stack"),
    [
        (None, 0, None),
        ("cuda", 0, None),
        ("cuda", 0, "cuda"),
        ("cuda:sm_90", 80, "cuda"),
        ("cuda", 60, None),
        ("rocm", 0, "rocm"),
        ("rocm:gfx90a", 0, None),
        ("amd64+gfx90a", 0, None),
        ("arm64+gfx90a", 0, None),
        ("opencl", 0, None),
        ("opencl", 0, "rocm"),
        ("sycl", 0, None),
        ("cpu", 0, None),
        ("cpu", 0, "none"),
        ("fpga", 0, None),
    ],
)
def test_the_statement_matches_the_devices_matching_accelerators_does(
    fleet, stacks, spec, gb, stack
):
    need = Need(
        count=1,
        hwspec=Hwspec.parse(spec) if spec else None,
        min_memory_mib=gb * 1000**3 // 1024**2,
        stack=stacks[stack] if stack else None,
    )
    sql, params = _matching_sql(need)
    expected = set(matching_accelerators(need).values_list("pk", "host"))
    assert set(_raw(sql, params)) == expected
    assert expected or spec in ("fpga", "cpu")  # the cases do select devices, most of them


@pytest.fixture
def busy_fleet(stacks):
    """Four hosts of three devices, each device booked on and off for ten days."""
    owner = UserFactory(debian_member_source="staff")
    held = []
    for h in range(4):
        host = HostFactory(name=f"n{h}")
        host.stacks.add(stacks["cuda"])
        reservation = Reservation.objects.create(
            user=owner, host=host, stack=stacks["cuda"], start=START, end=START + 240 * H
        )
        for i in range(3):
            acc = AcceleratorFactory(host=host, index=i)
            at = START - H + (h + i) * 15 * timedelta(minutes=1)
            while at < START + 240 * H:
                length = (1 + (h * 3 + i + int((at - START) / H)) % 5) * H
                held.append(
                    Allocation(accelerator=acc, reservation=reservation, start=at, end=at + length)
                )
                at += length + (i + 1) * H
    Allocation.objects.bulk_create(held)
    return stacks["cuda"]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("days", "small", "first_stop"),
    [
        (6, 0, 1), (6, 71, 1), (6, 72, 6), (6, 3000, 6),
        (10, 83, 1), (10, 84, 7), (10, 119, 7), (10, 120, 10),
        (3, 0, 3),  # a day and two after it: the day's look would read most of it (SHARE)
    ],
)  # fmt: skip
def test_one_statement_reads_the_first_window_the_search_would(
    busy_fleet, monkeypatch, days, small, first_stop
):
    """12 devices: the windows a day, a week, then to the horizon, each skipped while 12
    devices times the next one's days are at most SMALL. At the limits and around them the
    statement reads the window `_windows` starts with, and `_gaps`' rows for it."""
    monkeypatch.setattr(availability_module, "SMALL", small)
    duration = 2 * H
    horizon = START + timedelta(days=days)
    need = Need(count=2, hwspec=Hwspec.parse("cuda"), stack=busy_fleet)
    n0 = Host.objects.get(name="n0")
    # The last one starts at the horizon's reach (a 2-hour start before the horizon): unread.
    for hours in (20, 24 * days + 1, 24 * days + 2):
        MaintenanceWindow.objects.create(
            host=n0, start=START + hours * H, end=START + (hours + 1) * H, reason="bios"
        )
    devices, windows, (read_until, held) = _read_at_once(need, START, horizon, duration)
    assert len(devices) == 12
    read = [(START + hours * H, START + (hours + 1) * H) for hours in (20, 24 * days + 1)]
    assert windows == {n0.pk: read}
    first = _windows(START, horizon, duration, len(devices))[0]
    assert first == (START, read_until) == (START, START + timedelta(days=first_stop))
    gaps = _gaps(devices, START, read_until, duration, duration)
    assert availability_module._gap_lists(devices, START, duration, held) == gaps
    assert sum(len(each) for per_host in gaps.values() for each in per_host.values()) > 12


@pytest.mark.parametrize("small", [0, 3000])
def test_the_slots_hold_whole_hosts(busy_fleet, monkeypatch, small):
    """The slots' hosts are the hosts as the ORM reads them: every field, JSON parsed."""
    monkeypatch.setattr(availability_module, "SMALL", small)
    Host.objects.filter(name="n1").update(
        telemetry={"gpus": [{"temp": 41}]}, health_problems=["fan"], notes="spare"
    )
    need = Need(count=1, hwspec=Hwspec.parse("cuda"), stack=busy_fleet)
    slots = availability(need, duration=H, earliest=START, days=10, step=15 * timedelta(minutes=1))
    assert {slot.host.name for slot in slots} == {"n0", "n1", "n2", "n3"}
    for slot in slots:
        stored = Host.objects.get(pk=slot.host.pk)
        for field in Host._meta.concrete_fields:
            assert getattr(slot.host, field.attname) == getattr(stored, field.attname), field
    n1 = next(slot.host for slot in slots if slot.host.name == "n1")
    assert n1.telemetry == {"gpus": [{"temp": 41}]} and n1.health_problems == ["fan"]
