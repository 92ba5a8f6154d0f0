"""Who may open which page: every page and endpoint, for every role."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.factories import (
    AcceleratorFactory,
    JobFactory,
    PartnerMembershipFactory,
    UserFactory,
)

ROLES = ["anonymous", "user", "partner", "debian", "staff"]


@pytest.fixture
def as_role(client, db):
    def login(role):
        if role == "anonymous":
            return client
        user = {
            "user": lambda: UserFactory(),
            "partner": lambda: PartnerMembershipFactory().user,
            "debian": lambda: UserFactory(debian_member_source="staff"),
            "staff": lambda: UserFactory(is_staff=True, is_superuser=True),
        }[role]()
        client.force_login(user)
        return client

    return login


def login_redirect(response):
    return response.status_code == 302 and "/login/" in response["Location"]


PUBLIC = [
    "home",
    "inventory:host_list",
    "host_detail",
    "api:schema",
    "api:host-list",
    "api:stack-list",
    "api:accelerator-list",
    "booking:site_timeline",
    "booking:finder",
    "host_timeline",
    "jobs:trained",
]
LOGGED_IN = [
    "accounts:profile",
    "accounts:ssh_keys",
    "mfa_index",
    "account_email",
    "booking:my_reservations",
    "book",
    "jobs:queue",
    "projects:list",
    "projects:apply",
]


def url_of(name, host):
    if name in ("host_detail", "host_timeline", "book"):
        app = "inventory" if name == "host_detail" else "booking"
        return reverse(f"{app}:{name}", args=[host.name])
    return reverse(name)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", PUBLIC)
def test_it_shows_public_pages_to_everyone(as_role, role, name):
    host = AcceleratorFactory().host
    response = as_role(role).get(url_of(name, host))
    assert response.status_code == 200


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", LOGGED_IN)
def test_it_shows_account_pages_only_to_logged_in_users(as_role, role, name):
    host = AcceleratorFactory().host
    response = as_role(role).get(url_of(name, host))
    if role == "anonymous":
        assert login_redirect(response)
    else:
        assert response.status_code == 200


@pytest.mark.parametrize("role", ROLES)
def test_it_opens_the_admin_to_staff_only(as_role, role):
    response = as_role(role).get(reverse("admin:index"))
    if role == "staff":
        assert response.status_code == 200
    else:
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


@pytest.mark.parametrize("role", ROLES)
def test_it_lists_api_ssh_keys_only_for_authenticated_callers(as_role, role):
    response = as_role(role).get(reverse("api:ssh-key-list"))
    if role == "anonymous":
        assert response.status_code == 401
        assert response.json()["code"] == "not_authenticated"
    else:
        assert response.status_code == 200


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("anonymous", []),
        ("user", []),
        ("partner", ["partner member"]),
        ("debian", ["Debian member"]),
        ("staff", ["staff"]),
    ],
)
def test_it_names_the_roles_of_each_user(as_role, role, expected):
    client = as_role(role)
    response = client.get(reverse("home"))
    user = response.wsgi_request.user
    assert (user.roles if user.is_authenticated else []) == expected


def test_it_does_not_count_members_of_unapproved_projects_as_partners(db):
    membership = PartnerMembershipFactory(project__state="applied")
    assert not membership.user.is_partner_member


@pytest.mark.parametrize("role", ROLES)
def test_it_opens_project_applications_to_staff_only(as_role, role):
    response = as_role(role).get(reverse("projects:applications"))
    if role == "anonymous":
        assert login_redirect(response)
    else:
        assert response.status_code == (200 if role == "staff" else 403)


@pytest.mark.parametrize("role", ROLES)
def test_it_opens_the_submit_form_to_partner_members_only(as_role, role):
    response = as_role(role).get(reverse("jobs:submit"))
    if role == "anonymous":
        assert login_redirect(response)
    else:
        assert response.status_code == (200 if role == "partner" else 403)


# Pages of one partner project and its jobs, for each relation to the project.
PROJECT_ROLES = ["anonymous", "user", "other_project", "member", "manager", "staff"]


@pytest.fixture
def as_relation(client, db):
    membership = PartnerMembershipFactory(role="manager")
    job = JobFactory(project=membership.project)

    def login(role):
        user = {
            "anonymous": lambda: None,
            "user": lambda: UserFactory(),
            "other_project": lambda: PartnerMembershipFactory().user,
            "member": lambda: PartnerMembershipFactory(project=membership.project).user,
            "manager": lambda: membership.user,
            "staff": lambda: UserFactory(is_staff=True),
        }[role]()
        if user is not None:
            client.force_login(user)
        return client, user, job

    return login


@pytest.mark.parametrize("role", PROJECT_ROLES)
@pytest.mark.parametrize(
    "name", ["projects:detail", "jobs:project_usage", "jobs:job_detail", "jobs:job_log"]
)
def test_it_shows_a_projects_pages_to_its_members_and_staff_only(as_relation, role, name):
    client, _, job = as_relation(role)
    arg = job.pk if name.startswith("jobs:job") else job.project.slug
    response = client.get(reverse(name, args=[arg]))
    if role == "anonymous":
        assert login_redirect(response)
    else:
        visible = role in ("member", "manager", "staff")
        assert response.status_code == (200 if visible else 404)


@pytest.mark.parametrize("role", PROJECT_ROLES)
def test_it_lets_only_managers_and_staff_add_members(as_relation, role):
    client, _, job = as_relation(role)
    newcomer = UserFactory()
    url = reverse("projects:member_add", args=[job.project.slug])
    response = client.post(url, {"username": newcomer.username, "role": "member"})
    expected = {"anonymous": 302, "user": 404, "other_project": 404, "member": 403}
    assert response.status_code == expected.get(role, 302)
    added = job.project.members.filter(pk=newcomer.pk).exists()
    assert added == (role in ("manager", "staff"))


@pytest.mark.parametrize("role", PROJECT_ROLES)
def test_it_shows_a_job_in_the_api_to_its_project_and_staff_only(as_relation, role):
    _, user, job = as_relation(role)
    api = APIClient()
    if user is not None:
        api.force_authenticate(user)
    response = api.get(reverse("api:job-detail", args=[job.pk]))
    expected = {"anonymous": 401, "member": 200, "manager": 200, "staff": 200}
    assert response.status_code == expected.get(role, 404)
