"""SSH keys on the page and in the API: add, list, remove; conflicts; nothing echoed."""

import pytest
from django.urls import reverse

from portal.accounts.models import SSHKey
from portal.accounts.sshkeys import parse_public_key
from tests.factories import UserFactory
from tests.keys import ed25519_line, private_pem, rsa_line


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


def test_it_adds_lists_and_removes_a_key(logged_in, user):
    line = ed25519_line("alice@laptop")
    response = logged_in.post(reverse("accounts:ssh_keys"), {"keys": line}, follow=True)
    key = SSHKey.objects.get(user=user)
    body = response.content.decode()
    assert key.key_type == "ssh-ed25519" and key.bits == 256 and key.comment == "alice@laptop"
    assert key.fingerprint.startswith("SHA256:") and key.fingerprint in body
    assert "alice@laptop" in body and "never" in body  # last used
    logged_in.post(reverse("accounts:ssh_key_delete", args=[key.id]), {"confirmed": "1"})
    assert not SSHKey.objects.exists()


def test_it_handles_several_pasted_keys_one_by_one(logged_in, user):
    good1, good2 = ed25519_line("one"), ed25519_line("two")
    text = "\n".join([good1, "ssh-rsa AAAAgarbage", good2, rsa_line(2048)])
    response = logged_in.post(reverse("accounts:ssh_keys"), {"keys": text})
    assert response.status_code == 400
    assert sorted(user.ssh_keys.values_list("comment", flat=True)) == ["one", "two"]
    body = response.content.decode()
    assert "Line 2" in body and "Line 4" in body and "3072" in body


def test_it_refuses_a_private_key_without_storing_or_echoing_it(logged_in, user):
    pem = private_pem()
    secret_line = pem.splitlines()[1]
    response = logged_in.post(reverse("accounts:ssh_keys"), {"keys": pem})
    body = response.content.decode()
    assert response.status_code == 400
    assert "private key" in body.lower()
    assert secret_line not in body
    assert not SSHKey.objects.exists()


def test_it_refuses_a_key_registered_by_another_user(logged_in, user):
    line = ed25519_line()
    other = UserFactory()
    other_client = type(logged_in)()
    other_client.force_login(other)
    other_client.post(reverse("accounts:ssh_keys"), {"keys": line})
    response = logged_in.post(reverse("accounts:ssh_keys"), {"keys": line})
    assert response.status_code == 400
    assert "registered to another account" in response.content.decode()
    assert other.username not in response.content.decode()
    assert list(SSHKey.objects.values_list("user", flat=True)) == [other.id]


def test_it_says_when_a_key_is_already_on_the_account(logged_in, user):
    line = ed25519_line()
    logged_in.post(reverse("accounts:ssh_keys"), {"keys": line})
    response = logged_in.post(reverse("accounts:ssh_keys"), {"keys": line})
    assert "already on your account" in response.content.decode()
    assert user.ssh_keys.count() == 1


def test_it_refuses_empty_and_oversized_input(logged_in):
    assert logged_in.post(reverse("accounts:ssh_keys"), {"keys": ""}).status_code == 400
    response = logged_in.post(reverse("accounts:ssh_keys"), {"keys": "A" * 70_000})
    assert response.status_code == 400
    assert "A" * 100 not in response.content.decode()
    assert not SSHKey.objects.exists()


def test_it_does_not_remove_another_users_key(logged_in, user):
    other_key = SSHKey.objects.create(
        user=UserFactory(), key_type="ssh-ed25519", blob="x", bits=256, fingerprint="SHA256:x"
    )
    url = reverse("accounts:ssh_key_delete", args=[other_key.id])
    response = logged_in.post(url, {"confirmed": "1"}, follow=True)
    assert "No such key" in response.content.decode()
    assert SSHKey.objects.filter(pk=other_key.pk).exists()


def test_it_shows_times_in_the_users_zone(logged_in, user):
    user.time_zone = "Asia/Tokyo"
    user.save()
    logged_in.post(reverse("accounts:ssh_keys"), {"keys": ed25519_line()})
    assert "JST" in logged_in.get(reverse("accounts:ssh_keys")).content.decode()


# The API


@pytest.fixture
def api(client, user):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user)
    client.defaults["HTTP_AUTHORIZATION"] = f"Token {token.key}"
    return client


def test_it_manages_keys_through_the_api_with_a_token(api, user):
    url = reverse("api:ssh-key-list")
    created = api.post(url, {"public_key": ed25519_line("ci")}, content_type="application/json")
    assert created.status_code == 201
    body = created.json()
    assert body["key_type"] == "ssh-ed25519" and body["comment"] == "ci" and body["bits"] == 256
    assert "public_key" not in body
    assert [k["fingerprint"] for k in api.get(url).json()["results"]] == [body["fingerprint"]]
    assert api.delete(reverse("api:ssh-key-detail", args=[body["id"]])).status_code == 204
    assert not user.ssh_keys.exists()


def test_it_answers_bad_keys_in_the_api_with_a_code_and_message(api):
    url = reverse("api:ssh-key-list")
    response = api.post(url, {"public_key": rsa_line(2048)}, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_key"
    assert "3072" in response.json()["message"]
    missing = api.post(url, {}, content_type="application/json")
    assert missing.status_code == 400 and missing.json()["code"] == "required"


def test_it_answers_a_key_of_another_user_with_409(api):
    line = ed25519_line()
    other = UserFactory()
    fingerprint = parse_public_key(line).fingerprint
    SSHKey.objects.create(user=other, key_type="x", blob="x", bits=256, fingerprint=fingerprint)
    response = api.post(
        reverse("api:ssh-key-list"), {"public_key": line}, content_type="application/json"
    )
    assert response.status_code == 409
    assert response.json()["code"] == "key_registered"


def test_it_hides_other_users_keys_in_the_api(api):
    other_key = SSHKey.objects.create(
        user=UserFactory(), key_type="ssh-ed25519", blob="x", bits=256, fingerprint="SHA256:y"
    )
    assert api.get(reverse("api:ssh-key-detail", args=[other_key.id])).status_code == 404
    assert api.delete(reverse("api:ssh-key-detail", args=[other_key.id])).status_code == 404
    assert SSHKey.objects.filter(pk=other_key.pk).exists()
