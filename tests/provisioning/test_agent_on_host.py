"""The host agent on a real (disposable) host: driven over SSH as the portal drives it, and
logged into with OpenSSH's client as a user does. See tests/testhost.py for the host."""

import json
import shutil
import subprocess
import time

import pytest

from provisioning.accounts import keys_digest
from provisioning.transport import HostKeyMismatch, Target, Transport
from tests.conftest import require
from tests.helpers import wait_for
from tests.provisioning.sshd import keygen
from tests.testhost import TestHost

pytestmark = pytest.mark.host

CONFIG = {
    "group": "porterbox-users",
    "devices": {"nvidia": {str(i): [f"/dev/nvidia{i}"] for i in range(4)}},
    "shared_nodes": {"nvidia": ["/dev/nvidiactl"]},
}
STACK, CHROOT = "trixie", "porterbox-trixie"
# Each line says whether the device can be opened for writing; stderr says why not.
TRY_DEVICES = "for n in 0 1 2 3 ctl; do echo -n > /dev/nvidia$n && echo nvidia$n; done"


def nvidia(*indices):
    return [{"vendor": "nvidia", "index": i} for i in indices]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    missing = TestHost.missing() + [tool for tool in ("ssh", "getfacl") if not shutil.which(tool)]
    require(not missing, f"{', '.join(missing)} (for the test host)")
    directory = tmp_path_factory.mktemp("agent-on-host")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def keys(base):
    """Private key paths; the public key line of each is keys[name + ".pub"]."""
    found = {}
    for name in ("portal", "alice", "alice2", "bob"):
        path = keygen(base / name)
        found[name] = path
        found[f"{name}.pub"] = path.with_suffix(".pub").read_text().strip()
    return found


@pytest.fixture(scope="module")
def host(base, keys):
    test_host = TestHost().start(base / "host")
    try:
        test_host.add_stack(STACK, CHROOT)
        test_host.install_agent(CONFIG)
        test_host.authorize_portal(keys["portal.pub"])
        (base / "known_hosts").write_text(test_host.known_hosts)
        yield test_host
    finally:
        test_host.stop()


@pytest.fixture(scope="module")
def transport(keys):
    with Transport(keys["portal"], connect_timeout=5, command_timeout=60, retries=0) as t:
        yield t


@pytest.fixture
def agent(host, transport):
    """Send one request to the agent as the portal does; its decoded answer."""
    target = Target("127.0.0.1", host.port, "porterbox", host.host_keys)

    def call(verb, **fields):
        result = transport.call(target, None, json.dumps({"verb": verb, **fields}).encode())
        answer = json.loads(result.stdout)
        assert result.exit_status == (0 if answer["ok"] else 1), result
        return answer

    return call


@pytest.fixture
def login(host, base, keys):
    """Run command as user@host with OpenSSH's client and the user's key (the default: user's)."""

    def run(user, command, key=None):
        argv = [
            *("ssh", "-F", "none", "-i", str(keys[key or user]), "-p", str(host.port)),
            *("-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={base}/known_hosts"),
            *("-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"),
            *(f"{user}@127.0.0.1", command),
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    return run


def grant_request(user, key_names, devices, keys, session):
    return {
        "session": session,
        "user": user,
        "keys": [keys[f"{name}.pub"] for name in key_names],
        "stack": STACK,
        "devices": devices,
        "end": int(time.time()) + 3600,
    }


@pytest.fixture
def alice(agent, keys):
    """Reservation r1: alice, with her first key, nvidia 1 and 2; revoked afterwards."""
    request = grant_request("alice", ["alice"], nvidia(1, 2), keys, "r1")
    answer = agent("grant", **request)
    assert answer["ok"], answer
    yield request, answer
    assert agent("revoke", session="r1")["ok"]


def session_of(agent, session):
    return next((s for s in agent("status")["sessions"] if s["session"] == session), None)


def user_of(agent, user):
    return next((u for u in agent("status")["users"] if u["user"] == user), None)


def acl_users(host, node):
    return {
        line.split(":")[1]
        for line in host.run("getfacl", "-cp", node).splitlines()
        if line.startswith("user:") and line.split(":")[1]
    }


def test_inventory_names_the_host_and_finds_its_stack(agent):
    answer = agent("inventory")

    assert answer["hostname"] == "testhost"
    # A busybox tree has no dpkg status: no digest (tests/packages/test_autopkgtest_host.py
    # reads a real Debian chroot's).
    assert answer["stacks"] == [{"name": STACK, "chroot": CHROOT, "present": True, "digest": ""}]
    assert answer["devices"] == []  # the nodes are stand-ins: no driver tool answers here


def test_a_grant_puts_the_user_in_her_session_with_her_devices_only(alice, login):
    _, answer = alice
    assert answer["schroot_session"] == "porterbox-r1"
    assert answer["env"]["CUDA_VISIBLE_DEVICES"] == "1,2"

    done = login(
        "alice",
        'cat /etc/stack-marker; echo "$SCHROOT_SESSION_ID $CUDA_VISIBLE_DEVICES"; id -un; '
        + TRY_DEVICES,
    )

    assert done.returncode == 0, done
    # The marker exists only in the stack's tree: the command ran inside the chroot.
    assert done.stdout.splitlines() == [
        CHROOT,
        "porterbox-r1 1,2",
        "alice",
        "nvidia1",
        "nvidia2",
        "nvidiactl",
    ]
    for denied in ("nvidia0", "nvidia3"):
        assert f"/dev/{denied}: Permission denied" in done.stderr


def test_status_shows_the_session_and_a_repeated_grant_changes_nothing(
    alice, agent, host, keys, login
):
    request, answer = alice
    assert session_of(agent, "r1") == {
        "session": "r1",
        "user": "alice",
        "stack": STACK,
        "devices": nvidia(1, 2),
        "keys_sha256": keys_digest([keys["alice.pub"]]),
        "end": request["end"],
        "alive": True,
    }
    assert user_of(agent, "alice") == {"user": "alice", "locked": False, "processes": 0}

    def snapshot():
        return (
            host.read_file("/var/lib/porterbox/keys/alice"),
            host.read_file("/var/lib/porterbox/sessions/r1.json"),
            host.run("schroot", "--list", "--all-sessions"),
            host.run("getent", "passwd", "alice"),
            host.run("getent", "shadow", "alice"),
            [acl_users(host, f"/dev/nvidia{n}") for n in (0, 1, 2, 3, "ctl")],
        )

    before = snapshot()
    assert agent("grant", **request) == answer
    assert snapshot() == before

    # A new key set replaces the old one: the old key no longer gets in.
    new = {**request, "keys": [keys["alice2.pub"]]}
    assert agent("grant", **new)["ok"]
    assert session_of(agent, "r1")["keys_sha256"] == keys_digest([keys["alice2.pub"]])
    refused = login("alice", "true")
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr
    assert login("alice", "cat /etc/stack-marker", key="alice2").stdout == f"{CHROOT}\n"


def test_revoke_locks_the_user_out_and_kills_all_her_processes(alice, agent, host, login):
    uid = host.uid("alice")
    started = login("alice", "setsid sleep 1000 </dev/null >/dev/null 2>&1 &")
    assert started.returncode == 0, started
    wait_for(
        lambda: any(p["cmdline"] == "sleep 1000" for p in host.processes(uid)),
        10,
        what="sleep 1000 to run",
    )

    answer = agent("revoke", session="r1")

    assert answer == {"ok": True, "killed": answer["killed"]}
    assert answer["killed"] >= 1
    assert host.processes(uid) == []
    refused = login("alice", "true")
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr
    assert session_of(agent, "r1") is None
    assert user_of(agent, "alice") == {"user": "alice", "locked": True, "processes": 0}
    assert not host.exists("/var/lib/schroot/session/porterbox-r1")
    assert host.read_file("/var/lib/porterbox/keys/alice") == ""
    assert all("alice" not in acl_users(host, f"/dev/nvidia{n}") for n in (1, 2, "ctl"))
    assert agent("revoke", session="r1") == {"ok": True, "killed": 0}  # idempotent


def test_sessions_and_their_processes_outlive_an_sshd_restart(alice, host, login):
    def sleeping():
        return [p for p in host.processes(host.uid("alice")) if p["cmdline"] == "sleep 1001"]

    started = login("alice", "setsid sleep 1001 </dev/null >/dev/null 2>&1 &")
    assert started.returncode == 0, started
    wait_for(sleeping, 10, what="sleep 1001 to run")
    before = sleeping()

    host.stop_sshd()
    assert login("alice", "true").returncode == 255  # nothing listens
    host.start_sshd()

    assert login("alice", "cat /etc/stack-marker").stdout == f"{CHROOT}\n"
    assert sleeping() == before


def test_a_session_ended_on_the_host_shows_dead_and_a_grant_begins_it_again(
    alice, agent, host, login
):
    request, _ = alice
    host.run("schroot", "--end-session", "-c", "session:porterbox-r1")

    assert session_of(agent, "r1")["alive"] is False
    dead = login("alice", "true")
    assert dead.returncode == 1
    assert "No reservation of yours is active" in dead.stderr

    assert agent("grant", **request)["ok"]

    assert session_of(agent, "r1")["alive"] is True
    assert login("alice", "cat /etc/stack-marker").stdout == f"{CHROOT}\n"


def test_another_user_cannot_enter_her_session_or_open_her_devices(alice, agent, host, keys, login):
    bob = grant_request("bob", ["bob"], nvidia(0), keys, "r2")
    assert agent("grant", **bob)["ok"]
    try:
        done = login("bob", 'echo "$SCHROOT_SESSION_ID $CUDA_VISIBLE_DEVICES"; ' + TRY_DEVICES)
        assert done.stdout.splitlines() == ["porterbox-r2 0", "nvidia0", "nvidiactl"]
        for denied in ("nvidia1", "nvidia2", "nvidia3"):
            assert f"/dev/{denied}: Permission denied" in done.stderr

        # On the host itself, schroot lets him into his own session only.
        def enter(session):
            argv = ["schroot", "-r", "-c", f"session:{session}", "--", "true"]
            return host.exec(argv, user="bob")

        assert enter("porterbox-r2").returncode == 0
        entered = enter("porterbox-r1")
        assert entered.returncode != 0
        assert "Access not authorised" in entered.stderr
        opened = host.exec(["sh", "-c", "echo -n > /dev/nvidia1"], user="bob")
        assert "Permission denied" in opened.stderr
        # alice's key does not open bob's account either.
        assert login("bob", "true", key="alice").returncode == 255
    finally:
        assert agent("revoke", session="r2")["ok"]


def test_a_host_with_another_key_is_refused_before_the_agent_runs(host, keys, base):
    other = keygen(base / "other_host_key").with_suffix(".pub").read_text()
    target = Target("127.0.0.1", host.port, "porterbox", other)
    log_before = host.sshd_log
    request = {"verb": "grant", **grant_request("mallory", ["bob"], [], keys, "r9")}

    with (
        Transport(keys["portal"], retries=0) as transport,
        pytest.raises(HostKeyMismatch, match="host key mismatch"),
    ):
        transport.call(target, None, json.dumps(request).encode())

    assert "Accepted publickey" not in host.sshd_log[len(log_before) :]
    assert not host.exists("/var/lib/porterbox/sessions/r9.json")
    assert "mallory" not in host.read_file("/etc/passwd")


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("user", "root", "bad_user"),
        ("user", "a;touch /tmp/pwned", "bad_user"),
        ("session", "../../tmp/pwned", "bad_session"),
        ("stack", "../../../tmp", "unknown_stack"),
        ("keys", ['command="touch /tmp/pwned" {alice}\n{bob}'], "bad_keys"),
    ],
)
def test_hostile_values_are_refused_and_change_nothing(agent, host, keys, field, value, code):
    if field == "keys":
        value = [v.format(alice=keys["alice.pub"], bob=keys["bob.pub"]) for v in value]
    passwd = host.read_file("/etc/passwd")
    request = {**grant_request("mallory", ["alice"], nvidia(3), keys, "r7"), field: value}

    answer = agent("grant", **request)

    assert answer["ok"] is False
    assert answer["error"]["code"] == code
    assert answer["error"]["message"].startswith(field)
    assert not host.exists("/tmp/pwned")
    assert host.read_file("/etc/passwd") == passwd
    assert not host.exists("/var/lib/porterbox/sessions/r7.json")
    assert acl_users(host, "/dev/nvidia3") == set()


def test_the_apt_wrapper_installs_into_the_users_own_session_as_root(alice, host, login):
    # The busybox chroot has no apt; this stand-in says who ran it, where, and with what.
    fake_apt = '#!/bin/sh\necho "apt-get uid=$(id -u) marker=$(cat /etc/stack-marker) $*"\n'
    host.write_file(f"/srv/chroots/{CHROOT}/usr/bin/apt-get", fake_apt, 0o755)
    try:
        done = login("alice", "porterbox-apt install hello 'python3-numpy=1:1.26.4+ds-1'")
        refused = login("alice", "porterbox-apt install ./evil.deb")
        shell = login("alice", "porterbox-apt install 'hello; id'")
    finally:
        host.run("rm", f"/srv/chroots/{CHROOT}/usr/bin/apt-get")

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "apt-get", "uid=0", f"marker={CHROOT}", "-y", "install", "--", "hello",
        "python3-numpy=1:1.26.4+ds-1",
    ]  # fmt: skip
    assert refused.returncode == 2 and "not a Debian package name: './evil.deb'" in refused.stderr
    assert shell.returncode == 2 and "not a Debian package name" in shell.stderr
