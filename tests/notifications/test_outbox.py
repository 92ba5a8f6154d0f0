"""The outbox: rows written with the state change, sent by their own task to a real SMTP
server and a real HTTP receiver, retried, delivered once, failures kept in sight."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
import urllib3
from django.db import transaction
from django.utils import timezone

from portal.accounts.services import project_apply, project_decide
from portal.notifications.models import Notification, Preference, Webhook
from portal.notifications.outbox import (
    PLAIN,
    Undeliverable,
    check_url,
    notify,
    pinned_post,
    send_due,
)
from tests.factories import PartnerMembershipFactory, PartnerProjectFactory, UserFactory
from tests.notifications.receivers import Receiver, TlsReceiver

pytestmark = pytest.mark.django_db
S = Notification.State


def ready(user, text="ssh -p 2222 alice@gpu1") -> int:
    return notify("session.ready", user, PLAIN, {"subject": "Your session is ready", "text": text})


def later(seconds: float):
    return timezone.now() + timedelta(seconds=seconds)


# -- who is told, by what ----------------------------------------------------------------------


def test_a_user_is_mailed_by_default_and_not_once_they_turn_it_off():
    alice = UserFactory(email="alice@example.org")
    assert ready(alice) == 1
    (row,) = Notification.objects.all()
    assert (row.channel, row.target, row.state) == ("mail", "alice@example.org", S.PENDING)
    assert row.subject == "Your session is ready" and "ssh -p 2222" in row.body

    Preference.objects.create(user=alice, event="session.ready", channel="mail", enabled=False)
    assert ready(alice) == 0
    assert Notification.objects.count() == 1


def test_events_off_by_default_reach_only_a_webhook():
    alice = UserFactory()
    Webhook.objects.create(user=alice, url="https://hooks.example.org/alice")
    job_started = notify(
        "job.started", alice, PLAIN, {"subject": "Job #1 started", "text": "on gpu1"}
    )
    assert job_started == 1
    assert list(Notification.objects.values_list("channel", "target")) == [
        ("webhook", "https://hooks.example.org/alice")
    ]


def test_the_text_is_written_in_the_recipients_zone():
    start = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)  # a time the template shows
    berlin, tokyo = UserFactory(time_zone="Europe/Berlin"), UserFactory(time_zone="Asia/Tokyo")
    for user in (berlin, tokyo):
        notify("session.ready", user, PLAIN, {"subject": "Ready", "text": start})
    bodies = dict(Notification.objects.values_list("target", "body"))
    assert bodies[berlin.email].startswith("Dec. 3, 2026, 1 p.m.")  # 13:00 in Berlin
    assert bodies[tokyo.email].startswith("Dec. 3, 2026, 9 p.m.")  # 21:00 in Tokyo


def test_nothing_is_queued_when_the_change_is_rolled_back():
    alice = UserFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        ready(alice)
        raise RuntimeError("the state change failed after all")
    assert not Notification.objects.exists()


def test_staff_hear_of_an_application_in_its_transaction_and_members_of_the_decision(settings):
    settings.ADMINS = [("Ops", "ops@example.org"), ("Dup", "boss@example.org")]
    boss = UserFactory(is_staff=True, email="boss@example.org")
    other = UserFactory(is_staff=True, email="other@example.org")
    applicant = UserFactory(email="carol@example.org")

    project = project_apply(applicant=applicant, name="OpenLLM", description="Training.")

    told = sorted(Notification.objects.values_list("target", "event"))
    assert told == [  # each address once: boss is in ADMINS and staff
        ("boss@example.org", "project.applied"),
        ("ops@example.org", "project.applied"),
        ("other@example.org", "project.applied"),
    ]
    Notification.objects.all().delete()
    project_decide(project=project, actor=boss, approve=False, reason="No licence given.")
    (row,) = Notification.objects.all()
    assert (row.target, row.event) == ("carol@example.org", "project.rejected")
    assert "Staff said: No licence given." in row.body
    assert other.pk  # (a second staff user who was told above)


# -- sending: SMTP -----------------------------------------------------------------------------


def test_a_mail_refused_then_accepted_is_retried_and_delivered_once(smtp, settings):
    alice = UserFactory(email="alice@example.org")
    ready(alice)

    first = send_due()  # nothing listens on the mail server's port yet

    row = Notification.objects.get()
    assert first == {"retry": 1}
    assert (row.state, row.attempts) == (S.PENDING, 1)
    assert "Connection refused" in row.last_error or "ConnectionRefused" in row.last_error
    assert row.next_attempt_at >= later(25)  # backoff: not hammered
    assert send_due() == {} and smtp.messages == []  # not before its time

    smtp.start()
    assert send_due(now=later(31)) == {"sent": 1}
    assert send_due(now=later(3600)) == {}  # sent is sent

    (message,) = smtp.messages
    assert message["To"] == "alice@example.org" and message["Subject"] == "Your session is ready"
    row.refresh_from_db()
    assert (row.state, row.attempts, row.last_error) == (S.SENT, 2, "")


def test_a_round_sends_its_mails_over_one_connection(smtp):
    smtp.start()
    users = UserFactory.create_batch(3)
    for user in users:
        ready(user)
    assert send_due() == {"sent": 3}
    assert sorted(m["To"] for m in smtp.messages) == sorted(u.email for u in users)
    assert len(set(smtp.inbox.peers)) == 1  # one SMTP session for the round, not one a mail
    ready(users[0])
    assert send_due() == {"sent": 1}
    assert len(set(smtp.inbox.peers)) == 2  # closed at the round's end: the next opens anew


def test_a_mail_that_keeps_failing_ends_failed_in_sight(smtp, settings):
    settings.NOTIFY_MAX_ATTEMPTS = 2
    ready(UserFactory())
    send_due()
    assert send_due(now=later(3600)) == {"failed": 1}
    row = Notification.objects.get()
    assert (row.state, row.attempts) == (S.FAILED, 2)
    assert send_due(now=later(7200)) == {}  # a failed one waits for staff's retry


def test_a_hanging_mail_server_costs_one_timeout_per_round_not_one_per_mail(hanging_smtp):
    for user in UserFactory.create_batch(3):
        ready(user)

    done = send_due()

    assert done == {"retry": 1, "deferred": 2}  # the rest wait for the next round
    tried = Notification.objects.get(attempts=1)
    assert "timed out" in tried.last_error
    assert Notification.objects.filter(attempts=0, state=S.PENDING).count() == 2
    assert hanging_smtp.accepted == 1


def test_a_row_another_sender_holds_is_left_alone(smtp):
    smtp.start()
    ready(UserFactory())
    Notification.objects.update(lease_until=later(60))  # another worker is sending it
    assert send_due() == {} and smtp.messages == []
    assert send_due(now=later(61)) == {"sent": 1}  # its lease ran out: that worker died


# -- sending: webhooks -------------------------------------------------------------------------


@pytest.fixture
def receiver():
    box: dict = {}
    server = Receiver(lambda: box["secret"])
    server.box = box
    yield server
    server.close()


def test_a_webhook_is_signed_and_the_receiver_verifies_it(receiver, settings):
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE = True
    project = PartnerProjectFactory(slug="openllm")
    member = PartnerMembershipFactory(project=project).user
    hook = Webhook.objects.create(project=project, url=receiver.url)
    receiver.box["secret"] = hook.secret
    project.state = "applied"
    project.save()

    project_decide(project=project, actor=UserFactory(is_staff=True), approve=True)
    assert send_due()["sent"] >= 1

    (got,) = receiver.received
    assert got["verified"] is True
    assert got["headers"]["X-Porterbox-Event"] == "project.approved"
    body = got["body"]
    assert body["event"] == "project.approved" and body["data"]["project"] == "openllm"
    assert body["subject"].endswith("approved") and member.pk

    receiver.box["secret"] = "not the secret"  # a forger's receiver would refuse it
    Notification.objects.update(state=S.PENDING, next_attempt_at=timezone.now())
    send_due()
    assert receiver.received[-1]["verified"] is False


def test_a_webhook_answering_500_is_retried_and_410_gives_up(receiver, settings):
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE = True
    alice = UserFactory()
    hook = Webhook.objects.create(user=alice, url=receiver.url)
    receiver.box["secret"] = hook.secret
    Preference.objects.create(user=alice, event="session.ready", channel="mail", enabled=False)
    ready(alice)

    receiver.status = 500
    assert send_due() == {"retry": 1}
    receiver.status = 410
    assert send_due(now=later(31)) == {"failed": 1}
    row = Notification.objects.get()
    assert row.state == S.FAILED and "410" in row.last_error
    assert len(receiver.received) == 2


def test_webhooks_go_only_to_public_https_addresses(settings):
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(Undeliverable, match="https"):
        check_url("http://hooks.example.org/x")
    with pytest.raises(Undeliverable, match="private address"):
        check_url("https://127.0.0.1:6379/", resolve=True)  # the portal's own Redis, say
    with pytest.raises(Undeliverable, match="private address"):
        check_url("https://localhost/", resolve=True)


def test_a_public_address_is_the_one_connected_to_and_all_of_a_names_are_checked(
    settings, monkeypatch
):
    """check_url resolves once and hands back the address it checked: the POST connects there
    (pinned_post), so a DNS answer that changes after the check (a rebinding name, first
    public, then 127.0.0.1) cannot turn the portal towards its own network. The resolver is
    the one part played here: this machine reaches no public name server."""
    settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE = False
    answers = {
        "hooks.example.org": ["192.0.2.1", "8.8.8.8"],  # one of its addresses is not public
        "public.example.org": ["8.8.8.8", "2001:4860:4860::8888"],
    }

    def resolve(host, port, *args, **kwargs):
        family = lambda a: socket.AF_INET6 if ":" in a else socket.AF_INET  # noqa: E731
        return [(family(a), socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(Undeliverable, match=r"private address \(192\.0\.2\.1\)"):
        check_url("https://hooks.example.org/x", resolve=True)
    assert check_url("https://public.example.org/x", resolve=True) == [
        "8.8.8.8",
        "2001:4860:4860::8888",
    ]
    assert check_url("https://public.example.org/x") is None  # a form's check: not resolved


def test_a_pinned_post_names_and_verifies_the_urls_host(tmp_path):
    """Connected to the checked address, TLS still says (SNI) and verifies (the certificate)
    the URL's host name, and the request carries its Host, path and query."""
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    good = TlsReceiver(tmp_path / "good", "hooks.example.org")
    impostor = TlsReceiver(tmp_path / "bad", "other.example.org")
    try:
        url = f"https://hooks.example.org:{good.port}/hook?project=speech"
        # The first address takes no connection (nothing listens on 127.0.0.2): the next does.
        json_type = {"Content-Type": "application/json"}
        status = pinned_post(url, ["127.0.0.2", "127.0.0.1"], b'{"a":1}', json_type,
                             ca_certs=good.ca_file)  # fmt: skip
        assert status == 204
        assert good.server_names == ["hooks.example.org"]
        assert good.received == [
            {"path": "/hook?project=speech", "host": f"hooks.example.org:{good.port}",
             "body": {"a": 1}}
        ]  # fmt: skip
        # A server at the address whose certificate names another host is refused.
        url = f"https://hooks.example.org:{impostor.port}/hook"
        with pytest.raises(urllib3.exceptions.SSLError):
            pinned_post(url, ["127.0.0.1"], b"{}", {}, ca_certs=impostor.ca_file)
        assert impostor.received == []
    finally:
        good.close()
        impostor.close()
