"""The fair-share scheduler: one pass places waiting jobs on devices free from now on.

Order. Projects take turns by fair share: the project with the least usage per share goes
first, usage being device-hours decayed with a half-life (`JOBS_USAGE_HALF_LIFE_HOURS`), and a
project that gets a job placed is charged its devices x walltime before the next turn, so one
pass interleaves projects as their shares say. Within a project, the job that waited longest
goes first; ties between projects go to the longest waiting job too.

Placement (backfill). A job starts only on devices free from now until now + walltime + the
stop grace, so it always ends before the next reservation or maintenance of those devices: the
gaps between reservations are what jobs fill. Devices of one host, the tightest fit first
(those whose next booking comes soonest), so long gaps stay for long jobs.

Speed. The waiting jobs are read as plain rows (`Waiting`), not model objects, and the state of
every device (free now? next busy when?) once per pass in three queries; placement then runs in
memory. Resources only shrink within a pass, so a job that does not fit is not tried again, and
neither is any job of the same shape with a walltime at least as long. The placements are
written through the booking service in one transaction (`booking.allocate_many`), all the jobs
in one batch: one UPDATE claims the jobs still waiting, one INSERT writes their allocations. A
job whose devices someone booked meanwhile is left out by the booking's check, or, if the
exclusion constraint refuses the batch, when each job is written again in its own savepoint;
it simply waits for the next pass.

The queue. Each pass also stores every waiting job's turn (`Job.queue_position`) and why it
waits, so the /jobs/ page reads them and searches nothing. Start estimates are not the pass's:
its own task reads the calendar for the first ESTIMATED turns (estimates.py). The pass and that
task write different columns of the same jobs, one at a time (`queue_lock`).
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import F, Min, Q, QuerySet
from django.utils import timezone

from portal.accounts.models import PartnerProject
from portal.booking import services as booking
from portal.booking.availability import Need, matching_accelerators
from portal.booking.models import Allocation
from portal.inventory.hwspec import Hwspec
from portal.inventory.models import Accelerator, DriverStack, Host, MaintenanceWindow
from portal.jobs.models import Job

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)
FOREVER = datetime.max.replace(tzinfo=UTC)
ESTIMATED = 50  # waiting jobs, first in turn order, that get a start estimate (estimates.py)
# The PostgreSQL advisory lock of the queue's writers (queue_lock): b"pbxqueue" as a bigint.
QUEUE_LOCK = int.from_bytes(b"pbxqueue", "big")


@dataclass(slots=True)
class Waiting:
    """A waiting job as the scheduler reads it: what it decides on, and what it last stored."""

    pk: int
    project_id: int
    stack_id: int
    count: int
    hwspec: str
    min_memory_mib: int
    walltime: timedelta
    queued_at: datetime
    queue_position: int | None
    estimated_start: datetime | None
    wait_reason: str

    @property
    def shape(self) -> tuple:
        return (self.stack_id, self.hwspec, self.min_memory_mib, self.count)


WAITING_FIELDS = [f.name for f in Waiting.__dataclass_fields__.values()]


def waiting_rows() -> list[Waiting]:
    """Every waiting job, longest waiting first, in one query."""
    rows = (
        Job.objects.filter(state__in=Job.WAITING)
        # Jobs bound for a Slurm cluster wait in its queue, not the fleet's (portal/clusters).
        .filter(cluster_job__isnull=True)
        .order_by("queued_at", "pk")
        .values_list(*WAITING_FIELDS)
    )
    return [Waiting(*row) for row in rows]


@dataclass
class PassResult:
    placed: dict[int, list[int]] = field(default_factory=dict)  # job id -> accelerator ids
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> why it waits
    # What the plan read, for the queue's turns after the writes: the waiting jobs (all
    # projects), the approved projects, and their decayed usage before this pass.
    jobs: list[Waiting] = field(default_factory=list)
    projects: dict[int, PartnerProject] = field(default_factory=dict)
    usage: dict[int, float] = field(default_factory=dict)
    # Jobs were placed, or the first ESTIMATED turns changed: the start estimates are stale.
    estimates_stale: bool = False


@dataclass(frozen=True)
class _Device:
    pk: int
    host_id: int
    memory_mib: int
    free_until: datetime  # when its next allocation or its host's maintenance begins


def stop_grace() -> timedelta:
    return timedelta(seconds=settings.JOBS_STOP_GRACE_SECONDS)


def charged_allocations(now: datetime) -> QuerySet[Allocation]:
    """The job allocations that count as usage, each from its start to its end (or now).

    Only the time a job ran counts: the loop moves the start of an attempt's allocations to
    the moment the host started it (operations/jobs.py) and deactivates those of an attempt
    that never ran. Until then, the allocations of the attempt that is scheduled or starting
    (made since it was last queued) hold the devices but are not charged.
    """
    return Allocation.objects.filter(job__isnull=False, active=True, start__lt=now).exclude(
        job__state__in=(Job.State.SCHEDULED, Job.State.STARTING),
        start__gte=F("job__queued_at"),
    )


def cluster_jobs_charged(
    now: datetime, since: datetime
) -> list[tuple[int, datetime, datetime, int]]:
    """(project, start, end, devices) of the jobs run on a Slurm cluster (portal/clusters) that
    ran after `since`: they hold no Allocation here; Slurm's own start and end (or now while it
    runs) times their GPUs count, read from the one job row, so each is counted once."""
    rows = (
        Job.objects.filter(cluster_job__isnull=False, started_at__lt=now)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=since))
        .values_list("project_id", "started_at", "ended_at", "count")
    )
    return [(p, start, min(end or now, now), n) for p, start, end, n in rows if start]


def decayed_usage(now: datetime) -> dict[int, float]:
    """Device-hours of each project's jobs, each hour weighed 1/2 per half-life of its age."""
    half_life = settings.JOBS_USAGE_HALF_LIFE_HOURS * HOUR
    usage: dict[int, float] = defaultdict(float)
    rows = (
        charged_allocations(now)
        .filter(end__gt=now - 10 * half_life)
        .values_list("job__project_id", "start", "end")
    )
    for project, start, end in rows:
        end = min(end, now)
        usage[project] += (end - start) / HOUR * 0.5 ** ((now - end) / half_life)
    for project, start, end, devices in cluster_jobs_charged(now, now - 10 * half_life):
        usage[project] += devices * (end - start) / HOUR * 0.5 ** ((now - end) / half_life)
    return usage


def month_usage(now: datetime) -> dict[int, float]:
    """Device-hours each project's jobs held since the start of this month (UTC)."""
    month = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    used: dict[int, float] = defaultdict(float)
    rows = (
        charged_allocations(now)
        .filter(end__gt=month)
        .values_list("job__project_id", "start", "end")
    )
    for project, start, end in rows:
        used[project] += (min(end, now) - max(start, month)) / HOUR
    for project, start, end, devices in cluster_jobs_charged(now, month):
        used[project] += devices * (end - max(start, month)) / HOUR
    return used


def _held_devices(now: datetime) -> Counter:
    return Counter(
        Allocation.objects.filter(job__state__in=Job.HOLDING, active=True, end__gt=now).values_list(
            "job__project_id", flat=True
        )
    )


def _devices(now: datetime) -> dict[int, _Device]:
    """Every device that could take a job now, with how long it stays free."""
    busy = set(
        Allocation.objects.filter(active=True, start__lte=now, end__gt=now).values_list(
            "accelerator_id", flat=True
        )
    )
    next_start = dict(
        Allocation.objects.filter(active=True, start__gt=now)
        .values("accelerator_id")
        .annotate(first=Min("start"))
        .values_list("accelerator_id", "first")
    )
    maintenance = dict(
        MaintenanceWindow.objects.filter(end__gt=now)
        .values("host_id")
        .annotate(first=Min("start"))
        .values_list("host_id", "first")
    )
    found = {}
    rows = Accelerator.objects.filter(retired=False, host__state=Host.State.ACTIVE).values_list(
        "pk", "host_id", "memory_mib"
    )
    for pk, host_id, memory in rows:
        until = min(next_start.get(pk, FOREVER), maintenance.get(host_id, FOREVER))
        if pk not in busy and until > now:
            found[pk] = _Device(pk, host_id, memory, until)
    return found


class _Placer:
    """Finds devices for jobs in memory; what it hands out is taken for the rest of the pass."""

    def __init__(self, now: datetime, devices: dict[int, _Device]):
        self.now, self.devices = now, devices
        self.taken: set[int] = set()
        self._stacks: dict[int, DriverStack] = {}
        self._matching: dict[tuple, dict[int, list[_Device]]] = {}
        self._failed: dict[tuple, timedelta] = {}  # shape -> shortest walltime that did not fit

    def _by_host(self, job: Waiting) -> dict[int, list[_Device]]:
        if job.shape not in self._matching:
            if job.stack_id not in self._stacks:
                self._stacks[job.stack_id] = DriverStack.objects.get(pk=job.stack_id)
            need = Need(
                count=job.count,
                hwspec=Hwspec.parse(job.hwspec) if job.hwspec else None,
                min_memory_mib=job.min_memory_mib,
                stack=self._stacks[job.stack_id],
            )
            by_host: dict[int, list[_Device]] = defaultdict(list)
            for pk in matching_accelerators(need).values_list("pk", flat=True):
                if pk in self.devices:
                    by_host[self.devices[pk].host_id].append(self.devices[pk])
            for candidates in by_host.values():  # tightest fit first: see place()
                candidates.sort(key=lambda d: (d.free_until, d.memory_mib, d.pk))
            self._matching[job.shape] = by_host
        return self._matching[job.shape]

    def place(self, job: Waiting) -> list[int] | None:
        shape = job.shape
        if shape in self._failed and job.walltime >= self._failed[shape]:
            return None
        until = self.now + job.walltime + stop_grace()
        best: tuple | None = None
        taken = self.taken
        for host_id, candidates in self._by_host(job).items():
            # Tightest fit: the devices whose next booking is soonest, then the smallest (the
            # order of the candidates).
            fitting = [d for d in candidates if d.free_until >= until and d.pk not in taken]
            if len(fitting) < job.count:
                continue
            chosen = fitting[: job.count]
            key = (chosen[-1].free_until, host_id)
            if best is None or key < best[0]:
                best = (key, chosen)
        if best is None:
            previous = self._failed.get(shape)
            self._failed[shape] = min(job.walltime, previous) if previous else job.walltime
            return None
        ids = [d.pk for d in best[1]]
        self.taken.update(ids)
        return ids


def _quota_reason(job: Waiting, project: PartnerProject, used: float, held: int) -> str:
    if job.walltime > project.max_walltime_hours * HOUR:
        return f"Its walltime is over the project's limit of {project.max_walltime_hours} hours."
    if held + job.count > project.max_concurrent_devices:
        return (
            f"The project holds {held} of its {project.max_concurrent_devices} concurrent "
            "devices; it starts when some are free."
        )
    wanted = job.count * job.walltime / HOUR
    if used + wanted > project.device_hours_per_month:
        return (
            f"Held: over the monthly quota ({used:.1f} of {project.device_hours_per_month} "
            f"device-hours used, this job needs up to {wanted:.1f})."
        )
    return ""


class FairShare:
    """Whose turn it is: the project with the least decayed usage per share, ties to the one
    whose next job waited longest. Each project's jobs wait in a queue, oldest first; a turn's
    job is charged to its project (devices x walltime) before the project's next turn.
    `usage` is charged in place: pass a copy to keep the original."""

    def __init__(
        self, jobs: Iterable[Waiting], projects: dict[int, PartnerProject], usage: dict[int, float]
    ):
        self.usage = usage
        self.projects = projects
        self.queues: dict[int, deque[Waiting]] = defaultdict(deque)
        for job in jobs:  # in waiting order
            self.queues[job.project_id].append(job)
        self._heap = [self._key(p) for p in self.queues]
        heapq.heapify(self._heap)

    def _key(self, p: int) -> tuple:
        share = max(self.projects[p].share, 1)
        return (self.usage.get(p, 0.0) / share, self.queues[p][0].queued_at, p)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def next_turn(self) -> int:
        """The project whose turn it is; call done(p) when its turn is over."""
        return heapq.heappop(self._heap)[-1]

    def charge(self, job: Waiting) -> float:
        hours = job.count * job.walltime / HOUR
        self.usage[job.project_id] = self.usage.get(job.project_id, 0.0) + hours
        return hours

    def done(self, p: int) -> None:
        if self.queues[p]:
            heapq.heappush(self._heap, self._key(p))


def approved_projects() -> dict[int, PartnerProject]:
    return PartnerProject.objects.filter(state=PartnerProject.State.APPROVED).in_bulk()


def plan(now: datetime) -> PassResult:
    """Which waiting jobs go where now, and why the others wait; writes nothing."""
    result = PassResult(jobs=waiting_rows())
    if not result.jobs:
        return result
    result.projects = approved_projects()
    waiting = [job for job in result.jobs if job.project_id in result.projects]
    if not waiting:
        return result
    result.usage = decayed_usage(now)
    turns = FairShare(waiting, result.projects, defaultdict(float, result.usage))
    used, held = month_usage(now), _held_devices(now)
    placer = _Placer(now, _devices(now))
    while turns:
        p = turns.next_turn()
        project, queue = turns.projects[p], turns.queues[p]
        while queue:
            job = queue.popleft()
            reason = _quota_reason(job, project, used[p], held[p])
            devices = None if reason else placer.place(job)
            if devices is None:
                result.waiting[job.pk] = reason or (
                    f"No {job.count} matching device{'s' if job.count > 1 else ''} free for "
                    f"its walltime; it starts in the next gap long enough."
                )
                continue
            result.placed[job.pk] = devices
            used[p] += turns.charge(job)
            held[p] += job.count
            break
        turns.done(p)
    return result


# -- Writing the placements ---------------------------------------------------------------------


def _write_placements(result: PassResult, now: datetime) -> None:
    """Hold each placed job's devices from now to its end through the booking service, in one
    transaction (`booking.allocate_many`: all the jobs in one batch, each in a savepoint of its
    own only if the exclusion constraint refuses the batch). The jobs move from waiting to
    scheduled in the same transaction, in one conditional UPDATE (`claim`), so a job cancelled
    meanwhile is not held."""
    jobs = {job.pk: job for job in result.jobs}
    holds = [
        booking.Hold(job_id, devices, now, now + jobs[job_id].walltime + stop_grace())
        for job_id, devices in result.placed.items()
    ]
    refused = booking.allocate_many(owner_field="job_id", holds=holds, claim=claim)
    for job_id, why in refused.items():  # booked or changed since the plan was made
        del result.placed[job_id]
        result.waiting[job_id] = f"Its devices were taken a moment ago ({why})."


def claim(placements: Sequence[tuple[int, int]]) -> set[int]:
    """Move the jobs of (job, host) pairs that still wait to scheduled on their host, their
    turn, reason and estimate cleared, in one UPDATE (a few on SQLite for many jobs); returns
    the jobs moved. Those that stopped waiting meanwhile (cancelled) are left as they are."""
    if not placements:
        return set()
    waiting = tuple(str(state) for state in Job.WAITING)
    table = connection.ops.quote_name(Job._meta.db_table)
    cleared = "wait_reason = '', queue_position = NULL, estimated_start = NULL"
    moved: set[int] = set()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            ids, hosts = (list(values) for values in zip(*placements, strict=True))
            cursor.execute(
                f"UPDATE {table} SET state = %s, host_id = v.host, {cleared} "  # noqa: S608
                "FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, host) "
                f"WHERE {table}.id = v.id AND {table}.state IN %s RETURNING {table}.id",
                [str(Job.State.SCHEDULED), ids, hosts, waiting],
            )
            return {pk for (pk,) in cursor.fetchall()}
        # SQLite (3.35 and later: UPDATE ... FROM, RETURNING), as many jobs a statement as it
        # takes parameters.
        size = (connection.features.max_query_params or 999) // 2 - len(waiting) - 1
        for at in range(0, len(placements), size):
            chunk = placements[at : at + size]
            values = ", ".join(["(%s, %s)"] * len(chunk))
            marks = ", ".join(["%s"] * len(waiting))
            cursor.execute(
                f"UPDATE {table} SET state = %s, host_id = v.column2, {cleared} "  # noqa: S608
                f"FROM (VALUES {values}) AS v WHERE {table}.id = v.column1 "
                f"AND {table}.state IN ({marks}) RETURNING {table}.id",
                [str(Job.State.SCHEDULED), *(v for pair in chunk for v in pair), *waiting],
            )
            moved.update(pk for (pk,) in cursor.fetchall())
    return moved


def schedule(now: datetime | None = None) -> PassResult:
    """One pass: plan, hold the planned devices, say why the others wait, store the queue."""
    now = now or timezone.now()
    result = plan(now)
    with queue_lock():
        if result.placed:
            _write_placements(result, now)
        store_queue(now, result)  # with the wait reasons: one write per waiting job that changed
    if result.placed:
        log.info("scheduled %d jobs", len(result.placed))
    return result


# -- The queue as the /jobs/ page shows it --------------------------------------------------------


def turn_order(
    jobs: Iterable[Waiting], projects: dict[int, PartnerProject], usage: dict[int, float]
) -> list[Waiting]:
    """Waiting jobs of approved projects in the order the scheduler takes them, assuming each
    fits when its turn comes (one that does not is passed over; its wait reason says why)."""
    turns = FairShare(
        (j for j in jobs if j.project_id in projects), projects, defaultdict(float, usage)
    )
    ordered = []
    while turns:
        p = turns.next_turn()
        job = turns.queues[p].popleft()
        ordered.append(job)
        turns.charge(job)
        turns.done(p)
    return ordered


def store_queue(now: datetime, result: PassResult | None = None) -> None:
    """Store each waiting job's turn and why it waits (the pass's reasons, if it has any), in
    one write of the rows that changed (one statement on PostgreSQL); clear the turn of jobs of
    projects not approved and of jobs that stopped waiting. Estimates are estimates.py's."""
    if result is None:
        result = PassResult(jobs=waiting_rows())
        result.projects = approved_projects()
        result.usage = decayed_usage(now) if result.jobs else {}
    left = [job for job in result.jobs if job.pk not in result.placed]
    ordered = turn_order(left, result.projects, result.usage)
    position = {job.pk: i for i, job in enumerate(ordered, start=1)}
    changed = []
    for job in left:
        wanted = (position.get(job.pk), result.waiting.get(job.pk, job.wait_reason))
        if (job.queue_position, job.wait_reason) != wanted:
            changed.append((job.pk, *wanted))
    write_waiting([("queue_position", "integer"), ("wait_reason", "text")], changed)
    Job.objects.exclude(state__in=Job.WAITING).filter(queue_position__isnull=False).update(
        queue_position=None
    )
    first = [
        job.pk
        for job in sorted(result.jobs, key=lambda job: job.queue_position or 0)
        if job.queue_position is not None and job.queue_position <= ESTIMATED
    ]
    result.estimates_stale = bool(result.placed) or first != [j.pk for j in ordered[:ESTIMATED]]


def write_waiting(columns: Sequence[tuple[str, str]], rows: Sequence[tuple]) -> None:
    """Write `columns` ((name, PostgreSQL type) pairs) of the jobs still waiting, from rows of
    (pk, *values): one UPDATE ... FROM unnest(arrays) on PostgreSQL for any number of rows, a
    bulk update elsewhere. A job that stopped waiting meanwhile is left as it is. The pass writes
    turns and wait reasons through it, the start estimates (estimates.py) their own column."""
    if not rows:
        return
    names = [name for name, _ in columns]
    if connection.vendor == "postgresql":
        arrays = [list(values) for values in zip(*rows, strict=True)]
        kinds = ", ".join(f"%s::{kind}[]" for kind in ("bigint", *(k for _, k in columns)))
        waiting = tuple(str(state) for state in Job.WAITING)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE jobs_job SET {', '.join(f'{n} = v.{n}' for n in names)} "  # noqa: S608
                f"FROM unnest({kinds}) AS v(id, {', '.join(names)}) "
                "WHERE jobs_job.id = v.id AND jobs_job.state IN %s",
                [*arrays, waiting],
            )
        return
    Job.objects.filter(state__in=Job.WAITING).bulk_update(
        [Job(pk=pk, **dict(zip(names, values, strict=True))) for pk, *values in rows],
        names,
        batch_size=250,
    )


@contextmanager
def queue_lock() -> Iterator[None]:
    """Held by each writer of the queue's columns, the pass (placements, turns and reasons) and
    the start estimates (estimates.py), so that one writes at a time: their multi-row updates of
    the same jobs then never wait on each other crosswise (a deadlock), and each writes only its
    own columns of jobs still waiting. A PostgreSQL advisory lock of the session (the placements'
    transaction is the booking service's own, so no transaction spans both writes); on SQLite
    nothing: each write there takes the database's one write lock."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [QUEUE_LOCK])
    try:
        yield
    finally:
        if not connection.needs_rollback:  # else the failed transaction's session keeps it
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [QUEUE_LOCK])
