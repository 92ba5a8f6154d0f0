"""What a finished test run says, as debci says it (issue 17).

autopkgtest's exit code (autopkgtest(1), EXIT STATUS) is a bit field: 2 some test skipped, 4
some test failed, 8 no test ran (none in the package, or all skipped), 12 erroneous package
(its dependencies cannot be met, or it cannot be built), 16 the testbed failed, 20 anything
else (bad usage, an internal error). debci maps it as follows, and so do we:

====================  ========  ==================================================
exit code             result    why
====================  ========  ==================================================
0, 2                  pass      everything that ran passed (skips are not failures)
4, 6, 12, 14          fail      a test failed, or the package is erroneous
8                     neutral   nothing ran (no tests, or all skipped: needs-root
                                tests are always skipped in the stack's session)
16, 20, anything else tmpfail   the testbed or autopkgtest itself failed: says
                                nothing about the package; retried
====================  ========  ==================================================

What only the portal knows, its job's end (portal/jobs/models.py):

- timed out (the walltime, TESTS_WALLTIME_MINUTES): **fail**. autopkgtest's own per-test
  timeout is a failure too; a test that hangs for an hour would hang again, so it is not
  retried (a retry would hold a device for another walltime to learn nothing).
- cancelled (by staff or the requester): **tmpfail**, never retried: someone chose to stop it,
  and nothing was learnt about the package.
- ended without an exit status (the job failed before autopkgtest ran: a host lost more often
  than JOBS_MAX_REQUEUES, an input the agent refused): **tmpfail**, retried.
"""

from __future__ import annotations

import logging
import tarfile
from typing import IO

from portal.packages.models import TestRun

log = logging.getLogger(__name__)

PASS, FAIL, NEUTRAL, TMPFAIL = "pass", "fail", "neutral", "tmpfail"

EXIT_RESULTS = {0: PASS, 2: PASS, 4: FAIL, 6: FAIL, 12: FAIL, 14: FAIL, 8: NEUTRAL}

# The words autopkgtest writes in its summary file, one test a line: "smoke PASS",
# "gpu FAIL non-zero exit status 1", "root SKIP Test needs root", "flaky FLAKY ...".
SUMMARY_WORDS = ("PASS", "FAIL", "SKIP", "FLAKY", "NEUTRAL")
MAX_SUMMARY = 1 << 20  # bytes read of a summary file
MAX_SUMMARY_TESTS = 1000


def result_of(state: str, exit_status: int | None) -> str:
    """The result of a run whose job ended in ``state`` with ``exit_status`` (the table above).
    ``state`` is a finished Job.State value."""
    if state == "timed_out":
        return FAIL
    if state == "cancelled" or exit_status is None:
        return TMPFAIL
    return EXIT_RESULTS.get(exit_status, TMPFAIL)


def retried(state: str, result: str) -> bool:
    """Whether a run with this result is worth another try (a tmpfail not chosen by anyone)."""
    return result == TMPFAIL and state != "cancelled"


def parse_summary(text: str) -> dict[str, str]:
    """autopkgtest's summary as {test name: PASS|FAIL|SKIP|FLAKY|NEUTRAL}; lines that do not
    read as a test and its word are left out (a summary may hold a "blame:" line)."""
    summary: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[1] in SUMMARY_WORDS and len(summary) < MAX_SUMMARY_TESTS:
            summary[parts[0][:100]] = parts[1]
    return summary


def summary_from_output(file: IO[bytes]) -> dict[str, str]:
    """The summary in a job's output tarball (.tar.gz of $PORTERBOX_OUTPUT, where the agent
    keeps autopkgtest's output directory as autopkgtest/), {} where there is none or the
    tarball cannot be read. Read as a stream, member by member: only the summary is wanted."""
    try:
        with tarfile.open(fileobj=file, mode="r|*") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and (
                    name == "autopkgtest/summary" or name.endswith("/autopkgtest/summary")
                ):
                    extracted = archive.extractfile(member)
                    if extracted is None:
                        return {}
                    data = extracted.read(MAX_SUMMARY)
                    return parse_summary(data.decode("utf-8", "replace"))
    except (tarfile.TarError, EOFError, OSError) as exc:
        log.warning("unreadable output tarball: %s", exc)
    return {}


# -- reads for the pages and the API ---------------------------------------------------------


def latest_results(names: list[str] | None = None) -> dict[str, dict[tuple[str, str], TestRun]]:
    """Per package name, per (hwspec, stack name): its latest recorded run (debci's
    latest.json), regression flag and all. ``names``: these packages only."""
    recorded = TestRun.objects.exclude(result="").select_related("package", "stack", "job")
    if names is not None:
        recorded = recorded.filter(package__name__in=names)
    latest: dict[str, dict[tuple[str, str], TestRun]] = {}
    for run in recorded.defer("job__log").order_by("-finished", "-pk"):
        latest.setdefault(run.package.name, {}).setdefault((run.hwspec, run.stack.name), run)
    return latest


def status_of(run: TestRun) -> dict:
    """A run as latest.json and the API say it (debci's fields, with the hwspec and stack)."""
    job = run.job
    duration = None
    if job is not None and job.started_at and job.ended_at:
        duration = int((job.ended_at - job.started_at).total_seconds())
    return {
        "run_id": run.pk,
        "package": run.package.name,
        "version": run.package.version,
        "hwspec": run.hwspec,
        "stack": run.stack.name,
        "status": run.result or "pending",
        "regression": run.regression,
        "trigger": run.trigger,
        "date": run.finished.isoformat() if run.finished else None,
        "duration_seconds": duration,
    }
