"""The timeline grid: rows are accelerators, columns are spans of time in the viewer's zone.

One query for the allocations and one for the maintenance windows of the rows shown, then a
walk over sorted intervals; the grid is small (rows by cells), the data bounded by the window.
"""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.utils import timezone

from portal.booking.availability import ceil_to
from portal.booking.models import Allocation, BookingPolicy
from portal.inventory.models import Accelerator, Host, MaintenanceWindow

VIEWS = {
    "day": (timedelta(days=1), timedelta(hours=1)),
    "week": (timedelta(days=7), timedelta(hours=6)),
}


# What each state says in words (the cell's title and its screen-reader text).
LABELS = {
    "free": "free",
    "mine": "yours",
    "booked": "booked",
    "job": "a training job",
    "test": "a package test run",
    "maintenance": "maintenance",
    "past": "past",
    "closed": "not open for booking yet",
    "unavailable": "host out of service",
}


@dataclass
class Cell:
    start: datetime
    end: datetime
    # free, booked, mine, job (a training job's), test (a package test run's), maintenance,
    # past; closed: beyond how far ahead one may book; unavailable: the host is not in
    # service. Only a free cell offers a booking; a cell of one's own reservation links to it.
    state: str
    book_from: datetime | None = None  # where a booking from this cell would start
    reservation: int | None = None  # the viewer's reservation the cell shows

    @property
    def label(self) -> str:
        return LABELS[self.state]


@dataclass
class Row:
    accelerator: Accelerator
    cells: list[Cell] = field(default_factory=list)


@dataclass
class Timeline:
    start: datetime
    end: datetime
    columns: list[datetime]
    rows: list[Row]
    view: str
    day: date

    @property
    def previous(self) -> date:
        return self.day - (self.end - self.start)

    @property
    def next(self) -> date:
        return self.day + (self.end - self.start)


def window(day: date, view: str) -> tuple[datetime, datetime, timedelta]:
    """The span shown, from midnight of `day` in the active zone (days may last 23 or 25 h)."""
    span, cell = VIEWS[view]
    zone = timezone.get_current_timezone()
    start = datetime.combine(day, time(), zone)
    end = datetime.combine(day + span, time(), zone)
    return start, end, cell


def build(accelerators, *, day: date, view: str, user, now: datetime) -> Timeline:
    start, end, step = window(day, view)
    accelerators = list(accelerators)
    ids = [a.pk for a in accelerators]
    # Per device: (start, end, whose): the viewer's reservation id, "job", "test" (a job that
    # runs a package's autopkgtest) or "booked".
    held: dict[int, list[tuple[datetime, datetime, int | str]]] = {i: [] for i in ids}
    for a in (
        Allocation.objects.filter(accelerator__in=ids, active=True, start__lt=end, end__gt=start)
        .select_related("reservation", "job")
        .order_by("start")
    ):
        whose: int | str = "booked"
        if a.job is not None:
            whose = "test" if a.job.autopkgtest else "job"
        if user.is_authenticated and a.reservation and a.reservation.user_id == user.pk:
            whose = a.reservation.pk
        held[a.accelerator_id].append((a.start, a.end, whose))
    down: dict[int, list[tuple[datetime, datetime]]] = {}
    for w in MaintenanceWindow.objects.filter(
        host__in={a.host_id for a in accelerators}, start__lt=end, end__gt=start
    ):
        down.setdefault(w.host_id, []).append((w.start, w.end))

    policy = BookingPolicy.current()
    grid = policy.granularity
    # The booking service refuses a start beyond this (check_times): offer no "+" past it.
    horizon = now + timedelta(days=policy.max_days_ahead)
    # Columns step in wall-clock time, so they stay on the hour across a DST change; an hour
    # that does not exist that day is skipped, one that happens twice is one wider cell.
    zone = timezone.get_current_timezone()
    columns = []
    naive = datetime.combine(day, time())
    while (moment := naive.replace(tzinfo=zone)) < end:
        if _exists(naive, zone):
            columns.append(moment)
        naive += step
    rows = []
    for acc in accelerators:
        row = Row(acc)
        in_service = acc.host.state == Host.State.ACTIVE
        for i, cell_start in enumerate(columns):
            cell_end = columns[i + 1] if i + 1 < len(columns) else end
            cell = _cell(cell_start, cell_end, held[acc.pk], down.get(acc.host_id, []), now, grid)
            row.cells.append(_bookable(cell, in_service=in_service, horizon=horizon))
        rows.append(row)
    return Timeline(start, end, columns, rows, view, day)


def _exists(naive: datetime, zone) -> bool:
    aware = naive.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == naive


def _cell(start, end, held, down, now, grid) -> Cell:
    if end <= now:
        return Cell(start, end, "past")
    if any(s < end and e > start for s, e in down):
        return Cell(start, end, "maintenance")
    overlapping = [whose for s, e, whose in held if s < end and e > start]
    if overlapping:
        mine = [whose for whose in overlapping if isinstance(whose, int)]
        if len(mine) == len(overlapping):
            return Cell(start, end, "mine", reservation=mine[0])
        others = {whose for whose in overlapping if not isinstance(whose, int)}
        alone = others.pop() if len(others) == 1 and not mine else "booked"
        return Cell(start, end, alone if alone in ("job", "test") else "booked")
    return Cell(start, end, "free", book_from=max(start, ceil_to(now, grid)))


def _bookable(cell: Cell, *, in_service: bool, horizon: datetime) -> Cell:
    """A free cell that a booking from it would be refused for offers no booking."""
    if cell.state != "free" or cell.book_from is None:  # every free cell has one (_cell)
        return cell
    if not in_service:
        return Cell(cell.start, cell.end, "unavailable")
    if cell.book_from >= cell.end:  # the cell's last grid step has begun: the rest is the past
        return Cell(cell.start, cell.end, "past")
    if cell.book_from > horizon:
        return Cell(cell.start, cell.end, "closed")
    return cell
