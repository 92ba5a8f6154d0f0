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
