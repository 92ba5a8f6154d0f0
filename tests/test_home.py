"""The home page as a signed-in person's dashboard (issue 19): their sessions with the line to
log in and the time left, what waits for approval, their jobs; for staff, what waits for staff.
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal.accounts.models import PartnerProject
from portal.booking.models import BookingPolicy, Reservation
from portal.booking.services import reservation_create
from portal.inventory.models import HealthCheck, Host
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    PartnerMembershipFactory,
    UserFactory,
)
from tests.helpers import NOW

pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture
def gpu1(db):
    host = HostFactory(name="gpu1")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(2):
        AcceleratorFactory(host=host, index=i)
    return host


@pytest.fixture(autouse=True)
def generous(db):
    policy = BookingPolicy.current()
    policy.max_concurrent_reservations = 20
    policy.save()


@pytest.fixture
def alice(db):
    return UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")


def book(user, host, start, hours, index):
    return reservation_create(
        user=user, host=host, stack=host.stacks.get(), start=start,
        end=start + timedelta(hours=hours), accelerators=[host.accelerators.get(index=index)],
    )  # fmt: skip


def test_it_shows_my_sessions_now_and_next_with_the_ssh_line(client, alice, gpu1):
    now_slot = book(alice, gpu1, NOW.replace(minute=0), 2, 0)
    Reservation.objects.filter(pk=now_slot.pk).update(state=Reservation.State.ACTIVE)
    book(alice, gpu1, datetime(2026, 11, 24, 8, tzinfo=UTC), 1, 1)
    bob = UserFactory(debian_member_source="staff")
    book(bob, gpu1, datetime(2026, 11, 24, 12, tzinfo=UTC), 1, 1)  # someone else's
    client.force_login(alice)

    body = client.get(reverse("home")).content.decode()

    assert "Your sessions" in body
    assert "ssh alice@gpu1.example.org" in body
    assert "ends in 1\xa0hour, 53\xa0minutes" in body  # NOW is 09:07 UTC, it ends at 11:00
    assert "Tue 24 Nov 09:00" in body  # 08:00 UTC in her zone, Berlin
    assert "starts in 22\xa0hours, 53\xa0minutes" in body
    assert body.count("gpu1</strong>") == 2  # not the other person's booking
    assert "Waiting for staff" not in body


def test_it_shows_what_waits_and_my_jobs(client, alice, gpu1):
    pending = book(alice, gpu1, datetime(2026, 11, 25, 8, tzinfo=UTC), 1, 0)
    Reservation.objects.filter(pk=pending.pk).update(state=Reservation.State.PENDING_APPROVAL)
    membership = PartnerMembershipFactory(user=alice, project__name="Speech models")
    JobFactory(project=membership.project, submitter=alice, name="whisper-tune")
    applied = PartnerMembershipFactory(
        user=alice, project__name="Vision", project__state=PartnerProject.State.APPLIED
    )
    client.force_login(alice)

    body = client.get(reverse("home")).content.decode()

    assert "Waiting for staff approval" in body and "not booked until staff approve it" in body
    assert "whisper-tune" in body and "queued" in body
    assert f'href="/projects/{applied.project.slug}/"' in body
    assert "Waiting for staff</h2>" not in body  # the staff section is staff's


def test_staff_see_what_waits_for_them(client, alice, gpu1):
    pending = book(alice, gpu1, datetime(2026, 11, 25, 8, tzinfo=UTC), 1, 0)
    Reservation.objects.filter(pk=pending.pk).update(state=Reservation.State.PENDING_APPROVAL)
    PartnerMembershipFactory(project__name="Vision", project__state=PartnerProject.State.APPLIED)
    drained = HostFactory(
        name="gpu2", state=Host.State.MAINTENANCE, drain_cause=Host.DrainCause.UNREACHABLE,
        drain_reason="no answer since 08:00", drained_at=NOW - timedelta(hours=1),
    )  # fmt: skip
    HealthCheck.objects.create(
        host=gpu1, accelerator=gpu1.accelerators.get(index=1), started=NOW - timedelta(hours=2),
        passed=False, exit_status=1, output="ECC errors",
    )  # fmt: skip
    staff = UserFactory(username="root", is_staff=True)
    client.force_login(staff)

    with CaptureQueriesContext(connection) as few:
        body = client.get(reverse("home")).content.decode()

    assert "Waiting for staff</h2>" in body
    assert "Approve or reject" in body and "alice" in body
    assert "Project application" in body and "Vision" in body
    assert f'Drained</strong>: <a href="{drained.get_absolute_url()}">gpu2</a>' in body
    assert "no answer since 08:00" in body
    assert "Failed health check" in body and "device #1" in body
    # A bounded page: more of everything costs no more queries.
    for day in range(26, 29):
        extra = book(alice, gpu1, datetime(2026, 11, day, 8, tzinfo=UTC), 1, 1)
        Reservation.objects.filter(pk=extra.pk).update(state=Reservation.State.PENDING_APPROVAL)
    with CaptureQueriesContext(connection) as more:
        client.get(reverse("home"))
    assert len(more) == len(few)
