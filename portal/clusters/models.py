"""Slurm clusters that staff register, and the portal jobs and bookings that go to them (issue 21).

A cluster is reached through its login node over the portal's pinned-key SSH transport
(provisioning/slurm.py); docs/slurm.md says when to use a cluster rather than the fleet.
"""

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portal.accounts.models import PartnerProject
from portal.inventory.models import DriverStack, Host
from portal.jobs.models import Job

slurm_name = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$", "A Slurm name: letters, digits, _ . + -."
)
plain_path = RegexValidator(
    r"^/[A-Za-z0-9_.+/-]{0,254}$", "An absolute path of letters, digits and _ . + - /."
)


class Cluster(models.Model):
    name = models.SlugField(max_length=40, unique=True)
    description = models.TextField(blank=True)
    login_host = models.CharField("login node", max_length=255)
    login_port = models.PositiveIntegerField(
        default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    login_user = models.CharField(
        "account on the login node", max_length=32, validators=[slurm_name],
        help_text="The portal's account there; it submits every partner job (with the "
        "partner's Slurm account).",
    )  # fmt: skip
    host_keys = models.TextField(
        help_text="The login node's SSH host keys, one a line; only these are accepted."
    )
    slurm_conf = models.CharField(
        max_length=255, blank=True, validators=[plain_path],
        help_text="SLURM_CONF for the commands, where the login node's default is not it.",
    )  # fmt: skip
    work_dir = models.CharField(
        max_length=200, validators=[plain_path],
        help_text="A directory on the cluster's shared file system; each job gets one inside.",
    )  # fmt: skip
    enabled = models.BooleanField(default=True)
    # What the last pass found: an unreachable cluster queues nothing new (docs/slurm.md).
    reachable = models.BooleanField(default=True)
    last_error = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Partition(models.Model):
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="partitions")
    name = models.CharField(max_length=64, validators=[slurm_name])
    gpus_per_node = models.PositiveSmallIntegerField(
        "GPUs per node", default=0, validators=[MaxValueValidator(64)],
        help_text="The gpu GRES of its nodes; a job asks --gres=gpu:N with N up to this.",
    )  # fmt: skip
    gres_type = models.CharField(
        "GPU type", max_length=64, blank=True, validators=[slurm_name],
        help_text="The GRES type (a100, mi250, ...) when the partition names one.",
    )  # fmt: skip
    max_walltime_hours = models.PositiveIntegerField(default=48)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["cluster__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["cluster", "name"], name="partition_unique_name"),
        ]

    def __str__(self):
        return f"{self.cluster.name}/{self.name}"


class ClusterStack(models.Model):
    """A driver stack as the cluster offers it: the line that sets it up in a job (a module
    line, or a container wrapper the site documents)."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="stacks")
    stack = models.ForeignKey(DriverStack, on_delete=models.CASCADE, related_name="+")
    setup = models.CharField(
        max_length=300, blank=True,
        validators=[RegexValidator(r"^[^\r\n]*$", "One line.")],
        help_text="Run before the job's script, e.g. `module load cuda/12.2`.",
    )  # fmt: skip

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cluster", "stack"], name="cluster_stack_unique"),
        ]

    def __str__(self):
        return f"{self.cluster.name}: {self.stack.name}"


class ProjectAccount(models.Model):
    """The Slurm account a partner project's jobs are charged to on a cluster: only projects
    with one may send jobs there."""

    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="accounts")
    project = models.ForeignKey(PartnerProject, on_delete=models.CASCADE, related_name="+")
    account = models.CharField("Slurm account", max_length=64, validators=[slurm_name])

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cluster", "project"], name="cluster_project_unique"),
        ]

    def __str__(self):
        return f"{self.project.slug} on {self.cluster.name}: {self.account}"


class ClusterJob(models.Model):
    """A portal job bound for a cluster partition: the fleet's scheduler skips it
    (portal/jobs/scheduler.py, waiting_rows), the cluster pass submits and follows it."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, related_name="cluster_job")
    partition = models.ForeignKey(Partition, on_delete=models.PROTECT, related_name="jobs")
    # Set once sbatch answered, or once the pass found the job Slurm already had under its name
    # (a submission whose answer was lost): never submitted twice (docs/slurm.md).
    slurm_job_id = models.PositiveBigIntegerField(null=True, blank=True)
    slurm_state = models.CharField(max_length=20, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)
    # Done: Slurm's final state, the log and the output are in the portal; nothing more to ask.
    done = models.BooleanField(default=False)
    cancel_sent = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            # One Slurm job per cluster is one portal job: its usage is counted once.
            models.UniqueConstraint(
                fields=["partition", "slurm_job_id"],
                condition=Q(slurm_job_id__isnull=False),
                name="clusterjob_unique_slurm_id",
            ),
        ]
        indexes = [models.Index(fields=["done", "partition"])]

    def __str__(self):
        return f"{self.job} on {self.partition} (Slurm {self.slurm_job_id or '-'})"

    @property
    def slurm_name(self) -> str:
        """The name the job has in Slurm: unique to the portal job, so a lost answer to
        sbatch is found again by name rather than submitted twice."""
        return f"porterbox-j{self.job_id}"


class SlurmNode(models.Model):
    """A porterbox host that is also a node of a Slurm cluster: the portal's bookings of it
    are mirrored as Slurm reservations, so Slurm runs nothing there while they last."""

    host = models.OneToOneField(Host, on_delete=models.CASCADE, related_name="slurm_node")
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, related_name="nodes")
    node_name = models.CharField(max_length=64, validators=[slurm_name])

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["cluster", "node_name"], name="slurm_node_unique"),
        ]

    def __str__(self):
        return f"{self.host} = {self.cluster.name}:{self.node_name}"
