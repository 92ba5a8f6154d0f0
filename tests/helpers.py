"""Constants and functions the tests share (fixtures live in tests/conftest.py)."""

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

T = TypeVar("T")

# The tests' "now": a Monday, 10:07 in Berlin (CET, UTC+1), off the booking grid of 15 minutes.
# The `frozen` fixture (tests/conftest.py) stops the clock here.
NOW = datetime(2026, 11, 23, 9, 7, tzinfo=UTC)


def wait_for(
    predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def delivered() -> list:
    """The mails sent so far (Django's test outbox), after the notification sender has sent
    everything due: what a user would have in their mailbox once the sender's task ran."""
    from django.core import mail

    from portal.notifications.outbox import send_due

    send_due()
    return mail.outbox


def mails_to(box, *addresses: str) -> list:
    """The mails in `box` (or delivered()) sent to any of `addresses`, in order."""
    return [m for m in box if set(m.to) & set(addresses)]
