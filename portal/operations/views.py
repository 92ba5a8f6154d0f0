"""Staff pages: register a host (confirm and pin its keys, pull its inventory), refresh it,
resume a drained host, and plan a maintenance window (telling the users it affects)."""

from datetime import timedelta
from functools import wraps

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from portal.accounts.audit import staff_log
from portal.booking.availability import floor_to
from portal.booking.forms import DateTimeInput
from portal.inventory.models import Host, MaintenanceWindow
from portal.operations import health, registration
from provisioning.transport import TransportError


def staff_required(view):
    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Only staff manage hosts.")
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
        form.add_error(None, str(exc))
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
            request,
            f"{host.name} is not drained ({host.get_state_display()}); nothing to resume. "
            "A state set by hand is changed in the admin.",
        )
        return redirect(host)
    messages.success(request, f"{host.name} is back in service.")
    if host.health_problems:
        found = "; ".join(p.get("message", "") for p in host.health_problems)
        messages.warning(
            request, f"It still reported problems: {found}. If they last, it is drained again."
        )
    return redirect(host)


class MaintenanceForm(forms.ModelForm):
    """Times are read in the staff member's time zone (UserTimezoneMiddleware)."""

    class Meta:
        model = MaintenanceWindow
        fields = ["start", "end", "reason"]
        widgets = {"start": DateTimeInput(), "end": DateTimeInput()}
        help_texts = {"start": "In your time zone.", "end": "In your time zone."}

    def clean_start(self):
        start = self.cleaned_data["start"]
        # Typed to the minute: the current minute is not the past.
        if start < floor_to(timezone.now(), timedelta(minutes=1)):
            raise ValidationError("The start is in the past.")
        return start

    def clean(self):
        super().clean()
        data = self.cleaned_data
        start, end = data.get("start"), data.get("end")
        if start and end and end <= start:
            self.add_error("end", "The end must be after the start.")
        return data


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
    window = form.save()
    told = health.maintenance_announce(window)
    staff_log(
        request.user, host,
        f"Maintenance planned from {window.start:%Y-%m-%d %H:%M} to {window.end:%Y-%m-%d %H:%M} "
        f"UTC ({window.reason or 'no reason given'}); {told} users told",
    )  # fmt: skip
    start, end = timezone.localtime(window.start), timezone.localtime(window.end)
    messages.success(
        request,
        f"Maintenance of {host.name} from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M %Z} "
        f"recorded; {told} user{'s' if told != 1 else ''} told.",
    )
    return redirect(host)
