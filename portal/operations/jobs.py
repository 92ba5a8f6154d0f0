"""The job part of a reconcile pass: start scheduled jobs, follow running ones, requeue lost ones.

Like the reservation part (services.py), it is level-triggered: each pass asks the host about
every job the database says is on it, and every agent verb it uses is idempotent, so a worker
killed half-way is simply followed by the next pass.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO, TypedDict

from django.conf import settings
from django.core.files import File
from django.db import DatabaseError, transaction
from django.db.models import Prefetch

from portal.booking.models import Allocation
from portal.inventory.models import Host
from portal.jobs.models import Job
from portal.jobs.services import tell_job
from portal.operations.logs import context
from provisioning.accounts import JOB_ACCOUNT_PREFIX
from provisioning.client import AgentClient, AgentError, DeviceRef, JobState
from provisioning.transport import TransportError

log = logging.getLogger(__name__)
J = Job.State
# What the agent's job-status says of a finished job -> the job's state in the portal.
FINISHED = {"succeeded": J.SUCCEEDED, "failed": J.FAILED, "timed_out": J.TIMED_OUT}
LOG_CHUNK = 256 * 1024  # bytes of the host's log per job-logs call

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Held(TypedDict):
        held: list[Allocation]

    # A job read with the allocations of its current attempt (JobPass.run).
    PlacedJob = WithAnnotations[Job, _Held]


def job_account(job: Job) -> str:
    """The Unix account a project's jobs run as on the hosts (a safe name by construction)."""
    return f"{JOB_ACCOUNT_PREFIX}{job.project_id}"


def _input(job: Job) -> tuple[dict, BinaryIO | None]:
    """The job-start input, and the archive file to stream after the request (never read
    into memory: docs/decisions.md, "Job inputs and outputs travel as raw bytes")."""
    if job.input_git_url:
        # No ref: the remote's default branch (the agent leaves --branch out).
        ref = {"ref": job.input_git_ref} if job.input_git_ref else {}
        return {"git": job.input_git_url, **ref}, None
    if job.input_archive:
        return {"archive_bytes": job.input_archive.size}, job.input_archive.open("rb")
    return {}, None


def storable(text: str) -> str:
    """text as a PostgreSQL text column holds it: NUL, which it cannot store, and any lone
    surrogate become U+FFFD, visibly (the agent already decodes invalid UTF-8 so)."""
    if text.isascii() and "\0" not in text:
        return text
    return text.encode("utf-8", "replace").decode("utf-8").replace("\0", "\ufffd")


class JobPass:
    def __init__(self, host: Host, client: AgentClient, now: datetime, done: list[str]):
        self.host, self.client, self.now, self.done = host, client, now, done

    def run(self, on_host: tuple[JobState, ...]) -> None:
        """Follow the database's jobs of this host; on_host is what its `status` listed."""
        jobs = (
            Job.objects.filter(host=self.host, state__in=Job.HOLDING)
            .select_related("stack", "project")
            .prefetch_related(
                Prefetch(
                    "allocations",
                    # This attempt's: a requeued job keeps the allocations of its earlier
                    # attempts, ended when it was requeued (they are its usage).
                    Allocation.objects.filter(active=True, end__gt=self.now).select_related(
                        "accelerator"
                    ),
                    to_attr="held",
                )
            )
        )
        expected = set()
        for job in jobs:
            expected.add(job.session_name)
            try:
                if job.state in (J.SCHEDULED, J.STARTING):
                    self._start(job)
                else:
                    self._follow(job)
            except TransportError as exc:  # the host went away mid-pass: the next pass goes on
                log.warning("%s %s: %s", self.host.name, job.session_name, exc, extra=self._at(job))
                return
            except Exception:
                # One job that breaks the pass must not hold up the others of the host (a
                # scheduled job of another project would never start, its devices held).
                log.exception(
                    "%s %s: following the job failed", self.host.name, job.session_name,
                    extra=self._at(job),
                )  # fmt: skip
        for found in on_host:
            if found.job not in expected:
                self._drop(found.job, running=found.running)

    def _at(self, job: Job | None = None) -> dict:
        return context(self.host, job=job)

    def _drop(self, name: str, *, running: bool) -> None:
        """A job the portal no longer expects here (requeued while the host was away, or
        finished and not yet cleaned): stop it if it runs, then remove it."""
        try:
            if running:
                self.client.job_stop(job=name, grace_s=settings.JOBS_STOP_GRACE_SECONDS)
            self.client.job_clean(job=name)
        except (TransportError, AgentError) as exc:
            log.warning("%s: dropping %s failed: %s", self.host.name, name, exc, extra=self._at())
            return
        self.done.append(f"dropped {name}")
        log.info("%s: dropped %s, which the portal no longer expects", self.host.name, name,
                 extra=context(self.host, job=_job_of(name)))  # fmt: skip

    def _start(self, job: PlacedJob) -> None:
        Job.move(job.pk, J.STARTING, from_=(J.SCHEDULED,))
        devices = sorted(
            (DeviceRef(a.accelerator.vendor, a.accelerator.index) for a in job.held),
            key=lambda d: (d.vendor, d.index),
        )
        source, archive = _input(job)
        try:
            with archive or contextlib.nullcontext():
                self.client.job_start(
                    job=job.session_name,
                    account=job_account(job),
                    stack=job.stack.name,
                    devices=devices,
                    # A package test run runs autopkgtest instead of a script.
                    script="" if job.autopkgtest else job.script,
                    env=job.env,
                    walltime_s=int(job.walltime.total_seconds()),
                    grace_s=settings.JOBS_STOP_GRACE_SECONDS,
                    input=source,
                    archive=archive,
                    array=(job.array_id, job.array_index or 0) if job.array_id else None,
                    autopkgtest=job.autopkgtest or None,
                )
        except AgentError as exc:
            log.warning(
                "%s: the host refused %s: %s", self.host.name, job.session_name, exc,
                extra=self._at(job),
            )  # fmt: skip
            self._finish(job, J.FAILED, ran=False, last_error=f"The host refused the job: {exc}")
            return
        with transaction.atomic():  # the move, the usage's start and the notice
            started = Job.move(job.pk, J.RUNNING, from_=(J.STARTING,), started_at=self.now)
            if started:
                # Usage counts from here, when it runs, not from when it was placed (the time
                # before is past: shrinking the allocation frees nothing anyone could book).
                Allocation.objects.filter(
                    job=job, active=True, end__gt=self.now, start__lt=self.now
                ).update(start=self.now)
                tell_job(job.pk)
        if started:
            self.done.append(f"started {job.session_name}")
            log.info(
                "%s: started %s as %s on %d devices", self.host.name, job.session_name,
                job_account(job), len(devices), extra=self._at(job),
            )  # fmt: skip

    def _follow(self, job: Job) -> None:
        status = self.client.job_status(job=job.session_name)
        state = status.state
        if state == "unknown":  # the host lost it (reinstalled, its disk replaced...)
            requeue(job, self.now, f"{self.host.name} no longer knows the job")
            self.done.append(f"requeued {job.session_name}")
            return
        try:
            self._copy_log(job, status.log_bytes)
        except AgentError as exc:  # the log can wait; the job's end must not
            log.warning(
                "%s %s: copying the log failed: %s", self.host.name, job.session_name, exc,
                extra=self._at(job),
            )  # fmt: skip
        if state == "running":
            if job.stop_requested:
                self.client.job_stop(job=job.session_name, grace_s=settings.JOBS_STOP_GRACE_SECONDS)
            return
        final = J.CANCELLED if state == "stopped" else FINISHED.get(state, J.FAILED)
        self._keep_output(job)
        self._finish(job, final, exit_status=status.exit_status)
        self.client.job_clean(job=job.session_name)
        self.done.append(f"{job.session_name} {final}")
        log.info(
            "%s: %s ended %s (exit status %s)", self.host.name, job.session_name, final,
            status.exit_status, extra=self._at(job),
        )  # fmt: skip

    def _copy_log(self, job: Job, log_bytes: int) -> None:
        """Append what the host's log gained since the last pass, keeping its tail.

        A pass copies at most the kept size (JOBS_MAX_LOG_KB): a log that grew by more since
        the last pass is read from that far before its end, and what lies before is dropped
        unread (counted in log_dropped; the pages mark it). Offsets advance by the host's
        bytes, so a part that cannot be stored is passed over, never read again and again.
        """
        keep = settings.JOBS_MAX_LOG_KB * 1024
        offset = skipped = job.log_offset
        if log_bytes - offset > keep:
            offset = log_bytes - keep
        skipped = offset - skipped
        parts, budget = [], keep
        while budget > 0:
            answer = self.client.job_logs(
                job=job.session_name, offset=offset, limit=min(LOG_CHUNK, budget)
            )
            moved = answer.offset - offset
            if moved <= 0:
                break
            parts.append(answer.data)
            offset, budget = offset + moved, budget - moved
            if answer.eof:
                break
        if offset == job.log_offset:
            return
        # Past a skip, the new part alone is the tail: the earlier one is dropped with it.
        earlier = "" if skipped else job.log
        whole = earlier + storable("".join(parts))
        text = whole[-keep:]
        dropped = job.log_dropped + skipped + len(whole) - len(text) + len(job.log) - len(earlier)
        try:
            with transaction.atomic():
                Job.objects.filter(pk=job.pk).update(
                    log=text, log_offset=offset, log_dropped=dropped
                )
        except (DatabaseError, ValueError):  # psycopg refuses some text before sending it
            log.exception(
                "%s %s: storing the log failed", self.host.name, job.session_name,
                extra=self._at(job),
            )  # fmt: skip
            note = f"\n[porterbox: {offset - job.log_offset} bytes of the log could not be kept]\n"
            text = (job.log + note)[-keep:]
            dropped = job.log_dropped + len(job.log) + len(note) - len(text)
            Job.objects.filter(pk=job.pk).update(log=text, log_offset=offset, log_dropped=dropped)
        job.log, job.log_offset, job.log_dropped = text, offset, dropped

    def _keep_output(self, job: Job) -> None:
        """Fetch what the job left in its output directory before the host removes it: the
        archive streams from the host to a temporary file, then into the storage."""
        limit = settings.JOBS_MAX_OUTPUT_MB * 1024 * 1024
        with tempfile.TemporaryFile() as sink:
            answer = self.client.job_output(job=job.session_name, limit=limit, sink=sink)
            if answer.too_large:
                note = f"Its output is over {settings.JOBS_MAX_OUTPUT_MB} MB compressed; not kept."
                Job.objects.filter(pk=job.pk).update(last_error=note)
            elif answer.bytes:
                sink.seek(0)
                job.output.save(f"job-{job.pk}-output.tar.gz", File(sink), save=False)
                Job.objects.filter(pk=job.pk).update(output=job.output.name)

    @transaction.atomic  # the move, the devices' release and the notice
    def _finish(self, job: Job, state: str, *, ran: bool = True, **fields) -> None:
        if Job.move(job.pk, state, from_=Job.HOLDING, ended_at=self.now, **fields):
            # The devices are free from now on; what was held until now is the job's usage.
            release(job, self.now, ran=ran)
            tell_job(job.pk)


@transaction.atomic  # the move, the devices' release and the notice
def requeue(job: Job, now: datetime, reason: str) -> None:
    """Put a job lost with its host back in the queue, a limited number of times."""
    if job.requeues >= settings.JOBS_MAX_REQUEUES:
        moved = Job.move(
            job.pk, J.FAILED, from_=Job.HOLDING, ended_at=now,
            last_error=f"{reason}; requeued {job.requeues} times already, so it failed.",
        )  # fmt: skip
    else:
        moved = Job.move(
            job.pk, J.REQUEUED, from_=Job.HOLDING, host=None, requeues=job.requeues + 1,
            last_error=reason, queued_at=now,
        )  # fmt: skip
    if moved:
        release(job, now, ran=job.state == J.RUNNING)
        tell_job(job.pk)
        log.warning(
            "%s %s: %s", job.session_name,
            "failed" if job.requeues >= settings.JOBS_MAX_REQUEUES else "requeued", reason,
            extra=context(job.host if job.host_id else None, job=job),
        )  # fmt: skip


def release(job: Job, now: datetime, *, ran: bool) -> None:
    """Free the devices of the job's current attempt from now on. What a running attempt held
    is its usage; an attempt that never ran (still scheduled or starting) is charged nothing."""
    current = Allocation.objects.filter(job=job, active=True, end__gt=now)
    if ran:
        current.update(end=now)
    else:
        current.update(active=False)


def _job_of(name: str) -> int | None:
    """The job an attempt is named for (`j<id>` or `j<id>-<attempt>`, Job.session_name)."""
    head = name.split("-", 1)[0]
    return int(head[1:]) if head[:1] == "j" and head[1:].isdigit() else None


def requeue_from_failed_host(host: Host, now: datetime) -> int:
    """Jobs of a host unreachable for JOBS_HOST_FAILURE_SECONDS go back to the queue."""
    limit = timedelta(seconds=settings.JOBS_HOST_FAILURE_SECONDS)
    if host.last_seen is not None and now - host.last_seen < limit:
        return 0
    lost = list(Job.objects.filter(host=host, state__in=Job.HOLDING))
    for job in lost:
        requeue(job, now, f"{host.name} could not be reached")
    return len(lost)
