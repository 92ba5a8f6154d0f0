"""Staff pages: register a host (confirm and pin its keys, pull its inventory), refresh it."""

from functools import wraps

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from portal.inventory.models import Host
from portal.operations import registration
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
    context = {"form": form}
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
        messages.success(request, f"Inventory of {host.name}: {result}.")
    return redirect(host)
