"""What the home page shows a signed-in person (issue 19): their sessions now and next with the
line to log in, their jobs, what they wait for; and, for staff, what waits for staff.

A constant number of queries whatever the history: each list is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Q

from portal.accounts.models import PartnerProject, User
from portal.booking.models import Reservation
from portal.booking.views import offers_login
from portal.inventory.models import HealthCheck, Host
from portal.jobs.models import Job
from portal.notifications.models import Notification

SHOWN = 10
RECENT = timedelta(days=7)  # finished jobs stay on the page this long


@dataclass
class Mine:
    sessions: list[Reservation] = field(default_factory=list)  # open, soonest first
    pending: list[Reservation] = field(default_factory=list)  # waiting for staff approval
    jobs: list[Job] = field(default_factory=list)  # unfinished, then recently finished
    applications: list[PartnerProject] = field(default_factory=list)


@dataclass
class StaffWork:
    pending: list[Reservation] = field(default_factory=list)
    applications: list[PartnerProject] = field(default_factory=list)
    drained: list[Host] = field(default_factory=list)
    failed_checks: list[HealthCheck] = field(default_factory=list)
    undelivered: int = 0  # notifications that failed for good, this past week

    @property
    def empty(self) -> bool:
        return not (
            self.pending or self.applications or self.drained or self.failed_checks
            or self.undelivered
        )  # fmt: skip


def mine(user: User, now: datetime) -> Mine:
    open_ = (
        Reservation.objects.filter(user=user, state__in=Reservation.OPEN, end__gt=now)
        .select_related("host", "stack", "user")
        .prefetch_related("allocations__accelerator")
        .order_by("start")
    )
    sessions: list[Reservation] = []
    pending: list[Reservation] = []
    for r in open_[: 2 * SHOWN]:
        waiting = r.state == Reservation.State.PENDING_APPROVAL
        (pending if waiting else sessions).append(r)
        r.offers_login = offers_login(r, now)  # type: ignore[attr-defined]  # for the template
    jobs = list(
        Job.objects.filter(submitter=user)
        .filter(~Q(state__in=Job.FINISHED) | Q(ended_at__gt=now - RECENT))
        .select_related("project", "host", "stack")
        .order_by("-queued_at", "-id")[:SHOWN]
    )
    applications = list(
        PartnerProject.objects.filter(members=user, state=PartnerProject.State.APPLIED).order_by(
            "created"
        )[:SHOWN]
    )
    return Mine(sessions[:SHOWN], pending[:SHOWN], jobs, applications)


def staff_work(now: datetime) -> StaffWork:
    return StaffWork(
        pending=list(
            Reservation.objects.filter(state=Reservation.State.PENDING_APPROVAL, end__gt=now)
            .select_related("host", "user", "stack")
            .order_by("start")[:SHOWN]
        ),
        applications=list(
            PartnerProject.objects.filter(state=PartnerProject.State.APPLIED).order_by("created")[
                :SHOWN
            ]
        ),
        drained=list(
            Host.objects.filter(state=Host.State.MAINTENANCE)
            .exclude(drain_cause="")
            .order_by("drained_at")[:SHOWN]
        ),
        failed_checks=list(
            HealthCheck.objects.filter(passed=False, started__gt=now - RECENT)
            .select_related("host", "accelerator")
            .order_by("-started")[:SHOWN]
        ),
        undelivered=Notification.objects.filter(
            state=Notification.State.FAILED, created__gt=now - RECENT
        ).count(),
    )
