"""The API's docs page: Swagger UI over the schema, every file from this site (no CDN), drawn
by chromium with the API's operations listed. Screenshot in test-output/screenshots."""

import pytest

from tests.browser.conftest import overflow, screenshot

pytestmark = pytest.mark.browser


def test_the_docs_page_lists_the_operations_from_this_site_only(page, live_server, db):
    requests = []
    page.on("request", lambda request: requests.append(request.url))

    page.goto(f"{live_server.url}/api/docs/")
    page.locator(".opblock-summary-path").first.wait_for()

    paths = {
        p.inner_text().replace("\u200b", "") for p in page.locator(".opblock-summary-path").all()
    }
    assert "/api/reservations/" in paths and "/api/availability/" in paths
    assert all(url.startswith(live_server.url) for url in requests), requests
    assert overflow(page) == 0
    screenshot(page, "api-docs-1280")
