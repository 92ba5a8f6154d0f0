"""Package tests end to end on the test host, as Debian's workflow uses them (issue 17).

Real source packages built with dpkg-source and published with apt-ftparchive; the archive
watcher finds those that declare a hwspec and queues their runs; the fair-share scheduler places
them on the registered host around a reservation; the reconcile loop runs real autopkgtest in
the cuda-12 stack's chroot (built by the Ansible role, autopkgtest inside), and the results are
recorded as debci says them: pass, fail, neutral, and a regression from one version to the next.
A refreshed stack (its chroot's packages changed) queues its packages again.
"""

import itertools

import pytest

from portal.booking.models import Allocation
from portal.jobs import scheduler
from portal.jobs.models import Job
from portal.operations import services
from portal.operations.registration import host_sync_inventory
from portal.packages import runs, tasks
from portal.packages.models import Archive, SourcePackage
from portal.packages.models import TestRun as Run  # not TestRun: pytest would collect it
from tests.helpers import wait_for
from tests.operations.conftest import book_now
from tests.packages.builder import build_source, publish_archive

pytestmark = [pytest.mark.host, pytest.mark.once, pytest.mark.django_db(transaction=True)]

# Sees exactly the device it was given: its node is writable, the other's is not, and
# CUDA_VISIBLE_DEVICES names it.
SEES_ITS_DEVICE = """#!/bin/sh
set -e
mine=/dev/nvidia$CUDA_VISIBLE_DEVICES
test -w "$mine"
for node in /dev/nvidia0 /dev/nvidia1; do
    if [ "$node" != "$mine" ] && [ -w "$node" ]; then echo "sees $node too" >&2; exit 1; fi
done
echo "sees exactly $mine"
"""
FAILS = "#!/bin/sh\necho 'the kernel did not build' >&2\nexit 1\n"
CHROOT_STATUS = "/srv/chroots/cuda-12/var/lib/dpkg/status"


def run_all(host, timeout=400):
    """Scheduler and reconcile passes (as beat runs them) until every run's job has ended,
    then the results recorded."""

    def done():
        scheduler.schedule()
        services.reconcile_host(host.pk)
        waiting = Job.objects.filter(test_run__isnull=False).exclude(state__in=Job.FINISHED)
        return not waiting.exists()

    wait_for(done, timeout=timeout, interval=0.5, what="every test run's job to end")
    runs.record_results()


def overlapping_pairs() -> list[tuple[int, int]]:
    """Active allocations of one device that overlap, anywhere in the table."""
    found = []
    rows = Allocation.objects.filter(active=True).order_by("accelerator_id", "start")
    for _, group in itertools.groupby(rows, key=lambda a: a.accelerator_id):
        held = list(group)
        found += [(a.pk, b.pk) for a, b in itertools.combinations(held, 2)
                  if a.start < b.end and b.start < a.end]  # fmt: skip
    return found


def test_the_watcher_runs_what_declares_a_hwspec_and_records_it_like_debci(
    registered, person, testhost, tmp_path, settings
):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.JOBS_STOP_GRACE_SECONDS = 1
    settings.TESTS_WALLTIME_MINUTES = 10
    work, root = tmp_path / "src", tmp_path / "archive"
    dscs = [
        build_source(work, "gpu-check", "1.0", control_field=("XS-Requires-Hwspec", "cuda"),
                     tests=[{"name": "sees-device", "script": SEES_ITS_DEVICE}]),
        build_source(work, "gpu-broken", "1.0", control_field=("X-Requires-Hwspec", "cuda"),
                     tests=[{"name": "kernel", "script": FAILS}]),
        build_source(work, "gpu-root", "1.0", control_field=("XS-Requires-Hwspec", "cuda"),
                     tests=[{"name": "as-root", "restrictions": "needs-root"}]),
        build_source(work, "mixed", "1.0",
                     tests=[{"name": "on-gpu", "hwspec": "cuda | rocm",
                             "script": SEES_ITS_DEVICE},
                            {"name": "on-cpu"}]),
        build_source(work, "plain", "1.0"),
    ]  # fmt: skip
    Archive.objects.create(
        name="local", url=publish_archive(root, dscs), suites=["unstable"], components=["main"]
    )
    # Someone has device 0 for the next half hour: the runs go to device 1, never over it.
    booked = book_now(person("alice"), registered, [0], minutes=30)

    tasks.watch()

    found = dict(SourcePackage.objects.values_list("name", "hwspec"))
    assert found == {"gpu-check": "cuda", "gpu-broken": "cuda", "gpu-root": "cuda", "mixed": ""}
    queued = Run.objects.select_related("package", "job__project")
    assert {(r.package.name, r.hwspec, tuple(r.tests)) for r in queued} == {
        ("gpu-check", "cuda", ()),
        ("gpu-broken", "cuda", ()),
        ("gpu-root", "cuda", ()),
        ("mixed", "cuda", ("on-gpu",)),  # rocm: no host here; on-cpu needs no device
    }
    assert {r.job.project.slug for r in queued} == {settings.TESTS_PROJECT}

    run_all(registered)

    ran = {r.package.name: r for r in Run.objects.select_related("package", "job")}
    check = ran["gpu-check"]
    assert (check.result, check.summary) == ("pass", {"sees-device": "PASS"}), check.job.log
    assert "sees exactly /dev/nvidia1" in check.job.log
    assert ran["mixed"].result == "pass", ran["mixed"].job.log  # its own hwspec, run
    assert ran["mixed"].summary == {"on-gpu": "PASS"}
    assert ran["gpu-broken"].result == "fail"
    assert "the kernel did not build" in ran["gpu-broken"].job.log
    assert ran["gpu-root"].result == "neutral"  # needs-root: skipped, nothing else to run
    held = Allocation.objects.filter(job__test_run__isnull=False)
    assert {a.accelerator.index for a in held} == {1}
    assert booked.allocations.get().active and overlapping_pairs() == []

    # Version 2 fails where 1 passed: a regression, flagged.
    newer = build_source(work, "gpu-check", "2.0", control_field=("XS-Requires-Hwspec", "cuda"),
                         tests=[{"name": "sees-device", "script": FAILS}])  # fmt: skip
    publish_archive(root, [newer])
    tasks.watch()
    second = Run.objects.get(package__name="gpu-check", package__version="2.0")
    run_all(registered)
    second.refresh_from_db()
    assert (second.result, second.regression) == ("fail", True)
    assert not Run.objects.filter(package__version="1.0", regression=True).exists()
    assert overlapping_pairs() == []

    # The stack's chroot changes (an upgrade of its packages): the latest version of each
    # package whose tests need what it serves is queued again.
    status = testhost.read_file(CHROOT_STATUS)
    try:
        testhost.write_file(
            CHROOT_STATUS,
            status.rstrip("\n") + "\n\nPackage: libcudart-refresh\nStatus: install ok installed"
            "\nVersion: 12.4-2\n\n",
        )
        host_sync_inventory(registered)
    finally:
        testhost.write_file(CHROOT_STATUS, status)
    again = Run.objects.filter(trigger=Run.Trigger.STACK_REFRESH)
    assert {(r.package.name, r.package.version) for r in again} == {
        ("gpu-check", "2.0"), ("gpu-broken", "1.0"), ("gpu-root", "1.0"), ("mixed", "1.0"),
    }  # fmt: skip
