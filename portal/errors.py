"""What a service refuses, without HTTP; every app may import this module (it imports none).

A service raises a `ServiceError` (code, message, field); the kind of refusal is its class:
`ServiceError` itself for a request to fix, `Conflict` for one that clashes with the current
state, `Busy` for a moment's contention. Each side maps them in one place: the API in
portal/api/errors.py (status from the kind, body `{code, message, errors?}`), the pages in
portal/pages.py (the message on the form's field, or as a message).
"""

from django.db import OperationalError


class ServiceError(Exception):
    """A request a service refuses: `code` is for machines, `message` for people, `field` the
    input to fix (None: the request as a whole)."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


class Conflict(ServiceError):
    """The request clashes with the current state: a booking in the way, a finished job, a key
    already registered. Trying again unchanged does not help."""


class Busy(ServiceError):
    """Locks were not had in time, retries included: nothing was written; try again soon."""

    def __init__(self, message: str = "The booking system is busy; please try again in a moment."):
        super().__init__("busy", message)


# A lock or serialization failure: the transaction wrote nothing and may run again. PostgreSQL:
# serialization_failure, deadlock_detected, lock_not_available (a lock_timeout or NOWAIT).
LOCK_SQLSTATES = {"40001", "40P01", "55P03"}
# SQLite: SQLITE_BUSY ("database is locked") and SQLITE_LOCKED ("database table is locked").
SQLITE_LOCK_MESSAGES = ("database is locked", "database table is locked")


def is_lock_failure(exc: OperationalError) -> bool:
    """Whether `exc` is a lock or serialization failure, worth a retry; not a lost connection,
    a schema error or anything else (those must reach the log, not become "busy")."""
    for error in (exc, exc.__cause__):  # Django's error, and the driver's it was raised from
        code = getattr(error, "pgcode", None) or getattr(error, "sqlstate", None)
        if code:
            return code in LOCK_SQLSTATES
    message = str(exc.__cause__ or exc)
    return message.startswith(SQLITE_LOCK_MESSAGES)
