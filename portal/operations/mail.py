"""Mails the loop sends to users: rendered in the recipient's time zone, first line the subject."""

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.utils import timezone


def mail_user(user, template: str, context: dict) -> bool:
    """Send one mail from `template` (subject, blank line, body); False if they have no address."""
    if not user.email:
        return False
    with timezone.override(user.time_zone):
        body = render_to_string(template, {**context, "site_name": settings.SITE_NAME})
    subject, _, text = body.partition("\n\n")
    send_mail(subject.strip(), text, None, [user.email], fail_silently=True)
    return True
