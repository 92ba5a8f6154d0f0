"""Calendar feeds (RFC 5545, written by the icalendar library).

- `/api/feeds/<token>.ics`: a user's reservations and training jobs, at a secret address that a
  calendar application subscribes to (it sends no credentials: the token is the secret,
  accounts.FeedToken). An unknown or revoked token is a 404.
- `/api/hosts/<name>/calendar.ics`: a host's bookings, jobs and maintenance windows, for staff,
  authenticated as the rest of the API (token or session).

Times are UTC (`...Z`); X-WR-TIMEZONE names the user's zone for the applications that show it.
A cancelled reservation is left out rather than sent as STATUS:CANCELLED: a subscribed feed is
replaced whole at each refresh, so an event that leaves the feed leaves the calendar, while
CANCELLED events are shown as ordinary ones by some applications (it is meant for iTIP
messages). DTSTAMP is when the row last changed, not the time of the request, so the same
data makes the same bytes and the ETag lets a polling calendar get a 304.
"""

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import Prefetch, Q
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import get_conditional_response, patch_vary_headers
from drf_spectacular.utils import extend_schema
from icalendar import Calendar, Event
from icalendar.enums import STATUS
from rest_framework import permissions
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from portal.accounts.models import FeedToken, User
from portal.booking.models import Allocation, Reservation
from portal.inventory.models import Accelerator, Host, MaintenanceWindow
from portal.jobs.models import Job

PAST = timedelta(days=30)  # how far back a feed goes
LIMIT = 500  # events of each kind in one feed, the latest
REFRESH = timedelta(minutes=15)  # what the feed suggests as a polling interval
MAX_AGE = 300  # seconds a calendar may keep an answer without asking again
PRODID = "-//Debian//porterbox portal//EN"


def _domain() -> str:
    return urlsplit(settings.SITE_URL).hostname or "localhost"


def _link(path: str) -> str:
    """An absolute link from SITE_URL, the portal's canonical address (as in its mails)."""
    return settings.SITE_URL + path


def _devices(allocations: Iterable[Allocation], host_id: int | None) -> list[Accelerator]:
    """The accelerators held on the host, once each (an extension may add rows)."""
    found = {a.accelerator_id: a.accelerator for a in allocations}
    held = [a for a in found.values() if host_id is None or a.host_id == host_id]
    return sorted(held, key=lambda a: (a.vendor, a.index))


def _kinds(devices: list[Accelerator]) -> str:
    """`2x nvidia`, `1x amd, 1x nvidia`."""
    counts: dict[str, int] = {}
    for device in devices:
        counts[device.vendor] = counts.get(device.vendor, 0) + 1
    return ", ".join(f"{n}x {vendor}" for vendor, n in sorted(counts.items())) or "no devices"


def _names(devices: list[Accelerator]) -> str:
    return ", ".join(f"{d.vendor} #{d.index} ({d.model})" for d in devices) or "none"


def reservation_event(reservation: Reservation, *, for_staff: bool = False) -> Event:
    devices = _devices(reservation.allocations.all(), reservation.host_id)
    host = reservation.host
    what = f"whole host ({_kinds(devices)})" if reservation.whole_host else _kinds(devices)
    who = f"{reservation.user.username}: " if for_staff else ""
    link = _link(reservation.get_absolute_url())
    lines = [
        reservation.ssh_command,
        f"Devices: {_names(devices)}",
        f"Stack: {reservation.stack.name}",
        f"State: {reservation.get_state_display()}",
    ]
    if for_staff:
        lines.insert(0, f"Booked by {reservation.user.username} <{reservation.user.email}>")
    if reservation.purpose:
        lines.append(f"Purpose: {reservation.purpose}")
    lines.append(link)
    pending = reservation.state == Reservation.State.PENDING_APPROVAL
    return Event.new(
        uid=f"reservation-{reservation.pk}@{_domain()}",
        start=reservation.start,
        end=reservation.end,
        stamp=reservation.updated,
        summary=f"{who}Session on {host.name}: {what}",
        location=host.fqdn,
        description="\n".join(lines),
        url=link,
        status=STATUS.TENTATIVE if pending else STATUS.CONFIRMED,
    )


def _job_times(job: Job, devices: list[Allocation]) -> tuple[datetime, datetime] | None:
    """When the job held its devices: from its start (or its place in the schedule) to its
    end (or its walltime's); None for a job that never got a slot."""
    start = job.started_at or min((a.start for a in devices), default=None)
    end = job.ended_at or max((a.end for a in devices), default=None)
    if start is None or end is None or end <= start:
        return None
    return start, end


def job_event(job: Job, *, for_staff: bool = False) -> Event | None:
    allocations = [a for a in job.allocations.all() if a.accelerator.host_id == job.host_id]
    times = _job_times(job, allocations)
    if times is None or job.host is None:
        return None
    devices = _devices(allocations, job.host_id)
    link = _link(reverse("jobs:job_detail", args=[job.pk]))
    who = f"{job.submitter.username}: " if for_staff else ""
    lines = [
        f"Project: {job.project.name}",
        f"Submitted by {job.submitter.username}",
        f"Devices: {_names(devices)}",
        f"State: {job.get_state_display()}",
        link,
    ]
    # The last time the row said something new: its end, its start, or its submission.
    stamp = job.ended_at or job.started_at or job.queued_at
    return Event.new(
        uid=f"job-{job.pk}@{_domain()}",
        start=times[0],
        end=times[1],
        stamp=stamp,
        summary=f"{who}Job {job.name} (#{job.pk}) on {job.host.name}: {_kinds(devices)}",
        location=job.host.fqdn,
        description="\n".join(lines),
        url=link,
        status=STATUS.CONFIRMED,
    )


def maintenance_event(window: MaintenanceWindow) -> Event:
    link = _link(reverse("inventory:host_detail", args=[window.host.name]))
    return Event.new(
        uid=f"maintenance-{window.pk}@{_domain()}",
        start=window.start,
        end=window.end,
        stamp=window.created,
        summary=f"Maintenance of {window.host.name}: {window.reason}",
        location=window.host.fqdn,
        description=f"{window.reason}\nNothing can be booked on the host meanwhile.\n{link}",
        url=link,
        status=STATUS.CONFIRMED,
    )


def _reservations(since: datetime):
    return (
        Reservation.objects.exclude(state=Reservation.State.CANCELLED)
        .filter(end__gte=since)
        .select_related("host", "stack", "user")
        .prefetch_related("allocations__accelerator")
        .order_by("-start", "-pk")
    )


def _jobs(since: datetime):
    """Jobs that hold devices, or held them and ended since then."""
    ran = Q(state__in=Job.FINISHED, started_at__isnull=False, ended_at__gte=since)
    return (
        Job.objects.filter(Q(state__in=Job.HOLDING) | ran, host__isnull=False)
        .select_related("host", "project", "submitter")
        .prefetch_related(
            Prefetch(
                "allocations",
                queryset=Allocation.objects.filter(active=True).select_related("accelerator"),
            )
        )
        .defer("log", "script")
        .order_by("-queued_at", "-pk")
    )


def _calendar(name: str, uid: str, zone: str) -> Calendar:
    calendar = Calendar.new(prodid=PRODID, name=name, uid=uid)
    calendar.add("X-WR-TIMEZONE", zone)
    # RFC 7986's polling hint, and the older one that Outlook and Apple's applications read.
    calendar.add("REFRESH-INTERVAL", REFRESH, parameters={"VALUE": "DURATION"})
    calendar.add("X-PUBLISHED-TTL", REFRESH)
    return calendar


def user_calendar(user: User, now: datetime) -> Calendar:
    since = now - PAST
    calendar = _calendar(
        f"{settings.SITE_NAME}: {user.username}", f"user-{user.pk}@{_domain()}", user.time_zone
    )
    for reservation in _reservations(since).filter(user=user)[:LIMIT]:
        calendar.add_component(reservation_event(reservation))
    for job in _jobs(since).filter(submitter=user)[:LIMIT]:
        if event := job_event(job):
            calendar.add_component(event)
    return calendar


def host_calendar(host: Host, now: datetime) -> Calendar:
    since = now - PAST
    calendar = _calendar(f"{settings.SITE_NAME}: {host.name}", f"host-{host.pk}@{_domain()}", "UTC")
    for reservation in _reservations(since).filter(host=host)[:LIMIT]:
        calendar.add_component(reservation_event(reservation, for_staff=True))
    for job in _jobs(since).filter(host=host)[:LIMIT]:
        if event := job_event(job, for_staff=True):
            calendar.add_component(event)
    windows = host.maintenance_windows.filter(end__gte=since).select_related("host")
    for window in windows.order_by("-start")[:LIMIT]:
        calendar.add_component(maintenance_event(window))
    return calendar


def ics_response(request: HttpRequest, calendar: Calendar, filename: str) -> HttpResponseBase:
    """The calendar as text/calendar, private to its caller, with an ETag for 304s."""
    body = calendar.to_ical()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    response = HttpResponse(body, content_type="text/calendar; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    response["ETag"] = etag
    # private: the address or the credentials are the secret; no shared cache keeps it.
    response["Cache-Control"] = f"private, max-age={MAX_AGE}"
    patch_vary_headers(response, ["Authorization", "Cookie"])
    return get_conditional_response(request, etag=etag, response=response) or response


class AnyAccept(BaseContentNegotiation):
    """A calendar application asks for text/calendar; the feed is that whatever the Accept
    header says, and an error is JSON like every API error (not a 406)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class FeedThrottle(SimpleRateThrottle):
    """Per feed address, beside the per-client limits: a leaked address polled from many
    places is slowed down too."""

    rate = "60/min"

    def get_cache_key(self, request, view):
        token = view.kwargs.get("token", "")
        return f"throttle_feed_{FeedToken.digest_of(token)}"


class FeedView(APIView):
    """Left out of the OpenAPI schema: its readers are calendar applications, not API clients,
    and its answer is text/calendar whatever the Accept header says (the schema's shared
    answers, as a 406 for a non-JSON Accept, would be wrong here)."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = AnyAccept


class UserFeedView(FeedView):
    """A user's calendar: reservations and training jobs from 30 days ago on. The address
    is secret (made on the account page); there are no other credentials."""

    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]
    throttle_classes = [*FeedView.throttle_classes, FeedThrottle]

    @extend_schema(exclude=True)  # see FeedView
    def get(self, request, token: str):
        user = FeedToken.owner(token)
        if user is None:
            raise NotFound("No such calendar feed: it was replaced or revoked.")
        return ics_response(request, user_calendar(user, timezone.now()), "porterbox.ics")


class HostFeedView(FeedView):
    """Staff: a host's calendar: its reservations (who, which devices), training jobs and
    maintenance windows, from 30 days ago on."""

    permission_classes = [permissions.IsAdminUser]

    @extend_schema(exclude=True)  # see FeedView
    def get(self, request, name: str):
        host = get_object_or_404(Host, name=name)
        calendar = host_calendar(host, timezone.now())
        return ics_response(request, calendar, f"{host.name}.ics")
