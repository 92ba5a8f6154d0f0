"""Structured logs of the reconcile loop: each decision names its host, reservation and job.

The loop logs with `extra={"host": ..., "reservation": ..., "job": ...}` (`context`), so a
record can be filtered by any of them (Read the Docs binds the same to its build logs). The
`Context` filter, on the console handler in settings.LOGGING, gives every record a `context`
attribute, " host=h1 reservation=42" or "" for records of the rest of the portal, which the
format shows.
"""

from __future__ import annotations

import logging

FIELDS = ("host", "reservation", "job")


def context(host=None, *, reservation=None, job=None) -> dict:
    """The `extra` of a loop record: names and primary keys, never objects."""
    return {
        "host": getattr(host, "name", host),
        "reservation": getattr(reservation, "pk", reservation),
        "job": getattr(job, "pk", job),
    }


class Context(logging.Filter):
    """Give each record the loop's fields (None where it has none) and a `context` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        for name in FIELDS:
            value = getattr(record, name, None)
            setattr(record, name, value)
            if value is not None:
                parts.append(f"{name}={value}")
        record.context = "".join(f" {p}" for p in parts)
        return True
