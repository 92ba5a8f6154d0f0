"""A project's usage chart in Debian's chromium: bars as long as their hours, real figures."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.booking.models import Allocation
from tests.browser.conftest import login, screenshot
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
H = timedelta(hours=1)


def test_it_draws_bars_as_long_as_their_hours_with_their_figures(page, live_server):
    stack = DriverStackFactory(name="cuda-12")
    host = HostFactory(name="gpu1")
    host.stacks.add(stack)
    device = AcceleratorFactory(host=host, index=0)
    member = PartnerMembershipFactory(
        project__slug="speech", user=UserFactory(username="alice", debian_member_source="salsa")
    )
    bob = PartnerMembershipFactory(project=member.project, user__username="bob").user
    now = timezone.now().replace(microsecond=0)
    # This month: alice's jobs ran 1 h, bob's a quarter of an hour.
    for user, start, hours in ((member.user, now - 3 * H, 1), (bob, now - H, 0.25)):
        job = JobFactory(project=member.project, submitter=user, stack=stack, state="succeeded")
        Allocation.objects.create(
            accelerator=device, job=job, start=start, end=start + hours * H, active=True
        )

    login(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/projects/speech/usage/")
    screenshot(page, "project-usage-chart")

    chart = page.locator("figure.chart").nth(1)  # by member
    rows = chart.locator("g")
    assert rows.count() == 2
    labels = [rows.nth(i).locator("text.bar-value").text_content() for i in range(2)]
    assert labels == ["1.00", "0.25"]
    widths = [rows.nth(i).locator("rect.bar").bounding_box()["width"] for i in range(2)]
    area = chart.locator("svg").bounding_box()["width"]
    assert 0.3 * area < widths[0] < 0.9 * area  # the longest bar: most of the bar area, not all
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.05)
    months = page.locator("figure.chart").first.locator("g")
    this_month = months.last
    assert this_month.locator("text.bar-value").text_content() == "1.25"
    empty = [months.nth(i).locator("rect.bar").bounding_box() for i in range(months.count() - 1)]
    assert all(box is None or box["width"] < 1 for box in empty)  # months without usage


def test_it_draws_a_few_minutes_of_use_as_a_short_bar_not_a_full_one(page, live_server):
    stack = DriverStackFactory(name="cuda-12")
    device = AcceleratorFactory(host=HostFactory(name="gpu1"), index=0)
    member = PartnerMembershipFactory(
        project__slug="speech", user=UserFactory(username="alice", debian_member_source="salsa")
    )
    start = timezone.now().replace(microsecond=0) - H
    job = JobFactory(project=member.project, submitter=member.user, stack=stack, state="failed")
    Allocation.objects.create(
        accelerator=device, job=job, start=start, end=start + 3 * timedelta(minutes=1)
    )

    login(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/projects/speech/usage/")
    screenshot(page, "project-usage-chart-minutes")

    bar = page.locator("figure.chart").nth(1).locator("g").first
    assert bar.locator("text.bar-value").text_content() == "0.05"
    area = page.locator("figure.chart").nth(1).locator("svg").bounding_box()["width"]
    width = bar.locator("rect.bar").bounding_box()["width"]
    assert 0 < width < 0.05 * area  # 0.05 device-hours on a scale of at least one
