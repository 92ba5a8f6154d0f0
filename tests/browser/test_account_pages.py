"""allauth's log-in and sign-up pages in the portal's words and layout, at 1280 and 390 px:
one field a row with its label, the same word ("Log in") as the navigation, a wrong password
said in words. Screenshots in test-output/screenshots."""

import pytest

from tests.browser.conftest import PHONE, overflow, screenshot
from tests.factories import UserFactory

pytestmark = pytest.mark.browser


def test_log_in_and_sign_up_speak_the_portals_words_and_line_up(page, live_server, db):
    UserFactory(username="alice")
    page.goto(f"{live_server.url}/accounts/login/")
    assert page.locator("main h1").inner_text() == "Log in"
    assert page.get_by_role("button", name="Log in").is_visible()
    inputs = [page.locator(f"main input[name={n}]").bounding_box() for n in ("login", "password")]
    assert inputs[0]["x"] == inputs[1]["x"]  # aligned in one column
    page.locator("main input[name=login]").fill("alice")
    page.locator("main input[name=password]").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    assert "not correct" in page.locator("main [role=alert]").first.inner_text()
    screenshot(page, "login-refused-1280")

    page.goto(f"{live_server.url}/accounts/signup/")
    assert page.locator("main h1").inner_text() == "Sign up"
    assert "Then please log in." in page.locator("main").inner_text()
    page.set_viewport_size(PHONE)
    page.reload()
    assert overflow(page) == 0
    screenshot(page, "signup-390")


def test_every_page_names_the_portals_icon(client, db):
    from django.contrib.staticfiles import finders

    body = client.get("/").content.decode()
    assert '<link rel="icon" href="/static/portal/favicon.svg" type="image/svg+xml">' in body
    assert finders.find("portal/favicon.svg")
