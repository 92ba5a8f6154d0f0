"""The client reads each verb's answer once into its type; an answer not of that shape is the
agent's fault, refused as AgentError("bad_answer") that names the field, never a KeyError."""

import io
import json

import pytest

from provisioning.client import (
    AccountState,
    AgentClient,
    AgentError,
    DeviceInfo,
    DeviceRef,
    HealthCheckResult,
    JobState,
    JobStatus,
    SessionState,
    Status,
)
from provisioning.transport import TransportError


def client_answering(answer, tail: bytes = b"", status: int = 0) -> AgentClient:
    """A client whose runner answers one line (and `tail` raw bytes to a sink)."""

    def run(request, *, body=None, sink=None):
        if sink is not None:
            sink.write(tail)
        return status, json.dumps(answer).encode() + b"\n", b""

    return AgentClient(run)


STATUS = {
    "ok": True,
    "sessions": [
        {
            "session": "r4",
            "user": "alice",
            "stack": "cuda-12",
            "devices": [{"vendor": "nvidia", "index": 1}],
            "keys_sha256": "ab",
            "end": 1700,
            "alive": True,
        },
        {
            "session": "r5",
            "user": "bob",
            "stack": "cuda-12",
            "devices": [],
            "keys_sha256": "cd",
            "alive": False,  # a record of an older portal: no end
        },
    ],
    "users": [{"user": "alice", "locked": False, "processes": 2}],
    "jobs": [{"job": "j7", "running": True}],
}


def test_it_reads_a_status_into_its_types():
    assert client_answering(STATUS).status() == Status(
        sessions=(
            SessionState("r4", "alice", "cuda-12", (DeviceRef("nvidia", 1),), "ab", 1700, True),
            SessionState("r5", "bob", "cuda-12", (), "cd", None, False),
        ),
        users=(AccountState("alice", locked=False, processes=2),),
        jobs=(JobState("j7", running=True),),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("users"), "status.users: missing"),
        (lambda a: a.update(jobs={}), "status.jobs: a list was expected, not dict"),
        (lambda a: a["sessions"][1].pop("alive"), "status.sessions[1].alive: missing"),
        (
            lambda a: a["sessions"][0].update(alive="yes"),
            "status.sessions[0].alive: a bool was expected, not str",
        ),
        (
            lambda a: a["users"][0].update(processes=True),  # a bool is not a count
            "status.users[0].processes: a int was expected, not bool",
        ),
        (
            lambda a: a["sessions"][0]["devices"][0].update(index="1"),
            "status.sessions[0].devices[0].index: a int was expected, not str",
        ),
        (lambda a: a["jobs"].append("j8"), "status.jobs[1]: an object was expected, not str"),
    ],
)
def test_a_status_of_another_shape_is_a_bad_answer_naming_the_field(change, message):
    answer = json.loads(json.dumps(STATUS))
    change(answer)

    with pytest.raises(AgentError) as refused:
        client_answering(answer).status()

    assert (refused.value.code, refused.value.message) == ("bad_answer", message)


def test_an_inventory_reads_its_devices_and_an_older_agents_missing_map():
    answer = {
        "ok": True,
        "devices": [{"vendor": "amd", "index": 0, "model": "MI210", "memory_mib": 65520}],
        "stacks": [{"name": "rocm", "chroot": "trixie-rocm", "present": True}],
        "agent_version": "3", "hostname": "gpu1", "kernel": "6.1",
    }  # fmt: skip

    inventory = client_answering(answer).inventory()

    assert inventory.devices == (DeviceInfo("amd", 0, "MI210", 65520),)
    assert [(s.name, s.present) for s in inventory.stacks] == [("rocm", True)]
    assert (inventory.device_nodes, inventory.shared_nodes) == (None, None)


def test_a_job_status_must_name_a_state_the_portal_knows():
    answer = {"ok": True, "job": "j1", "state": "exploded", "exit_status": None, "log_bytes": 0}
    with pytest.raises(AgentError) as refused:
        client_answering(answer).job_status(job="j1")
    assert refused.value.code == "bad_answer"
    assert refused.value.message.startswith("job-status.state: 'exploded' is not one of running")


def test_a_job_status_reads_a_finished_job():
    answer = {
        "ok": True, "job": "j1", "state": "failed", "exit_status": 3,
        "started_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T01:00:00Z",
        "reason": "exit status 3", "log_bytes": 12,
    }  # fmt: skip
    status = client_answering(answer).job_status(job="j1")
    assert status == JobStatus("j1", "failed", 3, answer["started_at"], answer["ended_at"],
                               "exit status 3", 12)  # fmt: skip
    assert not status.running


def test_a_job_output_that_sends_other_than_it_announced_is_a_bad_answer():
    answer = {"ok": True, "job": "j1", "bytes": 10, "too_large": False}
    with pytest.raises(AgentError) as refused:
        client_answering(answer, tail=b"short").job_output(job="j1", limit=100, sink=io.BytesIO())
    assert refused.value.message == "job-output announced 10 bytes and sent 5"


def test_a_health_check_not_run_says_why():
    answer = {"ok": True, "ran": False, "reason": "no health check is configured for amd"}
    result = client_answering(answer).health_check(stack="rocm", device=DeviceRef("amd", 0))
    assert result == HealthCheckResult(ran=False, reason="no health check is configured for amd")


def test_a_health_check_that_ran_must_say_whether_it_passed():
    answer = {"ok": True, "ran": True, "exit_status": 0, "output": ""}
    with pytest.raises(AgentError) as refused:
        client_answering(answer).health_check(stack="rocm", device=DeviceRef("amd", 0))
    assert refused.value.message == "health-check.passed: missing"


def test_a_refusal_keeps_the_agents_code_and_message():
    answer = {"ok": False, "error": {"code": "bad_user", "message": "user: reserved"}}
    with pytest.raises(AgentError) as refused:
        client_answering(answer, status=1).revoke(user="root")
    assert (refused.value.code, refused.value.message) == ("bad_user", "user: reserved")


def test_an_answer_that_is_not_json_is_a_bad_answer():
    def run(request, *, body=None, sink=None):
        return 1, b"Traceback (most recent call last)\n", b"ImportError: x\n"

    with pytest.raises(AgentError) as refused:
        AgentClient(run).status()
    assert refused.value.code == "bad_answer" and "ImportError: x" in refused.value.message


def test_the_fake_agent_answers_in_the_same_types():
    """The loop's tests stand on the fake; its answers must be the client's own types."""
    from tests.operations.fakeagent import FakeAgent

    fake = FakeAgent(name="gpu1")
    fake.grant(session="r1", user="alice", keys=[], stack="s", devices=[], end=_aware())
    assert isinstance(fake.status(), Status)
    assert fake.status().sessions[0].user == "alice"
    fake.unreachable = True
    with pytest.raises(TransportError):
        fake.status()


def _aware():
    from datetime import UTC, datetime

    return datetime(2030, 1, 1, tzinfo=UTC)
