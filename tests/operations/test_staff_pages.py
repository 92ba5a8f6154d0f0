"""Staff work without the admin: approvals, drains, maintenance windows, registration, and the
host states they leave. Each action is staff's alone, lands in the admin's log, and tells the
users it concerns."""

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
import time_machine
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.urls import reverse

from portal.booking.models import AuditEntry, Reservation
from portal.booking.services import reservation_create
from portal.inventory.models import Host, MaintenanceWindow
from portal.operations import health
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory
from tests.helpers import NOW, mails_to
from tests.provisioning.sshd import free_port

pytestmark = pytest.mark.usefixtures("frozen")

CONFIRMED = {"confirmed": "1"}  # what the confirmation page or dialog sends
H = timedelta(hours=1)
# 10:00 and 12:00 UTC on the frozen day, on the booking grid.
START = datetime(2026, 11, 23, 10, tzinfo=UTC)


@pytest.fixture(autouse=True)
def site(settings):
    settings.ADMINS = [("Admins", "admins@example.org")]
    settings.SITE_URL = "https://portal.example.org"


@pytest.fixture
def gpu1(db):
    host = HostFactory(name="gpu1", access=Host.Access.APPROVAL, last_seen=NOW)
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(2):
        AcceleratorFactory(host=host, index=i)
    return host


@pytest.fixture
def alice(db):
    return UserFactory(username="alice", debian_member_source="salsa")


@pytest.fixture
def as_staff(client, staff):
    client.force_login(staff)
    return client


def book(user, host, start=START, end=START + 2 * H, index=0, purpose="train a model"):
    acc = host.accelerators.get(index=index)
    return reservation_create(
        user=user, host=host, stack=host.stacks.get(), start=start, end=end,
        accelerators=[acc], purpose=purpose,
    )  # fmt: skip


def history(obj) -> list[str]:
    """The admin's log of `obj`, oldest first."""
    return [
        entry.change_message
        for entry in LogEntry.objects.filter(object_id=str(obj.pk)).order_by("pk")
        if cast(ContentType, entry.content_type).model_class() is type(obj)
    ]


# -- who may ------------------------------------------------------------------------------------


STAFF_PAGES = [
    ("get", "operations:approvals", []),
    ("post", "operations:reservation_decide", ["reservation"]),
    ("post", "operations:host_drain", ["gpu1"]),
    ("post", "operations:host_resume", ["gpu1"]),
    ("get", "operations:host_maintenance", ["gpu1"]),
    ("get", "operations:maintenance_edit", ["gpu1", "window"]),
    ("post", "operations:maintenance_edit", ["gpu1", "window"]),
    ("post", "operations:maintenance_delete", ["gpu1", "window"]),
    ("get", "operations:host_register", []),
]


def _url(name, args, reservation, window):
    known = {"reservation": reservation.pk, "window": window.pk}
    return reverse(name, args=[known.get(a, a) for a in args])


@pytest.mark.parametrize(("method", "name", "args"), STAFF_PAGES)
def test_it_lets_only_staff_do_staff_work(client, gpu1, alice, method, name, args):
    pending = book(alice, gpu1)
    window = MaintenanceWindow.objects.create(
        host=gpu1, start=START + 4 * H, end=START + 5 * H, reason="fans"
    )
    url = _url(name, args, pending, window)
    data = {
        "decision": "reject", "reason": "no", "start": "2026-11-24T10:00",
        "end": "2026-11-24T11:00", **CONFIRMED,
    }  # fmt: skip

    anonymous = getattr(client, method)(url, data)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]

    client.force_login(alice)
    assert getattr(client, method)(url, data).status_code == 403

    pending.refresh_from_db()
    gpu1.refresh_from_db()
    window.refresh_from_db()
    assert pending.state == Reservation.State.PENDING_APPROVAL
    assert gpu1.state == Host.State.ACTIVE
    assert window.start == START + 4 * H
    assert not LogEntry.objects.exists()


# -- approvals ------------------------------------------------------------------------------------


def test_it_lists_the_reservations_waiting_for_approval(as_staff, gpu1, alice):
    book(alice, gpu1, purpose="fine-tune whisper")
    open_host = HostFactory(name="gpu2")
    open_host.stacks.add(DriverStackFactory(name="cuda-12"))
    AcceleratorFactory(host=open_host, index=0)
    book(alice, open_host)  # an open host: booked at once, nothing to approve

    page = as_staff.get(reverse("operations:approvals"))

    assert page.status_code == 200
    html = page.content.decode()
    assert "1 reservation waiting" in html
    assert "gpu1" in html and "alice" in html and "fine-tune whisper" in html
    assert "#0 NVIDIA H100 80GB HBM3" in html
    assert "Mon 23 Nov 2026 10:00" in html and "Mon 23 Nov 2026 12:00" in html
    assert "gpu2" not in html


def test_it_approves_a_reservation_and_tells_its_owner(as_staff, staff, gpu1, alice, mailoutbox):
    r = book(alice, gpu1)

    response = as_staff.post(
        reverse("operations:reservation_decide", args=[r.pk]), {"decision": "approve"}, follow=True
    )

    r.refresh_from_db()
    assert r.state == Reservation.State.SCHEDULED
    assert "alice&#x27;s reservation of gpu1 approved; they are told." in (
        response.content.decode()
    )
    assert AuditEntry.objects.get(action="approve").actor == staff
    assert history(r) == ["Approved"]
    [mail] = mails_to(mailoutbox, "alice@example.org")
    assert mail.to == ["alice@example.org"]
    assert mail.subject == "Approved: your reservation on gpu1"
    assert f"https://portal.example.org/reservations/{r.pk}/" in mail.body


def test_it_rejects_only_with_a_reason_and_after_asking(as_staff, staff, gpu1, alice, mailoutbox):
    r = book(alice, gpu1)
    url = reverse("operations:reservation_decide", args=[r.pk])

    unsaid = as_staff.post(url, {"decision": "reject", "reason": "  "}, follow=True)
    assert "Say why you reject alice&#x27;s reservation of gpu1" in unsaid.content.decode()

    asked = as_staff.post(url, {"decision": "reject", "reason": "gpu1 is for the ROCm team"})
    assert asked.status_code == 200
    html = asked.content.decode()
    assert "Reject alice&#x27;s reservation of gpu1?" in html
    assert 'name="reason" value="gpu1 is for the ROCm team"' in html
    r.refresh_from_db()
    assert r.state == Reservation.State.PENDING_APPROVAL
    assert not mails_to(mailoutbox, "alice@example.org")

    as_staff.post(url, {"decision": "reject", "reason": "gpu1 is for the ROCm team", **CONFIRMED})

    r.refresh_from_db()
    assert r.state == Reservation.State.CANCELLED
    assert not r.allocations.filter(active=True).exists()
    entry = AuditEntry.objects.get(action="reject")
    assert entry.actor == staff and entry.detail == {"reason": "gpu1 is for the ROCm team"}
    assert history(r) == ["Rejected: gpu1 is for the ROCm team"]
    [mail] = mails_to(mailoutbox, "alice@example.org")
    assert mail.subject == "Not approved: your reservation on gpu1"
    assert "Staff said: gpu1 is for the ROCm team" in mail.body


def test_it_shows_the_owner_why_their_reservation_was_rejected(client, staff, gpu1, alice):
    r = book(alice, gpu1)
    client.force_login(staff)
    client.post(
        reverse("operations:reservation_decide", args=[r.pk]),
        {"decision": "reject", "reason": "the slot is for a workshop", **CONFIRMED},
    )
    client.force_login(alice)

    html = client.get(r.get_absolute_url()).content.decode()

    assert "Staff rejected this reservation" in html
    assert "<strong>Why:</strong> the slot is for a workshop" in html


def test_it_decides_a_reservation_once(as_staff, gpu1, alice, mailoutbox):
    r = book(alice, gpu1)
    url = reverse("operations:reservation_decide", args=[r.pk])
    as_staff.post(url, {"decision": "approve"})

    again = as_staff.post(url, {"decision": "reject", "reason": "late", **CONFIRMED}, follow=True)

    assert "This reservation does not wait for approval." in again.content.decode()
    r.refresh_from_db()
    assert r.state == Reservation.State.SCHEDULED
    assert len(mails_to(mailoutbox, "alice@example.org")) == 1


def test_it_tells_the_user_a_booking_waits_for_staff(client, gpu1, alice, staff, mailoutbox):
    client.force_login(alice)

    response = client.post(
        reverse("booking:book", args=["gpu1"]),
        {"accelerators": ["0"], "stack": "cuda-12", "start": "2026-11-23T10:00",
         "end": "2026-11-23T12:00"},
        follow=True,
    )  # fmt: skip

    html = response.content.decode()
    assert "Requested: staff approve bookings on gpu1; you will be told by mail." in html
    assert "Booked." not in html
    # Staff are told it waits: each staff user, and the operators' list.
    told = mails_to(mailoutbox, staff.email, "admins@example.org")
    assert sorted(m.to[0] for m in told) == sorted([staff.email, "admins@example.org"])
    assert {m.subject for m in told} == {"Waiting for approval: alice on gpu1"}
    assert "/hosts/approvals/" in told[0].body


def test_it_never_lists_a_pending_reservation_as_active(client, gpu1, alice):
    r = book(alice, gpu1)
    client.force_login(alice)

    with time_machine.travel(START + H, tick=False):  # after its start, still not approved
        response = client.get(reverse("booking:my_reservations"))

    groups = response.context["groups"]
    assert groups["current"] == [] and groups["pending"] == [r]
    assert "Waiting for staff approval" in response.content.decode()


# -- drain and resume -----------------------------------------------------------------------------


def test_it_drains_a_host_by_hand_after_asking(as_staff, staff, gpu1, alice, mailoutbox):
    Host.objects.filter(pk=gpu1.pk).update(access=Host.Access.OPEN)
    book(alice, gpu1)  # upcoming: its owner is told
    url = reverse("operations:host_drain", args=["gpu1"])

    asked = as_staff.post(url, {"reason": "PSU swap"})
    assert asked.status_code == 200 and "Drain gpu1?" in asked.content.decode()
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE

    response = as_staff.post(url, {"reason": "PSU swap", **CONFIRMED}, follow=True)

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.MAINTENANCE and gpu1.drained_at == NOW
    assert gpu1.drain_cause == Host.DrainCause.STAFF and gpu1.drain_reason == "PSU swap"
    assert history(gpu1) == ["Drained by hand: PSU swap"]
    html = response.content.decode()
    assert "gpu1 is drained: nothing new starts on it." in html
    assert "drained</span> since Mon 23 Nov 09:07: drained by staff" in html
    assert "Resume: accept new sessions and jobs" in html
    drained = [m for m in mailoutbox if "Waiting for approval" not in m.subject]
    assert [(m.to[0], m.subject) for m in drained] == [
        ("alice@example.org", "gpu1 is out of service: your reservation may not start"),
        ("admins@example.org", "gpu1 drained: PSU swap"),  # not the staff member who did it
    ]


def test_it_does_not_drain_without_a_reason(as_staff, gpu1):
    response = as_staff.post(
        reverse("operations:host_drain", args=["gpu1"]), {"reason": " ", **CONFIRMED}, follow=True
    )
    assert "Say why you drain the host." in response.content.decode()
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE and not LogEntry.objects.exists()


def test_it_resumes_a_host_put_in_maintenance_by_hand(as_staff, staff, gpu1):
    Host.objects.filter(pk=gpu1.pk).update(state=Host.State.MAINTENANCE)
    page = as_staff.get(gpu1.get_absolute_url()).content.decode()
    assert "in maintenance</span>, set by staff" in page
    assert "Resume: accept new sessions and jobs" in page

    as_staff.post(reverse("operations:host_resume", args=["gpu1"]))

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE
    assert history(gpu1) == ["Resumed; it was in maintenance, set by hand"]
    assert "Drain: take it out of service" in as_staff.get(gpu1.get_absolute_url()).content.decode()


def test_it_shows_drain_and_resume_to_staff_only(client, gpu1, alice):
    client.force_login(alice)
    assert "Drain" not in client.get(gpu1.get_absolute_url()).content.decode()


# -- maintenance windows --------------------------------------------------------------------------


def plan(client, start, end, reason="new fans"):
    return client.post(
        reverse("operations:host_maintenance", args=["gpu1"]),
        {"start": start, "end": end, "reason": reason},
    )


@pytest.mark.parametrize(
    ("start", "end", "error"),
    [
        ("9999-01-01T10:00", "9999-01-01T12:00", "The start is more than a year ahead."),
        ("2027-11-24T10:00", "2027-11-24T12:00", "The start is more than a year ahead."),
        ("2026-11-23T09:00", "2026-11-23T12:00", "The start is in the past."),
        ("2026-11-24T10:00", "2026-12-24T10:01", "A window lasts at most 30 days"),
        ("2026-11-24T10:00", "2026-11-24T10:00", "The end must be after the start."),
    ],
)
def test_it_refuses_windows_outside_sane_dates(as_staff, gpu1, start, end, error):
    response = plan(as_staff, start, end)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not MaintenanceWindow.objects.exists()


def test_it_says_the_limits_in_the_form(as_staff, gpu1):
    html = as_staff.get(reverse("operations:host_maintenance", args=["gpu1"])).content.decode()
    assert "not in the past, at most a year ahead" in html
    assert "at most 30 days after the start" in html


def test_it_moves_a_window_and_tells_only_the_newly_affected(as_staff, gpu1, alice, mailoutbox):
    bob = UserFactory(username="bob", debian_member_source="salsa")
    Host.objects.filter(pk=gpu1.pk).update(access=Host.Access.OPEN)
    book(alice, gpu1, START, START + 2 * H, index=0)
    book(bob, gpu1, START + 3 * H, START + 5 * H, index=1)
    plan(as_staff, "2026-11-23T11:00", "2026-11-23T12:00")
    owners = ("alice@example.org", "bob@example.org")
    assert [m.to for m in mails_to(mailoutbox, *owners)] == [["alice@example.org"]]
    window = MaintenanceWindow.objects.get()

    response = as_staff.post(
        reverse("operations:maintenance_edit", args=["gpu1", window.pk]),
        {"start": "2026-11-23T11:00", "end": "2026-11-23T14:00", "reason": "new fans"},
        follow=True,
    )

    assert "Maintenance window changed; 1 user told." in response.content.decode()
    assert [m.to for m in mails_to(mailoutbox, *owners)] == [
        ["alice@example.org"],
        ["bob@example.org"],
    ]
    window.refresh_from_db()
    assert window.end == START + 4 * H
    assert history(gpu1)[-1] == (
        "Maintenance changed from 2026-11-23 11:00 to 2026-11-23 12:00 UTC (new fans) to from "
        "2026-11-23 11:00 to 2026-11-23 14:00 UTC (new fans); 1 user told"
    )


def test_it_keeps_the_start_of_a_window_under_way(as_staff, gpu1):
    window = MaintenanceWindow.objects.create(host=gpu1, start=NOW - H, end=NOW + H, reason="fans")
    url = reverse("operations:maintenance_edit", args=["gpu1", window.pk])
    form = as_staff.get(url)
    assert form.status_code == 200

    as_staff.post(url, {"start": "2026-11-23T08:07", "end": "2026-11-23T12:00", "reason": "fans"})

    window.refresh_from_db()
    assert window.start == NOW - H and window.end == START + 2 * H

    moved_back = as_staff.post(
        url, {"start": "2026-11-23T07:00", "end": "2026-11-23T12:00", "reason": "fans"}
    )
    assert moved_back.status_code == 400 and "The start is in the past." in (
        moved_back.content.decode()
    )


def test_it_leaves_past_windows_alone(as_staff, gpu1):
    window = MaintenanceWindow.objects.create(
        host=gpu1, start=NOW - 3 * H, end=NOW - H, reason="fans"
    )
    assert (
        as_staff.get(reverse("operations:maintenance_edit", args=["gpu1", window.pk])).status_code
        == 404
    )
    url = reverse("operations:maintenance_delete", args=["gpu1", window.pk])
    assert as_staff.post(url, CONFIRMED).status_code == 404
    assert MaintenanceWindow.objects.filter(pk=window.pk).exists()


def test_it_deletes_a_window_after_asking_and_tells_those_it_had_affected(
    as_staff, gpu1, alice, mailoutbox
):
    Host.objects.filter(pk=gpu1.pk).update(access=Host.Access.OPEN)
    gpu1.refresh_from_db()
    book(alice, gpu1, START + 4 * H, START + 6 * H)
    window = MaintenanceWindow.objects.create(
        host=gpu1, start=START + 4 * H, end=START + 5 * H, reason="fans"
    )
    url = reverse("operations:maintenance_delete", args=["gpu1", window.pk])

    asked = as_staff.post(url)
    assert asked.status_code == 200
    assert "Delete the maintenance of gpu1 from 2026-11-23 14:00 to 2026-11-23 15:00" in (
        asked.content.decode()
    )
    assert MaintenanceWindow.objects.exists()

    response = as_staff.post(url, CONFIRMED, follow=True)

    assert "Maintenance window deleted; 1 user told." in response.content.decode()
    assert not MaintenanceWindow.objects.exists()
    assert history(gpu1) == [
        "Maintenance deleted from 2026-11-23 14:00 to 2026-11-23 15:00 UTC (fans); 1 user told"
    ]
    (told,) = mails_to(mailoutbox, "alice@example.org")
    assert told.subject == "Maintenance on gpu1 is off: your reservation stands"
    assert "planned from Mon 23 Nov 2026 14:00 to Mon 23 Nov 2026 15:00 UTC (fans)" in told.body


# -- registration ---------------------------------------------------------------------------------


def test_it_links_registration_from_the_host_list_for_staff(client, gpu1, alice, staff):
    register = reverse("operations:host_register")
    client.force_login(alice)
    assert register not in client.get(reverse("inventory:host_list")).content.decode()
    client.force_login(staff)
    assert f'href="{register}"' in client.get(reverse("inventory:host_list")).content.decode()


def test_it_says_a_refused_connection_in_words(as_staff):
    port = free_port()  # bound and closed again: nothing listens there

    response = as_staff.post(
        reverse("operations:host_register"),
        {"name": "gpu9", "fqdn": "127.0.0.1", "ssh_port": port, "agent_user": "porterbox"},
    )

    assert response.status_code == 400
    html = response.content.decode()
    assert f"127.0.0.1:{port} refused the connection: is sshd running and the port right?" in html
    assert "Errno" not in html and not Host.objects.filter(name="gpu9").exists()


def test_it_aligns_the_registration_form_like_the_others(as_staff):
    html = as_staff.get(reverse("operations:host_register")).content.decode()
    assert html.count('<div class="field">') == 4


# -- host states ----------------------------------------------------------------------------------


def test_it_tells_drained_from_in_maintenance_on_the_host_list(as_staff, gpu1, staff):
    health.drain(gpu1, "fans failing", NOW - H, cause=Host.DrainCause.TOO_HOT)
    planned = HostFactory(name="gpu2")
    MaintenanceWindow.objects.create(host=planned, start=NOW - H, end=START + 2 * H, reason="x")
    later = HostFactory(name="gpu3")
    MaintenanceWindow.objects.create(host=later, start=START + 24 * H, end=START + 26 * H)

    html = as_staff.get(reverse("inventory:host_list")).content.decode()

    rows = {
        name: html.split(f">{name}</a>")[1].split("</tr>")[0] for name in ("gpu1", "gpu2", "gpu3")
    }
    assert "drained</span> since Mon 23 Nov 08:07: too hot" in rows["gpu1"]
    assert "in maintenance</span> until Mon 23 Nov 12:00" in rows["gpu2"]
    assert "drained" not in rows["gpu2"]
    assert "active</span>" in rows["gpu3"]
    assert "maintenance planned from Tue 24 Nov 10:00 to Tue 24 Nov 12:00" in rows["gpu3"]
