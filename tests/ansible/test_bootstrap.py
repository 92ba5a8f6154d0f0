"""ansible/site.yml bootstraps a bare Debian host (tests/testhost.py) into a porterbox host that
the portal drives over SSH and that users log in to; a second run changes nothing."""

import json
import shutil
import subprocess
import time
from types import SimpleNamespace

import pytest

from provisioning.transport import Target, Transport
from tests.ansible.bootstrap import ANSIBLE_DIR, BIN, bootstrap, environment, missing, recap
from tests.conftest import require
from tests.provisioning.sshd import keygen
from tests.testhost import TestHost

pytestmark = [pytest.mark.ansible, pytest.mark.host]


def run_tool(argv, tmp_path):
    done = subprocess.run(
        argv, cwd=ANSIBLE_DIR, env=environment(tmp_path), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def test_the_playbook_passes_ansible_lint_and_a_syntax_check(tmp_path):
    tools = [BIN / "ansible-lint", BIN / "ansible-playbook"]
    require(all(t.exists() for t in tools), "ansible-lint (pip install -r requirements-dev.txt)")

    # The production profile and offline mode come from ansible/.ansible-lint.
    rc, output = run_tool([str(BIN / "ansible-lint")], tmp_path)
    assert rc == 0, output

    inventory = str(ANSIBLE_DIR / "inventory" / "example.yml")
    rc, output = run_tool(
        [str(BIN / "ansible-playbook"), "-i", inventory, "--syntax-check", "site.yml"], tmp_path
    )
    assert rc == 0, output


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    """A bare test host, bootstrapped twice; the keys, and each run's output and duration."""
    lacking = missing()
    require(not lacking, f"{', '.join(lacking)} (to bootstrap a test host)")
    base = tmp_path_factory.mktemp("bootstrap")
    keys = {name: keygen(base / name) for name in ("portal", "root", "alice")}
    portal_pub = (base / "portal.pub").read_text()
    host = TestHost(["nvidia0", "nvidia1", "nvidiactl"]).start(base / "host")
    try:
        runs = []
        for _ in range(2):
            started = time.monotonic()
            output = bootstrap(host, portal_pub=portal_pub, root_key=keys["root"], tmp=base / "run")
            runs.append(SimpleNamespace(output=output, seconds=time.monotonic() - started))
        (base / "known_hosts").write_text(host.known_hosts)
        yield SimpleNamespace(host=host, keys=keys, runs=runs, known_hosts=base / "known_hosts")
    finally:
        host.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def agent(bootstrapped):
    """Send one request to the agent as the portal does, over SSH with the host's keys pinned."""
    host = bootstrapped.host
    target = Target("127.0.0.1", host.port, "porterbox", host.host_keys)
    with Transport(
        bootstrapped.keys["portal"], connect_timeout=5, command_timeout=60, retries=0
    ) as t:

        def call(verb, **fields):
            result = t.call(target, None, json.dumps({"verb": verb, **fields}).encode())
            return json.loads(result.stdout)

        yield call


def login(bootstrapped, user, command):
    """Run command as user@host with OpenSSH's client and the user's key."""
    argv = [
        *(
            "ssh",
            "-F",
            "none",
            "-i",
            str(bootstrapped.keys[user]),
            "-p",
            str(bootstrapped.host.port),
        ),
        *(
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={bootstrapped.known_hosts}",
        ),
        *("-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"),
        *(f"{user}@127.0.0.1", command),
    ]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


def test_it_bootstraps_the_host_and_a_second_run_changes_nothing(bootstrapped):
    first, second = bootstrapped.runs

    assert recap(first.output, "testhost")["failed"] == 0, first.output
    assert recap(second.output, "testhost")["changed"] == 0, second.output
    print(f"bootstrap: {first.seconds:.0f}s, second run {second.seconds:.0f}s")


def test_the_portal_finds_the_stack_on_the_host(agent):
    answer = agent("inventory")

    assert answer["ok"], answer
    assert answer["stacks"] == [{"name": "cuda-12", "chroot": "cuda-12", "present": True}]


def test_a_granted_user_logs_in_to_the_stack_with_her_gpu_until_revoked(bootstrapped, agent):
    alice_pub = (bootstrapped.keys["alice"].parent / "alice.pub").read_text().strip()
    grant = agent(
        "grant", session="r1", user="alice", keys=[alice_pub], stack="cuda-12",
        devices=[{"vendor": "nvidia", "index": 1}],
    )  # fmt: skip
    assert grant["ok"], grant

    prompt = login(bootstrapped, "alice", "cat /etc/debian_chroot")
    devices = login(bootstrapped, "alice", "echo $CUDA_VISIBLE_DEVICES")

    assert (prompt.returncode, prompt.stdout) == (0, "cuda-12\n"), prompt.stderr
    assert (devices.returncode, devices.stdout) == (0, "1\n"), devices.stderr

    assert agent("revoke", session="r1")["ok"]
    refused = login(bootstrapped, "alice", "true")
    assert refused.returncode == 255, refused
    assert "Permission denied" in refused.stderr
