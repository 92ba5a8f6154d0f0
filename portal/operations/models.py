"""What the reconcile loop records about devices: telemetry and squatters (docs/architecture.md)."""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from portal.inventory.models import Accelerator, Host


class DeviceSample(models.Model):
    """Telemetry of one accelerator: a reading, or an hour of readings rolled up.

    Readings are kept for PORTAL_TELEMETRY_RAW_HOURS, then each full hour becomes one row
    (means and maxima), kept for PORTAL_TELEMETRY_HOURLY_DAYS. A value the vendor's tool does
    not report is NULL.
    """

    class Resolution(models.IntegerChoices):
        READING = 0, "reading"
        HOUR = 3600, "hour"

    accelerator = models.ForeignKey(Accelerator, on_delete=models.CASCADE, related_name="samples")
    at = models.DateTimeField()  # a reading's time, or the start of its hour
    resolution = models.PositiveIntegerField(choices=Resolution.choices, default=0)
    readings = models.PositiveIntegerField(default=1)  # how many readings the row stands for
    utilization_pct = models.FloatField(null=True)  # mean
    utilization_max_pct = models.FloatField(null=True)
    memory_used_mib = models.PositiveIntegerField(null=True)  # max
    temperature_c = models.FloatField(null=True)  # max
    power_w = models.FloatField(null=True)  # mean

    class Meta:
        ordering = ["accelerator", "at"]
        constraints = [
            models.UniqueConstraint(
                fields=["accelerator", "resolution", "at"], name="one_sample_per_time"
            ),
        ]
        indexes = [models.Index(fields=["resolution", "at"], name="sample_retention_idx")]

    def __str__(self):
        return f"{self.accelerator} {self.get_resolution_display()} {self.at:%Y-%m-%d %H:%M}"


class Squatter(models.Model):
    """A process on a device that its user does not hold (no reservation or job of theirs).

    One open row per process while the loop sees it; `gone_at` once it is no longer seen.
    """

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="squatters")
    accelerator = models.ForeignKey(Accelerator, on_delete=models.CASCADE, related_name="+")
    pid = models.PositiveIntegerField()
    unix_user = models.CharField(max_length=64)
    holder = models.CharField(max_length=64, blank=True)  # the session or job holding it
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    killed_at = models.DateTimeField(null=True, blank=True)
    kill_error = models.TextField(blank=True)
    gone_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-first_seen"]
        constraints = [
            models.UniqueConstraint(
                fields=["host", "accelerator", "pid", "unix_user"],
                condition=Q(gone_at__isnull=True),
                name="one_open_squatter",
            ),
        ]

    def __str__(self):
        return f"{self.unix_user} pid {self.pid} on {self.accelerator}"


class HealthCheck(models.Model):
    """One run of a host's own health check on one device (portal/operations/checks.py).

    `passed` is null when the check did not run (none configured for the vendor, or the agent
    could not be asked); `output` then says why.
    """

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="health_checks")
    accelerator = models.ForeignKey(
        Accelerator, on_delete=models.CASCADE, related_name="health_checks"
    )
    stack = models.ForeignKey(
        "inventory.DriverStack", on_delete=models.SET_NULL, null=True, related_name="+"
    )
    started = models.DateTimeField()
    finished = models.DateTimeField(null=True, blank=True)
    passed = models.BooleanField(null=True)
    exit_status = models.IntegerField(null=True)
    output = models.TextField(blank=True)

    class Meta:
        ordering = ["-started"]

    def __str__(self):
        result = {True: "passed", False: "failed", None: "did not run"}[self.passed]
        return f"{self.accelerator} {self.started:%Y-%m-%d %H:%M} {result}"
