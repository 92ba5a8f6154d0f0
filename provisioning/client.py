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
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

from provisioning.transport import Target, Transport, TransportError

__all__ = ["AgentClient", "AgentError", "DeviceRef", "local_runner", "ssh_runner"]


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
    err = bytearray()

    def feed() -> None:
        try:
            process.stdin.write(request)
            if body is not None:
                shutil.copyfileobj(body, process.stdin, STREAM_CHUNK)
        except BrokenPipeError:
            pass  # it answered without reading everything (a refusal): the answer says why
        finally:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()

    def drain() -> None:
        err.extend(process.stderr.read())

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, drain)]
    for thread in threads:
        thread.start()
    timer = threading.Timer(LOCAL_STREAM_TIMEOUT_S, process.kill)
    timer.start()
    try:
        out = process.stdout.readline()
        if sink is None:
            out += process.stdout.read()
        else:
            shutil.copyfileobj(process.stdout, sink, STREAM_CHUNK)
        status = process.wait()
        for thread in threads:
            thread.join()
    finally:
        timer.cancel()
    if status < 0:
        raise TransportError(f"the local agent was killed (signal {-status})")
    return status, out, bytes(err)


class AgentClient:
    def __init__(self, runner: Runner):
        self._run = runner

    def call(self, verb: str, **fields) -> dict:
        """One request; raises AgentError for a refusal, TransportError if the host is away."""
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

    def inventory(self) -> dict:
        return self.call("inventory")

    def status(self) -> dict:
        return self.call("status")

    def grant(
        self,
        *,
        session: str,
        user: str,
        keys: Sequence[str],
        stack: str,
        devices: Sequence[DeviceRef],
        end: datetime,
    ) -> dict:
        """Open (or update) a session; the host revokes it by itself at `end`."""
        return self.call(
            "grant",
            session=session,
            user=user,
            keys=list(keys),
            stack=stack,
            devices=[d.as_dict() for d in devices],
            end=epoch_seconds(end),
        )

    def revoke(self, *, session: str | None = None, user: str | None = None) -> dict:
        if (session is None) == (user is None):
            raise ValueError("revoke takes a session or a user")
        return self.call("revoke", **({"session": session} if session else {"user": user}))

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
    ) -> dict:
        """input {"archive_bytes": N} goes with archive, a file whose next N bytes are sent
        after the request line, a block at a time."""
        if ("archive_bytes" in input) != (archive is not None):
            raise ValueError("input.archive_bytes and archive go together")
        fields = {
            "job": job, "account": account, "stack": stack,
            "devices": [d.as_dict() for d in devices], "script": script, "env": env,
            "walltime_s": walltime_s, "grace_s": grace_s, "input": input,
        }  # fmt: skip
        return self._call("job-start", fields, body=archive)

    def job_status(self, *, job: str) -> dict:
        return self.call("job-status", job=job)

    def job_stop(self, *, job: str, grace_s: int) -> dict:
        return self.call("job-stop", job=job, grace_s=grace_s)

    def job_logs(self, *, job: str, offset: int, limit: int) -> dict:
        return self.call("job-logs", job=job, offset=offset, limit=limit)

    def job_output(self, *, job: str, limit: int, sink: BinaryIO) -> dict:
        """The answer; the archive's `bytes` bytes (none when too large) are written to sink."""
        start = sink.tell()
        answer = self._call("job-output", {"job": job, "limit": limit}, sink=sink)
        got = sink.tell() - start
        if got != (0 if answer.get("too_large") else answer.get("bytes", 0)):
            raise AgentError("bad_answer", f"job-output announced {answer.get('bytes')} bytes "
                             f"and sent {got}")  # fmt: skip
        return answer

    def job_clean(self, *, job: str) -> dict:
        return self.call("job-clean", job=job)

    def telemetry(self) -> dict:
        return self.call("telemetry")

    def kill_process(self, *, pid: int, user: str) -> dict:
        return self.call("kill-process", pid=pid, user=user)

    def health_check(self, *, stack: str, device: DeviceRef) -> dict:
        return self.call("health-check", stack=stack, device=device.as_dict())


def epoch_seconds(moment: datetime) -> int:
    """An aware time as whole Unix seconds, rounded up: a session never ends early."""
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is needed")
    return math.ceil(moment.timestamp())
