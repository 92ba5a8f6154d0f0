"""Submitting and cancelling training jobs: the one path for the pages and the API.

What is checked here is what the host agent will check again (docs/agent.md, job verbs), so a
job is refused at submission with a clear message rather than failing on a host later.
"""

from __future__ import annotations

import base64
import re
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal.accounts.models import PartnerMembership, PartnerProject, User
from portal.booking.models import Allocation
from portal.inventory.hwspec import Hwspec, InvalidHwspec
from portal.inventory.models import DriverStack, Host
from portal.jobs.models import Job
from provisioning.agent.hostctl import AgentError as AgentRefusal
from provisioning.agent.jobs import check_archive

ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
# Variables the loader, the shell or an interpreter reads before the script runs, and the ones
# the agent sets itself (docs/agent.md).
ENV_DENIED = re.compile(
    r"PATH|HOME|SHELL|USER|LOGNAME|IFS|ENV|BASH_ENV|CDPATH|NODE_OPTIONS|LD_.*|PYTHON.*|PERL5.*"
    r"|RUBY.*|PORTERBOX_.*|CUDA_VISIBLE_DEVICES|CUDA_DEVICE_ORDER|ROCR_VISIBLE_DEVICES"
    r"|ZE_AFFINITY_MASK"
)
GIT_REF = re.compile(r"[A-Za-z0-9._/-]{1,100}")
MAX_SCRIPT = 64 * 1024
MAX_ENV = 64
MAX_ENV_VALUE = 4096


class JobError(Exception):
    """A request the service refuses; `field` names what to fix, where there is one."""

    status = 400

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


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


def check_env(env: object) -> dict[str, str]:
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise JobError("bad_env", f"At most {MAX_ENV} variables, as NAME=value.", "env")
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise JobError("bad_env", f"{str(name)[:70]!r} is not a variable name.", "env")
        if ENV_DENIED.fullmatch(name):
            raise JobError("bad_env", f"{name} is set by the host, not by the job.", "env")
        if not isinstance(value, str) or len(value) > MAX_ENV_VALUE or "\0" in value:
            raise JobError("bad_env", f"{name}: a text of at most 4 KiB.", "env")
    return dict(env)


def _check_input(git_url: str, git_ref: str, archive) -> None:
    if git_url and archive:
        raise JobError("bad_input", "Give a git URL or an archive, not both.", "input_git_url")
    if git_url and not git_url.startswith("https://"):
        raise JobError("bad_input", "The git URL must start with https://.", "input_git_url")
    if git_ref and (not GIT_REF.fullmatch(git_ref) or git_ref.startswith(("-", "/"))):
        raise JobError("bad_input", "Not a branch or tag name.", "input_git_ref")
    limit = settings.JOBS_MAX_ARCHIVE_MB * 1024 * 1024
    if archive is not None and archive.size > limit:
        raise JobError(
            "bad_input", f"The archive is over {settings.JOBS_MAX_ARCHIVE_MB} MB.", "input_archive"
        )
    if archive is not None:
        # The host's own check, run here so a broken archive is refused now, not on a host.
        archive.seek(0)
        encoded = base64.b64encode(archive.read()).decode()
        archive.seek(0)
        try:
            check_archive(encoded)
        except AgentRefusal as exc:
            message = exc.message.removeprefix("input.archive: ")
            raise JobError("bad_input", f"The archive: {message}", "input_archive") from None


def job_submit(
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
) -> Job:
    if not may_submit(submitter, project):
        raise JobError("not_member", f"Only members of {project} submit its jobs.", "project")
    for field_name, value, limit in (
        ("name", name, 100),
        ("code_licence", code_licence, 100),
        ("data_licence", data_licence, 100),
        ("input_git_url", input_git_url, 200),
    ):
        if len(value) > limit:
            raise JobError("too_long", f"At most {limit} characters.", field_name)
    if min_memory_mib < 0:
        raise JobError("bad_memory", "The minimum memory cannot be negative.", "min_memory_mib")
    if not script.strip() or len(script.encode()) > MAX_SCRIPT or "\0" in script:
        raise JobError("bad_script", "The script: some text, at most 64 KiB.", "script")
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
    if not Host.objects.filter(stacks=stack).exclude(state=Host.State.RETIRED).exists():
        raise JobError("stack_missing", f"No host offers the stack {stack.name}.", "stack")
    if model_freedom not in Job.ModelFreedom.values:
        raise JobError("bad_freedom", "Say whether the model is free.", "model_freedom")
    _check_input(input_git_url, input_git_ref, input_archive)
    return Job.objects.create(
        project=project, submitter=submitter, name=name, script=script, stack=stack,
        count=count, hwspec=str(spec) if spec else "", min_memory_mib=min_memory_mib,
        walltime=walltime, env=check_env(env or {}), input_git_url=input_git_url,
        input_git_ref=input_git_ref, input_archive=input_archive, code_licence=code_licence,
        data_licence=data_licence, model_freedom=model_freedom,
    )  # fmt: skip


def job_cancel(*, job: Job, actor: User) -> Job:
    """Cancel a job: a waiting or scheduled one at once; a running one is stopped by the loop."""
    if not may_manage(actor, job):
        raise JobError("not_yours", "Only members of the job's project cancel it.")
    now = timezone.now()
    with transaction.atomic():
        if Job.move(job.pk, Job.State.CANCELLED, from_=(*Job.WAITING, Job.State.SCHEDULED),
                    ended_at=now):  # fmt: skip
            Allocation.objects.filter(job=job).update(active=False)
        elif not Job.objects.filter(
            pk=job.pk, state__in=(Job.State.STARTING, Job.State.RUNNING)
        ).update(stop_requested=True):
            raise JobError("finished", "The job has finished already.")
    job.refresh_from_db()
    return job
