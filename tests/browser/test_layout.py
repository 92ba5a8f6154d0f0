"""The pages as chromium lays them out: timeline grids on one line per device, nothing too wide.

Screenshots of every timeline view, at desktop and phone widths, land in test-output/screenshots
for people to look at.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.booking.availability import ceil_to
from portal.booking.services import reservation_create
from portal.inventory.models import MaintenanceWindow
from tests.browser.conftest import PHONE, login, overflow, screenshot
from tests.factories import (
    PASSWORD,
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    UserFactory,
)

pytestmark = pytest.mark.browser

TIMELINES = {
    "site-day": "/timeline/?view=day",
    "site-week": "/timeline/?view=week",
    "host-day": "/hosts/gpu1/timeline/?view=day",
    "host-week": "/hosts/gpu1/timeline/?view=week",
}


@pytest.fixture
def fleet(db):
    """Three hosts of four devices, one booking of alice's and one maintenance window."""
    cuda = DriverStackFactory(name="cuda-12")
    hosts = []
    for n in range(1, 4):
        host = HostFactory(name=f"gpu{n}")
        host.stacks.add(cuda)
        for i in range(4):
            AcceleratorFactory(host=host, index=i)
        hosts.append(host)
    alice = UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")
    start = ceil_to(timezone.now(), timedelta(hours=1)) + timedelta(hours=1)
    reservation = reservation_create(
        user=alice, host=hosts[0], stack=cuda, accelerators=[hosts[0].accelerators.first()],
        start=start, end=start + timedelta(hours=3), purpose="layout check",
    )  # fmt: skip
    MaintenanceWindow.objects.create(
        host=hosts[1], start=start, end=start + timedelta(hours=2), reason="firmware"
    )
    return reservation


def _cells_of_first_row(page) -> list[dict]:
    row = page.locator("table.timeline tbody tr").first
    return [cell.bounding_box() for cell in row.locator("td.cell").all()]


def test_it_lays_each_timeline_row_on_one_line(page, live_server, fleet):
    login(page, live_server, "alice", PASSWORD)
    for name, path in TIMELINES.items():
        page.goto(f"{live_server.url}{path}")
        boxes = _cells_of_first_row(page)
        assert len(boxes) == (24 if "day" in name else 28), name
        tops = {round(box["y"]) for box in boxes}
        assert len(tops) == 1, f"{name}: the cells of one row sit at {sorted(tops)}"
        widths = [box["width"] for box in boxes]
        assert min(widths) > 10, f"{name}: cells as narrow as {min(widths)} px"
        assert max(widths) < 1.5 * min(widths), f"{name}: cell widths {widths}"
        # One row is one line: not much taller than the header row of hour labels.
        header = page.locator("table.timeline thead tr").bounding_box()
        assert boxes[0]["height"] < 3 * header["height"], name
        screenshot(page, f"timeline-{name}-1280")


def _main_pages(reservation) -> list[str]:
    return [
        "/",
        "/hosts/",
        "/hosts/gpu1/",
        "/find/?count=1&hwspec=cuda&hours=2",
        *TIMELINES.values(),
        # Last week: every cell past, so the far cells hold text hidden but for screen readers.
        f"/timeline/?view=week&date={timezone.localdate() - timedelta(days=7):%Y-%m-%d}",
        "/reservations/",
        reservation.get_absolute_url(),
        "/jobs/",
        "/trained/",
        "/projects/",
        "/account/keys/",
        "/account/profile/",
        "/account/notifications/",
    ]


def test_it_fits_every_main_page_in_a_desktop_window(page, live_server, fleet):
    login(page, live_server, "alice", PASSWORD)
    wide = {}
    for path in _main_pages(fleet):
        page.goto(f"{live_server.url}{path}")
        if overflow(page):
            wide[path] = overflow(page)
    assert wide == {}, f"pages wider than 1280 px, by so many px: {wide}"


@pytest.mark.parametrize("width", [PHONE["width"], 360])  # a common phone, the narrowest one
def test_it_screenshots_the_timelines_on_a_phone(browser, live_server, fleet, width):
    viewport = {**PHONE, "width": width}
    context = browser.new_context(locale="en-GB", timezone_id="Europe/Berlin", viewport=viewport)
    phone = context.new_page()
    try:
        login(phone, live_server, "alice", PASSWORD)
        widths = {}
        for name, path in TIMELINES.items():
            phone.goto(f"{live_server.url}{path}")
            assert len({round(box["y"]) for box in _cells_of_first_row(phone)}) == 1, name
            widths[name] = overflow(phone)
            screenshot(phone, f"timeline-{name}-{width}")
        for path in _main_pages(fleet):
            phone.goto(f"{live_server.url}{path}")
            widths[path] = overflow(phone)
            name = path.strip("/").replace("/", "-").split("?")[0] or "home"
            screenshot(phone, f"page-{name}-{width}")
        # Wide tables scroll inside themselves; the page never scrolls sideways.
        assert {path: px for path, px in widths.items() if px} == {}, widths
    finally:
        context.close()
