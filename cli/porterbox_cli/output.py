"""Output for people (aligned tables, local times with their zone) and for scripts (--json)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import click


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], empty: str = "") -> None:
    if not rows:
        if empty:
            click.echo(empty, err=True)
        return
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def fields(pairs: Sequence[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in pairs)
    for name, value in pairs:
        click.echo(f"{name + ':':<{width + 1}} {'' if value is None else value}")


def parse_api_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def local(text: str | None) -> str:
    """An API time in the local zone, with the zone's name: 2026-12-03 11:00 CET."""
    moment = parse_api_time(text)
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M %Z")


def now() -> datetime:
    return datetime.now(UTC)


_DURATION = re.compile(r"^\s*(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*$")


def parse_duration(text: str) -> timedelta:
    """2h, 30m, 1d, 1h30m; a bare number is hours (as the portal's forms take them)."""
    try:
        return timedelta(hours=float(text))
    except ValueError:
        pass
    match = _DURATION.match(text.lower())
    if not match or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration: give 2h, 30m, 1d or 1h30m")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def parse_moment(text: str) -> datetime:
    """ISO 8601; without a UTC offset it is local time (the user's zone, never the portal's);
    `now` is now. The answer has an offset, as the API asks."""
    if text.strip().lower() == "now":
        return now()
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give 2026-12-03T14:00 (local time) or add an offset"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local
    return moment


def iso(moment: datetime) -> str:
    return moment.isoformat()


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Moment(click.ParamType):
    name = "time"

    def convert(self, value, param, ctx):
        if isinstance(value, datetime):
            return value
        try:
            return parse_moment(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
