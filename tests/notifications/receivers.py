"""Real receivers on loopback for the notification sender (fixtures for tests/notifications and
the loop's tests): an SMTP server (aiosmtpd), one that accepts a connection and never answers,
and an HTTP server that checks webhook signatures as the README tells receivers to."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from tests.provisioning.sshd import free_port


class _Inbox:
    def __init__(self):
        self.messages: list = []
        self.peers: list = []  # the client's (address, port) of each message: its connection

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        self.peers.append(session.peer)
        return "250 OK"


class SmtpServer:
    """An SMTP server on a fixed loopback port, started and stopped at will (a mail relay that
    is down, then back)."""

    def __init__(self, port: int):
        self.port = port
        self.inbox = _Inbox()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def messages(self) -> list:
        return self.inbox.messages


@pytest.fixture
def smtp(settings):
    """Django sends through SMTP to a loopback port where nothing listens yet."""
    server = SmtpServer(free_port())
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    yield server
    server.stop()


class HangingSmtp:
    """Accepts connections and never says a word: an SMTP server that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for conn in self._held:
            conn.close()
        self.sock.close()


@pytest.fixture
def hanging_smtp(settings):
    server = HangingSmtp()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.NOTIFY_TIMEOUT_SECONDS = 1
    yield server
    server.close()


def verify(secret: str, header: str, body: bytes, *, tolerance: int = 300) -> bool:
    """A receiver's check, as the README gives it: recompute the HMAC of "t.body" with the
    secret, compare in constant time, refuse an old timestamp (a replay)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    if abs(time.time() - timestamp) > tolerance:
        return False
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(mac.hexdigest(), fields["v1"])


class Receiver:
    """A webhook receiver: keeps what it was sent, answers `status` (200 unless told)."""

    def __init__(self, secret_of):
        self.received: list[dict] = []
        self.status = 200
        self.secret_of = secret_of  # () -> the webhook's secret
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(
                    {
                        "headers": dict(self.headers),
                        "body": json.loads(body),
                        "verified": verify(
                            receiver.secret_of(), self.headers["X-Porterbox-Signature"], body
                        ),
                    }
                )
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _certificate(name: str, key, issuer_name, issuer_key, ca: bool):
    """An X.509 certificate for `name` (a CA's, or a server's with the name as its DNS SAN)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


class TlsReceiver:
    """An https webhook receiver on loopback whose certificate names `name`, signed by a CA of
    its own (`ca_file`); it keeps the TLS server name (SNI) and the request each POST came
    with."""

    def __init__(self, directory, name: str):
        import ssl

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        ca_key = ec.generate_private_key(ec.SECP256R1())
        key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("Test CA", ca_key, None, None, ca=True)
        cert = _certificate(name, key, ca.subject, ca_key, ca=False)
        pem = serialization.Encoding.PEM
        self.ca_file = str(directory / "ca.pem")
        (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
        (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
        (directory / "key.pem").write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        self.server_names: list[str | None] = []
        self.received: list[dict] = []
        receiver = self

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        context.sni_callback = lambda sock, server_name, ctx: receiver.server_names.append(
            server_name
        )

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append(
                    {"path": self.path, "host": self.headers["Host"], "body": json.loads(body)}
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
