from django.shortcuts import get_object_or_404, render

from portal.inventory import selectors
from portal.inventory.forms import HostFilterForm
from portal.inventory.models import Host


def host_list(request):
    form = HostFilterForm(request.GET or None)
    status = 200
    if form.is_bound and not form.is_valid():
        hosts, status = Host.objects.none(), 400
    else:
        kwargs = form.selector_kwargs() if form.is_bound else {}
        hosts = selectors.host_list(**kwargs)
    return render(
        request, "inventory/host_list.html", {"form": form, "hosts": hosts}, status=status
    )


def host_detail(request, name):
    host = get_object_or_404(Host.objects.prefetch_related("stacks", "accelerators"), name=name)
    if host.state == Host.State.RETIRED and not request.user.is_staff:
        return render(request, "inventory/host_retired.html", {"host": host}, status=410)
    return render(request, "inventory/host_detail.html", {"host": host})
