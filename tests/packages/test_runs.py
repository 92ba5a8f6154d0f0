"""Test runs: what fits a package's tests, runs queued as jobs of the Debian CI project (from a
real file:// archive of packages dpkg-source built), and results recorded as debci does."""

import io
import tarfile
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile

from portal.jobs.models import Job
from portal.packages import runs
from portal.packages.models import Archive, SourcePackage
from portal.packages.models import TestRun as Run  # not TestRun: pytest would collect it
from portal.packages.watch import watch
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    UserFactory,
)
from tests.helpers import delivered
from tests.packages.builder import build_source, publish_archive

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("runs")
    return [
        build_source(work, "alt", "1.0", control_field=("XS-Requires-Hwspec", "cuda|rocm|sycl")),
        build_source(
            work, "mixed", "1.0-1", fmt="3.0 (quilt)",
            tests=[{"name": "plain"}, {"name": "gpu", "hwspec": "cuda"}],
        ),
        build_source(work, "cpu-only", "1.0", control_field=("XS-Requires-Hwspec", "cpu")),
        build_source(work, "needs-sycl", "1.0", control_field=("XS-Requires-Hwspec", "sycl")),
    ]  # fmt: skip


@pytest.fixture
def fleet(db):
    """Three active hosts with an NVIDIA GPU and cuda-12, one with an AMD GPU and rocm-6, a
    oneapi stack no host offers."""
    cuda = DriverStackFactory(name="cuda-12", hwspecs=["cuda"])
    rocm = DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    oneapi = DriverStackFactory(name="oneapi", hwspecs=["sycl"])
    for _ in range(3):
        host = HostFactory()
        host.stacks.add(cuda)
        AcceleratorFactory(host=host, index=0)
    amd = HostFactory()
    amd.stacks.add(rocm)
    AcceleratorFactory(host=amd, index=0, vendor="amd", arch="gfx90a", model="MI210")
    offline = HostFactory(state="offline")  # does not count
    offline.stacks.add(cuda)
    AcceleratorFactory(host=offline, index=0)
    return {"cuda": cuda, "rocm": rocm, "oneapi": oneapi}


@pytest.fixture
def archive(built, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    root = tmp_path / "archive"
    publish_archive(root, built)
    archive = Archive.objects.create(
        name="test", url=root.as_uri(), suites=["unstable"], components=["main"]
    )
    watch(archive)
    return archive


def _package(name):
    return SourcePackage.objects.get(name=name)


def test_it_says_which_hosts_and_stacks_fit_each_stanza(fleet, archive):
    (stanza,) = runs.matching(_package("alt"))
    assert stanza.tests == ["smoke"]
    fits = {str(a.hwspec): {f.stack.name: f.hosts for f in a.stacks} for a in stanza.alternatives}
    assert fits == {"cuda": {"cuda-12": 3}, "rocm": {"rocm-6": 1}, "sycl": {"oneapi": 0}}
    plain, gpu = runs.matching(_package("mixed"))
    assert (plain.tests, plain.cpu_only, plain.alternatives) == (["plain"], True, [])
    assert (gpu.tests, [a.hosts for a in gpu.alternatives]) == (["gpu"], [3])


def test_it_queues_a_job_per_alternative_that_fits_in_the_debian_ci_project(fleet, archive):
    made = runs.queue_package(_package("alt"), trigger=Run.Trigger.NEW_VERSION)
    assert sorted((r.hwspec, r.stack.name, r.tests) for r in made) == [
        ("cuda", "cuda-12", []),
        ("rocm", "rocm-6", []),
    ]
    for run in made:
        job = Job.objects.select_related("project", "submitter").get(pk=run.job_id)
        assert (job.project.slug, job.project.state) == ("debian-ci", "approved")
        assert (job.submitter.username, job.submitter.is_active) == ("porterbox-ci", False)
        assert not job.submitter.has_usable_password()
        assert (job.name, job.script, job.state) == ("autopkgtest alt 1.0", "", "queued")
        assert job.autopkgtest == {"dsc": "alt_1.0.dsc", "tests": []}
        assert (job.hwspec, job.stack_id, job.count) == (run.hwspec, run.stack_id, 1)
        assert job.walltime == timedelta(minutes=60)
        assert (job.code_licence, job.model_freedom) == ("see debian/copyright", "free")
        with job.input_archive.open("rb") as f, tarfile.open(fileobj=f, mode="r:gz") as tar:
            assert sorted(tar.getnames()) == ["alt_1.0.dsc", "alt_1.0.tar.xz"]
    assert made[0].job.input_archive.name == made[1].job.input_archive.name


def test_it_names_the_tests_of_the_stanzas_that_need_the_hwspec(fleet, archive):
    (run,) = runs.queue_package(_package("mixed"), trigger=Run.Trigger.NEW_VERSION)
    assert (run.hwspec, run.tests, run.job.autopkgtest["tests"]) == ("cuda", ["gpu"], ["gpu"])
    assert run.job.autopkgtest["dsc"] == "mixed_1.0-1.dsc"


def test_it_queues_nothing_for_the_watcher_when_nothing_fits(fleet, archive):
    assert runs.queue_package(_package("needs-sycl"), trigger=Run.Trigger.NEW_VERSION) == []
    assert runs.queue_package(_package("cpu-only"), trigger=Run.Trigger.NEW_VERSION) == []
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("name", "hwspec", "stack", "code", "words"),
    [
        ("needs-sycl", "sycl", "oneapi", "no_host", "No active host has a sycl device"),
        ("needs-sycl", None, None, "no_host", "No active host has a sycl device"),
        ("alt", "fpga", None, "hwspec_not_declared", "its tests need cuda, rocm, sycl"),
        ("alt", "cuda", "rocm", "stack_hwspec", "The stack rocm-6 does not serve cuda"),
        ("cpu-only", None, None, "cpu_only", "declares no accelerator"),
    ],
)
def test_it_refuses_a_request_that_does_not_fit_and_says_why(
    fleet, archive, name, hwspec, stack, code, words
):
    with pytest.raises(runs.RunRefused) as refused:
        runs.queue_package(
            _package(name),
            trigger=Run.Trigger.REQUEST,
            requester=UserFactory(),
            hwspec=hwspec,
            stack=fleet[stack] if stack else None,
        )
    assert refused.value.code == code
    assert words in refused.value.message
    assert not Job.objects.exists()


def test_it_queues_exactly_the_hwspec_and_stack_asked_for(fleet, archive):
    member = UserFactory(debian_member_source="staff")
    (run,) = runs.queue_package(
        _package("alt"), trigger=Run.Trigger.REQUEST, requester=member,
        hwspec="rocm", stack=fleet["rocm"],
    )  # fmt: skip
    assert (run.hwspec, run.stack.name, run.requester, run.job.submitter) == (
        "rocm", "rocm-6", member, member,
    )  # fmt: skip


def test_a_refreshed_stack_queues_the_latest_versions_once(fleet, archive, tmp_path):
    # A run of the older version waiting does not hold back the newer one's.
    runs.queue_package(_package("alt"), trigger=Run.Trigger.NEW_VERSION)
    field = ("XS-Requires-Hwspec", "cuda")
    newer = build_source(tmp_path / "v2", "alt", "1.1", control_field=field)
    publish_archive(tmp_path / "archive", [newer])
    watch(archive)
    made = runs.stack_refreshed(fleet["cuda"])
    assert sorted((r.package.name, r.package.version, r.hwspec) for r in made) == [
        ("alt", "1.1", "cuda"),
        ("mixed", "1.0-1", "cuda"),
    ]
    assert {r.trigger for r in made} == {"stack-refresh"}
    assert runs.stack_refreshed(fleet["cuda"]) == []  # they wait already
    assert runs.stack_refreshed(fleet["oneapi"]) == []  # no host has it


# -- results -------------------------------------------------------------------------------


@pytest.fixture
def stack(db):
    stack = DriverStackFactory(name="cuda-12", hwspecs=["cuda"])
    host = HostFactory()
    host.stacks.add(stack)
    AcceleratorFactory(host=host)
    return stack


def _run(stack, *, version="1.0", state="succeeded", exit_status=0, requester=None, **job):
    package, _ = SourcePackage.objects.get_or_create(
        name="foo", version=version, defaults={"hwspec": "cuda", "maintainer": "M <m@d.org>"}
    )
    job = JobFactory(
        project=runs.tests_project(), stack=stack, hwspec="cuda", script="", state=state,
        exit_status=exit_status, autopkgtest={"dsc": f"foo_{version}.dsc", "tests": []}, **job,
    )  # fmt: skip
    return Run.objects.create(
        package=package, hwspec="cuda", stack=stack, trigger="request", job=job,
        requester=requester,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("state", "exit_status", "result"),
    [
        ("succeeded", 0, "pass"),
        ("failed", 2, "pass"),
        ("failed", 4, "fail"),
        ("failed", 6, "fail"),
        ("failed", 12, "fail"),
        ("failed", 14, "fail"),
        ("failed", 8, "neutral"),
        ("failed", 16, "tmpfail"),
        ("failed", 20, "tmpfail"),
        ("failed", None, "tmpfail"),
        ("timed_out", None, "fail"),
        ("cancelled", None, "tmpfail"),
    ],
)
def test_it_maps_each_ending_as_debci_does(stack, state, exit_status, result):
    run = _run(stack, state=state, exit_status=exit_status)
    assert runs.record_results() == 1
    run.refresh_from_db()
    assert (run.result, run.exit_code, run.regression) == (result, exit_status, False)
    assert run.finished is not None
    retried = Run.objects.filter(trigger="retry").count()
    assert retried == (1 if result == "tmpfail" and state != "cancelled" else 0)
    assert runs.record_results() == 0  # recorded once


def test_it_leaves_runs_whose_job_has_not_ended(stack):
    run = _run(stack, state="running", exit_status=None)
    assert runs.record_results() == 0
    run.refresh_from_db()
    assert run.result == ""


def test_it_flags_a_regression_when_the_last_run_passed(stack):
    _run(stack, version="1.0", exit_status=0)
    runs.record_results()
    second = _run(stack, version="2.0", state="failed", exit_status=4)
    runs.record_results()
    second.refresh_from_db()
    assert (second.result, second.regression) == ("fail", True)
    third = _run(stack, version="2.1", state="failed", exit_status=4)
    runs.record_results()
    third.refresh_from_db()
    assert (third.result, third.regression) == ("fail", False)  # it failed before too


def test_it_retries_a_tmpfail_up_to_the_limit(stack, settings):
    settings.TESTS_MAX_RETRIES = 2
    run = _run(stack, state="failed", exit_status=16)
    for attempt in (1, 2):
        runs.record_results()
        retries = Run.objects.filter(trigger="retry").order_by("pk")
        assert retries.count() == attempt
        latest = retries.last()
        assert latest.job.autopkgtest == run.job.autopkgtest
        assert (latest.job.state, latest.hwspec, latest.stack) == ("queued", "cuda", stack)
        Job.objects.filter(pk=latest.job_id).update(state="failed", exit_status=16)
    runs.record_results()
    assert Run.objects.filter(trigger="retry").count() == 2  # the limit
    assert Run.objects.filter(result="tmpfail").count() == 3


def _output(files: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return data.getvalue()


SUMMARY = b"""smoke                PASS
gpu-kernels          FAIL non-zero exit status 1
needs-root           SKIP Test requires root
flaky-one            FLAKY non-zero exit status 2
"""


def test_it_reads_the_summary_from_the_output_tarball_and_mails_the_requester(
    stack, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    requester = UserFactory(email="dd@debian.org")
    run = _run(stack, state="failed", exit_status=6, requester=requester)
    output = _output({"autopkgtest/log": b"...", "autopkgtest/summary": SUMMARY})
    run.job.output.save("out.tar.gz", ContentFile(output))
    runs.record_results()
    run.refresh_from_db()
    assert run.summary == {
        "smoke": "PASS", "gpu-kernels": "FAIL", "needs-root": "SKIP", "flaky-one": "FLAKY",
    }  # fmt: skip
    (sent,) = delivered()
    assert sent.to == ["dd@debian.org"]  # the archive does not mail maintainers
    assert "src:foo 1.0 on cuda/cuda-12: fail" in sent.subject
    assert "gpu-kernels: FAIL" in sent.body
    assert f"/packages/runs/{run.pk}/" in sent.body


def test_a_mail_that_cannot_be_sent_leaves_the_result_recorded(stack, settings):
    settings.EMAIL_BACKEND = "tests.packages.test_runs.BrokenBackend"
    run = _run(stack, requester=UserFactory(email="dd@debian.org"))
    assert runs.record_results() == 1
    run.refresh_from_db()
    assert run.result == "pass"


class BrokenBackend:
    def __init__(self, *args, **kwargs):
        pass

    def send_messages(self, messages):
        raise ConnectionRefusedError("no SMTP server")


def test_the_beat_task_is_registered():
    from portal.celery import app
    from portal.packages import tasks  # noqa: F401  (what autodiscovery imports)

    assert "portal.packages.runs_tasks.record" in app.tasks


def test_a_members_upload_becomes_the_runs_input(fleet, built, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    dsc = built[0]  # alt_1.0.dsc and its tarball, uploaded as a tar with directories
    upload = io.BytesIO()
    with tarfile.open(fileobj=upload, mode="w") as tar:
        for path in (dsc, dsc.parent / "alt_1.0.tar.xz"):
            tar.add(path, arcname=f"upload/{path.name}")
    package = SourcePackage.objects.create(
        name="alt", version="1.0", hwspec="cuda",
        uploaded=ContentFile(upload.getvalue(), name="alt.tar"),
    )  # fmt: skip
    (run,) = runs.queue_package(package, trigger=Run.Trigger.REQUEST, requester=UserFactory())
    with run.job.input_archive.open("rb") as f, tarfile.open(fileobj=f, mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["alt_1.0.dsc", "alt_1.0.tar.xz"]
    assert run.job.autopkgtest == {"dsc": "alt_1.0.dsc", "tests": []}


def test_it_mails_the_maintainer_where_the_archive_says_so(stack):
    archive = Archive.objects.create(name="opt-in", url="file:///nowhere", mail_maintainers=True)
    run = _run(stack, state="failed", exit_status=4)
    SourcePackage.objects.filter(pk=run.package_id).update(archive=archive)
    runs.record_results()
    (sent,) = delivered()
    assert sent.to == ["M <m@d.org>"]  # nobody asked: the watcher's run, say
    assert "src:foo 1.0 on cuda/cuda-12: fail" in sent.subject


def test_a_per_test_hwspec_reaches_autopkgtest_as_a_control_without_the_field(fleet, archive):
    """autopkgtest skips a stanza with a field it does not know: the run's input carries the
    package's tests/control without X-Requires-Hwspec, and the job says to read it instead."""
    (run,) = runs.queue_package(_package("mixed"), trigger=Run.Trigger.NEW_VERSION)

    assert run.job.autopkgtest == {
        "dsc": "mixed_1.0-1.dsc", "tests": ["gpu"], "control": "porterbox-tests-control"
    }  # fmt: skip
    with run.job.input_archive.open("rb") as data, tarfile.open(fileobj=data) as tar:
        control = tar.extractfile("porterbox-tests-control").read().decode()
    assert "Tests: gpu" in control and "Tests: plain" in control
    assert "hwspec" not in control.lower()
    # A package without a stanza of its own hwspec runs its own file.
    (plain,) = runs.queue_package(
        _package("alt"), trigger=Run.Trigger.REQUEST, hwspec="cuda", stack=fleet["cuda"],
        requester=UserFactory(debian_member_source="salsa"),
    )  # fmt: skip
    assert "control" not in plain.job.autopkgtest
