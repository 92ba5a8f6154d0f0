"""Two people registering the same key at once: exactly one wins, the other is told why."""

import threading

import pytest
from django.db import connection

from portal.accounts import services
from portal.accounts.models import SSHKey
from portal.accounts.sshkeys import parse_public_key
from tests.factories import UserFactory
from tests.keys import ed25519_line

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_it_registers_a_key_once_under_concurrent_requests():
    users = [UserFactory() for _ in range(8)]
    key = parse_public_key(ed25519_line())
    barrier = threading.Barrier(len(users))
    outcomes = []

    def register(user):
        try:
            barrier.wait()
            services.ssh_key_add(user=user, key=key)
            outcomes.append("added")
        except services.KeyConflict as exc:
            outcomes.append(str(exc))
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=register, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert outcomes.count("added") == 1
    assert all("registered to another account" in o for o in outcomes if o != "added")
    assert SSHKey.objects.filter(fingerprint=key.fingerprint).count() == 1
