"""A fresh Debian machine for the portal's own deployment: this machine's system in a test host
(tests/testhost.py) whose PID 1 is systemd, so that ansible/portal.yml installs, enables and
starts its units for real, sandboxing included.

    host = SystemdHost().start(tmp / "portal")   # boots basic.target, then starts the sshd

systemd boots only basic.target: the services this machine has installed (its PostgreSQL,
Redis, ...) stay stopped in the host, which shares this machine's loopback network. Packages
installed in the host start nothing by themselves (the test host's policy-rc.d); the playbook
starts what it enables. stop() kills PID 1, and the whole host with it, like any test host.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import tests.testhost
from tests.testhost import TestHost, TestHostError

SYSTEMD = "/lib/systemd/systemd"
# The host's own cgroup, a child of this machine's: systemd manages its units' cgroups below.
CGROUP_ROOT = Path("/sys/fs/cgroup")
HYBRID = CGROUP_ROOT / "systemd"  # the named hierarchy of a hybrid (v1) layout
# Where the stock test host mounts /sys: then a cgroup tree of its own goes over /sys/fs/cgroup.
SYS_LINE = 'mount --bind -o ro /sys "$R/sys"'
CGROUP_SETUP = r"""
mount -t tmpfs -o mode=0755 cgroup "$R/sys/fs/cgroup"
if [ -d /sys/fs/cgroup/systemd ]; then
    mkdir -p "$CG" "$R/sys/fs/cgroup/systemd" "$R/sys/fs/cgroup/unified"
    echo $$ > "$CG/cgroup.procs"
    mount --bind "$CG" "$R/sys/fs/cgroup/systemd"
else
    mkdir -p "$CG"
    echo $$ > "$CG/cgroup.procs"
    umount "$R/sys/fs/cgroup"
    mount --bind "$CG" "$R/sys/fs/cgroup"
fi
"""
REAPER_LINE = "exec /usr/bin/python3 -I -c '%(reaper)s' </dev/null >/dev/null 2>&1"
BOOT_LINE = (
    f"exec env container=porterbox-test {SYSTEMD} --system --unit=basic.target "
    "--log-target=console </dev/null >/systemd.log 2>&1"
)


class SystemdHost(TestHost):
    """A test host booted by systemd (basic.target), with its sshd on a loopback port."""

    __test__ = False

    def __init__(self, hostname: str = "portalhost"):
        super().__init__([], hostname=hostname)
        self.cgroup: Path | None = None

    @staticmethod
    def missing() -> list[str]:
        lacking = TestHost.missing()
        if not os.access(SYSTEMD, os.X_OK):
            lacking.append(SYSTEMD)
        return lacking

    def start(self, directory: Path) -> SystemdHost:
        base = HYBRID if HYBRID.is_dir() else CGROUP_ROOT
        self.cgroup = base / f"porterbox-test-{os.getpid()}-{time.monotonic_ns()}"
        stock = tests.testhost.SETUP
        assert SYS_LINE in stock and REAPER_LINE in stock, "tests/testhost.py's SETUP changed"
        cgroup_setup = f"\nCG={shlex.quote(str(self.cgroup))}" + CGROUP_SETUP
        script = stock.replace(SYS_LINE, SYS_LINE + cgroup_setup).replace(REAPER_LINE, BOOT_LINE)
        # TestHost.start builds its host from the module's SETUP: this one, for this start.
        tests.testhost.SETUP = script
        try:
            super().start(directory)
        finally:
            tests.testhost.SETUP = stock
        self._wait_booted()
        return self

    def _wait_booted(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.exec(["systemctl", "is-system-running"]).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                log = self.exec(["sh", "-c", "tail -50 /systemd.log"]).stdout
                raise TestHostError(f"systemd did not boot ({state}):\n{log}")
            time.sleep(0.5)

    def stop(self) -> None:
        super().stop()
        if self.cgroup is not None and self.cgroup.exists():
            # Empty once PID 1 is dead: remove systemd's cgroups, deepest first.
            for path in sorted(self.cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                if path.is_dir():
                    path.rmdir()
            self.cgroup.rmdir()
        self.cgroup = None

    def unit_property(self, unit: str, name: str) -> str:
        return self.run("systemctl", "show", "--value", "-p", name, unit).strip()
