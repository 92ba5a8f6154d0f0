"""Training jobs of partner projects, run in the gaps between reservations (issue 6).

A job holds its devices through the booking `Allocation` table, under the same invariant as
reservations (docs/architecture.md, "The booking invariant"); the fair-share scheduler
(portal/jobs/scheduler.py) places queued jobs, the reconcile loop starts and stops them.
"""

from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from portal.accounts.models import PartnerProject
from portal.inventory.models import DriverStack, Host


class Job(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        SCHEDULED = "scheduled", "scheduled"
        STARTING = "starting", "starting"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"
        TIMED_OUT = "timed_out", "timed out"
        REQUEUED = "requeued", "requeued after a host failure"

    WAITING = (State.QUEUED, State.REQUEUED)
    HOLDING = (State.SCHEDULED, State.STARTING, State.RUNNING)  # devices allocated
    FINISHED = (State.SUCCEEDED, State.FAILED, State.CANCELLED, State.TIMED_OUT)

    class ModelFreedom(models.TextChoices):
        # Debian's machine-learning policy (DebianML/ML-Policy): a model is free only if its
        # training data and code are free; free code on non-free data makes a ToxicCandy.
        FREE = "free", "free model"
        TOXIC_CANDY = "toxiccandy", "ToxicCandy (free code, non-free or undisclosed data)"
        NON_FREE = "non-free", "non-free"

    project = models.ForeignKey(PartnerProject, on_delete=models.PROTECT, related_name="jobs")
    submitter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs"
    )
    name = models.CharField(max_length=100)
    script = models.TextField(help_text="Run with /bin/sh inside the stack's session.")
    # A package test run (portal/packages) runs autopkgtest instead of a script: the agent's
    # job-start field of that name, {"dsc": "foo_1.0-1.dsc", "tests": ["smoke"]} (docs/agent.md).
    autopkgtest = models.JSONField(null=True, blank=True)
    stack = models.ForeignKey(DriverStack, on_delete=models.PROTECT)
    count = models.PositiveSmallIntegerField(
        "devices", default=1, validators=[MinValueValidator(1), MaxValueValidator(64)]
    )
    hwspec = models.CharField(max_length=40, blank=True)
    min_memory_mib = models.PositiveIntegerField("minimum memory (MiB)", default=0)
    walltime = models.DurationField()
    env = models.JSONField(default=dict, blank=True)
    input_git_url = models.URLField("input: git URL", blank=True)
    input_git_ref = models.CharField("input: git ref", max_length=100, blank=True)
    input_archive = models.FileField("input: archive", upload_to="jobs/input/", blank=True)
    code_licence = models.CharField(max_length=100)
    data_licence = models.CharField(max_length=100)
    model_freedom = models.CharField(max_length=10, choices=ModelFreedom.choices)

    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    # Why a waiting job does not start (quota, no fitting device, ...), said in the queue.
    wait_reason = models.CharField(max_length=300, blank=True)
    host = models.ForeignKey(
        Host, on_delete=models.PROTECT, null=True, blank=True, related_name="jobs"
    )
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    exit_status = models.IntegerField(null=True, blank=True)
    requeues = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    stop_requested = models.BooleanField(default=False)  # cancelled while it runs
    # The job's output as the reconcile loop copied it from the host, at most JOBS_MAX_LOG_KB
    # (the tail is kept); log_offset is how far the host's log has been read.
    log = models.TextField(blank=True)
    log_offset = models.PositiveBigIntegerField(default=0)
    # Characters cut from the start of `log` to keep its tail: API offsets stay stable.
    log_dropped = models.PositiveBigIntegerField(default=0)
    # What the job left in $PORTERBOX_OUTPUT, fetched from the host when it ended (a .tar.gz).
    output = models.FileField(upload_to="jobs/output/", blank=True)
    created = models.DateTimeField(default=timezone.now)
    # A job array (one submission, N jobs, like `sbatch --array`): each task points to the
    # array's first job (the first points to itself) and has its index, 0..N-1.
    array = models.ForeignKey(
        "self", on_delete=models.CASCADE, null=True, blank=True, related_name="array_tasks"
    )
    array_index = models.PositiveIntegerField(null=True, blank=True)
    # An array's size, N, on each of its tasks (null: a plain job). A fleet array is written as
    # Slurm writes one: its first task at submission, with `array_pending` the tasks not yet
    # written (indices N-pending..N-1); the scheduler's next pass writes them and sets it to 0
    # (services.write_array_tasks), a cancel of the whole array sets it to 0 unwritten.
    array_size = models.PositiveIntegerField(null=True, blank=True)
    array_pending = models.PositiveIntegerField(default=0)
    # Of waiting jobs: the place in the queue (1 = next), written by each scheduler pass, and the
    # earliest start found for the job's need, written for the first turns by the estimate task
    # (portal/jobs/estimates.py); the /jobs/ page reads them, it does not search.
    queue_position = models.PositiveIntegerField(null=True, blank=True)
    estimated_start = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["queued_at", "id"]
        indexes = [
            models.Index(fields=["state", "queued_at"]),
            models.Index(fields=["queue_position"], name="job_queue_position_idx"),
            # The pass's writer looks for arrays with tasks pending: few rows, found at once.
            models.Index(
                fields=["array_pending"],
                condition=models.Q(array_pending__gt=0),
                name="job_array_pending_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(walltime__gt=timedelta(0)), name="job_walltime_positive"
            ),
        ]

    def __str__(self):
        return f"{self.project.slug}/{self.name} (#{self.pk})"

    @property
    def session_name(self) -> str:
        """This attempt's name on the host agent (docs/agent.md): a requeued job is a new name,
        so a host that comes back with the old attempt cannot pass it off as the new one."""
        return f"j{self.pk}" if not self.requeues else f"j{self.pk}-{self.requeues}"

    @classmethod
    def move(cls, pk: int, to: str, *, from_: tuple[str, ...], **fields) -> bool:
        """Claim a state transition atomically (UPDATE ... WHERE state IN from_)."""
        return bool(cls.objects.filter(pk=pk, state__in=from_).update(state=to, **fields))
