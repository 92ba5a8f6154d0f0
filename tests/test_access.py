"""Who may open which page: every page and endpoint, for every role."""

import pytest
from django.urls import reverse

from tests.factories import (
    AcceleratorFactory,
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
]
LOGGED_IN = [
    "accounts:profile",
    "accounts:ssh_keys",
    "mfa_index",
    "account_email",
    "booking:my_reservations",
    "book",
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
