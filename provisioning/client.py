"""Typed calls of the host agent, over SSH or locally (a portal running on the GPU host itself).

The agent speaks one JSON object in, one JSON object out (docs/agent.md). A runner carries the
request's bytes to the agent and brings its answer back; the client builds requests only from
typed values and turns the agent's errors into `AgentError`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from provisioning.transport import Target, Transport, TransportError

__all__ = ["AgentClient", "AgentError", "DeviceRef", "local_runner", "ssh_runner"]

Runner = Callable[[bytes], tuple[int, bytes, bytes]]  # stdin -> (exit status, stdout, stderr)

# The local agent is slow only when a probe is (a cold driver); bound it like an SSH command.
LOCAL_TIMEOUT_S = 120


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

    def run(request: bytes) -> tuple[int, bytes, bytes]:
        result = transport.call(target, None, request)
        return result.exit_status, result.stdout, result.stderr

    return run


def local_runner(argv: Sequence[str]) -> Runner:
    """Run the agent on this machine (single-machine mode), typically through `sudo -n`."""

    def run(request: bytes) -> tuple[int, bytes, bytes]:
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


class AgentClient:
    def __init__(self, runner: Runner):
        self._run = runner

    def call(self, verb: str, **fields) -> dict:
        """One request; raises AgentError for a refusal, TransportError if the host is away."""
        status, out, err = self._run(json.dumps({"verb": verb, **fields}).encode())
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
    ) -> dict:
        return self.call(
            "grant",
            session=session,
            user=user,
            keys=list(keys),
            stack=stack,
            devices=[d.as_dict() for d in devices],
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
    ) -> dict:
        return self.call(
            "job-start", job=job, account=account, stack=stack,
            devices=[d.as_dict() for d in devices], script=script, env=env,
            walltime_s=walltime_s, grace_s=grace_s, input=input,
        )  # fmt: skip

    def job_status(self, *, job: str) -> dict:
        return self.call("job-status", job=job)

    def job_stop(self, *, job: str, grace_s: int) -> dict:
        return self.call("job-stop", job=job, grace_s=grace_s)

    def job_logs(self, *, job: str, offset: int, limit: int) -> dict:
        return self.call("job-logs", job=job, offset=offset, limit=limit)

    def job_output(self, *, job: str, limit: int) -> dict:
        return self.call("job-output", job=job, limit=limit)

    def job_clean(self, *, job: str) -> dict:
        return self.call("job-clean", job=job)

    def telemetry(self) -> dict:
        return self.call("telemetry")

    def kill_process(self, *, pid: int, user: str) -> dict:
        return self.call("kill-process", pid=pid, user=user)

    def health_check(self, *, stack: str, device: DeviceRef) -> dict:
        return self.call("health-check", stack=stack, device=device.as_dict())
