import os

import pytest
import time_machine
from django.db import connection

from tests.factories import UserFactory
from tests.helpers import NOW

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(available: bool, what: str) -> None:
    """Skip a test whose service is missing; under CI=true a missing service is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is not available, and CI must run every integration test")
    pytest.skip(f"{what} is not available")


@pytest.fixture(autouse=True)
def _needs_postgres(request):
    if request.node.get_closest_marker("postgres"):
        require(connection.vendor == "postgresql", "PostgreSQL (set DATABASE_URL=postgres://...)")


@pytest.fixture(autouse=True)
def _clear_cache():
    # Rate limits live in the cache; one test's failed logins must not throttle the next.
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def debian_member(db):
    return UserFactory(debian_member_source="staff")


@pytest.fixture
def staff(db):
    return UserFactory(is_staff=True, is_superuser=True, debian_member_source="staff")


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hasher():
    # Factories hash a password for every user; PBKDF2's 1,000,000 rounds would cost most of
    # a factory-heavy test's time. Production hashing is untouched (tests/test_settings.py).
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def frozen():
    """The clock stopped at tests.helpers.NOW; a module takes it with
    `pytestmark = pytest.mark.usefixtures("frozen")`."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


class _Delivered:
    """pytest-django's mailoutbox, read after the notification sender ran (tests.helpers)."""

    def __init__(self, box: list):
        self._box = box

    def _sync(self) -> list:
        from tests.helpers import delivered

        delivered()
        return self._box

    def __iter__(self):
        return iter(self._sync())

    def __len__(self):
        return len(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def __getitem__(self, i):
        return self._sync()[i]

    def __eq__(self, other):
        return self._sync() == other

    def clear(self) -> None:
        self._sync().clear()


@pytest.fixture
def mailoutbox(mailoutbox):
    """Mail goes out through the outbox (portal/notifications): what was delivered by now."""
    return _Delivered(mailoutbox)
