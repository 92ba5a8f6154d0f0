"""A need with alternatives ("cuda | rocm", as packages write X-Requires-Hwspec): N devices of
one alternative or of the other, never a mix; found, shown and booked as users do it."""

from datetime import UTC, datetime

import pytest
from django.urls import reverse

from portal.booking.models import Reservation
from portal.booking.services import reservation_create
from portal.inventory.models import Accelerator
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture
def amd(db):
    host = HostFactory(name="mi1")
    host.stacks.add(DriverStackFactory(name="rocm-6", hwspecs=["rocm", "opencl"]))
    for i in range(2):
        AcceleratorFactory(
            host=host, index=i, vendor=Accelerator.Vendor.AMD, model="MI210", arch="gfx90a"
        )
    return host


@pytest.fixture
def busy_nvidia(host, member):
    """gpu1's four NVIDIA devices booked from 10:00 to 14:00 UTC (the clock says 09:07)."""
    reservation_create(
        user=member, host=host, stack=host.stacks.get(), whole_host=True,
        start=datetime(2026, 11, 23, 10, tzinfo=UTC), end=datetime(2026, 11, 23, 14, tzinfo=UTC),
    )  # fmt: skip
    return host


def test_the_finder_merges_the_alternatives_soonest_first(client, busy_nvidia, amd):
    query = {"count": 2, "hwspec": "cuda | rocm", "hours": "8", "days": 2}
    slots = client.get(reverse("api:availability"), query).json()
    # gpu1's cuda devices are busy until 14:00; mi1's rocm ones are free at the next step.
    assert [(s["host"], s["start"]) for s in slots] == [
        ("mi1", "2026-11-23T09:15:00Z"),
        ("gpu1", "2026-11-23T14:00:00Z"),
    ]
    # Three devices: only gpu1 has them, never two rocm and one cuda.
    slots = client.get(reverse("api:availability"), {**query, "count": 3}).json()
    assert [s["host"] for s in slots] == ["gpu1"]


def test_a_stack_that_serves_no_alternative_is_refused(client, amd):
    query = {"hwspec": "cuda | sycl", "stack": "rocm-6", "hours": "2"}
    response = client.get(reverse("booking:finder"), query)
    assert response.status_code == 400
    assert "The stack rocm-6 does not serve cuda or sycl." in response.content.decode()


def test_booking_a_found_slot_takes_the_alternative_the_host_has(client, busy_nvidia, amd):
    alice = UserFactory(username="alice", debian_member_source="salsa")
    client.force_login(alice)
    query = {"count": 2, "hwspec": "cuda | rocm", "hours": "2", "days": 1}
    body = client.get(reverse("booking:finder"), query).content.decode()
    assert "mi1" in body and "rocm-6" in body
    response = client.post(
        reverse("booking:book_need"),
        {**query, "host": "mi1", "start": "2026-11-23T09:15", "stack": "rocm-6"},
    )
    booked = Reservation.objects.get(user=alice)
    assert response["Location"] == booked.get_absolute_url()
    assert {a.accelerator.vendor for a in booked.allocations.all()} == {"amd"}
