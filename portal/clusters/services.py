"""The cluster pass: submit the jobs bound for a Slurm cluster, follow them, cancel them.

Level-triggered like the reconcile loop (docs/architecture.md): each pass asks Slurm about
every job of the cluster the portal has not finished with, and each step is idempotent.

- A job is submitted under a name unique to it (`porterbox-j<id>`). Before sbatch, the pass
  looks the name up in what slurmctld knows: a submission whose answer was lost (slurmctld or
  the connection went away after it took the job) is found and adopted, never made twice.
- A cluster that does not answer (`scontrol ping`, `squeue`) is marked unreachable and gets
  nothing new; its waiting jobs say why. Nothing is lost: the jobs stay in the database.
- Usage: a job's start and end are Slurm's own, written to the job (`started_at`, `ended_at`)
  each pass and overwritten, never added up; the jobs app counts (end - start) x GPUs from
  them (portal/jobs/scheduler.py, cluster_jobs_charged), so a job is counted exactly once.
- No database transaction is held while a command runs on the login node.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files import File
from django.db import transaction
from django.utils import timezone

from portal.jobs import scheduler
from portal.jobs.models import Job
from portal.jobs.services import tell_job
from portal.ssh import transport
from provisioning.slurm import BatchJob, Login, Slurm, SlurmJob
from provisioning.transport import Target, TransportError

from .models import Cluster, ClusterJob, ClusterStack, ProjectAccount

log = logging.getLogger(__name__)
S = Job.State
# Slurm's final states -> the job's; any other final state (NODE_FAIL, OUT_OF_MEMORY, ...) fails.
FINAL = {"COMPLETED": S.SUCCEEDED, "CANCELLED": S.CANCELLED, "TIMEOUT": S.TIMED_OUT,
         "DEADLINE": S.TIMED_OUT}  # fmt: skip
LOG_CHUNK = 256 * 1024


def slurm_for(cluster: Cluster) -> Slurm:
    target = Target(cluster.login_host, cluster.login_port, cluster.login_user, cluster.host_keys)
    return Slurm(transport(), Login(target, cluster.slurm_conf))


def work_dir(cluster_job: ClusterJob) -> str:
    return f"{cluster_job.partition.cluster.work_dir.rstrip('/')}/{cluster_job.slurm_name}"


@dataclass
class PassReport:
    submitted: list[int] = field(default_factory=list)  # portal job ids
    adopted: list[int] = field(default_factory=list)  # found in Slurm by name, not resubmitted
    finished: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)  # scancel sent
    error: str = ""


def clusters_pass() -> dict[str, PassReport]:
    """Beat: one pass over each enabled cluster."""
    return {c.name: cluster_pass(c.pk) for c in Cluster.objects.filter(enabled=True)}


def cluster_pass(cluster_id: int, now: datetime | None = None) -> PassReport:
    cluster = Cluster.objects.get(pk=cluster_id)
    report = PassReport()
    jobs = list(
        ClusterJob.objects.filter(partition__cluster=cluster, done=False)
        .select_related("job__project", "job__stack", "partition__cluster")
        .order_by("job__queued_at", "job_id")
    )
    slurm = slurm_for(cluster)
    try:
        slurm.ping()
        known = slurm.jobs(
            names=[cj.slurm_name for cj in jobs],
            ids=[cj.slurm_job_id for cj in jobs if cj.slurm_job_id],
        )
    except TransportError as exc:
        _unreachable(cluster, str(exc), now or timezone.now())
        report.error = str(exc)
        return report
    now = now or timezone.now()
    Cluster.objects.filter(pk=cluster.pk).update(reachable=True, last_error="", checked_at=now)
    by_name: dict[str, list[SlurmJob]] = defaultdict(list)
    by_id = {}
    for sj in known:
        by_name[sj.name].append(sj)
        by_id[sj.job_id] = sj
    step = _Step(cluster, slurm, report, now)
    try:
        ready = []
        for cj in jobs:
            if cj.slurm_job_id is None:
                same = sorted(by_name.get(cj.slurm_name, []), key=lambda j: j.job_id)
                if step.check(cj, same):
                    ready.append(cj)
            else:
                step.follow(cj, by_id.get(cj.slurm_job_id))
        step.submit(ready)
    except TransportError as exc:
        # The cluster went away during the pass: what is done is recorded; the rest waits.
        log.warning("cluster %s: %s", cluster.name, exc)
        _unreachable(cluster, str(exc), now)
        report.error = str(exc)
    return report


def _unreachable(cluster: Cluster, error: str, now: datetime) -> None:
    log.warning("cluster %s cannot be reached: %s", cluster.name, error)
    Cluster.objects.filter(pk=cluster.pk).update(
        reachable=False, last_error=error[:2000], checked_at=now
    )
    reason = f"The cluster {cluster.name} cannot be reached; the job is submitted when it answers."
    Job.objects.filter(
        cluster_job__partition__cluster=cluster,
        cluster_job__slurm_job_id__isnull=True,
        state__in=Job.WAITING,
    ).exclude(wait_reason=reason).update(wait_reason=reason)


def _quota_reason(job: Job, used: float) -> str:
    """The fleet's monthly quota, with the cluster jobs' device-hours in it (docs/slurm.md);
    `used`: the project's device-hours this month, with what this pass submitted before."""
    project = job.project
    wanted = job.count * job.walltime / timedelta(hours=1)
    if used + wanted > project.device_hours_per_month:
        return (
            f"Held: over the monthly quota ({used:.1f} of {project.device_hours_per_month} "
            f"device-hours used, this job needs up to {wanted:.1f})."
        )
    return ""


# Jobs sbatched by one command on the login node (Slurm's sbatch costs about 10 ms a job;
# the command stays well inside the transport's command timeout). A command over SSH costs
# about 0.1 s by itself (bench/slurm_submit.py): one a job would cap a cluster near 10 a second.
SUBMIT_BATCH = 200


class _Step:
    def __init__(self, cluster: Cluster, slurm: Slurm, report: PassReport, now: datetime):
        self.cluster, self.slurm, self.report, self.now = cluster, slurm, report, now
        self.used: dict[int, float] | None = None  # month_usage, read when first needed
        self.accounts = dict(
            ProjectAccount.objects.filter(cluster=cluster).values_list("project_id", "account")
        )
        self.setups = dict(
            ClusterStack.objects.filter(cluster=cluster).values_list("stack_id", "setup")
        )

    # -- submission --------------------------------------------------------------------------

    def check(self, cj: ClusterJob, same_name: list[SlurmJob]) -> bool:
        """Whether the job is to be submitted now; else adopt it (found in Slurm by its
        name), close it (cancelled before submission) or say why it waits (the quota)."""
        job = cj.job
        if same_name:
            # A submission of an earlier pass reached Slurm and its answer was lost.
            sj = same_name[0]
            self._record_submission(cj, sj.job_id)
            self.report.adopted.append(job.pk)
            log.info("cluster %s: job %s found in Slurm as %s", self.cluster, job.pk, sj.job_id)
            cj.refresh_from_db()
            self.follow(cj, sj)
            return False
        if job.state not in Job.WAITING:
            # Cancelled before it was ever submitted: nothing to do in Slurm.
            ClusterJob.objects.filter(pk=cj.pk).update(done=True)
            return False
        if self.used is None:
            self.used = scheduler.month_usage(self.now)
        used = self.used.get(job.project_id, 0.0)
        reason = _quota_reason(job, used)
        if reason:
            Job.objects.filter(pk=job.pk, state__in=Job.WAITING).update(wait_reason=reason)
            return False
        # Charged its devices x walltime for the rest of the pass, as the fleet's scheduler.
        self.used[job.project_id] = used + job.count * job.walltime / timedelta(hours=1)
        return True

    def submit(self, ready: list[ClusterJob]) -> None:
        """sbatch the jobs, SUBMIT_BATCH in one command on the login node; their records are
        written here as the answers come."""
        base = self.cluster.work_dir.rstrip("/")
        for start in range(0, len(ready), SUBMIT_BATCH):
            chunk = []
            for cj in ready[start : start + SUBMIT_BATCH]:
                batch = self._batch(cj, work_dir(cj))
                try:
                    batch.options(), batch.batch_script()  # the values Slurm would be sent
                except ValueError as bad:
                    # A value registered by staff that Slurm or the shell could misread.
                    self._refuse(cj, f"The job cannot be sent to {self.cluster}: {bad}")
                    continue
                chunk.append((cj, batch))
            if not chunk:
                continue
            for cj, batch in chunk:
                if cj.job.input_archive:
                    with cj.job.input_archive.open("rb") as archive:
                        self.slurm.prepare(batch.work_dir, archive)
            answers = self.slurm.submit_many(base, [batch for _, batch in chunk])
            refused = []
            for cj, batch in chunk:
                answer = answers.get(batch.name)
                if isinstance(answer, int):
                    self._record_submission(cj, answer)
                    self.report.submitted.append(cj.job_id)
                    log.info("cluster %s: job %s submitted as %s", self.cluster, cj.job_id, answer)
                elif answer is not None:
                    refused.append((cj, answer))
                # No answer: perhaps submitted; the next pass looks for it by name.
            if refused:
                self.slurm.ping()  # the controller went away: the jobs wait, the pass says why
                # slurmctld answers, so it refused these jobs (an account, a limit): say so.
                for cj, exc in refused:
                    self._refuse(cj, f"Slurm refused the job: {exc}")

    def _refuse(self, cj: ClusterJob, why: str) -> None:
        with transaction.atomic():
            if Job.move(cj.job_id, S.FAILED, from_=Job.WAITING, ended_at=self.now,
                        last_error=why[:2000]):  # fmt: skip
                tell_job(cj.job_id)
            ClusterJob.objects.filter(pk=cj.pk).update(done=True)

    def _batch(self, cj: ClusterJob, directory: str) -> BatchJob:
        job, partition = cj.job, cj.partition
        return BatchJob(
            name=cj.slurm_name,
            partition=partition.name,
            time_limit=job.walltime,
            work_dir=directory,
            script=job.script,
            gpus=job.count,
            gres_type=partition.gres_type,
            account=self.accounts.get(job.project_id, ""),
            comment=f"porterbox:job={job.pk}:project={job.project.slug}",
            env=tuple(sorted(job.env.items())),
            setup=self.setups.get(job.stack_id, ""),
            git_url=job.input_git_url,
            git_ref=job.input_git_ref,
        )

    def _record_submission(self, cj: ClusterJob, slurm_id: int) -> None:
        with transaction.atomic():
            ClusterJob.objects.filter(pk=cj.pk, slurm_job_id__isnull=True).update(
                slurm_job_id=slurm_id, submitted_at=self.now, synced_at=self.now
            )
            Job.move(
                cj.job_id, S.SCHEDULED, from_=Job.WAITING,
                wait_reason=f"In Slurm's queue on {cj.partition} as job {slurm_id}.",
            )  # fmt: skip

    # -- following ---------------------------------------------------------------------------

    def follow(self, cj: ClusterJob, sj: SlurmJob | None) -> None:
        job = Job.objects.get(pk=cj.job_id)
        if sj is None:
            # slurmctld answered and no longer knows the job. Never started (Slurm creates its
            # log when it starts): slurmctld lost it before saving its state; submitted again,
            # under the same name, so it cannot run twice.
            never_ran = not self.slurm.exists(f"{work_dir(cj)}/log")
            if job.state in (*Job.WAITING, S.SCHEDULED) and never_ran:
                lost = f"Slurm lost job {cj.slurm_job_id}; submitted again."
                with transaction.atomic():
                    ClusterJob.objects.filter(pk=cj.pk).update(slurm_job_id=None)
                    Job.move(job.pk, S.QUEUED, from_=(S.SCHEDULED,), wait_reason=lost)
                log.warning("cluster %s: Slurm lost job %s (%s)", self.cluster, job.pk,
                            cj.slurm_job_id)  # fmt: skip
                return
            # It ran, and finished longer than MinJobAge ago while the portal was away
            # (docs/slurm.md, "Accounting").
            self._copy_log(cj, job)
            self._finish(cj, job, S.FAILED, None,
                         last_error=f"Slurm no longer knows job {cj.slurm_job_id}.")  # fmt: skip
            return
        wants_cancel = job.state == S.CANCELLED or job.stop_requested
        if wants_cancel and not sj.finished and not cj.cancel_sent:
            self.slurm.cancel(sj.job_id)
            ClusterJob.objects.filter(pk=cj.pk).update(cancel_sent=True)
            self.report.cancelled.append(job.pk)
        # Slurm's times are the job's: overwritten each pass, never added up.
        if sj.started is not None:
            times = {"started_at": sj.started, **({"ended_at": sj.ended} if sj.finished else {})}
            Job.objects.filter(pk=job.pk).update(**times)
        ClusterJob.objects.filter(pk=cj.pk).update(slurm_state=sj.state, synced_at=self.now)
        if sj.running or sj.finished:
            with transaction.atomic():  # the move and its notice (the outbox)
                if Job.move(job.pk, S.RUNNING, from_=(S.SCHEDULED, S.STARTING),
                            started_at=sj.started):  # fmt: skip
                    tell_job(job.pk)
        if sj.running or sj.finished:  # a pending job has no log yet
            self._copy_log(cj, job)
        if sj.finished:
            state = FINAL.get(sj.state, S.FAILED)
            if state == S.SUCCEEDED and sj.exit_code:
                state = S.FAILED
            self._keep_output(cj, job)
            error = "" if state == S.SUCCEEDED else f"Slurm: {sj.state} ({sj.reason})"
            self._finish(cj, job, state, sj, last_error=error)

    def _finish(self, cj: ClusterJob, job: Job, state: str, sj: SlurmJob | None, **fields) -> None:
        exit_status = None
        if sj is not None:
            exit_status = sj.exit_code if sj.exit_code is not None else -(sj.signal or 0) or None
        ended = (sj.ended if sj else None) or self.now
        with transaction.atomic():
            moved = Job.move(job.pk, state, from_=(*Job.WAITING, *Job.HOLDING),
                             ended_at=ended, exit_status=exit_status, **fields)  # fmt: skip
            if moved:
                tell_job(job.pk)
            elif sj is not None:
                # Cancelled in the portal first: keep its state, take Slurm's times and status.
                Job.objects.filter(pk=job.pk).update(ended_at=ended, exit_status=exit_status)
            ClusterJob.objects.filter(pk=cj.pk).update(done=True)
        self.report.finished.append(job.pk)
        log.info("cluster %s: job %s ended: %s", self.cluster, job.pk, state)

    def _copy_log(self, cj: ClusterJob, job: Job) -> None:
        """Append what the job's log gained on the cluster, keeping the tail (as the fleet)."""
        keep = settings.JOBS_MAX_LOG_KB * 1024
        path = f"{work_dir(cj)}/log"
        offset, parts = job.log_offset, []
        while True:
            chunk = self.slurm.read(path, offset, LOG_CHUNK)
            if not chunk:
                break
            offset += len(chunk)
            parts.append(chunk)
            if len(chunk) < LOG_CHUNK:
                break
        if not parts:
            return
        text = b"".join(parts).decode("utf-8", "replace").replace("\0", "\ufffd")
        whole = job.log + text
        kept = whole[-keep:]
        dropped = job.log_dropped + len(whole) - len(kept)
        Job.objects.filter(pk=job.pk).update(log=kept, log_offset=offset, log_dropped=dropped)
        job.log, job.log_offset, job.log_dropped = kept, offset, dropped

    def _keep_output(self, cj: ClusterJob, job: Job) -> None:
        limit = settings.JOBS_MAX_OUTPUT_MB * 1024 * 1024
        with tempfile.TemporaryFile() as sink:
            self.slurm.fetch_output(work_dir(cj), sink)
            size = sink.tell()
            if size > limit:
                note = f"Its output is over {settings.JOBS_MAX_OUTPUT_MB} MB compressed; not kept."
                Job.objects.filter(pk=job.pk).update(last_error=note)
            elif size:
                sink.seek(0)
                job.output.save(f"job-{job.pk}-output.tar.gz", File(sink), save=False)
                Job.objects.filter(pk=job.pk).update(output=job.output.name)
