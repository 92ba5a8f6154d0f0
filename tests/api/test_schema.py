"""The OpenAPI schema says what the API answers, errors and nulls included (issue 14)."""

import pytest
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator


def test_it_serves_an_openapi_schema_without_warnings(tmp_path, db):
    schema = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(schema))
    text = schema.read_text()
    for path in ("/api/reservations/{id}/extend/", "/api/availability/", "/api/accelerators/"):
        assert path in text


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def operations(schema):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def error_body(answer):
    return answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


def test_it_documents_the_errors_every_operation_can_give(schema):
    found = dict(operations(schema))
    # A job's output; with the package tests: test-runs list, create, one; a package
    assert len(found) == 30
    for name, operation in found.items():
        codes = set(operation["responses"])
        assert {"400", "401", "406", "429"} <= codes, name
        assert error_body(operation["responses"]["401"]) == "Error", name
        assert "Retry-After" in operation["responses"]["429"]["headers"], name
        assert ("404" in codes) == ("{" in name), name
    assert "403" in found["GET /api/ansible-inventory/"]["responses"]  # staff only
    assert "403" not in found["GET /api/hosts/"]["responses"]
    for name in ("POST /api/reservations/", "POST /api/reservations/{id}/extend/"):
        assert error_body(found[name]["responses"]["409"]) == "Conflict"
        assert "503" in found[name]["responses"]
    assert "415" in found["POST /api/reservations/{id}/extend/"]["responses"]
    assert "415" not in found["POST /api/reservations/{id}/end/"]["responses"]  # reads no body
    assert "409" in found["POST /api/jobs/{id}/cancel/"]["responses"]
    assert "409" in found["POST /api/ssh-keys/"]["responses"]


def test_it_describes_the_error_body(schema):
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "message"]
    assert error["properties"]["errors"]["type"] == "object"
    conflict = schema["components"]["schemas"]["Conflict"]
    assert conflict["properties"]["blockers"]["type"] == "array"


@pytest.mark.parametrize(
    ("component", "field"),
    [
        ("Job", "host"),  # a queued job has no host yet
        ("Job", "started_at"),
        ("Job", "ended_at"),
        ("Job", "exit_status"),
        ("Job", "array_size"),  # a job in no array
        ("Reservation", "granted_at"),
        ("Reservation", "revoked_at"),
        ("SSHKey", "last_used"),
    ],
)
def test_it_declares_what_may_be_null_nullable(schema, component, field):
    assert schema["components"]["schemas"][component]["properties"][field].get("nullable")
