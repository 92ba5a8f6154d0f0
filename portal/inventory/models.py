"""Hosts, their accelerators, and the driver stacks they offer.

The unit of booking is one accelerator (docs/architecture.md, "The booking invariant").
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portal.inventory.hwspec import KINDS, NATIVE_KIND, VENDORS_FOR_KIND, Hwspec


def validate_stack_hwspecs(value) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError('List the hardware spec kinds this stack serves, e.g. ["cuda"].')
    unknown = [v for v in value if v not in KINDS]
    if unknown:
        raise ValidationError(f"Unknown kinds {unknown!r}; known: {', '.join(KINDS)}.")


class DriverStack(models.Model):
    """A chroot with a driver and compute stack (cuda-12, rocm-6, oneapi, opencl, ...)."""

    class Area(models.TextChoices):
        MAIN = "main", "main (free)"
        CONTRIB = "contrib", "contrib"
        NON_FREE = "non-free", "non-free"

    name = models.SlugField(max_length=40, unique=True)
    hwspecs = models.JSONField(default=list, validators=[validate_stack_hwspecs])
    chroot = models.CharField(
        max_length=64,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9.+_-]*$", "A schroot chroot name.")],
    )
    suite = models.CharField(max_length=32, default="trixie")
    area = models.CharField(max_length=8, choices=Area.choices, default=Area.MAIN)
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def serves(self, spec) -> bool:
        """Whether devices of the hwspec's kind run under this stack (every stack serves the
        host's CPU): the one rule of the finder, the booking form and job submission."""
        return spec.kind == "cpu" or spec.kind in self.hwspecs

    @property
    def is_free(self) -> bool:
        return self.area == self.Area.MAIN


class Host(models.Model):
    class Architecture(models.TextChoices):
        AMD64 = "amd64", "amd64"
        ARM64 = "arm64", "arm64"
        PPC64EL = "ppc64el", "ppc64el"
        RISCV64 = "riscv64", "riscv64"

    class State(models.TextChoices):
        ACTIVE = "active", "active"
        MAINTENANCE = "maintenance", "in maintenance"
        OFFLINE = "offline", "offline"
        RETIRED = "retired", "retired"

    class DrainCause(models.TextChoices):
        """Why a host is drained, as data (LAVA's health beside state): the loop decides by it,
        never by the reason's words, which are for people."""

        UNREACHABLE = "unreachable", "unreachable"
        AGENT_ERROR = "agent_error", "probe or agent error"
        DEVICES = "devices", "devices missing or miscounted"
        TOO_HOT = "too_hot", "too hot"
        HEALTH_CHECK = "health_check", "health check failed"
        STAFF = "staff", "drained by staff"
        OTHER = "other", "other problem"

    class Access(models.TextChoices):
        OPEN = "open", "open to Debian members"
        APPROVAL = "approval", "by staff approval"

    class Connection(models.TextChoices):
        SSH = "ssh", "SSH"
        LOCAL = "local", "local (single machine)"

    name = models.SlugField(max_length=63, unique=True)
    fqdn = models.CharField(
        "FQDN",
        max_length=253,
        validators=[
            RegexValidator(
                r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
                "A lower-case DNS name such as gpu1.debian.net.",
            )
        ],
    )
    ssh_port = models.PositiveIntegerField(
        "SSH port", default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    # Pinned host keys, one "type base64" line each, confirmed by staff when the host is
    # registered; the transport refuses any other key and sends nothing.
    host_keys = models.TextField(blank=True)
    connection = models.CharField(
        max_length=5,
        choices=Connection.choices,
        default=Connection.SSH,
        help_text="local: the portal runs on this host and calls its agent without SSH.",
    )
    agent_user = models.CharField(
        "agent account",
        max_length=32,
        default="porterbox",
        validators=[RegexValidator(r"^[a-z_][a-z0-9_-]{0,31}$", "A Unix account name.")],
    )
    # What the reconcile loop last saw (docs/architecture.md, "The reconcile loop").
    last_seen = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    key_mismatch = models.BooleanField(
        default=False, help_text="The host offered an unpinned key; nothing is sent to it."
    )
    # A lease, not a lock held across SSH: the worker that claims it reconciles the host, and
    # a worker that dies loses it when it expires.
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=64, blank=True)
    # What the last telemetry pass read (portal/operations/telemetry.py): per device, the
    # processes using it, so the host page can show them without asking the host.
    telemetry = models.JSONField(default=dict, blank=True)
    telemetry_at = models.DateTimeField(null=True, blank=True)
    # Health (portal/operations/health.py, its `update` the only writer of the problems): the
    # problems found now, each kept until its own source looks again; a host that has any is
    # drained, that is put in maintenance with the cause and the reason, until staff resume it
    # (or, drained as unreachable, until it answers).
    health_problems = models.JSONField(default=list, blank=True)
    drain_cause = models.CharField(max_length=16, choices=DrainCause.choices, blank=True)
    drain_reason = models.TextField(blank=True)
    drained_at = models.DateTimeField(null=True, blank=True)
    # Per-host policies of the loop (docs/decisions.md, "Telemetry and health").
    max_temperature_c = models.PositiveSmallIntegerField(
        "temperature limit (°C)",
        default=90,
        validators=[MinValueValidator(40), MaxValueValidator(120)],
        help_text="A device hotter than this drains the host.",
    )
    squatter_kill = models.BooleanField(
        "kill squatters",
        default=False,
        help_text="Kill a process on a device its user does not hold, after the grace period "
        "(otherwise only warn).",
    )
    squatter_grace_minutes = models.PositiveSmallIntegerField(
        "squatter grace (minutes)", default=10, validators=[MaxValueValidator(24 * 60)]
    )
    idle_reclaim_minutes = models.PositiveSmallIntegerField(
        "idle reclaim (minutes)",
        default=0,
        validators=[MaxValueValidator(7 * 24 * 60)],
        help_text="End a running reservation with no login and no device use for this long, "
        "after a warning; 0: never.",
    )
    # The device map of the agent's configuration on the host, as its inventory last reported
    # it: vendor -> index -> device nodes, and vendor -> nodes all its users need. Ansible's
    # inventory from the portal carries it, so that a run from there writes it back unchanged.
    device_nodes = models.JSONField(default=dict, blank=True)
    shared_nodes = models.JSONField(default=dict, blank=True)
    architecture = models.CharField(
        max_length=8, choices=Architecture.choices, default=Architecture.AMD64
    )
    state = models.CharField(max_length=12, choices=State.choices, default=State.ACTIVE)
    access = models.CharField(max_length=8, choices=Access.choices, default=Access.OPEN)
    notes = models.TextField(blank=True)
    stacks = models.ManyToManyField(DriverStack, blank=True, related_name="hosts")
    # Per stack, a digest of the packages installed in its chroot, as the inventory last
    # reported it: a changed digest is a refreshed stack, whose package tests run again.
    stack_digests = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        from django.urls import reverse

        return reverse("inventory:host_detail", args=[self.name])

    def hwspecs(self) -> list[Hwspec]:
        """What this host can serve: a kind needs a stack for it and a device able to run it."""
        served = {kind for stack in self.stacks.all() for kind in stack.hwspecs}
        specs = {Hwspec("cpu")}
        for acc in self.accelerators.all():
            if acc.retired:
                continue
            for spec in acc.hwspecs():
                if spec.kind in served:
                    specs.add(spec)
        return sorted(specs)


class Accelerator(models.Model):
    class Vendor(models.TextChoices):
        NVIDIA = "nvidia", "NVIDIA"
        AMD = "amd", "AMD"
        INTEL = "intel", "Intel"
        FPGA = "fpga", "FPGA"

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="accelerators")
    # The vendor tool's own numbering: a device is its vendor and index on its host (NVIDIA #0
    # and AMD #0 are two devices), as the agent's grants and readings name it.
    index = models.PositiveSmallIntegerField()
    vendor = models.CharField(max_length=8, choices=Vendor.choices)
    model = models.CharField(max_length=100)
    memory_mib = models.PositiveIntegerField("memory (MiB)")
    uuid = models.CharField("UUID", max_length=64, blank=True)
    pci_bus_id = models.CharField("PCI bus id", max_length=32, blank=True)
    # The architecture qualifier of hwspecs: sm_90, gfx90a, dg2, ...
    arch = models.CharField(
        "architecture",
        max_length=32,
        blank=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9_.+-]*$", "Such as sm_90 or gfx1030.")],
    )
    retired = models.BooleanField(default=False)

    class Meta:
        ordering = ["host", "index", "vendor"]
        constraints = [
            models.UniqueConstraint(
                fields=["host", "vendor", "index"], name="one_accelerator_per_vendor_index"
            ),
            models.UniqueConstraint(
                fields=["uuid"], condition=~models.Q(uuid=""), name="accelerator_uuid_unique"
            ),
        ]

    def __str__(self):
        return f"{self.host.name}#{self.index} {self.model}"

    @property
    def memory_gib(self) -> float:
        return round(self.memory_mib / 1024, 1)

    def hwspecs(self) -> list[Hwspec]:
        kinds = [k for k, vendors in VENDORS_FOR_KIND.items() if self.vendor in vendors]
        specs = [Hwspec(k) for k in kinds]
        if self.arch:
            specs.append(Hwspec(NATIVE_KIND[self.vendor], self.arch))
        return specs


class MaintenanceWindow(models.Model):
    """A time when staff work on a host: nothing may be booked inside it."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="maintenance_windows")
    start = models.DateTimeField()
    end = models.DateTimeField()
    reason = models.CharField(max_length=200)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["start"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(end__gt=models.F("start")), name="maintenance_ends_after_start"
            ),
        ]
        indexes = [models.Index(fields=["host", "start", "end"])]

    def __str__(self):
        return f"{self.host.name} maintenance {self.start:%Y-%m-%d %H:%M} to {self.end:%H:%M} UTC"


# What the hosts report, recorded by the reconcile loop (portal/operations): telemetry, squatters,
# health-check runs. Data of the hosts, so inventory's, like Host.telemetry and
# Host.health_problems; the loop that writes them builds on inventory (docs/decisions.md,
# "App layers"). Their tables keep the names they were made with.


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
        db_table = "operations_devicesample"  # made by operations, which held it first
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
        db_table = "operations_squatter"
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
    """One run of a host's own health check on one device (written by portal/operations/checks.py).

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
        db_table = "operations_healthcheck"
        ordering = ["-started"]

    def __str__(self):
        result = {True: "passed", False: "failed", None: "did not run"}[self.passed]
        return f"{self.accelerator} {self.started:%Y-%m-%d %H:%M} {result}"
