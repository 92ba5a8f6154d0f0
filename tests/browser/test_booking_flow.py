"""A person in Debian's chromium finds a slot, books it, sees it on the timeline, cancels it."""

import os
import shutil
import zoneinfo

import pytest
from django.db import connections

from portal.booking.models import Reservation
from tests.conftest import require
from tests.factories import (
    PASSWORD,
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    UserFactory,
)

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless, offline, no GPU: all the browser may reach is the live server on loopback.
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # we run as root in CI containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def page():
    require(os.path.exists(CHROMIUM), "Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; our ORM calls stay synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(locale="en-GB", timezone_id="Europe/Berlin")
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        browser.close()
        # ORM calls made inside Playwright's greenlet opened their own connection; close it, or
        # the test database cannot be dropped at the end of the run.
        connections.close_all()
    del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


def test_it_finds_books_shows_and_cancels_a_slot(page, live_server):
    host = HostFactory(name="gpu1")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(2):
        AcceleratorFactory(host=host, index=i)
    UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")

    page.goto(f"{live_server.url}/accounts/login/")
    login = page.locator("main form").filter(has=page.locator("input[name=login]"))
    login.locator("input[name=login]").fill("alice")
    login.locator("input[name=password]").fill(PASSWORD)
    login.locator("button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")

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
    page.get_by_text("Cancelled.").wait_for()
    reservation.refresh_from_db()
    assert reservation.state == Reservation.State.CANCELLED
    page.goto(f"{live_server.url}/hosts/gpu1/timeline/?date={local_day:%Y-%m-%d}")
    assert page.locator("td.cell.mine").count() == 0
