"""Staff act only with a second factor, and the admin's login is allauth's, with its MFA stage."""

import time

from allauth.mfa.totp.internal.auth import TOTP, format_hotp_value, generate_totp_secret, hotp_value
from django.urls import reverse

from tests.factories import PASSWORD, UserFactory


def test_it_sends_the_admin_login_through_allauth_which_asks_for_the_second_factor(client, db):
    admin = UserFactory(is_staff=True, is_superuser=True, mfa=False)
    secret = generate_totp_secret()
    TOTP.activate(admin, secret)

    page = client.get("/admin/login/?next=/admin/booking/")
    assert page.status_code == 302
    assert page["Location"] == reverse("account_login") + "?next=%2Fadmin%2Fbooking%2F"

    # Django's own admin form, posted to directly, logs nobody in any more.
    client.post("/admin/login/", {"username": admin.username, "password": PASSWORD})
    assert client.get("/admin/").status_code == 302

    answer = client.post(
        page["Location"], {"login": admin.username, "password": PASSWORD}
    )  # the password alone
    assert answer["Location"] == reverse("mfa_authenticate")
    assert client.get("/admin/").status_code == 302  # still not in
    code = format_hotp_value(hotp_value(secret, int(time.time()) // 30))
    done = client.post(reverse("mfa_authenticate"), {"code": code})
    assert done["Location"] == "/admin/booking/"
    assert client.get("/admin/").status_code == 200


def test_it_keeps_staff_without_a_second_factor_out_of_staff_pages_until_they_set_one(client, db):
    admin = UserFactory(is_staff=True, is_superuser=True, mfa=False)
    client.force_login(admin)
    for url in ("/admin/", "/hosts/register/", "/metrics", "/"):
        answer = client.get(url)
        assert (url, answer.status_code, answer["Location"]) == (url, 302, reverse("mfa_index"))
    setup = client.get(reverse("mfa_index"), follow=True)
    assert "Staff accounts need a second factor" in setup.content.decode()

    TOTP.activate(admin, generate_totp_secret())
    assert client.get("/admin/").status_code == 200
    assert client.get("/hosts/register/").status_code == 200


def test_it_leaves_members_without_a_second_factor_alone(client, user):
    client.force_login(user)
    assert client.get("/").status_code == 200
    assert client.get(reverse("accounts:profile")).status_code == 200


def test_it_offers_security_keys_beside_authenticator_apps(client, user):
    client.force_login(user)
    page = client.get(reverse("mfa_index")).content.decode()
    assert reverse("mfa_activate_totp") in page
    assert reverse("mfa_add_webauthn") in page
