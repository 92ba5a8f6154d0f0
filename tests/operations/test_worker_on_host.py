"""The loop as it runs in production: a real Celery worker with beat, on the real broker.

Nothing calls the reconcile service by hand here: beat ticks every second, the worker talks to
the test host over SSH, and the test watches the database and logs in like a user would.
"""

import pytest

from portal.booking.models import Reservation
from tests.helpers import wait_for
from tests.operations.conftest import book_now, state_of
from tests.operations.harness import Worker

pytestmark = [pytest.mark.host, pytest.mark.django_db(transaction=True)]

S = Reservation.State


@pytest.fixture
def worker(tmp_path, portal_key):
    workers = []

    def start(**kwargs) -> Worker:
        w = Worker(tmp_path, portal_key, **kwargs).start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.kill()


def test_it_gives_a_login_within_seconds_of_the_start(registered, person, worker):
    frank = person("frank")
    w = worker()
    reservation = book_now(frank, registered, [0])

    wait_for(lambda: state_of(reservation) == S.ACTIVE, timeout=60, what="the session")
    login = frank.ssh("cat /etc/debian_chroot; echo $CUDA_VISIBLE_DEVICES")
    assert login.stdout.split() == ["cuda-12", "0"], (login.stderr, w.log[-3000:])
    wait_for(lambda: "is ready" in w.mails(), timeout=10, what="the ready mail")
    assert f"To: {frank.user.email}" in w.mails()


def test_it_converges_after_the_worker_is_killed_in_the_middle_of_a_grant(
    registered, person, worker, testhost
):
    # A slow useradd on the host keeps the grant in flight long enough to kill the worker.
    testhost.run("mv", "/usr/sbin/useradd", "/usr/sbin/useradd.real")
    testhost.write_file(
        "/usr/sbin/useradd", '#!/bin/sh\nsleep 3\nexec /usr/sbin/useradd.real "$@"\n', 0o755
    )
    try:
        grace = person("grace")
        first = worker(lease_seconds=30)
        reservation = book_now(grace, registered, [1])
        wait_for(lambda: state_of(reservation) == S.PROVISIONING, timeout=60, what="the grant")
        first.kill()
        assert state_of(reservation) == S.PROVISIONING  # it died before it could say more

        second = worker(lease_seconds=30)  # the replacement waits for the dead worker's lease
        try:
            wait_for(lambda: state_of(reservation) == S.ACTIVE, timeout=150, what="convergence")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the worker's log ends:\n{second.log[-4000:]}") from None
    finally:
        testhost.run("mv", "/usr/sbin/useradd.real", "/usr/sbin/useradd")
    login = grace.ssh("echo $CUDA_VISIBLE_DEVICES")
    assert login.stdout.split() == ["1"], login.stderr
