"""Reservations, and the allocations through which they (and later jobs) hold accelerators.

The booking invariant (docs/architecture.md): no accelerator is ever allocated twice for
overlapping time. On PostgreSQL an exclusion constraint (migration 0002) is the last word;
on SQLite the booking service runs inside BEGIN IMMEDIATE, which serializes writers.
"""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portal.inventory.models import Accelerator, DriverStack, Host
from provisioning.accounts import unix_name


class BookingPolicy(models.Model):
    """Site-wide booking rules, editable by staff; one row (pk=1), created with defaults."""

    granularity_minutes = models.PositiveIntegerField(default=15)
    min_minutes = models.PositiveIntegerField(default=15)
    max_hours = models.PositiveIntegerField(default=72)
    max_days_ahead = models.PositiveIntegerField(default=30)
    max_concurrent_reservations = models.PositiveIntegerField(default=3)
    max_device_hours_per_week = models.PositiveIntegerField(default=336)

    class Meta:
        verbose_name_plural = "booking policy"

    def __str__(self):
        return "Booking policy"

    @classmethod
    def current(cls) -> "BookingPolicy":
        return cls.objects.get_or_create(pk=1)[0]

    @property
    def granularity(self) -> timedelta:
        return timedelta(minutes=self.granularity_minutes)


class Reservation(models.Model):
    class State(models.TextChoices):
        PENDING_APPROVAL = "pending", "waiting for staff approval"
        SCHEDULED = "scheduled", "scheduled"
        PROVISIONING = "provisioning", "provisioning"
        ACTIVE = "active", "active"
        ENDING = "ending", "ending"
        ENDED = "ended", "ended"
        CANCELLED = "cancelled", "cancelled"
        FAILED = "failed", "failed"

    # Holding devices for a slot that is not over. A failed reservation still holds its slot:
    # the reconcile loop retries it while the slot lasts (docs/architecture.md).
    OPEN = (
        State.PENDING_APPROVAL,
        State.SCHEDULED,
        State.PROVISIONING,
        State.ACTIVE,
        State.FAILED,
    )

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reservations"
    )
    host = models.ForeignKey(Host, on_delete=models.PROTECT, related_name="reservations")
    stack = models.ForeignKey(DriverStack, on_delete=models.PROTECT)
    whole_host = models.BooleanField(default=False)
    purpose = models.CharField(max_length=200, blank=True)
    start = models.DateTimeField()
    end = models.DateTimeField()
    state = models.CharField(max_length=12, choices=State.choices, default=State.SCHEDULED)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(auto_now=True)
    # Written by the reconcile loop (portal/operations): why provisioning last failed, shown to
    # the user and staff; when access was granted and revoked; which e-mails went out.
    last_error = models.TextField(blank=True)
    granted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    ready_mailed = models.BooleanField(default=False)
    ending_mailed = models.BooleanField(default=False)
    # Idle reclaim (portal/operations/activity.py): when the loop last saw the user logged in
    # or a booked device in use, and when it warned that the slot would be ended for idleness.
    last_active_at = models.DateTimeField(null=True, blank=True)
    idle_warned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["start", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(end__gt=models.F("start")), name="reservation_ends_after_start"
            ),
        ]
        indexes = [models.Index(fields=["user", "end"]), models.Index(fields=["state", "start"])]

    def __str__(self):
        return f"{self.user} on {self.host} {self.start:%Y-%m-%d %H:%M} to {self.end:%H:%M}"

    def get_absolute_url(self):
        from django.urls import reverse

        return reverse("booking:reservation_detail", args=[self.pk])

    @property
    def unix_user(self) -> str:
        return unix_name(self.user.username, self.user_id)

    @property
    def ssh_command(self) -> str:
        port = f" -p {self.host.ssh_port}" if self.host.ssh_port != 22 else ""
        return f"ssh{port} {self.unix_user}@{self.host.fqdn}"

    @property
    def session_name(self) -> str:
        """The session's name on the host agent (docs/agent.md)."""
        return f"r{self.pk}"

    @classmethod
    def move(cls, pk: int, to: str, *, from_: tuple[str, ...], **fields) -> bool:
        """Claim a state transition atomically (UPDATE ... WHERE state IN from_).

        True if this call made it; False if another worker did, or the row left `from_`.
        """
        return bool(
            cls.objects.filter(pk=pk, state__in=from_).update(
                state=to, updated=timezone.now(), **fields
            )
        )

    def is_open(self, now) -> bool:
        return self.state in self.OPEN and self.end > now

    def phase(self, now) -> str:
        """pending, upcoming, current or past, for the lists of "my reservations". A reservation
        waiting for staff is pending whatever the time: it is not current after its start, as
        no session opens before staff approve it."""
        if not self.is_open(now):
            return "past"
        if self.state == self.State.PENDING_APPROVAL:
            return "pending"
        return "current" if self.start <= now else "upcoming"


class Allocation(models.Model):
    """One accelerator held for [start, end) by a reservation or a training job."""

    accelerator = models.ForeignKey(
        Accelerator, on_delete=models.PROTECT, related_name="allocations"
    )
    reservation = models.ForeignKey(
        Reservation, on_delete=models.CASCADE, related_name="allocations", null=True
    )
    job = models.ForeignKey(
        "jobs.Job", on_delete=models.CASCADE, related_name="allocations", null=True, blank=True
    )
    start = models.DateTimeField()
    end = models.DateTimeField()
    active = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(end__gt=models.F("start")), name="allocation_ends_after_start"
            ),
            models.CheckConstraint(  # a reservation or a job, never both
                condition=Q(reservation__isnull=False, job__isnull=True)
                | Q(reservation__isnull=True, job__isnull=False),
                name="allocation_has_one_owner",
            ),
        ]
        indexes = [
            # By end first: a search from now on reads each device's allocations from the
            # first that ends after now, not its whole history (which only grows).
            models.Index(
                fields=["accelerator", "end", "start"],
                condition=Q(active=True),
                name="allocation_active_end_idx",
            )
        ]

    def __str__(self):
        return f"{self.accelerator} {self.start:%Y-%m-%d %H:%M} to {self.end:%H:%M}"


class AuditEntry(models.Model):
    """Who changed what in bookings, when, and from which address; read by staff only."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    ip = models.GenericIPAddressField("address", null=True, blank=True)
    action = models.CharField(max_length=32)
    reservation = models.ForeignKey(
        Reservation, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit"
    )
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action}"
