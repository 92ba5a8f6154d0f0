"""Submitting and cancelling training jobs: the one path for the pages and the API.

What is checked here is what the host agent will check again (docs/agent.md, job verbs), so a
job is refused at submission with a clear message rather than failing on a host later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.urls import reverse
from django.utils import timezone

from portal import rows
from portal.accounts.models import PartnerMembership, PartnerProject, User
from portal.booking.models import Allocation
from portal.errors import Conflict, ServiceError
from portal.inventory.hwspec import Hwspec, InvalidHwspec
from portal.inventory.models import DriverStack, Host
from portal.jobs.models import Job
from portal.notifications.outbox import notify
from provisioning.agent import rules as job_rules
from provisioning.agent.protocol import AgentError as AgentRefusal

# A refusal of the jobs service: portal/errors.py's, under the name the jobs' callers know.
JobError = ServiceError


class ClusterRoute(Protocol):
    """Jobs bound for a Slurm cluster's partition instead of the fleet (docs/slurm.md). The
    clusters app, above this one, installs its route at start-up (ClustersConfig.ready)."""

    def choices(self, user: User) -> list[tuple[str, str]]:
        """("cluster/partition", label) for the partitions the user's projects may use."""
        ...

    def prepare(
        self,
        *,
        partition: str,
        project: PartnerProject,
        stack: DriverStack,
        count: int,
        walltime: timedelta,
        env: dict[str, str],
    ) -> Callable[[list[Job]], None]:
        """Check the job against the partition (JobError if it does not fit); a function that
        binds the new jobs to it, called in the transaction that creates them."""
        ...


cluster_route: ClusterRoute | None = None


def may_submit(user: User, project: PartnerProject) -> bool:
    return (
        project.state == PartnerProject.State.APPROVED
        and PartnerMembership.objects.filter(project=project, user=user).exists()
    )


def may_manage(user: User, job: Job) -> bool:
    """Members of the job's project (and staff) see its details and may cancel it."""
    return (
        user.is_staff
        or PartnerMembership.objects.filter(project=job.project_id, user=user).exists()
    )


def _agent_rule(check, value, field: str, message: str = ""):
    """The host agent's own check of a field (docs/agent.md): one rule, here and on the host.
    The refusal says `message` where given, else the agent's words."""
    try:
        return check(value)
    except AgentRefusal as exc:
        raise JobError(exc.code, message or exc.message, field) from None


def check_env(env: object) -> dict[str, str]:
    return _agent_rule(job_rules.check_env, env, "env")


def _check_input(git_url: str, git_ref: str, archive) -> None:
    if git_url and archive:
        raise JobError("bad_input", "Give a git URL or an archive, not both.", "input_git_url")
    if git_url:
        _agent_rule(job_rules.check_git_url, git_url, "input_git_url")
    if git_ref:
        _agent_rule(job_rules.check_git_ref, git_ref, "input_git_ref", "Not a branch or tag name.")
    limit = settings.JOBS_MAX_ARCHIVE_MB * 1024 * 1024
    if archive is not None and archive.size > limit:
        raise JobError(
            "bad_input", f"The archive is over {settings.JOBS_MAX_ARCHIVE_MB} MB.", "input_archive"
        )
    if archive is not None:
        # Checked now, with the host's own rules, so a broken archive is refused here; read
        # through from the upload's file, never into memory whole.
        archive.seek(0)
        try:
            job_rules.check_archive(archive)
        except AgentRefusal as exc:
            detail = exc.message.removeprefix("input.archive: ")
            raise JobError("bad_input", f"The archive: {detail}", "input_archive") from None
        finally:
            archive.seek(0)


# At most this many tasks in one array: Slurm's default bound (MaxArraySize 1001, indices
# 0-1000), so a script written for `sbatch --array` fits, and one pass writes an array's tasks
# in one statement of at most a thousand rows.
MAX_ARRAY = 1000


@dataclass(frozen=True, slots=True)
class Refs:
    """What a submission names, read at once (`submission_refs`): the project and stack (None
    if no such), whether the submitter is a member of the project, and whether a host in
    service offers the stack."""

    project: PartnerProject | None
    stack: DriverStack | None
    member: bool
    served: bool

    @property
    def checks(self) -> tuple[bool, bool]:
        return self.member, self.served


def submission_refs(submitter: User, project_slug: str, stack_name: str) -> Refs:
    """The project (by slug) and stack (by name) of a submission, the membership and whether
    the stack is served: one query where looking each up costs four (the API's path)."""
    through = Host.stacks.through
    # Names from the models, values as parameters.
    sql = (
        f"SELECT {rows.columns(PartnerProject, 'p')}, {rows.columns(DriverStack, 's')}, "  # noqa: S608
        f"EXISTS (SELECT 1 FROM {rows.table(PartnerMembership)} m"
        " WHERE m.project_id = p.id AND m.user_id = %s), "
        f"EXISTS (SELECT 1 FROM {rows.table(through)} hs"
        f" JOIN {rows.table(Host)} h ON h.id = hs.host_id"
        " WHERE hs.driverstack_id = s.id AND h.state <> %s) "
        "FROM (SELECT 1 AS one) o"
        f" LEFT JOIN {rows.table(PartnerProject)} p ON p.slug = %s"
        f" LEFT JOIN {rows.table(DriverStack)} s ON s.name = %s"
    )
    params = [submitter.pk, Host.State.RETIRED, project_slug, stack_name]
    (project, stack), (member, served) = rows.fetch_one(sql, params, PartnerProject, DriverStack)
    return Refs(project=project, stack=stack, member=bool(member), served=bool(served))


def job_submit(**fields: Any) -> Job:
    """Submit one job, or an array (`array=N`): the array's first job. job_submit_tasks's
    arguments."""
    return job_submit_tasks(**fields)[0]


def job_submit_tasks(
    *,
    project: PartnerProject,
    submitter: User,
    name: str,
    script: str,
    stack: DriverStack,
    walltime: timedelta,
    code_licence: str,
    data_licence: str,
    model_freedom: str,
    count: int = 1,
    hwspec: str = "",
    min_memory_mib: int = 0,
    env: dict | None = None,
    input_git_url: str = "",
    input_git_ref: str = "",
    input_archive=None,
    array: int | None = None,
    partition: str = "",
    checks: tuple[bool, bool] | None = None,
) -> list[Job]:
    """Queue a job, or an array of `array` tasks (like `sbatch --array=0-(N-1)`): N jobs alike,
    each with `array` (the first job), `array_index` 0..N-1 and `array_size` N. Every rule
    holds for each task, and the scheduler counts each as a job of its own.

    As Slurm writes one job record for an array and splits its tasks off later, a fleet array
    is written as its first task alone, with `array_pending` N-1: the scheduler's next pass
    writes the others (`write_array_tasks`). The list returned is the jobs written: a fleet
    array's first task. An array bound to a `partition` ("cluster/partition": a Slurm
    cluster's, instead of the fleet) is written whole at once, its binding needs every task.
    `checks`: (member, served) as `submission_refs` read them with the project and stack."""
    # Membership and a host with the stack, asked at once (one round trip, not two).
    member, served = checks or (
        DriverStack.objects.filter(pk=stack.pk)
        .annotate(
            member=Exists(PartnerMembership.objects.filter(project=project, user=submitter)),
            served=Exists(
                Host.objects.filter(stacks=OuterRef("pk")).exclude(state=Host.State.RETIRED)
            ),
        )
        .values_list("member", "served")
        .get()
    )
    if project.state != PartnerProject.State.APPROVED or not member:
        raise JobError("not_member", f"Only members of {project} submit its jobs.", "project")
    for field_name, value, limit in (
        ("name", name, 100),
        ("code_licence", code_licence, 100),
        ("data_licence", data_licence, 100),
        ("input_git_url", input_git_url, 200),
    ):
        if len(value) > limit:
            raise JobError("too_long", f"At most {limit} characters.", field_name)
    if array is not None and (type(array) is not int or not 1 <= array <= MAX_ARRAY):
        raise JobError("bad_array", f"An array has 1 to {MAX_ARRAY} tasks.", "array")
    if min_memory_mib < 0:
        raise JobError("bad_memory", "The minimum memory cannot be negative.", "min_memory_mib")
    if not script.strip():
        raise JobError("bad_script", "The script is empty.", "script")
    _agent_rule(job_rules.check_script, script, "script")
    if not 1 <= count <= 64:
        raise JobError("bad_count", "Between 1 and 64 devices.", "count")
    try:
        spec = Hwspec.parse(hwspec) if hwspec else None
    except InvalidHwspec as exc:
        raise JobError("bad_hwspec", str(exc), "hwspec") from None
    if walltime <= timedelta(0):
        raise JobError("bad_walltime", "The walltime must be positive.", "walltime")
    if walltime > timedelta(hours=project.max_walltime_hours):
        raise JobError(
            "bad_walltime",
            f"{project} runs jobs of at most {project.max_walltime_hours} hours.",
            "walltime",
        )
    if count > project.max_concurrent_devices:
        raise JobError(
            "bad_count",
            f"{project} may hold at most {project.max_concurrent_devices} devices at once.",
            "count",
        )
    bind = None
    if partition:
        if cluster_route is None:
            raise JobError("no_clusters", "No Slurm cluster is registered.", "partition")
        bind = cluster_route.prepare(
            partition=partition, project=project, stack=stack, count=count, walltime=walltime,
            env=env or {},
        )  # fmt: skip
    elif not served:
        raise JobError("stack_missing", f"No host offers the stack {stack.name}.", "stack")
    if spec and not stack.serves(spec):
        # The finder's rule and words (portal/booking/forms.py): such a job would wait forever.
        raise JobError(
            "stack_hwspec", f"The stack {stack.name} does not serve {spec.kind}.", "stack"
        )
    if model_freedom not in Job.ModelFreedom.values:
        raise JobError("bad_freedom", "Say whether the model is free.", "model_freedom")
    _check_input(input_git_url, input_git_ref, input_archive)
    now = timezone.now()
    common = {
        "project": project, "submitter": submitter, "name": name, "script": script,
        "stack": stack, "count": count, "hwspec": str(spec) if spec else "",
        "min_memory_mib": min_memory_mib, "walltime": walltime, "env": check_env(env or {}),
        "input_git_url": input_git_url, "input_git_ref": input_git_ref,
        "code_licence": code_licence, "data_licence": data_licence,
        "model_freedom": model_freedom, "queued_at": now, "created": now,
    }  # fmt: skip
    if not array and bind is None:
        return [Job.objects.create(**common, input_archive=input_archive)]
    # Created and bound to a cluster at once: the fleet's scheduler never sees it unbound.
    with transaction.atomic():
        if not array:
            jobs = [Job.objects.create(**common, input_archive=input_archive)]
            if bind is not None:
                bind(jobs)
            return jobs
        # A fleet array: its first task, the others pending for the next pass (two statements
        # whatever N: the row, then its pointer to itself, which its id is needed for).
        first = Job.objects.create(
            **common, input_archive=input_archive, array_index=0, array_size=array,
            array_pending=array - 1,
        )  # fmt: skip
        first.array = first
        first.save(update_fields=["array"])
        if bind is None:
            return [first]
        # Bound to a cluster: the binding needs every task, so the pass's writer writes them
        # now, in this transaction (one archive file for all: the first stored it).
        _write_array_batch(only=[first.pk])
        first.array_pending = 0
        jobs = [
            first,
            *Job.objects.filter(array=first).exclude(pk=first.pk).order_by("array_index"),
        ]
        bind(jobs)
    return jobs


# What a task of an array takes from its first row when the pass writes it: what was submitted.
# Every other column gets its default (queued, no host, no log, ...): by then the first task
# may be running, finished or cancelled alone.
SUBMITTED = (
    "project", "submitter", "name", "script", "autopkgtest", "stack", "count", "hwspec",
    "min_memory_mib", "walltime", "env", "input_git_url", "input_git_ref", "input_archive",
    "code_licence", "data_licence", "model_freedom", "queued_at", "created", "array",
    "array_size",
)  # fmt: skip


# Arrays whose tasks one transaction of the writer takes: at most ~20,000 rows (about a second
# on a small machine), so a pass is never one unbounded statement.
ARRAYS_PER_BATCH = 20


def write_array_tasks(*, seconds: float | None = None) -> int:
    """Write the pending tasks of the arrays (the scheduler pass's first step, as Slurm splits
    an array's tasks off its one record), oldest array first: how many were written. Batches
    of ARRAYS_PER_BATCH arrays, each one transaction of two statements whatever its number of
    tasks, until none is pending or `seconds` have passed (then the next pass goes on).

    The claim (UPDATE ... SET array_pending = 0 WHERE array_pending > 0) takes each array once:
    a second writer at the same time waits for the first's row locks, then finds nothing
    pending there; a cancel of the whole array sets array_pending to 0 under the same lock
    (`_cancel_array`), so a cancelled array's tasks are never written."""
    deadline = None if seconds is None else time.monotonic() + seconds
    written = 0
    while True:
        tasks, arrays = _write_array_batch()
        written += tasks
        if arrays < ARRAYS_PER_BATCH or (deadline is not None and time.monotonic() > deadline):
            return written


def _write_array_batch(only: Sequence[int] = ()) -> tuple[int, int]:
    """The tasks of at most ARRAYS_PER_BATCH pending arrays (or of the arrays `only` names),
    claimed and written in one transaction: (tasks written, arrays claimed)."""
    quote = connection.ops.quote_name
    table = quote(Job._meta.db_table)
    pending, size, index = (quote(c) for c in ("array_pending", "array_size", "array_index"))
    fields = Job._meta.concrete_fields
    copied = [quote(f.column) for f in fields if f.name in SUBMITTED]
    defaults = [f for f in fields if f.name not in (*SUBMITTED, "id", "array_index")]
    values = [f.get_db_prep_save(f.get_default(), connection) for f in defaults]
    with transaction.atomic(), connection.cursor() as cursor:
        # Names from the model, values as parameters. The outer condition is checked again on
        # a row another writer (or a cancel) held: what it claimed is skipped here.
        if only:
            which, params = ", ".join(["%s"] * len(only)), list(only)
        else:
            which = f"SELECT id FROM {table} WHERE {pending} > 0 ORDER BY id LIMIT %s"  # noqa: S608
            params = [ARRAYS_PER_BATCH]
        cursor.execute(
            f"UPDATE {table} SET {pending} = 0 WHERE {pending} > 0 AND id IN ({which}) "  # noqa: S608
            "RETURNING id",
            params,
        )
        claimed = [row[0] for row in cursor.fetchall()]
        if not claimed:
            return 0, 0
        # Each array's tasks from the first not written (the written ones are 0..k-1) to N-1.
        marks = ", ".join(["%s"] * len(claimed))
        columns = ", ".join([*copied, *(quote(f.column) for f in defaults), index])
        # INSERT first, the WITH in its SELECT: SQLite counts the rows of a statement that
        # starts with INSERT only.
        sql = (
            f"INSERT INTO {table} ({columns}) "  # noqa: S608
            "WITH RECURSIVE g(head, i, n) AS ("
            f"SELECT j.id, (SELECT MAX(t.{index}) + 1 FROM {table} t WHERE t.{quote('array_id')}"
            f" = j.id), j.{size} FROM {table} j WHERE j.id IN ({marks})"
            " UNION ALL SELECT head, i + 1, n FROM g WHERE i + 1 < n) "
            f"SELECT {', '.join('j.' + c for c in copied)}, {', '.join(['%s'] * len(values))},"
            f" g.i FROM g JOIN {table} j ON j.id = g.head WHERE g.i < g.n"
            " ORDER BY g.head, g.i"  # the ids in the tasks' order, as a list by id shows them
        )
        cursor.execute(sql, [*claimed, *values])
        return cursor.rowcount, len(claimed)


def job_cancel(*, job: Job, actor: User, whole_array: bool = False) -> Job:
    """Cancel a job: a waiting or scheduled one at once; a running one is stopped by the loop.

    `whole_array`: every task of the job's array (the job alone if it is in none); refused
    only when no task is left to cancel."""
    if not may_manage(actor, job):
        raise JobError("not_yours", "Only members of the job's project cancel it.")
    now = timezone.now()
    if whole_array and job.array_id is not None:
        _cancel_array(job.array_id, now)
        job.refresh_from_db()
        return job
    with transaction.atomic():
        if Job.move(job.pk, Job.State.CANCELLED, from_=(*Job.WAITING, Job.State.SCHEDULED),
                    ended_at=now):  # fmt: skip
            Allocation.objects.filter(job=job).update(active=False)
        elif not Job.objects.filter(
            pk=job.pk, state__in=(Job.State.STARTING, Job.State.RUNNING)
        ).update(stop_requested=True):
            raise Conflict("finished", "The job has finished already.")
    job.refresh_from_db()
    return job


def _cancel_array(array_id: int, now) -> None:
    """Cancel every task of an array that has not finished, and its tasks not written yet: one
    transaction, a few statements."""
    tasks = Job.objects.filter(array=array_id)
    with transaction.atomic():
        # The first row first: its tasks pending are dropped, under the lock the pass's writer
        # claims them with (write_array_tasks), so none is written after the cancel; one the
        # writer holds is waited for, and its tasks are cancelled below.
        unwritten = Job.objects.filter(pk=array_id, array_pending__gt=0).update(array_pending=0)
        # Locked, so the scheduler cannot place one between the read and the move.
        waiting = list(
            tasks.select_for_update()
            .filter(state__in=(*Job.WAITING, Job.State.SCHEDULED))
            .values_list("pk", flat=True)
        )
        if waiting:
            Job.objects.filter(pk__in=waiting).update(state=Job.State.CANCELLED, ended_at=now)
            Allocation.objects.filter(job__in=waiting).update(active=False)
        stopping = tasks.filter(state__in=(Job.State.STARTING, Job.State.RUNNING)).update(
            stop_requested=True
        )
        if not waiting and not stopping and not unwritten:
            raise Conflict("finished", "Every task of the array has finished already.")


JOB_EVENTS: dict[str, str] = {
    Job.State.RUNNING: "job.started",
    Job.State.SUCCEEDED: "job.finished",
    Job.State.FAILED: "job.failed",
    Job.State.TIMED_OUT: "job.failed",
    Job.State.REQUEUED: "job.requeued",
}


def tell_job(job_id: int) -> int:
    """Queue the notice of a job's new state for its submitter and its project's webhook; call
    it in the transaction that moved the job. Package test runs are told as test runs."""
    job = Job.objects.select_related("submitter", "project", "host").get(pk=job_id)
    event = JOB_EVENTS.get(job.state)
    if event is None or job.autopkgtest:
        return 0
    url = settings.SITE_URL + reverse("jobs:job_detail", args=[job.pk])
    data = {
        "job": job.pk, "name": job.name, "project": job.project.slug, "state": job.state,
        "host": job.host.name if job.host else None, "exit_status": job.exit_status,
        "url": url,
    }  # fmt: skip
    return notify(
        event, job.submitter, "jobs/mail_job.txt", {"job": job, "url": url, "event": event},
        data=data, project=job.project,
    )  # fmt: skip
