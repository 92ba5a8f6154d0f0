"""Training jobs on a real (disposable) host, driven over SSH as the portal drives the agent:
the supervisor runs detached after the agent's answer, in a schroot session of the job account.
See tests/testhost.py for the host; its busybox stack has sh, echo, sleep, env, cat, id, ls."""

import io
import json
import shutil
import tarfile

import pytest

from provisioning.transport import Target, Transport
from tests.conftest import require
from tests.helpers import wait_for
from tests.provisioning.sshd import free_port, keygen
from tests.testhost import TestHost

pytestmark = pytest.mark.host

ACCOUNT = "pj-test"
STACK, CHROOT = "trixie", "porterbox-trixie"
CONFIG = {
    "group": "porterbox-users",
    "devices": {"nvidia": {str(i): [f"/dev/nvidia{i}"] for i in range(4)}},
    "shared_nodes": {"nvidia": ["/dev/nvidiactl"]},
    "job_min_walltime_s": 2,  # the protocol's 60 s would make the walltime tests slow
}
HOME = f"/home/{ACCOUNT}"


def nvidia(*indices):
    return [{"vendor": "nvidia", "index": i} for i in indices]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    missing = TestHost.missing() + [tool for tool in ("getfacl",) if not shutil.which(tool)]
    require(not missing, f"{', '.join(missing)} (for the test host)")
    directory = tmp_path_factory.mktemp("jobs-on-host")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def portal_key(base):
    return keygen(base / "portal")


@pytest.fixture(scope="module")
def host(base, portal_key):
    test_host = TestHost().start(base / "host")
    try:
        test_host.add_stack(STACK, CHROOT)
        test_host.install_agent(CONFIG)
        test_host.authorize_portal(portal_key.with_suffix(".pub").read_text())
        yield test_host
    finally:
        test_host.stop()


@pytest.fixture(scope="module")
def agent(host, portal_key):
    """Send one request to the agent as the portal does; its decoded answer."""
    target = Target("127.0.0.1", host.port, "porterbox", host.host_keys)
    with Transport(portal_key, connect_timeout=5, command_timeout=60, retries=0) as transport:

        def call(verb, body=None, **fields):
            # One request line; an archive's raw bytes after it (docs/agent.md, "Protocol").
            raw = json.dumps({"verb": verb, **fields}).encode() + b"\n"
            stream = io.BytesIO(body) if body is not None else None
            result = transport.call(target, None, raw, body=stream)
            answer = json.loads(result.stdout)
            assert result.exit_status == (0 if answer["ok"] else 1), result
            return answer

        yield call


def job_request(
    job, script, *, devices=(1,), walltime_s=60, grace_s=1, env=None, input=None, array=None
):
    return {
        "job": job,
        "account": ACCOUNT,
        "stack": STACK,
        "devices": nvidia(*devices),
        "script": script,
        "env": env or {},
        "walltime_s": walltime_s,
        "grace_s": grace_s,
        "input": input or {},
        **({"array": array} if array else {}),
    }


@pytest.fixture
def start(agent):
    """Start a job; cleaned (stopped first if need be) after the test."""
    started = []

    def run(job, script, body=None, **options):
        answer = agent("job-start", body=body, **job_request(job, script, **options))
        assert answer == {"ok": True, "job": job, "started": True}, answer
        started.append(job)
        return answer

    yield run
    for job in started:
        agent("job-stop", job=job, grace_s=0)
        assert agent("job-clean", job=job)["ok"]


def ended(agent, job, timeout=15.0):
    """job-status once the job is no longer running."""

    def status():
        answer = agent("job-status", job=job)
        return answer if answer["state"] != "running" else None

    return wait_for(status, timeout, what=f"{job} to end")


def read_log(agent, job, limit=1024 * 1024):
    data, offset = "", 0
    while True:
        piece = agent("job-logs", job=job, offset=offset, limit=limit)
        assert piece["offset"] - offset <= limit
        data, offset = data + piece["data"], piece["offset"]
        if piece["eof"]:
            return data


def acl_users(host, node):
    return {
        line.split(":")[1]
        for line in host.run("getfacl", "-cp", node).splitlines()
        if line.startswith("user:") and line.split(":")[1]
    }


def gate(job):
    """Shell that waits for the test to open the gate: /tmp is the host's, in every session."""
    return f"while [ ! -e /tmp/go-{job} ]; do sleep 0.1; done\n"


def test_a_job_runs_as_the_account_in_its_session_and_records_its_exit_status(agent, host, start):
    script = gate("j1") + (
        'echo "devices=$CUDA_VISIBLE_DEVICES user=$(id -un) greeting=$GREETING"\n'
        "cat /etc/stack-marker\n"
        'echo result > "$PORTERBOX_OUTPUT/result.txt"\n'
        "echo oops >&2\n"
        "exit 3\n"
    )
    start("j1", script, env={"GREETING": "hello world"})

    running = agent("job-status", job="j1")
    assert running["state"] == "running"
    assert running["exit_status"] is None and running["ended_at"] is None
    assert running["started_at"].endswith("Z")
    wait_for(lambda: host.exists("/var/lib/schroot/session/porterbox-j1"), 15, what="the session")
    host.write_file("/tmp/go-j1", "")

    status = ended(agent, "j1")
    assert status["state"] == "failed"
    assert status["exit_status"] == 3
    assert status["ended_at"] >= status["started_at"]
    assert status["log_bytes"] > 0

    whole = read_log(agent, "j1")
    assert read_log(agent, "j1", limit=7) == whole  # the same, in pieces
    lines = [line for line in whole.splitlines() if not line.startswith("porterbox: ")]
    assert lines == ["devices=1 user=pj-test greeting=hello world", CHROOT, "oops"]
    result = host.path(f"{HOME}/jobs/j1/output/result.txt")
    assert result.read_text() == "result\n"
    assert result.stat().st_uid == host.uid(ACCOUNT)
    assert not host.exists("/var/lib/schroot/session/porterbox-j1")


def test_a_job_sees_only_its_devices_and_a_task_its_array(agent, host, start):
    script = (
        'echo "array=$PORTERBOX_ARRAY_JOB_ID task=$PORTERBOX_ARRAY_TASK_ID"\n'
        "for n in 0 1 2 ctl; do echo -n > /dev/nvidia$n && echo nvidia$n; done; true"
    )
    start("j2", script, array={"job": 41, "task": 3})

    assert ended(agent, "j2")["state"] == "succeeded"
    log = read_log(agent, "j2")
    assert "array=41 task=3" in log.splitlines()
    assert [line for line in log.splitlines() if line.startswith("nvidia")] == [
        "nvidia1",
        "nvidiactl",
    ]
    assert "/dev/nvidia0: Permission denied" in log
    assert all(ACCOUNT not in acl_users(host, f"/dev/nvidia{n}") for n in (0, 1, 2, "ctl"))


def test_the_walltime_ends_a_job_with_sigterm_then_sigkill_after_the_grace(agent, host, start):
    start("j3", "echo started; sleep 100", walltime_s=2, grace_s=1)
    start("j4", "trap 'echo ignoring TERM' TERM; echo started; sleep 100; sleep 100", walltime_s=2)

    polite, stubborn = ended(agent, "j3"), ended(agent, "j4")

    assert polite["state"] == stubborn["state"] == "timed_out"
    assert "walltime of 2 s reached" in polite["reason"]
    assert "SIGKILL" not in read_log(agent, "j3")
    log = read_log(agent, "j4")
    assert "ignoring TERM" in log
    assert "still running after the grace of 1 s: SIGKILL" in log
    assert host.processes(host.uid(ACCOUNT)) == []


def test_job_stop_ends_the_job_its_processes_and_its_device_access(agent, host, start):
    start("j5", "echo started; sleep 100", devices=(2,))
    uid = host.uid(ACCOUNT)
    wait_for(
        lambda: any(p["cmdline"] == "sleep 100" for p in host.processes(uid)),
        15,
        what="sleep 100 to run",
    )
    assert ACCOUNT in acl_users(host, "/dev/nvidia2")

    stopped = agent("job-stop", job="j5", grace_s=1)

    assert stopped["ok"] and stopped["state"] == "stopped", stopped
    assert host.processes(uid) == []
    assert ACCOUNT not in acl_users(host, "/dev/nvidia2")
    assert ACCOUNT not in acl_users(host, "/dev/nvidiactl")
    assert not host.exists("/var/lib/schroot/session/porterbox-j5")
    assert agent("job-stop", job="j5", grace_s=1) == stopped  # a no-op now
    assert agent("job-stop", job="j99", grace_s=1)["state"] == "unknown"


def make_archive(members):
    """A .tar.gz of (name, text or None for a directory, or ("link", target))."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                archive.addfile(info)
            else:
                data = content.encode()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def archive_input(archive: bytes) -> dict:
    return {"input": {"archive_bytes": len(archive)}, "body": archive}


def test_an_archive_is_extracted_into_input_as_the_account(agent, host, start):
    archive = make_archive(
        [("data", None), ("data/hello.txt", "hello\n"), ("greeting", ("link", "data/hello.txt"))]
    )
    start("j6", "cat greeting; ls data", **archive_input(archive))

    assert ended(agent, "j6")["state"] == "succeeded"
    log = read_log(agent, "j6")
    assert [line for line in log.splitlines() if not line.startswith("porterbox: ")] == [
        "hello",
        "hello.txt",
    ]
    extracted = host.path(f"{HOME}/jobs/j6/input/data/hello.txt")
    assert extracted.stat().st_uid == host.uid(ACCOUNT)


@pytest.mark.parametrize("name", ["/tmp/evil", "../evil", "data/../../evil"])
def test_an_archive_with_a_member_outside_input_is_refused(agent, host, name):
    archive = make_archive([("data", None), (name, "evil\n")])

    request = job_request("j7", "true", input={"archive_bytes": len(archive)})
    answer = agent("job-start", body=archive, **request)

    assert answer["ok"] is False
    assert answer["error"]["code"] == "bad_input"
    assert answer["error"]["message"].startswith("input.archive")
    assert not host.exists("/var/lib/porterbox/jobs/j7")
    assert host.run("ls", "-A", "/var/lib/porterbox/spool") == ""  # the spooled bytes too
    assert not host.exists("/tmp/evil") and not host.exists(f"{HOME}/jobs/evil")


def test_job_start_is_idempotent_and_job_clean_removes_the_job(agent, host):
    request = job_request("j8", gate("j8") + "echo once")

    assert agent("job-start", **request) == {"ok": True, "job": "j8", "started": True}
    record = host.read_file("/var/lib/porterbox/jobs/j8/record.json")
    assert agent("job-start", **request) == {"ok": True, "job": "j8", "started": False}
    assert host.read_file("/var/lib/porterbox/jobs/j8/record.json") == record
    supervisors = [p for p in host.processes(0) if "provisioning.agent.jobrun" in p["cmdline"]]
    assert len([p for p in supervisors if p["cmdline"].endswith(" j8")]) == 1

    refused = agent("job-clean", job="j8")
    assert refused["ok"] is False and refused["error"]["code"] == "job_running"
    host.write_file("/tmp/go-j8", "")
    assert ended(agent, "j8")["state"] == "succeeded"
    assert "once" in read_log(agent, "j8")

    assert agent("job-clean", job="j8") == {"ok": True, "job": "j8", "removed": True}
    assert not host.exists("/var/lib/porterbox/jobs/j8")
    assert not host.exists(f"{HOME}/jobs/j8")
    assert agent("job-clean", job="j8") == {"ok": True, "job": "j8", "removed": False}
    assert agent("job-status", job="j8")["state"] == "unknown"
    assert agent("job-logs", job="j8", offset=0, limit=10) == {
        "ok": True,
        "data": "",
        "offset": 0,
        "eof": True,
    }


def test_a_git_input_that_cannot_be_cloned_fails_the_job_before_its_script(agent, start):
    url = f"https://127.0.0.1:{free_port()}/nothing.git"  # nothing listens there
    start("j9", "echo never", input={"git": url, "ref": "main"})

    status = ended(agent, "j9")

    assert status["state"] == "failed"
    assert status["exit_status"] is None
    assert status["reason"] == "cloning the input failed (status 128)"
    log = read_log(agent, "j9")
    assert f"porterbox: cloning {url} at main" in log
    assert "fatal:" in log and "never" not in log


def test_a_job_whose_supervisor_died_is_failed_and_job_stop_ends_what_it_left(agent, host, start):
    start("j10", "echo started; sleep 100", devices=(3,))
    uid = host.uid(ACCOUNT)
    wait_for(
        lambda: any(p["cmdline"] == "sleep 100" for p in host.processes(uid)),
        15,
        what="sleep 100 to run",
    )
    (supervisor,) = [
        p
        for p in host.processes(0)
        if "provisioning.agent.jobrun" in p["cmdline"] and p["cmdline"].endswith(" j10")
    ]
    host.run("kill", "-KILL", str(supervisor["pid"]))  # as a reboot would, without the reboot

    status = ended(agent, "j10")
    assert status["state"] == "failed"
    assert "supervisor ended without recording an outcome" in status["reason"]

    stopped = agent("job-stop", job="j10", grace_s=0)

    assert stopped["state"] == "failed" and stopped["ended_at"] is not None
    assert host.processes(uid) == []
    assert ACCOUNT not in acl_users(host, "/dev/nvidia3")
    assert not host.exists("/var/lib/schroot/session/porterbox-j10")
