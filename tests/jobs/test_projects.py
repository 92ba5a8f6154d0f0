"""Partner projects: apply, staff decide, managers keep the member list, members submit."""

from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from portal.accounts.models import PartnerMembership, PartnerProject
from portal.jobs.models import Job
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    PartnerMembershipFactory,
    PartnerProjectFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

APPLICATION = {
    "name": "OpenSpeech",
    "url": "https://openspeech.example.org",
    "description": "Speech recognition models trained on free corpora.",
    "code_licence": "Apache-2.0",
    "data_licence": "CC-BY-4.0",
    "contact_email": "team@openspeech.example.org",
}


@pytest.fixture
def stack(db):
    stack = DriverStackFactory(name="cuda-12")
    host = HostFactory(name="gpu1")
    host.stacks.add(stack)
    AcceleratorFactory(host=host, index=0)
    return stack


def job_form(project, **overrides):
    return {
        "project": project.slug, "name": "whisper-small", "script": "python3 train.py\n",
        "stack": "cuda-12", "count": "1", "hwspec": "cuda", "min_memory_gb": "",
        "walltime_hours": "2", "env": "EPOCHS=3\nLR=0.001", "input_git_url": "",
        "input_git_ref": "", "code_licence": "Apache-2.0", "data_licence": "CC-BY-4.0",
        "model_freedom": "free", **overrides,
    }  # fmt: skip


def test_it_takes_an_application_then_staff_approve_and_the_member_submits(
    client, user, staff, stack
):
    client.force_login(user)
    page = client.get(reverse("projects:apply"))
    assert page.status_code == 200 and user.email in page.content.decode()
    response = client.post(reverse("projects:apply"), APPLICATION)
    project = PartnerProject.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("projects:detail", args=[project.slug])
    assert (project.state, project.slug, project.code_licence) == (
        "applied", "openspeech", "Apache-2.0"
    )  # fmt: skip
    assert PartnerMembership.objects.get(project=project).role == "manager"
    # Not approved yet: no job.
    assert client.get(reverse("jobs:submit")).status_code == 403

    client.force_login(staff)
    listing = client.get(reverse("projects:applications")).content.decode()
    assert "OpenSpeech" in listing and f"{user.username} (manager)" in listing
    response = client.post(reverse("projects:decide", args=[project.slug]), {"decision": "approve"})
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.state == "approved"

    client.force_login(user)
    form = client.get(reverse("jobs:submit") + f"?project={project.slug}").content.decode()
    assert 'value="Apache-2.0"' in form  # the project's licences prefilled
    response = client.post(reverse("jobs:submit"), job_form(project))
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:job_detail", args=[job.pk])
    assert (job.project, job.submitter, job.state) == (project, user, "queued")
    assert (job.env, job.walltime, job.hwspec) == (
        {"EPOCHS": "3", "LR": "0.001"}, timedelta(hours=2), "cuda"
    )  # fmt: skip


def test_it_refuses_an_incomplete_application_naming_the_field(client, user):
    client.force_login(user)
    response = client.post(reverse("projects:apply"), {**APPLICATION, "data_licence": ""})
    assert response.status_code == 400
    assert "data_licence" in response.context["form"].errors
    assert not PartnerProject.objects.exists()


def test_it_refuses_a_taken_name_and_avoids_reserved_slugs(client, user):
    PartnerProjectFactory(name="OpenSpeech", slug="other")
    client.force_login(user)
    response = client.post(reverse("projects:apply"), APPLICATION)
    assert response.status_code == 400 and "name" in response.context["form"].errors
    response = client.post(reverse("projects:apply"), {**APPLICATION, "name": "Apply"})
    assert PartnerProject.objects.get(name="Apply").slug == "apply-project"


def test_it_rejects_once_and_says_so_the_second_time(client, staff):
    project = PartnerProjectFactory(state="applied")
    client.force_login(staff)
    url = reverse("projects:decide", args=[project.slug])
    client.post(url, {"decision": "reject", "reason": "no licence", "confirmed": "1"})
    project.refresh_from_db()
    assert project.state == "rejected"
    response = client.post(url, {"decision": "approve"}, follow=True)
    assert "decided already" in response.content.decode()
    project.refresh_from_db()
    assert project.state == "rejected"


def test_it_lets_only_staff_see_applications_and_decide(client, user):
    project = PartnerProjectFactory(state="applied")
    PartnerMembershipFactory(project=project, user=user, role="manager")
    client.force_login(user)
    assert client.get(reverse("projects:applications")).status_code == 403
    response = client.post(reverse("projects:decide", args=[project.slug]), {"decision": "approve"})
    assert response.status_code == 403
    project.refresh_from_db()
    assert project.state == "applied"


def test_it_approves_and_rejects_with_admin_actions(client, staff):
    waiting = PartnerProjectFactory(state="applied")
    decided = PartnerProjectFactory(state="rejected")
    client.force_login(staff)
    response = client.post(
        reverse("admin:accounts_partnerproject_changelist"),
        {"action": "approve", ACTION_CHECKBOX_NAME: [waiting.pk, decided.pk]},
        follow=True,
    )
    assert "Approved 1 application (1 not waiting" in response.content.decode()
    waiting.refresh_from_db()
    decided.refresh_from_db()
    assert (waiting.state, decided.state) == ("approved", "rejected")


def test_it_shows_a_project_to_its_members_and_staff_only(client, staff):
    member = PartnerMembershipFactory(project__device_hours_per_month=321)
    url = reverse("projects:detail", args=[member.project.slug])
    client.force_login(member.user)
    page = client.get(url).content.decode()
    assert "321" in page and "Staff set the quotas" in page
    assert "Add a member" not in page  # a plain member manages nobody
    client.force_login(PartnerMembershipFactory().user)  # a member of another project
    assert client.get(url).status_code == 404
    client.force_login(staff)
    page = client.get(url).content.decode()
    assert "Edit the quotas and share in the admin" in page
    client.logout()
    assert client.get(url).status_code == 302


def test_it_lets_a_manager_add_and_remove_members(client):
    manager = PartnerMembershipFactory(role="manager")
    project = manager.project
    newcomer = UserFactory(username="bob")
    client.force_login(manager.user)
    add = reverse("projects:member_add", args=[project.slug])

    response = client.post(add, {"username": "bob", "role": "member"})
    assert response.status_code == 302
    assert PartnerMembership.objects.get(project=project, user=newcomer).role == "member"

    response = client.post(add, {"username": "nobody", "role": "member"})
    assert response.status_code == 400
    assert "No user 'nobody'" in response.context["form"].errors["username"][0]
    response = client.post(add, {"username": "bob", "role": "member"})
    assert "a member already" in response.context["form"].errors["username"][0]

    client.post(
        reverse("projects:member_remove", args=[project.slug, newcomer.pk]), {"confirmed": "1"}
    )
    assert not PartnerMembership.objects.filter(project=project, user=newcomer).exists()

    response = client.post(
        reverse("projects:member_remove", args=[project.slug, manager.user.pk]),
        {"confirmed": "1"},
        follow=True,
    )
    assert "at least one manager" in response.content.decode()
    assert PartnerMembership.objects.filter(pk=manager.pk).exists()


def test_it_refuses_membership_changes_from_plain_members_and_strangers(client):
    manager = PartnerMembershipFactory(role="manager")
    member = PartnerMembershipFactory(project=manager.project)
    add = reverse("projects:member_add", args=[manager.project.slug])
    remove = reverse("projects:member_remove", args=[manager.project.slug, manager.user.pk])
    client.force_login(member.user)
    assert client.post(add, {"username": member.user.username}).status_code == 403
    assert client.post(remove).status_code == 403
    client.force_login(UserFactory())
    assert client.post(add, {"username": "x"}).status_code == 404
    assert client.post(remove).status_code == 404
    assert PartnerMembership.objects.count() == 2


def test_it_lists_the_users_projects(client):
    member = PartnerMembershipFactory(project__name="DeepSea")
    client.force_login(member.user)
    page = client.get(reverse("projects:list")).content.decode()
    assert "DeepSea" in page and "Submit a job" in page
    client.force_login(UserFactory())
    page = client.get(reverse("projects:list")).content.decode()
    assert "You belong to no partner project yet" in page
    assert reverse("projects:apply") in page


def test_a_rejection_asks_first_needs_a_reason_and_tells_the_members(
    client, staff, mailoutbox, django_capture_on_commit_callbacks
):
    member = PartnerMembershipFactory(project__state="applied", project__name="Vision")
    project = member.project
    client.force_login(staff)
    url = reverse("projects:decide", args=[project.slug])

    asked = client.post(url, {"decision": "reject", "reason": "The data licence is unclear."})
    assert asked.status_code == 200 and "Reject Vision?" in asked.content.decode()
    assert PartnerProject.objects.get(pk=project.pk).state == "applied"  # nothing yet
    no_reason = client.post(
        url, {"decision": "reject", "reason": " ", "confirmed": "1"}, follow=True
    )
    assert "Say why the application is rejected." in no_reason.content.decode()
    assert PartnerProject.objects.get(pk=project.pk).state == "applied"

    with django_capture_on_commit_callbacks(execute=True):  # the mail goes after the commit
        client.post(
            url, {"decision": "reject", "reason": "The data licence is unclear.", "confirmed": "1"}
        )

    project.refresh_from_db()
    assert (project.state, project.decision_reason) == ("rejected", "The data licence is unclear.")
    assert [m.to for m in mailoutbox] == [[member.user.email]]
    assert "Staff said: The data licence is unclear." in mailoutbox[0].body
    client.force_login(member.user)
    page = client.get(reverse("projects:detail", args=[project.slug])).content.decode()
    assert "staff did not approve it: “The data licence is unclear.”" in page
