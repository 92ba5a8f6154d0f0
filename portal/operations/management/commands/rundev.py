"""`make run`'s web server and Celery worker (with embedded beat), stopped together and quickly.

A shell `trap ... & wait` could not do it: background jobs of a non-interactive shell ignore
SIGINT, and a worker in warm shutdown waits for its tasks and its beat for as long as they
take. Here each child runs in its own process group; the first SIGINT or SIGTERM asks both to
stop, and whatever is still running GRACE seconds later is killed with its whole group. Tasks
are acknowledged late, so one killed in flight is delivered again at the next start.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand

GRACE = 6.0  # seconds between the polite request and SIGKILL


class Command(BaseCommand):
    help = "Run the development web server and a Celery worker with beat; Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")

    def handle(self, *args, addrport: str, **options):
        python = sys.executable
        # Fixed argv, no shell; addrport goes to runserver, which parses it.
        children = [
            subprocess.Popen(  # noqa: S603
                [python, "-m", "celery", "-A", "portal", "worker", "--beat",
                 "--loglevel=INFO", "--concurrency=2"],
                start_new_session=True,
            ),
            subprocess.Popen(  # noqa: S603
                [python, "manage.py", "runserver", addrport], start_new_session=True
            ),
        ]  # fmt: skip
        stopping = []

        def stop(signum, frame):
            stopping.append(signum)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        # Until asked to stop, or one child ends (a crash of either ends both).
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
        for child in children:
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and any(_group_alive(c) for c in children):
            time.sleep(0.1)
        for child in children:
            _signal_group(child, signal.SIGKILL)
            child.wait()


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signum)


def _group_alive(child: subprocess.Popen) -> bool:
    """Whether a process of the child's group still runs: the worker's pool and beat count."""
    child.poll()  # reap the leader, which a zombie would otherwise keep "alive"
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or one that just ended
        if fields[0] != "Z" and int(fields[2]) == child.pid:
            return True
    return False
