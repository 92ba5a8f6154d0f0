"""What the agent does to the host itself: commands, files, accounts, processes, the host lock.

Every command the agent starts goes through ``run()``: an argv list, never a shell, with a
timeout and a fixed environment. The verbs' modules (sessions, jobs, host) and the job
supervisor (jobrun) build on these helpers; nothing here knows a verb.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator

from provisioning.agent import schroot_session, session_alive, session_root
from provisioning.agent.protocol import AgentError, Config, DeviceRef

COMMAND_TIMEOUT_S = 120  # useradd or a schroot overlay mount on a busy host, with margin
# A fixed environment: the agent's commands never depend on the caller's PATH or locale.
COMMAND_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
SHADOW = "/etc/shadow"
MAX_KILL_ROUNDS = 50


class CommandMissing(AgentError):
    """The program to run is not installed."""


# -- commands -------------------------------------------------------------------------------


def run(
    argv: list[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run one command: the only place the agent starts a process."""
    try:
        result = subprocess.run(  # noqa: S603 - an argv list of validated values, never a shell
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=COMMAND_ENV,
            cwd="/",
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandMissing("command_failed", f"{argv[0]}: not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise AgentError("command_failed", f"{argv[0]}: no answer within {timeout:g}s") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[:500]
        message = f"{' '.join(argv[:2])} exited with status {result.returncode}: {detail}"
        raise AgentError("command_failed", message)
    return result


# -- the host lock --------------------------------------------------------------------------


@contextlib.contextmanager
def host_lock(state_dir: str) -> Iterator[None]:
    """One changing verb at a time: the reconcile loop, a staff member, the expiry timer, udev
    and the job supervisors may overlap. An flock on the state directory itself."""
    make_dir(state_dir)
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- files ----------------------------------------------------------------------------------


def make_dir(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)
    # Whatever the umask made of it: users list the records to find theirs (which stay 0640).
    os.chmod(path, 0o755)  # noqa: S103


def write_file(path: str, text: str, *, mode: int, gid: int = 0) -> None:
    """Replace a root-owned file atomically: sshd and the login never see half a file."""
    directory = os.path.dirname(path)
    make_dir(directory)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchown(file.fileno(), 0, gid)
            os.fchmod(file.fileno(), mode)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def read_json(path: str) -> dict | None:
    """The file's JSON; None where there is no such file."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def device_nodes(config: Config, devices: tuple[DeviceRef, ...]) -> list[str]:
    """The booked devices' nodes, then their vendors' shared nodes that exist on this host."""
    nodes = [node for vendor, index in devices for node in config.devices[vendor][index]]
    for vendor in sorted({vendor for vendor, _ in devices}):
        nodes += [n for n in config.shared_nodes.get(vendor, ()) if os.path.exists(n)]
    return list(dict.fromkeys(nodes))


# -- accounts -------------------------------------------------------------------------------


def ensure_account(user: str, config: Config) -> pwd.struct_passwd:
    """The user's account, created in the group if missing, unlocked; never someone else's."""
    try:
        grp.getgrnam(config.group)
    except KeyError:
        run(["groupadd", "--system", config.group])
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        home = os.path.join(config.home_base, user)
        run(
            [
                *("useradd", "--create-home", "--home-dir", home, "--shell", "/bin/bash"),
                *("--user-group", "--groups", config.group),
                *("--comment", "porterbox portal user", user),
            ]
        )
        account = pwd.getpwnam(user)
    if not in_group(account, config.group):
        message = f"user: {user} exists and is not in {config.group}; the agent did not create it"
        raise AgentError("foreign_account", message)
    if shadow().get(user) != ("*", ""):  # a repeated grant leaves the account as it is
        run(["usermod", "--password", "*", "--expiredate", "", user])
    return account


def in_group(account: pwd.struct_passwd, group: str) -> bool:
    entry = grp.getgrnam(group)
    return account.pw_name in entry.gr_mem or account.pw_gid == entry.gr_gid


def shadow() -> dict[str, tuple[str, str]]:
    """user -> (password field, expiry field) of /etc/shadow."""
    entries = {}
    with open(SHADOW, encoding="utf-8", errors="replace") as file:
        for line in file:
            fields = line.rstrip("\n").split(":")
            if len(fields) >= 8:
                entries[fields[0]] = (fields[1], fields[7])
    return entries


def locked_accounts() -> dict[str, bool]:
    """user -> whether sshd would refuse them: a "!" password or an expiry date that passed."""
    today = int(time.time() // 86400)
    return {
        user: password.startswith("!") or (expire.isdigit() and int(expire) <= today)
        for user, (password, expire) in shadow().items()
    }


def as_account(account: pwd.struct_passwd, work: Callable[[], None]) -> int:
    """Fork a child that runs work() as the account (uid, gid and groups); its pid.

    The child exits 0 if work() returned, 1 with its error on stderr if it raised.
    """
    groups = os.getgrouplist(account.pw_name, account.pw_gid)
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        os.setgroups(groups)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
        os.umask(0o022)
        os.chdir("/")
        work()
        status = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(2, f"porterbox: {exc}\n".encode("utf-8", "replace"))
    finally:
        os._exit(status)


def wait_child(pid: int) -> int:
    """Wait for a forked child; its exit status."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# -- sessions -------------------------------------------------------------------------------


def session_roots(session: str) -> tuple[str, ...]:
    """The prefixes of /proc/<pid>/root of the processes inside the session (its mount, and
    the overlay's view of it under /var)."""
    return tuple(root + "/" for root in (session_root(session), "/var" + session_root(session)))


def end_session(session: str) -> int:
    """Kill what runs inside the session, then end it (schroot unmounts and drops its layer)."""
    roots = session_roots(session)
    killed = kill_processes(lambda pid: root_of(pid).startswith(roots))
    if not session_alive(session):
        return killed
    result = run(["schroot", "--end-session", "-c", schroot_session(session)], check=False)
    if result.returncode != 0 and session_alive(session):
        detail = result.stderr.strip()[:500]
        raise AgentError("command_failed", f"session: schroot --end-session failed: {detail}")
    return killed


# -- processes ------------------------------------------------------------------------------


def kill_processes(matches: Callable[[int], bool]) -> int:
    """SIGSTOP every matching process, then SIGKILL them, until none is left; how many died.

    Stopping all of them first means none can fork a replacement or restart another while the
    others are being killed. The wait between rounds grows: a process that held a GPU can take
    seconds to exit.
    """
    killed: set[int] = set()
    parents: set[int] = set()
    for round_ in range(MAX_KILL_ROUNDS):
        stopped = signal_matching(matches, signal.SIGSTOP)
        if not stopped:
            _resume(parents - killed)
            return len(killed)
        parents.update(int(proc_status(pid).get("PPid", "0")) for pid in stopped)
        signal_matching(matches, signal.SIGKILL)
        killed.update(stopped)
        time.sleep(min(0.05 * (round_ + 1), 0.5))
    raise AgentError("processes_remain", "processes: some survived SIGKILL")


def signal_matching(matches: Callable[[int], bool], sig: int) -> set[int]:
    """Send sig to every matching process; the pids it reached."""
    reached = set()
    for pid in pids():
        if not matches(pid):
            continue
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            # Checked again through the pidfd's process: a pid reused meanwhile is left alone.
            if matches(pid):
                signal.pidfd_send_signal(fd, sig)
                reached.add(pid)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
    return reached


def _resume(stopped: set[int]) -> None:
    """Continue the surviving parents: su and runuser (root) stop themselves when their child
    is stopped, as job control, and would wait forever for a SIGCONT."""
    for pid in stopped - {0, 1}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def proc_status(pid: int) -> dict[str, str]:
    """The fields of /proc/<pid>/status; none for a process that is gone."""
    try:
        # A process names itself: its name may be any bytes, never a reason to skip it.
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as file:
            return dict(line.split(":", 1) for line in file if ":" in line)
    except OSError:
        return {}


def uids_of(pid: int) -> set[int]:
    """Real, effective and saved uid of a live process; none for a zombie or a gone one."""
    fields = proc_status(pid)
    if fields.get("State", "").split()[:1] in (["Z"], ["X"]):
        return set()  # already dead, waiting for its parent: nothing to kill
    return {int(uid) for uid in fields.get("Uid", "").split()[:3]}


def root_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/root") + "/"
    except OSError:
        return ""


def processes_by_uid() -> Counter:
    counts: Counter = Counter()
    for pid in pids():
        counts.update(uids_of(pid))
    return counts
