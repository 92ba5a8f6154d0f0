"""The training-job verbs of porterbox-hostctl: job-start, -status, -stop, -logs, -clean.

docs/agent.md, "Training jobs". As in hostctl, validation is pure and comes first; execution
acts on the cleaned values only. A job's life belongs to its supervisor (``jobrun``), which
job-start starts detached; the other verbs read what the supervisor records, or ask it to stop.

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
import posixpath
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import BinaryIO

import provisioning
from provisioning.agent import hostctl as h
from provisioning.agent import read_records

# "j<job id>", or "j<job id>-<attempt>" once requeued; never a reservation's "r<id>".
JOB = re.compile(r"j[1-9][0-9]{0,17}(-[1-9][0-9]{0,2})?")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
MAX_ENV = 64
MAX_ENV_VALUE_BYTES = 4 * 1024
MAX_SCRIPT_BYTES = 64 * 1024
MAX_WALLTIME_S = 30 * 24 * 3600
MAX_GRACE_S = 600
MAX_LOG_CHUNK = 1024 * 1024
# An archive input travels as raw bytes after the request line and is spooled to disk, never
# held in memory: this bounds what one request may announce, the portal's limit is lower.
MAX_ARCHIVE_BYTES = 4 * 1024**3
SPOOL_CHUNK = 1024 * 1024
# A few hundred KiB of gzip can unpack to a GiB; past these the archive is refused unread.
MAX_ARCHIVE_MEMBERS = 100_000
MAX_ARCHIVE_CONTENT = 4 * 1024**3
GIT_HOST = r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}(?::[0-9]{1,5})?"
GIT_URL = re.compile(rf"https://{GIT_HOST}(?:/[A-Za-z0-9_.~%+=,:@/-]*)?")
MAX_GIT_URL = 1000
GIT_REF = re.compile(r"[A-Za-z0-9._/-]{1,100}")

# What the loader, the shell or an interpreter reads before the script's first line, and what
# the agent sets itself (the devices' selection, the account, the output directory).
DENIED_ENV = frozenset(
    {
        *("PATH", "HOME", "SHELL", "USER", "LOGNAME", "IFS", "ENV", "BASH_ENV", "CDPATH"),
        *("SHELLOPTS", "BASHOPTS", "PS4", "GLIBC_TUNABLES", "GCONV_PATH", "NODE_OPTIONS"),
        *h.VISIBLE_DEVICES.values(),
        *("CUDA_DEVICE_ORDER", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"),
        *("NVIDIA_VISIBLE_DEVICES", "ONEAPI_DEVICE_SELECTOR"),
    }
)
DENIED_ENV_PREFIXES = ("LD_", "PYTHON", "PERL5", "RUBY", "PORTERBOX_", "SCHROOT_")
# What glibc removes from the environment of a setuid program (its unsecvars.h), as schroot
# is: refused, rather than silently missing in the job.
SETUID_DROPPED_ENV = frozenset(
    {
        *("GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE", "NIS_PATH"),
        *("NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR"),
    }
)

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


def validate(verb: str, fields: dict, config: h.Config) -> dict:
    """The cleaned fields of a job verb (the verb and its field names checked by hostctl)."""
    missing = h.FIELDS[verb] - set(fields)
    if missing:
        raise h.AgentError("bad_request", f"{sorted(missing)[0]}: required for {verb}")
    cleaned: dict = {"job": check_job(fields["job"])}
    if verb == "job-start":
        cleaned.update(
            account=check_account(fields["account"], config),
            stack=h.check_stack(fields["stack"], config),
            devices=h.check_devices(fields["devices"], config),
            script=check_script(fields["script"]),
            env=check_env(fields["env"]),
            walltime_s=check_walltime(fields["walltime_s"], config),
            grace_s=check_grace(fields["grace_s"]),
            input=check_input(fields["input"]),
        )
    elif verb == "job-stop":
        cleaned["grace_s"] = check_grace(fields["grace_s"])
    elif verb == "job-logs":
        cleaned["offset"] = _integer("offset", fields["offset"], 0, 2**62)
        cleaned["limit"] = _integer("limit", fields["limit"], 1, MAX_LOG_CHUNK)
    elif verb == "job-output":
        cleaned["limit"] = _integer("limit", fields["limit"], 1, MAX_OUTPUT_BYTES)
    return cleaned


def check_job(value: object) -> str:
    if not isinstance(value, str) or not JOB.fullmatch(value):
        raise h.AgentError("bad_job", f"job: must match ^{JOB.pattern}$")
    return value


def check_account(value: object, config: h.Config) -> str:
    """An account follows the rule of a grant's user."""
    try:
        return h.check_user(value, config)
    except h.AgentError as exc:
        raise h.AgentError("bad_account", "account" + exc.message.removeprefix("user")) from exc


def check_script(value: object) -> str:
    if not isinstance(value, str):
        raise h.AgentError("bad_script", "script: must be a string")
    if "\0" in value:
        raise h.AgentError("bad_script", "script: contains a NUL character")
    if len(_utf8(value, "bad_script", "script")) > MAX_SCRIPT_BYTES:
        raise h.AgentError("bad_script", "script: larger than 64 KiB")
    return value


def check_env(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_ENV:
        raise h.AgentError("bad_env", f"env: must be an object of at most {MAX_ENV} variables")
    for name, text in value.items():
        if not ENV_NAME.fullmatch(name):
            raise h.AgentError("bad_env", f"env: a name must match ^{ENV_NAME.pattern}$")
        if name in DENIED_ENV or name.startswith(DENIED_ENV_PREFIXES):
            raise h.AgentError("bad_env", f"env.{name}: set by the host, or read before the job")
        if name in SETUID_DROPPED_ENV:
            raise h.AgentError("bad_env", f"env.{name}: schroot (setuid) would not pass it on")
        if not isinstance(text, str) or "\0" in text:
            raise h.AgentError("bad_env", f"env.{name}: must be a string without NUL")
        if len(_utf8(text, "bad_env", f"env.{name}")) > MAX_ENV_VALUE_BYTES:
            raise h.AgentError("bad_env", f"env.{name}: longer than 4 KiB")
    return dict(sorted(value.items()))


def check_walltime(value: object, config: h.Config) -> int:
    return _integer("walltime_s", value, config.job_min_walltime_s, MAX_WALLTIME_S, "bad_walltime")


def check_grace(value: object) -> int:
    return _integer("grace_s", value, 0, MAX_GRACE_S, "bad_walltime")


INPUT_SHAPES = (set(), {"git"}, {"git", "ref"}, {"archive_bytes"})


def check_input(value: object) -> dict:
    """{}, {"git"} (the remote's default branch), {"git", "ref"}, or {"archive_bytes": N}: N raw
    bytes of a .tar.gz follow the request line on stdin (checked by receive_archive())."""
    if not isinstance(value, dict) or set(value) not in INPUT_SHAPES:
        message = 'input: must be {}, {"git"}, {"git", "ref"} or {"archive_bytes"}'
        raise h.AgentError("bad_input", message)
    if "archive_bytes" in value:
        size = value["archive_bytes"]
        return {
            "archive_bytes": _integer(
                "input.archive_bytes", size, 1, MAX_ARCHIVE_BYTES, "bad_input"
            )
        }
    if "git" in value:
        cleaned = {"git": check_git_url(value["git"])}
        if "ref" in value:
            cleaned["ref"] = check_git_ref(value["ref"])
        return cleaned
    return {}


def check_git_url(value: object) -> str:
    # https only: no ssh:// (it would use the host's keys), no file://, no ext:: helpers, and
    # nothing git could read as an option (--upload-pack=...); no credentials either.
    if not isinstance(value, str) or len(value) > MAX_GIT_URL or not GIT_URL.fullmatch(value):
        raise h.AgentError("bad_input", "input.git: must be an https:// URL without credentials")
    return value


def check_git_ref(value: object) -> str:
    if (
        not isinstance(value, str)
        or not GIT_REF.fullmatch(value)
        or value.startswith(("-", ".", "/"))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "/." in value
    ):
        raise h.AgentError("bad_input", f"input.ref: must be a branch or tag (^{GIT_REF.pattern}$)")
    return value


def check_archive(file: BinaryIO) -> None:
    """A .tar.gz whose members all stay inside input/; the checks tarfile's "data" filter and
    the supervisor repeat against the real file system when it is extracted. Read through
    from file (seekable), a block at a time: a GiB archive is never held in memory."""
    try:
        with tarfile.open(fileobj=file, mode="r:gz") as archive:
            content = 0
            for count, member in enumerate(archive, start=1):
                check_member(member)
                content += member.size
                if count > MAX_ARCHIVE_MEMBERS or content > MAX_ARCHIVE_CONTENT:
                    raise h.AgentError("bad_input", "input.archive: too many or too large members")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise h.AgentError("bad_input", f"input.archive: not a .tar.gz: {exc}") from exc


def receive_archive(config: h.Config, body: BinaryIO | None, size: int) -> str:
    """Spool the size bytes that follow the request line into a root-only file of the agent's
    (a block at a time) and check them as an archive; the file's path. Removed if refused."""
    if body is None:
        raise h.AgentError("bad_input", "input.archive_bytes: no archive follows the request")
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
                    raise h.AgentError("bad_input", message)
                file.write(chunk)
                left -= len(chunk)
        with open(path, "rb") as file:
            check_archive(file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return path


def check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    where = f"input.archive: member {name[:100]!r}"
    if name.startswith("/") or ".." in name.split("/"):
        raise h.AgentError("bad_input", f"{where} has an absolute path or a '..'")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise h.AgentError("bad_input", f"{where} is not a file, directory or link")
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
    else:
        target = posixpath.normpath(member.linkname) if member.islnk() else "."
    if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
        raise h.AgentError("bad_input", f"{where} links outside the archive")


def _integer(field: str, value: object, low: int, high: int, code: str = "bad_request") -> int:
    if type(value) is not int or not low <= value <= high:  # bool is an int subclass
        raise h.AgentError(code, f"{field}: must be an integer from {low} to {high}")
    return value


def _utf8(text: str, code: str, field: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: JSON can carry one, a file cannot
        raise h.AgentError(code, f"{field}: not valid Unicode") from exc


# -- execution ------------------------------------------------------------------------------


def execute(verb: str, fields: dict, config: h.Config, body: BinaryIO | None = None) -> dict:
    if verb == "job-start":
        return job_start(config, body=body, **fields)
    if verb == "job-stop":
        return job_stop(config, **fields)
    if verb == "job-logs":
        return job_logs(config, **fields)
    if verb == "job-clean":
        return job_clean(config, **fields)
    if verb == "job-output":
        return job_output(config, **fields)
    return job_status(config, **fields)


def job_start(
    config: h.Config, *, job, account, stack, devices, script, env, walltime_s, grace_s, input,
    body: BinaryIO | None = None,
) -> dict:  # fmt: skip
    if read_job(config.state_dir, job) is not None:
        return {"job": job, "started": False}  # already started: changes nothing, reads nothing
    archive = None
    if "archive_bytes" in input:
        # Spooled before the host lock: a slow upload never holds up grants and revokes.
        archive = receive_archive(config, body, input["archive_bytes"])
    try:
        return _start(config, job, account, stack, devices, script, env, walltime_s, grace_s,
                      input, archive)  # fmt: skip
    finally:
        if archive is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(archive)  # not taken: a job that started meanwhile


def _start(
    config, job, account, stack, devices, script, env, walltime_s, grace_s, input, archive
) -> dict:
    with h.host_lock(config):
        if read_job(config.state_dir, job) is not None:
            return {"job": job, "started": False}  # already started: changes nothing
        user = h.ensure_account(account, config)
        directory = job_dir(config.state_dir, job)
        h._make_dir(directory)
        lock = _hold_lock(directory)
        try:
            h.write_file(os.path.join(directory, "script"), script, mode=0o600)
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
                "nodes": h._device_nodes(config, devices),
                "visible": h.visible_devices_env(devices),
                "env": env,
                "walltime_s": walltime_s,
                "grace_s": grace_s,
                "input": {"archive": True} if archive is not None else input,
                "started_at": utc_now(),
            }
            # Written last: its existence is what makes a repeated job-start a no-op.
            h.write_file(record_path(config.state_dir, job), json.dumps(record), mode=0o600)
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
            env={**h.COMMAND_ENV, "PYTHONPATH": LIB},
            cwd="/",
        )
    finally:
        os.close(log)


def job_status(config: h.Config, *, job: str) -> dict:
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
    status = _read_json(os.path.join(job_dir(state_dir, job), "status.json"))
    if status is not None or supervised(state_dir, job):
        return status
    # The supervisor writes status.json before it lets the lock go: look again.
    status = _read_json(os.path.join(job_dir(state_dir, job), "status.json"))
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


def job_stop(config: h.Config, *, job: str, grace_s: int) -> dict:
    """Ask the supervisor to stop the job; wait a while for it to record the end."""
    if read_job(config.state_dir, job) is None:
        return job_status(config, job=job)  # unknown: nothing to stop
    directory = job_dir(config.state_dir, job)
    if _read_json(os.path.join(directory, "status.json")) is None:
        if supervised(config.state_dir, job):
            request = json.dumps({"grace_s": grace_s})
            h.write_file(os.path.join(directory, "stop.json"), request, mode=0o600)
            deadline = time.monotonic() + min(grace_s + 5, STOP_WAIT_S)
            while supervised(config.state_dir, job) and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            end_abandoned(config, job)
    return job_status(config, job=job)


def end_abandoned(config: h.Config, job: str) -> None:
    """Undo what a supervisor that died left: the session, its processes, the ACLs."""
    record = read_job(config.state_dir, job)
    with h.host_lock(config):
        if record is None or supervised(config.state_dir, job):
            return
        h.end_session(job)
        release_nodes(config.state_dir, record["account"], record["nodes"], job)
        if _read_json(os.path.join(job_dir(config.state_dir, job), "status.json")) is None:
            status = {**read_status(config.state_dir, job), "ended_at": utc_now()}
            h.write_file(status_path(config.state_dir, job), json.dumps(status), mode=0o644)


def job_logs(config: h.Config, *, job: str, offset: int, limit: int) -> dict:
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


def job_clean(config: h.Config, *, job: str) -> dict:
    directory = job_dir(config.state_dir, job)
    if not os.path.isdir(directory):
        return {"job": job, "removed": False}
    if supervised(config.state_dir, job):
        raise h.AgentError("job_running", f"job: {job} is running; job-stop it first")
    record = read_job(config.state_dir, job)
    if record is not None:
        end_abandoned(config, job)
        account = _account(record, config)
        if account is not None:
            work = os.path.join(account.pw_dir, "jobs", job)
            wait_child(as_account(account, lambda: shutil.rmtree(work, ignore_errors=True)))
    shutil.rmtree(directory)
    return {"job": job, "removed": True}


def job_output(config: h.Config, *, job: str, limit: int) -> dict:
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
        raise h.AgentError("job_running", f"job: {job} is running; its output is not final")
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

    pid = as_account(account, pack)
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
        if wait_child(pid) != 0 and not answer["too_large"]:
            raise h.AgentError("command_failed", f"job: packing the output of {job} failed")
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


def _account(record: dict, config: h.Config) -> pwd.struct_passwd | None:
    """The job's account if it is still the one the job ran as, and still the agent's."""
    try:
        account = pwd.getpwnam(record["account"])
    except KeyError:
        return None
    if account.pw_uid != record["uid"] or not h._in_group(account, config.group):
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
    return _read_json(record_path(state_dir, job))


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        return None


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
                raise h.AgentError("host_error", message) from None
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
            h.run(["setfacl", "-x", f"u:{account}", node])


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
