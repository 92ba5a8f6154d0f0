"""A running job's page follows it: what the job writes appears in the log without a reload,
and once it has ended the page shows how (chromium, 1280 px, screenshot)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.jobs.models import Job
from tests.browser.conftest import login, screenshot
from tests.factories import PASSWORD, JobFactory, PartnerMembershipFactory, UserFactory

pytestmark = pytest.mark.browser


def test_the_job_page_follows_the_log_and_the_end(page, live_server, db):
    alice = UserFactory(username="alice")
    project = PartnerMembershipFactory(user=alice).project
    job = JobFactory(
        project=project, submitter=alice, name="train", state=Job.State.RUNNING,
        started_at=timezone.now() - timedelta(minutes=1), log="epoch 1 loss 0.9\n",
    )  # fmt: skip
    login(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/jobs/{job.pk}/")
    log = page.locator("pre.log")
    assert log.inner_text() == "epoch 1 loss 0.9"

    # The reconcile loop copies more of the host's log.
    Job.objects.filter(pk=job.pk).update(log="epoch 1 loss 0.9\nepoch 2 loss 0.5\n")
    page.get_by_text("epoch 2 loss 0.5").wait_for(timeout=20_000)
    assert page.url.endswith(f"/jobs/{job.pk}/")  # no reload: the log grew in place

    Job.objects.filter(pk=job.pk).update(
        state=Job.State.SUCCEEDED, ended_at=timezone.now(), exit_status=0
    )
    page.locator(".state-succeeded").wait_for(timeout=20_000)  # reloaded once it ended
    assert "epoch 2 loss 0.5" in page.locator("pre.log").inner_text()
    assert page.locator("pre.log[data-follow]").count() == 0  # nothing follows a finished job
    screenshot(page, "job-followed-1280")
