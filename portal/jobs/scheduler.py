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

Speed. The state of every device (free now? next busy when?) is read once per pass in three
queries; placement then runs in memory. Resources only shrink within a pass, so a job that does
not fit is not tried again, and neither is any job of the same shape with a walltime at least
as long. The allocations are written through the booking service, one short transaction per
job, and a job whose devices someone booked meanwhile simply waits for the next pass.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import F, Min, QuerySet
from django.utils import timezone

from portal.accounts.models import PartnerProject
from portal.booking import services as booking
from portal.booking.availability import Need, matching_accelerators
from portal.booking.models import Allocation
from portal.inventory.hwspec import Hwspec
from portal.inventory.models import Accelerator, Host, MaintenanceWindow
from portal.jobs.models import Job

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)
FOREVER = datetime.max.replace(tzinfo=UTC)


@dataclass
class PassResult:
    placed: dict[int, list[int]] = field(default_factory=dict)  # job id -> accelerator ids
    waiting: dict[int, str] = field(default_factory=dict)  # job id -> why it waits


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
        self._matching: dict[tuple, dict[int, list[_Device]]] = {}
        self._failed: dict[tuple, timedelta] = {}  # shape -> shortest walltime that did not fit

    def _by_host(self, job: Job, shape: tuple) -> dict[int, list[_Device]]:
        if shape not in self._matching:
            need = Need(
                count=job.count,
                hwspec=Hwspec.parse(job.hwspec) if job.hwspec else None,
                min_memory_mib=job.min_memory_mib,
                stack=job.stack,
            )
            by_host: dict[int, list[_Device]] = defaultdict(list)
            for pk in matching_accelerators(need).values_list("pk", flat=True):
                if pk in self.devices:
                    by_host[self.devices[pk].host_id].append(self.devices[pk])
            self._matching[shape] = by_host
        return self._matching[shape]

    def place(self, job: Job) -> list[int] | None:
        shape = (job.stack_id, job.hwspec, job.min_memory_mib, job.count)
        if shape in self._failed and job.walltime >= self._failed[shape]:
            return None
        until = self.now + job.walltime + stop_grace()
        best: tuple | None = None
        for host_id, candidates in self._by_host(job, shape).items():
            fitting = [d for d in candidates if d.pk not in self.taken and d.free_until >= until]
            if len(fitting) < job.count:
                continue
            # Tightest fit: the devices whose next booking is soonest, then the smallest.
            fitting.sort(key=lambda d: (d.free_until, d.memory_mib, d.pk))
            chosen = fitting[: job.count]
            key = (max(d.free_until for d in chosen), host_id)
            if best is None or key < best[0]:
                best = (key, chosen)
        if best is None:
            previous = self._failed.get(shape)
            self._failed[shape] = min(job.walltime, previous) if previous else job.walltime
            return None
        ids = [d.pk for d in best[1]]
        self.taken.update(ids)
        return ids


def _quota_reason(job: Job, project: PartnerProject, used: float, held: int) -> str:
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
    job is charged to its project (devices x walltime) before the project's next turn."""

    def __init__(self, jobs: list[Job], usage: dict[int, float]):
        self.usage = usage
        self.queues: dict[int, deque[Job]] = defaultdict(deque)
        self.projects: dict[int, PartnerProject] = {}
        for job in jobs:  # in waiting order
            self.queues[job.project_id].append(job)
            self.projects[job.project_id] = job.project
        self._heap = [self._key(p) for p in self.queues]
        heapq.heapify(self._heap)

    def _key(self, p: int) -> tuple:
        return (self.usage[p] / max(self.projects[p].share, 1), self.queues[p][0].queued_at, p)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def next_turn(self) -> int:
        """The project whose turn it is; call done(p) when its turn is over."""
        return heapq.heappop(self._heap)[-1]

    def charge(self, job: Job) -> float:
        hours = job.count * job.walltime / HOUR
        self.usage[job.project_id] += hours
        return hours

    def done(self, p: int) -> None:
        if self.queues[p]:
            heapq.heappush(self._heap, self._key(p))


def waiting_jobs():
    return Job.objects.filter(state__in=Job.WAITING).select_related("stack", "project", "submitter")


def plan(now: datetime) -> PassResult:
    """Which waiting jobs go where now, and why the others wait; writes nothing."""
    waiting = list(
        waiting_jobs()
        .filter(project__state=PartnerProject.State.APPROVED)
        .order_by("queued_at", "pk")
    )
    result = PassResult()
    if not waiting:
        return result
    turns = FairShare(waiting, decayed_usage(now))
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


def hold(job: Job, accelerators: list[Accelerator], start: datetime, end: datetime) -> None:
    """Hold the job's devices through the booking service; the job moves from waiting to
    scheduled in the same transaction (booking.allocate's claim)."""

    def claim(host: Host) -> None:
        if not Job.move(job.pk, Job.State.SCHEDULED, from_=Job.WAITING, host=host, wait_reason=""):
            raise booking.BookingError("not_waiting", "The job is no longer waiting.")

    booking.allocate(
        owner={"job_id": job.pk},
        holder=job.submitter,
        accelerators=accelerators,
        start=start,
        end=end,
        claim=claim,
    )


def schedule(now: datetime | None = None) -> PassResult:
    """One pass: plan, then hold the planned devices through the booking service."""
    now = now or timezone.now()
    result = plan(now)
    accelerators = Accelerator.objects.select_related("host").in_bulk(
        [pk for ids in result.placed.values() for pk in ids]
    )
    jobs = Job.objects.select_related("submitter").in_bulk(list(result.placed))
    for job_id, ids in list(result.placed.items()):
        job = jobs[job_id]
        try:
            hold(job, [accelerators[pk] for pk in ids], now, now + job.walltime + stop_grace())
        except booking.BookingError as exc:  # booked or changed since the plan was made
            del result.placed[job_id]
            result.waiting[job_id] = f"Its devices were taken a moment ago ({exc.message})"
    by_reason: dict[str, list[int]] = defaultdict(list)
    for job_id, reason in result.waiting.items():
        by_reason[reason].append(job_id)
    for reason, ids in by_reason.items():
        Job.objects.filter(pk__in=ids, state__in=Job.WAITING).exclude(wait_reason=reason).update(
            wait_reason=reason
        )
    if result.placed:
        log.info("scheduled %d jobs", len(result.placed))
    return result
