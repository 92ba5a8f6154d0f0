"""Test runs of source packages: which hosts and stacks fit a package's tests, queueing runs
as jobs of the Debian CI project, and recording their results as debci does (issue 17).

The interface the rest of the portal calls (filled in by the runs work of issue 17):
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from portal.inventory.models import DriverStack
    from portal.packages.models import SourcePackage, TestRun


def queue_package(
    package: SourcePackage,
    *,
    trigger: str,
    requester=None,
    hwspec: str | None = None,
    stack: DriverStack | None = None,
) -> list[TestRun]:
    """Queue runs of the package: one per hwspec its tests need and stack that serves it (or
    the one hwspec and stack asked for). The watcher calls it for each new version."""
    raise NotImplementedError


def stack_refreshed(stack: DriverStack) -> list[TestRun]:
    """The stack's chroot changed (its packages' digest in a host's inventory): queue again the
    latest version of every package whose tests need a hwspec the stack serves."""
    raise NotImplementedError


def record_results() -> int:
    """Record the result of every run whose job has ended (pass, fail, neutral, tmpfail),
    flag regressions, retry tmpfails, tell the requester. Returns how many it recorded."""
    raise NotImplementedError
