"""The timeline offers a "+" only where a booking from it can succeed."""

import re
from datetime import UTC, datetime

import pytest
import time_machine
from django.urls import reverse

from portal.booking.models import Reservation
from portal.inventory.models import Host
from tests.factories import UserFactory

BOOK_LINK = re.compile(r'/hosts/gpu1/book/\?accelerator=([a-z]+:\d+)&amp;start=([0-9T:-]+)"')


pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture
def alice(client, db):
    alice = UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")
    client.force_login(alice)
    return alice


def _checked(form) -> list[str]:
    """The devices a booking form arrives with ticked."""
    return re.findall(
        r'<input type="checkbox" name="accelerators" value="([^"]+)"[^>]* checked',
        form.content.decode(),
    )


def _week(client, **query) -> str:
    page = client.get(reverse("booking:host_timeline", args=["gpu1"]), {"view": "week", **query})
    assert page.status_code == 200
    return page.content.decode()


def test_it_offers_no_booking_beyond_how_far_ahead_one_may_book(client, alice, host, policy):
    policy.max_days_ahead = 2
    policy.save()
    body = _week(client)
    starts = [start for _, start in BOOK_LINK.findall(body)]
    # Bookings open until Wed 25 Nov 09:07 UTC, 10:07 in Berlin: the week cell of Wed 06:00 is
    # the last one that may be booked from, and it books from 06:00 (local times, ISO order).
    assert max(starts) == "2026-11-25T06:00"
    assert '<td class="cell closed" title="Wed 12:00\u201318:00: not open for booking yet">' in body
    assert '<td class="cell closed"' not in _week(client, view="day")  # today is open


def test_it_books_from_the_last_cell_it_offers(client, alice, host, policy):
    policy.max_days_ahead = 2
    policy.save()
    accelerator, start = BOOK_LINK.findall(_week(client))[-1]
    form = client.get(f"/hosts/gpu1/book/?accelerator={accelerator}&start={start}")
    prefilled = dict(re.findall(r'name="(start|end)" value="([^"]+)"', form.content.decode()))
    response = client.post(
        "/hosts/gpu1/book/", {"accelerators": _checked(form), "stack": "cuda-12", **prefilled}
    )
    assert response.status_code == 302, response.content.decode()
    assert Reservation.objects.get().start == datetime(2026, 11, 25, 5, tzinfo=UTC)


def test_it_offers_no_booking_on_a_host_out_of_service(client, alice, host):
    host.state = Host.State.MAINTENANCE
    host.save()
    body = _week(client)
    assert BOOK_LINK.findall(body) == []
    assert '<td class="cell unavailable"' in body and "host out of service" in body
    assert "gpu1 is in maintenance: nothing can be booked now" in body


def test_it_offers_no_booking_from_a_cell_whose_bookable_part_is_over(client, alice, host):
    # 10:50 in Berlin: the 10:00 cell could only book from 11:00, which is the next cell's.
    with time_machine.travel(datetime(2026, 11, 23, 9, 50, tzinfo=UTC), tick=False):
        body = client.get(reverse("booking:host_timeline", args=["gpu1"])).content.decode()
    starts = {start for _, start in BOOK_LINK.findall(body)}
    assert min(starts) == "2026-11-23T11:00"
    assert len(BOOK_LINK.findall(body)) == 4 * 13  # 11:00 to 23:00, four devices


def test_it_offers_no_booking_in_the_past_or_in_maintenance(client, alice, host):
    from portal.inventory.models import MaintenanceWindow

    MaintenanceWindow.objects.create(
        host=host, start=datetime(2026, 11, 23, 12, tzinfo=UTC),
        end=datetime(2026, 11, 23, 14, tzinfo=UTC), reason="fw",
    )  # fmt: skip
    body = client.get(reverse("booking:host_timeline", args=["gpu1"])).content.decode()
    hours = sorted({start[11:] for _, start in BOOK_LINK.findall(body)})
    # Past: before 10:00 Berlin; maintenance: 13:00 to 15:00 Berlin; the current cell from 10:15.
    assert hours == ["10:15", "11:00", "12:00", *(f"{h}:00" for h in range(15, 24))]


def test_it_preselects_the_device_of_the_cell_on_a_host_of_two_vendors(client, alice, host):
    from tests.factories import AcceleratorFactory

    # gpu1 has NVIDIA #0 to #3; an AMD card numbered #0 by its own vendor's tools joins them.
    AcceleratorFactory(host=host, index=0, vendor="amd", model="AMD Instinct MI210", arch="gfx90a")
    body = client.get(reverse("booking:host_timeline", args=["gpu1"])).content.decode()
    link = re.search(r'href="(/hosts/gpu1/book/\?accelerator=[^"]+)" aria-label="Book gpu1 #0 '
                     r'\(AMD Instinct MI210\)', body)  # fmt: skip
    assert link, "no book link on the AMD row"
    assert _checked(client.get(link.group(1).replace("&amp;", "&"))) == ["amd:0"]


def test_my_cells_link_to_my_reservation_and_a_jobs_cells_say_so(client, alice, host, member):
    from datetime import timedelta

    from portal.booking.models import Allocation
    from portal.booking.services import reservation_create
    from tests.factories import JobFactory

    start = datetime(2026, 11, 23, 12, tzinfo=UTC)
    end = start + timedelta(hours=2)
    mine = reservation_create(
        user=alice, host=host, stack=host.stacks.get(), start=start, end=end,
        accelerators=[host.accelerators.get(index=0)],
    )  # fmt: skip
    reservation_create(
        user=member, host=host, stack=host.stacks.get(), start=start, end=end,
        accelerators=[host.accelerators.get(index=1)],
    )  # fmt: skip
    Allocation.objects.create(
        accelerator=host.accelerators.get(index=2), job=JobFactory(stack=host.stacks.get()),
        start=start, end=start + timedelta(hours=2),
    )  # fmt: skip
    test_run = JobFactory(
        stack=host.stacks.get(), script="", autopkgtest={"dsc": "foo_1.0.dsc", "tests": []}
    )
    Allocation.objects.create(
        accelerator=host.accelerators.get(index=3), job=test_run, start=start, end=end
    )

    body = client.get(reverse("booking:host_timeline", args=["gpu1"])).content.decode()

    # 12:00 UTC is 13:00 in Berlin: her cell links to her reservation, the others' do not.
    label = "Your reservation of gpu1 #0, Mon 23 Nov 13:00"
    assert f'<a href="/reservations/{mine.pk}/" aria-label="{label}">' in body
    assert body.count('aria-label="Your reservation of') == 2  # 13:00 and 14:00 cells
    assert '<td class="cell booked" title="Mon 13:00\u201314:00: booked">' in body
    assert '<td class="cell job" title="Mon 13:00\u201314:00: a training job">' in body
    assert '<td class="cell test" title="Mon 13:00\u201314:00: a package test run">' in body
    assert '<span class="cell job">training job</span>' in body  # in the legend
