"""Booking pages: timelines, the availability finder, the booking form, my reservations.

Views parse and render; every decision is the booking service's (portal/booking/services.py).
"""

from collections.abc import Callable
from datetime import date

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from portal.booking import bounds, services, timeline
from portal.booking.forms import EndForm, NeedForm, ReservationForm
from portal.booking.models import Reservation
from portal.http import client_ip
from portal.inventory import selectors
from portal.inventory.forms import HostFilterForm
from portal.inventory.models import Accelerator, Host
from portal.pages import confirm_first, refuse


def _day_and_view(request) -> tuple[date, str, int]:
    """The timeline's first day and view from the query string; 400 on nonsense."""
    view = request.GET.get("view", "day")
    if view not in timeline.VIEWS:
        return timezone.localdate(), "day", 400
    text = request.GET.get("date", "")
    if not text:
        return timezone.localdate(), view, 200
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return timezone.localdate(), view, 400
    if not bounds.in_bounds(day):
        return timezone.localdate(), view, 400
    return day, view, 200


def host_timeline(request, name):
    host = get_object_or_404(Host.objects.exclude(state=Host.State.RETIRED), name=name)
    day, view, status = _day_and_view(request)
    accelerators = host.accelerators.filter(retired=False).select_related("host")
    grid = timeline.build(accelerators, day=day, view=view, user=request.user, now=timezone.now())
    context = {"host": host, "timeline": grid, "bad_query": status == 400}
    return render(request, "booking/host_timeline.html", context, status=status)


def site_timeline(request):
    form = HostFilterForm(request.GET or None)
    day, view, status = _day_and_view(request)
    hosts = Host.objects.none()
    if form.is_bound and not form.is_valid():
        status = 400
    else:
        hosts = selectors.host_list(**(form.selector_kwargs() if form.is_bound else {}))
    accelerators = (
        Accelerator.objects.filter(host__in=hosts.exclude(state=Host.State.RETIRED), retired=False)
        .select_related("host")
        .order_by("host__name", "index")
    )
    if form.is_bound and form.is_valid() and form.cleaned_data.get("vendor"):
        accelerators = accelerators.filter(vendor=form.cleaned_data["vendor"])
    grid = timeline.build(accelerators, day=day, view=view, user=request.user, now=timezone.now())
    query = request.GET.copy()
    query.pop("date", None)
    query.pop("view", None)
    context = {"form": form, "timeline": grid, "filters": query.urlencode()}
    return render(request, "booking/site_timeline.html", context, status=status)


def finder(request):
    form = NeedForm(request.GET or None)
    slots, status = None, 200
    if form.is_bound:
        if form.is_valid():
            # Each slot with the stacks it can be booked with, so "Book" works for "any stack".
            slots = [(slot, form.stacks_for(slot)) for slot in form.slots()]
        else:
            status = 400
    return render(request, "booking/finder.html", {"form": form, "slots": slots}, status=status)


@login_required
@require_POST
def book_need(request):
    """Book a slot the finder found: the need again, on the host and at the time it showed."""
    form = NeedForm(request.POST)
    host = Host.objects.filter(name=request.POST.get("host", "")).first()
    if not form.is_valid() or host is None or not form.cleaned_data.get("start"):
        messages.error(request, "That slot could not be read; please search again.")
        return redirect("booking:finder")
    start = form.cleaned_data["start"]
    try:
        reservation = _book_first(request, form, host, start)
    except services.BookingError as exc:
        refuse(request, exc)
        query = request.POST.copy()
        for private in ("csrfmiddlewaretoken", "host", "purpose"):  # keep them out of URLs
            query.pop(private, None)
        return redirect(f"{reverse('booking:finder')}?{query.urlencode()}")
    messages.success(request, _booked(reservation))
    return redirect(reservation)


def _booked(reservation: Reservation) -> str:
    """What the user is told after booking: a reservation that waits for staff is not booked."""
    if reservation.state == Reservation.State.PENDING_APPROVAL:
        return (
            f"Requested: staff approve bookings on {reservation.host.name}; "
            "you will be told by mail."
        )
    return "Booked."


def _book_first(request, form: NeedForm, host: Host, start):
    """Book the first alternative of the need ("cuda | rocm") that the host has free then."""
    *others, last = form.needs()
    for need in (*others, last):
        try:
            return services.reservation_create_for_need(
                user=request.user, need=need, host=host, start=start,
                end=start + form.cleaned_data["hours"],
                purpose=request.POST.get("purpose", "")[:200], ip=client_ip(request),
            )  # fmt: skip
        except services.Conflict:
            if need is last:
                raise
    raise AssertionError("unreachable")


@login_required
def book(request, name):
    host = get_object_or_404(Host.objects.exclude(state=Host.State.RETIRED), name=name)
    status = 200
    if request.method == "POST":
        form = ReservationForm(host, request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                reservation = services.reservation_create(
                    user=request.user, host=host, stack=data["stack"], start=data["start"],
                    end=data["end"], accelerators=form.chosen(), whole_host=data["whole_host"],
                    purpose=data["purpose"], ip=client_ip(request),
                )  # fmt: skip
            except services.BookingError as exc:
                status = refuse(request, exc, form)
            else:
                messages.success(request, _booked(reservation))
                return redirect(reservation)
        else:
            status = 400
    else:
        form = ReservationForm(host, initial=_prefill(request, host))
    return render(request, "booking/book.html", {"host": host, "form": form}, status=status)


def _prefill(request, host: Host) -> dict:
    """Initial values from a timeline cell: ?accelerator=<vendor>:<index>&start=<ISO time>."""
    initial: dict[str, object] = {}
    wanted = request.GET.get("accelerator", "")
    # The form names a device by its index, or by vendor:index where two vendors number one
    # alike; the timeline's link always says vendor:index (a bare index is still understood).
    for key, acc in ReservationForm(host).usable.items():
        if wanted in (key, f"{acc.vendor}:{acc.index}"):
            initial["accelerators"] = [key]
            break
    field = ReservationForm.base_fields["start"]
    try:
        start = field.clean(request.GET.get("start")) if request.GET.get("start") else None
    except ValidationError:  # a bad prefill is ignored, not an error
        start = None
    if start:
        start = timezone.localtime(start)
        initial["start"] = start
        initial["end"] = start + services.BookingPolicy.current().granularity * 8
    if host.stacks.count() == 1:
        initial["stack"] = host.stacks.get()
    return initial


@login_required
def my_reservations(request):
    now = timezone.now()
    mine = (
        Reservation.objects.filter(user=request.user)
        .select_related("host", "stack", "user")
        .prefetch_related("allocations__accelerator")
        .order_by("-start")
    )
    groups: dict[str, list[Reservation]] = {
        "current": [],
        "pending": [],
        "upcoming": [],
        "past": [],
    }
    for r in mine[:200]:
        groups[r.phase(now)].append(r)
    groups["pending"].reverse()
    groups["upcoming"].reverse()
    for r in groups["current"] + groups["upcoming"]:
        # For the template (_reservation_table.html) only, not a field of the model.
        r.offers_login = offers_login(r, now)  # type: ignore[attr-defined]
    return render(request, "booking/my_reservations.html", {"groups": groups, "now": now})


def _own(request, pk) -> Reservation:
    reservation = get_object_or_404(
        Reservation.objects.select_related("host", "stack", "user"), pk=pk
    )
    if reservation.user_id != request.user.pk and not request.user.is_staff:
        raise Http404("No such reservation.")  # someone else's is not even shown to exist
    return reservation


# The states in which the ssh line leads somewhere: the session is open or will be. Not a
# cancelled, ended or failed one (a failed one gets its login line back once the loop's retry
# opens the session).
LOGIN_STATES = (
    Reservation.State.PENDING_APPROVAL,
    Reservation.State.SCHEDULED,
    Reservation.State.PROVISIONING,
    Reservation.State.ACTIVE,
)


def offers_login(reservation: Reservation, now) -> bool:
    return reservation.state in LOGIN_STATES and reservation.end > now


@login_required
def reservation_detail(request, pk):
    reservation = _own(request, pk)
    now = timezone.now()
    context = {
        "reservation": reservation,
        "now": now,
        "end_form": EndForm(),
        "offers_login": offers_login(reservation, now),
    }
    if reservation.is_open(now):
        context["latest"], context["limit_reason"], _ = services.extension_limit(reservation, now)
    if reservation.state == Reservation.State.CANCELLED:
        # Cancelled by its owner, or rejected by staff: the audit log says which and when.
        context["given_back"] = (
            reservation.audit.filter(action__in=("cancel", "reject")).order_by("-at").first()
        )
    context["devices"] = [
        a.accelerator for a in reservation.allocations.select_related("accelerator")
    ]
    context["audit"] = reservation.audit.select_related("actor") if request.user.is_staff else []
    return render(request, "booking/reservation_detail.html", context)


@login_required
@require_POST
def reservation_change(request, pk, change):
    if change not in CHANGES:
        raise Http404("No such change.")
    reservation = _own(request, pk)
    kwargs: dict[str, object] = {
        "reservation": reservation,
        "actor": request.user,
        "ip": client_ip(request),
    }
    if change in CONFIRM:
        question, consequence, button = CONFIRM[change]
        asked = confirm_first(
            request, question=question.format(host=reservation.host.name),
            consequence=consequence, button=button, back=reservation.get_absolute_url(),
        )  # fmt: skip
        if asked is not None:
            return asked
    if change in ("extend", "shorten"):
        form = EndForm(request.POST)
        if not form.is_valid():
            messages.error(request, "; ".join(str(message) for message in form.errors["end"]))
            return redirect(reservation)
        kwargs["end"] = form.cleaned_data["end"]
    service, done = CHANGES[change]
    try:
        service(**kwargs)
    except services.BookingError as exc:
        refuse(request, exc)
    else:
        messages.success(request, done)
    return redirect(reservation)


# What is asked before a change that cannot be undone: the question, what follows, the button.
CONFIRM = {
    "cancel": (
        "Cancel your reservation of {host}?",
        "Its devices are given back at once and others may book them; it cannot be undone.",
        "Yes, cancel it",
    ),
    "end": (
        "End your session on {host} now?",
        "Your access is revoked and every process of yours in the session is killed.",
        "Yes, end it now",
    ),
}

# Each service takes the reservation, the actor and the ip; extend and shorten the end too.
CHANGES: dict[str, tuple[Callable[..., Reservation], str]] = {
    "extend": (services.reservation_extend, "Extended."),
    "shorten": (services.reservation_shorten, "Shortened."),
    "end": (services.reservation_end_now, "Ended; your access is being revoked."),
    "cancel": (services.reservation_cancel, "Cancelled."),
}
