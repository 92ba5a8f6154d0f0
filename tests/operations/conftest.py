"""A registered test host with the agent installed, the portal's key, users who log in with ssh.

The host is tests/testhost.py: this machine's system in its own namespaces, with a real sshd,
real schroot sessions, and device nodes standing in for two NVIDIA GPUs, bootstrapped by
ansible/site.yml (tests/operations/harness.py prepares it).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from portal.accounts.services import ssh_key_add
from portal.accounts.sshkeys import parse_public_key
from portal.booking.availability import floor_to
from portal.booking.models import BookingPolicy, Reservation
from portal.booking.services import reservation_create
from portal.inventory.models import Host
from portal.operations.agents import reset_transport
from tests.ansible.bootstrap import missing as bootstrap_missing
from tests.conftest import require
from tests.factories import DriverStackFactory, UserFactory
from tests.operations.harness import Person, host_fingerprint, prepare_host
from tests.provisioning.sshd import keygen
from tests.testhost import TestHost


# One host for the whole package: bootstrapping it with Ansible takes most of a minute.
@pytest.fixture(scope="package")
def keys_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="package")
def portal_key(keys_dir):
    return keygen(keys_dir / "portal_ed25519")


@pytest.fixture(scope="package")
def testhost(tmp_path_factory, portal_key):
    missing = bootstrap_missing()
    require(not missing, f"{', '.join(missing)} (for the test host)")
    host = TestHost(["nvidia0", "nvidia1", "nvidiactl"]).start(tmp_path_factory.mktemp("host"))
    try:
        yield prepare_host(host, portal_key.with_suffix(".pub"), tmp_path_factory.mktemp("ansible"))
    finally:
        host.stop()


@pytest.fixture
def portal_settings(settings, portal_key):
    settings.PORTAL_SSH_KEY_FILE = str(portal_key)
    settings.PORTAL_SSH_TIMEOUTS = {
        "connect_timeout": 5,
        "banner_timeout": 5,
        "auth_timeout": 5,
        "command_timeout": 30,
        "retries": 1,
        "backoff": 0.1,
    }
    reset_transport()
    yield settings
    reset_transport()


@pytest.fixture
def registered(testhost, portal_settings):
    """The test host as staff register it: keys confirmed by fingerprint, inventory pulled."""
    DriverStackFactory(name="cuda-12")
    call_command(
        "register_host",
        "testhost",
        "127.0.0.1",
        port=testhost.port,
        fingerprint=host_fingerprint(testhost),
    )
    policy = BookingPolicy.current()
    policy.granularity_minutes = policy.min_minutes = 1
    policy.save()
    return Host.objects.get(name="testhost")


@pytest.fixture
def person(testhost, keys_dir):
    known = keys_dir / "known_hosts"
    known.write_text(testhost.known_hosts)

    def make(username: str) -> Person:
        user = UserFactory.create(username=username, debian_member_source="staff")
        key = keygen(keys_dir / f"{username}-{uuid.uuid4().hex[:6]}")
        ssh_key_add(user=user, key=parse_public_key(key.with_suffix(".pub").read_text()))
        return Person(user, key, known, testhost.port)

    return make


def book_now(person: Person, host: Host, indexes: list[int], minutes: int = 30) -> Reservation:
    """A slot that has started: from this minute on, as a user books it."""
    now = timezone.now()
    start = floor_to(now, timedelta(minutes=1))
    return reservation_create(
        user=person.user,
        host=host,
        stack=host.stacks.get(name="cuda-12"),
        start=start,
        end=start + timedelta(minutes=minutes),
        accelerators=list(host.accelerators.filter(index__in=indexes)),
        now=now,
    )


def state_of(reservation: Reservation) -> str:
    return Reservation.objects.get(pk=reservation.pk).state


@pytest.fixture
def fake_agents(monkeypatch):
    """Fake agents where the loop obtains its clients: every host's calls go to a FakeAgent
    (tests/operations/fakeagent.py), `fake_agents[host]`."""
    from portal.operations import agents
    from tests.operations.fakeagent import FakeAgents

    fakes = FakeAgents()
    monkeypatch.setattr(agents, "client_for", fakes.client_for)
    return fakes
