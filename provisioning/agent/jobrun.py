"""porterbox-jobrun: the supervisor of one training job, run as root, detached (docs/agent.md).

    python3 -m provisioning.agent.jobrun [--state-dir DIR] [--lock-fd N] JOB

job-start (jobs.py) starts it in its own session with the job's lock already taken and handed
over as --lock-fd, so the job is never without a live holder of its lock; started by hand, it
takes the lock itself, or leaves if another supervisor holds it.

In order: begin the schroot session as the account, set the ACLs on the devices, prepare the
account's job directory and the input (as the account), run the script in the session (as the
account; autopkgtest instead, for a package test run), with its output through a pipe into the
log. A stop request (stop.json, or SIGTERM) or the walltime sends SIGTERM to the session's
processes, and SIGKILL after the grace. However the job ends, the session's processes are
killed, the session ended and the ACLs removed, and status.json is written last: a recorded end
means all of that is done.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from typing import BinaryIO

from provisioning.agent import STATE_DIR, jobs, schroot_session, session_alive, system
from provisioning.agent.protocol import AgentError
from provisioning.agent.rules import check_job

SCHROOT = "/usr/bin/schroot"
# The script's PATH: the job's env cannot set it (rules.DENIED_ENV).
SCRIPT_PATH = "/usr/local/bin:/usr/bin:/bin"
# A job that writes without end must not fill /var; past this its output is dropped.
MAX_LOG_BYTES = 1024**3
POLL_S = 0.1
DRAIN_S = 5
EXIT_WAIT_S = 30  # for schroot to exit after its command was killed; _undo() kills it then
PUMP_BYTES = 64 * 1024


def array_env(array: dict | None) -> dict[str, str]:
    """A task of a job array sees the array's id and its index (as sbatch --array's
    SLURM_ARRAY_JOB_ID and SLURM_ARRAY_TASK_ID); a plain job sees neither."""
    if not array:
        return {}
    return {
        "PORTERBOX_ARRAY_JOB_ID": str(array["job"]),
        "PORTERBOX_ARRAY_TASK_ID": str(array["task"]),
    }


def autopkgtest_argv(run: dict, work: str, walltime_s: int) -> list[str]:
    """A package test run: autopkgtest, as the account, with the job's session itself as its
    testbed (the null backend). The session is thrown away after the job (union-type overlay),
    and root in it would be root on the host: so no root, needs-root tests are skipped, and
    test dependencies are checked, never installed (the stack's chroot holds them). -B: the
    package is not built, so there are no binaries to install either (docs/agent.md)."""
    output = os.path.join(work, "output", "autopkgtest")
    names = [option for name in run["tests"] for option in ("--test-name", name)]
    if run.get("control"):  # the portal's copy without X-Requires-Hwspec (rules.py)
        names += ["--override-control", os.path.join(work, "input", run["control"])]
    return [
        *("autopkgtest", "--no-built-binaries", "--output-dir", output, *names),
        f"--timeout-test={walltime_s}",
        *(os.path.join(work, "input", run["dsc"]), "--", "null"),
    ]


class Ended(Exception):
    """The job ends before its script has run to its end: stopped, timed out, or a step failed."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.state = state
        self.reason = reason


class Child:
    """A process of the supervisor's, in its own process group (kill() takes the group)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None):
        self.pid = pid
        self.popen = popen
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            if self.popen is not None:
                self.returncode = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


class Supervisor:
    def __init__(self, state_dir: str, job: str, record: dict):
        self.state_dir = state_dir
        self.job = job
        self.record = record
        self.account = pwd.getpwuid(0)  # the job's, once _run() has found it
        self.groups: list[int] = []
        self.work = os.path.join(record["home"], "jobs", job)
        self.deadline = time.monotonic() + record["walltime_s"]
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self.log = os.open(jobs.log_path(state_dir, job), flags, 0o600)
        self.log_bytes = os.fstat(self.log).st_size
        self.pipe: int | None = None  # the read end of the script's output
        self.child: Child | None = None
        self.in_script = False
        self.signalled = False
        self.roots = system.session_roots(job)

    # -- the job's life ---------------------------------------------------------------------

    def run(self) -> dict:
        state, exit_status, reason = "failed", None, None
        try:
            exit_status = self._run()
            state = "succeeded" if exit_status == 0 else "failed"
            if exit_status != 0:
                what = "autopkgtest" if self.record.get("autopkgtest") else "the script"
                reason = f"{what} exited with status {exit_status}"
        except Ended as end:
            state, reason = end.state, end.reason
            exit_status = self.child.returncode if self.in_script and self.child else None
        except Exception as exc:  # whatever broke, the job must still be ended and recorded
            reason = _reason(exc)
        problems = self._undo()
        if problems:
            state, reason = "failed", "; ".join(filter(None, [reason, *problems]))
        self.say(f"job {state}" + (f": {reason}" if reason else ""))
        status = {
            "state": state,
            "exit_status": exit_status,
            "started_at": self.record["started_at"],
            "ended_at": jobs.utc_now(),
            "reason": reason,
        }
        system.write_file(
            jobs.status_path(self.state_dir, self.job), json.dumps(status), mode=0o644
        )
        return status

    def _run(self) -> int:
        record, job, account = self.record, self.job, self.record["account"]
        try:
            self.account = pwd.getpwnam(account)
        except KeyError:
            raise AgentError("host_error", f"account: {account} no longer exists") from None
        if self.account.pw_uid != record["uid"]:
            raise AgentError("foreign_account", f"account: {account} is another uid now")
        self.groups = os.getgrouplist(account, self.account.pw_gid)
        if not session_alive(job):
            # Begun as the account, as grant does: schroot lets only it (and root) in.
            begin = ["schroot", "--begin-session", "-c", record["chroot"]]
            system.run(["runuser", "-u", account, "--", *begin, "-n", schroot_session(job)])
        with system.host_lock(self.state_dir):
            for node in record["nodes"]:
                system.run(["setfacl", "-m", f"u:{account}:rw", node])
        with open(os.path.join(jobs.job_dir(self.state_dir, job), "script"), "rb") as file:
            script = file.read()
        self._step("preparing the job's directory", self._fork(lambda: self._prepare(script)))
        source = record["input"]
        if "git" in source:
            at = source.get("ref", "its default branch")
            self.say(f"cloning {source['git']} at {at}")
            self._step("cloning the input", self._popen(self._git_argv(source), self.log))
        elif "archive" in source:
            path = os.path.join(jobs.job_dir(self.state_dir, job), "input.tar.gz")
            with open(path, "rb") as archive:  # opened as root, read as the account
                input_dir = os.path.join(self.work, "input")
                child = self._fork(lambda: extract_archive(archive, input_dir))
            self._step("extracting the input", child)
        return self._script()

    def _prepare(self, script: bytes) -> None:
        """As the account: a fresh job directory with the script, input/ and output/."""
        shutil.rmtree(self.work, ignore_errors=True)  # a previous try's leftovers
        jobs_home = os.path.dirname(self.work)
        os.makedirs(jobs_home, mode=0o700, exist_ok=True)
        os.chmod(jobs_home, 0o700)  # other users of the host do not see the project's data
        os.mkdir(self.work, 0o700)
        os.mkdir(os.path.join(self.work, "input"), 0o755)
        os.mkdir(os.path.join(self.work, "output"), 0o755)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(os.path.join(self.work, "script"), flags, 0o600), "wb") as file:
            file.write(script)

    def _git_argv(self, source: dict) -> list[str]:
        # https only (redirects included); -C: git, not root, enters the account's directory.
        # Without a ref, git checks out what the remote's HEAD names (its default branch):
        # "--branch HEAD" would look for a branch called HEAD.
        branch = ["--branch", source["ref"]] if "ref" in source else []
        return [
            *("git", "-C", self.work, "-c", "protocol.allow=never"),
            *("-c", "protocol.https.allow=always", "clone", "--depth", "1"),
            *branch, "--", source["git"], "input",
        ]  # fmt: skip

    def _script(self) -> int:
        record, account = self.record, self.account
        env = {
            "PATH": SCRIPT_PATH,
            "HOME": account.pw_dir,
            "USER": account.pw_name,
            "LOGNAME": account.pw_name,
            "SHELL": "/bin/sh",
            "LANG": "C.UTF-8",
            **record["env"],
            **record["visible"],
            "PORTERBOX_OUTPUT": os.path.join(self.work, "output"),
            "PORTERBOX_JOB": self.job,
            **array_env(record.get("array")),
        }
        session = f"session:{schroot_session(self.job)}"
        input_dir = os.path.join(self.work, "input")
        script = os.path.join(self.work, "script")
        command = ["/bin/sh", script]
        if record.get("autopkgtest"):
            command = autopkgtest_argv(record["autopkgtest"], self.work, record["walltime_s"])
        argv = [SCHROOT, "-c", session, "-r", "-p", "-d", input_dir, "--", *command]
        self.pipe, writer = os.pipe2(os.O_CLOEXEC)
        try:
            # The account's: a job that opens /dev/stdout or /dev/stderr (autopkgtest tees its
            # log to /dev/stderr) reopens the pipe, which a root-owned 0600 pipe refuses.
            os.fchown(writer, account.pw_uid, account.pw_gid)
            self.child = self._popen(argv, writer, env=env)
        finally:
            os.close(writer)
        self.in_script = True
        self.say(f"running the script as {account.pw_name} in {session}")
        return self._wait(self.child)

    def _step(self, what: str, child: Child) -> None:
        status = self._wait(child)
        if status != 0:
            raise Ended("failed", f"{what} failed (status {status})")

    # -- children ---------------------------------------------------------------------------

    def _popen(self, argv: list[str], output: int, env: dict | None = None) -> Child:
        account = self.account
        popen = subprocess.Popen(  # noqa: S603 - an argv list of recorded, validated values
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            env=env or self._tool_env(),
            cwd="/",
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=self.groups,
            umask=0o022,  # a login's, not the supervisor's own 077
            start_new_session=True,
        )
        return Child(popen.pid, popen)

    def _tool_env(self) -> dict[str, str]:
        # None of the account's own git configuration: it could name hooks or helpers that
        # would run here, on the host, outside the session.
        return {
            **system.COMMAND_ENV,
            "HOME": self.account.pw_dir,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
        }

    def _fork(self, work) -> Child:
        def as_leader() -> None:
            os.setsid()  # its own group, for kill()
            os.dup2(self.log, 2)
            work()

        self.child = Child(system.as_account(self.account, as_leader))
        return self.child

    def _wait(self, child: Child) -> int:
        """The child's exit status; Ended if the job is stopped or out of time meanwhile."""
        while (returncode := child.poll()) is None:
            stop = system.read_json(self._stop_path())
            if stop is not None:
                grace = stop["grace_s"]
                self._terminate(child, grace, f"stopped by job-stop (grace {grace} s)")
                raise Ended("stopped", "stopped by job-stop")
            if self.signalled:
                grace = self.record["grace_s"]
                self._terminate(child, grace, "the supervisor was told to stop")
                raise Ended("stopped", "the supervisor was told to stop")
            if time.monotonic() >= self.deadline:
                walltime = self.record["walltime_s"]
                self._terminate(child, self.record["grace_s"], f"walltime of {walltime} s reached")
                raise Ended("timed_out", f"walltime of {walltime} s reached")
            self._pump(POLL_S)
        return returncode

    def _stop_path(self) -> str:
        return os.path.join(jobs.job_dir(self.state_dir, self.job), "stop.json")

    def _terminate(self, child: Child, grace: int, why: str) -> None:
        """SIGTERM to the script's processes, SIGKILL after the grace; a step is just killed."""
        if not self.in_script:
            self.say(f"{why}: ending the job")
            child.kill()
            while child.poll() is None:
                time.sleep(POLL_S)
            return
        self.say(f"{why}: SIGTERM to the job's processes")
        system.signal_matching(self._in_session, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (child.poll() is None or self._session_busy()):
            self._pump(POLL_S)
        if child.poll() is None or self._session_busy():
            self.say(f"still running after the grace of {grace} s: SIGKILL")
            system.kill_processes(self._in_session)
        deadline = time.monotonic() + EXIT_WAIT_S
        while child.poll() is None and time.monotonic() < deadline:
            self._pump(POLL_S)  # schroot exits once its command has

    def _in_session(self, pid: int) -> bool:
        return system.root_of(pid).startswith(self.roots)

    def _session_busy(self) -> bool:
        return any(self._in_session(pid) for pid in system.pids())

    # -- the end ----------------------------------------------------------------------------

    def _undo(self) -> list[str]:
        """End what the job began, each step whatever the others did; what went wrong."""
        problems = []
        if self.child is not None and self.child.poll() is None:
            self.child.kill()
        steps = (
            lambda: system.end_session(self.job),  # kills what is left in the session first
            self._drain,
            self._release,
        )
        for step in steps:
            try:
                step()
            except Exception as exc:
                problems.append(_reason(exc))
        return problems

    def _release(self) -> None:
        with system.host_lock(self.state_dir):
            account = self.record["account"]
            jobs.release_nodes(self.state_dir, account, self.record["nodes"], self.job)

    def _drain(self) -> None:
        """The rest of the script's output: its writers are gone, so the pipe ends soon."""
        deadline = time.monotonic() + DRAIN_S
        while self.pipe is not None and time.monotonic() < deadline:
            self._pump(POLL_S)
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None

    # -- the log ----------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        """Move what the script wrote to the log, waiting at most timeout for it."""
        if self.pipe is None:
            time.sleep(timeout)
            return
        readable, _, _ = select.select([self.pipe], [], [], timeout)
        if not readable:
            return
        data = os.read(self.pipe, PUMP_BYTES)
        if not data:
            os.close(self.pipe)
            self.pipe = None
            return
        room = MAX_LOG_BYTES - self.log_bytes
        if room > 0:
            self._append(data[:room])
            if len(data) > room:
                self.say(f"the log reached {MAX_LOG_BYTES} bytes: the rest is dropped")

    def say(self, message: str) -> None:
        self._append(f"porterbox: {message}\n".encode("utf-8", "replace"))

    def _append(self, data: bytes) -> None:
        os.write(self.log, data)
        self.log_bytes += len(data)


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"


def extract_archive(archive: BinaryIO, destination: str) -> None:
    """Extract a .tar.gz with tarfile's "data" filter, or, on a Python that lacks it (before
    3.11.4: Debian 12's 3.11.2), with the same checks made here against the file system."""
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, filter="data")
            return
        root = os.path.realpath(destination)
        for member in tar.getmembers():
            tar.extract(_data_member(member, root), root)


def _data_member(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """tarfile.data_filter's rules (CPython 3.12), for a Python without it."""

    def inside(path: str) -> bool:
        return os.path.commonpath([os.path.realpath(path), root]) == root

    name = member.name
    if name.startswith("/") or not inside(os.path.join(root, name)):
        raise tarfile.TarError(f"{name!r} would be extracted outside input/")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise tarfile.TarError(f"{name!r} is not a file, directory or link")
    if member.issym() or member.islnk():
        base = os.path.dirname(os.path.join(root, name)) if member.issym() else root
        if os.path.isabs(member.linkname) or not inside(os.path.join(base, member.linkname)):
            raise tarfile.TarError(f"{name!r} links outside input/")
    member = copy.copy(member)
    mode = member.mode & 0o755
    if member.isreg() or member.islnk():
        member.mode = (mode if mode & 0o100 else mode & ~0o111) | 0o600
    else:
        member.mode = 0o755
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="porterbox-jobrun", description=__doc__.split("\n")[0])
    parser.add_argument("job")
    parser.add_argument("--state-dir", default=STATE_DIR, help=f"default: {STATE_DIR}")
    parser.add_argument("--lock-fd", type=int, help="the job's lock, already taken")
    args = parser.parse_args(argv)
    try:
        job = check_job(args.job)
    except AgentError as exc:
        parser.error(exc.message)
    if args.lock_fd is None:
        try:
            lock = os.open(os.path.join(jobs.job_dir(args.state_dir, job), "lock"), os.O_RDWR)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (FileNotFoundError, BlockingIOError):
            print(f"porterbox-jobrun: {job}: no such job, or it has a supervisor", file=sys.stderr)
            return 1
    else:
        lock = args.lock_fd
    os.set_inheritable(lock, False)  # held by this process only, not by the job's
    record = jobs.read_job(args.state_dir, job)
    if record is None or system.read_json(jobs.status_path(args.state_dir, job)) is not None:
        print(f"porterbox-jobrun: {job}: not started, or already ended", file=sys.stderr)
        return 1
    os.umask(0o077)
    supervisor = Supervisor(args.state_dir, job, record)

    def stop(signum: int, frame: object) -> None:
        supervisor.signalled = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no terminal: a stray hangup is not a stop
    supervisor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
