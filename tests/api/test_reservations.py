"""The reservations API: JSON in and out, precise 4xx errors, never someone else's data."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from portal.booking.models import AuditEntry, Reservation
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

START = "2026-11-23T10:00:00Z"
END = "2026-11-23T12:00:00Z"


pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture
def host(db):
    host = HostFactory(name="gpu1", fqdn="gpu1.debian.net", ssh_port=2222)
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(2):
        AcceleratorFactory(host=host, index=i)
    return host


@pytest.fixture
def member(db):
    return UserFactory(username="alice", debian_member_source="salsa")


@pytest.fixture
def api(member):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=member).key}")
    return client


def book(api, **body):
    body = {"host": "gpu1", "stack": "cuda-12", "start": START, "end": END, **body}
    body = {k: v for k, v in body.items() if v is not None}
    return api.post("/api/reservations/", body, format="json", REMOTE_ADDR="198.51.100.4")


def test_it_books_chosen_devices_and_shows_how_to_log_in(api, host):
    response = book(api, devices=[1])
    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["devices"] == [1] and data["state"] == "scheduled"
    assert data["start"] == "2026-11-23T10:00:00Z"
    assert data["ssh"]["command"] == "ssh -p 2222 alice@gpu1.debian.net"
    assert AuditEntry.objects.get().ip == "198.51.100.4"


def test_it_books_a_need_and_the_whole_host(api, host):
    assert book(api, host=None, count=1, hwspec="cuda:sm_90").json()["devices"] == [0]
    response = book(api, whole_host=True, start=END, end="2026-11-23T13:00:00Z")
    assert response.json()["devices"] == [0, 1]


def test_it_answers_a_conflict_with_409_naming_what_blocks(api, host):
    book(api, devices=[0])
    other = APIClient()
    other.force_authenticate(UserFactory(debian_member_source="staff"))
    response = book(other, devices=[0, 1], start="2026-11-23T11:00:00+00:00")
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "conflict" and "gpu1 #0 is booked" in body["message"]
    assert body["blockers"] == [
        {"host": "gpu1", "index": 0, "start": START, "end": END, "yours": False}
    ]


@pytest.mark.parametrize(
    ("body", "field_or_code"),
    [
        ({"start": "tomorrow"}, "start"),
        ({"start": "2026-11-23T10:00:00"}, "start"),  # no offset
        ({"start": "2026-11-23T10:00:00+25:00"}, "start"),  # no such offset
        ({"end": "2026-11-23T09:00:00Z"}, "end_before_start"),
        ({"end": START}, "end_before_start"),  # zero length
        ({"start": "2026-11-23T10:05:00Z"}, "granularity"),
        ({"end": "2026-11-27T10:00:00Z"}, "too_long"),
        ({"start": "2027-01-23T10:00:00Z", "end": "2027-01-23T11:00:00Z"}, "too_far_ahead"),
        ({"start": "2026-11-23T08:00:00Z"}, "in_past"),
        ({"devices": [7]}, "devices"),
        ({"devices": [0, 0]}, "duplicate_device"),
        ({"stack": "rocm-9"}, "stack"),
        ({"devices": []}, "non_field_errors"),
        ({"devices": [0], "count": 1}, "non_field_errors"),
        ({"hwspec": "quantum", "count": 1, "devices": None}, "hwspec"),
    ],
)
def test_it_refuses_bad_input_with_a_precise_400(api, host, body, field_or_code):
    body.setdefault("devices", [0])
    response = book(api, **body)
    assert response.status_code == 400, response.json()
    data = response.json()
    assert data["code"] == field_or_code or field_or_code in data.get("errors", {}), data
    assert data["message"]
    assert not Reservation.objects.exists()


def test_it_names_the_device_it_refuses(api, host):
    """Devices named by index are read once, locked in the booking's transaction: an unknown
    or retired index is a 400 naming the field and the device, and nothing is written."""
    host.accelerators.filter(index=1).update(retired=True)
    for devices, words in (([0, 7], "gpu1 has no accelerator #7."), ([1], "is retired")):
        response = book(api, devices=devices)
        assert response.status_code == 400, response.json()
        assert words in response.json()["errors"]["devices"][0]
    assert not Reservation.objects.exists()


def test_it_refuses_a_stack_the_host_lacks(api, host):
    DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    response = book(api, devices=[0], stack="rocm-6")
    assert (response.status_code, response.json()["code"]) == (400, "stack_missing")


def test_it_lists_shows_and_changes_only_ones_own_reservations(api, host):
    mine = book(api, devices=[0]).json()
    stranger = APIClient()
    stranger.force_authenticate(UserFactory(debian_member_source="staff"))
    assert stranger.get("/api/reservations/").json()["results"] == []
    for method, path in [
        ("get", f"/api/reservations/{mine['id']}/"),
        ("post", f"/api/reservations/{mine['id']}/cancel/"),
        ("get", f"/api/reservations/{mine['id']}/extension/"),
    ]:
        response = getattr(stranger, method)(path)
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert [r["id"] for r in api.get("/api/reservations/?when=upcoming").json()["results"]] == [
        mine["id"]
    ]
    assert api.get("/api/reservations/?when=past").json()["results"] == []
    assert api.get("/api/reservations/?when=someday").status_code == 400


def test_it_extends_shortens_and_cancels(api, host):
    r = book(api, devices=[0]).json()
    base = f"/api/reservations/{r['id']}/"
    assert api.get(base + "extension/").json()["latest_end"] == "2026-11-26T10:00:00Z"
    response = api.post(base + "extend/", {"end": "2026-11-23T14:00:00Z"}, format="json")
    assert response.json()["end"] == "2026-11-23T14:00:00Z"
    response = api.post(base + "shorten/", {"end": "2026-11-23T11:00:00Z"}, format="json")
    assert response.json()["end"] == "2026-11-23T11:00:00Z"
    assert api.post(base + "end/").json()["code"] == "not_started"
    assert api.post(base + "cancel/").json()["state"] == "cancelled"
    assert api.post(base + "cancel/").json()["code"] == "immutable"
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == [
        "create", "extend", "shorten", "cancel",
    ]  # fmt: skip


def test_it_refuses_an_extension_into_a_neighbour_with_409(api, host):
    r = book(api, devices=[0]).json()
    other = APIClient()
    other.force_authenticate(UserFactory(debian_member_source="staff"))
    book(other, devices=[0], start=END, end="2026-11-23T13:00:00Z")
    response = api.post(
        f"/api/reservations/{r['id']}/extend/", {"end": "2026-11-23T14:00:00Z"}, format="json"
    )
    assert response.status_code == 409
    assert "extended to 2026-11-23 12:00 UTC at most" in response.json()["message"]
    assert response.json()["blockers"][0]["start"] == END


def test_it_finds_availability_for_anyone(host, client):
    api = APIClient()
    book_as = APIClient()
    book_as.force_authenticate(UserFactory(debian_member_source="staff"))
    book(book_as, devices=[0, 1])
    response = api.get(
        "/api/availability/",
        {"count": 2, "hwspec": "cuda", "hours": 1, "start": "2026-11-23T10:00:00+01:00"},
    )
    assert response.status_code == 200
    assert response.json() == [
        {"host": "gpu1", "start": END, "end": "2026-11-23T13:00:00Z", "free": 2}
    ]
    response = api.get("/api/availability/", {"count": 0, "hours": 1})
    assert response.status_code == 400 and "count" in response.json()["message"]
    response = api.get("/api/availability/", {"hours": "0.1"})
    assert response.json()["message"] == "hours: Use a multiple of 15 minutes."


def test_it_requires_authentication_to_book(host):
    response = APIClient().post("/api/reservations/", {}, format="json")
    assert response.status_code in (401, 403)
    assert response.json()["code"] == "not_authenticated"


def test_it_lists_accelerators(host):
    data = APIClient().get("/api/accelerators/?host=gpu1").json()
    assert [(a["host"], a["index"]) for a in data["results"]] == [("gpu1", 0), ("gpu1", 1)]


# -- What one booking costs (issue 16) ----------------------------------------------------------
# The token; the host, the stack and whether the host offers it (one query, booking_refs); the
# host's accelerators (once); the policy; in the transaction the user's and the devices' locks,
# maintenance, the reservation, its allocations, the quotas (one read) and the audit entry.
# SQLite adds the overlap check that PostgreSQL's exclusion constraint makes unneeded. Nothing
# is read back.
# The durable transaction's BEGIN and COMMIT are savepoints inside a test's transaction.
TRANSACTION = 2


def booking_queries() -> int:
    return 10 + (0 if connection.vendor == "postgresql" else 1) + TRANSACTION


def test_it_books_in_a_fixed_number_of_queries(api, host):
    # History and other bookings of the user's do not add queries.
    for hour in (13, 15):
        book(
            api, devices=[0], start=f"2026-11-23T{hour}:00:00Z", end=f"2026-11-23T{hour + 1}:00:00Z"
        )
    with CaptureQueriesContext(connection) as queries:
        response = book(api, devices=[0, 1])
    assert response.status_code == 201, response.json()
    assert response.json()["devices"] == [0, 1]
    assert len(queries) <= booking_queries(), "\n".join(q["sql"][:120] for q in queries)


def test_it_names_the_blocker_in_a_fixed_number_of_queries(api, host):
    book(api, devices=[1])
    with CaptureQueriesContext(connection) as queries:
        response = book(api, devices=[0, 1])
    assert response.status_code == 409
    assert "gpu1 #1 is your own booking" in response.json()["message"]
    assert len(queries) <= booking_queries(), "\n".join(q["sql"][:120] for q in queries)


def test_it_names_a_host_or_stack_that_does_not_exist(api, host):
    response = book(api, host="gpu9", stack="cuda-99", devices=[0])
    assert response.status_code == 400
    data = response.json()
    assert (data["code"], data["errors"]) == (
        "does_not_exist",
        {"host": ["No host is named gpu9."], "stack": ["No driver stack is named cuda-99."]},
    )
    assert not Reservation.objects.exists()
    # A stack the host does not offer exists: the service refuses it, naming the host.
    DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    refused = book(api, stack="rocm-6", devices=[0]).json()
    assert refused["code"] == "stack_missing" and "gpu1 does not offer" in refused["message"]
