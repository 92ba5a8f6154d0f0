"""Staff at work in chromium, at 1280 and 390 px: the approvals page (a rejection asks in a
dialog, with its reason), the host list telling a drained host from one in maintenance, and a
drain by hand from the host's page. No page is wider than its viewport. Screenshots in
test-output/screenshots: staff-approvals-<width>.png, staff-hosts-<width>.png."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from portal.booking.availability import floor_to
from portal.booking.models import Reservation
from portal.booking.services import reservation_create
from portal.inventory.models import Host, MaintenanceWindow
from portal.operations import health
from tests.browser.conftest import DESKTOP, PHONE, overflow, screenshot
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

pytestmark = pytest.mark.browser


def make_host(name, **fields):
    host = HostFactory(name=name, **fields)
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(2):
        AcceleratorFactory(host=host, index=i)
    return host


@pytest.fixture
def fleet(db):
    """gpu1 open by approval with two reservations waiting, gpu2 drained, gpu3 in a window."""
    now = timezone.now()
    start = floor_to(now, timedelta(hours=1)) + timedelta(days=1)
    gpu1 = make_host("gpu1", access=Host.Access.APPROVAL)
    waiting = []
    for index, name in enumerate(["alice", "bob"]):
        user = UserFactory(username=name, debian_member_source="salsa")
        r = reservation_create(
            user=user, host=gpu1, stack=gpu1.stacks.get(), start=start,
            accelerators=[gpu1.accelerators.get(index=index)], end=start + timedelta(hours=3),
            purpose="fine-tune a speech model on the Debian archive's audio",
        )  # fmt: skip
        waiting.append(r)
    health.drain(make_host("gpu2"), "fan 2 failing", now, cause=Host.DrainCause.TOO_HOT)
    MaintenanceWindow.objects.create(
        host=make_host("gpu3"), start=now - timedelta(hours=1), end=now + timedelta(hours=5),
        reason="new PSU",
    )  # fmt: skip
    return waiting


@pytest.fixture
def as_staff(page, live_server, db):
    staff = UserFactory(is_staff=True, is_superuser=True, debian_member_source="staff")
    client = Client()
    client.force_login(staff)
    session = client.cookies["sessionid"].value
    page.context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
    return page


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "390"])
def test_staff_approve_and_reject_on_their_page(as_staff, live_server, fleet, viewport):
    page = as_staff
    alice_r, bob_r = fleet
    page.set_viewport_size(viewport)
    page.goto(f"{live_server.url}/hosts/approvals/")
    assert "2 reservations waiting" in page.locator("caption").inner_text()
    assert overflow(page) == 0
    screenshot(page, f"staff-approvals-{viewport['width']}")

    page.get_by_label("Why reject it").first.fill("gpu1 is booked for the ROCm sprint")
    page.get_by_role("button", name=f"Reject reservation {alice_r.pk} of gpu1 by alice").click()
    dialog = page.locator("dialog.confirm-dialog")
    assert "Reject alice's reservation of gpu1?" in dialog.inner_text()
    box = dialog.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
    dialog.get_by_role("button", name="Yes, reject it").click()
    page.locator(".messages").wait_for()
    assert "alice's reservation of gpu1 rejected" in page.locator(".messages").inner_text()
    assert "1 reservation waiting" in page.locator("caption").inner_text()

    page.get_by_role("button", name=f"Approve reservation {bob_r.pk} of gpu1 by bob").click()
    page.get_by_text("bob's reservation of gpu1 approved").wait_for()
    assert Reservation.objects.get(pk=alice_r.pk).state == Reservation.State.CANCELLED
    assert Reservation.objects.get(pk=bob_r.pk).state == Reservation.State.SCHEDULED
    alice_r.refresh_from_db()
    assert alice_r.audit.get(action="reject").detail == {
        "reason": "gpu1 is booked for the ROCm sprint"
    }


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "390"])
def test_the_host_list_tells_drained_from_maintenance(as_staff, live_server, fleet, viewport):
    page = as_staff
    page.set_viewport_size(viewport)
    page.goto(f"{live_server.url}/hosts/")
    rows = page.locator("table.hosts tbody tr")
    gpu2 = rows.filter(has=page.get_by_role("link", name="gpu2", exact=True)).inner_text()
    gpu3 = rows.filter(has=page.get_by_role("link", name="gpu3", exact=True)).inner_text()
    assert "drained since" in gpu2 and "too hot" in gpu2
    assert "in maintenance until" in gpu3 and "drained" not in gpu3
    assert page.get_by_role("link", name="Register a host").is_visible()
    assert overflow(page) == 0
    screenshot(page, f"staff-hosts-{viewport['width']}")


def test_staff_drain_a_host_by_hand(as_staff, live_server, fleet):
    page = as_staff
    page.set_viewport_size(PHONE)
    page.goto(f"{live_server.url}/hosts/gpu1/")
    page.get_by_label("Why drain it").fill("PSU swap")
    page.get_by_role("button", name="Drain: take it out of service").click()
    page.locator("dialog.confirm-dialog").get_by_role("button", name="Yes, drain it").click()
    page.get_by_text("gpu1 is drained: nothing new starts on it.").wait_for()
    assert overflow(page) == 0
    screenshot(page, "staff-drained-host-390")
    host = Host.objects.get(name="gpu1")
    assert host.drain_cause == Host.DrainCause.STAFF and host.drain_reason == "PSU swap"

    page.get_by_role("button", name="Resume: accept new sessions and jobs").click()
    page.get_by_text("gpu1 is back in service.").wait_for()
    assert Host.objects.get(name="gpu1").state == Host.State.ACTIVE


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280", "390"])
def test_the_staff_forms_fit(as_staff, live_server, fleet, viewport):
    page = as_staff
    page.set_viewport_size(viewport)
    MaintenanceWindow.objects.create(
        host=Host.objects.get(name="gpu1"), start=timezone.now() + timedelta(days=2),
        end=timezone.now() + timedelta(days=2, hours=3), reason="kernel upgrade",
    )  # fmt: skip
    for path, name in (
        ("/hosts/register/", "register"),
        ("/hosts/gpu1/maintenance/", "maintenance"),
    ):
        page.goto(f"{live_server.url}{path}")
        assert overflow(page) == 0, path
        screenshot(page, f"staff-{name}-{viewport['width']}")
