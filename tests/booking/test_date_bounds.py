"""Dates at the edges of the calendar get a clear 400, never a 500 (years 1 and 9999 did)."""

import pytest
from rest_framework.test import APIClient

from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

EDGES = ["0001-01-01", "9999-12-31", "1999-12-31", "3000-01-01"]


@pytest.fixture
def member(db):
    host = HostFactory(name="gpu1")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    AcceleratorFactory(host=host, index=0)
    # East of UTC, so that the local midnight of year 1 is in year 0 in UTC.
    return UserFactory(debian_member_source="salsa", time_zone="Asia/Tokyo")


@pytest.mark.parametrize("day", EDGES)
@pytest.mark.parametrize("view", ["day", "week"])
@pytest.mark.parametrize("page", ["/timeline/", "/hosts/gpu1/timeline/"])
def test_it_answers_a_timeline_at_the_calendars_edge_with_a_400(client, member, page, view, day):
    client.force_login(member)
    assert client.get(f"{page}?date={day}&view={view}").status_code == 400


@pytest.mark.parametrize("day", EDGES)
def test_it_refuses_edge_dates_in_the_finder_and_the_booking_form(client, member, day):
    client.force_login(member)
    found = client.get(f"/find/?count=1&hours=2&start={day}T00:00")
    assert found.status_code == 400 and "Choose a date from 2000-01-01 to 2999-12-31." in (
        found.content.decode()
    )
    prefilled = client.get(f"/hosts/gpu1/book/?accelerator=0&start={day}T23:00")
    assert prefilled.status_code == 200  # the cell's time is dropped, the form still shown
    booked = client.post(
        "/hosts/gpu1/book/",
        {"accelerators": ["0"], "stack": "cuda-12", "start": f"{day}T00:00",
         "end": f"{day}T02:00"},
    )  # fmt: skip
    assert booked.status_code == 400
    assert "Choose a date from 2000-01-01 to 2999-12-31." in booked.content.decode()


@pytest.mark.parametrize("day", EDGES)
def test_it_answers_the_api_at_the_calendars_edge_with_a_400(member, day):
    anonymous = APIClient()
    found = anonymous.get(f"/api/availability/?count=1&hours=2&start={day}T00:00:00%2B09:00")
    assert found.status_code == 400
    api = APIClient()
    api.force_authenticate(member)
    booked = api.post(
        "/api/reservations/",
        {"host": "gpu1", "whole_host": True, "stack": "cuda-12", "start": f"{day}T00:00:00+09:00",
         "end": f"{day}T02:00:00+09:00"},
        format="json",
    )  # fmt: skip
    assert booked.status_code == 400
    message = booked.json()["message"]
    # 3000-01-01 at +09:00 is still 2999 in UTC: then the booking horizon refuses it.
    assert message.endswith("Choose a date from 2000-01-01 to 2999-12-31.") or (
        day == "3000-01-01" and message == "Bookings open at most 30 days ahead."
    )
