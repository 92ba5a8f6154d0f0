"""Test runs of source packages: which hosts and stacks fit a package's tests, queueing runs
as jobs of the Debian CI project, and recording their results as debci does (issue 17).

A run *is* a job (docs/decisions.md, "A test run is a job"): it is placed by the fair-share
scheduler in the Allocation table, so it never overlaps a reservation, and it is requeued when
its host is lost; nothing here schedules or runs anything. What fits is the finder's rule, not
a new one: a stack fits a hwspec when ``DriverStack.serves`` it, a host when it has an active
device of the kind and the stack (``portal.booking.availability.matching_accelerators``).

Files are fetched (slow I/O) before the transaction that writes a run and its job.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from debian.debian_support import Version
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from portal.accounts.models import PartnerProject, User
from portal.booking.availability import Need, matching_accelerators
from portal.errors import ServiceError
from portal.inventory.hwspec import Hwspec, InvalidHwspec, parse_requirement
from portal.inventory.models import DriverStack
from portal.jobs.models import Job
from portal.notifications.outbox import mail_addresses, notify
from portal.packages import results, sources
from portal.packages.models import SourcePackage, TestRun
from provisioning.agent.rules import OVERRIDE_CONTROL

log = logging.getLogger(__name__)

SYSTEM_USER = "porterbox-ci"
LICENCE = "see debian/copyright"


class RunRefused(ServiceError):
    """A run that cannot be queued as asked: the message says why, for the member who asked."""


# -- what fits -------------------------------------------------------------------------------


@dataclass
class StackFit:
    stack: DriverStack
    hosts: int  # active hosts with a device of the kind and the stack


@dataclass
class AlternativeFit:
    hwspec: Hwspec
    stacks: list[StackFit] = field(default_factory=list)  # the stacks that serve it

    @property
    def hosts(self) -> int:
        return sum(fit.hosts for fit in self.stacks)


@dataclass
class StanzaFit:
    tests: list[str]  # [] when the package's tests are not known one by one: all of them
    hwspec: str  # as written
    restrictions: list[str] = field(default_factory=list)
    alternatives: list[AlternativeFit] = field(default_factory=list)
    cpu_only: bool = False  # needs no accelerator: not queued here (any buildd-style CI runs it)
    error: str = ""


def _stanzas(package: SourcePackage) -> list[dict]:
    """The package's test stanzas; a package whose tests are not known one by one (the .dsc
    says Testsuite and a hwspec, debian/tests/control was not read) is one stanza of all."""
    if package.tests:
        return package.tests
    return [{"tests": [], "hwspec": package.hwspec, "restrictions": []}]


def _hosts(spec: Hwspec, stack: DriverStack) -> int:
    need = Need(count=1, hwspec=spec, stack=stack)
    return matching_accelerators(need).values("host").distinct().count()


def matching(package: SourcePackage) -> list[StanzaFit]:
    """Per test stanza and per hwspec alternative: the stacks that serve it and how many
    active hosts fit (for the package's page: "smoke needs cuda: 3 hosts fit")."""
    stacks = list(DriverStack.objects.all())
    counted: dict[tuple[Hwspec, int], int] = {}
    found = []
    for stanza in _stanzas(package):
        fit = StanzaFit(
            tests=list(stanza.get("tests", [])),
            hwspec=stanza.get("hwspec", ""),
            restrictions=list(stanza.get("restrictions", [])),
        )
        found.append(fit)
        try:
            specs = parse_requirement(fit.hwspec)
        except InvalidHwspec as exc:
            fit.error = str(exc)
            continue
        if all(spec.kind == "cpu" for spec in specs):
            fit.cpu_only = True
            continue
        for spec in specs:
            if spec.kind == "cpu":
                continue
            alternative = AlternativeFit(spec)
            for stack in stacks:
                if stack.serves(spec):
                    key = (spec, stack.pk)
                    if key not in counted:
                        counted[key] = _hosts(spec, stack)
                    alternative.stacks.append(StackFit(stack, counted[key]))
            fit.alternatives.append(alternative)
    return found


@dataclass
class Planned:
    hwspec: Hwspec
    stack: DriverStack
    tests: list[str]


def _plan(
    package: SourcePackage, hwspec: Hwspec | None, stack: DriverStack | None, strict: bool
) -> list[Planned]:
    """The runs to queue: one per (alternative some host fits, stack serving it), with the
    tests of the stanzas that need it; `hwspec` and `stack` narrow it. `strict` (a member's
    request): what cannot be queued is refused with the reason, not just left out."""
    if package.error:
        raise RunRefused("bad_package", f"The package's hwspec fields cannot be read: "
                         f"{package.error}", "package")  # fmt: skip
    fits = matching(package)
    declared = [a.hwspec for f in fits for a in f.alternatives]
    if strict and not declared:
        raise RunRefused(
            "cpu_only",
            f"src:{package.name} {package.version} declares no accelerator for its tests "
            "(its hwspec is cpu or none): the porterboxes run only tests that need one.",
            "package",
        )
    if strict and hwspec is not None and hwspec not in declared:
        names = ", ".join(dict.fromkeys(str(h) for h in declared))
        raise RunRefused(
            "hwspec_not_declared",
            f"src:{package.name} {package.version} does not declare {hwspec}; its tests need "
            f"{names}.",
            "hwspec",
        )
    if strict and hwspec is not None and stack is not None and not stack.serves(hwspec):
        raise RunRefused(
            "stack_hwspec", f"The stack {stack.name} does not serve {hwspec.kind}.", "stack"
        )
    planned: dict[tuple[Hwspec, int], Planned] = {}
    every = len(fits)
    for fit in fits:
        for alternative in fit.alternatives:
            if hwspec is not None and alternative.hwspec != hwspec:
                continue
            for stack_fit in alternative.stacks:
                if stack is not None and stack_fit.stack.pk != stack.pk:
                    continue
                if not stack_fit.hosts:
                    continue
                key = (alternative.hwspec, stack_fit.stack.pk)
                run = planned.setdefault(key, Planned(alternative.hwspec, stack_fit.stack, []))
                run.tests.extend(fit.tests)
    for run in planned.values():
        counted = sum(1 for f in fits if any(a.hwspec == run.hwspec for a in f.alternatives))
        if counted == every or not all(f.tests for f in fits):
            run.tests = []  # every test of the package: no --test-name
        else:
            run.tests = list(dict.fromkeys(run.tests))
    if strict and not planned:
        wanted = str(hwspec) if hwspec else " or ".join(dict.fromkeys(str(h) for h in declared))
        where = f" with the stack {stack.name}" if stack else ""
        raise RunRefused(
            "no_host",
            f"No active host has a {wanted} device{where}: src:{package.name} cannot be "
            "tested now.",
            "stack" if stack else "hwspec",
        )
    return list(planned.values())


# -- queueing --------------------------------------------------------------------------------


def tests_project() -> PartnerProject:
    """Debian's own runs are a partner project with its share of the fair-share queue
    (TESTS_PROJECT), made when first needed; staff set its share and quotas like any."""
    slug = settings.TESTS_PROJECT
    project, _ = PartnerProject.objects.get_or_create(
        slug=slug,
        defaults={
            "name": "Debian CI" if slug == "debian-ci" else f"Debian CI ({slug})",
            "description": "Debian's own autopkgtest runs of packages that need an accelerator.",
            "state": PartnerProject.State.APPROVED,
            "code_licence": LICENCE,
            "data_licence": LICENCE,
            "max_walltime_hours": max(1, -(-settings.TESTS_WALLTIME_MINUTES // 60)),
        },
    )
    return project


def system_user() -> User:
    """Who submits the runs nobody asked for: an inactive user that cannot log in."""
    user, made = User.objects.get_or_create(username=SYSTEM_USER, defaults={"is_active": False})
    if made:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def dsc_name(package: SourcePackage) -> str:
    if package.dsc_url:
        return package.dsc_url.rsplit("/", 1)[-1]
    return f"{package.name}_{package.version.split(':', 1)[-1]}.dsc"


def _tar_dir(paths: list[Path]) -> bytes:
    """The run's input .tar.gz: first, where the package's tests carry their own hwspec, the
    copy of debian/tests/control autopkgtest reads instead (rules.OVERRIDE_CONTROL; see
    sources.tests_control_for_autopkgtest), then the .dsc and its files, flat."""
    data = io.BytesIO()
    dsc = next((p for p in paths if p.name.endswith(".dsc")), None)
    control = sources.tests_control_for_autopkgtest(dsc) if dsc else None
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        if control is not None:
            member = tarfile.TarInfo(OVERRIDE_CONTROL)
            member.size, member.mode = len(control.encode()), 0o644
            archive.addfile(member, io.BytesIO(control.encode()))
        for path in paths:
            archive.add(path, arcname=path.name, recursive=False)
    return data.getvalue()


def overrides_control(archive: bytes) -> bool:
    """Whether a run's input holds the replacement tests/control (its first member, if any)."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|gz") as members:
        first = members.next()
    return first is not None and first.name == OVERRIDE_CONTROL


def _tar_upload(package: SourcePackage) -> bytes:
    """The member's upload (a tar of the .dsc and its files) as the job's .tar.gz: its plain
    files, flat, under their own names."""
    with (
        tempfile.TemporaryDirectory(prefix="porterbox-src-") as tmp,
        package.uploaded.open("rb") as upload,
        tarfile.open(fileobj=upload, mode="r|*") as src,
    ):
        paths = []
        for member in src:
            name = member.name.rsplit("/", 1)[-1]
            content = src.extractfile(member) if member.isfile() else None
            if content is not None and sources.FILE_NAME.fullmatch(name):
                path = Path(tmp) / name
                path.write_bytes(content.read())
                paths.append(path)
        return _tar_dir(paths)


def input_archive(package: SourcePackage) -> bytes:
    """The run's input: a .tar.gz of the .dsc and its files, fetched from the archive (its URL
    and the package's Directory), the .dsc URL a member gave, or their upload; each file
    checked against its SHA256. Raises sources.SourceError."""
    if package.uploaded:
        return _tar_upload(package)
    if package.archive is not None:
        base, allow_file = sources.join(package.archive.url, package.directory), True
    elif package.dsc_url:
        base, allow_file = package.dsc_url.rsplit("/", 1)[0], False
    else:
        raise sources.SourceError("Where its files are is not known (no archive, URL or upload).")
    with tempfile.TemporaryDirectory(prefix="porterbox-src-") as tmp:
        paths = sources.fetch_source_files(
            base, dsc_name(package), package.files, Path(tmp), allow_file=allow_file
        )
        return _tar_dir(paths)


def _waiting(package: SourcePackage, hwspec: str, stack: DriverStack) -> bool:
    return TestRun.objects.filter(
        package=package, hwspec=hwspec, stack=stack, job__state__in=Job.WAITING
    ).exists()


def _job_fields(
    package: SourcePackage, planned_tests: list[str], hwspec: str, stack, submitter, override,
    project: PartnerProject,
):  # fmt: skip
    control = {"control": OVERRIDE_CONTROL} if override else {}
    return {
        "project": project,
        "submitter": submitter,
        "name": f"autopkgtest {package.name} {package.version}"[:100],
        "script": "",
        "autopkgtest": {"dsc": dsc_name(package), "tests": planned_tests, **control},
        "stack": stack,
        "count": 1,
        "hwspec": hwspec,
        "walltime": timedelta(minutes=settings.TESTS_WALLTIME_MINUTES),
        "code_licence": LICENCE,
        "data_licence": LICENCE,
        "model_freedom": Job.ModelFreedom.FREE,
    }


def _version_of(package_name: str, version: str) -> SourcePackage:
    """The archive's version of a package (the newest one seen where archives differ)."""
    found = SourcePackage.objects.filter(name=package_name, version=version, archive__isnull=False)
    package = found.select_related("archive").order_by("-seen", "-pk").first()
    if package is None:
        if not SourcePackage.objects.filter(name=package_name).exists():
            raise RunRefused(
                "unknown_package",
                f"No package src:{package_name[:100]} is known here: give a .dsc URL instead.",
                "package",
            )
        raise RunRefused(
            "unknown_version",
            f"No archive known here has src:{package_name} {version[:100]}.",
            "version",
        )
    return package


def package_from_dsc_url(url: str, submitter: User) -> tuple[SourcePackage, bytes]:
    """Fetch a .dsc a member named and its files (http or https only, each checked against the
    .dsc's SHA256), read what its tests need, and store it as a package version of its own.
    Returns it with its run's input (the files, as a .tar.gz), so nothing is fetched twice."""
    if len(url) > 500:
        raise RunRefused("bad_url", "A .dsc URL is at most 500 characters.", "dsc_url")
    base, _, name = url.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="porterbox-src-") as tmp:
        try:
            if not url.startswith(("http://", "https://")):
                raise sources.SourceError(f"{url[:200]} is not an http or https URL.")
            paths = sources.fetch_source_files(base, name, None, Path(tmp), allow_file=False)
            data = paths[0].read_bytes()
            dsc = sources.parse_dsc(data, name)
            own = {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            files = [own, *sources.dsc_files(dsc, name)]
        except sources.SourceError as exc:
            raise RunRefused("source_unavailable", str(exc), "dsc_url") from None
        tests = sources.read_dsc_dir(paths[0])
        archive = _tar_dir(paths)
    package = SourcePackage.objects.create(
        name=dsc["Source"], version=dsc["Version"], maintainer=tests.maintainer[:300],
        hwspec=tests.hwspec[:200], tests=tests.stanzas, testsuite=tests.testsuite[:200],
        error=tests.error, files=files, dsc_url=url, submitter=submitter,
    )  # fmt: skip
    return package, archive


def request_runs(
    *,
    requester: User,
    package: str = "",
    version: str = "",
    dsc_url: str = "",
    hwspec: str = "",
    stack: DriverStack | None = None,
) -> list[TestRun]:
    """A member asks for runs of a package version from an archive, or of a .dsc at a URL: the
    one path of the page and the API. Debian members only."""
    if not requester.is_debian_member:
        raise RunRefused("not_member", "Only Debian members ask for test runs; ask staff.")
    if dsc_url and (package or version):
        raise RunRefused("bad_source", "Give a package and version, or a .dsc URL, not both.")
    if dsc_url:
        found, archive = package_from_dsc_url(dsc_url, requester)
        return _queue(found, trigger=TestRun.Trigger.REQUEST, requester=requester,
                      hwspec=hwspec or None, stack=stack, archive=archive)  # fmt: skip
    if not package or not version:
        raise RunRefused("bad_source", "Give a package and its version, or a .dsc URL.")
    return queue_package(
        _version_of(package, version),
        trigger=TestRun.Trigger.REQUEST,
        requester=requester,
        hwspec=hwspec or None,
        stack=stack,
    )


def queue_package(
    package: SourcePackage,
    *,
    trigger: str,
    requester=None,
    hwspec: str | None = None,
    stack: DriverStack | None = None,
) -> list[TestRun]:
    """Queue runs of the package: one per hwspec its tests need and stack that serves it (or
    the one hwspec and stack asked for). The watcher calls it for each new version.

    A member's request (trigger "request") is refused with a RunRefused that says why when
    nothing can be queued; the watcher's and the refresh's calls queue what fits, log the rest,
    and never queue a second run where one of the package is already waiting."""
    return _queue(package, trigger=trigger, requester=requester, hwspec=hwspec, stack=stack)


def _queue(
    package: SourcePackage,
    *,
    trigger: str,
    requester=None,
    hwspec: str | None = None,
    stack: DriverStack | None = None,
    archive: bytes | None = None,
) -> list[TestRun]:
    strict = trigger == TestRun.Trigger.REQUEST
    spec = None
    if hwspec:
        try:
            spec = Hwspec.parse(hwspec)
        except InvalidHwspec as exc:
            raise RunRefused("bad_hwspec", str(exc), "hwspec") from None
    try:
        planned = _plan(package, spec, stack, strict)
    except RunRefused:
        if strict:
            raise
        log.info("src:%s %s: not queued", package.name, package.version, exc_info=True)
        return []
    if not strict:
        planned = [p for p in planned if not _waiting(package, str(p.hwspec), p.stack)]
    if not planned:
        log.info("src:%s %s: no host fits its tests, or runs wait already",
                 package.name, package.version)  # fmt: skip
        return []
    try:
        if archive is None:
            archive = input_archive(package)  # before the transaction: slow I/O
    except sources.SourceError as exc:
        if strict:
            raise RunRefused("source_unavailable", str(exc), "package") from None
        log.warning("src:%s %s: not queued: %s", package.name, package.version, exc)
        return []
    submitter = requester or system_user()
    override = overrides_control(archive)
    project = tests_project()  # once, not per run
    made = []
    with transaction.atomic():
        stored = ""
        for run in planned:
            job = Job(
                **_job_fields(
                    package, run.tests, str(run.hwspec), run.stack, submitter, override, project
                )
            )
            if stored:
                job.input_archive.name = stored  # one file for the package's runs
            else:
                job.input_archive.save(f"{dsc_name(package)[:-4]}.tar.gz", ContentFile(archive),
                                       save=False)  # fmt: skip
                stored = job.input_archive.name
            job.save()
            made.append(
                TestRun.objects.create(
                    package=package,
                    hwspec=str(run.hwspec),
                    stack=run.stack,
                    tests=run.tests,
                    trigger=trigger,
                    requester=requester,
                    job=job,
                )
            )
    return made


def latest_versions() -> list[SourcePackage]:
    """The latest version of each package name (Debian's version order)."""
    latest: dict[str, SourcePackage] = {}
    for package in SourcePackage.objects.filter(error="").select_related("archive"):
        known = latest.get(package.name)
        if known is None or Version(package.version) > Version(known.version):
            latest[package.name] = package
    return [latest[name] for name in sorted(latest)]


def stack_refreshed(stack: DriverStack) -> list[TestRun]:
    """The stack's chroot changed (its packages' digest in a host's inventory): queue again the
    latest version of every package whose tests need a hwspec the stack serves."""
    made = []
    for package in latest_versions():
        made += queue_package(package, trigger=TestRun.Trigger.STACK_REFRESH, stack=stack)
    return made


# -- results ---------------------------------------------------------------------------------


def _retries(run: TestRun) -> int:
    """How many retries led to this run: the retry runs just before it, same package row,
    hwspec and stack."""
    earlier = TestRun.objects.filter(
        package=run.package_id, hwspec=run.hwspec, stack=run.stack_id, pk__lte=run.pk
    ).order_by("-pk")
    count = 0
    for trigger in earlier.values_list("trigger", flat=True)[: settings.TESTS_MAX_RETRIES + 1]:
        if trigger != TestRun.Trigger.RETRY:
            break
        count += 1
    return count


def _previous(run: TestRun) -> TestRun | None:
    """The last run before this one of the same package name, hwspec and stack that said
    something about the package (a tmpfail does not)."""
    return (
        TestRun.objects.filter(
            package__name=run.package.name,
            hwspec=run.hwspec,
            stack=run.stack_id,
            result__in=[results.PASS, results.FAIL, results.NEUTRAL],
            pk__lt=run.pk,
        )
        .order_by("-finished", "-pk")
        .first()
    )


def _summary(job: Job) -> dict[str, str]:
    if not job.output:
        return {}
    try:
        with job.output.open("rb") as file:
            return results.summary_from_output(file)
    except OSError as exc:
        log.warning("job %s: output unreadable: %s", job.pk, exc)
        return {}


def _retry(run: TestRun) -> TestRun:
    old = run.job
    assert old is not None  # noqa: S101 (only runs with a job are recorded)
    override = bool((old.autopkgtest or {}).get("control"))  # the same input, the same files
    fields = _job_fields(
        run.package, run.tests, run.hwspec, run.stack, old.submitter, override, old.project
    )
    job = Job(**fields)
    job.input_archive.name = old.input_archive.name
    job.save()
    return TestRun.objects.create(
        package=run.package, hwspec=run.hwspec, stack=run.stack, tests=run.tests,
        trigger=TestRun.Trigger.RETRY, requester=run.requester, job=job,
    )  # fmt: skip


def record_one(run: TestRun) -> TestRun | None:
    """Record a finished run's result; returns its retry where one was queued."""
    job = run.job
    assert job is not None  # noqa: S101
    result = results.result_of(job.state, job.exit_status)
    summary = _summary(job)  # before the transaction: a file read
    retry = None
    with transaction.atomic():
        previous = _previous(run)
        regression = (
            result == results.FAIL and previous is not None and (previous.result == results.PASS)
        )
        claimed = TestRun.objects.filter(pk=run.pk, result="").update(
            result=result, exit_code=job.exit_status, summary=summary, regression=regression,
            finished=job.ended_at or timezone.now(),
        )  # fmt: skip
        if not claimed:
            return None  # another pass recorded it
        if results.retried(job.state, result) and _retries(run) < settings.TESTS_MAX_RETRIES:
            retry = _retry(run)
        run.refresh_from_db()
        if retry is None:
            _tell(run)  # queued with the result, in its transaction
    return retry


def record_results() -> int:
    """Record the result of every run whose job has ended (pass, fail, neutral, tmpfail),
    flag regressions, retry tmpfails, tell the requester. Returns how many it recorded."""
    finished = (
        TestRun.objects.filter(result="", job__state__in=Job.FINISHED)
        .select_related("job", "package", "package__archive", "stack", "requester")
        .order_by("pk")
    )
    recorded = 0
    for run in finished[:500]:  # a batch: the next pass takes the rest
        try:
            record_one(run)
        except Exception:  # one bad run must not stop the others
            log.exception("test run %s: result not recorded", run.pk)
            continue
        recorded += 1
    return recorded


def _tell(run: TestRun) -> None:
    """Tell the member who asked, and mail the Maintainer where the archive says so."""
    archive = run.package.archive
    context = {"run": run, "url": settings.SITE_URL + reverse("packages:run", args=[run.pk])}
    data = {
        "run": run.pk, "package": run.package.name, "version": run.package.version,
        "hwspec": run.hwspec, "stack": run.stack.name, "result": run.result,
        "regression": run.regression, "url": context["url"],
    }  # fmt: skip
    if run.requester is not None:
        notify("test.finished", run.requester, TOLD, context, data=data)
    if archive is not None and archive.mail_maintainers and run.package.maintainer:
        mail_addresses("test.finished", [run.package.maintainer], TOLD, context, data=data)


TOLD = "packages/mail_finished.txt"


# The beat task lives in runs_tasks.py; Celery's autodiscovery imports tasks.py modules only,
# and tasks.py imports this module, so the worker registers it from here.
from portal.packages import runs_tasks  # noqa: E402, F401
