"""The notification settings page and staff's list of what could not be sent."""

from __future__ import annotations

import pytest
from django.urls import reverse

from portal.notifications.models import Notification, Preference, Webhook
from portal.notifications.outbox import PLAIN, notify
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
SETTINGS = reverse("notifications:settings")


def test_the_page_shows_the_defaults_and_saves_the_ticked_boxes(client):
    alice = UserFactory()
    client.force_login(alice)

    html = client.get(SETTINGS).content.decode()
    assert 'aria-label="Your session is ready by mail" checked>' in html  # default: on
    assert 'aria-label="Your training job started by mail">' in html  # default: off
    assert "reservation.pending" not in html  # a staff event: not offered to a user

    response = client.post(SETTINGS, {"job.started:mail": "on", "session.ready:webhook": "on"})

    assert response.status_code == 302
    chosen = {(p.event, p.channel): p.enabled for p in Preference.objects.filter(user=alice)}
    assert chosen[("job.started", "mail")] is True
    assert chosen[("session.ready", "mail")] is False  # unticked: off
    assert chosen[("session.ready", "webhook")] is True
    assert ("reservation.pending", "mail") not in chosen
    assert notify("session.ready", alice, PLAIN, {"subject": "s", "text": "t"}) == 0


def test_a_new_webhook_shows_its_secret_once(client, settings):
    alice = UserFactory()
    client.force_login(alice)

    response = client.post(
        reverse("notifications:webhook_save"), {"url": "https://hooks.example.org/alice"}
    )

    hook = Webhook.objects.get(user=alice)
    assert hook.url == "https://hooks.example.org/alice"
    assert hook.secret in response.content.decode()
    assert "no-store" in response["Cache-Control"]
    assert hook.secret not in client.get(SETTINGS).content.decode()
    client.post(reverse("notifications:webhook_save"), {"url": "https://hooks.example.org/new"})
    hook.refresh_from_db()
    assert hook.url.endswith("/new") and Webhook.objects.filter(user=alice).count() == 1


def test_a_plain_http_webhook_is_refused_in_words(client, settings):
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE = False
    client.force_login(UserFactory())

    response = client.post(reverse("notifications:webhook_save"), {"url": "http://x.example/"})

    assert response.status_code == 400
    assert "A webhook&#x27;s URL must start with https://." in response.content.decode()
    assert not Webhook.objects.exists()


def test_only_staff_see_and_retry_what_could_not_be_sent(client):
    alice = UserFactory(email="alice@example.org")
    notify("session.ready", alice, PLAIN, {"subject": "Ready", "text": "t"})
    Notification.objects.update(
        state=Notification.State.FAILED, attempts=10, last_error="SMTPRecipientsRefused"
    )
    n = Notification.objects.get()
    client.force_login(alice)
    assert client.get(reverse("notifications:failed")).status_code == 403
    assert client.post(reverse("notifications:retry", args=[n.pk])).status_code == 403

    client.force_login(UserFactory(is_staff=True))
    html = client.get(reverse("notifications:failed")).content.decode()
    assert "mail: alice@example.org" in html and "SMTPRecipientsRefused" in html
    assert "1 notification</a> failed this week" in client.get("/").content.decode()
    client.post(reverse("notifications:retry", args=[n.pk]))

    n.refresh_from_db()
    assert (n.state, n.attempts, n.last_error) == (Notification.State.PENDING, 0, "")
