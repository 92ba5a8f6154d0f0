"""The booking pages, driven as a user would through forms (no JavaScript needed)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse

from portal.booking.models import AuditEntry, Reservation
from portal.booking.services import reservation_create, reservation_decide, reservation_end_now
from portal.inventory.models import MaintenanceWindow
from tests.factories import UserFactory
from tests.helpers import NOW

pytestmark = pytest.mark.usefixtures("frozen")

CONFIRMED = {"confirmed": "1"}  # what the confirmation page or dialog sends


@pytest.fixture
def alice(db):
    return UserFactory(username="alice", debian_member_source="salsa", time_zone="Europe/Berlin")


@pytest.fixture
def logged_in(client, alice):
    client.force_login(alice)
    return client


def test_it_books_from_a_free_timeline_cell(logged_in, host):
    page = logged_in.get(reverse("booking:host_timeline", args=["gpu1"]))
    assert page.status_code == 200
    # 09:07 UTC is 10:07 in Berlin: the 10:00 cell is current, and books from the next 15 minutes.
    link = "/hosts/gpu1/book/?accelerator=nvidia:2&amp;start=2026-11-23T10:15"
    assert link in page.content.decode()
    form = logged_in.get("/hosts/gpu1/book/?accelerator=nvidia:2&start=2026-11-23T10:15")
    assert form.status_code == 200
    assert 'value="2026-11-23T10:15"' in form.content.decode()
    assert 'value="2" id="id_accelerators_2" checked' in form.content.decode()
    response = logged_in.post(
        "/hosts/gpu1/book/",
        {"accelerators": ["2"], "stack": "cuda-12", "start": "2026-11-23T10:15",
         "end": "2026-11-23T12:15", "purpose": "test torch"},
    )  # fmt: skip
    r = Reservation.objects.get()
    assert response.status_code == 302 and response["Location"] == r.get_absolute_url()
    assert r.start == datetime(2026, 11, 23, 9, 15, tzinfo=UTC)  # read in her zone
    timeline = logged_in.get(reverse("booking:host_timeline", args=["gpu1"])).content.decode()
    assert 'class="cell mine"' in timeline


def test_it_shows_a_booking_error_in_the_form_without_writing(logged_in, host):
    response = logged_in.post(
        "/hosts/gpu1/book/",
        {"accelerators": ["0"], "stack": "cuda-12", "start": "2026-11-23T10:20",
         "end": "2026-11-23T12:00"},
    )  # fmt: skip
    assert response.status_code == 400
    assert "multiple of 15 minutes" in response.content.decode()
    assert not Reservation.objects.exists()


def test_it_refuses_a_time_that_does_not_exist_in_the_users_zone(client, alice, host):
    with time_machine.travel(datetime(2027, 3, 27, 12, tzinfo=UTC), tick=False):
        client.force_login(alice)
        response = client.post(
            "/hosts/gpu1/book/",
            {"accelerators": ["0"], "stack": "cuda-12", "start": "2027-03-28T02:30",
             "end": "2027-03-28T04:00"},
        )  # fmt: skip
    assert response.status_code == 400
    assert "Europe/Berlin" in response.content.decode()
    assert not Reservation.objects.exists()


def test_it_finds_a_slot_and_books_it(logged_in, host, member):
    reservation_create(
        user=member, host=host, stack=host.stacks.get(), whole_host=True,
        start=datetime(2026, 11, 23, 10, tzinfo=UTC), end=datetime(2026, 11, 23, 14, tzinfo=UTC),
    )  # fmt: skip
    query = {"count": 2, "hwspec": "cuda", "hours": "2", "days": 1}
    page = logged_in.get(reverse("booking:finder"), query)
    assert page.status_code == 200
    body = page.content.decode()
    assert "Mon 23 Nov 2026 15:00" in body  # 14:00 UTC, shown in Berlin time
    response = logged_in.post(
        reverse("booking:book_need"),
        {
            **query,
            "host": "gpu1",
            "start": "2026-11-23T15:00",
            "stack": "",
            "csrfmiddlewaretoken": "secret-token",
        },
    )
    assert response.status_code == 302
    # No stack given: the service asks for one, and the user is sent back to the finder.
    assert "/find/" in response["Location"] and "hwspec=cuda" in response["Location"]
    assert "secret-token" not in response["Location"]
    response = logged_in.post(
        reverse("booking:book_need"),
        {**query, "host": "gpu1", "start": "2026-11-23T15:00", "stack": "cuda-12"},
    )
    r = Reservation.objects.get(user__username="alice")
    assert response["Location"] == r.get_absolute_url()
    assert r.allocations.count() == 2


def test_it_refuses_a_bad_finder_query_with_400(client, db):
    response = client.get(reverse("booking:finder"), {"count": "-1", "hours": "x"})
    assert response.status_code == 400
    assert "Enter a number" in response.content.decode()


def test_it_lists_my_reservations_with_ssh_details_and_changes_them(logged_in, host):
    logged_in.post(
        "/hosts/gpu1/book/",
        {"accelerators": ["0"], "stack": "cuda-12", "start": "2026-11-23T11:00",
         "end": "2026-11-23T12:00"},
    )  # fmt: skip
    r = Reservation.objects.get()
    page = logged_in.get(reverse("booking:my_reservations")).content.decode()
    assert "ssh alice@gpu1.example.org" in page
    detail = logged_in.get(r.get_absolute_url()).content.decode()
    assert "It can go up to" in detail
    logged_in.post(
        reverse("booking:reservation_change", args=[r.pk, "extend"]), {"end": "2026-11-23T13:00"}
    )
    r.refresh_from_db()
    assert r.end == datetime(2026, 11, 23, 12, tzinfo=UTC)
    logged_in.post(reverse("booking:reservation_change", args=[r.pk, "cancel"]), CONFIRMED)
    r.refresh_from_db()
    assert r.state == Reservation.State.CANCELLED
    assert AuditEntry.objects.filter(reservation=r).count() == 3


def test_it_hides_other_peoples_reservations(client, host, member):
    r = reservation_create(
        user=member, host=host, stack=host.stacks.get(), accelerators=[host.accelerators.first()],
        start=datetime(2026, 11, 23, 10, tzinfo=UTC), end=datetime(2026, 11, 23, 11, tzinfo=UTC),
    )  # fmt: skip
    client.force_login(UserFactory(debian_member_source="salsa"))
    assert client.get(r.get_absolute_url()).status_code == 404
    response = client.post(reverse("booking:reservation_change", args=[r.pk, "cancel"]), CONFIRMED)
    assert response.status_code == 404
    assert client.post(f"/reservations/{r.pk}/explode/").status_code == 404
    r.refresh_from_db()
    assert r.state == Reservation.State.SCHEDULED


def test_it_shows_the_audit_log_to_staff_only(client, host, member):
    r = reservation_create(
        user=member, host=host, stack=host.stacks.get(), accelerators=[host.accelerators.first()],
        start=datetime(2026, 11, 23, 10, tzinfo=UTC), end=datetime(2026, 11, 23, 11, tzinfo=UTC),
    )  # fmt: skip
    client.force_login(member)
    assert "Audit log" not in client.get(r.get_absolute_url()).content.decode()
    client.force_login(UserFactory(is_staff=True))
    assert "Audit log" in client.get(r.get_absolute_url()).content.decode()


def test_it_marks_maintenance_and_past_cells_and_filters_the_site_timeline(client, host):
    MaintenanceWindow.objects.create(
        host=host, start=NOW + timedelta(hours=3), end=NOW + timedelta(hours=5), reason="fw"
    )
    page = client.get(reverse("booking:site_timeline"), {"hwspec": "cuda", "view": "week"})
    body = page.content.decode()
    assert page.status_code == 200 and "gpu1" in body
    assert 'class="cell maintenance"' in body and 'class="cell past"' in body
    assert (
        "gpu1"
        not in client.get(reverse("booking:site_timeline"), {"hwspec": "rocm"}).content.decode()
    )
    assert client.get(reverse("booking:site_timeline"), {"hwspec": "quantum"}).status_code == 400
    assert client.get(reverse("booking:site_timeline"), {"date": "someday"}).status_code == 400


def test_it_keeps_timeline_columns_on_the_hour_across_dst(client, host, alice):
    client.force_login(alice)
    with time_machine.travel(datetime(2026, 10, 20, tzinfo=UTC), tick=False):
        body = client.get(
            reverse("booking:host_timeline", args=["gpu1"]), {"date": "2026-10-25"}
        ).content.decode()
    # 25 Oct 2026 in Berlin lasts 25 hours: the hour 02 happens twice and shows once.
    assert body.count('<th scope="col">02</th>') == 1
    assert body.count('<th scope="col">') == 1 + 24


def test_it_points_to_the_cancel_button_when_shortening_an_upcoming_one_to_the_past(
    logged_in, host
):
    logged_in.post(
        "/hosts/gpu1/book/",
        {"accelerators": ["0"], "stack": "cuda-12", "start": "2026-11-23T11:00",
         "end": "2026-11-23T12:00"},
    )  # fmt: skip
    r = Reservation.objects.get()
    page = logged_in.post(
        reverse("booking:reservation_change", args=[r.pk, "shorten"]),
        {"end": "2026-11-23T10:00"},  # 09:00 UTC, before now and before the start
        follow=True,
    ).content.decode()
    assert "cancel it instead" in page and "end now" not in page.lower()
    # ... and the page offers what the message names, not an "End it now" button.
    assert "Cancel this reservation</button>" in page and "End it now" not in page
    r.refresh_from_db()
    assert r.end == datetime(2026, 11, 23, 11, tzinfo=UTC)


def _book(user, host, start, end):
    return reservation_create(
        user=user, host=host, stack=host.stacks.get(), accelerators=[host.accelerators.first()],
        start=start, end=end,
    )  # fmt: skip


def test_it_shows_a_cancelled_reservation_as_cancelled_without_a_login(logged_in, alice, host):
    r = _book(
        alice, host, datetime(2026, 11, 23, 10, tzinfo=UTC), datetime(2026, 11, 23, 12, tzinfo=UTC)
    )
    logged_in.post(reverse("booking:reservation_change", args=[r.pk, "cancel"]), CONFIRMED)
    page = logged_in.get(r.get_absolute_url()).content.decode()
    assert "This reservation was cancelled on Mon 23 Nov 2026 10:07" in page  # Berlin time
    assert "ssh alice@" not in page and "Log in" not in page
    assert "This reservation is over" not in page
    listed = logged_in.get(reverse("booking:my_reservations")).content.decode()
    assert "Past and cancelled" in listed and "ssh alice@" not in listed


def test_it_shows_a_rejected_reservation_as_rejected_by_staff(logged_in, alice, host):
    host.access = host.Access.APPROVAL
    host.save()
    r = _book(
        alice, host, datetime(2026, 11, 23, 10, tzinfo=UTC), datetime(2026, 11, 23, 12, tzinfo=UTC)
    )
    reservation_decide(reservation=r, approve=False, actor=UserFactory(is_staff=True))
    page = logged_in.get(r.get_absolute_url()).content.decode()
    assert "Staff rejected this reservation on Mon 23 Nov 2026 10:07" in page
    assert "ssh alice@" not in page


def test_it_offers_no_login_for_an_ended_or_failed_reservation(logged_in, alice, host):
    ended = _book(
        alice, host, datetime(2026, 11, 23, 9, tzinfo=UTC), datetime(2026, 11, 23, 10, tzinfo=UTC)
    )
    reservation_end_now(reservation=ended, actor=alice, now=NOW + timedelta(minutes=30))
    with time_machine.travel(NOW + timedelta(minutes=31), tick=False):
        page = logged_in.get(ended.get_absolute_url()).content.decode()
    assert "This reservation is over" in page and "ssh alice@" not in page
    # Provisioning gave up: the portal retries while the slot lasts, but nobody can log in now.
    failed = _book(
        alice, host, datetime(2026, 11, 23, 11, tzinfo=UTC), datetime(2026, 11, 23, 13, tzinfo=UTC)
    )
    Reservation.objects.filter(pk=failed.pk).update(
        state=Reservation.State.FAILED, last_error="schroot: no such chroot"
    )
    with time_machine.travel(NOW + timedelta(hours=3), tick=False):
        page = logged_in.get(failed.get_absolute_url()).content.decode()
        listed = logged_in.get(reverse("booking:my_reservations")).content.decode()
    assert "schroot: no such chroot" in page and "keeps trying" in page
    assert "ssh alice@" not in page and "ssh alice@" not in listed
    assert "End it now" in page  # the slot is still the user's to give back
    with time_machine.travel(NOW + timedelta(hours=5), tick=False):
        page = logged_in.get(failed.get_absolute_url()).content.decode()
    assert "The session could not be opened, and the slot is over." in page
    assert "ssh alice@" not in page


def test_it_lets_a_found_slot_be_booked_when_any_stack_was_asked(logged_in, host):
    from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory

    host.stacks.add(DriverStackFactory(name="cuda-13"), DriverStackFactory(name="opencl-icd",
                    hwspecs=["opencl"]))  # fmt: skip
    single = HostFactory(name="gpu2")
    single.stacks.add(DriverStackFactory(name="cuda-12"))
    AcceleratorFactory(host=single, index=0, memory_mib=40960)
    query = {"count": 1, "hwspec": "cuda", "hours": "2", "days": 1, "stack": ""}
    body = logged_in.get(reverse("booking:finder"), query).content.decode()
    # gpu1 serves cuda with two stacks: the row asks which (opencl-icd does not serve cuda).
    assert '<label for="stack-1">Stack<span class="visually-hidden"> for gpu1</span>' in body
    at = body.index('id="stack-1"')
    choice = body[at : body.index("</select>", at)]
    assert re.findall(r'<option value="([^"]+)"', choice) == ["cuda-12", "cuda-13"]
    # gpu2 has one: the row books with it, and says so.
    assert '<input type="hidden" name="stack" value="cuda-12">' in body
    assert "with cuda-12" in body
    response = logged_in.post(
        reverse("booking:book_need"),
        {**query, "host": "gpu1", "start": "2026-11-23T10:15", "stack": "cuda-13"},
    )
    r = Reservation.objects.get()
    assert response["Location"] == r.get_absolute_url()
    assert (r.host.name, r.stack.name) == ("gpu1", "cuda-13")
