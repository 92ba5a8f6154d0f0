"""SSH transport from the portal to a host agent.

Host keys are pinned: only the keys recorded when the host was registered are accepted, never
~/.ssh/known_hosts, the system files or trust-on-first-use. One connection per (host, port, user)
is kept open per process and shared by the threads that call it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import select
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

import paramiko
from paramiko.ssh_exception import IncompatiblePeer, NoValidConnectionsError

__all__ = [
    "AuthFailed",
    "CommandTimeout",
    "HostKeyMismatch",
    "Result",
    "Target",
    "Transport",
    "TransportError",
    "Unreachable",
    "fetch_host_keys",
]


class TransportError(Exception):
    """Talking to a host failed; the message says which host and what happened, for staff."""


class HostKeyMismatch(TransportError):
    """The host offered a key that is not pinned for it; nothing was sent."""


class AuthFailed(TransportError):
    """The host refused the portal's key."""


class Unreachable(TransportError):
    """No SSH connection could be made, after the retries."""


class CommandTimeout(TransportError):
    """The remote command ran past the command timeout; its channel was closed."""


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    host_keys: str  # known_hosts lines or "keytype base64" lines, one key a line

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class Result:
    exit_status: int  # -1 when the server sent none (the command was killed by a signal)
    stdout: bytes
    stderr: bytes


# paramiko raises plain SSHException for these; they mean the server went away or was too busy
# (sshd's MaxStartups drops connections before the banner), so a later attempt may work.
_TRANSIENT_SSH_MESSAGES = ("No existing session", "Error reading SSH protocol banner")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, paramiko.SSHException):
        # Subclasses (authentication, bad host key, channel errors) are never transient.
        return type(exc) is paramiko.SSHException and any(
            m in str(exc) for m in _TRANSIENT_SSH_MESSAGES
        )
    # NoValidConnectionsError (refused or unreachable on every address) is an OSError.
    return isinstance(exc, (ConnectionError, TimeoutError, EOFError, NoValidConnectionsError))


def parse_host_keys(text: str) -> list[paramiko.PKey]:
    """Keys from known_hosts lines ("host keytype base64") or "keytype base64 [comment]" lines.

    The host field of a known_hosts line is ignored: the caller pins these keys to its target.
    """
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0].startswith("@"):
            # @cert-authority/@revoked change what the line means; refuse rather than misread it.
            raise TransportError(f"host key line {number}: {fields[0]} lines are not supported")
        if not _looks_like_key_type(fields[0]):
            fields = fields[1:]  # known_hosts: the first field is the host pattern
        if len(fields) < 2:
            raise TransportError(f"host key line {number} has no key")
        try:
            keys.append(paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1])))
        except (binascii.Error, paramiko.SSHException, ValueError) as exc:
            msg = f"host key line {number} is not a valid {fields[0]} key: {exc}"
            raise TransportError(msg) from exc
    return keys


def _looks_like_key_type(field: str) -> bool:
    return field.startswith(("ssh-", "ecdsa-", "sk-"))


class _RejectUnknownHostKey(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising our error (with the offered key) instead of SSHException."""

    def missing_host_key(self, client, hostname, key):
        raise HostKeyMismatch(
            f"{hostname}: no host key is pinned for this host; it offered {key.get_name()} "
            f"{key.fingerprint}. Refusing to connect; record the host's keys first."
        )


STREAM_CHUNK = 256 * 1024


class Transport:
    """Runs commands on hosts over SSH, reusing one connection per (host, port, user).

    A connection that fails transiently is tried `retries` more times, waiting `backoff`
    seconds, then twice that, and so on; a refused key or a host key mismatch fails at once.
    """

    def __init__(
        self,
        private_key: paramiko.PKey | str | os.PathLike[str],
        *,
        connect_timeout: float = 10,
        banner_timeout: float = 10,
        auth_timeout: float = 10,
        command_timeout: float = 60,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if not isinstance(private_key, paramiko.PKey):
            private_key = paramiko.PKey.from_path(os.fspath(private_key))
        self.private_key = private_key
        self.connect_timeout = connect_timeout
        self.banner_timeout = banner_timeout
        self.auth_timeout = auth_timeout
        self.command_timeout = command_timeout
        self.retries = retries
        self.backoff = backoff
        self._lock = threading.Lock()  # guards the two dicts below
        self._clients: dict[tuple[str, int, str], tuple[paramiko.SSHClient, str]] = {}
        # One lock per target, so a slow or dead host does not hold up calls to the others.
        self._target_locks: dict[tuple[str, int, str], threading.Lock] = {}

    def call(
        self,
        target: Target,
        argv: list[str] | None = None,
        stdin: bytes = b"",
        *,
        body: BinaryIO | None = None,
        sink: BinaryIO | None = None,
    ) -> Result:
        """Run argv on target (a forced-command key ignores it), feeding stdin, and wait for it.

        Streams, for the agent's large inputs and outputs (docs/agent.md, "Protocol"): body
        is read to its end, a block at a time, and sent after stdin; with a sink, stdout's
        first line is the result's stdout and everything after it is written to the sink. The
        command timeout then bounds the time without progress, not the whole transfer.
        """
        command = _command_line(argv)
        chan = self._open_session(target)
        try:
            return self._run(chan, target, command, stdin, body, sink)
        finally:
            chan.close()

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client, _ in clients:
            client.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- connections ------------------------------------------------------------------------

    def _open_session(self, target: Target) -> paramiko.Channel:
        transport = self._connection(target)
        try:
            return transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if transport.is_active():
                # The connection is alive but refused a channel (sshd's MaxSessions, say):
                # dropping it would kill the other commands running on it.
                raise TransportError(f"{target}: could not open an SSH session: {exc}") from exc
        # The server dropped the cached connection since its last use; nothing was sent on it,
        # so connecting again once is safe.
        transport = self._connection(target)
        try:
            return transport.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransportError(f"{target}: could not open an SSH session: {exc}") from exc

    def _connection(self, target: Target) -> paramiko.Transport:
        key = (target.host, target.port, target.user)
        with self._lock:
            target_lock = self._target_locks.setdefault(key, threading.Lock())
        with target_lock:
            with self._lock:
                client, pinned = self._clients.get(key, (None, None))
            if client is not None:
                transport = client.get_transport()
                # Keys re-recorded by staff must be checked again, on a new connection.
                if transport is not None and transport.is_active() and pinned == target.host_keys:
                    return transport
                client.close()
            client = self._connect_with_retries(target)
            with self._lock:
                self._clients[key] = (client, target.host_keys)
            transport = client.get_transport()
            if transport is None:
                raise AssertionError("unreachable")  # a client just connected has its transport
            return transport

    def _connect_with_retries(self, target: Target) -> paramiko.SSHClient:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return self._connect(target)
            except TransportError:
                raise
            except Exception as exc:
                if not _is_transient(exc):
                    raise TransportError(f"{target}: SSH connection failed: {exc}") from exc
                if attempt == self.retries:
                    raise Unreachable(
                        f"{target}: unreachable after {attempt + 1} attempts: {_describe(exc)}"
                    ) from exc
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    def _connect(self, target: Target) -> paramiko.SSHClient:
        keys = parse_host_keys(target.host_keys)
        client = paramiko.SSHClient()
        # Only the pinned keys: no load_system_host_keys(), and never AutoAddPolicy.
        name = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
        for host_key in keys:
            client.get_host_keys().add(name, host_key.get_name(), host_key)
        client.set_missing_host_key_policy(_RejectUnknownHostKey())
        try:
            client.connect(
                target.host,
                port=target.port,
                username=target.user,
                pkey=self.private_key,
                timeout=self.connect_timeout,
                banner_timeout=self.banner_timeout,
                auth_timeout=self.auth_timeout,
                look_for_keys=False,
                allow_agent=False,
            )
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(
                f"{target.host}:{target.port}: host key mismatch: it offered "
                f"{exc.key.get_name()} {exc.key.fingerprint}, pinned: "
                f"{', '.join(k.fingerprint for k in keys)}. Refusing to connect; if the host was "
                "reinstalled, confirm and record its new keys."
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise AuthFailed(
                f"{target}: the host refused the portal's SSH key "
                f"({self.private_key.fingerprint}): {exc}"
            ) from exc
        except BaseException:
            client.close()
            raise
        return client

    # -- commands ---------------------------------------------------------------------------

    def _run(
        self,
        chan: paramiko.Channel,
        target: Target,
        command: str,
        stdin: bytes,
        body: BinaryIO | None = None,
        sink: BinaryIO | None = None,
    ) -> Result:
        deadline = time.monotonic() + self.command_timeout
        timed_out = CommandTimeout(
            f"{target}: command ran longer than {self.command_timeout:g}s and was abandoned"
        )
        chan.settimeout(self.command_timeout)  # bounds the blocking sends below
        out, err = bytearray(), bytearray()
        in_head = True  # with a sink: still reading stdout's first line
        try:
            chan.exec_command(command)
            try:
                if stdin:
                    chan.sendall(stdin)
                while body is not None and (chunk := body.read(STREAM_CHUNK)):
                    chan.sendall(chunk)
                    deadline = time.monotonic() + self.command_timeout  # it moves on
            except OSError:
                # A command may exit without reading all its input; its output still counts.
                if not chan.closed:
                    raise
            chan.shutdown_write()
            while True:
                # Data always arrives before EOF, so once EOF is seen the buffers are complete.
                finished = chan.eof_received or chan.closed
                while chan.recv_ready():
                    data = chan.recv(65536)
                    if sink is None:
                        out += data
                        continue
                    deadline = time.monotonic() + self.command_timeout
                    if not in_head:
                        sink.write(data)
                        continue
                    out += data
                    end = out.find(b"\n")
                    if end >= 0:
                        in_head = False
                        sink.write(out[end + 1 :])
                        del out[end + 1 :]
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                if finished:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out
                # The channel's fileno becomes readable on stdout or stderr data, EOF or close.
                select.select([chan], [], [], remaining)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                raise timed_out
        except TimeoutError as exc:  # socket.timeout from a send
            raise timed_out from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"{target}: the command failed over SSH: {exc}") from exc
        if not chan.eof_received:  # closed without EOF: the connection died under the command
            raise TransportError(f"{target}: the connection died while the command ran")
        return Result(chan.recv_exit_status(), bytes(out), bytes(err))


def _command_line(argv: list[str] | None) -> str:
    if not argv:
        return ""
    for arg in argv:
        if "\0" in arg or "\n" in arg or "\r" in arg:
            raise ValueError(f"command argument contains NUL or a line break: {arg!r}")
    # For keys without a forced command the remote side runs this through the user's shell.
    return " ".join(shlex.quote(arg) for arg in argv)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NoValidConnectionsError):  # its own message is "[Errno None] ..."
        return "; ".join(
            sorted({(isinstance(e, OSError) and e.strerror) or str(e) for e in exc.errors.values()})
        )
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# Connected to once each, as ssh-keyscan does, because a server shows one key per connection.
_SCAN_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
)


_SCAN_LOG = "provisioning.transport.keyscan"
logging.getLogger(_SCAN_LOG).setLevel(logging.CRITICAL)


def fetch_host_keys(host: str, port: int = 22, timeout: float = 10) -> list[str]:
    """The host's keys as "keytype base64 SHA256:fingerprint" lines, for staff to confirm.

    Nothing here is trusted: staff compare the fingerprints with the host's own
    (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`) before the lines are recorded.
    """
    lines = []
    for key_type in _SCAN_KEY_TYPES:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise Unreachable(f"{host}:{port}: cannot connect: {exc}") from exc
        transport = paramiko.Transport(sock)
        # A host without a key of this type is the expected answer here, not an error to log
        # with a traceback.
        transport.set_log_channel(_SCAN_LOG)
        try:
            transport.banner_timeout = timeout
            transport.get_security_options().key_types = [key_type]
            try:
                transport.start_client(timeout=timeout)
            except IncompatiblePeer as exc:
                if "host key" in str(exc):
                    continue  # the host has no key of this type
                raise TransportError(f"{host}:{port}: SSH handshake failed: {exc}") from exc
            except paramiko.SSHException as exc:
                raise TransportError(f"{host}:{port}: SSH handshake failed: {exc}") from exc
            key = transport.get_remote_server_key()
            line = f"{key.get_name()} {key.get_base64()} {key.fingerprint}"
            if line not in lines:
                lines.append(line)
        finally:
            transport.close()
    if not lines:
        raise TransportError(f"{host}:{port}: offered no host key of a supported type")
    return lines
