"""The outbox (ARCHITECTURE: side effects leave the loop through an outbox).

A Notification row is written in the transaction that changes the state it reports, one row
per recipient and channel, rendered then (in the recipient's zone); a task of its own sends it
(outbox.send_due), with a timeout, retries with backoff and, after the last, a failure staff
see. Nothing here calls SMTP or HTTP from a request or a reconcile pass.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portal.notifications.events import Channel

CHANNEL_CHOICES = [(c.value, c.value) for c in Channel]


class Notification(models.Model):
    class State(models.TextChoices):
        PENDING = "pending", "waiting to be sent"
        SENT = "sent", "sent"
        FAILED = "failed", "failed"

    event = models.CharField(max_length=40)  # a key of events.EVENTS
    # Who it is for: a user, or (staff events) an ADMINS address with no user.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE
    )
    webhook = models.ForeignKey("Webhook", null=True, blank=True, on_delete=models.CASCADE)
    channel = models.CharField(max_length=10, choices=CHANNEL_CHOICES)
    target = models.CharField(max_length=500)  # the address or the URL, as it was then
    subject = models.CharField(max_length=250)
    body = models.TextField()
    data = models.JSONField(default=dict, blank=True)  # ids and links for webhooks
    created = models.DateTimeField(default=timezone.now)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    # A sender holds a row while it sends it; another sender leaves it alone until then.
    lease_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created", "-pk"]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="notification_due",
                condition=Q(state="pending"),
            ),
            models.Index(fields=["user", "-created"], name="notification_of_user"),
        ]

    def __str__(self):
        return f"{self.event} by {self.channel} to {self.target} ({self.state})"


class Preference(models.Model):
    """A user's choice for one event and channel; no row: the event's default."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_prefs"
    )
    event = models.CharField(max_length=40)  # a key of events.EVENTS
    channel = models.CharField(max_length=10, choices=CHANNEL_CHOICES)
    enabled = models.BooleanField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user", "event", "channel"], name="one_preference_per_event_channel"
            )
        ]

    def __str__(self):
        return f"{self.user}: {self.event} by {self.channel} {'on' if self.enabled else 'off'}"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class Webhook(models.Model):
    """Where a user's or a project's notifications are POSTed, signed with `secret`
    (outbox.sign; docs/notifications.md). The secret is kept whole: signing needs it."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
        related_name="webhook",
    )  # fmt: skip
    project = models.OneToOneField(
        "accounts.PartnerProject", null=True, blank=True, on_delete=models.CASCADE,
        related_name="webhook",
    )  # fmt: skip
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=64, default=new_secret)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, project__isnull=True)
                | Q(user__isnull=True, project__isnull=False),
                name="webhook_of_user_or_project",
            )
        ]

    def __str__(self):
        return f"webhook of {self.user or self.project}: {self.url}"
