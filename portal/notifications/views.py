"""A user's notification settings (events by channel, a webhook), and staff's view of what
could not be sent."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from portal.notifications.events import EVENTS
from portal.notifications.forms import WebhookForm
from portal.notifications.models import Notification, Preference, Webhook
from portal.notifications.outbox import choices
from portal.pages import confirm_first

RECENT = 20


def _page(request, *, form=None, status=200, secret=None):
    user = request.user
    chosen = choices(user)
    rows = [
        {"event": e, "mail": chosen[(e.key, "mail")], "webhook": chosen[(e.key, "webhook")]}
        for e in EVENTS
        if (e.key, "mail") in chosen
    ]
    hook = Webhook.objects.filter(user=user).first()
    context = {
        "rows": rows,
        "hook": hook,
        "form": form or WebhookForm(initial={"url": hook.url if hook else ""}),
        "recent": Notification.objects.filter(user=user)[:RECENT],
        "new_secret": secret,
    }
    response = render(request, "notifications/settings.html", context, status=status)
    if secret:
        add_never_cache_headers(response)  # the secret is shown in this answer only
    return response


@login_required
def settings_page(request):
    """GET: the grid of events and channels. POST: save the ticked boxes."""
    if request.method != "POST":
        return _page(request)
    allowed = set(choices(request.user))
    with transaction.atomic():
        Preference.objects.filter(user=request.user).delete()
        Preference.objects.bulk_create(
            Preference(
                user=request.user,
                event=event,
                channel=channel,
                enabled=f"{event}:{channel}" in request.POST,
            )
            for event, channel in sorted(allowed)
        )
    messages.success(request, "Notification settings saved.")
    return redirect("notifications:settings")


@login_required
@require_POST
def webhook_save(request):
    """Set the user's webhook URL; a new webhook gets a new secret, shown once."""
    form = WebhookForm(request.POST)
    if not form.is_valid():
        return _page(request, form=form, status=400)
    with transaction.atomic():
        hook, created = Webhook.objects.select_for_update().get_or_create(
            user=request.user, defaults={"url": form.cleaned_data["url"]}
        )
        if not created:
            hook.url = form.cleaned_data["url"]
            hook.save(update_fields=["url"])
    if created:
        return _page(request, secret=hook.secret)
    messages.success(request, "Webhook URL saved; its secret is unchanged.")
    return redirect("notifications:settings")


@login_required
@require_POST
def webhook_delete(request):
    asked = confirm_first(
        request,
        question="Remove your webhook?",
        consequence="Nothing is posted to it any more, and its secret is forgotten.",
        button="Yes, remove it",
        back=reverse("notifications:settings"),
    )
    if asked is not None:
        return asked
    if Webhook.objects.filter(user=request.user).delete()[0]:
        messages.success(request, "Webhook removed.")
    return redirect("notifications:settings")


def _staff(request) -> None:
    if not request.user.is_staff:
        raise PermissionDenied("Only staff see what could not be sent.")


@login_required
def failed(request):
    """Staff: notifications that failed for good, and those still being retried."""
    _staff(request)
    troubled = Notification.objects.filter(
        state__in=(Notification.State.FAILED, Notification.State.PENDING), attempts__gt=0
    ).select_related("user")
    return render(request, "notifications/failed.html", {"troubled": troubled[:200]})


@login_required
@require_POST
def retry(request, pk):
    """Staff: send a failed notification again, from its first attempt."""
    _staff(request)
    n = get_object_or_404(Notification, pk=pk, state=Notification.State.FAILED)
    Notification.objects.filter(pk=n.pk, state=Notification.State.FAILED).update(
        state=Notification.State.PENDING, attempts=0, next_attempt_at=timezone.now(),
        last_error="",
    )  # fmt: skip
    messages.success(request, f"Notification #{n.pk} to {n.target} will be sent again.")
    return redirect("notifications:failed")
