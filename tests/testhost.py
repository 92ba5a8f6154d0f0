"""A disposable "bare Debian host" for tests: this machine's system behind overlays, in its own
mount, pid and uts namespaces, with a real sshd on a loopback port and fake GPU device nodes.

Everything the host does (accounts, schroot sessions, mounts, processes) stays inside its
namespaces and its temporary directory, so tests may run on the CI machine itself: stop() kills
the host's PID 1, which takes every process and mount with it, and removes the directory.

    with TestHost(["nvidia0", "nvidiactl"]).start(tmp_path / "host") as host:
        host.add_stack("trixie", "porterbox-trixie")
        host.install_agent({"devices": {"nvidia": {"0": ["/dev/nvidia0"]}}})
        host.exec(["id", "porterbox"])

The host starts bare: the portal's files, accounts and group that this machine may have are
hidden from it (see AGENT_PATHS), and so are all accounts but Debian's own; root's home is a
fresh Debian one.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.provisioning.sshd import free_port

REPO = Path(__file__).resolve().parent.parent
AGENT_FILES = REPO / "provisioning" / "agent" / "files"
LIB = "/usr/local/lib/porterbox"
# What this machine needs to build a host and install the agent on it.
NEEDED = (
    "unshare", "nsenter", "pivot_root", "runuser", "sshd", "ssh-keygen", "schroot", "setfacl",
    "sudo", "visudo", "busybox",
)  # fmt: skip
# Directories the host shares with this machine, copy-on-write. Not /root: the host's root has
# a fresh Debian home, not this machine's dotfiles (which every SSH session as root would run).
OVERLAID = ("usr", "etc", "var", "opt", "srv")
DEFAULT_NODES = ("nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl")
# The busybox applets a stack's chroot offers: enough for the tests' logins.
APPLETS = (
    "sh", "env", "cat", "id", "ls", "sleep", "echo", "ps", "true", "test", "printf", "setsid",
    "kill", "readlink", "stat",
)  # fmt: skip
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the portal installs on a host: whatever of it this machine has (an agent tried out on
# it, say) is hidden from the host, which starts bare. Overlays show later changes of their
# lower directories, so a host would otherwise see another agent's records and keys.
AGENT_PATHS = (
    "/etc/porterbox", "/etc/sudoers.d/porterbox", "/etc/schroot/porterbox",
    "/etc/ssh/sshd_config.d", "/etc/schroot/chroot.d", "/usr/local/lib/porterbox",
    "/usr/local/sbin/porterbox-hostctl", "/usr/local/bin/porterbox-apt", "/var/lib/porterbox",
    "/srv/chroots",
)  # fmt: skip
# The host keeps Debian's own accounts (ids below 1000, nobody, nogroup), not the portal's.
PORTAL_ACCOUNTS = ("porterbox", "porterbox-users")
# The host's users get ids that no account of this machine has, so that nothing on this machine
# that acts by uid (an agent killing a user's processes) reaches the host's, or the reverse.
USER_IDS = (50000, 59999)

# Runs as PID 1 of the new pid namespace, still in the outer root: builds the root file system
# in a tmpfs, pivots into it and becomes the reaper. $1: the host's directory, $2: the
# merged-/usr links as name=target, $3: the test device nodes, $4: the host name.
SETUP = r"""
set -eu
T=$1 R=$1/root
mount -t tmpfs -o mode=0755 testhost "$R"
for d in %(overlaid)s; do
    mkdir -p "$T/upper/$d" "$T/work/$d" "$R/$d"
    mount -t overlay -o "lowerdir=/$d,upperdir=$T/upper/$d,workdir=$T/work/$d" "testhost-$d" "$R/$d"
done
for link in $2; do ln -s "${link#*=}" "$R/${link%%%%=*}"; done
mkdir -m 0755 "$R/home" "$R/run" "$R/proc" "$R/sys" "$R/dev" "$R/.oldroot"
mkdir -m 1777 "$R/tmp"
mkdir -m 0700 "$R/root"
for f in bashrc profile; do cp "/usr/share/base-files/dot.$f" "$R/root/.$f"; done
mount -t tmpfs -o mode=0755 home "$R/home"
mount -t tmpfs -o mode=1777 tmp "$R/tmp"
mount -t tmpfs -o mode=0755 run "$R/run"
mkdir -m 1777 "$R/run/lock"
mount -t proc proc "$R/proc"
mount --bind -o ro /sys "$R/sys"
# schroot's overlay sessions need a real file system for their upper layers, not an overlay.
mount -t tmpfs -o mode=0755 schroot "$R/var/lib/schroot"
mkdir -p "$R/var/lib/schroot/session" "$R/var/lib/schroot/union/overlay" \
    "$R/var/lib/schroot/union/underlay" "$R/var/lib/schroot/unpack"

D=$R/dev
mount -t tmpfs -o mode=0755 dev "$D"
mknod -m 0666 "$D/null" c 1 3
mknod -m 0666 "$D/zero" c 1 5
mknod -m 0666 "$D/full" c 1 7
mknod -m 0666 "$D/random" c 1 8
mknod -m 0666 "$D/urandom" c 1 9
mknod -m 0666 "$D/tty" c 5 0
mkdir -m 0755 "$D/pts"
mkdir -m 1777 "$D/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$D/pts"
mount -t tmpfs -o mode=1777 shm "$D/shm"
ln -s pts/ptmx "$D/ptmx"
ln -s /proc/self/fd "$D/fd"
ln -s /proc/self/fd/0 "$D/stdin"
ln -s /proc/self/fd/1 "$D/stdout"
ln -s /proc/self/fd/2 "$D/stderr"
# Stand-ins for accelerators: /dev/null's numbers, but root-only, so only an ACL lets a user in.
for node in $3; do mknod -m 0600 "$D/$node" c 1 3; done

hostname "$4"
cd "$R"
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot
echo ready
exec /usr/bin/python3 -I -c '%(reaper)s' </dev/null >/dev/null 2>&1
"""

# PID 1: reaps orphans (sshd's sessions outlive sshd) until it is killed. SIGCHLD stays blocked
# so that a child exiting between two waits is still seen by sigwaitinfo.
REAPER = """
import os, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    signal.sigwaitinfo({signal.SIGCHLD})
"""


class TestHostError(Exception):
    pass


_prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here, not in a forked child
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # In unshare's process before it starts: if the test process is killed (a CI timeout),
    # unshare gets SIGKILL, and its --kill-child then takes the host's PID 1 and the whole host.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class TestHost:
    __test__ = False  # not a pytest test class

    def __init__(self, nodes: list[str] | tuple[str, ...] = DEFAULT_NODES, hostname="testhost"):
        self.nodes = list(nodes)
        self.hostname = hostname
        self.dir: Path | None = None
        self.port = 0
        self.stacks: dict[str, dict] = {}
        self.config: dict | None = None
        self._unshare: subprocess.Popen | None = None
        self.pid = 0  # PID 1 of the host, as this machine numbers it

    @staticmethod
    def missing() -> list[str]:
        """What this machine lacks to run a test host (empty: it can)."""
        lacking = [tool for tool in NEEDED if not shutil.which(tool, path=PATH)]
        return lacking + ([] if os.geteuid() == 0 else ["root"])

    # -- life cycle -------------------------------------------------------------------------

    def start(self, directory: Path) -> TestHost:
        """Boot the host in directory (created; stop() removes it) and start its sshd."""
        self.dir = Path(directory)
        (self.dir / "root").mkdir(parents=True)
        links = " ".join(
            f"{name}={os.readlink(f'/{name}')}"
            for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
            if os.path.islink(f"/{name}")
        )
        script = SETUP % {"overlaid": " ".join(OVERLAID), "reaper": REAPER.strip()}
        # --kill-child: should unshare die, its child (the host's PID 1) dies with it.
        unshare = ["unshare", "--mount", "--pid", "--uts", "--fork", "--kill-child"]
        argv = [*unshare, "--propagation", "private", "--", "/bin/sh", "-c", script, "setup"]
        with open(self.dir / "setup.log", "wb") as log:
            self._unshare = subprocess.Popen(
                [*argv, str(self.dir), links, " ".join(self.nodes), self.hostname],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env={"PATH": PATH, "LANG": "C.UTF-8"},
                preexec_fn=_die_with_parent,
            )
        ready = self._unshare.stdout
        assert ready is not None  # a pipe
        try:
            if ready.readline() != b"ready\n":
                raise TestHostError(f"the host did not boot:\n{self._log('setup.log')}")
            ready.close()
            pid = self._unshare.pid
            self.pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
            self._make_bare()
            self._forbid_daemons()
            self._setup_sshd()
            self.start_sshd()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill everything in the host (its mounts go with its last process); remove its files."""
        if self._unshare is not None:
            if self._unshare.poll() is None:
                # SIGKILL to a namespace's PID 1 kills every process in the namespace.
                if self.pid:
                    os.kill(self.pid, signal.SIGKILL)
                else:
                    self._unshare.kill()
            self._unshare.wait(timeout=30)
            if self._unshare.stdout and not self._unshare.stdout.closed:
                self._unshare.stdout.close()
            self._unshare = None
            self.pid = 0
        if self.dir is not None and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir = None

    def __enter__(self) -> TestHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- inside the host --------------------------------------------------------------------

    def exec(
        self,
        argv: list[str],
        input: str | bytes | None = None,
        user: str | None = None,
        *,
        check: bool = False,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        """Run argv as root (or as user) inside the host; text in and out unless input is bytes."""
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        # --wd without a directory: PID 1's, the host's "/" (a path would be this machine's).
        command = ["nsenter", "-t", str(self.pid), "--mount", "--pid", "--uts", "--root", "--wd"]
        result = subprocess.run(
            [*command, "--", *argv],
            input=input,
            capture_output=True,
            text=not isinstance(input, bytes),
            env={"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8"},
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise TestHostError(
                f"{argv} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def run(self, *argv: str, user: str | None = None) -> str:
        """exec(argv, check=True)'s stdout."""
        return self.exec(list(argv), user=user, check=True).stdout

    def path(self, path: str) -> Path:
        """path in the host, seen from here (absolute links inside it would resolve here)."""
        assert path.startswith("/"), path
        return Path(f"/proc/{self.pid}/root{path}")

    def read_file(self, path: str) -> str:
        return self.path(path).read_text()

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path(path))

    def _log(self, name: str) -> str:
        assert self.dir is not None
        return (self.dir / name).read_text(errors="replace")

    def _make_bare(self) -> None:
        """Hide what the portal would have installed and every account but Debian's."""
        self.run("rm", "-rf", *AGENT_PATHS)  # whiteouts: the lower directories no longer show
        self.run("mkdir", "-p", "/etc/ssh/sshd_config.d", "/etc/schroot/chroot.d")
        # The names to keep, from passwd and group; then each file keeps only their lines.
        kept = set()
        for path in ("/etc/passwd", "/etc/group"):
            for line in self.read_file(path).splitlines():
                name, _, number = line.split(":")[:3]
                if (int(number) < 1000 or number == "65534") and name not in PORTAL_ACCOUNTS:
                    kept.add(name)
        members = {"/etc/passwd": (), "/etc/shadow": (), "/etc/group": (3,), "/etc/gshadow": (2, 3)}
        for path, member_fields in members.items():
            lines = []
            for line in self.read_file(path).splitlines():
                fields = line.split(":")
                if fields[0] in kept:
                    for n in member_fields:
                        fields[n] = ",".join(m for m in fields[n].split(",") if m in kept)
                    lines.append(":".join(fields) + "\n")
            self.path(path).write_text("".join(lines))  # keeps the file's owner and mode
        defs = [
            line
            for line in self.read_file("/etc/login.defs").splitlines(keepends=True)
            if line.split()[:1] not in (["UID_MIN"], ["UID_MAX"], ["GID_MIN"], ["GID_MAX"])
        ]
        low, high = USER_IDS
        ids = f"UID_MIN {low}\nUID_MAX {high}\nGID_MIN {low}\nGID_MAX {high}\n"
        self.write_file("/etc/login.defs", "".join(defs) + ids)

    def _forbid_daemons(self) -> None:
        """Packages installed in the host (by Ansible) must not start their daemons: nothing
        would stop them but stop(), and they would run with this machine's network."""
        # invoke-rc.d asks policy-rc.d first; 101 is "not allowed" (Debian's policy for chroots
        # and containers). Without a running systemd, deb-systemd-invoke starts nothing either.
        self.write_file("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)

    # -- sshd -------------------------------------------------------------------------------

    def _setup_sshd(self) -> None:
        self.port = free_port()
        # The keys copied from this machine would make the host look like it.
        self.run("sh", "-c", "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A -q")
        self.write_file(
            "/etc/ssh/sshd_config",
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    "PidFile /run/sshd.pid",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM yes",
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                    # Last, so that a Match block in a snippet cannot swallow the lines above.
                    "Include /etc/ssh/sshd_config.d/*.conf",
                    "",
                ]
            ),
        )
        self.write_file("/etc/hostname", f"{self.hostname}\n")
        hosts = self.read_file("/etc/hosts")
        self.write_file("/etc/hosts", f"{hosts}127.0.1.1 {self.hostname}\n")  # for sudo

    @property
    def host_keys(self) -> str:
        """The host keys as "type base64" lines, as the portal records them at registration."""
        pubs = sorted(self.path("/etc/ssh").glob("ssh_host_*_key.pub"))
        return "".join(" ".join(p.read_text().split()[:2]) + "\n" for p in pubs)

    @property
    def known_hosts(self) -> str:
        """The host keys as an OpenSSH known_hosts file for [127.0.0.1]:port."""
        return "".join(f"[127.0.0.1]:{self.port} {line}\n" for line in self.host_keys.splitlines())

    @property
    def sshd_log(self) -> str:
        """sshd's log (what syslog's auth.log would hold on a real host)."""
        path = self.path("/var/log/sshd.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def _sshd_pid(self) -> int | None:
        pidfile = self.path("/run/sshd.pid")
        try:
            pid = int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if self.exec(["kill", "-0", str(pid)]).returncode == 0 else None

    def start_sshd(self) -> None:
        self.run("mkdir", "-p", "-m", "0755", "/run/sshd")  # its privilege-separation directory
        self.run("sshd", "-t")  # a bad configuration fails here, with sshd's message
        self.run("/usr/sbin/sshd", "-E", "/var/log/sshd.log")
        # The pid file is written once sshd listens.
        deadline = time.monotonic() + 10
        while self._sshd_pid() is None:
            if time.monotonic() > deadline:
                raise TestHostError(f"sshd did not start:\n{self.sshd_log}")
            time.sleep(0.02)

    def stop_sshd(self) -> None:
        """Stop the listening daemon only: open sessions and their processes go on."""
        pid = self._sshd_pid()
        if pid is None:
            return
        self.run("kill", str(pid))
        deadline = time.monotonic() + 10
        while self.exec(["kill", "-0", str(pid)]).returncode == 0:
            if time.monotonic() > deadline:
                raise TestHostError("sshd did not stop")
            time.sleep(0.02)
        self.run("rm", "-f", "/run/sshd.pid")

    def reload_sshd(self) -> None:
        # A restart rather than SIGHUP: after a SIGHUP nothing tells when sshd listens again,
        # and open sessions survive either way.
        self.stop_sshd()
        self.start_sshd()

    # -- the agent --------------------------------------------------------------------------

    def install_agent(self, config: dict) -> None:
        """Install the host agent as the Ansible role will, by plain copies, and reload sshd."""
        for name in ("__init__.py", "accounts.py", "agent", "gpu"):
            source = REPO / "provisioning" / name
            target = self.path(f"{LIB}/provisioning/{name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copyfile(source, target)
        files = AGENT_FILES
        self._copy(files / "porterbox-hostctl", "/usr/local/sbin/porterbox-hostctl", 0o755)
        self._copy(files / "porterbox-login", f"{LIB}/porterbox-login", 0o755)
        self._copy(files / "porterbox-apt", "/usr/local/bin/porterbox-apt", 0o755)
        self._copy(files / "sshd_porterbox.conf", "/etc/ssh/sshd_config.d/porterbox.conf", 0o644)
        self._copy(files / "sudoers", "/etc/sudoers.d/porterbox", 0o440)
        self.run("visudo", "-cf", "/etc/sudoers.d/porterbox")
        for profile_file in sorted((files / "schroot-profile").iterdir()):
            self._copy(profile_file, f"/etc/schroot/porterbox/{profile_file.name}", 0o644)
        self.config = dict(config)
        self._write_config()

        group = self.config.get("group", "porterbox-users")
        if self.exec(["getent", "group", group]).returncode != 0:
            self.run("groupadd", "--system", group)
        if self.exec(["getent", "passwd", "porterbox"]).returncode != 0:
            self.run(
                "useradd", "--system", "--create-home", "--home-dir", "/var/lib/porterbox-ssh",
                "--shell", "/bin/sh", "porterbox",
            )  # fmt: skip
        for name, stack in self.stacks.items():
            self._register_chroot(name, stack["chroot"])  # now with the agent's profile
        self.reload_sshd()

    def _copy(self, source: Path, path: str, mode: int) -> None:
        self.write_file(path, source.read_text(), mode)

    def _write_config(self) -> None:
        assert self.config is not None
        stacks = {**self.config.get("stacks", {}), **self.stacks}
        config = {**self.config, "stacks": stacks}
        self.write_file("/etc/porterbox/hostctl.json", json.dumps(config, indent=2) + "\n")

    def authorize_portal(self, pubkey_line: str) -> None:
        """Let the portal's key run the agent, and nothing else, as the porterbox account."""
        home = self.run("sh", "-c", "getent passwd porterbox | cut -d: -f6").strip()
        key = " ".join(pubkey_line.split()[:2])
        line = f'restrict,command="sudo -n /usr/local/sbin/porterbox-hostctl --ssh" {key}\n'
        self.write_file(f"{home}/.ssh/authorized_keys", line, 0o600)
        self.run("chown", "-R", "porterbox:", f"{home}/.ssh")
        self.run("chmod", "0700", f"{home}/.ssh")

    def authorize_root(self, pubkey_line: str) -> None:
        """Let pubkey_line, and no other key, log in as root (as Ansible bootstraps a host)."""
        self.write_file("/root/.ssh/authorized_keys", pubkey_line.strip() + "\n", 0o600)
        self.run("chmod", "0700", "/root/.ssh")

    # -- stacks -----------------------------------------------------------------------------

    def add_stack(self, name: str, chroot: str) -> None:
        """Stack name: a tiny busybox tree in /srv/chroots/<chroot>, schroot's chroot <chroot>.

        The tree holds /etc/stack-marker (the chroot's name), found nowhere else on the host.
        """
        root = self.path(f"/srv/chroots/{chroot}")
        for directory in ("bin", "etc", "tmp", "proc", "sys", "dev", "home"):
            (root / directory).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)
        shutil.copy2(self.path("/usr/bin/busybox"), root / "bin" / "busybox")
        for applet in APPLETS:
            (root / "bin" / applet).unlink(missing_ok=True)
            (root / "bin" / applet).symlink_to("busybox")
        (root / "etc" / "stack-marker").write_text(f"{chroot}\n")
        self._register_chroot(name, chroot)
        self.stacks[name] = {"chroot": chroot}
        if self.config is not None:
            self._write_config()

    def add_stack_tree(self, name: str, chroot: str) -> None:
        """Stack name: the tree already in /srv/chroots/<chroot> (a real Debian one, say:
        tests/packages/chroot.py), registered as add_stack registers its busybox tree."""
        if not self.path(f"/srv/chroots/{chroot}/etc").is_dir():
            raise TestHostError(f"/srv/chroots/{chroot} holds no tree")
        self._register_chroot(name, chroot)
        self.stacks[name] = {"chroot": chroot}
        if self.config is not None:
            self._write_config()

    def _register_chroot(self, name: str, chroot: str) -> None:
        # The agent's profile once it is installed; schroot's default one until then.
        profile = "porterbox" if self.exists("/etc/schroot/porterbox/fstab") else "default"
        # Named as in provisioning/agent/files/schroot-chroot.conf.example.
        self.write_file(
            f"/etc/schroot/chroot.d/porterbox-{name}",
            f"[{chroot}]\n"
            f"description=porterbox stack {name}\n"
            f"type=directory\n"
            f"directory=/srv/chroots/{chroot}\n"
            f"union-type=overlay\n"
            f"groups=porterbox-users\n"
            f"root-groups=root\n"
            f"profile={profile}\n",
        )

    # -- inspection -------------------------------------------------------------------------

    def processes(self, uid: int | None = None) -> list[dict]:
        """The host's live processes ({"pid", "uid", "cmdline"}, uid: the real one), or those
        running with uid as any of their real, effective, saved or file-system uids.

        Zombies are left out: they are dead, only not yet reaped by PID 1.
        """
        found = []
        for entry in self.path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = dict(
                    line.split(":", 1) for line in (entry / "status").read_text().splitlines()
                )
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except (FileNotFoundError, ProcessLookupError):
                continue  # it exited meanwhile
            uids = [int(u) for u in status["Uid"].split()]
            if status["State"].split()[0] in ("Z", "X") or uid not in (None, *uids):
                continue
            found.append({"pid": int(entry.name), "uid": uids[0], "cmdline": cmdline})
        return found

    def uid(self, user: str) -> int:
        return int(self.run("id", "-u", user))
