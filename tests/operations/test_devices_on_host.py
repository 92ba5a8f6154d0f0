"""Telemetry, squatters, idle reclaim and health against the real test host.

The host has no GPU: device nodes stand in for two NVIDIA GPUs, and its `nvidia-smi` prints
the recorded output of a real dual RTX A5000 machine (tests/fixtures/gpu). Where a test needs
a process on a GPU, the recording's process list names a real process of the test host (the
pid is the only thing changed), so the agent finds its owner in /proc as it would on a GPU.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.booking.models import Reservation
from portal.inventory.models import DeviceSample, Squatter
from portal.operations import services, telemetry
from tests.helpers import delivered, wait_for
from tests.operations.conftest import book_now, state_of
from tests.operations.harness import SMI_XML_ON_HOST, smi_xml

pytestmark = [pytest.mark.host, pytest.mark.django_db(transaction=True)]

S = Reservation.State
R = DeviceSample.Resolution


@pytest.fixture
def every_pass(settings):
    """Read the devices on every pass, as if a minute had gone by between passes."""
    settings.PORTAL_TELEMETRY_SECONDS = 0
    settings.ADMINS = [("Admins", "admins@example.org")]
    return settings


@pytest.fixture
def recording(testhost):
    """Set what the host's nvidia-smi prints; the plain recording again afterwards."""

    def write(text: str) -> None:
        testhost.write_file(SMI_XML_ON_HOST, text)

    yield write
    write(smi_xml())


def reconcile(host) -> str:
    return services.reconcile_host(host.pk)


def background(person, command: str = "sleep 1000") -> int:
    """Start a process of the person's on the host, detached from the login; its pid there."""
    started = person.ssh(f"setsid {command} >/dev/null 2>&1 < /dev/null & echo $!")
    assert started.returncode == 0, started.stderr
    return int(started.stdout.split()[-1])


def test_readings_are_collected_from_the_host_then_rolled_up_and_expired(
    registered, every_pass, recording
):
    recording(smi_xml())
    reconcile(registered)
    rows = DeviceSample.objects.filter(accelerator__host=registered).order_by("accelerator__index")
    # What the real tool printed for the two GPUs (tests/fixtures/gpu/nvidia-smi).
    assert [(r.accelerator.index, r.resolution) for r in rows] == [(0, R.READING), (1, R.READING)]
    assert [r.temperature_c for r in rows] == [13.0, 15.0]
    assert [r.power_w for r in rows] == [6.41, 13.6]
    assert [r.utilization_pct for r in rows] == [0.0, 0.0]
    registered.refresh_from_db()
    assert registered.telemetry["errors"] == []
    assert [s["index"] for s in registered.telemetry["samples"]] == [0, 1]
    assert registered.health_problems == []

    # A hot afternoon three days ago: readings every minute of one hour, from the host's own
    # values, then the hourly retention run.
    first = rows[0]
    hour = (timezone.now() - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    DeviceSample.objects.bulk_create(
        DeviceSample(
            accelerator=first.accelerator,
            at=hour + timedelta(minutes=m),
            utilization_pct=m,
            utilization_max_pct=m,
            memory_used_mib=100 + m,
            temperature_c=first.temperature_c + m,
            power_w=first.power_w,
        )
        for m in range(60)
    )
    ancient = DeviceSample.objects.create(
        accelerator=first.accelerator,
        at=hour - timedelta(days=100),
        resolution=R.HOUR,
        readings=60,
    )
    done = telemetry.retain(timezone.now())

    assert (done.rolled_up, done.readings_deleted, done.hours_deleted) == (1, 60, 1)
    rolled = DeviceSample.objects.get(accelerator=first.accelerator, resolution=R.HOUR)
    assert rolled.at == hour and rolled.readings == 60
    assert rolled.utilization_pct == pytest.approx(29.5)  # the mean of 0..59
    assert rolled.utilization_max_pct == 59
    assert rolled.memory_used_mib == 159 and rolled.temperature_c == 13.0 + 59
    assert rolled.power_w == pytest.approx(6.41)
    assert not DeviceSample.objects.filter(pk=ancient.pk).exists()
    # Today's readings stay as they are; running it again changes nothing.
    assert DeviceSample.objects.filter(resolution=R.READING).count() == 2
    assert telemetry.retain(timezone.now()) == telemetry.Retained(0, 0, 0)


def test_a_squatter_is_told_then_killed_after_the_grace_and_the_holder_keeps_the_device(
    registered, person, testhost, every_pass, recording
):
    alice, bob = person("alice"), person("bob")
    mine = book_now(alice, registered, [1])
    book_now(bob, registered, [0])
    registered.squatter_kill, registered.squatter_grace_minutes = True, 1
    registered.save()
    reconcile(registered)  # both sessions open
    assert state_of(mine) == S.ACTIVE
    delivered().clear()

    # Bob runs something that the driver shows on GPU 1, which Alice booked, and Alice her own
    # work on it too.
    squatting, working = background(bob), background(alice)
    recording(smi_xml({1: [(squatting, 2048), (working, 4096)]}))
    reconcile(registered)

    squatter = Squatter.objects.get()
    assert (squatter.unix_user, squatter.pid, squatter.accelerator.index) == ("bob", squatting, 1)
    assert squatter.holder == f"reservation {mine.pk}" and squatter.killed_at is None
    told = {m.to[0]: m for m in delivered()}
    assert set(told) == {bob.user.email, alice.user.email, "admins@example.org"}
    assert "without a booking" in told[bob.user.email].subject
    assert "it is killed" in told[bob.user.email].body
    assert "Someone else's process" in told[alice.user.email].subject

    # Still there on the next reading, within the grace: followed, not killed, told once.
    delivered().clear()
    reconcile(registered)
    assert delivered() == [] and Squatter.objects.get().killed_at is None
    assert any(p["pid"] == squatting for p in testhost.processes())

    # The grace is over.
    Squatter.objects.update(first_seen=timezone.now() - timedelta(minutes=2))
    assert "killed squatter bob" in reconcile(registered)
    wait_for(lambda: all(p["pid"] != squatting for p in testhost.processes()), 10, what="kill")
    assert any(p["pid"] == working for p in testhost.processes())  # the holder's own work
    assert Squatter.objects.get().killed_at is not None

    # Gone from the next reading (the recording still names the pid, but no one owns it now).
    reconcile(registered)
    assert Squatter.objects.get().gone_at is not None
    assert state_of(mine) == S.ACTIVE


def test_a_squatter_on_a_warn_only_host_is_never_killed(
    registered, person, testhost, every_pass, recording
):
    bob = person("bob")
    book_now(bob, registered, [0])
    reconcile(registered)
    squatting = background(bob)
    recording(smi_xml({1: [(squatting, 512)]}))  # GPU 1, which nobody booked
    reconcile(registered)
    Squatter.objects.update(first_seen=timezone.now() - timedelta(days=1))
    reconcile(registered)

    squatter = Squatter.objects.get()
    assert squatter.holder == "" and squatter.killed_at is None and squatter.gone_at is None
    assert any(p["pid"] == squatting for p in testhost.processes())
    warning = next(m for m in delivered() if "without a booking" in m.subject)
    assert warning.to == [bob.user.email] and "which nobody booked" in warning.body


def test_an_idle_reservation_is_warned_then_ended_and_a_used_one_is_kept(
    registered, person, testhost, every_pass, recording
):
    every_pass.PORTAL_IDLE_WARNING_MINUTES = 5
    registered.idle_reclaim_minutes = 30
    registered.save()
    carol, dave = person("carol"), person("dave")
    idle, used = book_now(carol, registered, [0], 120), book_now(dave, registered, [1], 120)
    reconcile(registered)
    assert state_of(idle) == state_of(used) == S.ACTIVE
    # Dave's work runs on his GPU; Carol never logs in.
    recording(smi_xml({1: [(background(dave), 1000)]}))
    delivered().clear()

    # Both sessions opened 40 minutes ago, as if time had passed.
    Reservation.objects.update(granted_at=timezone.now() - timedelta(minutes=40))
    assert f"warned idle r{idle.pk}" in reconcile(registered)
    assert [m.to for m in delivered()] == [[carol.user.email]]
    assert "will be ended" in delivered()[0].subject
    assert Reservation.objects.get(pk=used.pk).last_active_at is not None

    # Still unused when the warning runs out: ended, its device free, the session revoked.
    Reservation.objects.filter(pk=idle.pk).update(
        idle_warned_at=timezone.now() - timedelta(minutes=6)
    )
    assert f"reclaimed idle r{idle.pk}" in reconcile(registered)
    assert state_of(idle) == S.ENDING
    assert "was ended" in delivered()[-1].subject
    reconcile(registered)
    assert state_of(idle) == S.ENDED
    assert carol.ssh("true").returncode == 255
    assert state_of(used) == S.ACTIVE
    assert idle.audit.filter(action="reclaim idle", actor=None).exists()


def test_a_login_after_the_warning_keeps_the_reservation(registered, person, every_pass, recording):
    every_pass.PORTAL_IDLE_WARNING_MINUTES = 5
    registered.idle_reclaim_minutes = 30
    registered.save()
    erin = person("erin")
    mine = book_now(erin, registered, [0], 120)
    reconcile(registered)
    Reservation.objects.update(granted_at=timezone.now() - timedelta(minutes=40))
    reconcile(registered)
    assert Reservation.objects.get(pk=mine.pk).idle_warned_at is not None

    background(erin)  # she logs in and leaves something running
    Reservation.objects.filter(pk=mine.pk).update(
        idle_warned_at=timezone.now() - timedelta(minutes=6)
    )
    reconcile(registered)
    mine.refresh_from_db()
    assert mine.state == S.ACTIVE and mine.idle_warned_at is None and mine.last_active_at


def test_a_gpu_gone_from_the_host_drains_it_and_upcoming_bookers_are_told(
    registered, person, every_pass, recording
):
    frank = person("frank")
    later = book_now(frank, registered, [1], 30)
    start = later.start + timedelta(hours=2)
    Reservation.objects.filter(pk=later.pk).update(start=start, end=start + timedelta(hours=1))
    later.allocations.update(start=start, end=start + timedelta(hours=1))
    # The driver lost GPU 1: the tool lists only GPU 0 now.
    text = smi_xml()
    first_gpu_end = text.index("</gpu>") + len("</gpu>")
    recording(text[:first_gpu_end] + "\n</nvidia_smi_log>\n")

    reconcile(registered)
    registered.refresh_from_db()
    assert registered.state == registered.State.MAINTENANCE and registered.drained_at
    codes = {p["code"] for p in registered.health_problems}
    assert {"device_missing", "device_count"} <= codes
    subjects = {m.to[0]: m.subject for m in delivered()}
    assert "testhost" in subjects["admins@example.org"]
    assert frank.user.email in subjects

    # No new session starts there while it is drained.
    now_booked = Reservation.objects.get(pk=later.pk)
    Reservation.objects.filter(pk=later.pk).update(start=timezone.now() - timedelta(minutes=1))
    now_booked.allocations.update(start=timezone.now() - timedelta(minutes=1))
    reconcile(registered)
    assert state_of(later) == S.FAILED
    assert "not taking new sessions" in Reservation.objects.get(pk=later.pk).last_error
