from django.core.management import call_command


def test_it_serves_an_openapi_schema_without_warnings(tmp_path, db):
    schema = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(schema))
    text = schema.read_text()
    for path in ("/api/reservations/{id}/extend/", "/api/availability/", "/api/accelerators/"):
        assert path in text
