"""Reads of free capacity: which accelerators meet a need, and when they are next free.

Availability is computed, never stored (the pretix way), as a sweep: the busy intervals of every
matching device within the window are read in one range scan (the allocation indexes serve it),
and each device's gaps become intervals of the starts it could take ([gap start, gap end -
duration]). Per host, a +1/-1 sweep over those intervals on the booking grid, with the host's
maintenance windows as a veto, stops at the first point where enough devices are free. Reads:
the matching devices with their hosts' maintenance windows (one query), their allocations per
window, the hosts found; never a query per candidate start. It looks a day ahead first, then
from there to a week, then on to as far as asked (each window read once, for the hosts not found
yet), and stops as soon as enough hosts fit; a few devices (the ROCm hosts of a fleet) are read
over the whole horizon at once, as their round trips cost more than their rows.

On PostgreSQL the reads are hand-written statements, and the devices, their maintenance windows
and the first window's allocations are one (`_read_at_once`): a search of a few devices is then
that statement and the hosts' read, where the ORM's work of building three queries cost more
than PostgreSQL's of answering them (bench/README.md). Other databases (SQLite, the tests') take
the same reads through the ORM.
"""

import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.db.models import (
    Case,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    FilteredRelation,
    OuterRef,
    Q,
    QuerySet,
    When,
    Window,
)
from django.db.models.functions import Lag, Lead

from portal import rows
from portal.booking.models import Allocation
from portal.inventory.hwspec import VENDORS_FOR_KIND, Hwspec
from portal.inventory.models import Accelerator, DriverStack, Host, MaintenanceWindow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_to(moment: datetime, step: timedelta) -> datetime:
    return moment - (moment - EPOCH) % step


def ceil_to(moment: datetime, step: timedelta) -> datetime:
    rest = (moment - EPOCH) % step
    return moment + (step - rest) if rest else moment


@dataclass(frozen=True)
class Need:
    """What a booking or a job needs: N devices of a kind, each with enough memory."""

    count: int = 1
    hwspec: Hwspec | None = None
    min_memory_mib: int = 0
    stack: DriverStack | None = None

    def describe(self) -> str:
        what = f"{self.count} {self.hwspec or 'any'} device{'s' if self.count > 1 else ''}"
        if self.min_memory_mib:
            what += f" with at least {self.min_memory_mib * 1024**2 / 1000**3:.0f} GB"
        if self.stack:
            what += f" and the stack {self.stack.name}"
        return what


@dataclass(frozen=True)
class Slot:
    host: Host
    start: datetime
    end: datetime
    free: int  # matching accelerators free for the whole slot


def _device_filter(need: Need) -> Q:
    """What the need asks of each device itself (not of its host)."""
    found = Q(retired=False)
    if need.min_memory_mib:
        found &= Q(memory_mib__gte=need.min_memory_mib)
    spec = need.hwspec
    if spec and spec.kind != "cpu":
        found &= Q(vendor__in=VENDORS_FOR_KIND[spec.kind])
        if spec.qualifier:
            found &= Q(arch=spec.qualifier)
        if spec.arch:
            found &= Q(host__architecture=spec.arch)
    if need.stack is not None:
        found &= Q(
            vendor__in={v for kind in need.stack.hwspecs for v in VENDORS_FOR_KIND.get(kind, ())}
        )
    return found


def matching_accelerators(need: Need, host: Host | None = None) -> QuerySet[Accelerator]:
    """Bookable accelerators that meet the need on hosts in service that offer its stack."""
    found = Accelerator.objects.filter(_device_filter(need), host__state=Host.State.ACTIVE)
    if host is not None:
        found = found.filter(host=host)
    if need.stack is not None:
        offered = Host.stacks.through.objects.filter(
            host=OuterRef("host"), driverstack=need.stack.pk
        )
        found = found.filter(Exists(offered))
    return found


def maintenance_overlaps(host: Host, start: datetime, end: datetime) -> QuerySet:
    return MaintenanceWindow.objects.filter(host=host, start__lt=end, end__gt=start)


def _held(accelerator_ref, start, end) -> Exists:
    return Exists(
        Allocation.objects.filter(
            accelerator=accelerator_ref, active=True, start__lt=end, end__gt=start
        )
    )


def _in_maintenance(host_ref, start, end) -> Exists:
    return Exists(MaintenanceWindow.objects.filter(host=host_ref, start__lt=end, end__gt=start))


def free_accelerators(
    need: Need, start: datetime, end: datetime, *, host: Host | None = None
) -> list[tuple[Host, list[Accelerator]]]:
    """Hosts with enough matching accelerators free for [start, end), each with its free ones
    in the order to take them: smaller devices first, so large ones stay for those who need them.
    """
    free = (
        matching_accelerators(need, host)
        .exclude(_held(OuterRef("pk"), start, end))
        .exclude(_in_maintenance(OuterRef("host"), start, end))
        .select_related("host")
        .order_by("host__name", "memory_mib", "index")
    )
    by_host: dict[int, list[Accelerator]] = {}
    for acc in free:
        by_host.setdefault(acc.host_id, []).append(acc)
    return [(accs[0].host, accs) for accs in by_host.values() if len(accs) >= need.count]


def _start_events(
    gaps: list[tuple[datetime, datetime | None]],
    earliest: datetime,
    horizon: datetime,
    duration: timedelta,
    step: timedelta,
) -> list[tuple[datetime, int]]:
    """One device's +1/-1 events on the grid: +1 where a run of its possible starts begins, -1
    at the first grid point after it. A start t is possible inside a gap [g0, g1) (g1 None: open)
    if g0 <= t and t + duration <= g1, and if earliest <= t < horizon."""
    events = []
    last = ceil_to(horizon, step)  # the first grid point that is too late
    for begin, end in gaps:
        first = ceil_to(max(begin, earliest), step)
        stop = last if end is None else min(last, floor_to(end - duration, step) + step)
        if first < stop:
            events += [(first, 1), (stop, -1)]
    return events


def _devices(
    need: Need, earliest: datetime, until: datetime
) -> tuple[dict[int, int], dict[int, list[tuple[datetime, datetime]]]]:
    """The need's devices (accelerator pk -> host pk) and their hosts' maintenance windows that
    overlap [earliest, until) (host pk -> windows), from one query: the windows are a LEFT JOIN,
    one row per device and window."""
    if connection.vendor == "postgresql":
        matching, params = _matching_sql(need)
        params |= {"earliest": earliest, "until": until}
        read: Iterable[tuple] = _raw(DEVICES_SQL.format(matching=matching), params)
    else:
        read = _devices_orm(need, earliest, until)
    devices: dict[int, int] = {}
    windows: dict[int, set[tuple[datetime, datetime]]] = {}
    for pk, host_id, start, end in read:
        devices[pk] = host_id
        if start is not None:
            windows.setdefault(host_id, set()).add((start, end))
    return devices, {host_id: sorted(found) for host_id, found in windows.items()}


def _raw(sql: str, params: dict) -> list[tuple]:
    """Rows of a hand-written statement (PostgreSQL): no queryset to build, no model to make."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _matching_sql(need: Need) -> tuple[str, dict]:
    """`matching_accelerators(need)` by hand for PostgreSQL, as (id, host_id) rows: the same
    conditions (tests/booking/test_availability_sql.py holds them to it), and its text made
    from them alone (no input in it; the values are parameters)."""
    where = ["NOT a.retired", "h.state = %(active)s"]
    params: dict = {"active": Host.State.ACTIVE}
    if need.min_memory_mib:
        where.append("a.memory_mib >= %(memory)s")
        params["memory"] = need.min_memory_mib
    spec = need.hwspec
    if spec and spec.kind != "cpu":
        where.append("a.vendor = ANY(%(vendors)s)")
        params["vendors"] = list(VENDORS_FOR_KIND[spec.kind])
        if spec.qualifier:
            where.append("a.arch = %(qualifier)s")
            params["qualifier"] = spec.qualifier
        if spec.arch:
            where.append("h.architecture = %(arch)s")
            params["arch"] = spec.arch
    if need.stack is not None:
        where.append("a.vendor = ANY(%(stack_vendors)s)")
        where.append(
            "a.host_id IN (SELECT s.host_id FROM inventory_host_stacks s"
            " WHERE s.driverstack_id = %(stack)s)"
        )
        params["stack_vendors"] = sorted(
            {v for kind in need.stack.hwspecs for v in VENDORS_FOR_KIND.get(kind, ())}
        )
        params["stack"] = need.stack.pk
    sql = (
        "SELECT a.id, a.host_id FROM inventory_accelerator a"  # noqa: S608
        f" JOIN inventory_host h ON h.id = a.host_id WHERE {' AND '.join(where)}"
    )
    return sql, params


# `_devices`' statement on PostgreSQL: the matching devices (`_matching_sql`), each with its
# host's maintenance windows that overlap [earliest, until).
DEVICES_SQL = """
SELECT d.id, d.host_id, m.start, m."end" FROM ({matching}) AS d
LEFT JOIN inventory_maintenancewindow m ON m.host_id = d.host_id
  AND m.start < %(until)s AND m."end" > %(earliest)s
"""


def _devices_orm(need: Need, earliest: datetime, until: datetime) -> QuerySet:
    downtime = FilteredRelation(
        "host__maintenance_windows",
        condition=Q(
            host__maintenance_windows__start__lt=until,
            host__maintenance_windows__end__gt=earliest,
        ),
    )
    return (
        matching_accelerators(need)
        .annotate(downtime=downtime)
        .order_by()
        .values_list("pk", "host", "downtime__start", "downtime__end")
    )


def _gaps(
    devices: dict[int, int],
    earliest: datetime,
    horizon: datetime,
    duration: timedelta,
    reach: timedelta,
) -> dict[int, dict[int, list[tuple[datetime, datetime | None]]]]:
    """Host -> device (of `devices`, pk -> host, the need's devices on some hosts) -> its free
    gaps of at least `duration` that may hold a start in [earliest, horizon), from one range
    scan: each allocation in [earliest, horizon + reach) (reach: the longest duration to be
    asked of the result) with the start of the one after it on the same device (LEAD), and the
    start of each device's first one, of which only those next to a long enough gap come back.
    The devices are named by their keys and the allocations taken in order of their ends (a
    device's active allocations never overlap, so that is the order of their starts too):
    PostgreSQL then reads the (device, end) index in its order, each device's from the first
    allocation that ends after `earliest`, its history skipped and nothing sorted."""
    if not devices:
        return {}
    if connection.vendor == "postgresql":
        params = {
            "devices": list(devices),
            "since": earliest,
            "stop": horizon + reach,
            "duration": duration,
        }
        held: Iterable[tuple] = _raw(GAPS_SQL, params)
    else:
        held = _gaps_orm(devices, earliest, horizon, duration, reach)
    return _gap_lists(devices, earliest, duration, held)


def _gap_lists(
    devices: dict[int, int], earliest: datetime, duration: timedelta, held: Iterable[tuple]
) -> dict[int, dict[int, list[tuple[datetime, datetime | None]]]]:
    """`_gaps`' answer from its rows (device, its first allocation's start or None, end, the
    next allocation's start or None)."""
    found: dict[int, dict[int, list[tuple[datetime, datetime | None]]]] = {}
    by_device = {}
    for pk, host_id in devices.items():
        by_device[pk] = found.setdefault(host_id, {}).setdefault(pk, [])
    busy = set()
    for pk, first, end, after in held:
        busy.add(pk)
        gaps = by_device[pk]
        if first is not None:  # the device's first allocation in the window
            gaps.append((earliest, first))
        if after is None or after >= end + duration:
            gaps.append((end, after))
    for pk, gaps in by_device.items():
        if pk not in busy:
            gaps.append((earliest, None))
    return found


# `_gaps`' query by hand for PostgreSQL: a device's first allocation is its first row (numbering
# the rows costs PostgreSQL less than LAG of the end, which the ORM's form takes).
GAPS_SQL = """
SELECT accelerator_id, CASE WHEN n = 1 THEN start END, "end", after FROM (
  SELECT accelerator_id, start, "end", row_number() OVER w AS n, lead(start) OVER w AS after
  FROM booking_allocation
  WHERE active AND accelerator_id = ANY(%(devices)s) AND start < %(stop)s AND "end" > %(since)s
  WINDOW w AS (PARTITION BY accelerator_id ORDER BY "end")) AS held
WHERE n = 1 OR after IS NULL OR after >= "end" + %(duration)s
"""


def _gaps_orm(
    devices: dict[int, int],
    earliest: datetime,
    horizon: datetime,
    duration: timedelta,
    reach: timedelta,
) -> QuerySet:
    device, in_time = F("accelerator"), F("end").asc()
    return (
        Allocation.objects.filter(
            active=True,
            accelerator__in=list(devices),
            start__lt=horizon + reach,
            end__gt=earliest,
        )
        .annotate(
            before=Window(Lag("end"), partition_by=device, order_by=in_time),
            after=Window(Lead("start"), partition_by=device, order_by=in_time),
        )
        # The start only of a device's first allocation in the window: fewer times to convert.
        .annotate(first=Case(When(before__isnull=True, then=F("start"))))
        .filter(
            Q(before__isnull=True)
            | Q(after__isnull=True)
            | Q(after__gte=ExpressionWrapper(F("end") + duration, output_field=DateTimeField()))
        )
        .order_by()
        .values_list("accelerator", "first", "end", "after")
    )


def _vetoes(
    windows: list[tuple[datetime, datetime]], duration: timedelta, step: timedelta
) -> list[tuple[datetime, int]]:
    """A host's maintenance windows as +1/-1 events on the grid: a start t is vetoed while
    [t, t + duration) overlaps a window, i.e. window start - duration < t < window end."""
    events = []
    for start, end in windows:
        events += [(floor_to(start - duration, step) + step, 1), (ceil_to(end, step), -1)]
    return events


def _first_fit(
    devices: list[list[tuple[datetime, int]]], vetoes: list[tuple[datetime, int]], count: int
) -> tuple[datetime, int] | None:
    """The first grid point where at least `count` devices may start and no veto holds, with
    the number of devices free there; None if there is none."""
    free = vetoed = 0
    # Per point: the -1s before the +1s, so that the count at a point is the count after it.
    merged = heapq.merge(
        *(sorted(events) for events in devices),
        ((moment, 2 * change) for moment, change in sorted(vetoes)),
    )
    pending: datetime | None = None
    for moment, change in merged:
        if pending is not None and moment != pending and free >= count and not vetoed:
            return pending, free
        pending = moment
        if change in (1, -1):
            free += change
        else:
            vetoed += change // 2
    if pending is not None and free >= count and not vetoed:
        return pending, free
    return None


@dataclass
class _Calendar:
    """The calendar of a need's devices over [earliest, horizon): per host, each matching
    device's gaps (`_gaps`), and the host's maintenance windows."""

    earliest: datetime
    horizon: datetime
    devices: dict[int, dict[int, list[tuple[datetime, datetime | None]]]]
    windows: dict[int, list[tuple[datetime, datetime]]]

    def first_starts(
        self, count: int, duration: timedelta, step: timedelta
    ) -> dict[int, tuple[datetime, int]]:
        """Host -> its first start in [earliest, horizon) where `count` devices are free for
        `duration`, with the number of matching devices free there."""
        first = {}
        for host_id, gaps_by_device in self.devices.items():
            if len(gaps_by_device) < count:
                continue
            # Only the devices that may start at all: a host with too few of them is skipped.
            events = [
                each
                for gaps in gaps_by_device.values()
                if (each := _start_events(gaps, self.earliest, self.horizon, duration, step))
            ]
            if len(events) < count:
                continue
            vetoes = _vetoes(self.windows.get(host_id, []), duration, step)
            found = _first_fit(events, vetoes, count)
            if found is not None:
                first[host_id] = found
        return first

    def first_start(self, count: int, duration: timedelta, step: timedelta) -> datetime | None:
        """The first start on any host where `count` devices are free for `duration`. Hosts
        are swept in the order of a bound (the count-th earliest first possible start among
        their devices, no slot can come sooner) and the sweep stops at a host whose bound is
        not before the best found."""
        bounds = []
        last = ceil_to(self.horizon, step)
        for host_id, gaps_by_device in self.devices.items():
            firsts = sorted(
                first
                for gaps in gaps_by_device.values()
                if (first := _first_possible(gaps, self.earliest, last, duration, step))
            )
            if len(firsts) >= count:
                bounds.append((firsts[count - 1], host_id))
        best: datetime | None = None
        for bound, host_id in sorted(bounds):
            if best is not None and bound >= best:
                break
            events = [
                _start_events(gaps, self.earliest, self.horizon, duration, step)
                for gaps in self.devices[host_id].values()
            ]
            vetoes = _vetoes(self.windows.get(host_id, []), duration, step)
            found = _first_fit(events, vetoes, count)
            if found is not None and (best is None or found[0] < best):
                best = found[0]
        return best


def _first_possible(
    gaps: list[tuple[datetime, datetime | None]],
    earliest: datetime,
    last: datetime,
    duration: timedelta,
    step: timedelta,
) -> datetime | None:
    """A device's first possible start on the grid (before `last`), maintenance aside."""
    for begin, end in gaps:
        first = ceil_to(max(begin, earliest), step)
        if first < last and (end is None or first + duration <= end):
            return first
    return None


# The search looks this far first, then further only if fewer hosts than asked fit: a host found
# within a window has its first slot there, and every host not found starts later, so each
# wider look reads only the time after the last one, for the hosts not found yet.
WINDOWS = (timedelta(days=1), timedelta(days=7), timedelta(days=14))
# A narrower look is skipped while the next one reads at most this many device-days: a read
# costs a round trip and its rows, and so few rows (about 7 allocations a device-day this week)
# cost less than the round trip that looking a day ahead first might spare. 120 devices (a
# fleet's ROCm hosts) look a week, then two, at once; 400 skip the day; 1,000 look a day first.
SMALL = 3000
# The day's look is skipped where its read (the day and the duration after it) is more than
# this share of the horizon's: looking a day ahead first pays when it is a small bet (a long
# duration over a week is not).
SHARE = 0.2


def _windows(
    earliest: datetime, horizon: datetime, reach: timedelta, devices: int
) -> list[tuple[datetime, datetime]]:
    """The successive [since, stop) of the starts to look at: a day first, a week, two weeks
    (WINDOWS), then as far as asked, each beginning where the last ended. The day is skipped
    where it would read a large share of the horizon anyway (SHARE), and any narrower look where
    the next one costs little more (a few devices, SMALL)."""
    stops = _stops(earliest, horizon, reach)
    while len(stops) > 1 and devices * (stops[1] - earliest) / timedelta(days=1) <= SMALL:
        stops.pop(0)
    return list(zip([earliest, *stops], stops, strict=False))


def _stops(earliest: datetime, horizon: datetime, reach: timedelta) -> list[datetime]:
    """The ends of `_windows` before the few devices' skips."""
    stops = sorted({min(horizon, earliest + window) for window in WINDOWS} | {horizon})
    if len(stops) > 1 and stops[0] - earliest + reach > SHARE * (horizon - earliest + reach):
        stops.pop(0)
    return stops


def _skip_limits(earliest: datetime, stops: list[datetime]) -> list[int]:
    """For each stop after the first, the most devices for which `_windows` skips the stop
    before it: n devices skip while n * (stop - earliest) / day <= SMALL, i.e. (times in
    whole microseconds) n <= SMALL * day // (stop - earliest)."""
    return [SMALL * timedelta(days=1) // (stop - earliest) for stop in stops[1:]]


def availability(
    need: Need,
    *,
    duration: timedelta,
    earliest: datetime,
    days: int,
    step: timedelta,
    limit: int = 10,
) -> list[Slot]:
    """The earliest slot of each host that meets the need within `days`, soonest first.

    `earliest` must be on the booking grid; every slot starts on it, before the horizon.
    """
    horizon = earliest + timedelta(days=days)
    if connection.vendor == "postgresql":
        devices, windows, read = _read_at_once(need, earliest, horizon, duration)
    else:
        devices, windows = _devices(need, earliest, horizon + duration)
        devices, read = _on_hosts_with(devices, need.count), None
    first: dict[int, tuple[datetime, int]] = {}
    for since, stop in _windows(earliest, horizon, duration, len(devices)):
        # A host found in a narrower window has its first slot there: only the others go on.
        left = {pk: host for pk, host in devices.items() if host not in first}
        if read is not None and (since, stop) == (earliest, read[0]):
            gaps = _gap_lists(left, since, duration, read[1])
        else:
            gaps = _gaps(left, since, stop, duration, duration)
        first |= _Calendar(since, stop, gaps, windows).first_starts(need.count, duration, step)
        if len(first) >= limit:
            break
    hosts = _hosts(list(first))
    ordered = sorted(first.items(), key=lambda item: (item[1][0], hosts[item[0]].name))
    return [
        Slot(hosts[host_id], start, start + duration, free)
        for host_id, (start, free) in ordered[:limit]
    ]


def _hosts(pks: list[int]) -> dict[int, Host]:
    """The hosts of these keys by key, from one hand-written query (no queryset to build)."""
    if not pks:
        return {}
    marks = ", ".join(["%s"] * len(pks))
    columns = rows.columns(Host, "h")
    sql = f"SELECT {columns} FROM {rows.table(Host)} h WHERE h.id IN ({marks})"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, pks)
        found = [rows.instance(Host, row) for row in cursor.fetchall()]
    return {host.pk: host for host in found if host is not None}


def _read_at_once(
    need: Need, earliest: datetime, horizon: datetime, duration: timedelta
) -> tuple[dict[int, int], dict[int, list[tuple[datetime, datetime]]], tuple[datetime, list]]:
    """`availability`'s first reads in one statement (PostgreSQL): the need's devices on hosts
    with enough of them (`_on_hosts_with`), their hosts' maintenance windows (`_devices`), and
    `_gaps`' rows for the first of `_windows`, which the statement picks from the devices'
    count as `_windows` does (`_skip_limits`). Returns the devices, the windows, and the stop
    of the window read with its rows."""
    matching, params = _matching_sql(need)
    stops = _stops(earliest, horizon, duration)
    params |= {
        "earliest": earliest,
        "until": horizon + duration,
        "count": need.count,
        "stops": stops,
        "limits": _skip_limits(earliest, stops),
        "duration": duration,
    }
    devices: dict[int, int] = {}
    windows: dict[int, set[tuple[datetime, datetime]]] = {}
    held = []
    read_until = stops[0]
    for pk, host_id, start, end, last in _raw(AT_ONCE_SQL.format(matching=matching), params):
        if pk is None:  # the window's row: last is its stop
            read_until = last
        elif host_id is None:  # an allocation's row: last is the start of the next one
            held.append((pk, start, end, last))
        else:  # a device's row, with one of its host's maintenance windows or none
            devices[pk] = host_id
            if start is not None:
                windows.setdefault(host_id, set()).add((start, end))
    found = {host_id: sorted(each) for host_id, each in windows.items()}
    return devices, found, (read_until, held)


# `_read_at_once`'s statement: the devices (the matching ones on hosts with `count` of them),
# the stop of the first window (the `stops` it does not skip: one more than the `limits` the
# device count is within) in a row of its own (no device), the devices' rows with their hosts'
# maintenance windows, then `GAPS_SQL`'s rows for the window (their host NULL).
AT_ONCE_SQL = """
WITH matching AS MATERIALIZED ({matching}),
kept AS MATERIALIZED (
  SELECT id, host_id FROM (
    SELECT id, host_id, count(*) OVER (PARTITION BY host_id) AS n FROM matching) AS counted
  WHERE n >= %(count)s),
stop AS MATERIALIZED (
  SELECT (%(stops)s::timestamptz[])[1 + count(*)] AS at FROM unnest(%(limits)s::bigint[]) AS l
  WHERE (SELECT count(*) FROM kept) <= l)
SELECT NULL, NULL, NULL, NULL, at FROM stop
UNION ALL
SELECT kept.id, kept.host_id, m.start, m."end", NULL
FROM kept LEFT JOIN inventory_maintenancewindow m ON m.host_id = kept.host_id
  AND m.start < %(until)s AND m."end" > %(earliest)s
UNION ALL
SELECT accelerator_id, NULL, CASE WHEN n = 1 THEN start END, "end", after FROM (
  SELECT accelerator_id, start, "end", row_number() OVER w AS n, lead(start) OVER w AS after
  FROM booking_allocation
  WHERE active AND accelerator_id = ANY(ARRAY(SELECT id FROM kept))
    AND start < (SELECT at FROM stop) + %(duration)s AND "end" > %(earliest)s
  WINDOW w AS (PARTITION BY accelerator_id ORDER BY "end")) AS held
WHERE n = 1 OR after IS NULL OR after >= "end" + %(duration)s
"""


def _on_hosts_with(devices: dict[int, int], count: int) -> dict[int, int]:
    """The devices (pk -> host) of the hosts that have at least `count` of them."""
    per_host = Counter(devices.values())
    return {pk: host for pk, host in devices.items() if per_host[host] >= count}


def earliest_starts(
    need: Need,
    asks: set[tuple[int, timedelta]],
    *,
    earliest: datetime,
    days: int,
    step: timedelta,
) -> dict[tuple[int, timedelta], datetime | None]:
    """For each (count, duration) asked of the need's devices (`need.count` aside), the earliest
    start on any host within `days` (None: none). One read of the calendar answers them all
    (per window: a day, a week, then as far as asked, while some are still unanswered), so the
    scheduler's estimates cost a few queries per kind of device, not a search per job."""
    horizon = earliest + timedelta(days=days)
    found: dict[tuple[int, timedelta], datetime | None] = dict.fromkeys(asks)
    pending = set(asks)
    if not pending:
        return found
    longest = max(duration for _, duration in pending)
    devices, windows = _devices(need, earliest, horizon + longest)
    devices = _on_hosts_with(devices, min(count for count, _ in pending))
    for since, stop in _windows(earliest, horizon, longest, len(devices)) if devices else []:
        durations = [duration for _, duration in pending]
        gaps = _gaps(devices, since, stop, min(durations), max(durations))
        calendar = _Calendar(since, stop, gaps, windows)
        for count, duration in sorted(pending):
            start = calendar.first_start(count, duration, step)
            if start is not None:
                found[(count, duration)] = start
                pending.discard((count, duration))
        if not pending:
            break
    return found
