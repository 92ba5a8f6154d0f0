"""With JavaScript, a destructive button asks in a dialog: "No" changes nothing, "Yes" does it;
at 390 px the dialog fits the phone. Screenshots in test-output/screenshots."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.booking.availability import floor_to
from portal.booking.models import Reservation
from portal.booking.services import reservation_create
from tests.browser.conftest import PHONE, login, screenshot
from tests.factories import (
    PASSWORD,
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    UserFactory,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def booked(db):
    alice = UserFactory(username="alice", debian_member_source="salsa")
    host = HostFactory(name="gpu1")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    AcceleratorFactory(host=host, index=0)
    start = floor_to(timezone.now(), timedelta(hours=1)) + timedelta(days=1)
    return reservation_create(
        user=alice, host=host, stack=host.stacks.get(), accelerators=[host.accelerators.get()],
        start=start, end=start + timedelta(hours=2),
    )  # fmt: skip


def test_cancel_asks_in_a_dialog(page, live_server, booked):
    page.set_viewport_size(PHONE)
    login(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}{booked.get_absolute_url()}")
    page.get_by_role("button", name="Cancel this reservation").click()
    dialog = page.locator("dialog.confirm-dialog")
    assert dialog.is_visible()
    assert "Cancel your reservation of gpu1?" in dialog.inner_text()
    box = dialog.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    screenshot(page, "confirm-dialog-390")

    dialog.get_by_role("button", name="No, go back").click()
    page.locator("dialog").wait_for(state="detached")  # closed and gone
    assert Reservation.objects.get(pk=booked.pk).state == Reservation.State.SCHEDULED

    page.get_by_role("button", name="Cancel this reservation").click()
    page.locator("dialog.confirm-dialog").get_by_role("button", name="Yes, cancel it").click()
    page.wait_for_url(f"{live_server.url}{booked.get_absolute_url()}")
    assert "Cancelled." in page.locator(".messages").inner_text()
    assert Reservation.objects.get(pk=booked.pk).state == Reservation.State.CANCELLED
