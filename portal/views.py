import ipaddress
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import REDIRECT_FIELD_NAME
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from portal.inventory.models import Accelerator, Host


def home(request):
    hosts = Host.objects.exclude(state=Host.State.RETIRED)
    context = {
        "host_count": hosts.count(),
        "accelerator_count": Accelerator.objects.filter(host__in=hosts, retired=False).count(),
    }
    return render(request, "home.html", context)


def admin_login(request, extra_context=None):
    """The admin's login page is allauth's, with its MFA stage; back to the admin after."""
    target = request.GET.get(REDIRECT_FIELD_NAME) or reverse("admin:index")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("admin:index")
    return redirect(f"{reverse('account_login')}?{urlencode({REDIRECT_FIELD_NAME: target})}")


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


def client_ip(request) -> str | None:
    """The client's address for the audit log (behind a proxy: the hop the proxy appended)."""
    address = request.META.get("REMOTE_ADDR", "")
    if settings.BEHIND_PROXY and request.META.get("HTTP_X_FORWARDED_FOR"):
        address = request.META["HTTP_X_FORWARDED_FOR"].split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None
