"""Logging in: local accounts with verified e-mail, TOTP MFA with recovery codes, rate limits."""

import time

from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
)
from django.core import mail
from django.urls import reverse

from tests.factories import PASSWORD, UserFactory


def login(client, username, password=PASSWORD):
    return client.post(reverse("account_login"), {"login": username, "password": password})


def test_it_logs_in_with_a_verified_local_account(client, user):
    response = login(client, user.username)
    assert response.status_code == 302
    assert client.get(reverse("accounts:profile")).status_code == 200


def test_it_asks_a_new_partner_to_verify_their_email_first(client, db):
    response = client.post(
        reverse("account_signup"),
        {
            "email": "new@example.org",
            "username": "newbie",
            "password1": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("account_email_verification_sent")
    assert "new@example.org" in mail.outbox[0].to
    assert client.get(reverse("accounts:profile")).status_code == 302  # not logged in yet


def test_it_asks_for_a_totp_code_when_mfa_is_on(client, user):
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    response = login(client, user.username)
    assert response["Location"] == reverse("mfa_authenticate")
    assert client.get(reverse("accounts:profile")).status_code == 302  # password alone: no

    wrong = client.post(reverse("mfa_authenticate"), {"code": "000000"})
    assert "Incorrect code" in wrong.content.decode()
    code = format_hotp_value(hotp_value(secret, int(time.time()) // 30))
    assert client.post(reverse("mfa_authenticate"), {"code": code}).status_code == 302
    assert client.get(reverse("accounts:profile")).status_code == 200


def test_it_accepts_a_recovery_code_once(client, user):
    TOTP.activate(user, generate_totp_secret())
    codes = RecoveryCodes.activate(user).generate_codes()
    login(client, user.username)
    assert client.post(reverse("mfa_authenticate"), {"code": codes[0]}).status_code == 302
    client.logout()
    login(client, user.username)
    reused = client.post(reverse("mfa_authenticate"), {"code": codes[0]})
    assert reused.status_code == 200 and "Incorrect code" in reused.content.decode()


def test_it_rate_limits_failed_logins(client, db):
    user = UserFactory()
    for _ in range(5):
        assert "Too many" not in login(client, user.username, "wrong").content.decode()
    blocked = login(client, user.username, PASSWORD)  # even the right password, for a while
    assert "Too many failed login attempts" in blocked.content.decode()
    assert client.get(reverse("accounts:profile")).status_code == 302


def test_it_saves_the_time_zone_and_refuses_an_unknown_one(client, user):
    client.force_login(user)
    url = reverse("accounts:profile")
    ok = client.post(url, {"first_name": "", "last_name": "", "time_zone": "Europe/Berlin"})
    assert ok.status_code == 302
    user.refresh_from_db()
    assert user.time_zone == "Europe/Berlin"
    bad = client.post(url, {"first_name": "", "last_name": "", "time_zone": "Mars/Olympus"})
    assert bad.status_code == 400
    assert "Select a valid choice" in bad.content.decode()


def test_it_signs_mails_with_the_portals_name_not_example_com(client, db):
    client.post(
        reverse("account_signup"),
        {"email": "new@example.org", "username": "newbie", "password1": PASSWORD,
         "password2": PASSWORD},
    )  # fmt: skip
    body = mail.outbox[0].body
    assert "example.com" not in body
    assert "Debian porterbox portal" in body


def test_it_renames_the_site_when_site_url_changes_at_the_next_migrate(db, settings):
    from django.contrib.sites.models import Site
    from django.core.management import call_command

    settings.SITE_URL = "https://porterbox.debian.net"
    settings.SITE_NAME = "Debian GPU porterboxes"
    call_command("migrate", verbosity=0)
    site = Site.objects.get_current()
    assert (site.domain, site.name) == ("porterbox.debian.net", "Debian GPU porterboxes")


def test_the_time_zone_menu_is_grouped_by_region_without_legacy_names(client, user):
    from portal.accounts.models import User

    client.force_login(user)
    body = client.get(reverse("accounts:profile")).content.decode()
    assert '<optgroup label="Europe">' in body
    assert '<option value="Europe/Berlin">Berlin (Europe)</option>' in body
    assert '<option value="America/Argentina/Buenos_Aires">Argentina: Buenos Aires</option>' in body
    for legacy in ("Factory", "US/Eastern", "Etc/GMT+5", "posixrules"):
        assert f'value="{legacy}"' not in body, legacy
    # Someone whose zone is a legacy name keeps it, and can save the page unchanged.
    User.objects.filter(pk=user.pk).update(time_zone="US/Eastern")
    body = client.get(reverse("accounts:profile")).content.decode()
    assert '<option value="US/Eastern" selected>US/Eastern</option>' in body
    kept = client.post(
        reverse("accounts:profile"), {"first_name": "", "last_name": "", "time_zone": "US/Eastern"}
    )
    assert kept.status_code == 302


def test_the_common_zones_come_first(client, user):
    client.force_login(user)
    body = client.get(reverse("accounts:profile")).content.decode()
    common = body.index('<optgroup label="Common">')
    assert common < body.index('<optgroup label="Africa">')
    assert body.index('value="America/New_York">New York (America)</option>') > common
    assert body.count('value="America/New_York"') == 1  # once: not again under America
    assert body.index('value="America/Denver">Denver</option>') > body.index(
        '<optgroup label="America">'
    )
