"""Calendar feeds over HTTP, read back with the icalendar library as a calendar would read them:
the user's own reservations and jobs in UTC, nobody else's, a revoked address gone, and the
host feed for staff only."""

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from icalendar import Calendar
from rest_framework.authtoken.models import Token

from portal.accounts.models import FeedToken
from portal.booking import services
from portal.booking.models import Allocation, Reservation
from portal.inventory.models import MaintenanceWindow
from portal.jobs.models import Job
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    PartnerMembershipFactory,
    UserFactory,
)
from tests.helpers import NOW

pytestmark = pytest.mark.usefixtures("frozen")

START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # 11:00 in Berlin
END = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def host(db):
    host = HostFactory(name="gpu1", fqdn="gpu1.debian.net", ssh_port=2222)
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(3):
        AcceleratorFactory(host=host, index=i)
    return host


@pytest.fixture
def alice(db):
    return UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob", debian_member_source="salsa")


def book(user, host, indexes, start=START, end=END, **kwargs):
    return services.reservation_create(
        user=user, host=host, stack=host.stacks.get(), start=start, end=end,
        accelerators=[host.accelerators.get(index=i) for i in indexes], **kwargs,
    )  # fmt: skip


def events(body: bytes) -> dict[str, object]:
    calendar = Calendar.from_ical(body)
    return {str(event["UID"]): event for event in calendar.walk("VEVENT")}


def utc(event, name):
    value = event.decoded(name)
    assert value.utcoffset() == timedelta(0), f"{name} is not in UTC: {value}"
    return value


def test_it_serves_the_users_reservations_in_utc_and_nobody_elses(client, host, alice, bob):
    mine = book(alice, host, [0, 1], purpose="test the ROCm build")
    book(bob, host, [2])
    cancelled = book(alice, host, [2], start=END, end=END + timedelta(hours=1))
    services.reservation_cancel(reservation=cancelled, actor=alice)
    token = FeedToken.issue(alice)

    answer = client.get(f"/api/feeds/{token}.ics")

    assert answer.status_code == 200
    assert answer["Content-Type"] == "text/calendar; charset=utf-8"
    assert "private" in answer["Cache-Control"]
    calendar = Calendar.from_ical(answer.content)
    assert calendar["X-WR-TIMEZONE"] == "Europe/Berlin"  # a hint; the times stay UTC
    found = events(answer.content)
    assert list(found) == [f"reservation-{mine.pk}@127.0.0.1"]  # not bob's, not the cancelled
    event = found[f"reservation-{mine.pk}@127.0.0.1"]
    assert utc(event, "DTSTART") == START and utc(event, "DTEND") == END
    assert b"DTSTART:20261123T100000Z" in answer.content
    assert utc(event, "DTSTAMP") == NOW
    assert str(event["SUMMARY"]) == "Session on gpu1: 2x nvidia"
    assert str(event["LOCATION"]) == "gpu1.debian.net"
    assert str(event["URL"]) == f"http://127.0.0.1:8000/reservations/{mine.pk}/"
    description = str(event["DESCRIPTION"])
    assert f"ssh -p 2222 {mine.unix_user}@gpu1.debian.net" in description.splitlines()
    assert "nvidia #0" in description and "nvidia #1" in description
    assert "test the ROCm build" in description and str(event["URL"]) in description
    assert str(event["STATUS"]) == "CONFIRMED"


def test_it_keeps_a_month_of_the_past_and_shows_a_pending_booking_as_tentative(client, host, alice):
    stack = host.stacks.get()
    old = {"user": alice, "host": host, "stack": stack, "state": Reservation.State.ENDED}
    recent = Reservation.objects.create(**old, start=NOW - timedelta(days=29, hours=2),
                                        end=NOW - timedelta(days=29))  # fmt: skip
    Reservation.objects.create(**old, start=NOW - timedelta(days=31, hours=2),
                               end=NOW - timedelta(days=31))  # fmt: skip
    pending = book(alice, host, [0])
    Reservation.objects.filter(pk=pending.pk).update(state=Reservation.State.PENDING_APPROVAL)

    found = events(client.get(f"/api/feeds/{FeedToken.issue(alice)}.ics").content)

    assert set(found) == {f"reservation-{r.pk}@127.0.0.1" for r in (recent, pending)}
    assert str(found[f"reservation-{pending.pk}@127.0.0.1"]["STATUS"]) == "TENTATIVE"


def test_it_serves_the_users_jobs_that_hold_or_held_devices(client, host, alice, bob):
    project = PartnerMembershipFactory(user=alice).project
    job = JobFactory(project=project, submitter=alice, name="llama-ft", host=host,
                     state=Job.State.RUNNING, started_at=NOW - timedelta(hours=1))  # fmt: skip
    held = {"job": job, "start": job.started_at, "end": job.started_at + job.walltime}
    for index in (0, 1):
        Allocation.objects.create(accelerator=host.accelerators.get(index=index), **held)
    JobFactory(project=project, submitter=alice)  # queued: no slot yet, not in the calendar
    JobFactory(project=project, submitter=bob, host=host, state=Job.State.RUNNING,
               started_at=NOW)  # fmt: skip

    found = events(client.get(f"/api/feeds/{FeedToken.issue(alice)}.ics").content)

    assert list(found) == [f"job-{job.pk}@127.0.0.1"]
    event = found[f"job-{job.pk}@127.0.0.1"]
    assert utc(event, "DTSTART") == NOW - timedelta(hours=1)
    assert utc(event, "DTEND") == NOW
    assert str(event["SUMMARY"]) == f"Job llama-ft (#{job.pk}) on gpu1: 2x nvidia"
    assert str(event["URL"]) == f"http://127.0.0.1:8000/jobs/{job.pk}/"


def test_a_revoked_or_replaced_address_answers_404(client, host, alice):
    old = FeedToken.issue(alice)
    new = FeedToken.issue(alice)
    assert client.get(f"/api/feeds/{old}.ics").status_code == 404
    assert client.get(f"/api/feeds/{new}.ics").status_code == 200
    FeedToken.revoke(alice)
    answer = client.get(f"/api/feeds/{new}.ics")
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found"


def test_an_inactive_users_feed_answers_404(client, alice):
    token = FeedToken.issue(alice)
    alice.is_active = False
    alice.save()
    assert client.get(f"/api/feeds/{token}.ics").status_code == 404


def test_it_answers_304_while_nothing_changed(client, host, alice):
    book(alice, host, [0])
    url = f"/api/feeds/{FeedToken.issue(alice)}.ics"
    first = client.get(url, HTTP_ACCEPT="text/calendar")
    again = client.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304
    book(alice, host, [1])
    assert client.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 200


def test_a_calendar_app_subscribes_over_real_http(live_server, host, alice):
    reservation = book(alice, host, [2])
    url = f"{live_server.url}/api/feeds/{FeedToken.issue(alice)}.ics"
    request = urllib.request.Request(url, headers={"User-Agent": "Thunderbird/128.0"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (our own server)
        assert answer.headers["Content-Type"] == "text/calendar; charset=utf-8"
        body = answer.read()
    event = events(body)[f"reservation-{reservation.pk}@127.0.0.1"]
    assert utc(event, "DTSTART") == START and utc(event, "DTEND") == END
    FeedToken.revoke(alice)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)  # noqa: S310
    assert refused.value.code == 404


# -- The host feed, for staff ----------------------------------------------------------------


def test_staff_get_the_hosts_bookings_jobs_and_maintenance(client, host, alice, bob, staff):
    mine = book(alice, host, [0, 1])
    book(bob, host, [2])
    window = MaintenanceWindow.objects.create(
        host=host, start=NOW + timedelta(days=2), end=NOW + timedelta(days=2, hours=3),
        reason="firmware update",
    )  # fmt: skip
    other = HostFactory(name="gpu2")
    MaintenanceWindow.objects.create(host=other, start=NOW, end=NOW + timedelta(hours=1),
                                     reason="elsewhere")  # fmt: skip
    client.force_login(staff)

    answer = client.get("/api/hosts/gpu1/calendar.ics")

    assert answer.status_code == 200, answer.content
    found = events(answer.content)
    assert len([uid for uid in found if uid.startswith("reservation-")]) == 2
    event = found[f"reservation-{mine.pk}@127.0.0.1"]
    assert str(event["SUMMARY"]) == "alice: Session on gpu1: 2x nvidia"
    assert "Booked by alice <alice@example.org>" in str(event["DESCRIPTION"])
    maintenance = found[f"maintenance-{window.pk}@127.0.0.1"]
    assert str(maintenance["SUMMARY"]) == "Maintenance of gpu1: firmware update"
    assert utc(maintenance, "DTSTART") == NOW + timedelta(days=2)
    assert len(found) == 3  # not gpu2's window


def test_the_host_feed_takes_an_api_token(client, host, staff):
    key = Token.objects.create(user=staff).key
    answer = client.get("/api/hosts/gpu1/calendar.ics", HTTP_AUTHORIZATION=f"Token {key}")
    assert answer.status_code == 200
    assert Calendar.from_ical(answer.content)["X-WR-CALNAME"]


def test_the_host_feed_is_refused_to_others(client, host, alice):
    assert client.get("/api/hosts/gpu1/calendar.ics").status_code in (401, 403)
    client.force_login(alice)
    answer = client.get("/api/hosts/gpu1/calendar.ics", HTTP_ACCEPT="text/calendar")
    assert answer.status_code == 403
    assert answer.json()["code"] == "permission_denied"


def test_the_host_feed_of_an_unknown_host_is_404(client, staff):
    client.force_login(staff)
    assert client.get("/api/hosts/nope/calendar.ics").status_code == 404
