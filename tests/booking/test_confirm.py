"""Nothing destructive happens on one click: without JavaScript a confirmation page comes first
(nothing changed until it is answered); with it, a dialog (tests/browser/test_confirm.py)."""

import re
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from portal.booking.models import Reservation
from portal.booking.services import reservation_create
from portal.jobs.models import Job
from tests.factories import JobFactory, PartnerMembershipFactory, UserFactory

pytestmark = pytest.mark.usefixtures("frozen")


def hidden_fields(body: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', body))


def test_cancelling_a_reservation_asks_first_then_cancels(client, host):
    alice = UserFactory(username="alice", debian_member_source="salsa")
    r = reservation_create(
        user=alice, host=host, stack=host.stacks.get(), accelerators=[host.accelerators.first()],
        start=datetime(2026, 11, 24, 8, tzinfo=UTC), end=datetime(2026, 11, 24, 10, tzinfo=UTC),
    )  # fmt: skip
    client.force_login(alice)
    url = reverse("booking:reservation_change", args=[r.pk, "cancel"])

    asked = client.post(url)

    assert asked.status_code == 200
    body = asked.content.decode()
    assert "Cancel your reservation of gpu1?" in body
    assert f'href="{r.get_absolute_url()}">No, go back</a>' in body
    assert Reservation.objects.get(pk=r.pk).state == Reservation.State.SCHEDULED  # unchanged
    done = client.post(url, hidden_fields(body))
    assert done.status_code == 302
    assert Reservation.objects.get(pk=r.pk).state == Reservation.State.CANCELLED


def test_cancelling_a_job_asks_first(client, db):
    membership = PartnerMembershipFactory()
    job = JobFactory(project=membership.project, submitter=membership.user, name="sweep")
    client.force_login(membership.user)
    url = reverse("jobs:job_cancel", args=[job.pk])

    body = client.post(url).content.decode()

    assert "Cancel the job sweep" in body and "It leaves the queue." in body
    assert Job.objects.get(pk=job.pk).state == Job.State.QUEUED
    client.post(url, hidden_fields(body))
    assert Job.objects.get(pk=job.pk).state == Job.State.CANCELLED


def test_someone_elses_reservation_is_not_even_asked_about(client, host):
    owner = UserFactory(debian_member_source="salsa")
    r = reservation_create(
        user=owner, host=host, stack=host.stacks.get(), accelerators=[host.accelerators.first()],
        start=datetime(2026, 11, 24, 8, tzinfo=UTC), end=datetime(2026, 11, 24, 10, tzinfo=UTC),
    )  # fmt: skip
    client.force_login(UserFactory())
    url = reverse("booking:reservation_change", args=[r.pk, "cancel"])
    assert client.post(url).status_code == 404
