"""provisioning.transport against a real OpenSSH sshd on a loopback port."""

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import paramiko
import pytest

from provisioning.transport import (
    AuthFailed,
    CommandTimeout,
    HostKeyMismatch,
    Result,
    Target,
    Transport,
    TransportError,
    Unreachable,
    fetch_host_keys,
)
from tests.conftest import require
from tests.provisioning import sshd as sshd_helper

pytestmark = pytest.mark.host


@pytest.fixture
def sshd(tmp_path):
    require(sshd_helper.available(), "OpenSSH's sshd (package openssh-server)")
    server = sshd_helper.start(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.fixture
def client_key(tmp_path):
    (tmp_path / "client").mkdir()
    return sshd_helper.keygen(tmp_path / "client" / "id_ed25519")


@pytest.fixture
def authorized(sshd, client_key):
    sshd.authorize(client_key.with_suffix(".pub"))


@pytest.fixture
def target(sshd):
    return Target(sshd.host, sshd.port, sshd.user, sshd.known_keys)


@pytest.fixture
def transport(client_key):
    with Transport(client_key, connect_timeout=5, command_timeout=10, backoff=0.01) as transport:
        yield transport


@pytest.fixture
def connects(monkeypatch):
    """Every SSHClient.connect attempt, successful or not."""
    attempts = []
    real = paramiko.SSHClient.connect

    def counting(self, *args, **kwargs):
        attempts.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.SSHClient, "connect", counting)
    return attempts


def other_key_line(tmp_path) -> str:
    return sshd_helper.keygen(tmp_path / "other_host_key").with_suffix(".pub").read_text()


@pytest.mark.usefixtures("authorized")
def test_it_runs_a_command_and_returns_its_output_and_exit_status(transport, target):
    result = transport.call(target, ["sh", "-c", "echo out; echo err >&2; exit 3"])

    assert result == Result(exit_status=3, stdout=b"out\n", stderr=b"err\n")


@pytest.mark.usefixtures("authorized")
def test_it_passes_each_argument_through_the_remote_shell_unchanged(transport, target):
    argv = ["printf", "%s|", "a b", "it's", "$HOME", "; touch x", ""]

    assert transport.call(target, argv).stdout == b"a b|it's|$HOME|; touch x||"


def test_it_refuses_arguments_with_line_breaks_or_nul(transport):
    target = Target("127.0.0.1", 22, "root", "")  # never reached
    for bad in ("a\nb", "a\0b"):
        with pytest.raises(ValueError):
            transport.call(target, ["echo", bad])


@pytest.mark.usefixtures("authorized")
def test_it_delivers_stdin(transport, target):
    data = bytes(range(256)) * 1024  # more than one SSH window

    result = transport.call(target, ["cat"], stdin=data)

    assert (result.exit_status, result.stdout) == (0, data)


@pytest.mark.usefixtures("authorized")
def test_it_accepts_keys_pinned_as_known_hosts_lines(transport, sshd):
    lines = "".join(
        f"[{sshd.host}]:{sshd.port} {line}" for line in sshd.known_keys.splitlines(True)
    )
    target = Target(sshd.host, sshd.port, sshd.user, f"# registered host\n{lines}")

    assert transport.call(target, ["true"]).exit_status == 0


@pytest.mark.usefixtures("authorized")
def test_it_refuses_a_host_whose_key_is_not_the_pinned_one(transport, sshd, tmp_path, connects):
    marker = tmp_path / "marker"
    target = Target(sshd.host, sshd.port, sshd.user, other_key_line(tmp_path))

    with pytest.raises(HostKeyMismatch, match=rf"127\.0\.0\.1:{sshd.port}: host key mismatch"):
        transport.call(target, ["touch", str(marker)])

    assert not marker.exists()
    assert "Accepted publickey" not in sshd.log  # it never even logged in
    assert len(connects) == 1  # and a mismatch is not retried


@pytest.mark.usefixtures("authorized")
def test_it_rejects_an_unknown_host_key_when_none_is_pinned(transport, sshd, tmp_path):
    marker = tmp_path / "marker"
    target = Target(sshd.host, sshd.port, sshd.user, host_keys="")

    with pytest.raises(HostKeyMismatch, match="no host key is pinned"):
        transport.call(target, ["touch", str(marker)])

    assert not marker.exists()


def test_it_does_not_retry_a_refused_login(transport, target, connects):
    # Nothing is authorized: the server refuses the key.
    with pytest.raises(AuthFailed, match="refused the portal's SSH key"):
        transport.call(target, ["true"])

    assert len(connects) == 1


def test_it_gives_up_on_a_closed_port_after_bounded_retries(client_key, connects, monkeypatch):
    sleeps = []
    monkeypatch.setattr("provisioning.transport.time.sleep", sleeps.append)
    transport = Transport(client_key, retries=2, backoff=0.5)
    target = Target("127.0.0.1", sshd_helper.free_port(), "root", "")

    with pytest.raises(Unreachable, match="unreachable after 3 attempts: Connection refused"):
        transport.call(target, ["true"])

    assert len(connects) == 3
    assert sleeps == [0.5, 1.0]


@pytest.mark.usefixtures("authorized")
def test_it_abandons_a_command_that_outlasts_the_command_timeout(client_key, target):
    with Transport(client_key, command_timeout=0.5) as transport:
        started = time.monotonic()
        with pytest.raises(CommandTimeout, match=r"longer than 0\.5s"):
            transport.call(target, ["sleep", "5"])
        assert time.monotonic() - started < 4

        # The connection outlives the abandoned channel.
        assert transport.call(target, ["true"]).exit_status == 0


@pytest.mark.usefixtures("authorized")
def test_it_reuses_the_connection_and_reconnects_after_the_server_drops_it(
    transport, target, sshd, connects, monkeypatch
):
    used = []
    real = paramiko.Transport.open_session

    def recording(self, *args, **kwargs):
        used.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(paramiko.Transport, "open_session", recording)

    transport.call(target, ["true"])
    transport.call(target, ["true"])
    assert used[0] is used[1]
    assert len(connects) == 1

    sshd.drop_connections()
    result = transport.call(target, ["echo", "again"])

    assert result.stdout == b"again\n"
    assert used[-1] is not used[0]
    assert len(connects) == 2


def test_it_runs_the_forced_command_of_a_restricted_key(
    transport, target, sshd, client_key, tmp_path
):
    # This is how the host agent is installed: the key can run the agent and nothing else.
    sshd.authorize(
        client_key.with_suffix(".pub"),
        options='restrict,command="echo forced: $SSH_ORIGINAL_COMMAND; cat"',
    )
    marker = tmp_path / "marker"

    result = transport.call(target, ["touch", str(marker)], stdin=b"request")

    assert result == Result(0, f"forced: touch {marker}\nrequest".encode(), b"")
    assert not marker.exists()
    assert transport.call(target, None, stdin=b"{}").stdout == b"forced:\n{}"


@pytest.mark.usefixtures("authorized")
def test_it_reports_a_connection_lost_while_the_command_runs(transport, target):
    # The command kills its own sshd session process, which drops the connection.
    with pytest.raises(TransportError, match="connection died"):
        transport.call(target, ["sh", "-c", "kill -9 $PPID; sleep 5"])

    assert transport.call(target, ["true"]).exit_status == 0


@pytest.mark.usefixtures("authorized")
def test_it_shares_one_connection_between_threads(transport, target, sshd, connects):
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda n: transport.call(target, ["echo", str(n)]), range(6)))

    assert [r.stdout for r in results] == [f"{n}\n".encode() for n in range(6)]
    assert len(connects) == 1
    assert len(sshd.connection_pids()) == 1


def test_it_keeps_the_output_of_a_forced_command_that_ignores_stdin(
    transport, target, sshd, client_key
):
    sshd.authorize(client_key.with_suffix(".pub"), options='restrict,command="echo ignored"')

    result = transport.call(target, None, stdin=b"x" * 4_000_000)

    assert result == Result(0, b"ignored\n", b"")


def test_it_fetches_the_host_keys_and_their_fingerprints(sshd, transport, client_key):
    lines = fetch_host_keys(sshd.host, sshd.port, timeout=5)

    expected = set()
    for pub in sshd.host_key_pubs:
        key_type, key_b64 = pub.read_text().split()[:2]
        listing = subprocess.run(
            ["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True
        ).stdout
        expected.add(f"{key_type} {key_b64} {listing.split()[1]}")
    assert len(expected) == 2
    assert set(lines) == expected

    # The lines, once confirmed, pin the host.
    sshd.authorize(client_key.with_suffix(".pub"))
    target = Target(sshd.host, sshd.port, sshd.user, "\n".join(lines))
    assert transport.call(target, ["true"]).exit_status == 0
