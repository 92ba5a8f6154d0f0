"""Start estimates of the first waiting jobs, for the /jobs/ page: a task of their own.

The scheduler's pass (scheduler.py) stores every waiting job's turn (`Job.queue_position`).
This task, from beat every `JOBS_ESTIMATE_SECONDS` and at once after a pass that placed jobs or
changed the first turns (tasks.py), looks for the earliest start of the first ESTIMATED jobs in
those turns and stores it (`Job.estimated_start`), so the page reads it and searches nothing,
and the pass, which places hundreds of jobs in well under a second, does not wait for the
calendar reads (about half a second at fleet scale, bench/README.md).

It estimates the jobs of the turns the pass stored rather than turns of its own: the page says
"no slot within the horizon" for a job among the first ESTIMATED turns that has no estimate, so
the jobs estimated must be those. It clears the estimate of every other job: one that fell
behind the first turns, or that stopped waiting (a placed job's claim clears its own at once, so
an estimate of a job that was just placed never shows).

Two writers of the same rows: the pass writes turns and wait reasons, this task only estimates,
each only of jobs still waiting, one at a time (`scheduler.queue_lock`).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from django.utils import timezone

from portal.booking.availability import Need, ceil_to, earliest_starts
from portal.booking.models import BookingPolicy
from portal.inventory.hwspec import Hwspec, InvalidHwspec
from portal.inventory.models import DriverStack
from portal.jobs import scheduler
from portal.jobs.models import Job
from portal.jobs.scheduler import (
    WAITING_FIELDS,
    Waiting,
    queue_lock,
    stop_grace,
    write_waiting,
)


def first_turns() -> list[Waiting]:
    """The waiting jobs among the first ESTIMATED turns the last pass stored, in turn order."""
    rows = (
        Job.objects.filter(state__in=Job.WAITING, cluster_job__isnull=True)
        .filter(queue_position__isnull=False, queue_position__lte=scheduler.ESTIMATED)
        .order_by("queue_position", "pk")
        .values_list(*WAITING_FIELDS)
    )
    return [Waiting(*row) for row in rows]


def estimate_starts(jobs: list[Waiting], now: datetime) -> dict[int, datetime | None]:
    """The earliest slot free for each job's need and walltime (None: none within the booking
    horizon). It counts reservations, maintenance and the jobs already placed, not the waiting
    jobs ahead, nor the project's quotas.

    One read of the calendar per kind of device (stack, hwspec, memory) answers every count and
    walltime asked of it (`earliest_starts`), so estimates cost a few queries per kind, not an
    availability search per job.
    """
    policy = BookingPolicy.current()
    earliest = ceil_to(now, policy.granularity)
    stacks = DriverStack.objects.in_bulk({job.stack_id for job in jobs})
    grace = stop_grace()
    asks: dict[tuple, set[tuple[int, timedelta]]] = defaultdict(set)
    for job in jobs:
        stack_id, hwspec, min_memory_mib, count = job.shape
        asks[(stack_id, hwspec, min_memory_mib)].add((count, job.walltime + grace))
    found: dict[tuple, datetime | None] = {}
    for kind, wanted in asks.items():
        stack_id, hwspec, min_memory_mib = kind
        try:
            spec = Hwspec.parse(hwspec) if hwspec else None
        except InvalidHwspec:
            found.update(((*kind, *ask), None) for ask in wanted)
            continue
        need = Need(1, spec, min_memory_mib, stacks[stack_id])
        answers = earliest_starts(
            need,
            wanted,
            earliest=earliest,
            days=policy.max_days_ahead,
            step=policy.granularity,
        )
        found.update(((*kind, *ask), start) for ask, start in answers.items())
    return {job.pk: found[(*job.shape, job.walltime + grace)] for job in jobs}


def estimate_queue(now: datetime | None = None) -> int:
    """Store the estimated start of the first ESTIMATED waiting jobs in the stored turns and
    clear every other job's; returns how many jobs were estimated."""
    now = now or timezone.now()
    jobs = first_turns()
    estimates = estimate_starts(jobs, now) if jobs else {}
    changed = [(j.pk, estimates[j.pk]) for j in jobs if j.estimated_start != estimates[j.pk]]
    with queue_lock():
        # A job placed meanwhile keeps the none its claim wrote.
        write_waiting([("estimated_start", "timestamptz")], changed)
        Job.objects.filter(estimated_start__isnull=False).exclude(
            pk__in=list(estimates), state__in=Job.WAITING
        ).update(estimated_start=None)
    return len(jobs)
