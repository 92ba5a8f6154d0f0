"""Writing notifications (in the caller's transaction) and sending them (a task of their own).

    with transaction.atomic():
        reservation.state = ...; reservation.save()
        notify("reservation.approved", reservation.user, "operations/mail_approved.txt", ctx)

The template's first line is the subject, then a blank line, then the body. Each recipient's
copy is rendered in their time zone when it is written; the sender only sends what it finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections import Counter
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import certifi
import requests
import urllib3
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from portal.notifications.events import BY_KEY, Channel
from portal.notifications.models import Notification, Preference, Webhook

log = logging.getLogger(__name__)
S = Notification.State


# -- choosing -----------------------------------------------------------------------------------


def _default(event: str, channel: str) -> bool:
    """What a user who chose nothing takes: mail where the event says so, every webhook."""
    return BY_KEY[event].mail if channel == Channel.MAIL else True


def wanted(user, event: str) -> set[str]:
    """The channels the user takes this event by (their choices, else the defaults)."""
    chosen = dict(
        Preference.objects.filter(user=user, event=event).values_list("channel", "enabled")
    )
    return {c for c in Channel if chosen.get(c.value, _default(event, c))}


def choices(user) -> dict[tuple[str, str], bool]:
    """(event, channel) -> on, for the user's settings page: every event of their audience."""
    chosen = {(p.event, p.channel): p.enabled for p in Preference.objects.filter(user=user)}
    return {
        (e.key, c.value): chosen.get((e.key, c.value), _default(e.key, c))
        for e in BY_KEY.values()
        if not e.staff or user.is_staff
        for c in Channel
    }


# -- writing ------------------------------------------------------------------------------------


def _render(template: str, context: dict, zone: str) -> tuple[str, str]:
    with timezone.override(zone or "UTC"):
        text = render_to_string(
            template,
            {**context, "site_name": settings.SITE_NAME, "site_url": settings.SITE_URL},
        )
    subject, _, body = text.partition("\n\n")
    return " ".join(subject.split())[:250], body.strip() + "\n"


def _rows(event, user, subject, body, data) -> list[Notification]:
    channels = wanted(user, event)
    targets: list[tuple[str, str, Webhook | None]] = []
    if user.email and Channel.MAIL in channels:
        targets.append((Channel.MAIL, user.email, None))
    if Channel.WEBHOOK in channels and (hook := Webhook.objects.filter(user=user).first()):
        targets.append((Channel.WEBHOOK, hook.url, hook))
    return [
        Notification(
            event=event,
            user=user,
            channel=channel,
            target=target,
            webhook=hook,
            subject=subject,
            body=body,
            data=data,
        )
        for channel, target, hook in targets
    ]


def notify(
    event: str,
    user,
    template: str,
    context: dict,
    *,
    data: dict | None = None,
    project=None,
) -> int:
    """Queue `event` for `user` by each channel they take it on (and for `project`'s webhook
    when one is given); returns how many copies were queued (0: the user hears nothing)."""
    if event not in BY_KEY:
        raise ValueError(f"no such event: {event}")
    subject, body = _render(template, context, getattr(user, "time_zone", "UTC"))
    rows = _rows(event, user, subject, body, data or {})
    Notification.objects.bulk_create(rows)
    told = len(rows)
    if project is not None and (hook := Webhook.objects.filter(project=project).first()):
        told += notify_webhook(event, hook, template, context, data=data)
    return told


def notify_webhook(event: str, hook: Webhook, template: str, context: dict, *, data=None) -> int:
    """Queue `event` for a project's webhook (every event of the project goes to it)."""
    subject, body = _render(template, context, "UTC")
    Notification.objects.create(
        event=event, channel=Channel.WEBHOOK, target=hook.url, webhook=hook,
        subject=subject, body=body, data=data or {},
    )  # fmt: skip
    return 1


def notify_many(event: str, users, template: str, context: dict, **kw) -> int:
    return sum(notify(event, u, template, context, **kw) for u in users)


def notify_staff(
    event: str, template: str, context: dict, *, data: dict | None = None, actor=None
) -> int:
    """Queue a staff event for every active staff user who takes it but the `actor` who caused
    it, and mail the ADMINS addresses that no staff user has (ADMINS is the operators' list,
    staff or not)."""
    if not BY_KEY[event].staff:
        raise ValueError(f"{event} is not told to staff")
    staff = list(get_user_model().objects.filter(is_staff=True, is_active=True).order_by("pk"))
    told = notify_many(event, [u for u in staff if u != actor], template, context, data=data)
    mine = {u.email.lower() for u in staff if u.email}
    admins = [a for _, a in settings.ADMINS if a.lower() not in mine]
    return told + mail_addresses(event, admins, template, context, data=data)


def mail_addresses(
    event: str, addresses, template: str, context: dict, *, data: dict | None = None
) -> int:
    """Queue a mail to addresses that are no user's (ADMINS, a package's Maintainer)."""
    addresses = list(dict.fromkeys(a for a in addresses if a))
    if addresses:
        subject, body = _render(template, context, "UTC")
        Notification.objects.bulk_create(
            Notification(
                event=event,
                channel=Channel.MAIL,
                target=a,
                subject=subject,
                body=body,
                data=data or {},
            )
            for a in addresses
        )
    return len(addresses)


PLAIN = "notifications/plain.txt"  # for a subject and text written in code: {subject, text}


def notify_staff_text(
    event: str, subject: str, text: str, *, data: dict | None = None, actor=None
) -> int:
    return notify_staff(event, PLAIN, {"subject": subject, "text": text}, data=data, actor=actor)


# -- sending ------------------------------------------------------------------------------------


class Undeliverable(Exception):
    """Sending failed in a way that trying again will not mend."""


def backoff(attempts: int) -> timedelta:
    """After the n-th failed attempt: 30 s, 1 min, 2 min, ... at most an hour."""
    return timedelta(seconds=min(3600, 30 * 2 ** max(0, attempts - 1)))


def send_due(now: datetime | None = None, *, limit: int = 500, budget: float = 180.0) -> Counter:
    """Send what is due, each row claimed first (a lease, so two senders never send one row);
    returns counts by outcome. A mail server that cannot be reached stops this round's mails
    (the rest wait for the next round), never the webhooks; after `budget` seconds the round
    ends and the rest wait too."""
    now = now or timezone.now()
    stop = time.monotonic() + budget
    lease = timedelta(seconds=3 * settings.NOTIFY_TIMEOUT_SECONDS + 10)
    free = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    due = list(
        Notification.objects.filter(free, state=S.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at", "pk")
        .values_list("pk", "channel")[:limit]
    )
    done: Counter = Counter()
    mail_down = False
    # One SMTP connection for the round's mails, opened at the first and closed at the end (or
    # after a mail that failed, so a broken session is not reused; the next mail opens anew).
    smtp = None
    try:
        for pk, channel in due:
            if time.monotonic() > stop:
                break
            if channel == Channel.MAIL and mail_down:
                done["deferred"] += 1  # left unclaimed for the next round
                continue
            claimed = (
                Notification.objects.filter(free, pk=pk, state=S.PENDING)
                .update(lease_until=timezone.now() + lease, attempts=F("attempts") + 1)
            )  # fmt: skip
            if not claimed:
                continue  # another sender has it
            n = Notification.objects.select_related("webhook").get(pk=pk)
            try:
                if n.channel == Channel.MAIL and smtp is None:
                    smtp = get_connection(timeout=settings.NOTIFY_TIMEOUT_SECONDS)
                    smtp.open()
                deliver(n, smtp)
            except Exception as exc:
                done[_failed(n, exc)] += 1
                if n.channel == Channel.MAIL:
                    mail_down = mail_down or isinstance(exc, OSError)
                    _closed(smtp)
                    smtp = None
            else:
                Notification.objects.filter(pk=pk).update(
                    state=S.SENT, sent_at=timezone.now(), lease_until=None, last_error=""
                )
                done["sent"] += 1
    finally:
        _closed(smtp)
    return done


def _closed(smtp) -> None:
    """Close a round's SMTP connection, whatever state its session is in."""
    if smtp is not None:
        with contextlib.suppress(Exception):
            smtp.close()


def _failed(n: Notification, exc: Exception) -> str:
    error = f"{type(exc).__name__}: {exc}"[:2000]
    final = isinstance(exc, Undeliverable) or n.attempts >= settings.NOTIFY_MAX_ATTEMPTS
    state = S.FAILED if final else S.PENDING
    Notification.objects.filter(pk=n.pk).update(
        state=state, lease_until=None, last_error=error,
        next_attempt_at=timezone.now() + backoff(n.attempts),
    )  # fmt: skip
    log.warning(
        "notification %s (%s by %s) %s: %s", n.pk, n.event, n.channel,
        "failed for good" if final else f"failed, attempt {n.attempts}", error,
    )  # fmt: skip
    return "failed" if final else "retry"


def deliver(n: Notification, smtp=None) -> None:
    """Send one notification: a mail over `smtp` (an open connection kept by the caller) or a
    connection of its own, or a webhook's POST."""
    if n.channel == Channel.MAIL:
        connection = smtp or get_connection(timeout=settings.NOTIFY_TIMEOUT_SECONDS)
        EmailMessage(n.subject, n.body, None, [n.target], connection=connection).send()
    elif n.webhook is None:
        raise Undeliverable("the webhook was removed")
    else:
        post(n.webhook, n.target, payload(n), n.event, n.pk)


def payload(n: Notification) -> dict:
    return {
        "id": n.pk,
        "event": n.event,
        "created": n.created.isoformat(),
        "subject": n.subject,
        "text": n.body,
        "data": n.data,
        "site": settings.SITE_URL,
    }


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def post(hook: Webhook, url: str, message: dict, event: str, delivery: int) -> None:
    addresses = check_url(url, resolve=True)
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "porterbox-portal",
        "X-Porterbox-Event": event,
        "X-Porterbox-Delivery": str(delivery),
        "X-Porterbox-Signature": sign(hook.secret, int(time.time()), body),
    }
    if addresses is None:  # private addresses allowed (tests, a bridge beside the portal)
        status = requests.post(
            url, data=body, headers=headers, timeout=settings.NOTIFY_TIMEOUT_SECONDS,
            allow_redirects=False,
        ).status_code  # fmt: skip
    else:
        status = pinned_post(url, addresses, body, headers)
    if 200 <= status < 300:
        return
    if status in (400, 401, 403, 404, 410):
        raise Undeliverable(f"the receiver answered {status}")
    raise OSError(f"the receiver answered {status}")


def pinned_post(
    url: str, addresses: list[str], body: bytes, headers: dict, ca_certs: str = ""
) -> int:
    """POST `body` to an https `url` over a connection to one of `addresses`, those `check_url`
    resolved and checked, not to whatever the name resolves to a moment later (a DNS answer
    that changes between the check and the connection would otherwise turn the portal towards
    its own network). Each is tried in turn until one connects, as a client of the name would
    (an IPv6 address first on a machine without an IPv6 route, say). TLS still names and
    verifies the URL's host (SNI, the certificate), and the request's Host header is the URL's.
    Returns the status; redirects are not followed."""
    for address in addresses[:-1]:
        try:
            return _post_to(url, address, body, headers, ca_certs)
        except urllib3.exceptions.NewConnectionError:
            continue  # nothing sent: the next address
    return _post_to(url, addresses[-1], body, headers, ca_certs)


def _post_to(url: str, address: str, body: bytes, headers: dict, ca_certs: str) -> int:
    parts = urlsplit(url)
    if not parts.hostname:
        raise Undeliverable("a webhook's URL needs a host name")
    pool = urllib3.HTTPSConnectionPool(
        address, port=parts.port or 443, server_hostname=parts.hostname,
        assert_hostname=parts.hostname, cert_reqs="CERT_REQUIRED",
        ca_certs=ca_certs or certifi.where(), maxsize=1, retries=False,
        timeout=urllib3.Timeout(settings.NOTIFY_TIMEOUT_SECONDS),
    )  # fmt: skip
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rpartition("@")[2]
    try:
        answer = pool.urlopen(
            "POST", target, body=body, headers={**headers, "Host": host}, redirect=False,
            retries=False,
        )  # fmt: skip
        return answer.status
    finally:
        pool.close()


def check_url(url: str, *, resolve: bool = False) -> list[str] | None:
    """Refuse a webhook URL the portal must not call: not https, or (resolved) an address of
    this machine or its private networks, unless NOTIFY_WEBHOOK_ALLOW_PRIVATE (tests, a
    bridge on the portal's own network). Resolved, it returns the addresses to connect to (all
    of the name's, each checked), in the resolver's order; otherwise None."""
    parts = urlsplit(url)
    private_ok = settings.NOTIFY_WEBHOOK_ALLOW_PRIVATE
    if parts.scheme != "https" and not (private_ok and parts.scheme == "http"):
        raise Undeliverable("a webhook's URL must start with https://")
    if not parts.hostname:
        raise Undeliverable("a webhook's URL needs a host name")
    if private_ok or not resolve:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise OSError(f"{parts.hostname} does not resolve: {exc}") from None
    addresses = [ipaddress.ip_address(sockaddr[0]) for *_, sockaddr in infos]
    for address in addresses:
        if not address.is_global:
            raise Undeliverable(f"{parts.hostname} is a private address ({address})")
    if not addresses:
        raise OSError(f"{parts.hostname} has no address")
    return [str(address) for address in addresses]
