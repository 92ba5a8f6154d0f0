"""Staff pages: approve or reject reservations, register a host (confirm and pin its keys,
pull its inventory), refresh it, drain and resume it by hand, and plan, move or delete its
maintenance windows (telling the users they affect). Each action is in the admin's log
(staff_log), a reservation's decision in its own audit trail too."""

import socket
from datetime import timedelta
from functools import wraps

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from portal.accounts.audit import staff_log
from portal.booking import services as booking
from portal.booking.availability import floor_to
from portal.booking.forms import DateTimeInput
from portal.booking.models import Allocation, Reservation
from portal.http import client_ip
from portal.inventory.models import Host, MaintenanceWindow
from portal.notifications.outbox import notify_staff_text
from portal.operations import health, registration
from portal.pages import confirm_first, refuse
from provisioning.transport import TransportError

# How far ahead and how long a maintenance window may be: a typo (year 9999, a month for a
# day) is refused, not recorded as a host out of service for ever.
MAINTENANCE_AHEAD = timedelta(days=365)
MAINTENANCE_LONGEST = timedelta(days=30)


def staff_required(view):
    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Only staff do this.")
        return view(request, *args, **kwargs)

    return wrapper


class RegisterForm(forms.ModelForm):
    class Meta:
        model = Host
        fields = ["name", "fqdn", "ssh_port", "agent_user"]

    def validate_unique(self):
        pass  # registering an existing name re-pins its keys


@staff_required
def host_register(request):
    """GET: the form. POST fetch: show the offered keys. POST confirm: pin them, pull inventory."""
    data = request.POST if request.method == "POST" else None
    existing = Host.objects.filter(name=(data or request.GET).get("name", "")).first()
    form = RegisterForm(data, instance=existing, initial=request.GET.dict() if not data else None)
    context: dict[str, object] = {"form": form}
    if data is None or not form.is_valid():
        return render(
            request, "operations/host_register.html", context, status=400 if data else 200
        )
    host = form.instance
    try:
        offered = registration.fetch_host_keys(host.fqdn, host.ssh_port)
    except TransportError as exc:
        form.add_error(None, unreachable_in_words(exc, host.fqdn, host.ssh_port))
        return render(request, "operations/host_register.html", context, status=400)
    if "confirm" not in data:
        context["offered"] = offered
        return render(request, "operations/host_register.html", context)
    # What staff confirmed is what was shown; if the host now offers other keys, start over.
    if sorted(data.getlist("key")) != sorted(offered):
        form.add_error(None, "The host's keys changed since you saw them; check them again.")
        context["offered"] = offered
        return render(request, "operations/host_register.html", context, status=409)
    host.save()
    try:
        registration.host_pin_keys(host, offered)
        fingerprints = ", ".join(line.split()[-1] for line in offered)  # "type blob SHA256:…"
        staff_log(request.user, host, f"Host keys pinned as confirmed: {fingerprints}")
        result = registration.host_sync_inventory(host)
    except (registration.RegistrationError, ValidationError) as exc:
        messages.error(request, f"Keys pinned, but the inventory failed: {exc}")
    else:
        messages.success(request, f"{host.name} registered: {result}.")
    return redirect(host)


def unreachable_in_words(exc: TransportError, fqdn: str, port: int) -> str:
    """Why the host's keys could not be fetched, with what to check: the socket's error
    (exc.__cause__), never its raw "[Errno 111]"."""
    cause, where = exc.__cause__, f"{fqdn}:{port}"
    if isinstance(cause, ConnectionRefusedError):
        return f"{where} refused the connection: is sshd running and the port right?"
    if isinstance(cause, TimeoutError):  # socket.timeout is TimeoutError
        return (
            f"{where} did not answer in time: is the host up, and does its firewall let the "
            "portal in?"
        )
    if isinstance(cause, socket.gaierror):
        return f"{fqdn} is not a name the portal can resolve: is it spelled right?"
    if isinstance(cause, OSError) and cause.strerror:
        return (
            f"{where} cannot be reached ({cause.strerror.lower()}): is the host up and on the "
            "network?"
        )
    return str(exc)


@staff_required
@require_POST
def host_inventory(request, name):
    host = get_object_or_404(Host, name=name)
    try:
        result = registration.host_sync_inventory(host)
    except registration.RegistrationError as exc:
        messages.error(request, f"The inventory failed: {exc}")
    else:
        staff_log(request.user, host, f"Inventory pulled: {result}")
        messages.success(request, f"Inventory of {host.name}: {result}.")
    return redirect(host)


@staff_required
@require_POST
def host_resume(request, name):
    host = get_object_or_404(Host, name=name)
    if not health.resume(host, request.user):
        messages.error(
            request, f"{host.name} is not drained ({host.get_state_display()}); nothing to resume."
        )
        return redirect(host)
    messages.success(request, f"{host.name} is back in service.")
    if host.health_problems:
        found = "; ".join(p.get("message", "") for p in host.health_problems)
        messages.warning(
            request, f"It still reported problems: {found}. If they last, it is drained again."
        )
    return redirect(host)


class DrainForm(forms.Form):
    reason = forms.CharField(
        label="Why drain it",
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Shown on the host's page and mailed to the owners of its upcoming reservations.",
    )


@staff_required
@require_POST
def host_drain(request, name):
    """Take an active host out of service by hand, with a reason, until staff resume it."""
    host = get_object_or_404(Host, name=name)
    form = DrainForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say why you drain the host.")
        return redirect(host)
    asked = confirm_first(
        request, question=f"Drain {host.name}?",
        consequence="Nothing new is booked or started on it until staff resume it; the owners "
        "of its upcoming reservations are mailed your reason.",
        button="Yes, drain it", back=host.get_absolute_url(),
    )  # fmt: skip
    if asked is not None:
        return asked
    reason = form.cleaned_data["reason"]
    if not health.drain(
        host, reason, timezone.now(), cause=Host.DrainCause.STAFF, actor=request.user
    ):
        messages.error(
            request, f"{host.name} is not active ({host.get_state_display()}); nothing to drain."
        )
        return redirect(host)
    staff_log(request.user, host, f"Drained by hand: {host.drain_reason}")
    messages.success(request, f"{host.name} is drained: nothing new starts on it.")
    return redirect(host)


class MaintenanceForm(forms.ModelForm):
    """Times are read in the staff member's time zone (UserTimezoneMiddleware)."""

    class Meta:
        model = MaintenanceWindow
        fields = ["start", "end", "reason"]
        widgets = {"start": DateTimeInput(), "end": DateTimeInput()}
        help_texts = {
            "start": "In your time zone; not in the past, at most a year ahead.",
            "end": "In your time zone; at most 30 days after the start.",
        }

    def clean_start(self):
        start = self.cleaned_data["start"]
        now = timezone.now()
        # A window under way keeps its start; only a new start must not be in the past.
        # Typed to the minute: the current minute is not the past.
        if start != self.instance.start and start < floor_to(now, timedelta(minutes=1)):
            raise ValidationError("The start is in the past.")
        if start > now + MAINTENANCE_AHEAD:
            raise ValidationError("The start is more than a year ahead.")
        return start

    def clean(self):
        super().clean()
        data = self.cleaned_data
        start, end = data.get("start"), data.get("end")
        if start and end and end <= start:
            self.add_error("end", "The end must be after the start.")
        elif start and end and end - start > MAINTENANCE_LONGEST:
            self.add_error("end", "A window lasts at most 30 days; plan a longer one in parts.")
        return data


def _window_log(window) -> str:
    return (
        f"from {window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} UTC "
        f"({window.reason or 'no reason given'})"
    )


def _users(told: int) -> str:
    return f"{told} user{'s' if told != 1 else ''} told"


@staff_required
def host_maintenance(request, name):
    """GET: the form. POST: record the window and mail the owners of the reservations in it."""
    host = get_object_or_404(Host.objects.exclude(state=Host.State.RETIRED), name=name)
    data = request.POST if request.method == "POST" else None
    form = MaintenanceForm(data, instance=MaintenanceWindow(host=host, created_by=request.user))
    if data is None or not form.is_valid():
        planned = host.maintenance_windows.filter(end__gt=timezone.now()).order_by("start")
        context = {"host": host, "form": form, "planned": planned}
        return render(
            request, "operations/host_maintenance.html", context, status=400 if data else 200
        )
    # Other slots searched first, with the window left out of them: no row is held meanwhile.
    planned = form.instance
    notices = health.maintenance_notices(host, planned.start, planned.end, planned.reason)
    with transaction.atomic():  # the window, its notices and the log entry, or none of them
        window = form.save()
        told = health.send_notices(notices, window.start, window.end)
        staff_log(request.user, host, f"Maintenance planned {_window_log(window)}; {_users(told)}")
        notify_staff_text(
            "maintenance.planned",
            f"Maintenance of {host.name} planned by {request.user}",
            f"{host.name}: {_window_log(window)}; {_users(told)}.",
            data={"host": host.name, "start": window.start.isoformat(),
                  "end": window.end.isoformat()},
            actor=request.user,
        )  # fmt: skip
    start, end = timezone.localtime(window.start), timezone.localtime(window.end)
    messages.success(
        request,
        f"Maintenance of {host.name} from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M %Z} "
        f"recorded; {_users(told)}.",
    )
    return redirect(host)


def _open_window(name, pk) -> MaintenanceWindow:
    """A window of the host that is not over: past ones are history, not changed."""
    return get_object_or_404(
        MaintenanceWindow.objects.select_related("host"),
        pk=pk, host__name=name, end__gt=timezone.now(),
    )  # fmt: skip


@staff_required
def maintenance_edit(request, name, pk):
    """GET: the window's form. POST: move it; the owners of reservations it now overlaps, and
    did not before, are mailed (the others were told already)."""
    window = _open_window(name, pk)
    before = (window.start, window.end)
    before_log = _window_log(window)
    data = request.POST if request.method == "POST" else None
    form = MaintenanceForm(data, instance=window)
    if data is None or not form.is_valid():
        # The form wrote what was typed into `window`: show what is planned from `before`.
        context = {"host": window.host, "form": form, "window": window, "before": before}
        return render(
            request, "operations/maintenance_edit.html", context, status=400 if data else 200
        )
    planned = form.instance
    notices = health.maintenance_notices(
        planned.host, planned.start, planned.end, planned.reason, before=before
    )
    with transaction.atomic():
        window = form.save()
        told = health.send_notices(notices, window.start, window.end)
        staff_log(
            request.user, window.host,
            f"Maintenance changed {before_log} to {_window_log(window)}; {_users(told)}",
        )  # fmt: skip
    messages.success(request, f"Maintenance window changed; {_users(told)}.")
    return redirect("operations:host_maintenance", window.host.name)


@staff_required
@require_POST
def maintenance_delete(request, name, pk):
    window = _open_window(name, pk)
    start, end = timezone.localtime(window.start), timezone.localtime(window.end)
    asked = confirm_first(
        request, question=f"Delete the maintenance of {window.host.name} from "
        f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M %Z}?",
        consequence="The host can be booked in that time again; the owners of reservations in "
        "it are told the maintenance is off.",
        button="Yes, delete it",
        back=reverse("operations:host_maintenance", args=[window.host.name]),
    )  # fmt: skip
    if asked is not None:
        return asked
    with transaction.atomic():  # the deletion, its notices and the log entry
        told = health.notify_affected(
            window.host, window.start, window.end, window.reason,
            "operations/mail_maintenance_cancelled.txt", search=False,  # it offers no slots
        )  # fmt: skip
        staff_log(
            request.user, window.host, f"Maintenance deleted {_window_log(window)}; {_users(told)}"
        )
        window.delete()
    messages.success(request, f"Maintenance window deleted; {_users(told)}.")
    return redirect("operations:host_maintenance", window.host.name)


# -- reservations waiting for staff ----------------------------------------------------------------


@staff_required
def approvals(request):
    """Reservations on hosts that need approval, soonest first, each to approve or reject."""
    waiting = (
        Reservation.objects.filter(state=Reservation.State.PENDING_APPROVAL, end__gt=timezone.now())
        .select_related("host", "user", "stack")
        .prefetch_related(
            Prefetch(
                "allocations",
                Allocation.objects.filter(active=True).select_related("accelerator"),
                to_attr="held",
            )
        )
        .order_by("start", "pk")
    )
    context = {"waiting": waiting, "now": timezone.now()}
    return render(request, "operations/approvals.html", context)


@staff_required
@require_POST
def reservation_decide(request, pk):
    """Approve, or reject with a reason (asked first); the owner is mailed either way."""
    reservation = get_object_or_404(Reservation.objects.select_related("host", "user"), pk=pk)
    decision = request.POST.get("decision")
    if decision not in ("approve", "reject"):
        messages.error(request, "Approve or reject.")
        return redirect("operations:approvals")
    approve = decision == "approve"
    reason = request.POST.get("reason", "").strip()
    who = f"{reservation.user.username}'s reservation of {reservation.host.name}"
    if not approve:
        if not reason:
            messages.error(request, f"Say why you reject {who}: its owner is told.")
            return redirect("operations:approvals")
        asked = confirm_first(
            request, question=f"Reject {who}?",
            consequence="Its devices are given back at once, and its owner is mailed your "
            "reason; it cannot be undone.",
            button="Yes, reject it", back=reverse("operations:approvals"),
        )  # fmt: skip
        if asked is not None:
            return asked
    try:
        reservation = booking.reservation_decide(
            reservation=reservation, approve=approve, actor=request.user, reason=reason,
            ip=client_ip(request),
        )  # fmt: skip
    except booking.BookingError as exc:
        refuse(request, exc)
        return redirect("operations:approvals")
    staff_log(request.user, reservation, "Approved" if approve else f"Rejected: {reason[:1900]}")
    done = "approved" if approve else "rejected"
    messages.success(request, f"{who} {done}; they are told.")
    return redirect("operations:approvals")
