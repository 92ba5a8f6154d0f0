"""A fake host agent for unit tests of the reconcile loop: the client's interface and types, and
a host kept in memory.

`FakeAgent` answers every typed verb of `provisioning.client.AgentClient` with the same
dataclasses, from an in-memory host (sessions, accounts, jobs, a telemetry reading) that the
verbs change as docs/agent.md says the real agent does: a grant opens or updates a session and
unlocks its user, a revoke ends it and locks the user when it was their last, a job runs until
the test ends it (`finish_job`). Every call is recorded (`calls`, `called`). It can be told to
fail: `unreachable` makes every call a TransportError, `refuse(verb, code)` makes a verb an
AgentError with that code. The host tests (`test_*_on_host.py`) stay the proof that the real
agent behaves so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import BinaryIO

from provisioning.accounts import keys_digest
from provisioning.client import (
    AccountState,
    AgentClient,
    AgentError,
    DeviceRef,
    Granted,
    HealthCheckResult,
    Inventory,
    JobCleaned,
    JobStarted,
    JobState,
    JobStatus,
    Killed,
    LogChunk,
    OutputInfo,
    SessionState,
    Status,
    Telemetry,
    epoch_seconds,
)
from provisioning.transport import TransportError


@dataclass
class FakeJob:
    account: str
    stack: str
    devices: tuple[DeviceRef, ...]
    script: str
    env: dict[str, str]
    walltime_s: int
    input: dict
    archive: bytes | None
    array: tuple[int, int] | None = None
    state: str = "running"
    exit_status: int | None = None
    reason: str | None = None
    log: bytes = b""
    output: bytes = b""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass
class Call:
    verb: str
    fields: dict


@dataclass
class FakeAgent(AgentClient):
    """One host's agent. Its state is plain data that a test may set and read."""

    name: str = "fake"
    sessions: dict[str, SessionState] = field(default_factory=dict)
    users: dict[str, AccountState] = field(default_factory=dict)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    reading: Telemetry = field(default_factory=lambda: Telemetry((), ()))
    inventory_answer: Inventory | None = None
    health: HealthCheckResult = field(default_factory=lambda: HealthCheckResult(ran=False))
    unreachable: bool = False
    refusals: dict[str, AgentError] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    # -- what a test tells it ---------------------------------------------------------------------

    def refuse(self, verb: str, code: str = "command_failed", message: str = "refused") -> None:
        """Answer every later call of verb with AgentError(code)."""
        self.refusals[verb] = AgentError(code, message)

    def finish_job(
        self, name: str, state: str = "succeeded", exit_status: int | None = 0, **fields
    ) -> None:
        """The job's script ends on the host (its supervisor records how)."""
        job = self.jobs[name]
        job.state, job.exit_status = state, exit_status
        for key, value in fields.items():
            setattr(job, key, value)

    def called(self, verb: str) -> list[dict]:
        """The fields of every call of verb, in order."""
        return [c.fields for c in self.calls if c.verb == verb]

    def _enter(self, verb: str, **fields) -> None:
        self.calls.append(Call(verb, fields))
        if self.unreachable:
            raise TransportError(f"{self.name}: connection refused")
        if verb in self.refusals:
            raise self.refusals[verb]

    def _ensure_account(self, user: str) -> None:
        current = self.users.get(user, AccountState(user, locked=True, processes=0))
        self.users[user] = replace(current, locked=False)

    # -- the verbs ------------------------------------------------------------------------------

    def call(self, verb: str, **fields) -> dict:
        raise AssertionError(f"the loop should use the typed verb, not call({verb!r})")

    def inventory(self) -> Inventory:
        self._enter("inventory")
        if self.inventory_answer is None:
            raise AgentError("probe_failed", "devices: no inventory set in the fake")
        return self.inventory_answer

    def status(self) -> Status:
        self._enter("status")
        return Status(
            sessions=tuple(self.sessions.values()),
            users=tuple(self.users[u] for u in sorted(self.users)),
            jobs=tuple(JobState(name, job.running) for name, job in sorted(self.jobs.items())),
        )

    def telemetry(self) -> Telemetry:
        self._enter("telemetry")
        return self.reading

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
        fields = {"session": session, "user": user, "keys": list(keys), "stack": stack,
                  "devices": list(devices), "end": epoch_seconds(end)}  # fmt: skip
        self._enter("grant", **fields)
        previous = self.sessions.get(session)
        if previous and (previous.user, previous.stack) != (user, stack):
            raise AgentError("session_conflict", "session: already granted to another user")
        self._ensure_account(user)
        self.sessions[session] = SessionState(
            session=session,
            user=user,
            stack=stack,
            devices=tuple(devices),
            keys_sha256=keys_digest(list(keys)),
            end=epoch_seconds(end),
            alive=True,
        )
        return Granted(session, user, f"porterbox-{session}", {})

    def revoke(self, *, session: str | None = None, user: str | None = None) -> Killed:
        fields: dict[str, str | None] = {"session": session} if session else {"user": user}
        self._enter("revoke", **fields)
        if session is not None:
            found = self.sessions.pop(session, None)
            if found is None:
                return Killed(0)
            user = found.user
            if any(s.user == user for s in self.sessions.values()):
                return Killed(0)
        else:
            assert user is not None  # as the client: a session or a user
            for name in [n for n, s in self.sessions.items() if s.user == user]:
                del self.sessions[name]
        account = self.users.get(user)
        if account is None:
            return Killed(0)
        self.users[user] = AccountState(user, locked=True, processes=0)
        return Killed(account.processes)

    def kill_process(self, *, pid: int, user: str) -> Killed:
        self._enter("kill-process", pid=pid, user=user)
        return Killed(1)

    def health_check(self, *, stack: str, device: DeviceRef) -> HealthCheckResult:
        self._enter("health-check", stack=stack, device=device)
        return self.health

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
        fields = {"job": job, "account": account, "stack": stack, "devices": list(devices),
                  "script": script, "env": env, "walltime_s": walltime_s, "grace_s": grace_s,
                  "input": input}  # fmt: skip
        if array is not None:  # as the client sends it: only for a task of an array
            fields["array"] = array
        if autopkgtest is not None:  # likewise: only for a package test run
            fields["autopkgtest"] = autopkgtest
        self._enter("job-start", **fields)
        if job in self.jobs:
            return JobStarted(job, started=False)
        self._ensure_account(account)
        self.jobs[job] = FakeJob(
            account, stack, tuple(devices), script, dict(env), walltime_s, dict(input),
            archive.read() if archive is not None else None, array,
        )  # fmt: skip
        return JobStarted(job, started=True)

    def _job_status(self, name: str) -> JobStatus:
        job = self.jobs.get(name)
        if job is None:
            return JobStatus(name, "unknown")
        return JobStatus(
            name, job.state, exit_status=job.exit_status, reason=job.reason,
            started_at="2026-01-01T00:00:00Z", log_bytes=len(job.log),
        )  # fmt: skip

    def job_status(self, *, job: str) -> JobStatus:
        self._enter("job-status", job=job)
        return self._job_status(job)

    def job_stop(self, *, job: str, grace_s: int) -> JobStatus:
        self._enter("job-stop", job=job, grace_s=grace_s)
        found = self.jobs.get(job)
        if found is not None and found.running:
            found.state, found.reason = "stopped", "stopped by the portal"
        return self._job_status(job)

    def job_logs(self, *, job: str, offset: int, limit: int) -> LogChunk:
        self._enter("job-logs", job=job, offset=offset, limit=limit)
        found = self.jobs.get(job)
        if found is None:
            return LogChunk("", offset, eof=True)
        data = found.log[offset : offset + limit]
        end = offset + len(data)
        eof = not found.running and end >= len(found.log)
        return LogChunk(data.decode(errors="replace"), end, eof)

    def job_output(self, *, job: str, limit: int, sink: BinaryIO) -> OutputInfo:
        self._enter("job-output", job=job, limit=limit)
        found = self.jobs.get(job)
        if found is None:
            return OutputInfo(job, 0, too_large=False)
        if found.running:
            raise AgentError("job_running", "job: it is running")
        if len(found.output) > limit:
            return OutputInfo(job, len(found.output), too_large=True)
        sink.write(found.output)
        return OutputInfo(job, len(found.output), too_large=False)

    def job_clean(self, *, job: str) -> JobCleaned:
        self._enter("job-clean", job=job)
        found = self.jobs.get(job)
        if found is None:
            return JobCleaned(job, removed=False)
        if found.running:
            raise AgentError("job_running", "job: it is running; job-stop first")
        del self.jobs[job]
        return JobCleaned(job, removed=True)


class FakeAgents:
    """The fake agents of a test, one per host name, handed out where the loop obtains its
    client (`portal.operations.agents.client_for`)."""

    def __init__(self) -> None:
        self.by_host: dict[str, FakeAgent] = {}

    def __getitem__(self, host) -> FakeAgent:
        name = getattr(host, "name", host)
        if name not in self.by_host:
            self.by_host[name] = FakeAgent(name=name)
        return self.by_host[name]

    def client_for(self, host) -> FakeAgent:
        return self[host]
