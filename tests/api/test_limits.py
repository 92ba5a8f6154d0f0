"""What a request may ask of the API: bounded pages, bounded nesting, no NUL, a rate per client.

Each of these answered 500 (or locked out the whole site) before: found by probing the
production settings as an attacker would (issue 14).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from tests.factories import PASSWORD, AcceleratorFactory, HostFactory, UserFactory

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def accelerators(db):
    host = HostFactory(name="gpu1")
    return [AcceleratorFactory(host=host, index=i) for i in range(3)]


@pytest.mark.parametrize(
    "query", ["limit=99999999999999999999", "offset=99999999999999999999", "limit=5000"]
)
def test_it_bounds_page_sizes_and_offsets_for_anyone(client, accelerators, query):
    answer = client.get(f"/api/accelerators/?{query}")
    assert answer.status_code == 200
    assert len(answer.json()["results"]) <= 1000


@pytest.mark.parametrize(
    "url",
    [
        "/api/accelerators/?host=%00",
        "/api/jobs/?project=%00",
        "/api/hosts/?hwspec=cu%00da",
        "/api/availability/?count=1&hwspec=%00",
    ],
)
def test_it_refuses_a_nul_in_a_query_parameter_with_a_400(client, db, url):
    answer = client.get(url)
    assert answer.status_code == 400
    assert answer.json() == {
        "code": "bad_request",
        "message": "A query parameter contains a NUL character.",
    }


def test_it_refuses_a_nul_in_a_page_query_with_a_400(client, user):
    client.force_login(user)
    answer = client.get("/jobs/submit/?project=%00")
    assert answer.status_code == 400
    assert b"NUL" in answer.content


def test_it_answers_a_deeply_nested_body_with_a_400(user):
    api = APIClient()
    api.force_authenticate(user)
    body = "[" * 5000 + "]" * 5000
    answer = api.post("/api/reservations/", body, content_type="application/json")
    assert answer.status_code == 400
    assert answer.json()["code"] == "parse_error"
    assert "nested too deeply" in answer.json()["message"]


def test_it_throttles_the_api_per_user_and_per_anonymous_address(db, accelerators, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": "3/min", "user": "4/min"})
    anonymous = APIClient()
    assert [anonymous.get("/api/hosts/").status_code for _ in range(4)] == [200] * 3 + [429]
    answer = anonymous.get("/api/hosts/")
    assert answer.json()["code"] == "throttled" and "Retry-After" in answer.headers
    # Another address is not affected; nor is a user with a token, counted as themselves.
    assert APIClient(REMOTE_ADDR="192.0.2.7").get("/api/hosts/").status_code == 200
    token = Token.objects.create(user=UserFactory())
    alice = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert [alice.get("/api/hosts/").status_code for _ in range(5)] == [200] * 4 + [429]


def login(client, username, password, forwarded_for):
    return client.post(
        reverse("account_login"),
        {"login": username, "password": password},
        REMOTE_ADDR="10.0.0.1",  # the proxy's address, the same for every client
        HTTP_X_FORWARDED_FOR=forwarded_for,
    )


def test_it_limits_failed_logins_per_client_behind_the_proxy_not_per_proxy(client, db, settings):
    settings.BEHIND_PROXY = True
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1  # what BEHIND_PROXY=1 sets, see the next test
    victim = UserFactory(username="victim")
    for i in range(12):  # an attacker guessing at many accounts from one address
        login(client, f"nobody{i}", "wrong", "198.51.100.66")
    locked_out = login(client, "nobody99", "wrong", "198.51.100.66")
    assert "Too many failed login attempts" in locked_out.content.decode()

    answer = login(client, victim.username, PASSWORD, "203.0.113.5, 198.51.100.1")
    assert answer.status_code == 302  # the victim, behind another address, logs in


def test_it_trusts_the_proxys_hop_only_when_behind_a_proxy(tmp_path):
    shown = "from django.conf import settings as s; import json; print(json.dumps(" + (
        "[s.ALLAUTH_TRUSTED_PROXY_COUNT, s.REST_FRAMEWORK['NUM_PROXIES']]))"
    )

    def counts(**extra):
        env = {"PATH": os.environ["PATH"], "PORTAL_VAR_DIR": str(tmp_path), "DJANGO_DEBUG": "1"}
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", shown],
            cwd=ROOT, env=env | extra, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return json.loads(done.stdout.splitlines()[-1])

    assert counts() == [0, 0]  # no proxy: X-Forwarded-For is whatever the client claims
    assert counts(BEHIND_PROXY="1") == [1, 1]


def test_it_answers_a_body_over_the_upload_limit_with_a_json_400(user):
    api = APIClient()
    api.force_authenticate(user)
    body = '{"purpose": "' + "x" * (3 * 1024 * 1024) + '"}'
    answer = api.post("/api/reservations/", body, content_type="application/json")
    assert answer.status_code == 400
    assert answer.json() == {"code": "too_large", "message": "The request body is over 2.5 MiB."}
