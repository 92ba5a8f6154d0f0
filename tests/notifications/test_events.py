"""Events the issue names reach people from where the state changes: jobs (and their
project's webhook), and the project webhook managers set."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from portal.jobs.models import Job
from portal.notifications.models import Notification, Webhook
from portal.operations.jobs import requeue
from tests.factories import HostFactory, JobFactory, PartnerMembershipFactory

pytestmark = pytest.mark.django_db


def test_a_job_lost_with_its_host_tells_its_submitter_and_its_project(settings):
    job = JobFactory(state=Job.State.RUNNING, host=HostFactory(name="gpu7"))
    Webhook.objects.create(project=job.project, url="https://hooks.example.org/project")
    settings.JOBS_MAX_REQUEUES = 3

    requeue(job, timezone.now(), "gpu7 could not be reached")

    told = {n.channel: n for n in Notification.objects.filter(event="job.requeued")}
    assert set(told) == {"webhook"}  # requeued: mail is off by default, the project's hook on
    assert told["webhook"].target == "https://hooks.example.org/project"
    assert told["webhook"].data["job"] == job.pk and told["webhook"].data["state"] == "requeued"
    assert "lost its host and waits in the queue again" in told["webhook"].body

    job.refresh_from_db()
    job.state = Job.State.RUNNING
    job.save()
    settings.JOBS_MAX_REQUEUES = 0
    requeue(job, timezone.now(), "gpu7 could not be reached")  # too often: it fails

    (failed,) = Notification.objects.filter(event="job.failed", channel="mail")
    assert failed.target == job.submitter.email
    assert failed.subject == f"Job #{job.pk} {job.name}: failed"
    assert "requeued 1 times already, so it failed" in failed.body


def test_managers_set_the_project_webhook_and_members_may_not(client):
    managing = PartnerMembershipFactory(role="manager")
    manager, project = managing.user, managing.project
    member = PartnerMembershipFactory(project=project, role="member").user
    url = reverse("projects:webhook", args=[project.slug])

    client.force_login(member)
    assert client.post(url, {"url": "https://hooks.example.org/p"}).status_code == 403

    client.force_login(manager)
    shown = client.post(url, {"url": "https://hooks.example.org/p"})
    hook = Webhook.objects.get(project=project)
    assert hook.secret in shown.content.decode()
    refused = client.post(url, {"url": "ftp://hooks.example.org/p"})
    assert refused.status_code == 400
    assert "URL must start with https://." in refused.content.decode()
    client.post(url, {"url": ""})
    assert not Webhook.objects.filter(project=project).exists()
