"""Celery tasks of package tests: thin wrappers around the watcher and the runs."""

from celery import shared_task

from portal.packages import runs
from portal.packages import watch as watcher
from portal.packages.models import Archive, TestRun


@shared_task(ignore_result=True, soft_time_limit=1800, time_limit=1900)
def watch(**_kwargs) -> int:
    """Beat: read every enabled archive's changed Sources indices; queue a run of each new
    version whose tests need an accelerator, where the archive asks for it. Returns how many
    new versions were found."""
    found = 0
    for archive in Archive.objects.filter(enabled=True):
        new = watcher.watch(archive)
        found += len(new)
        if archive.queue_new_versions:
            for package in new:
                if watcher.needs_accelerator(package):
                    runs.queue_package(package, trigger=TestRun.Trigger.NEW_VERSION)
    return found
