"""Kicks (portal/operations/kicks.py): each tick sends a host's pass with an ETA at the instant
one of its sessions opens or closes, once per host and instant; the kicked pass runs at that
instant, not before, once the host's lease is free; and a lost kick changes nothing, since the
ticks converge the host anyway.

What a tick sends is read as the broker would get it: the real Celery app publishes to kombu's
in-memory transport, and `before_task_publish` records each message's task, arguments, ETA and
expiry.
"""

import time
from datetime import datetime, timedelta

import pytest
import time_machine
from celery.signals import before_task_publish
from django.utils import timezone

from portal.booking.models import Allocation, Reservation
from portal.booking.services import reservation_create, reservation_shorten
from portal.celery import app
from portal.inventory.models import Host
from portal.operations import kicks, services, tasks
from tests.factories import AcceleratorFactory, HostFactory
from tests.operations.loop import NOW, gpu_host, healthy, member, minute_grid

pytestmark = pytest.mark.django_db
S = Reservation.State
START = NOW + timedelta(minutes=1)
KICK = "portal.operations.tasks.reconcile_host_at"
PASS = "portal.operations.tasks.reconcile_host"


@pytest.fixture
def sent(settings):
    """The messages the app publishes, on an in-memory broker: [{task, args, eta, expires}]."""
    settings.PORTAL_RECONCILE_SECONDS = 5  # a tick looks 10 s ahead
    saved = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url, app.conf.broker_transport_options = "memory://", {}
    _forget_connections()
    messages: list[dict] = []

    def record(headers, body, **_kwargs):
        messages.append({
            "task": headers["task"], "args": tuple(body[0]),
            "eta": headers["eta"], "expires": headers["expires"],
        })  # fmt: skip

    before_task_publish.connect(record, weak=False)
    try:
        yield messages
    finally:
        before_task_publish.disconnect(record)
        _forget_connections()
        app.conf.broker_url, app.conf.broker_transport_options = saved


def _forget_connections() -> None:
    """Let the app connect anew to the broker its conf names (its pools are made on first use)."""
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def host(db):
    minute_grid()
    return gpu_host()


@pytest.fixture
def agent(fake_agents, host):
    """The host's agent, reading both devices as the inventory has them (a healthy host)."""
    return healthy(fake_agents[host])


def book(host, start=START, minutes=30, indexes=(1,), user=None) -> Reservation:
    return reservation_create(
        user=user or member(),
        host=host,
        stack=host.stacks.get(name="cuda-12"),
        start=start,
        end=start + timedelta(minutes=minutes),
        accelerators=list(host.accelerators.filter(index__in=indexes)),
        now=timezone.now(),
    )


def kicks_in(messages) -> list[tuple]:
    return [(m["args"], m["eta"], m["expires"]) for m in messages if m["task"] == KICK]


def kick(host, at: datetime) -> tuple:
    """The kick for `at`: sent LEAD early (the pass reads the host meanwhile), expiring when
    ticks have done its work."""
    eta, expires = at - kicks.LEAD, at + timedelta(seconds=15)
    return (host.pk, at.isoformat()), eta.isoformat(), expires.isoformat()


def run(messages, task: str) -> list[str]:
    """Run the messages of one task as the worker would, in the order they were sent."""
    return [app.tasks[m["task"]](*m["args"]) for m in messages if m["task"] == task]


# -- what a tick sends ----------------------------------------------------------------------------


def test_it_kicks_the_host_at_the_exact_start_of_a_slot(sent, clock, host):
    book(host)
    clock.move_to(START - timedelta(seconds=7))

    tasks.reconcile()

    assert kicks_in(sent) == [kick(host, START)]
    assert [m["args"] for m in sent if m["task"] == PASS] == [(host.pk,)]  # the tick as ever


def test_it_kicks_the_host_at_the_exact_end_of_a_slot(sent, clock, host):
    r = book(host, start=NOW, minutes=5)
    end = NOW + timedelta(minutes=5)
    clock.move_to(end - timedelta(seconds=3))

    tasks.reconcile()

    assert kicks_in(sent) == [kick(host, end)]
    assert r.end == end


def test_it_kicks_at_the_new_end_of_a_shortened_slot(sent, clock, host):
    r = book(host, start=NOW, minutes=30)
    clock.move_to(NOW + timedelta(minutes=2))
    end = NOW + timedelta(minutes=3)
    reservation_shorten(reservation=r, end=end, actor=r.user, now=timezone.now())
    clock.move_to(NOW + timedelta(minutes=3) - timedelta(seconds=9))

    tasks.reconcile()

    assert kicks_in(sent) == [kick(host, NOW + timedelta(minutes=3))]


def test_it_sends_one_kick_per_host_and_instant_however_many_ticks_see_it(sent, clock, host):
    book(host, indexes=(0,))
    book(host, indexes=(1,), user=member("bob"))  # the same start on the same host

    for seconds_before in (9, 6, 3, 1):
        clock.move_to(START - timedelta(seconds=seconds_before))
        tasks.reconcile()

    assert kicks_in(sent) == [kick(host, START)]
    assert len([m for m in sent if m["task"] == PASS]) == 4


def test_it_kicks_each_host_at_each_of_its_instants(sent, clock, host):
    other = HostFactory(name="gpu2", host_keys="ssh-ed25519 AAAA")
    AcceleratorFactory(host=other, vendor="nvidia", index=1)
    other.stacks.add(host.stacks.get())
    first = book(host, start=NOW, minutes=1)  # ends at START
    book(host, indexes=(0,), user=member("bob"))
    book(other, user=member("carol"))
    clock.move_to(START - timedelta(seconds=5))

    tasks.reconcile()

    assert sorted(kicks_in(sent)) == sorted([kick(host, START), kick(other, START)])
    assert first.end == START  # one kick for the end of one slot and the start of another


def test_it_sends_no_kick_beyond_the_look_ahead_or_for_instants_gone_by(sent, clock, host):
    book(host, start=NOW, minutes=2)
    clock.move_to(START - timedelta(seconds=11))  # the end at START + 1 min is further still

    tasks.reconcile()
    clock.move_to(START + timedelta(seconds=1))  # the start has passed: the tick's pass does it
    tasks.reconcile()

    assert kicks_in(sent) == []


def test_it_sends_no_kick_for_a_slot_that_will_not_open(sent, clock, host):
    r = book(host)
    Reservation.objects.filter(pk=r.pk).update(state=S.CANCELLED)
    retired = HostFactory(name="gpu3", host_keys="")  # no pinned key: never visited
    AcceleratorFactory(host=retired, vendor="nvidia", index=1)
    retired.stacks.add(host.stacks.get())
    book(retired, user=member("bob"))
    clock.move_to(START - timedelta(seconds=5))

    tasks.reconcile()

    assert kicks_in(sent) == []


# -- the kicked pass ------------------------------------------------------------------------------


def test_it_opens_the_session_on_the_next_tick_when_the_kick_is_lost(sent, clock, host, agent):
    r = book(host)
    clock.move_to(START - timedelta(seconds=2))
    tasks.reconcile()
    run(sent, PASS)  # too early for the session
    assert kicks_in(sent) == [kick(host, START)]
    sent.clear()  # the kick is lost: the worker died with it

    clock.move_to(START + timedelta(seconds=3))
    tasks.reconcile()
    run(sent, PASS)

    assert agent.called("grant")[0]["session"] == f"r{r.pk}"
    assert Reservation.objects.get(pk=r.pk).state == S.ACTIVE


def test_it_opens_the_session_by_the_kick_at_the_start(sent, clock, host, agent):
    r = book(host)
    clock.move_to(START - timedelta(seconds=2))
    tasks.reconcile()
    run(sent, PASS)
    assert agent.called("grant") == []

    clock.move_to(START)  # the ETA: the worker runs the kick now
    assert run(sent, KICK) == [f"gpu1: granted r{r.pk}"]
    assert Reservation.objects.get(pk=r.pk).granted_at == START


def test_it_closes_the_session_by_the_kick_at_the_end(sent, clock, host, agent):
    r = book(host, start=NOW, minutes=1)
    services.reconcile_host(host.pk)
    clock.move_to(START - timedelta(seconds=4))
    tasks.reconcile()

    clock.move_to(START)
    assert run(sent, KICK)[0].startswith(f"gpu1: revoked r{r.pk}")
    assert Reservation.objects.get(pk=r.pk).state == S.ENDED


def test_it_reads_the_host_before_the_instant_and_decides_at_the_instant(db, host, agent):
    user = member()
    start = timezone.now() + timedelta(seconds=0.4)  # off the booking grid, as in the bench
    r = Reservation.objects.create(
        user=user, host=host, stack=host.stacks.get(), start=start, end=start + timedelta(hours=1)
    )
    device = host.accelerators.get(index=1)
    Allocation.objects.create(accelerator=device, reservation=r, start=r.start, end=r.end)

    assert kicks.run_kick(host.pk, start) == f"gpu1: granted r{r.pk}"
    assert [c.verb for c in agent.calls][:2] == ["status", "grant"]
    assert Reservation.objects.get(pk=r.pk).granted_at >= start


def test_it_waits_for_the_instant_of_a_kick_come_early(db, host, fake_agents):
    at = timezone.now() + timedelta(seconds=0.3) + kicks.LEAD

    kicks.run_kick(host.pk, at)

    assert timezone.now() >= at
    assert fake_agents[host].called("status") == [{}]
    assert Host.objects.get(pk=host.pk).last_seen >= at  # the pass's own time


def test_it_leaves_a_kick_far_too_early_to_the_ticks(db, settings, host, fake_agents):
    settings.PORTAL_RECONCILE_SECONDS = 1
    at = timezone.now() + timedelta(seconds=30)

    assert "left to the ticks" in kicks.run_kick(host.pk, at)
    assert fake_agents[host].calls == []


def test_it_waits_for_a_host_held_by_a_pass_begun_before_the_instant(
    db, settings, host, fake_agents
):
    at = timezone.now()
    # Claimed a while ago by a worker that is gone: the lease runs out in 0.3 s.
    lease = timedelta(seconds=settings.PORTAL_LEASE_SECONDS)
    assert services._claim_lease(host.pk, "earlier-pass", at - lease + timedelta(seconds=0.3))

    assert kicks.run_kick(host.pk, at) == "gpu1: in line"
    assert fake_agents[host].called("status") == [{}]


def test_it_leaves_the_host_to_a_pass_begun_at_the_instant(db, host, fake_agents):
    at = timezone.now()
    assert services._claim_lease(host.pk, "later-pass", at)

    assert kicks.run_kick(host.pk, at).startswith("the pass that holds the host began after")
    assert fake_agents[host].calls == []


def test_it_gives_up_on_a_host_held_longer_than_a_tick(db, settings, host, fake_agents):
    settings.PORTAL_RECONCILE_SECONDS = 1
    at = timezone.now()
    assert services._claim_lease(host.pk, "stuck-pass", at - timedelta(seconds=1))
    began = time.monotonic()

    assert "left to the ticks" in kicks.run_kick(host.pk, at)
    assert 1 <= time.monotonic() - began < 3
    assert fake_agents[host].calls == []
