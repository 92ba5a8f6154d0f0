"""Host health: problems found in a reading, draining a host once, telling the users it
affects with other slots, returning to service, and the staff pages and admin around it."""

import importlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.urls import reverse

from portal.booking.models import Allocation, Reservation
from portal.inventory.models import Host, MaintenanceWindow
from portal.operations import health
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory
from tests.helpers import NOW, mails_to

H = timedelta(hours=1)
SITE = "https://portal.example.org"


pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture(autouse=True)
def mail_settings(settings):
    settings.ADMINS = [("Admins", "admins@example.org")]
    settings.SITE_URL = SITE


@pytest.fixture
def stack(db):
    return DriverStackFactory(name="cuda-12")


def make_host(stack, name, devices=2, **fields):
    host = HostFactory(name=name, last_seen=NOW, **fields)
    host.stacks.add(stack)
    for i in range(devices):
        AcceleratorFactory(host=host, index=i)
    return host


@pytest.fixture
def gpu1(stack):
    return make_host(stack, "gpu1")


@pytest.fixture
def gpu2(stack):
    return make_host(stack, "gpu2")


def book(user, host, start, end, indexes=(0,), **fields):
    """A reservation with its allocations, written directly (some lie in the past)."""
    r = Reservation.objects.create(
        user=user, host=host, stack=host.stacks.get(), start=start, end=end, **fields
    )
    for acc in host.accelerators.filter(index__in=indexes):
        Allocation.objects.create(accelerator=acc, reservation=r, start=start, end=end)
    return r


def reading(*samples, errors=()):
    return {"samples": list(samples), "errors": list(errors)}


def sample(index, vendor="nvidia", temperature=40.0):
    return {
        "vendor": vendor, "index": index, "utilization_pct": 0.0, "memory_used_mib": 0,
        "temperature_c": temperature, "power_w": 60.0, "processes": [],
    }  # fmt: skip


def problems_of(host, answer):
    accelerators = host.accelerators.filter(retired=False)
    return health.telemetry_problems(host, answer, accelerators)


def drained_mails(mailoutbox):
    return [m for m in mailoutbox if "admins@example.org" not in m.to]


# -- problems -------------------------------------------------------------------------------------


def test_it_finds_no_problem_in_a_healthy_reading(gpu1):
    assert problems_of(gpu1, reading(sample(0), sample(1))) == []


def test_it_reports_a_failed_probe_once_and_not_its_devices(gpu1):
    answer = reading(errors=[{"vendor": "nvidia", "message": "NVML: driver not loaded"}])

    problems = problems_of(gpu1, answer)

    assert [p["code"] for p in problems] == ["probe_failed"]
    assert "nvidia" in problems[0]["message"] and "driver not loaded" in problems[0]["message"]


def test_it_reports_a_device_count_that_differs_from_the_inventory(gpu1):
    problems = problems_of(gpu1, reading(sample(0), sample(1), sample(2)))

    assert [p["code"] for p in problems] == ["device_count"]
    assert "3 nvidia devices" in problems[0]["message"] and "has 2" in problems[0]["message"]


def test_it_reports_each_missing_device(gpu1):
    problems = problems_of(gpu1, reading(sample(0)))

    assert [p["code"] for p in problems] == ["device_count", "device_missing"]
    assert "nvidia #1" in problems[1]["message"]


def test_it_reports_a_device_hotter_than_the_hosts_limit(stack):
    host = make_host(stack, "hot", max_temperature_c=85)

    problems = problems_of(host, reading(sample(0, temperature=85.0), sample(1, temperature=91.5)))

    assert problems == [
        {"code": "too_hot", "message": "nvidia #1 is at 91.5 °C, above the host's limit of 85 °C."}
    ]


def test_it_ignores_retired_devices(gpu1):
    gpu1.accelerators.filter(index=1).update(retired=True)

    assert problems_of(gpu1, reading(sample(0))) == []


def test_it_reports_a_host_that_has_not_answered_for_too_long(gpu1, settings):
    settings.JOBS_HOST_FAILURE_SECONDS = 300
    gpu1.last_seen = NOW - timedelta(seconds=299)
    assert health.unreachable_problem(gpu1, NOW) is None

    gpu1.last_seen = NOW - timedelta(seconds=301)
    problem = health.unreachable_problem(gpu1, NOW)

    assert problem["code"] == "unreachable"
    assert "since 2026-11-23 09:01 UTC" in problem["message"]


def test_it_gives_a_new_host_time_for_its_first_answer(db, settings):
    settings.JOBS_HOST_FAILURE_SECONDS = 300
    host = HostFactory(last_seen=None)
    assert health.unreachable_problem(host, NOW) is None

    host.created = NOW - H
    problem = health.unreachable_problem(host, NOW)
    assert problem["code"] == "unreachable" and "added on 2026-11-23 08:07" in problem["message"]


# -- draining -------------------------------------------------------------------------------------


def test_it_records_the_problems_and_drains_the_host(gpu1, mailoutbox):
    problems = problems_of(gpu1, reading(sample(0), sample(1, temperature=99.0)))

    health.update(gpu1, problems, NOW)

    gpu1.refresh_from_db()
    assert gpu1.health_problems == problems
    assert gpu1.state == Host.State.MAINTENANCE
    assert gpu1.drained_at == NOW and "nvidia #1 is at 99 °C" in gpu1.drain_reason
    (mail,) = mailoutbox
    assert "gpu1 drained" in mail.subject and "99 °C" in mail.subject
    assert "Resume the selected drained hosts" in mail.body and "/hosts/gpu1/" in mail.body


def test_it_drains_once(gpu1, mailoutbox):
    assert health.drain(gpu1, "fans failing", NOW)
    assert not health.drain(gpu1, "fans failing", NOW + H)
    health.update(gpu1, [{"code": "too_hot", "message": "still hot"}], NOW + H)

    gpu1.refresh_from_db()
    assert gpu1.drained_at == NOW and gpu1.drain_reason == "fans failing"
    assert len(mailoutbox) == 1


@pytest.mark.django_db(transaction=True)
def test_it_lets_one_of_many_concurrent_workers_drain_a_host(mailoutbox, settings):
    settings.ADMINS = [("Admins", "admins@example.org")]
    host = HostFactory()

    def drain(i):
        try:
            return health.drain(host, f"worker {i}", NOW)
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(drain, range(8)))

    assert wins.count(True) == 1
    assert Host.objects.get(pk=host.pk).drain_reason == f"worker {wins.index(True)}"
    assert len(mailoutbox) == 1


def test_it_does_not_drain_a_host_staff_took_out_of_service(gpu1, mailoutbox):
    Host.objects.filter(pk=gpu1.pk).update(state=Host.State.OFFLINE)
    gpu1.refresh_from_db()

    health.update(gpu1, [{"code": "too_hot", "message": "hot"}], NOW)

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.OFFLINE and gpu1.drained_at is None
    assert gpu1.health_problems == [{"code": "too_hot", "message": "hot"}]
    assert mailoutbox == []


def test_it_tells_owners_of_upcoming_reservations_with_slots_on_another_host(
    gpu1, gpu2, mailoutbox
):
    alice = UserFactory(username="alice", time_zone="Europe/Berlin")
    upcoming = book(alice, gpu1, NOW.replace(hour=12, minute=0), NOW.replace(hour=14, minute=0))
    running = book(
        UserFactory(username="bob"), gpu1, NOW - H, NOW + H, indexes=(1,),
        state=Reservation.State.ACTIVE, granted_at=NOW - H,
    )  # fmt: skip
    past = book(
        UserFactory(username="carol"), gpu1, NOW - 5 * H, NOW - 3 * H,
        state=Reservation.State.ENDED, granted_at=NOW - 5 * H,
    )  # fmt: skip
    book(UserFactory(username="dave", email=""), gpu1, NOW + 6 * H, NOW + 7 * H)

    assert health.drain(gpu1, "nvidia #1 is at 99 °C", NOW)

    admins = [m for m in mailoutbox if m.to == ["admins@example.org"]]
    assert len(admins) == 1 and "1 user with an upcoming reservation was told" in admins[0].body
    (mail,) = drained_mails(mailoutbox)
    assert mail.to == [alice.email]
    assert mail.subject == "gpu1 is out of service: your reservation may not start"
    body = mail.body
    assert "nvidia #1 is at 99 °C" in body
    assert "from Mon 23 Nov 2026 13:00 to Mon 23 Nov 2026 15:00 CET" in body  # her slot
    assert "gpu2, Mon 23 Nov 2026 13:00 to Mon 23 Nov 2026 15:00 CET" in body  # the other host
    link = f"{SITE}/hosts/gpu2/book/?start=2026-11-23T12%3A00Z"
    assert link in body
    assert f"{SITE}/reservations/{upcoming.pk}/" in body
    assert "gpu1," not in body  # the drained host is no alternative
    for r in (running, past):
        assert r.user.email not in {to for m in mailoutbox for to in m.to}


def test_it_links_alternatives_to_a_prefilled_booking_form(client, gpu2):
    member = UserFactory(time_zone="Europe/Berlin", debian_member_source="staff")
    client.force_login(member)

    response = client.get("/hosts/gpu2/book/?start=2026-11-23T12%3A00Z")

    assert response.status_code == 200
    start = response.context["form"].initial["start"]
    assert start == NOW.replace(hour=12, minute=0) and start.strftime("%H:%M") == "13:00"


def test_a_reservation_booked_between_the_search_and_the_drain_is_told_too(gpu1, gpu2, mailoutbox):
    """The other slots are searched before the drain's transaction; a reservation booked in
    between is found again in the transaction and told, its slots searched there."""
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    book(alice, gpu1, NOW + 2 * H, NOW + 4 * H)
    notices = health.plan_notices(
        gpu1, NOW, NOW + 10 * H, "disk full", "operations/mail_drained.txt",
        blocked=(gpu1.pk, NOW, NOW + 1000 * H),
    )  # fmt: skip
    book(bob, gpu1, NOW + 5 * H, NOW + 6 * H)  # meanwhile
    with transaction.atomic():
        Host.objects.filter(pk=gpu1.pk).update(state=Host.State.MAINTENANCE)
        told = health.send_notices(notices, NOW, NOW + 10 * H)
    assert told == 2
    by_user = {m.to[0]: m.body for m in drained_mails(mailoutbox)}
    assert set(by_user) == {alice.email, bob.email}
    for body in by_user.values():
        assert "gpu2, " in body and "gpu1, " not in body


def test_it_offers_no_alternative_when_nothing_is_free(gpu1, mailoutbox):
    user = UserFactory()
    book(user, gpu1, NOW + 2 * H, NOW + 3 * H, indexes=(0, 1))

    health.drain(gpu1, "disk full", NOW)

    (mail,) = drained_mails(mailoutbox)
    assert "No host has a free slot like yours" in mail.body


# -- returning to service -------------------------------------------------------------------------


def test_it_returns_a_host_drained_only_as_unreachable_when_it_answers(gpu1, mailoutbox):
    gpu1.last_seen = NOW - H
    health.update(gpu1, [health.unreachable_problem(gpu1, NOW)], NOW)
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.MAINTENANCE and gpu1.drain_reason.startswith("Unreachable")

    health.update(gpu1, [], NOW + H)

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE
    assert gpu1.drained_at is None and gpu1.drain_reason == "" and gpu1.health_problems == []
    assert mailoutbox[-1].subject.endswith("gpu1 is back in service")


def test_it_keeps_a_host_drained_for_heat_until_staff_resume_it(gpu1, mailoutbox):
    health.update(gpu1, [{"code": "too_hot", "message": "nvidia #0 is at 99 °C"}], NOW)

    health.update(gpu1, [], NOW + H)

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.MAINTENANCE and gpu1.drained_at == NOW
    assert gpu1.health_problems == []
    assert len(mailoutbox) == 1


def test_it_keeps_an_unreachable_host_drained_when_it_answers_with_a_problem(gpu1, mailoutbox):
    gpu1.last_seen = NOW - H
    health.update(gpu1, [health.unreachable_problem(gpu1, NOW)], NOW)

    health.update(gpu1, [{"code": "device_missing", "message": "nvidia #1 sent nothing"}], NOW)
    health.update(gpu1, [], NOW + H)

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.MAINTENANCE and gpu1.drain_reason == "nvidia #1 sent nothing"
    assert "stays drained" in mailoutbox[-1].subject


def test_it_resumes_only_a_drained_host(gpu1, staff):
    assert not health.resume(gpu1, staff)
    health.drain(gpu1, "fans", NOW)

    assert health.resume(gpu1, staff)
    assert not health.resume(gpu1, staff)
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE and gpu1.drained_at is None


# -- the drain cause ------------------------------------------------------------------------------


def check_failed(vendor="nvidia"):
    """The problem checks.check_host records for a failed check of the vendor's device #0."""
    return {
        "code": "health_check",
        "vendor": vendor,
        "message": f"The health check of {vendor} #0 failed (exit status 4, stack cuda-12): ECC",
    }


def check(host, vendor, failed: bool, now) -> None:
    """What checks.check_host hands over after a check of the vendor ran."""
    found = [check_failed(vendor)] if failed else []
    health.update(host, found, now, sources=[health.check_source(vendor)])


def test_it_returns_a_host_drained_as_unreachable_by_its_cause_not_its_words(gpu1, mailoutbox):
    gpu1.last_seen = NOW - H
    health.update(gpu1, [health.unreachable_problem(gpu1, NOW)], NOW)
    gpu1.refresh_from_db()
    assert gpu1.drain_cause == Host.DrainCause.UNREACHABLE
    Host.objects.filter(pk=gpu1.pk).update(drain_reason="Ne répond plus depuis ce matin")

    health.update(gpu1, [], NOW + H)

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE and gpu1.drain_cause == ""
    assert mailoutbox[-1].subject.endswith("gpu1 is back in service")


def test_it_does_not_return_a_host_drained_too_hot_even_if_its_reason_reads_unreachable(gpu1):
    health.update(gpu1, [{"code": "too_hot", "message": "nvidia #0 is at 99 °C"}], NOW)
    gpu1.refresh_from_db()
    assert gpu1.drain_cause == Host.DrainCause.TOO_HOT
    words = "Unreachable: no answer since 2026-11-23 08:07 UTC"
    Host.objects.filter(pk=gpu1.pk).update(drain_reason=words)

    health.update(gpu1, [], NOW + H)

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.MAINTENANCE and gpu1.drain_cause == Host.DrainCause.TOO_HOT


def test_it_names_the_cause_of_each_kind_of_problem(gpu1):
    assert health.cause_of([health.unreachable_problem(gpu1, NOW + 9 * H)]) == "unreachable"
    assert health.cause_of(problems_of(gpu1, reading(sample(0)))) == "devices"
    answer = reading(errors=[{"vendor": "nvidia", "message": "NVML: driver not loaded"}])
    assert health.cause_of(problems_of(gpu1, answer)) == "agent_error"
    assert health.cause_of([{"code": "agent_error", "message": "ssh: timeout"}]) == "agent_error"
    hot = problems_of(gpu1, reading(sample(0), sample(1, temperature=99.0)))
    assert health.cause_of(hot) == "too_hot"
    assert health.cause_of([check_failed()]) == "health_check"
    assert health.cause_of([{"code": "new_kind", "message": "?"}]) == "other"


def test_it_drains_for_the_cause_staff_name_and_clears_it_when_they_resume(gpu1, staff):
    assert health.drain(gpu1, "fans failing", NOW)
    gpu1.refresh_from_db()
    assert gpu1.drain_cause == Host.DrainCause.STAFF

    assert health.resume(gpu1, staff, NOW + H)

    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE and gpu1.drain_cause == "" and gpu1.drain_reason == ""


def test_it_keeps_a_failed_checks_problem_through_a_telemetry_pass(gpu1, mailoutbox):
    check(gpu1, "nvidia", failed=True, now=NOW)
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.MAINTENANCE
    assert gpu1.drain_cause == Host.DrainCause.HEALTH_CHECK

    # The loop's next pass: the readings are fine, and it hands on what it last saw.
    healthy = problems_of(gpu1, reading(sample(0), sample(1)))
    health.update(gpu1, healthy, NOW + H)
    health.update(gpu1, list(gpu1.health_problems), NOW + 2 * H)

    gpu1.refresh_from_db()
    assert gpu1.health_problems == [check_failed()]
    assert gpu1.state == Host.State.MAINTENANCE and gpu1.drained_at == NOW
    assert len(mailoutbox) == 1


def test_it_keeps_the_loops_problems_through_a_check_and_each_vendors_apart(gpu1):
    hot = {"code": "too_hot", "message": "nvidia #1 is at 99 °C"}
    health.update(gpu1, [hot], NOW)
    check(gpu1, "nvidia", failed=True, now=NOW)
    check(gpu1, "amd", failed=True, now=NOW)

    check(gpu1, "amd", failed=False, now=NOW + H)  # a pass clears only its vendor's failure

    gpu1.refresh_from_db()
    assert gpu1.health_problems == [hot, check_failed("nvidia")]
    assert gpu1.drain_cause == Host.DrainCause.TOO_HOT  # the first drain's, until staff resume


def test_it_does_not_drain_again_for_a_check_failed_before_staff_resumed(gpu1, staff):
    check(gpu1, "nvidia", failed=True, now=NOW)
    health.resume(gpu1, staff, NOW + H)

    health.update(gpu1, [], NOW + 2 * H)  # the loop finds nothing wrong
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE and gpu1.health_problems == [check_failed()]

    check(gpu1, "nvidia", failed=False, now=NOW + 3 * H)  # the next check passes
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE and gpu1.health_problems == []


def test_it_derives_the_cause_of_hosts_drained_before_the_cause_existed():
    migration = importlib.import_module("portal.inventory.migrations.0006_host_drain_cause")
    since = "Unreachable: no answer since 2026-11-23 08:07 UTC"
    added = "Unreachable: no answer since it was added on 2026-11-23 08:07 UTC"
    hot = "nvidia #1 is at 99 °C, above the host's limit of 90 °C."
    missing = "nvidia #1 is in the inventory but sent no reading."
    check = "The health check of nvidia #0 failed (exit status 4, stack cuda-12): ECC"

    assert migration.cause_of(since) == migration.cause_of(added) == "unreachable"
    assert migration.cause_of(hot) == "too_hot"
    assert migration.cause_of("The host reports 1 nvidia device; the inventory has 2.") == "devices"
    assert migration.cause_of(f"{missing}; {hot}") == "devices"
    assert migration.cause_of("Reading the devices failed: timed out") == "agent_error"
    assert migration.cause_of("The nvidia probe failed: NVML: driver not loaded") == "agent_error"
    assert migration.cause_of(check) == "health_check"
    assert migration.cause_of(f"{since}; {hot}") == "too_hot"  # not unreachable alone
    assert migration.cause_of("fans failing") == "staff"
    assert migration.cause_of("") == "staff"


# -- staff pages ----------------------------------------------------------------------------------


def resume_url(host):
    return reverse("operations:host_resume", args=[host.name])


def maintenance_url(host):
    return reverse("operations:host_maintenance", args=[host.name])


def test_it_lets_staff_resume_a_drained_host(client, gpu1, staff):
    health.drain(gpu1, "fans", NOW)
    client.force_login(staff)

    response = client.post(resume_url(gpu1), follow=True)

    assert response.redirect_chain == [(reverse("inventory:host_detail", args=["gpu1"]), 302)]
    assert "gpu1 is back in service" in response.content.decode()
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE


def test_it_says_so_when_staff_resume_a_host_that_is_not_drained(client, gpu1, staff):
    client.force_login(staff)

    response = client.post(resume_url(gpu1), follow=True)

    assert response.status_code == 200
    assert "gpu1 is not drained" in response.content.decode()


def test_it_refuses_to_resume_for_a_normal_user(client, gpu1):
    health.drain(gpu1, "fans", NOW)
    client.force_login(UserFactory(debian_member_source="staff"))

    assert client.post(resume_url(gpu1)).status_code == 403
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.MAINTENANCE


def test_it_resumes_only_on_post(client, gpu1, staff):
    health.drain(gpu1, "fans", NOW)
    client.force_login(staff)

    assert client.get(resume_url(gpu1)).status_code == 405
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.MAINTENANCE


def test_it_records_maintenance_and_tells_the_owners_it_affects(
    client, gpu1, gpu2, staff, mailoutbox
):
    staff.time_zone = "Europe/Berlin"
    staff.save()
    alice = UserFactory(time_zone="Europe/Berlin")
    book(alice, gpu1, NOW.replace(hour=12, minute=0), NOW.replace(hour=14, minute=0))
    book(UserFactory(), gpu1, NOW + 8 * H, NOW + 9 * H)  # after the window
    client.force_login(staff)
    assert client.get(maintenance_url(gpu1)).status_code == 200

    response = client.post(
        maintenance_url(gpu1),
        {"start": "2026-11-23T13:30", "end": "2026-11-23T15:00", "reason": "new fans"},
        follow=True,
    )

    assert "1 user told" in response.content.decode()
    window = MaintenanceWindow.objects.get(host=gpu1)
    assert window.start == NOW.replace(hour=12, minute=30)  # typed in Berlin time
    assert window.end == NOW.replace(hour=14, minute=0)
    assert window.reason == "new fans" and window.created_by == staff
    (sent,) = mails_to(mailoutbox, alice.email)
    assert sent.subject == "Maintenance on gpu1 during your reservation"
    assert "from Mon 23 Nov 2026 13:30 to Mon 23 Nov 2026 15:00 CET (maintenance: new fans)" in (
        sent.body
    )
    assert "gpu2, Mon 23 Nov 2026 13:00 to Mon 23 Nov 2026 15:00 CET" in sent.body
    # Searched before the window was written, the window's own host is left out of it.
    assert "gpu1, Mon 23 Nov 2026 13:00" not in sent.body
    # The operators hear of it; the staff member who planned it is not told their own deed.
    (notice,) = mails_to(mailoutbox, "admins@example.org")
    assert notice.subject == f"Maintenance of gpu1 planned by {staff}"
    assert not mails_to(mailoutbox, staff.email)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"start": "2026-11-23T12:00", "end": "2026-11-23T11:00", "reason": "x"}, "end"),
        ({"start": "2026-11-23T08:00", "end": "2026-11-23T11:00", "reason": "x"}, "start"),
        ({"start": "2026-11-23T12:00", "end": "2026-11-23T13:00", "reason": ""}, "reason"),
        ({"start": "tomorrow", "end": "2026-11-23T13:00", "reason": "x"}, "start"),
    ],
)
def test_it_refuses_bad_maintenance_input_and_writes_nothing(
    client, gpu1, staff, mailoutbox, data, field
):
    book(UserFactory(), gpu1, NOW + 3 * H, NOW + 4 * H)
    client.force_login(staff)

    response = client.post(maintenance_url(gpu1), data)

    assert response.status_code == 400
    assert list(response.context["form"].errors) == [field]
    assert not MaintenanceWindow.objects.exists()
    assert mailoutbox == []


def test_it_refuses_the_maintenance_page_to_normal_users(client, gpu1):
    client.force_login(UserFactory(debian_member_source="staff"))

    assert client.get(maintenance_url(gpu1)).status_code == 403
    response = client.post(
        maintenance_url(gpu1),
        {"start": "2026-11-23T12:00", "end": "2026-11-23T13:00", "reason": "x"},
    )
    assert response.status_code == 403
    assert not MaintenanceWindow.objects.exists()


# -- the admin ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_announces_a_window_added_in_the_admin(client, mailoutbox, settings):
    settings.SITE_URL = SITE
    stack = DriverStackFactory(name="cuda-12")
    host = make_host(stack, "gpu1")
    owner = UserFactory()
    book(owner, host, NOW.replace(hour=12, minute=0), NOW.replace(hour=14, minute=0))
    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    response = client.post(
        reverse("admin:inventory_maintenancewindow_add"),
        {"host": host.pk, "start_0": "2026-11-23", "start_1": "13:00:00",
         "end_0": "2026-11-23", "end_1": "15:00:00", "reason": "firmware"},
        follow=True,
    )  # fmt: skip

    assert response.status_code == 200
    assert "1 user with a reservation in the window told" in response.content.decode()
    assert MaintenanceWindow.objects.get().created_by.is_staff
    (sent,) = mailoutbox
    assert sent.to == [owner.email] and "maintenance: firmware" in sent.body


def test_it_resumes_drained_hosts_with_the_admin_action(client, gpu1, gpu2, staff):
    health.drain(gpu1, "fans", NOW)
    client.force_login(staff)

    response = client.post(
        reverse("admin:inventory_host_changelist"),
        {"action": "resume_drained", "_selected_action": [gpu1.pk, gpu2.pk]},
        follow=True,
    )

    page = response.content.decode()
    assert "Resumed: gpu1." in page and "1 selected host was not drained" in page
    gpu1.refresh_from_db()
    assert gpu1.state == Host.State.ACTIVE
