"""Provisioning benchmark: from slot start to a working SSH login, from slot end to no access.

Run from the repository root, as root (the test host needs namespaces and mounts):

    .venv/bin/python bench/provisioning.py [--rounds 20] [--interval 1]

It boots the test host of the provisioning tests (tests/testhost.py: this machine's system in
its own namespaces, a real sshd on a loopback port, the agent, real schroot sessions), registers
it in a throwaway portal database (SQLite under a temporary directory, or DATABASE_URL's
server), and starts a real Celery worker with embedded beat ticking every `--interval` seconds
on the broker of CELERY_BROKER_URL (the file-system broker if unset).

Rounds begin once the worker has made its first pass (its boot is not measured). Each round
creates a reservation whose slot starts two seconds later, plus a random part of a tick so that
the start falls anywhere between two ticks (a round begins right after the last one's pass:
without it the phase would be the same every round); off the booking grid: the loop is
measured, not the booking rules. From the start it polls `ssh user@host true` every 50 ms until
it logs in; then it moves the end as far ahead and polls until the login is refused.
Printed: median, p95 and max of both latencies. They include the wait for the host's pass (a
kick at the very instant, portal/operations/kicks.py; else beat's next tick), the pass itself
and each ssh attempt's own duration (about its connection setup), so they are what a user sees.
Beside them, when the pass that granted or revoked began (the reservation's granted_at and
revoked_at): the part of the wait that is the loop's. Nothing is asserted.
"""

import argparse
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pct(values, q):
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def setup_django(var: Path) -> None:
    os.environ["PORTAL_VAR_DIR"] = str(var)
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-0123456789abcdefghijklmnop")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{var / 'bench.sqlite3'}")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--interval", type=int, default=1, help="beat's tick, seconds")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("The test host needs root (namespaces, mounts, useradd inside it).")
    if "postgres" in os.environ.get("DATABASE_URL", ""):
        sys.exit("Use the default SQLite database: this bench creates and drops its own.")

    tmp = Path(tempfile.mkdtemp(prefix="porterbox-bench-"))
    setup_django(tmp / "var")

    from django.core.management import call_command
    from django.utils import timezone

    from portal.accounts.models import User
    from portal.accounts.services import ssh_key_add
    from portal.accounts.sshkeys import parse_public_key
    from portal.booking.models import Allocation, Reservation
    from portal.inventory.models import DriverStack, Host
    from tests.helpers import wait_for
    from tests.operations.harness import Person, Worker, host_fingerprint, prepare_host
    from tests.provisioning.sshd import keygen
    from tests.testhost import TestHost

    def reached(moment: datetime) -> Callable[[], bool]:
        return lambda: timezone.now() >= moment

    keys = tmp / "keys"
    keys.mkdir()
    portal_key = keygen(keys / "portal")
    host = TestHost(["nvidia0", "nvidia1", "nvidiactl"]).start(tmp / "host")
    worker = None
    try:
        prepare_host(host, portal_key.with_suffix(".pub"), tmp / "ansible")
        os.environ["PORTAL_SSH_KEY_FILE"] = str(portal_key)
        from django.conf import settings

        settings.PORTAL_SSH_KEY_FILE = str(portal_key)
        DriverStack.objects.create(name="cuda-12", hwspecs=["cuda"], chroot="cuda-12")
        call_command(
            "register_host", "bench", "127.0.0.1", port=host.port,
            fingerprint=host_fingerprint(host), stdout=io.StringIO(),
        )  # fmt: skip
        registered = Host.objects.get(name="bench")
        stack = registered.stacks.get()
        device = registered.accelerators.get(index=0)
        user = User.objects.create(username="bencher", debian_member_source="staff")
        key = keygen(keys / "bencher")
        ssh_key_add(user=user, key=parse_public_key(key.with_suffix(".pub").read_text()))
        (keys / "known_hosts").write_text(host.known_hosts)
        person = Person(user, key, keys / "known_hosts", host.port)

        worker = Worker(tmp, portal_key)
        worker.env["PORTAL_RECONCILE_SECONDS"] = str(args.interval)
        booted = timezone.now()
        worker.start()
        # Round 1 would otherwise measure the worker's boot and its first SSH connection.
        seen = Host.objects.filter(pk=registered.pk, last_seen__gt=booted)
        wait_for(seen.exists, timeout=60, what="the worker's first pass")
        up, down, granted, revoked = [], [], [], []
        for n in range(args.rounds):
            start = timezone.now() + timedelta(seconds=2 + random.uniform(0, args.interval))
            end = start + timedelta(hours=1)
            r = Reservation.objects.create(
                user=user, host=registered, stack=stack, start=start, end=end
            )
            Allocation.objects.create(accelerator=device, reservation=r, start=start, end=end)
            wait_for(reached(start), timeout=10, interval=0.01)
            wait_for(lambda: person.ssh("true").returncode == 0, timeout=60, interval=0.05)
            up.append((timezone.now() - start).total_seconds())

            end = timezone.now() + timedelta(seconds=2 + random.uniform(0, args.interval))
            Reservation.objects.filter(pk=r.pk).update(end=end)
            Allocation.objects.filter(reservation=r).update(end=end)
            wait_for(reached(end), timeout=10, interval=0.01)
            wait_for(lambda: person.ssh("true").returncode != 0, timeout=60, interval=0.05)
            down.append((timezone.now() - end).total_seconds())
            closed = Reservation.objects.filter(pk=r.pk, revoked_at__isnull=False)
            wait_for(closed.exists, timeout=30)
            r = closed.get()
            assert r.granted_at is not None and r.revoked_at is not None
            granted.append((r.granted_at - start).total_seconds())
            revoked.append((r.revoked_at - end).total_seconds())
            print(f"round {n + 1:>3}: login after {up[-1]:.2f}s, refused after {down[-1]:.2f}s")
    finally:
        if worker is not None:
            worker.kill()
        host.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nbeat interval {args.interval}s, {len(up)} rounds, seconds:")
    print(f"{'':28}{'median':>8}{'p95':>8}{'max':>8}")
    rows = (
        ("slot start -> SSH login", up),
        ("  -> granting pass began", granted),
        ("slot end -> login refused", down),
        ("  -> revoking pass began", revoked),
    )
    for label, values in rows:
        print(f"{label:28}{statistics.median(values):8.2f}{pct(values, 95):8.2f}{max(values):8.2f}")


if __name__ == "__main__":
    main()
