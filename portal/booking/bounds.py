"""The dates a request may name: wide enough for any booking and its history, narrow enough
that the arithmetic done on them (a week view, a search window, a slot's end, a conversion to
UTC) never leaves Python's datetime range, which answered 500 at years 1 and 9999."""

from datetime import date, datetime

from django.core.exceptions import ValidationError

EARLIEST = date(2000, 1, 1)
LATEST = date(2999, 12, 31)
MESSAGE = f"Choose a date from {EARLIEST} to {LATEST}."


def in_bounds(day: date) -> bool:
    return EARLIEST <= day <= LATEST


def validate_moment(value: date | datetime) -> None:
    """A form field's validator: the date (in the zone it was given in) within the bounds."""
    day = value.date() if isinstance(value, datetime) else value
    if not in_bounds(day):
        raise ValidationError(MESSAGE, code="out_of_range")
