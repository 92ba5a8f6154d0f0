"""ansible/site.yml bootstraps a bare Debian host (tests/testhost.py) into a porterbox host that
the portal drives over SSH and that users log in to; a second run changes nothing."""

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from portal.inventory.models import DriverStack, Host
from portal.operations.agents import reset_transport
from provisioning.transport import Target, Transport
from tests.ansible.bootstrap import (
    ANSIBLE_DIR,
    BIN,
    HOST_VARS,
    bootstrap,
    environment,
    missing,
    recap,
)
from tests.conftest import require
from tests.factories import UserFactory
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
        yield SimpleNamespace(
            host=host, keys=keys, runs=runs, known_hosts=base / "known_hosts",
            portal_pub=portal_pub, alice_pub=(base / "alice.pub").read_text().strip(),
        )  # fmt: skip
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
    [stack] = answer["stacks"]
    assert {k: stack[k] for k in ("name", "chroot", "present")} == {
        "name": "cuda-12", "chroot": "cuda-12", "present": True,
    }  # fmt: skip
    # A real Debian tree: the digest of its installed packages (autopkgtest among them).
    assert re.fullmatch(r"[0-9a-f]{64}", stack["digest"]), stack


def test_a_granted_user_logs_in_to_the_stack_with_her_gpu_until_revoked(bootstrapped, agent):
    alice_pub = (bootstrapped.keys["alice"].parent / "alice.pub").read_text().strip()
    grant = agent(
        "grant", session="r1", user="alice", keys=[alice_pub], stack="cuda-12",
        devices=[{"vendor": "nvidia", "index": 1}], end=int(time.time()) + 3600,
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


DEVICE_MAP = ("porterbox_devices", "porterbox_shared_nodes")


def agent_config(bootstrapped) -> dict:
    return json.loads(bootstrapped.host.run("cat", "/etc/porterbox/hostctl.json"))


def run_from_the_portal(bootstrapped, live_server) -> str:
    """ansible-playbook -i inventory/portal.py site.yml, as ansible/README.md tells staff: a
    staff token, root, the portal's key; plus what only the test host needs (its stack, no
    systemd, no driver), none of it the device map."""
    token = Token.objects.create(user=UserFactory.create(is_staff=True)).key
    # A short directory: ssh's control sockets live under it, and their paths have a limit.
    with tempfile.TemporaryDirectory(prefix="pb-") as short:
        return _run_from_the_portal(bootstrapped, live_server, token, Path(short))


def _run_from_the_portal(bootstrapped, live_server, token: str, tmp_path: Path) -> str:
    extra = tmp_path / "extra.json"
    extra.write_text(
        json.dumps(
            {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(bootstrapped.keys["root"]),
                "porterbox_portal_public_key": bootstrapped.portal_pub.strip(),
                **{k: v for k, v in HOST_VARS.items() if k not in DEVICE_MAP},
            }
        )
    )
    env = environment(tmp_path) | {
        "PORTAL_URL": live_server.url,
        "PORTAL_TOKEN": token,
        "PORTAL_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
    }
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventory/portal.py", "-e", f"@{extra}",
         "site.yml"],
        cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@pytest.mark.django_db(transaction=True)
def test_a_run_from_the_portals_inventory_keeps_the_device_map(
    bootstrapped, agent, live_server, settings
):
    # Staff register the host as the README says: keys confirmed by fingerprint, inventory
    # pulled from its agent over the portal's own key.
    settings.PORTAL_SSH_KEY_FILE = str(bootstrapped.keys["portal"])
    reset_transport()
    DriverStack.objects.create(name="cuda-12", hwspecs=["cuda"], chroot="cuda-12")
    fingerprint = bootstrapped.host.run(
        "ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub"
    ).split()[1]
    call_command(
        "register_host", "testhost", "127.0.0.1", port=bootstrapped.host.port,
        fingerprint=fingerprint,
    )  # fmt: skip
    reset_transport()
    host = Host.objects.get(name="testhost")
    assert host.device_nodes == HOST_VARS["porterbox_devices"]
    before = agent_config(bootstrapped)

    # The portal's inventory carries the map the agent reported; and where it has none (a host
    # registered before agents reported theirs), the role keeps the one on the host.
    for known in (True, False):
        if not known:
            Host.objects.filter(pk=host.pk).update(device_nodes={}, shared_nodes={})
        output = run_from_the_portal(bootstrapped, live_server)
        assert recap(output, "testhost")["failed"] == 0, output

        config = agent_config(bootstrapped)
        assert config["devices"] == HOST_VARS["porterbox_devices"], output
        assert config["shared_nodes"] == HOST_VARS["porterbox_shared_nodes"], output
        assert config == before
        grant = agent(
            "grant", session=f"map{int(known)}", user="alice", keys=[bootstrapped.alice_pub],
            stack="cuda-12", devices=[{"vendor": "nvidia", "index": 1}],
            end=int(time.time()) + 3600,
        )  # fmt: skip
        assert grant["ok"], grant
        assert agent("revoke", session=f"map{int(known)}")["ok"]
