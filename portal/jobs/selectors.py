"""Reads about training jobs: the queue in the scheduler's order, start estimates, usage.

Nothing here writes; the figures are computed from the jobs and their `Allocation` rows each
time (availability is computed, not stored), with the scheduler's own usage functions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import QuerySet

from portal.accounts.models import PartnerProject
from portal.booking.availability import Need, availability, ceil_to
from portal.booking.models import BookingPolicy
from portal.inventory.hwspec import Hwspec, InvalidHwspec
from portal.jobs.models import Job
from portal.jobs.scheduler import (
    FairShare,
    charged_allocations,
    decayed_usage,
    stop_grace,
    waiting_jobs,
)

HOUR = timedelta(hours=1)
ESTIMATED = 50  # waiting jobs that get a start estimate: each costs an availability search


def running_jobs() -> QuerySet[Job]:
    return (
        Job.objects.filter(state=Job.State.RUNNING)
        .select_related("project", "stack", "host", "submitter")
        .order_by("started_at", "queued_at", "pk")
    )


def scheduled_jobs() -> QuerySet[Job]:
    """Jobs placed on devices that the loop has not started yet (or is starting)."""
    return (
        Job.objects.filter(state__in=(Job.State.SCHEDULED, Job.State.STARTING))
        .select_related("project", "stack", "host", "submitter")
        .order_by("queued_at", "pk")
    )


def waiting_in_order(now: datetime) -> tuple[list[Job], list[Job]]:
    """Waiting jobs of approved projects in the order the scheduler takes them, and the others.

    As in `scheduler.plan()`: the project with the least decayed usage per share takes the next
    turn (ties: the longest waiting head job), its longest waiting job goes, and the project is
    charged devices x walltime. Here every job is assumed to fit when its turn comes; one that
    does not (no free devices, a quota) is passed over by the scheduler, and its wait reason says
    why. Jobs of projects that are not approved never start; they come second.
    """
    approved: list[Job] = []
    held_back: list[Job] = []
    for job in waiting_jobs().order_by("queued_at", "pk"):
        ok = job.project.state == PartnerProject.State.APPROVED
        (approved if ok else held_back).append(job)
    turns = FairShare(approved, decayed_usage(now))
    ordered = []
    while turns:
        p = turns.next_turn()
        job = turns.queues[p].popleft()
        ordered.append(job)
        turns.charge(job)
        turns.done(p)
    return ordered, held_back


def estimated_starts(jobs: list[Job], now: datetime) -> dict[int, datetime | None]:
    """The earliest slot free for each job's need and walltime (None: none within the booking
    horizon), for the first ESTIMATED jobs. It counts reservations, maintenance and the jobs
    already placed, not the waiting jobs ahead, nor the project's quotas.
    """
    policy = BookingPolicy.current()
    earliest = ceil_to(now, policy.granularity)
    found: dict[tuple, datetime | None] = {}
    starts = {}
    for job in jobs[:ESTIMATED]:
        shape = (job.stack_id, job.hwspec, job.min_memory_mib, job.count, job.walltime)
        if shape not in found:
            try:
                spec = Hwspec.parse(job.hwspec) if job.hwspec else None
            except InvalidHwspec:
                found[shape] = None
            else:
                need = Need(job.count, spec, job.min_memory_mib, job.stack)
                slots = availability(
                    need,
                    duration=job.walltime + stop_grace(),
                    earliest=earliest,
                    days=policy.max_days_ahead,
                    step=policy.granularity,
                    limit=1,
                )
                found[shape] = slots[0].start if slots else None
        starts[job.pk] = found[shape]
    return starts


# -- Usage --------------------------------------------------------------------------------------


def month_starts(now: datetime, months: int) -> list[datetime]:
    """The first instants (UTC) of the last `months` months, oldest first, this month last."""
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    starts = [first]
    for _ in range(months - 1):
        first = (first - timedelta(days=1)).replace(day=1)
        starts.append(first)
    return starts[::-1]


# The chart's bar area, in percent of its width (templates/jobs/_bars.html: labels before it,
# figures after it); a chart's scale is at least this many device-hours, so that a few minutes
# of use draw a short bar, not a full one.
BAR_AREA_PCT = 58
MIN_SCALE_HOURS = 1.0


@dataclass
class Bar:
    label: str
    hours: float
    width: float = 0.0  # percent of the chart's bar area, for the template's SVG

    @property
    def svg_width(self) -> str:
        """The bar's width in percent of the whole chart, unlocalised for the SVG attribute."""
        return f"{self.width * BAR_AREA_PCT / 100:.2f}"

    @property
    def shown(self) -> str:
        """Hours as people read them: two decimals, so a quarter of an hour is 0.25, not 0.0,
        and a little use is never shown as none."""
        if self.hours and self.hours < 0.005:
            return "< 0.01"
        return f"{self.hours:.2f}"


@dataclass
class Usage:
    months: list[Bar]
    members: list[Bar]
    total: float
    this_month: float


def _scale(bars: list[Bar]) -> list[Bar]:
    top = max((b.hours for b in bars), default=0.0)
    scale = max(top, MIN_SCALE_HOURS)
    for bar in bars:
        bar.width = round(100 * bar.hours / scale, 2)
    return bars


def project_usage(project: PartnerProject, now: datetime, months: int = 12) -> Usage:
    """Device-hours of the project's jobs by month (UTC months, as the monthly quota counts
    them) and by submitter over those months: each active allocation counts from its start to
    its end, or to now while it runs, the way the scheduler charges usage.
    """
    starts = month_starts(now, months)
    ends = [*starts[1:], now]
    by_month = [0.0] * months
    by_member: dict[str, float] = defaultdict(float)
    rows = (
        charged_allocations(now)
        .filter(job__project=project, end__gt=starts[0])
        .values_list("start", "end", "job__submitter__username")
    )
    for start, end, username in rows:
        end = min(end, now)
        for i, (month_start, month_end) in enumerate(zip(starts, ends, strict=True)):
            held = min(end, month_end) - max(start, month_start)
            if held > timedelta(0):
                by_month[i] += held / HOUR
                by_member[username] += held / HOUR
    month_bars = [Bar(f"{s:%Y-%m}", round(h, 4)) for s, h in zip(starts, by_month, strict=True)]
    member_bars = [
        Bar(name, round(h, 4)) for name, h in sorted(by_member.items(), key=lambda i: (-i[1], i[0]))
    ]
    return Usage(
        months=_scale(month_bars),
        members=_scale(member_bars),
        total=round(sum(by_month), 4),
        this_month=round(by_month[-1], 4),
    )


def quota_used(project: PartnerProject, now: datetime) -> float:
    """Device-hours used this month, as the scheduler counts them against the monthly quota."""
    return project_usage(project, now, months=1).this_month


# -- What the shared hardware trained -----------------------------------------------------------


def trained_jobs() -> QuerySet[Job]:
    return (
        Job.objects.filter(state=Job.State.SUCCEEDED)
        .select_related("project")
        .order_by("-ended_at", "-pk")
    )


def device_hours(jobs: list[Job], now: datetime) -> dict[int, float]:
    """Device-hours each job held (its active allocations, cut at now)."""
    hours: dict[int, float] = defaultdict(float)
    rows = (
        charged_allocations(now)
        .filter(job__in=[j.pk for j in jobs])
        .values_list("job_id", "start", "end")
    )
    for job_id, start, end in rows:
        hours[job_id] += (min(end, now) - start) / HOUR
    return {pk: round(h, 2) for pk, h in hours.items()}


def log_tail(job: Job, lines: int = 200) -> str:
    return "\n".join(job.log.splitlines()[-lines:])
