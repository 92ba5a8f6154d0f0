"""Staff actions outside the admin land in the admin's own log, with who did what and why."""

from typing import cast

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from portal.accounts.models import PartnerProject, User
from portal.accounts.services import project_decide
from portal.operations import health
from tests.factories import DriverStackFactory, HostFactory, PartnerProjectFactory
from tests.helpers import NOW

pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture
def gpu1(db):
    host = HostFactory(name="gpu1", last_seen=NOW)
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    return host


def history(obj) -> list[tuple[str, str]]:
    rows = []
    for entry in LogEntry.objects.filter(object_id=str(obj.pk)).order_by("pk"):
        # django-stubs types LogEntry's foreign keys without their models.
        if cast(ContentType, entry.content_type).model_class() is type(obj):
            rows.append((cast(User, entry.user).username, entry.change_message))
    return rows


def test_it_logs_a_resume_with_the_drain_it_ends(client, gpu1, staff):
    health.drain(gpu1, "fans failing", NOW)
    client.force_login(staff)
    client.post(reverse("operations:host_resume", args=["gpu1"]))
    assert history(gpu1) == [
        (staff.username, "Resumed; it was drained at 2026-11-23 09:07 UTC: fans failing")
    ]


def test_it_logs_a_planned_maintenance(client, gpu1, staff):
    client.force_login(staff)
    client.post(
        reverse("operations:host_maintenance", args=["gpu1"]),
        {"start": "2026-11-23T13:30", "end": "2026-11-23T15:00", "reason": "new fans"},
    )
    assert history(gpu1) == [
        (
            staff.username,
            "Maintenance planned from 2026-11-23 13:30 to 2026-11-23 15:00 UTC (new fans); "
            "0 users told",
        )
    ]


def test_it_logs_a_decision_on_a_project(staff):
    project = PartnerProjectFactory(state=PartnerProject.State.APPLIED)
    assert project_decide(project=project, actor=staff, approve=False, reason="no licence")
    assert history(project) == [(staff.username, "Application rejected: no licence")]
    assert not project_decide(project=project, actor=staff, approve=True)  # decided once
    assert len(history(project)) == 1


def test_it_shows_the_entries_in_the_admins_history_of_the_host(client, gpu1, staff):
    health.drain(gpu1, "fans failing", NOW)
    health.resume(gpu1, staff, NOW)
    client.force_login(staff)
    page = client.get(reverse("admin:inventory_host_history", args=[gpu1.pk]))
    assert "Resumed; it was drained at 2026-11-23 09:07 UTC: fans failing" in page.content.decode()
