from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from portal.inventory import charts, selectors
from portal.inventory.forms import HostFilterForm
from portal.inventory.models import Accelerator, HealthCheck, Host, MaintenanceWindow, Squatter


def _windows(now) -> Prefetch:
    """A host's maintenance windows that are not over, for `_with_windows`."""
    return Prefetch(
        "maintenance_windows",
        queryset=MaintenanceWindow.objects.filter(end__gt=now).order_by("start"),
        to_attr="open_windows",
    )


def _with_windows(host: Host, now) -> Host:
    """Mark the window the host is in now and the next one, for inventory/_host_state.html:
    a host in a planned window reads "in maintenance until ...", not like a drained one."""
    windows = host.open_windows  # type: ignore[attr-defined]  # _windows's prefetch
    host.window_now = next((w for w in windows if w.start <= now), None)  # type: ignore[attr-defined]
    host.window_next = next((w for w in windows if w.start > now), None)  # type: ignore[attr-defined]
    return host


def host_list(request):
    form = HostFilterForm(request.GET or None)
    status = 200
    hosts: list[Host] = []
    if form.is_bound and not form.is_valid():
        status = 400
    else:
        kwargs = form.selector_kwargs() if form.is_bound else {}
        now = timezone.now()
        hosts = [
            _with_windows(h, now)
            for h in selectors.host_list(**kwargs).prefetch_related(_windows(now))
        ]
    return render(
        request, "inventory/host_list.html", {"form": form, "hosts": hosts}, status=status
    )


def host_detail(request, name):
    """The host, its health and policies, and its devices' telemetry over ?span=hour|day|week.

    A bounded number of queries whatever the number of devices or samples (charts.py).
    """
    accelerators = Prefetch("accelerators", queryset=Accelerator.objects.order_by("index"))
    now = timezone.now()
    host = get_object_or_404(
        Host.objects.prefetch_related("stacks", accelerators, _windows(now)), name=name
    )
    _with_windows(host, now)
    if host.state == Host.State.RETIRED and not request.user.is_staff:
        return render(request, "inventory/host_retired.html", {"host": host}, status=410)
    span_name = request.GET.get("span", charts.DEFAULT_SPAN)
    span = charts.SPANS.get(span_name)
    context = {"host": host, "spans": charts.SPANS.values(), "span": span, "charts": []}
    if span:
        context["charts"] = charts.host_charts(host, span)
    else:
        choices = ", ".join(charts.SPANS)
        context["span_error"] = f"Unknown span “{span_name[:40]}”: choose one of {choices}."
    if request.user.is_authenticated:
        # Who runs what is for staff and for the holders of those devices: others see only
        # how many processes run on devices they do not hold.
        processes = charts.current_processes(host)
        if not request.user.is_staff:
            held = selectors.devices_held(request.user, host, timezone.now())
            context["others_processes"] = sum(p.key not in held for p in processes)
            processes = [p for p in processes if p.key in held]
        context["processes"] = processes
    if request.user.is_staff:
        context["probe_errors"] = charts.probe_errors(host)
        context["squatters"] = (
            Squatter.objects.filter(host=host, gone_at__isnull=True)
            .select_related("accelerator")
            .order_by("-first_seen")[:20]
        )
        context["health_checks"] = (
            HealthCheck.objects.filter(host=host)
            .select_related("accelerator", "stack")
            .order_by("-started")[:10]
        )
    return render(request, "inventory/host_detail.html", context, status=200 if span else 400)
