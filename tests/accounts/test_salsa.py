"""Debian membership from salsa groups, read from a real HTTP server on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from portal.accounts.salsa import fetch_groups, member_source_after_login


@pytest.fixture
def salsa():
    """A tiny stand-in for GitLab's /oauth/userinfo that checks the bearer token."""
    state = {"body": {"sub": "1", "groups": ["debian", "debian/deep-learning-team"]}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/oauth/userinfo" and self.headers["Authorization"] == "Bearer tok"
            payload = json.dumps(state["body"]).encode() if ok else b"{}"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", state
    server.shutdown()


def test_it_reads_the_groups_claim(salsa):
    url, _ = salsa
    assert fetch_groups(url, "tok") == ["debian", "debian/deep-learning-team"]


def test_it_leaves_the_role_alone_when_salsa_refuses(salsa):
    url, _ = salsa
    assert fetch_groups(url, "wrong-token") is None


def test_it_refuses_a_malformed_claim(salsa):
    url, state = salsa
    state["body"] = {"groups": "debian"}
    assert fetch_groups(url, "tok") is None


def test_it_leaves_the_role_alone_when_salsa_is_down():
    assert fetch_groups("http://127.0.0.1:9", "tok", timeout=1) is None


@pytest.mark.parametrize(
    ("current", "groups", "expected"),
    [
        ("", ["debian"], "salsa"),
        ("", ["some-other-group"], ""),
        ("salsa", [], ""),  # left the group: a salsa grant is withdrawn
        ("staff", [], "staff"),  # a staff grant is never withdrawn by salsa
        ("staff", ["debian"], "staff"),
    ],
)
def test_it_derives_the_debian_member_role(current, groups, expected):
    assert member_source_after_login(current, groups, ["debian"]) == expected
