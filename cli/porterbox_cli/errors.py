"""Exit codes that scripts can rely on, and the one error the commands raise.

0  done
1  the portal refused the request (a 4xx answer other than 401), or a bad value
2  wrong usage of the command (click's own)
3  not logged in, or the token is refused (401)
4  the portal cannot be reached, or it failed (5xx)
"""

from __future__ import annotations

import click

OK = 0
REFUSED = 1
USAGE = 2
NOT_LOGGED_IN = 3
UNREACHABLE = 4


class CliError(click.ClickException):
    """Printed as `porterbox: error: <message> (<code>)` on stderr; exits with `exit_code`."""

    def __init__(
        self,
        message: str,
        code: str,
        exit_code: int,
        body: dict | None = None,
        details: list[str] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance
        self.body = body or {}
        self.details = details or []  # more lines for people, after the error's own

    def show(self, file=None) -> None:
        click.echo(f"porterbox: error: {self.message} ({self.code})", err=True)
        for line in self.details:
            click.echo(f"  {line}", err=True)
