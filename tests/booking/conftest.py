import pytest

from portal.booking.models import BookingPolicy
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory


@pytest.fixture
def host(db):
    host = HostFactory(name="gpu1")
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(4):
        AcceleratorFactory(host=host, index=i)
    return host


@pytest.fixture
def stack(host):
    return host.stacks.get()


@pytest.fixture
def member(db):
    return UserFactory(debian_member_source="staff")


@pytest.fixture
def policy(db):
    return BookingPolicy.current()
