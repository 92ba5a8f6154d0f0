"""Every decision of the reconcile loop's session part, against a fake agent (no host).

Each test sets up the database and the host's state as the agent would report it, runs one
pass of `reconcile_host` as the worker does, and checks what the pass asked the host to do and
what it wrote to the database. The same decisions are proven end to end on the test host by
test_reconcile_on_host.py.
"""

import logging
from datetime import timedelta

import pytest
import time_machine

from portal.accounts.services import ssh_key_add
from portal.accounts.sshkeys import parse_public_key
from portal.booking.models import Reservation
from portal.booking.services import reservation_create, reservation_extend
from portal.inventory.models import Host
from portal.notifications.models import Notification, Webhook
from portal.notifications.outbox import send_due
from portal.operations import services
from provisioning.client import AccountState, DeviceRef, Sample, SessionState, Telemetry
from tests.factories import UserFactory
from tests.helpers import delivered
from tests.notifications.receivers import hanging_smtp  # noqa: F401 - a fixture
from tests.operations.loop import NOW, gpu_host, healthy, member, minute_grid, public_key

pytestmark = pytest.mark.django_db
S = Reservation.State


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def host(clock):
    minute_grid()
    return gpu_host()


@pytest.fixture
def agent(fake_agents, host):
    """The host's agent, reading both devices as the inventory has them (a healthy host)."""
    return healthy(fake_agents[host])


def book(user, host, indexes=(1,), start=NOW, minutes=30) -> Reservation:
    return reservation_create(
        user=user,
        host=host,
        stack=host.stacks.get(name="cuda-12"),
        start=start,
        end=start + timedelta(minutes=minutes),
        accelerators=list(host.accelerators.filter(index__in=indexes)),
        now=NOW,
    )


def reconcile(host) -> str:
    return services.reconcile_host(host.pk)


def fresh(r: Reservation) -> Reservation:
    return Reservation.objects.get(pk=r.pk)


# -- grants ---------------------------------------------------------------------------------------


def test_it_grants_a_slot_at_its_start_to_its_user_with_keys_stack_devices_and_end(host, agent):
    alice = member()
    r = book(alice, host, indexes=(1,))

    reconcile(host)

    assert agent.called("grant") == [
        {
            "session": f"r{r.pk}",
            "user": "alice",
            "keys": [k.openssh() for k in alice.ssh_keys.all()],
            "stack": "cuda-12",
            "devices": [DeviceRef("nvidia", 1)],
            "end": int((NOW + timedelta(minutes=30)).timestamp()),
        }
    ]
    r = fresh(r)
    assert (r.state, r.granted_at, r.last_error) == (S.ACTIVE, NOW, "")
    assert [m.to for m in delivered()] == [[alice.email]]  # the "ready" mail, once


def test_a_hanging_mail_server_does_not_hold_up_the_pass(host, agent, hanging_smtp):  # noqa: F811
    """The pass only writes the notice; the sender meets the hanging server, on its own."""
    alice = member()
    r = book(alice, host, indexes=(1,))

    reconcile(host)

    assert fresh(r).state == S.ACTIVE
    assert hanging_smtp.accepted == 0  # the pass itself never called the mail server
    (notice,) = Notification.objects.filter(event="session.ready")
    assert (notice.target, notice.state) == (alice.email, Notification.State.PENDING)
    assert send_due() == {"retry": 1} and hanging_smtp.accepted == 1
    notice.refresh_from_db()
    assert "timed out" in notice.last_error


def test_it_grants_nothing_before_the_slot_starts(host, agent):
    r = book(member(), host, start=NOW + timedelta(minutes=10))

    reconcile(host)

    assert agent.called("grant") == []
    assert fresh(r).state == S.SCHEDULED


def test_it_does_not_grant_again_a_session_that_matches(host, agent, clock):
    r = book(member(), host)
    reconcile(host)
    clock.shift(timedelta(seconds=5))

    reconcile(host)

    assert len(agent.called("grant")) == 1
    assert fresh(r).state == S.ACTIVE


def test_it_grants_again_when_the_user_adds_a_key(host, agent, clock):
    alice = member()
    book(alice, host)
    reconcile(host)
    ssh_key_add(user=alice, key=parse_public_key(public_key()))

    reconcile(host)

    grants = agent.called("grant")
    assert len(grants) == 2
    assert sorted(grants[1]["keys"]) == sorted(k.openssh() for k in alice.ssh_keys.all())
    assert len(grants[1]["keys"]) == 2


def test_it_grants_again_with_the_new_end_when_the_slot_is_extended(host, agent, clock):
    alice = member()
    r = book(alice, host)
    reconcile(host)
    clock.shift(timedelta(minutes=5))
    reservation_extend(reservation=fresh(r), end=NOW + timedelta(minutes=60), actor=alice)

    reconcile(host)

    grants = agent.called("grant")
    assert [g["end"] for g in grants] == [
        int((NOW + timedelta(minutes=30)).timestamp()),
        int((NOW + timedelta(minutes=60)).timestamp()),
    ]
    assert agent.sessions[f"r{r.pk}"].end == int((NOW + timedelta(minutes=60)).timestamp())


def test_it_grants_again_a_session_that_died_on_the_host(host, agent):
    r = book(member(), host)
    reconcile(host)
    name = f"r{r.pk}"
    agent.sessions[name] = SessionState(**{**agent.sessions[name].__dict__, "alive": False})

    reconcile(host)

    assert len(agent.called("grant")) == 2
    assert agent.sessions[name].alive


def test_a_user_without_a_key_gets_no_session_and_is_told_why(host, agent):
    bob = UserFactory(username="bob", debian_member_source="staff")
    r = book(bob, host)

    reconcile(host)

    assert agent.called("grant") == []
    r = fresh(r)
    assert r.state == S.FAILED and "no SSH key" in r.last_error


def test_a_refused_grant_fails_the_reservation_and_is_retried(host, agent, clock):
    r = book(member(), host)
    agent.refuse("grant", "unknown_stack", "stack: not configured")

    reconcile(host)

    r = fresh(r)
    assert r.state == S.FAILED
    assert r.last_error == "Opening the session failed: unknown_stack: stack: not configured"
    assert r.granted_at is None

    agent.refusals.clear()
    clock.shift(timedelta(seconds=5))
    reconcile(host)

    r = fresh(r)
    assert (r.state, r.last_error) == (S.ACTIVE, "")
    assert len(agent.called("grant")) == 2


def test_a_drained_host_opens_no_new_session_but_keeps_a_running_one(host, agent, clock):
    running = book(member("alice"), host, indexes=(0,))
    reconcile(host)
    Host.objects.filter(pk=host.pk).update(
        state=Host.State.MAINTENANCE, drained_at=NOW, drain_reason="fan broken",
        drain_cause=Host.DrainCause.STAFF,
    )  # fmt: skip
    clock.shift(timedelta(minutes=1))
    late = book(member("bob"), host, indexes=(1,), start=NOW + timedelta(minutes=1))

    reconcile(host)

    assert [g["session"] for g in agent.called("grant")] == [f"r{running.pk}"]
    assert fresh(running).state == S.ACTIVE
    assert f"r{running.pk}" in agent.sessions
    late = fresh(late)
    assert late.state == S.FAILED and "not taking new sessions: fan broken" in late.last_error


# -- revokes --------------------------------------------------------------------------------------


def test_it_revokes_a_session_at_the_end_of_its_slot_and_ends_the_reservation(host, agent, clock):
    alice = member()
    Webhook.objects.create(user=alice, url="https://hooks.example.org/alice")
    r = book(alice, host, minutes=30)
    reconcile(host)
    clock.move_to(NOW + timedelta(minutes=30))

    reconcile(host)

    # (The user's own revoke after it comes from the pass's status, read before: idempotent.)
    assert agent.called("revoke")[0] == {"session": f"r{r.pk}"}
    assert agent.sessions == {}
    assert agent.users["alice"].locked  # the host locked its last session's user
    r = fresh(r)
    assert (r.state, r.revoked_at) == (S.ENDED, NOW + timedelta(minutes=30))
    # Told once, by the webhook only (no mail for an end that came as booked, unless asked).
    (closed,) = Notification.objects.filter(event="session.closed")
    assert (closed.channel, closed.data["session"]) == ("webhook", f"r{r.pk}")
    reconcile(host)
    assert Notification.objects.filter(event="session.closed").count() == 1


def test_it_keeps_a_reservation_open_while_its_revoke_fails(host, agent, clock):
    r = book(member(), host, minutes=30)
    reconcile(host)
    clock.move_to(NOW + timedelta(minutes=30))
    agent.refuse("revoke", "processes_remain", "user: 2 processes remain")

    reconcile(host)

    assert fresh(r).revoked_at is None  # not closed: its session is still on the host
    assert f"r{r.pk}" in agent.sessions

    agent.refusals.clear()
    clock.shift(timedelta(seconds=5))
    reconcile(host)
    assert fresh(r).state == S.ENDED and agent.sessions == {}


def test_it_withdraws_and_revokes_the_session_of_a_deactivated_user(host, agent, clock):
    alice = member()
    r = book(alice, host)
    reconcile(host)
    clock.shift(timedelta(minutes=5))
    alice.is_active = False
    alice.save()
    delivered().clear()

    reconcile(host)

    assert agent.called("revoke")[0] == {"session": f"r{r.pk}"}
    assert len(agent.called("grant")) == 1  # never granted again
    r = fresh(r)
    assert r.state == S.ENDED and r.end == NOW + timedelta(minutes=5)
    assert "deactivated" in delivered()[0].body


def test_it_closes_a_session_the_portal_does_not_know(host, agent):
    agent.sessions["r999"] = SessionState(
        "r999", "mallory", "cuda-12", (DeviceRef("nvidia", 0),), "x", None, alive=True
    )
    agent.users["mallory"] = AccountState("mallory", locked=False, processes=1)

    reconcile(host)

    assert {"session": "r999"} in agent.called("revoke")
    assert agent.sessions == {} and agent.users["mallory"].locked


def test_it_revokes_leftover_users_but_not_job_accounts_nor_current_users(host, agent):
    r = book(member("alice"), host)
    agent.users.update(
        {
            "bob": AccountState("bob", locked=True, processes=3),  # a process outlived him
            "carol": AccountState("carol", locked=False, processes=0),  # left unlocked
            "dave": AccountState("dave", locked=True, processes=0),  # done with: left alone
            "pj-7": AccountState("pj-7", locked=False, processes=2),  # a project's jobs
            "alice": AccountState("alice", locked=False, processes=1),  # her slot runs
        }
    )

    reconcile(host)

    assert sorted(c["user"] for c in agent.called("revoke")) == ["bob", "carol"]
    assert agent.users["pj-7"] == AccountState("pj-7", locked=False, processes=2)
    assert fresh(r).state == S.ACTIVE and not agent.users["alice"].locked


# -- the host away --------------------------------------------------------------------------------


def test_an_unreachable_host_fails_the_running_slots_and_says_why(host, agent):
    r = book(member(), host)
    agent.unreachable = True

    assert reconcile(host) == "gpu1: gpu1: connection refused"

    r = fresh(r)
    assert r.state == S.FAILED
    assert r.last_error == "The host cannot be reached: gpu1: connection refused"
    host.refresh_from_db()
    assert host.last_error == "gpu1: connection refused" and host.last_seen == NOW
    assert host.state == Host.State.ACTIVE  # not yet past the limit
    assert [c.verb for c in agent.calls] == ["status"]  # nothing else was tried


def test_a_host_unreachable_past_the_limit_is_drained_and_returns_when_it_answers(
    host, agent, clock, settings
):
    agent.unreachable = True
    clock.move_to(NOW + timedelta(seconds=settings.JOBS_HOST_FAILURE_SECONDS + 1))

    reconcile(host)

    host.refresh_from_db()
    assert (host.state, host.drain_cause) == (Host.State.MAINTENANCE, Host.DrainCause.UNREACHABLE)
    assert [p["code"] for p in host.health_problems] == ["unreachable"]

    agent.unreachable = False
    clock.shift(timedelta(seconds=5))
    reconcile(host)

    host.refresh_from_db()
    assert (host.state, host.drain_cause, host.health_problems) == (Host.State.ACTIVE, "", [])
    assert host.last_seen == NOW + timedelta(seconds=settings.JOBS_HOST_FAILURE_SECONDS + 6)


def test_a_host_that_answers_with_a_missing_device_stays_drained(host, agent, clock, settings):
    agent.unreachable = True
    clock.move_to(NOW + timedelta(seconds=settings.JOBS_HOST_FAILURE_SECONDS + 1))
    reconcile(host)
    agent.unreachable = False
    agent.reading = Telemetry((Sample("nvidia", 0, 0.0, 0, 40.0, 60.0),), errors=())

    reconcile(host)

    host.refresh_from_db()
    assert host.state == Host.State.MAINTENANCE
    assert host.drain_cause == Host.DrainCause.DEVICES  # now waits for staff


def test_a_refused_status_counts_as_the_host_failing(host, agent):
    r = book(member(), host)
    agent.refuse("status", "bad_config", "hostctl.json: unreadable")

    reconcile(host)

    assert fresh(r).last_error == "The host cannot be reached: bad_config: hostctl.json: unreadable"
    assert agent.called("grant") == []


# -- logs -----------------------------------------------------------------------------------------


def test_a_grant_is_logged_with_its_host_and_reservation(host, agent, caplog):
    r = book(member(), host)

    with caplog.at_level(logging.INFO, logger="portal.operations"):
        reconcile(host)

    granted = [rec for rec in caplog.records if "granted" in rec.getMessage()]
    assert len(granted) == 1
    assert (granted[0].host, granted[0].reservation) == ("gpu1", r.pk)


def test_a_revoke_is_logged_with_its_host_and_reservation(host, agent, clock, caplog):
    r = book(member(), host)
    reconcile(host)
    clock.move_to(NOW + timedelta(minutes=30))

    with caplog.at_level(logging.INFO, logger="portal.operations"):
        reconcile(host)

    revoked = [rec for rec in caplog.records if f"revoked r{r.pk}" in rec.getMessage()]
    closed = [rec for rec in caplog.records if "closed" in rec.getMessage()]
    assert [(x.host, x.reservation) for x in revoked + closed] == [("gpu1", r.pk)] * 2
