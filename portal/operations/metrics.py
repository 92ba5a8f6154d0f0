"""GET /metrics: the site's state for Prometheus, computed from the database on each scrape.

Nothing is kept in process memory: the portal runs as several gunicorn workers and Celery
workers, so counters held in one process would disagree with the others. Each scrape builds a
fresh registry around `PorterboxCollector`, which reads the database with a fixed number of
aggregate queries (one per metric group, never one per host or device).

Access: a logged-in staff user, or `Authorization: Bearer <PORTAL_METRICS_TOKEN>` for the
scraper; with no token configured, staff sessions only.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import (
    BooleanField,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    Subquery,
    Sum,
)
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from portal.booking.models import Allocation, Reservation
from portal.inventory.models import Accelerator, DeviceSample, Host, Squatter
from portal.jobs.models import Job

log = logging.getLogger(__name__)

R = Reservation.State
# Reservations that still matter now, as counted by porterbox_reservations. `ending` is counted
# whatever its end: ending a reservation early sets its end to that moment, and the row stays
# `ending` until the loop has revoked the session (portal/operations/services.py).
RESERVATION_STATES = (R.PENDING_APPROVAL, R.SCHEDULED, R.PROVISIONING, R.ACTIVE, R.ENDING, R.FAILED)
# A session is open on the host (or being opened) during the slot.
RESERVATION_RUNNING = (R.PROVISIONING, R.ACTIVE)
# Jobs not finished: waiting in the queue, or holding devices.
JOB_STATES = (*Job.WAITING, *Job.HOLDING)

LATENCY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600)  # seconds; +Inf is the count
SAMPLE_MAX_AGE = timedelta(minutes=10)  # an older reading says nothing about now
MIB = 1024 * 1024


def host_up_window() -> timedelta:
    """How long after the loop last reached a host it still counts as up: three ticks."""
    return timedelta(seconds=max(60, 3 * settings.PORTAL_RECONCILE_SECONDS))


class PorterboxCollector(Collector):
    """The site's metrics at one instant, read from the database; retired hardware is left out."""

    def __init__(self, now: datetime | None = None):
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        hosts = list(
            Host.objects.exclude(state=Host.State.RETIRED)
            .order_by("name")
            .values_list("name", "state", "last_seen", "drained_at")
            # The loop's last error can be long; only whether there is one matters here.
            .annotate(error_free=ExpressionWrapper(Q(last_error=""), output_field=BooleanField()))
        )
        names = [name for name, *_ in hosts]
        yield from self._hosts(hosts, now)
        yield from self._devices(now)
        yield from self._reservations(now)
        yield from self._jobs()
        yield self._provisioning_latency()
        yield from self._device_readings(now)
        yield self._squatters(names)

    def _hosts(self, hosts, now: datetime) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "porterbox_host_up",
            "1 if the reconcile loop reached the host within the last three ticks (at least a "
            "minute) without an error, else 0.",
            labels=["host"],
        )
        drained = GaugeMetricFamily(
            "porterbox_host_drained",
            "1 if the host is drained (by health checks) or in maintenance: nothing new starts "
            "on it.",
            labels=["host"],
        )
        window = host_up_window()
        for name, state, last_seen, drained_at, error_free in hosts:
            reached = last_seen is not None and now - last_seen <= window
            up.add_metric([name], int(reached and bool(error_free)))
            drained.add_metric(
                [name], int(drained_at is not None or state == Host.State.MAINTENANCE)
            )
        yield up
        yield drained

    def _devices(self, now: datetime) -> Iterator[Metric]:
        total = GaugeMetricFamily(
            "porterbox_devices",
            "Accelerators in service (not retired), by host and vendor.",
            labels=["host", "vendor"],
        )
        busy = GaugeMetricFamily(
            "porterbox_devices_busy",
            "Accelerators held now by a reservation or a training job, by host and vendor.",
            labels=["host", "vendor"],
        )
        in_service = Q(retired=False) & ~Q(host__state=Host.State.RETIRED)
        counts = (
            Accelerator.objects.filter(in_service)
            .values_list("host__name", "vendor")
            .annotate(n=Count("id"))
            .order_by("host__name", "vendor")
        )
        # Allocations are never deleted, so count from the (indexed) active ones covering now
        # rather than joining every accelerator to its whole history.
        held = (
            Allocation.objects.filter(active=True, start__lte=now, end__gt=now)
            .filter(accelerator__retired=False)
            .exclude(accelerator__host__state=Host.State.RETIRED)
            .values_list("accelerator__host__name", "accelerator__vendor")
            .annotate(n=Count("accelerator", distinct=True))
            .order_by()
        )
        busy_counts = {(host, vendor): n for host, vendor, n in held}
        for host, vendor, n in counts:
            total.add_metric([host, vendor], n)
            busy.add_metric([host, vendor], busy_counts.get((host, vendor), 0))
        yield total
        yield busy

    def _reservations(self, now: datetime) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "porterbox_reservations",
            "Reservations whose slot is not over, by state (ending: until the session is revoked).",
            labels=["state"],
        )
        rows = (
            Reservation.objects.filter(
                Q(state__in=RESERVATION_STATES, end__gt=now) | Q(state=R.ENDING)
            )
            .exclude(host__state=Host.State.RETIRED)
            .values_list("state")
            .annotate(n=Count("id"), started=Count("id", filter=Q(start__lte=now, end__gt=now)))
            .order_by()
        )
        counts = {state: (n, started) for state, n, started in rows}
        for state in RESERVATION_STATES:
            by_state.add_metric([state], counts.get(state, (0, 0))[0])
        yield by_state
        yield GaugeMetricFamily(
            "porterbox_reservations_active",
            "Reservations in their slot now with a session open or being opened "
            "(provisioning or active).",
            value=sum(counts.get(state, (0, 0))[1] for state in RESERVATION_RUNNING),
        )

    def _jobs(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "porterbox_jobs",
            "Training jobs not finished, by state (queued and requeued wait; scheduled, "
            "starting and running hold devices).",
            labels=["state"],
        )
        counts = dict(
            Job.objects.filter(state__in=JOB_STATES)
            .values_list("state")
            .annotate(n=Count("id"))
            .order_by()
        )
        for state in JOB_STATES:
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "porterbox_jobs_queued",
            "Length of the training job queue: jobs waiting for devices (queued or requeued).",
            value=sum(counts.get(state, 0) for state in Job.WAITING),
        )

    def _provisioning_latency(self) -> Metric:
        # Retired hosts' reservations stay in: the buckets are cumulative counts, and dropping
        # them would look like a counter reset to rate() and histogram_quantile().
        # latency = max(0, granted_at - start), so latency <= b  <=>  granted_at <= start + b
        # for every b >= 0: the floor needs no special case in the buckets.
        granted = Reservation.objects.filter(granted_at__isnull=False)
        late = Q(granted_at__gt=F("start"))
        figures = granted.aggregate(
            count=Count("id"),
            late_sum=Sum(
                ExpressionWrapper(F("granted_at") - F("start"), output_field=DurationField()),
                filter=late,
            ),
            **{
                f"le_{b}": Count("id", filter=Q(granted_at__lte=F("start") + timedelta(seconds=b)))
                for b in LATENCY_BUCKETS
            },
        )
        buckets = [(floatToGoString(b), figures[f"le_{b}"]) for b in LATENCY_BUCKETS]
        buckets.append(("+Inf", figures["count"]))
        late_sum = figures["late_sum"] or timedelta(0)
        return HistogramMetricFamily(
            "porterbox_provisioning_latency_seconds",
            "Seconds from a reservation's start to the moment its session was first opened "
            "(0 if opened ahead of the start), over every reservation ever granted.",
            buckets=buckets,
            sum_value=late_sum.total_seconds(),
        )

    def _device_readings(self, now: datetime) -> Iterator[Metric]:
        labels = ["host", "vendor", "index"]
        families = {
            "utilization_pct": GaugeMetricFamily(
                "porterbox_device_utilization_percent",
                "Accelerator utilization (percent) in its latest reading of the last 10 minutes.",
                labels=labels,
            ),
            "memory_used_mib": GaugeMetricFamily(
                "porterbox_device_memory_used_bytes",
                "Accelerator memory in use (bytes) in its latest reading of the last 10 minutes.",
                labels=labels,
            ),
            "temperature_c": GaugeMetricFamily(
                "porterbox_device_temperature_celsius",
                "Accelerator temperature (degrees Celsius) in its latest reading of the last 10 "
                "minutes.",
                labels=labels,
            ),
            "power_w": GaugeMetricFamily(
                "porterbox_device_power_watts",
                "Accelerator power draw (watts) in its latest reading of the last 10 minutes.",
                labels=labels,
            ),
        }
        readings = DeviceSample.objects.filter(resolution=DeviceSample.Resolution.READING)
        # One query: each device's newest reading, found through the unique index on
        # (accelerator, resolution, at), kept if it is recent enough.
        newest = readings.filter(accelerator=OuterRef("accelerator")).order_by("-at").values("at")
        latest = (
            readings.filter(at__gte=now - SAMPLE_MAX_AGE, at=Subquery(newest[:1]))
            .filter(accelerator__retired=False)
            .exclude(accelerator__host__state=Host.State.RETIRED)
            .order_by("accelerator__host__name", "accelerator__index")
            .values_list(
                "accelerator__host__name",
                "accelerator__vendor",
                "accelerator__index",
                *families,
            )
        )
        for host, vendor, index, *values in latest:
            for (field, family), value in zip(families.items(), values, strict=True):
                if value is None:
                    continue  # the vendor's tool does not report it
                if field == "memory_used_mib":
                    value *= MIB
                family.add_metric([host, vendor, str(index)], value)
        yield from families.values()

    def _squatters(self, hosts: list[str]) -> Metric:
        family = GaugeMetricFamily(
            "porterbox_squatters",
            "Processes seen now on a device that their user does not hold, by host.",
            labels=["host"],
        )
        counts = dict(
            Squatter.objects.filter(gone_at__isnull=True)
            .values_list("host__name")
            .annotate(n=Count("id"))
            .order_by()
        )
        for name in hosts:
            family.add_metric([name], counts.get(name, 0))
        return family


def _token_matches(header: str) -> bool:
    expected = settings.PORTAL_METRICS_TOKEN
    scheme, _, token = header.strip().partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    # Bytes: compare_digest refuses non-ASCII str, and a header may hold anything.
    return hmac.compare_digest(token.strip().encode(), expected.encode())


def _unauthorized(message: str, *, error: str = "") -> HttpResponse:
    response = HttpResponse(message, status=401, content_type="text/plain; charset=utf-8")
    challenge = 'Bearer realm="porterbox"'
    if error:
        challenge += f', error="{error}"'
    response["WWW-Authenticate"] = challenge
    return response


@never_cache
@require_safe
def metrics_endpoint(request: HttpRequest) -> HttpResponse:
    if not (request.user.is_authenticated and request.user.is_staff):
        header = request.headers.get("Authorization")
        if header is not None:
            if not _token_matches(header):
                return _unauthorized("Invalid metrics token.\n", error="invalid_token")
        elif request.user.is_authenticated:
            # Known, but not allowed: logging in again would not help (403, not 401).
            return HttpResponse(
                "Metrics are for staff.\n", status=403, content_type="text/plain; charset=utf-8"
            )
        else:
            return _unauthorized("Log in as staff, or send Authorization: Bearer <token>.\n")
    registry = CollectorRegistry()
    registry.register(PorterboxCollector())
    try:
        body = generate_latest(registry)
    except DatabaseError:
        # The scrape fails (Prometheus records up=0), without a 500 page.
        log.exception("metrics: the database could not be read")
        return HttpResponse(
            "The database is unavailable.\n", status=503, content_type="text/plain; charset=utf-8"
        )
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
