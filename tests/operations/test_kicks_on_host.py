"""Kicks with a real Celery worker with beat on the test host: the session opens at the start and
closes at the end of its slot, though beat ticks only every 10 seconds.

The slot starts and ends between two ticks, so only the kicks the tick before sent (kicks.py)
can open and close it on time; the worker's log says which task did.
"""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from portal.booking.models import Allocation, Reservation
from tests.helpers import wait_for
from tests.operations.conftest import state_of
from tests.operations.harness import Worker

pytestmark = [pytest.mark.host, pytest.mark.django_db(transaction=True)]

S = Reservation.State
TICK = 10
KICK, TASKS = "reconcile_host_at", ("reconcile_host_at", "reconcile_host")
TICK_DONE = re.compile(r"Task portal\.operations\.tasks\.reconcile\[[^\]]+\] succeeded")


def returned(worker: Worker, task: str, line: str) -> bool:
    """Whether a task of tasks.py returned `line` (or a longer one) in the worker's log."""
    done = rf"Task portal\.operations\.tasks\.{task}\[[^\]]+\] succeeded in [^:]+: '"
    return bool(re.search(done + re.escape(line), worker.log))


def test_it_opens_and_closes_a_session_at_the_instants_of_its_slot(
    registered, person, tmp_path, portal_key
):
    ida = person("ida")
    worker = Worker(tmp_path, portal_key)
    worker.env["PORTAL_RECONCILE_SECONDS"] = str(TICK)
    worker.start()
    try:
        wait_for(lambda: TICK_DONE.search(worker.log), timeout=60, what="the first tick")
        # Both instants fall between the next tick and the one after; off the booking grid, as
        # in the bench: the loop is tested, not the booking rules.
        start = timezone.now() + timedelta(seconds=TICK + 4)
        end = start + timedelta(seconds=3)
        reservation = Reservation.objects.create(
            user=ida.user, host=registered, stack=registered.stacks.get(), start=start, end=end
        )
        device = registered.accelerators.get(index=0)
        Allocation.objects.create(accelerator=device, reservation=reservation, start=start, end=end)
        wait_for(lambda: state_of(reservation) == S.ACTIVE, timeout=60, what="the session")
        wait_for(lambda: state_of(reservation) == S.ENDED, timeout=30, what="the revoke")
        r = Reservation.objects.get(pk=reservation.pk)
        # The reservation is closed in the middle of the pass; its line comes at the end.
        revoked = f"testhost: revoked {r.session_name}"
        wait_for(lambda: any(returned(worker, t, revoked) for t in TASKS), timeout=30)
        log = worker.log
    finally:
        worker.kill()

    assert r.granted_at is not None and r.revoked_at is not None
    assert timedelta(0) <= r.granted_at - start < timedelta(seconds=2), log[-4000:]
    assert timedelta(0) <= r.revoked_at - end < timedelta(seconds=2), log[-4000:]
    # Kicks did it, not the ticks' passes (reconcile_host).
    assert returned(worker, KICK, f"testhost: granted {r.session_name}"), log[-4000:]
    assert returned(worker, KICK, revoked), log[-4000:]
    assert ida.ssh("true").returncode != 0
