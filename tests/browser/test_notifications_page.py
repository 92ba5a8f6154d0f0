"""The notification settings page as chromium draws it, at 1280 and 390 px: the grid of events
and channels readable and clickable, a webhook set with its secret shown once, what was sent."""

import pytest

from portal.notifications.models import Preference
from portal.notifications.outbox import PLAIN, notify
from tests.browser.conftest import PHONE, login, overflow, screenshot
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.browser


def test_a_user_turns_an_event_off_and_sets_a_webhook(page, live_server, db, settings):
    alice = UserFactory(username="alice", email="alice@example.org", time_zone="Europe/Berlin")
    notify("session.ready", alice, PLAIN, {"subject": "Your session on gpu1 is ready", "text": "."})
    login(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/account/notifications/")

    box = page.get_by_label("Your session ends soon by mail")
    assert box.is_checked() and box.is_visible()
    table = page.locator("table").first
    assert table.bounding_box()["width"] <= 1280 - 2 * 16
    assert "Your session on gpu1 is ready" in page.locator("table").last.inner_text()
    assert overflow(page) == 0
    box.uncheck()
    page.get_by_role("button", name="Save", exact=True).click()
    page.wait_for_load_state()
    assert "Notification settings saved." in page.locator("main").inner_text()
    assert not page.get_by_label("Your session ends soon by mail").is_checked()
    assert not Preference.objects.get(user=alice, event="session.ending", channel="mail").enabled

    page.get_by_label("Webhook URL").fill("https://hooks.example.org/alice")
    page.get_by_role("button", name="Set a webhook").click()
    page.wait_for_load_state()
    secret = page.locator("#new-secret").inner_text()
    assert len(secret) >= 40 and alice.webhook.secret == secret
    screenshot(page, "notifications-1280")

    page.set_viewport_size(PHONE)
    page.goto(f"{live_server.url}/account/notifications/")
    assert page.get_by_label("Your session is ready by webhook").is_visible()
    assert overflow(page) == 0
    screenshot(page, "notifications-390")
