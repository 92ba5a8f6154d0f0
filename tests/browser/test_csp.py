"""Every page keeps to the Content-Security-Policy: chromium reports no violation on any of them,
for a member and for staff (the admin and allauth's own pages included)."""

import pytest
from django.test import Client

from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

pytestmark = pytest.mark.browser

PAGES = [
    "/", "/hosts/", "/hosts/gpu1/", "/hosts/gpu1/?span=day", "/timeline/", "/hosts/gpu1/timeline/",
    "/find/?count=1&hours=2", "/hosts/gpu1/book/", "/reservations/", "/jobs/", "/trained/",
    "/projects/", "/account/keys/", "/account/profile/", "/accounts/2fa/",
    "/accounts/2fa/webauthn/add/", "/accounts/password/change/", "/api/docs/", "/packages/",
]  # fmt: skip
STAFF_PAGES = [
    "/admin/", "/admin/booking/reservation/", "/admin/inventory/host/add/", "/hosts/register/",
    "/hosts/approvals/",
]  # fmt: skip


def logged_in(browser, live_server, user):
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server.url}]
    )
    return context.new_page()


def violations_on(page, url):
    seen = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else 0)
    answer = page.goto(url)
    page.wait_for_load_state("load")
    return answer, seen


def test_it_serves_every_page_within_its_content_security_policy(browser, live_server, db):
    host = HostFactory(name="gpu1")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    AcceleratorFactory(host=host, index=0)
    member = UserFactory(debian_member_source="salsa")
    staff = UserFactory(is_staff=True, is_superuser=True, debian_member_source="staff")

    for user, pages in ((member, PAGES), (staff, PAGES + STAFF_PAGES)):
        page = logged_in(browser, live_server, user)
        for path in pages:
            answer, seen = violations_on(page, live_server.url + path)
            assert answer.status < 400, (user.username, path, answer.status)
            assert "script-src 'self'" in answer.headers["content-security-policy"]
            assert seen == [], (path, seen)
        page.context.close()
