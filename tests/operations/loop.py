"""What the fake-agent tests of the loop share (test_loop_decisions, test_job_pass, test_kicks):
their instant, the host gpu1 with two NVIDIA devices and cuda-12, a healthy reading, a member
with a key."""

from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from portal.accounts.models import User
from portal.accounts.services import ssh_key_add
from portal.accounts.sshkeys import parse_public_key
from portal.booking.models import BookingPolicy
from portal.inventory.models import Host
from provisioning.client import Sample, Telemetry
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory
from tests.operations.fakeagent import FakeAgent

NOW = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def gpu_host() -> Host:
    """gpu1, seen at NOW, its host key pinned: devices 0 and 1 (NVIDIA), the cuda-12 stack."""
    host = HostFactory.create(name="gpu1", host_keys="ssh-ed25519 AAAA", last_seen=NOW)
    for index in (0, 1):
        AcceleratorFactory(host=host, vendor="nvidia", index=index)
    host.stacks.add(DriverStackFactory.create(name="cuda-12"))
    return host


def minute_grid() -> None:
    """Bookings on a grid of one minute, at least a minute long: slots close to NOW."""
    policy = BookingPolicy.current()
    policy.granularity_minutes = policy.min_minutes = 1
    policy.save()


def healthy(fake: FakeAgent) -> FakeAgent:
    """The agent reads both devices as the inventory has them."""
    fake.reading = Telemetry(
        tuple(Sample("nvidia", i, 0.0, 0, 40.0, 60.0) for i in (0, 1)), errors=()
    )
    return fake


def public_key() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def member(username: str = "alice") -> User:
    user = UserFactory.create(username=username, debian_member_source="staff")
    ssh_key_add(user=user, key=parse_public_key(public_key()))
    return user
