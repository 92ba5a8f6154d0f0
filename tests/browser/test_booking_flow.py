"""A person in Debian's chromium finds a slot, books it, sees it on the timeline, cancels it."""

import zoneinfo

import pytest

from portal.booking.models import Reservation
from tests.browser.conftest import login, screenshot
from tests.factories import (
    PASSWORD,
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    UserFactory,
)

pytestmark = pytest.mark.browser


def test_it_finds_books_shows_and_cancels_a_slot(page, live_server):
    host = HostFactory(name="gpu1")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(2):
        AcceleratorFactory(host=host, index=i)
    UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")

    login(page, live_server, "alice", PASSWORD)

    page.get_by_role("link", name="Find a slot").click()
    page.get_by_label("Devices").fill("1")
    page.get_by_label("Hardware spec").fill("cuda:sm_90")
    page.get_by_label("Driver stack").select_option("cuda-12")
    page.get_by_label("Hours").fill("2")
    page.get_by_role("button", name="Search").click()
    page.get_by_role("button", name="Book gpu1").first.click()
    page.get_by_text("Booked.").wait_for()

    reservation = Reservation.objects.get()
    assert reservation.user.username == "alice" and reservation.allocations.count() == 1
    assert f"ssh alice@{host.fqdn}" in page.content()

    local_day = reservation.start.astimezone(zoneinfo.ZoneInfo("Europe/Berlin")).date()
    page.goto(f"{live_server.url}/hosts/gpu1/timeline/?date={local_day:%Y-%m-%d}")
    assert page.locator("td.cell.mine").count() >= 1

    page.goto(f"{live_server.url}{reservation.get_absolute_url()}")
    page.get_by_role("button", name="Cancel this reservation").click()
    page.locator("dialog").get_by_role("button", name="Yes, cancel it").click()  # it asks first
    page.get_by_text("Cancelled.").wait_for()
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.CANCELLED
    page.get_by_text("This reservation was cancelled on").wait_for()
    assert "ssh alice@" not in page.content()
    page.goto(f"{live_server.url}/hosts/gpu1/timeline/?date={local_day:%Y-%m-%d}")
    assert page.locator("td.cell.mine").count() == 0


def test_it_books_a_found_slot_when_the_stack_was_left_at_any_stack(page, live_server):
    host = HostFactory(name="gpu1")
    host.stacks.add(
        DriverStackFactory(name="cuda-12"),
        DriverStackFactory(name="cuda-13"),
        DriverStackFactory(name="rocm-6", hwspecs=["rocm"]),  # serves no cuda need
    )
    AcceleratorFactory(host=host, index=0)
    UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")

    login(page, live_server, "alice", PASSWORD)
    page.get_by_role("link", name="Find a slot").click()
    page.get_by_label("Hardware spec").fill("cuda")
    assert page.get_by_label("Driver stack").input_value() == ""  # left at "any stack"
    page.get_by_role("button", name="Search").click()
    choice = page.get_by_label("Stack for gpu1")
    options = choice.locator("option").all_inner_texts()
    assert [o.split()[0] for o in options] == ["cuda-12", "cuda-13"]
    screenshot(page, "finder-any-stack-1280")
    choice.select_option("cuda-13")
    page.get_by_role("button", name="Book gpu1").click()
    page.get_by_text("Booked.").wait_for()

    reservation = Reservation.objects.get()
    assert reservation.stack.name == "cuda-13" and reservation.allocations.count() == 1
