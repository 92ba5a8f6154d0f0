import ipaddress

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import render

from portal.inventory.models import Accelerator, Host


def home(request):
    hosts = Host.objects.exclude(state=Host.State.RETIRED)
    context = {
        "host_count": hosts.count(),
        "accelerator_count": Accelerator.objects.filter(host__in=hosts, retired=False).count(),
    }
    return render(request, "home.html", context)


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
