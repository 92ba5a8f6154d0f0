"""The installed `porterbox` command against a live portal: gunicorn on the test database.

Tests here commit their rows (transactional_db) so that gunicorn's own connections see them;
gunicorn runs once per module, with no persistent connection, so the flush between tests
leaves it nothing stale.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
PORTERBOX = BIN / "porterbox"
ZONE = "Europe/Berlin"  # the user's zone, not the portal's (UTC)


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        return f"postgres://{db['USER']}{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


@pytest.fixture(scope="session")
def installed() -> Path:
    """The porterbox command in this venv, installed from this checkout's cli/ as it is now."""
    if not PORTERBOX.exists():
        pytest.fail(f"{PORTERBOX} is missing: run .venv/bin/pip install ./cli (make does)")
    import porterbox_cli  # the installed copy

    installed_dir = Path(porterbox_cli.__file__).parent
    stale = [
        source.name
        for source in (ROOT / "cli" / "porterbox_cli").glob("*.py")
        if not (installed_dir / source.name).exists()
        or (installed_dir / source.name).read_bytes() != source.read_bytes()
    ]
    if stale and installed_dir != ROOT / "cli" / "porterbox_cli":
        pytest.fail(f"the installed porterbox differs from cli/ ({', '.join(stale)}): "
                    "run .venv/bin/pip install ./cli")  # fmt: skip
    return PORTERBOX


@pytest.fixture(scope="module")
def portal_var(tmp_path_factory) -> Path:
    """The served portal's var directory (its media in media/, where job outputs are kept)."""
    return tmp_path_factory.mktemp("portal-var")


@pytest.fixture(scope="module")
def gunicorn(django_db_setup, django_db_blocker, portal_var) -> Iterator[str]:
    """The portal served by gunicorn on a free loopback port; its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    var = portal_var
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "DATABASE_CONN_MAX_AGE": "0",
        "DJANGO_DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "STATIC_MANIFEST": "0",
        "CACHE_URL": "locmem://",
        "PORTAL_VAR_DIR": str(var),
        "MEDIA_ROOT": str(var / "media"),
        "LOG_LEVEL": "ERROR",  # refusals are the tests' point, not news
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    log_path = var / "gunicorn.log"
    argv = [str(BIN / "gunicorn"), "portal.wsgi", "-b", f"127.0.0.1:{port}",
            "--workers", "1", "--threads", "4"]  # fmt: skip
    with log_path.open("w") as log:
        # Our own venv's gunicorn with fixed arguments.
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                probe_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                probe_conn.request("GET", "/api/stacks/")
                if probe_conn.getresponse().status == 200:
                    break
            time.sleep(0.1)
        else:
            pytest.fail(f"gunicorn did not answer:\n{log_path.read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@dataclass
class Client:
    """One user's shell: their own config directory, their local zone."""

    home: Path
    url: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTERBOX_")}
        env.update(XDG_CONFIG_HOME=str(self.home / "config"), HOME=str(self.home), TZ=ZONE)
        env.update(extra)
        return env

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60,
                 **env: str) -> Run:  # fmt: skip
        done = subprocess.run(
            [str(PORTERBOX), *args], capture_output=True, text=True, input=input,
            env=self.env(**env), timeout=timeout,
        )  # fmt: skip
        return Run(done.returncode, done.stdout, done.stderr)

    def login(self, user) -> str:
        token = Token.objects.get_or_create(user=user)[0].key
        done = self("login", self.url, PORTERBOX_TOKEN=token)
        assert done.code == 0, done.err
        return token


@pytest.fixture
def porterbox(installed, gunicorn, transactional_db, tmp_path) -> Client:
    return Client(tmp_path, gunicorn)
