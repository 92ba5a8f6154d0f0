"""The reconcile loop's bookkeeping in the database: the per-host lease, which hosts it visits,
state transitions made once, finished reservations closed once."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from portal.booking.models import Reservation
from portal.inventory.models import Host
from portal.operations import services
from tests.factories import HostFactory, UserFactory


def test_it_lets_one_worker_claim_a_host(db):
    host = HostFactory()
    now = timezone.now()

    assert services._claim_lease(host.pk, "worker-a", now)
    assert not services._claim_lease(host.pk, "worker-b", now)


def test_it_hands_a_host_to_another_worker_when_the_lease_runs_out(db, settings):
    host = HostFactory()
    now = timezone.now()
    services._claim_lease(host.pk, "worker-a", now)  # worker-a dies holding it

    later = now + timedelta(seconds=settings.PORTAL_LEASE_SECONDS)
    assert services._claim_lease(host.pk, "worker-b", later)


def test_it_releases_only_the_owners_lease(db):
    host = HostFactory()
    now = timezone.now()
    services._claim_lease(host.pk, "worker-a", now)

    services._release_lease(host.pk, "worker-b")
    assert not services._claim_lease(host.pk, "worker-c", now)
    services._release_lease(host.pk, "worker-a")
    assert services._claim_lease(host.pk, "worker-c", now)


@pytest.mark.django_db(transaction=True)
def test_it_gives_a_host_to_exactly_one_of_many_concurrent_workers():
    host = HostFactory()
    now = timezone.now()

    def claim(i):
        try:
            return services._claim_lease(host.pk, f"worker-{i}", now)
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        wins = list(pool.map(claim, range(16)))
    assert wins.count(True) == 1
    assert Host.objects.get(pk=host.pk).lease_owner == f"worker-{wins.index(True)}"


def test_it_reports_a_host_held_by_another_worker_without_touching_it(db):
    host = HostFactory(host_keys="ssh-ed25519 AAAA")
    services._claim_lease(host.pk, "worker-a", timezone.now())

    assert services.reconcile_host(host.pk) == "another worker holds this host"


def test_it_reconciles_only_registered_hosts_that_are_not_retired(db):
    registered = HostFactory(host_keys="ssh-ed25519 AAAA")
    HostFactory()  # no pinned key: the loop cannot talk to it safely
    HostFactory(host_keys="ssh-ed25519 AAAA", state=Host.State.RETIRED)
    local = HostFactory(connection=Host.Connection.LOCAL)

    assert {h.pk for h in services.hosts_to_reconcile()} == {registered.pk, local.pk}


def test_it_makes_a_state_transition_once(db):
    from tests.factories import AcceleratorFactory, DriverStackFactory

    acc = AcceleratorFactory()
    r = Reservation.objects.create(
        user=UserFactory(),
        host=acc.host,
        stack=DriverStackFactory(),
        start=timezone.now(),
        end=timezone.now() + timedelta(hours=1),
    )
    S = Reservation.State

    assert Reservation.move(r.pk, S.PROVISIONING, from_=(S.SCHEDULED,))
    assert not Reservation.move(r.pk, S.PROVISIONING, from_=(S.SCHEDULED,))
    assert Reservation.objects.get(pk=r.pk).state == S.PROVISIONING


def test_it_closes_a_finished_reservation_once(db):
    from portal.operations.services import _Pass
    from tests.factories import AcceleratorFactory, DriverStackFactory

    acc = AcceleratorFactory()
    start = timezone.now() - timedelta(hours=2)
    r = Reservation.objects.create(
        user=UserFactory(), host=acc.host, stack=DriverStackFactory(), start=start,
        end=start + timedelta(hours=1), state=Reservation.State.FAILED,
    )  # fmt: skip

    _Pass(acc.host, client=None)._close_finished(still_on_host=set())
    first = Reservation.objects.get(pk=r.pk).revoked_at
    _Pass(acc.host, client=None)._close_finished(still_on_host=set())

    assert first is not None
    assert Reservation.objects.get(pk=r.pk).revoked_at == first  # not touched again
