"""Typed calls of the host agent, over SSH or locally (a portal running on the GPU host itself).

The agent speaks one JSON line in, one JSON line out (docs/agent.md); a request may announce
raw bytes after its line (an input archive), an answer too (an output archive). A runner
carries the request's bytes to the agent, streams a body after them and an answer's bytes to
a sink, a block at a time; the client builds requests only from typed values and turns the
agent's errors into `AgentError`.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

from provisioning.transport import Target, Transport, TransportError

__all__ = [
    "AccountState",
    "AgentClient",
    "AgentError",
    "DeviceInfo",
    "DeviceProcess",
    "DeviceRef",
    "Granted",
    "HealthCheckResult",
    "Inventory",
    "JobCleaned",
    "JobStarted",
    "JobState",
    "JobStatus",
    "Killed",
    "LogChunk",
    "OutputInfo",
    "ProbeFailure",
    "Revoked",
    "Sample",
    "SessionState",
    "StackInfo",
    "Status",
    "Telemetry",
    "local_runner",
    "ssh_runner",
]


class Runner(Protocol):
    def __call__(
        self, request: bytes, *, body: BinaryIO | None = None, sink: BinaryIO | None = None
    ) -> tuple[int, bytes, bytes]:
        """stdin (then body's bytes) -> (exit status, stdout (its first line with a sink),
        stderr); with a sink, what follows stdout's first line is written to it."""


# The local agent is slow only when a probe is (a cold driver); bound it like an SSH command.
LOCAL_TIMEOUT_S = 120
# A streamed call moves up to GiBs between local disks.
LOCAL_STREAM_TIMEOUT_S = 1800
STREAM_CHUNK = 256 * 1024


class AgentError(Exception):
    """The agent refused or failed a request; `code` is its machine-readable reason."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass(frozen=True)
class DeviceRef:
    vendor: str
    index: int

    def as_dict(self) -> dict:
        return {"vendor": self.vendor, "index": self.index}


def ssh_runner(transport: Transport, target: Target) -> Runner:
    """Send the request over SSH; the portal's key is forced to run the agent on the host."""

    def run(request: bytes, *, body=None, sink=None) -> tuple[int, bytes, bytes]:
        result = transport.call(target, None, request, body=body, sink=sink)
        return result.exit_status, result.stdout, result.stderr

    return run


def local_runner(argv: Sequence[str]) -> Runner:
    """Run the agent on this machine (single-machine mode), typically through `sudo -n`."""

    def run(request: bytes, *, body=None, sink=None) -> tuple[int, bytes, bytes]:
        if body is not None or sink is not None:
            return _run_streamed(list(argv), request, body, sink)
        try:
            done = subprocess.run(  # noqa: S603 - a fixed argv from settings, no shell
                list(argv), input=request, capture_output=True, timeout=LOCAL_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise TransportError(f"the local agent ran longer than {LOCAL_TIMEOUT_S}s") from exc
        except OSError as exc:
            raise TransportError(f"the local agent cannot be run: {exc}") from exc
        return done.returncode, done.stdout, done.stderr

    return run


def _run_streamed(
    argv: list[str], request: bytes, body: BinaryIO | None, sink: BinaryIO | None
) -> tuple[int, bytes, bytes]:
    """The local agent with a body after the request and/or its answer's bytes to a sink."""
    try:
        process = subprocess.Popen(  # noqa: S603 - a fixed argv from settings, no shell
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise TransportError(f"the local agent cannot be run: {exc}") from exc
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    if stdin is None or stdout is None or stderr is None:
        raise AssertionError("unreachable")  # all three are pipes
    err = bytearray()

    def feed() -> None:
        try:
            stdin.write(request)
            if body is not None:
                shutil.copyfileobj(body, stdin, STREAM_CHUNK)
        except BrokenPipeError:
            pass  # it answered without reading everything (a refusal): the answer says why
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def drain() -> None:
        err.extend(stderr.read())

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, drain)]
    for thread in threads:
        thread.start()
    timer = threading.Timer(LOCAL_STREAM_TIMEOUT_S, process.kill)
    timer.start()
    try:
        out = stdout.readline()
        if sink is None:
            out += stdout.read()
        else:
            shutil.copyfileobj(stdout, sink, STREAM_CHUNK)
        status = process.wait()
        for thread in threads:
            thread.join()
    finally:
        timer.cancel()
    if status < 0:
        raise TransportError(f"the local agent was killed (signal {-status})")
    return status, out, bytes(err)


# -- answers ------------------------------------------------------------------------------------
#
# Each verb's answer is read once, here, into frozen dataclasses (the shapes of docs/agent.md):
# callers never probe a dict. A field that is missing or of the wrong type is the agent's fault
# (or a different agent's), and is refused as AgentError("bad_answer", "<verb>: <field>: ...").

_REQUIRED = object()


def _bad(where: str, message: str) -> AgentError:
    return AgentError("bad_answer", f"{where}: {message}")


def _kind_of(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _is(value: object, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "bool": bool, "list": list, "dict": dict}[kind])


def _field(obj: dict, name: str, kind: str, where: str, *, null=False, default=_REQUIRED):
    """obj[name], checked to be of kind ("str", "int", "number", "bool", "list", "dict"), or
    None where null; a field the agent may leave out gives default."""
    if name not in obj:
        if default is _REQUIRED:
            raise _bad(f"{where}.{name}" if where else name, "missing")
        return default
    value = obj[name]
    if (value is None and null) or _is(value, kind):
        return value
    wanted = f"{kind} or null" if null else kind
    raise _bad(f"{where}.{name}", f"a {wanted} was expected, not {_kind_of(value)}")


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(where, f"an object was expected, not {_kind_of(value)}")
    return value


def _objects(obj: dict, name: str, where: str) -> list[tuple[str, dict]]:
    """The objects of a list field, each with where it is ("status.sessions[2]")."""
    return [
        (f"{where}.{name}[{i}]", _object(item, f"{where}.{name}[{i}]"))
        for i, item in enumerate(_field(obj, name, "list", where))
    ]


def _device_ref(obj: dict, where: str) -> DeviceRef:
    return DeviceRef(_field(obj, "vendor", "str", where), _field(obj, "index", "int", where))


@dataclass(frozen=True)
class SessionState:
    """A session the host has a record of (`status`)."""

    session: str
    user: str
    stack: str
    devices: tuple[DeviceRef, ...]
    keys_sha256: str
    end: int | None  # whole Unix seconds; None in a record of an older portal
    alive: bool  # the schroot session exists


@dataclass(frozen=True)
class AccountState:
    """An account of the agent's group, with its process count (`status`)."""

    user: str
    locked: bool
    processes: int


@dataclass(frozen=True)
class JobState:
    job: str
    running: bool


@dataclass(frozen=True)
class Status:
    sessions: tuple[SessionState, ...]
    users: tuple[AccountState, ...]
    jobs: tuple[JobState, ...]

    @classmethod
    def parse(cls, answer: dict) -> Status:
        w = "status"
        sessions = tuple(
            SessionState(
                session=_field(s, "session", "str", at),
                user=_field(s, "user", "str", at),
                stack=_field(s, "stack", "str", at),
                devices=tuple(_device_ref(d, where) for where, d in _objects(s, "devices", at)),
                keys_sha256=_field(s, "keys_sha256", "str", at),
                end=_field(s, "end", "int", at, null=True, default=None),
                alive=_field(s, "alive", "bool", at),
            )
            for at, s in _objects(answer, "sessions", w)
        )
        users = tuple(
            AccountState(
                user=_field(u, "user", "str", at),
                locked=_field(u, "locked", "bool", at),
                processes=_field(u, "processes", "int", at),
            )
            for at, u in _objects(answer, "users", w)
        )
        jobs = tuple(
            JobState(job=_field(j, "job", "str", at), running=_field(j, "running", "bool", at))
            for at, j in _objects(answer, "jobs", w)
        )
        return cls(sessions, users, jobs)


@dataclass(frozen=True)
class DeviceInfo:
    """A device as the host's probe reports it (provisioning.gpu.Device)."""

    vendor: str
    index: int
    model: str = ""
    memory_mib: int = 0
    uuid: str = ""
    pci_bus_id: str = ""
    arch: str = ""


@dataclass(frozen=True)
class StackInfo:
    name: str
    chroot: str
    present: bool
    # What is installed in the chroot (host.stack_digest); "" where the chroot has no dpkg
    # status, or an older agent does not say.
    digest: str = ""


@dataclass(frozen=True)
class Inventory:
    devices: tuple[DeviceInfo, ...]
    stacks: tuple[StackInfo, ...]
    agent_version: str
    hostname: str
    kernel: str
    # The configuration's device map (vendor -> index -> nodes, vendor -> shared nodes); None
    # where an older agent does not report it.
    device_nodes: dict | None
    shared_nodes: dict | None

    @classmethod
    def parse(cls, answer: dict) -> Inventory:
        w = "inventory"
        devices = tuple(
            DeviceInfo(
                vendor=_field(d, "vendor", "str", at),
                index=_field(d, "index", "int", at),
                model=_field(d, "model", "str", at, default=""),
                memory_mib=_field(d, "memory_mib", "int", at, default=0),
                uuid=_field(d, "uuid", "str", at, default=""),
                pci_bus_id=_field(d, "pci_bus_id", "str", at, default=""),
                arch=_field(d, "arch", "str", at, default=""),
            )
            for at, d in _objects(answer, "devices", w)
        )
        stacks = tuple(
            StackInfo(
                name=_field(s, "name", "str", at),
                chroot=_field(s, "chroot", "str", at),
                present=_field(s, "present", "bool", at),
                digest=_field(s, "digest", "str", at, default=""),
            )
            for at, s in _objects(answer, "stacks", w)
        )
        device_map = _field(answer, "device_map", "dict", w, null=True, default=None) or {}
        at = f"{w}.device_map"
        return cls(
            devices=devices,
            stacks=stacks,
            agent_version=_field(answer, "agent_version", "str", w, default=""),
            hostname=_field(answer, "hostname", "str", w, default=""),
            kernel=_field(answer, "kernel", "str", w, default=""),
            device_nodes=_field(device_map, "devices", "dict", at, null=True, default=None),
            shared_nodes=_field(device_map, "shared_nodes", "dict", at, null=True, default=None),
        )


def _reading(value: object) -> float | None:
    """A device tool's value as a reading, or None: a host's answer is checked like any input,
    and one odd value (NaN, a negative power) drops that value, not the whole reading."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _whole(value: object) -> int | None:
    number = _reading(value)
    return int(number) if number is not None and number < 2**31 else None


@dataclass(frozen=True)
class DeviceProcess:
    pid: int
    user: str | None  # None: unknown (ended meanwhile), or not a name
    used_memory_mib: int | None
    system: bool  # an account below uid 1000: never a squatter


@dataclass(frozen=True)
class Sample:
    """One reading of one device (provisioning.gpu.Sample); None where nothing was reported."""

    vendor: str
    index: int
    utilization_pct: float | None
    memory_used_mib: int | None
    temperature_c: float | None
    power_w: float | None
    processes: tuple[DeviceProcess, ...] = ()


@dataclass(frozen=True)
class ProbeFailure:
    vendor: str
    message: str


@dataclass(frozen=True)
class Telemetry:
    samples: tuple[Sample, ...]
    errors: tuple[ProbeFailure, ...]

    @classmethod
    def parse(cls, answer: dict) -> Telemetry:
        """The lists must be there; within them, a sample that does not say which device it
        is, or a process without a pid, is dropped, and an odd value becomes None."""
        w = "telemetry"
        samples = []
        for sample in _field(answer, "samples", "list", w):
            if not isinstance(sample, dict) or not isinstance(sample.get("vendor"), str):
                continue
            index = sample.get("index")
            if isinstance(index, bool) or not isinstance(index, int):
                continue
            processes = []
            for process in sample.get("processes") or []:
                pid = process.get("pid") if isinstance(process, dict) else None
                if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
                    continue
                user = process.get("user")
                processes.append(
                    DeviceProcess(
                        pid=pid,
                        user=user[:64] if isinstance(user, str) else None,
                        used_memory_mib=_whole(process.get("used_memory_mib")),
                        system=process.get("system") is True,
                    )
                )
            samples.append(
                Sample(
                    vendor=sample["vendor"][:16],
                    index=index,
                    utilization_pct=_reading(sample.get("utilization_pct")),
                    memory_used_mib=_whole(sample.get("memory_used_mib")),
                    temperature_c=_reading(sample.get("temperature_c")),
                    power_w=_reading(sample.get("power_w")),
                    processes=tuple(processes),
                )
            )
        errors = tuple(
            ProbeFailure(str(e.get("vendor"))[:16], str(e.get("message"))[:2000])
            for e in _field(answer, "errors", "list", w)
            if isinstance(e, dict)
        )
        return cls(tuple(samples), errors)

    def as_dict(self) -> dict:
        """The reading as the portal stores it (Host.telemetry): JSON's lists, not tuples."""
        return {
            "samples": [
                {**asdict(s), "processes": [asdict(p) for p in s.processes]} for s in self.samples
            ],
            "errors": [asdict(e) for e in self.errors],
        }


@dataclass(frozen=True)
class HealthCheckResult:
    ran: bool
    passed: bool | None = None  # None: not run
    exit_status: int | None = None
    output: str = ""
    reason: str = ""  # why it did not run

    @classmethod
    def parse(cls, answer: dict) -> HealthCheckResult:
        w = "health-check"
        if not _field(answer, "ran", "bool", w):
            return cls(ran=False, reason=_field(answer, "reason", "str", w, default=""))
        return cls(
            ran=True,
            passed=_field(answer, "passed", "bool", w),
            exit_status=_field(answer, "exit_status", "int", w, null=True),
            output=_field(answer, "output", "str", w, default=""),
        )


@dataclass(frozen=True)
class Granted:
    session: str
    user: str
    schroot_session: str
    env: dict[str, str]

    @classmethod
    def parse(cls, answer: dict) -> Granted:
        w = "grant"
        return cls(
            session=_field(answer, "session", "str", w),
            user=_field(answer, "user", "str", w),
            schroot_session=_field(answer, "schroot_session", "str", w),
            env=_field(answer, "env", "dict", w),
        )


@dataclass(frozen=True)
class Killed:
    """What `revoke` and `kill-process` ended."""

    killed: int

    @classmethod
    def parse(cls, answer: dict, verb: str) -> Killed:
        return cls(killed=_field(answer, "killed", "int", verb))


Revoked = Killed


@dataclass(frozen=True)
class JobStarted:
    job: str
    started: bool  # False: it was started before (the verb is idempotent)

    @classmethod
    def parse(cls, answer: dict) -> JobStarted:
        w = "job-start"
        return cls(_field(answer, "job", "str", w), _field(answer, "started", "bool", w))


JOB_STATES = ("running", "succeeded", "failed", "timed_out", "stopped", "unknown")


@dataclass(frozen=True)
class JobStatus:
    job: str
    state: str  # one of JOB_STATES
    exit_status: int | None = None
    started_at: str | None = None  # ISO 8601 UTC, as the host wrote it
    ended_at: str | None = None
    reason: str | None = None
    log_bytes: int = 0

    @property
    def running(self) -> bool:
        return self.state == "running"

    @classmethod
    def parse(cls, answer: dict, verb: str = "job-status") -> JobStatus:
        state = _field(answer, "state", "str", verb)
        if state not in JOB_STATES:
            raise _bad(f"{verb}.state", f"{state!r} is not one of {', '.join(JOB_STATES)}")
        return cls(
            job=_field(answer, "job", "str", verb),
            state=state,
            exit_status=_field(answer, "exit_status", "int", verb, null=True, default=None),
            started_at=_field(answer, "started_at", "str", verb, null=True, default=None),
            ended_at=_field(answer, "ended_at", "str", verb, null=True, default=None),
            reason=_field(answer, "reason", "str", verb, null=True, default=None),
            log_bytes=_field(answer, "log_bytes", "int", verb, default=0),
        )


@dataclass(frozen=True)
class LogChunk:
    data: str
    offset: int  # where the next read starts
    eof: bool

    @classmethod
    def parse(cls, answer: dict) -> LogChunk:
        w = "job-logs"
        return cls(
            data=_field(answer, "data", "str", w),
            offset=_field(answer, "offset", "int", w),
            eof=_field(answer, "eof", "bool", w),
        )


@dataclass(frozen=True)
class OutputInfo:
    job: str
    bytes: int  # written to the sink
    too_large: bool  # over the limit: nothing was sent

    @classmethod
    def parse(cls, answer: dict) -> OutputInfo:
        w = "job-output"
        return cls(
            job=_field(answer, "job", "str", w),
            bytes=_field(answer, "bytes", "int", w),
            too_large=_field(answer, "too_large", "bool", w, default=False),
        )


@dataclass(frozen=True)
class JobCleaned:
    job: str
    removed: bool

    @classmethod
    def parse(cls, answer: dict) -> JobCleaned:
        w = "job-clean"
        return cls(_field(answer, "job", "str", w), _field(answer, "removed", "bool", w))


class AgentClient:
    def __init__(self, runner: Runner):
        self._run = runner

    def call(self, verb: str, **fields) -> dict:
        """One request, its answer raw; raises AgentError for a refusal, TransportError if the
        host is away. The verbs below read the answer into its type."""
        return self._call(verb, fields)

    def _call(
        self, verb: str, fields: dict, body: BinaryIO | None = None, sink: BinaryIO | None = None
    ) -> dict:
        request = json.dumps({"verb": verb, **fields}).encode() + b"\n"  # one line
        if body is None and sink is None:
            status, out, err = self._run(request)
        else:
            status, out, err = self._run(request, body=body, sink=sink)
        try:
            answer = json.loads(out)
        except ValueError:
            detail = (err or out).decode(errors="replace").strip()[-500:]
            raise AgentError(
                "bad_answer", f"the agent answered no JSON (exit {status}): {detail}"
            ) from None
        if not isinstance(answer, dict) or "ok" not in answer:
            raise AgentError("bad_answer", "the agent's answer has no 'ok' field")
        if not answer["ok"]:
            error = answer.get("error") or {}
            raise AgentError(str(error.get("code", "error")), str(error.get("message", "")))
        return answer

    def inventory(self) -> Inventory:
        return Inventory.parse(self.call("inventory"))

    def status(self) -> Status:
        return Status.parse(self.call("status"))

    def grant(
        self,
        *,
        session: str,
        user: str,
        keys: Sequence[str],
        stack: str,
        devices: Sequence[DeviceRef],
        end: datetime,
    ) -> Granted:
        """Open (or update) a session; the host revokes it by itself at `end`."""
        answer = self.call(
            "grant",
            session=session,
            user=user,
            keys=list(keys),
            stack=stack,
            devices=[d.as_dict() for d in devices],
            end=epoch_seconds(end),
        )
        return Granted.parse(answer)

    def revoke(self, *, session: str | None = None, user: str | None = None) -> Revoked:
        if (session is None) == (user is None):
            raise ValueError("revoke takes a session or a user")
        fields: dict[str, str | None] = {"session": session} if session else {"user": user}
        answer = self.call("revoke", **fields)
        return Killed.parse(answer, "revoke")

    def job_start(
        self,
        *,
        job: str,
        account: str,
        stack: str,
        devices: Sequence[DeviceRef],
        script: str,
        env: dict[str, str],
        walltime_s: int,
        grace_s: int,
        input: dict,
        archive: BinaryIO | None = None,
        array: tuple[int, int] | None = None,
        autopkgtest: dict | None = None,
    ) -> JobStarted:
        """input {"archive_bytes": N} goes with archive, a file whose next N bytes are sent
        after the request line, a block at a time. array: (the array's id, the task's index)
        for a task of a job array; sent only then, so a plain job reads as before.
        autopkgtest: {"dsc", "tests"} for a package test run, with an empty script and the
        package as the archive; sent only then."""
        if ("archive_bytes" in input) != (archive is not None):
            raise ValueError("input.archive_bytes and archive go together")
        fields = {
            "job": job, "account": account, "stack": stack,
            "devices": [d.as_dict() for d in devices], "script": script, "env": env,
            "walltime_s": walltime_s, "grace_s": grace_s, "input": input,
        }  # fmt: skip
        if array is not None:
            fields["array"] = {"job": array[0], "task": array[1]}
        if autopkgtest is not None:
            fields["autopkgtest"] = autopkgtest
        return JobStarted.parse(self._call("job-start", fields, body=archive))

    def job_status(self, *, job: str) -> JobStatus:
        return JobStatus.parse(self.call("job-status", job=job))

    def job_stop(self, *, job: str, grace_s: int) -> JobStatus:
        return JobStatus.parse(self.call("job-stop", job=job, grace_s=grace_s), "job-stop")

    def job_logs(self, *, job: str, offset: int, limit: int) -> LogChunk:
        return LogChunk.parse(self.call("job-logs", job=job, offset=offset, limit=limit))

    def job_output(self, *, job: str, limit: int, sink: BinaryIO) -> OutputInfo:
        """The answer; the archive's `bytes` bytes (none when too large) are written to sink."""
        start = sink.tell()
        info = OutputInfo.parse(self._call("job-output", {"job": job, "limit": limit}, sink=sink))
        got = sink.tell() - start
        if got != (0 if info.too_large else info.bytes):
            raise AgentError(
                "bad_answer", f"job-output announced {info.bytes} bytes and sent {got}"
            )
        return info

    def job_clean(self, *, job: str) -> JobCleaned:
        return JobCleaned.parse(self.call("job-clean", job=job))

    def telemetry(self) -> Telemetry:
        return Telemetry.parse(self.call("telemetry"))

    def kill_process(self, *, pid: int, user: str) -> Killed:
        return Killed.parse(self.call("kill-process", pid=pid, user=user), "kill-process")

    def health_check(self, *, stack: str, device: DeviceRef) -> HealthCheckResult:
        return HealthCheckResult.parse(
            self.call("health-check", stack=stack, device=device.as_dict())
        )


def epoch_seconds(moment: datetime) -> int:
    """An aware time as whole Unix seconds, rounded up: a session never ends early."""
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is needed")
    return math.ceil(moment.timestamp())
