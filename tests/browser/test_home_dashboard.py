"""The home dashboard as chromium draws it for a developer with sessions and jobs, at 1280 and
390 px: cards side by side on a desktop, stacked on a phone, ssh lines wrapped, the navigation
one line, no sideways scrolling of the page. Screenshots in test-output/screenshots."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.booking.availability import floor_to
from portal.booking.models import BookingPolicy, Reservation
from portal.booking.services import reservation_create
from tests.browser.conftest import PHONE, login, overflow, screenshot
from tests.factories import (
    PASSWORD,
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    PartnerMembershipFactory,
    UserFactory,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def alice(db):
    policy = BookingPolicy.current()
    policy.max_concurrent_reservations = 10
    policy.save()
    alice = UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")
    host = HostFactory(name="gpu-with-a-long-name", fqdn="gpu-with-a-long-name.debian.net")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(3):
        AcceleratorFactory(host=host, index=i)
    start = floor_to(timezone.now(), timedelta(hours=1)) + timedelta(hours=1)
    for i in range(3):
        r = reservation_create(
            user=alice, host=host, stack=host.stacks.get(), start=start + timedelta(days=i),
            end=start + timedelta(days=i, hours=2), accelerators=[host.accelerators.get(index=i)],
        )  # fmt: skip
    Reservation.objects.filter(pk=r.pk).update(state=Reservation.State.ACTIVE)
    project = PartnerMembershipFactory(user=alice, project__name="Speech models").project
    JobFactory(project=project, submitter=alice, name="whisper-finetune")
    return alice


def test_the_dashboard_lays_out_cards_for_desktop_and_phone(page, live_server, alice):
    login(page, live_server, "alice", PASSWORD)
    cards = page.locator("#sessions-heading + ul.cards > li")
    assert cards.count() == 3
    assert "ssh alice@gpu-with-a-long-name.debian.net" in cards.first.inner_text()
    assert "whisper-finetune" in page.locator("#jobs-heading + ul.cards").inner_text()
    first, second = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    assert first["y"] == second["y"] and second["x"] > first["x"]  # side by side
    assert overflow(page) == 0
    screenshot(page, "home-dashboard-1280")

    page.set_viewport_size(PHONE)
    page.reload()
    first, second = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
    assert first["x"] == second["x"] and second["y"] > first["y"]  # stacked
    assert first["width"] > 300  # the card takes the phone's width, not a sliver
    # The navigation is one line that scrolls sideways, not four lines above every page.
    links = page.locator("header nav ul > li").all()
    assert len({round(link.bounding_box()["y"]) for link in links}) == 1
    assert page.locator("header").bounding_box()["height"] < 120
    assert overflow(page) == 0
    screenshot(page, "home-dashboard-390")
