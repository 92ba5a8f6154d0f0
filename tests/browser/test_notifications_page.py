"""The notification settings page as chromium draws it, at 1280 and 390 px: the grid of events
and channels readable and clickable, a webhook set with its secret shown once, what was sent."""

import pytest
from django.test import Client

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


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_a_manager_sets_the_project_webhook_and_staff_see_what_failed(
    browser, live_server, db, settings, width
):
    from portal.notifications.models import Notification
    from tests.factories import PartnerMembershipFactory

    managing = PartnerMembershipFactory(
        role="manager", user__username="carol", project__slug="speech"
    )
    staff = UserFactory(is_staff=True)
    notify("session.ready", managing.user, PLAIN, {"subject": "Your session is ready", "text": "."})
    Notification.objects.update(state="failed", attempts=10, last_error="SMTPRecipientsRefused")
    context = browser.new_context(viewport={**PHONE, "width": width})
    page = context.new_page()
    try:
        login(page, live_server, "carol", PASSWORD)
        page.goto(f"{live_server.url}/projects/speech/")
        page.get_by_label("Webhook URL").fill("https://hooks.example.org/speech")
        page.get_by_role("button", name="Save the webhook").click()
        page.wait_for_load_state()
        assert len(page.locator("#new-secret").inner_text()) >= 40
        assert overflow(page) == 0
        screenshot(page, f"project-webhook-{width}")

        # Staff, signed in with their second factor already (as the staff page tests are).
        client = Client()
        client.force_login(staff)
        context.clear_cookies()
        context.add_cookies(
            [{"name": "sessionid", "value": client.cookies["sessionid"].value,
              "url": live_server.url}]
        )  # fmt: skip
        page.goto(f"{live_server.url}/account/notifications/failed/")
        row = page.locator("tbody tr").first
        assert "mail: carol@example.org" in row.inner_text()
        assert row.get_by_role("button", name="Retry").is_visible()
        assert overflow(page) == 0
        screenshot(page, f"notifications-failed-{width}")
    finally:
        context.close()
