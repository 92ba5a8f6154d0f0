"""What schemathesis found (tests/api/test_schemathesis.py), each pinned by a plain request."""

import pytest
from rest_framework.exceptions import ValidationError
from rest_framework.test import APIClient

from portal.api.errors import exception_handler
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory


@pytest.fixture
def api(debian_member):
    client = APIClient()
    client.force_authenticate(debian_member)
    return client


def test_it_refuses_a_malformed_device_with_a_400(api):
    host = HostFactory(name="gpu1")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    AcceleratorFactory(host=host, index=0)
    body = {
        "host": "gpu1", "stack": "cuda-12", "devices": ["index"],
        "start": "2026-11-23T10:00:00Z", "end": "2026-11-23T12:00:00Z",
    }  # fmt: skip
    # The message's braces went through str.format: a KeyError, a 500.
    answer = api.post("/api/reservations/", body, format="json")
    assert answer.status_code == 400
    assert answer.json()["errors"]["devices"] == {
        "0": ['Give an index (0) or {"vendor": "amd", "index": 0}.']
    }


@pytest.mark.parametrize("path", ["/api/jobs/1.5/", "/api/stacks/a%0Ab/", "/api/nothing/"])
def test_it_answers_an_unknown_api_path_with_a_json_404(api, path):
    answer = api.get(path)  # was the site's HTML page
    assert answer.status_code == 404
    assert answer["Content-Type"] == "application/json"
    assert answer.json()["code"] == "not_found"


def test_it_still_redirects_an_api_path_without_its_slash(api, db):
    assert api.get("/api/hosts").status_code == 301


def test_it_gives_errors_as_an_object_even_for_a_list_of_messages():
    answer = exception_handler(ValidationError(["Give a body."]), {})
    assert answer.data == {
        "code": "invalid",
        "message": "Give a body.",
        "errors": {"non_field_errors": ["Give a body."]},
    }
