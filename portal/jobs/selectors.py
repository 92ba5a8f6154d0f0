"""Reads about training jobs: the queue in the scheduler's order, usage, what was trained.

Nothing here writes. The queue's turns are what the scheduler's last pass stored, the start
estimates what the estimate task stored for the first of those turns (estimates.py: it
searches, the pages do not); usage is computed from the jobs' `Allocation` rows each
time, with the scheduler's own functions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import F, QuerySet

from portal.accounts.models import PartnerProject
from portal.jobs import scheduler
from portal.jobs.models import Job
from portal.jobs.scheduler import charged_allocations

HOUR = timedelta(hours=1)


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


def waiting_queue() -> QuerySet[Job]:
    """Waiting jobs of approved projects in the order the scheduler takes them, as its last
    pass stored it (`Job.queue_position`, portal/jobs/scheduler.py); jobs queued since then
    come last, longest waiting first. Slice it: the queue may be long."""
    return (
        Job.objects.filter(state__in=Job.WAITING, project__state=PartnerProject.State.APPROVED)
        .select_related("project", "stack")
        .order_by(F("queue_position").asc(nulls_last=True), "queued_at", "pk")
    )


def held_back_jobs() -> QuerySet[Job]:
    """Waiting jobs of projects that are not approved: they never start until staff approve."""
    return (
        Job.objects.filter(state__in=Job.WAITING)
        .exclude(project__state=PartnerProject.State.APPROVED)
        .select_related("project")
        .order_by("queued_at", "pk")
    )


def is_estimated(job: Job) -> bool:
    """Whether the job is among the first turns whose start the estimate task looks for (None
    then: no slot in the horizon). That task estimates the turns the pass stored, at once after
    a pass that moved them, so this holds but for the moments in between."""
    return job.queue_position is not None and job.queue_position <= scheduler.ESTIMATED


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
    # Jobs run on a Slurm cluster: Slurm's start to end, times their GPUs (scheduler.py).
    on_clusters = (
        Job.objects.filter(project=project, cluster_job__isnull=False, started_at__lt=now)
        .exclude(ended_at__lte=starts[0])
        .values_list("started_at", "ended_at", "submitter__username", "count")
    )
    for start, end, username, devices in [
        *((s, e, u, 1) for s, e, u in rows),
        *((s, e or now, u, n) for s, e, u, n in on_clusters if s),
    ]:
        end = min(end, now)
        for i, (month_start, month_end) in enumerate(zip(starts, ends, strict=True)):
            held = min(end, month_end) - max(start, month_start)
            if held > timedelta(0):
                by_month[i] += devices * held / HOUR
                by_member[username] += devices * held / HOUR
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
    on_clusters = Job.objects.filter(
        pk__in=[j.pk for j in jobs], cluster_job__isnull=False, started_at__lt=now
    ).values_list("pk", "started_at", "ended_at", "count")
    for job_id, began, ended, devices in on_clusters:
        if began:
            hours[job_id] += devices * (min(ended or now, now) - began) / HOUR
    return {pk: round(h, 2) for pk, h in hours.items()}


def log_tail(job: Job, lines: int = 200) -> str:
    return "\n".join(job.log.splitlines()[-lines:])
