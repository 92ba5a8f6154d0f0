"""The profile page shows a new API token once, whole and copyable, on a desktop and a phone."""

import pytest
from rest_framework.authtoken.models import Token

from tests.browser.conftest import PHONE, login, overflow, screenshot
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_it_shows_the_new_token_whole_on_the_profile_page(browser, live_server, db, viewport):
    user = UserFactory(username="tina")
    size = PHONE if viewport == "phone" else {"width": 1280, "height": 900}
    page = browser.new_context(viewport=size).new_page()
    login(page, live_server, "tina", PASSWORD)
    page.goto(f"{live_server.url}/account/profile/")
    page.get_by_role("button", name="Create a token").click()

    shown = page.locator("#new-token")
    assert shown.inner_text() == Token.objects.get(user=user).key
    box = shown.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= size["width"]  # not cut off
    assert overflow(page) == 0
    screenshot(page, f"profile-new-token-{size['width']}")
    page.goto(f"{live_server.url}/account/profile/")
    assert page.locator("#new-token").count() == 0
    page.context.close()
