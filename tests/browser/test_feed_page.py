"""The profile page shows a new calendar feed address once, whole and copyable, on a desktop
and a phone, and revokes it."""

import pytest

from portal.accounts.models import FeedToken
from tests.browser.conftest import PHONE, login, overflow, screenshot
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_it_shows_the_feed_address_whole_and_revokes_it(browser, live_server, db, viewport):
    user = UserFactory(username="cal")
    size = PHONE if viewport == "phone" else {"width": 1280, "height": 900}
    page = browser.new_context(viewport=size).new_page()
    login(page, live_server, "cal", PASSWORD)
    page.goto(f"{live_server.url}/account/profile/")
    page.get_by_role("button", name="Create a feed address").click()

    shown = page.locator("#new-feed-url")
    address = shown.inner_text()
    token = address.removeprefix(f"{live_server.url}/api/feeds/").removesuffix(".ics")
    assert FeedToken.objects.get(user=user).digest == FeedToken.digest_of(token)
    box = shown.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"]  # not cut off
    assert overflow(page) == 0
    shown.scroll_into_view_if_needed()
    screenshot(page, f"profile-feed-{size['width']}")

    page.goto(f"{live_server.url}/account/profile/")
    assert page.locator("#new-feed-url").count() == 0
    page.get_by_role("button", name="Revoke the feed").click()
    page.locator("dialog").get_by_role("button", name="Yes, revoke it").click()  # asked first
    page.get_by_text("Calendar feed revoked").wait_for()
    assert not FeedToken.objects.filter(user=user).exists()
    page.context.close()
