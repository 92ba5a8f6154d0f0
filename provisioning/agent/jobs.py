"""The training-job verbs of porterbox-hostctl: job-start, -status, -stop, -logs, -output,
-clean.

docs/agent.md, "Training jobs". Validation is pure and comes first (the rules of a job's
fields are ``rules``, which the portal checks too); execution acts on the cleaned values
only. A job's life belongs to its supervisor (``jobrun``), which job-start starts detached;
the other verbs read what the supervisor records, or ask it to stop.

What the agent keeps of a job, root's, out of every session's sight (/var/lib/porterbox is not
in the schroot profile's fstab), in ``<state_dir>/jobs/<job>/``:

    record.json    the cleaned job-start request (the env may hold secrets: 0600)
    script         the script as the portal sent it (0600)
    input.tar.gz   the archive input, if any (0600), streamed in after the request line
    lock           held (flock) by the supervisor while it lives: a crash or a reboot frees it
    log            the job's stdout and stderr, and the supervisor's own lines (0600)
    stop.json      a stop request from job-stop, which the supervisor polls for
    status.json    the outcome, written by the supervisor after everything else is undone

What the job works on is the account's, in ``<home>/jobs/<job>/`` (script, input/, output/),
and is only ever written by processes running as the account, so a link planted there cannot
turn a root write into a write elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Any, BinaryIO

import provisioning
from provisioning.agent import read_records, system
from provisioning.agent.protocol import (
    AgentError,
    Config,
    check_devices,
    check_integer,
    check_stack,
    check_user,
    visible_devices_env,
)
from provisioning.agent.rules import (
    JOB,
    check_archive,
    check_autopkgtest,
    check_env,
    check_grace,
    check_input,
    check_job,
    check_job_kind,
    check_script,
    check_walltime,
)

MAX_LOG_CHUNK = 1024 * 1024
SPOOL_CHUNK = 1024 * 1024
# How long job-stop waits for the supervisor to record the end before it answers anyway
# (the portal's SSH command timeout is 60 s); the stop goes on, and job-status tells the end.
STOP_WAIT_S = 20
# The most of a finished job's output/ that job-output hands the portal, compressed: spooled
# to disk and streamed after the answer's line, never held in memory.
MAX_OUTPUT_BYTES = 4 * 1024**3
LOCK_WAIT_S = 5
SUPERVISOR_GONE = "the supervisor ended without recording an outcome (a reboot or a crash)"
# Where this copy of the agent was imported from: the supervisor runs the same code.
LIB = os.path.dirname(os.path.dirname(os.path.abspath(provisioning.__file__)))


# -- validation: pure, nothing runs and nothing is written -----------------------------------
# Each takes the fields of its verb, all present (hostctl checked their names), and returns
# them cleaned.


def validate_start(fields: dict, config: Config) -> dict:
    cleaned: dict[str, Any] = {
        "job": check_job(fields["job"]),
        "account": check_account(fields["account"], config),
        "stack": check_stack(fields["stack"], config),
        "devices": check_devices(fields["devices"], config),
        "script": check_script(fields["script"]),
        "env": check_env(fields["env"]),
        "walltime_s": check_walltime(fields["walltime_s"], config.job_min_walltime_s),
        "grace_s": check_grace(fields["grace_s"]),
        "input": check_input(fields["input"]),
        "array": check_array(fields.get("array")),
        "autopkgtest": check_autopkgtest(fields.get("autopkgtest")),
    }
    check_job_kind(cleaned["script"], cleaned["autopkgtest"], cleaned["input"])
    return cleaned


def check_array(value: object) -> dict | None:
    """A task of a job array: {"job": the array's id, "task": its index}, or None (a plain job).
    The job sees them as PORTERBOX_ARRAY_JOB_ID and PORTERBOX_ARRAY_TASK_ID."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"job", "task"}:
        raise AgentError("bad_request", "array: must be an object with job and task")
    return {
        "job": check_integer("array.job", value["job"], 1, 2**62),
        "task": check_integer("array.task", value["task"], 0, 2**31),
    }


def validate_job(fields: dict, config: Config) -> dict:
    """job-status and job-clean: the job alone."""
    return {"job": check_job(fields["job"])}


def validate_stop(fields: dict, config: Config) -> dict:
    return {"job": check_job(fields["job"]), "grace_s": check_grace(fields["grace_s"])}


def validate_logs(fields: dict, config: Config) -> dict:
    return {
        "job": check_job(fields["job"]),
        "offset": check_integer("offset", fields["offset"], 0, 2**62),
        "limit": check_integer("limit", fields["limit"], 1, MAX_LOG_CHUNK),
    }


def validate_output(fields: dict, config: Config) -> dict:
    return {
        "job": check_job(fields["job"]),
        "limit": check_integer("limit", fields["limit"], 1, MAX_OUTPUT_BYTES),
    }


def check_account(value: object, config: Config) -> str:
    """An account follows the rule of a grant's user."""
    try:
        return check_user(value, config)
    except AgentError as exc:
        raise AgentError("bad_account", "account" + exc.message.removeprefix("user")) from exc


def receive_archive(config: Config, body: BinaryIO | None, size: int) -> str:
    """Spool the size bytes that follow the request line into a root-only file of the agent's
    (a block at a time) and check them as an archive; the file's path. Removed if refused."""
    if body is None:
        raise AgentError("bad_input", "input.archive_bytes: no archive follows the request")
    spool = os.path.join(config.state_dir, "spool")
    os.makedirs(spool, mode=0o700, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=spool, prefix="input-")
    try:
        with os.fdopen(fd, "wb") as file:
            left = size
            while left:
                chunk = body.read(min(left, SPOOL_CHUNK))
                if not chunk:
                    got = size - left
                    message = f"input.archive_bytes: the archive ended after {got} of {size} bytes"
                    raise AgentError("bad_input", message)
                file.write(chunk)
                left -= len(chunk)
        with open(path, "rb") as file:
            check_archive(file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return path


# -- the verbs ------------------------------------------------------------------------------


def job_start(
    config: Config, *, job, account, stack, devices, script, env, walltime_s, grace_s, input,
    array=None, autopkgtest=None, body: BinaryIO | None = None,
) -> dict:  # fmt: skip
    if read_job(config.state_dir, job) is not None:
        return {"job": job, "started": False}  # already started: changes nothing, reads nothing
    archive = None
    if "archive_bytes" in input:
        # Spooled before the host lock: a slow upload never holds up grants and revokes.
        archive = receive_archive(config, body, input["archive_bytes"])
    try:
        return _start(config, job, account, stack, devices, script, env, walltime_s, grace_s,
                      input, archive, array, autopkgtest)  # fmt: skip
    finally:
        if archive is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(archive)  # not taken: a job that started meanwhile


def _start(
    config, job, account, stack, devices, script, env, walltime_s, grace_s, input, archive, array,
    autopkgtest,
) -> dict:  # fmt: skip
    with system.host_lock(config.state_dir):
        if read_job(config.state_dir, job) is not None:
            return {"job": job, "started": False}  # already started: changes nothing
        user = system.ensure_account(account, config)
        directory = job_dir(config.state_dir, job)
        system.make_dir(directory)
        lock = _hold_lock(directory)
        try:
            system.write_file(os.path.join(directory, "script"), script, mode=0o600)
            for stale in ("status.json", "stop.json", "input.tar.gz"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, stale))
            if archive is not None:
                os.rename(archive, os.path.join(directory, "input.tar.gz"))
            record = {
                "job": job,
                "account": account,
                "uid": user.pw_uid,
                "home": user.pw_dir,
                "stack": stack,
                "chroot": config.stacks[stack],
                "devices": [{"vendor": v, "index": i} for v, i in devices],
                "nodes": system.device_nodes(config, devices),
                "visible": visible_devices_env(devices),
                "env": env,
                "walltime_s": walltime_s,
                "grace_s": grace_s,
                "input": {"archive": True} if archive is not None else input,
                "array": array,
                "autopkgtest": autopkgtest,
                "started_at": utc_now(),
            }
            # Written last: its existence is what makes a repeated job-start a no-op.
            system.write_file(record_path(config.state_dir, job), json.dumps(record), mode=0o600)
            spawn_supervisor(config.state_dir, job, lock)
        finally:
            os.close(lock)
    return {"job": job, "started": True}


def spawn_supervisor(state_dir: str, job: str, lock: int) -> None:
    """Start ``python3 -m provisioning.agent.jobrun`` detached: its own session (setsid), no
    tie to the SSH channel, the job's lock handed over so it is never free in between."""
    argv = [
        *(sys.executable, "-s", "-P", "-m", "provisioning.agent.jobrun"),
        *("--state-dir", state_dir, "--lock-fd", str(lock), job),
    ]
    log = os.open(log_path(state_dir, job), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        subprocess.Popen(  # noqa: S603 - an argv list of validated values, never a shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(lock,),
            start_new_session=True,
            # -s and -P keep the user site and the cwd off sys.path; the code is this agent's.
            env={**system.COMMAND_ENV, "PYTHONPATH": LIB},
            cwd="/",
        )
    finally:
        os.close(log)


def job_status(config: Config, *, job: str) -> dict:
    record = read_job(config.state_dir, job)
    answer = {
        "job": job,
        "state": "unknown",
        "exit_status": None,
        "started_at": None,
        "ended_at": None,
        "reason": None,
        "log_bytes": 0,
    }
    if record is None:
        return answer
    status = read_status(config.state_dir, job)
    if status is None:
        status = {"state": "running", "started_at": record["started_at"]}
    answer.update({key: status[key] for key in status if key in answer})
    with contextlib.suppress(FileNotFoundError):
        answer["log_bytes"] = os.path.getsize(log_path(config.state_dir, job))
    return answer


def read_status(state_dir: str, job: str) -> dict | None:
    """The recorded outcome; for a job whose supervisor is gone without one, "failed"."""
    status = system.read_json(os.path.join(job_dir(state_dir, job), "status.json"))
    if status is not None or supervised(state_dir, job):
        return status
    # The supervisor writes status.json before it lets the lock go: look again.
    status = system.read_json(os.path.join(job_dir(state_dir, job), "status.json"))
    if status is not None:
        return status
    record = read_job(state_dir, job) or {}
    return {
        "state": "failed",
        "exit_status": None,
        "started_at": record.get("started_at"),
        "ended_at": None,
        "reason": SUPERVISOR_GONE,
    }


def job_stop(config: Config, *, job: str, grace_s: int) -> dict:
    """Ask the supervisor to stop the job; wait a while for it to record the end."""
    if read_job(config.state_dir, job) is None:
        return job_status(config, job=job)  # unknown: nothing to stop
    directory = job_dir(config.state_dir, job)
    if system.read_json(os.path.join(directory, "status.json")) is None:
        if supervised(config.state_dir, job):
            request = json.dumps({"grace_s": grace_s})
            system.write_file(os.path.join(directory, "stop.json"), request, mode=0o600)
            deadline = time.monotonic() + min(grace_s + 5, STOP_WAIT_S)
            while supervised(config.state_dir, job) and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            end_abandoned(config, job)
    return job_status(config, job=job)


def end_abandoned(config: Config, job: str) -> None:
    """Undo what a supervisor that died left: the session, its processes, the ACLs."""
    record = read_job(config.state_dir, job)
    with system.host_lock(config.state_dir):
        if record is None or supervised(config.state_dir, job):
            return
        system.end_session(job)
        release_nodes(config.state_dir, record["account"], record["nodes"], job)
        if system.read_json(os.path.join(job_dir(config.state_dir, job), "status.json")) is None:
            recorded = read_status(config.state_dir, job)
            if recorded is None:  # not supervised: read_status answers "failed"
                raise AssertionError("unreachable")
            status = {**recorded, "ended_at": utc_now()}
            system.write_file(status_path(config.state_dir, job), json.dumps(status), mode=0o644)


def job_logs(config: Config, *, job: str, offset: int, limit: int) -> dict:
    """At most limit bytes of the log from offset, cut at a character's end; eof once the
    job has ended and all of its log has been read."""
    # Asked first: once the end is recorded, the log no longer grows.
    ended = job_status(config, job=job)["state"] != "running"
    data, size = b"", 0
    with contextlib.suppress(FileNotFoundError), open(log_path(config.state_dir, job), "rb") as log:
        size = os.fstat(log.fileno()).st_size
        log.seek(offset)
        data = log.read(limit)
        data = data[: _utf8_boundary(data)]
    return {
        "data": data.decode("utf-8", errors="replace"),
        "offset": offset + len(data),
        "eof": ended and offset + len(data) >= size,
    }


def _utf8_boundary(data: bytes) -> int:
    """Where to cut data so that its last character is whole: before a character cut short,
    unless nothing would be left (a limit under 4 bytes must still move on)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # the lead byte of the last character: is all of it there?
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= length or back == len(data) else len(data) - back
    return len(data)


def job_clean(config: Config, *, job: str) -> dict:
    directory = job_dir(config.state_dir, job)
    if not os.path.isdir(directory):
        return {"job": job, "removed": False}
    if supervised(config.state_dir, job):
        raise AgentError("job_running", f"job: {job} is running; job-stop it first")
    record = read_job(config.state_dir, job)
    if record is not None:
        end_abandoned(config, job)
        account = _account(record, config)
        if account is not None:
            work = os.path.join(account.pw_dir, "jobs", job)
            system.wait_child(
                system.as_account(account, lambda: shutil.rmtree(work, ignore_errors=True))
            )
    shutil.rmtree(directory)
    return {"job": job, "removed": True}


def job_output(config: Config, *, job: str, limit: int) -> dict:
    """The finished job's output/ as a .tar.gz, made as the account, so that nothing the
    account could not read itself gets in; links are stored as links, never followed.

    The archive is spooled to an unlinked file of the agent's, and "_body" hands it to
    hostctl.main(), which writes its `bytes` bytes after the answer's line.
    """
    answer = {"job": job, "bytes": 0, "too_large": False}
    record = read_job(config.state_dir, job)
    if record is None:
        return answer
    if supervised(config.state_dir, job):
        raise AgentError("job_running", f"job: {job} is running; its output is not final")
    account = _account(record, config)
    if account is None:
        return answer
    output = os.path.join(account.pw_dir, "jobs", job, "output")
    read_end, write_end = os.pipe()

    def pack() -> None:
        os.close(read_end)
        with os.fdopen(write_end, "wb") as pipe, tarfile.open(fileobj=pipe, mode="w|gz") as tar:
            if os.path.isdir(output):
                tar.add(output, arcname="output")

    pid = system.as_account(account, pack)
    os.close(write_end)
    spool = os.path.join(config.state_dir, "spool")
    os.makedirs(spool, mode=0o700, exist_ok=True)
    # Unlinked at once, nothing is left behind; main() closes it once written out.
    kept = tempfile.TemporaryFile(dir=spool)  # noqa: SIM115
    size = 0
    try:
        with os.fdopen(read_end, "rb") as pipe:
            while chunk := pipe.read(SPOOL_CHUNK):
                if size + len(chunk) > limit:
                    answer["too_large"] = True
                    os.kill(pid, signal.SIGKILL)
                    break
                kept.write(chunk)
                size += len(chunk)
        if system.wait_child(pid) != 0 and not answer["too_large"]:
            raise AgentError("command_failed", f"job: packing the output of {job} failed")
    except BaseException:
        kept.close()
        raise
    answer["bytes"] = size
    if answer["too_large"]:
        kept.close()
    else:
        kept.seek(0)
        answer["_body"] = kept
    return answer


def _account(record: dict, config: Config) -> pwd.struct_passwd | None:
    """The job's account if it is still the one the job ran as, and still the agent's."""
    try:
        account = pwd.getpwnam(record["account"])
    except KeyError:
        return None
    if account.pw_uid != record["uid"] or not system.in_group(account, config.group):
        return None
    return account


# -- shared with the supervisor ------------------------------------------------------------


def job_dir(state_dir: str, job: str) -> str:
    return os.path.join(state_dir, "jobs", job)


def record_path(state_dir: str, job: str) -> str:
    return os.path.join(job_dir(state_dir, job), "record.json")


def status_path(state_dir: str, job: str) -> str:
    return os.path.join(job_dir(state_dir, job), "status.json")


def log_path(state_dir: str, job: str) -> str:
    return os.path.join(job_dir(state_dir, job), "log")


def read_job(state_dir: str, job: str) -> dict | None:
    return system.read_json(record_path(state_dir, job))


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def list_jobs(state_dir: str) -> list[dict]:
    """Every job this host keeps, and whether it runs: for `status`, so the portal can stop and
    clean what it no longer expects (an attempt it requeued while the host was away)."""
    try:
        names = sorted(os.listdir(os.path.join(state_dir, "jobs")))
    except FileNotFoundError:
        return []
    return [{"job": n, "running": supervised(state_dir, n)} for n in names if JOB.fullmatch(n)]


def supervised(state_dir: str, job: str) -> bool:
    """Whether a supervisor holds the job's lock (it dies with its holder, reboots included)."""
    try:
        fd = os.open(os.path.join(job_dir(state_dir, job), "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _hold_lock(directory: str) -> int:
    """The job's lock, taken (only a supervisor or a passing job-status can hold it)."""
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                message = "job: its lock is held by another process"
                raise AgentError("host_error", message) from None
            time.sleep(0.05)


def release_nodes(state_dir: str, account: str, nodes: list[str], job: str) -> None:
    """Remove the account's ACLs on nodes that no grant of it and no other live job holds.

    Under the host lock: a job starting meanwhile has its record and lock before its
    supervisor sets its ACLs, so it is counted here, or sets them again after.
    """
    held = {n for r in read_records(state_dir) if r["user"] == account for n in r["nodes"]}
    jobs_dir = os.path.join(state_dir, "jobs")
    for other in sorted(os.listdir(jobs_dir)) if os.path.isdir(jobs_dir) else []:
        record = read_job(state_dir, other) if JOB.fullmatch(other) and other != job else None
        if record and record["account"] == account and supervised(state_dir, other):
            held.update(record["nodes"])
    for node in nodes:
        if node not in held and os.path.exists(node):
            system.run(["setfacl", "-x", f"u:{account}", node])
