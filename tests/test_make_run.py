"""`make run`, the README's first command: it serves the portal with a worker and beat, and
Ctrl-C (or a SIGTERM to its process group) stops all of it within seconds.

It runs on its own SQLite and file-system broker whatever DATABASE_URL says, so it belongs to
one CI pass only (marker `once`).
"""

import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.provisioning.sshd import free_port

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
STOP_WITHIN = 10  # seconds, the promise of issue 13


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory):
    # Shared by both runs: the second finds the database migrated and the demo loaded.
    return tmp_path_factory.mktemp("make-run-var")


def start(var_dir: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL", "SECRET_KEY"}
    }
    env |= {"PORTAL_VAR_DIR": str(var_dir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        ["make", "run", f"PORT={port}"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    return proc, port


def wait_until_serving(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        text = log.read_text(errors="replace")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                served = answer.status == 200
        except OSError:
            served = False
        # The worker is up and beat has handed it a tick: there is work in flight to stop.
        if served and "ready." in text and "succeeded in" in text:
            return
        time.sleep(0.5)
    pytest.fail("make run did not come up:\n" + log.read_text(errors="replace")[-4000:])


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting for a reaper do not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_it_serves_and_stops_within_seconds(var_dir, tmp_path, signum):
    log = tmp_path / "make-run.log"
    proc, port = start(var_dir, log)
    pgid = proc.pid
    try:
        wait_until_serving(proc, port, log)
        # Links in mails (the worker's and allauth's) name the port it serves, not 8000.
        with sqlite3.connect(var_dir / "portal.sqlite3") as db:
            assert db.execute("SELECT domain FROM django_site").fetchall() == [
                (f"127.0.0.1:{port}",)
            ]
        time.sleep(2)  # a few of beat's ticks in flight
        began = time.monotonic()
        os.killpg(pgid, signum)  # what the terminal does on Ctrl-C: the whole foreground group
        while group_alive(pgid) and time.monotonic() - began < 60:
            proc.poll()  # reap make itself
            time.sleep(0.1)
        took = time.monotonic() - began
        assert not group_alive(pgid), "still running a minute after the signal"
        assert took < STOP_WITHIN, f"stopped after {took:.1f} s\n" + log.read_text()[-3000:]
        with pytest.raises(OSError):  # nothing serves the port any more
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=10)
