"""Staff pages of hosts: only staff register hosts or refresh their inventory."""

import pytest
from django.urls import reverse

from tests.factories import HostFactory, UserFactory


@pytest.mark.parametrize("method", ["get", "post"])
def test_it_sends_anonymous_visitors_to_the_login(client, db, method):
    response = getattr(client, method)(reverse("operations:host_register"))
    assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.parametrize(
    ("url", "method"),
    [("operations:host_register", "get"), ("operations:host_register", "post"),
     ("operations:host_inventory", "post")],
)  # fmt: skip
def test_it_forbids_debian_members_to_manage_hosts(client, db, url, method):
    host = HostFactory()
    client.force_login(UserFactory(debian_member_source="staff"))
    args = [host.name] if url.endswith("inventory") else []

    response = getattr(client, method)(reverse(url, args=args), {"name": "x"})

    assert response.status_code == 403
    host.refresh_from_db()
    assert host.host_keys == ""


def test_it_refuses_an_invalid_registration_with_the_reasons(client, staff):
    client.force_login(staff)
    response = client.post(
        reverse("operations:host_register"),
        {"name": "Bad Name!", "fqdn": "-x", "ssh_port": "70000", "agent_user": "porterbox"},
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert set(errors) == {"name", "fqdn", "ssh_port"}


def test_it_says_when_the_host_cannot_be_reached(client, staff):
    from tests.provisioning.sshd import free_port

    client.force_login(staff)
    port = free_port()  # nothing listens there: the connection is refused
    response = client.post(
        reverse("operations:host_register"),
        {"name": "gpu9", "fqdn": "127.0.0.1", "ssh_port": port, "agent_user": "porterbox"},
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert f"127.0.0.1:{port} refused the connection: is sshd running and the port right?" in page
    assert "Errno" not in page


def test_it_shows_staff_the_host_provisioning_facts_and_hides_them_from_others(client, staff):
    host = HostFactory(last_error="agent: bad_config", key_mismatch=True)
    url = reverse("inventory:host_detail", args=[host.name])
    client.force_login(UserFactory(debian_member_source="staff"))
    assert "bad_config" not in client.get(url).content.decode()

    client.force_login(staff)
    page = client.get(url).content.decode()
    assert "bad_config" in page and "Host key mismatch" in page
