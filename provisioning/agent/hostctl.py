"""porterbox-hostctl: the verbs the portal runs on a host, as root (docs/agent.md).

    python3 -m provisioning.agent.hostctl --ssh [--config PATH] < request.json

The verbs are a table (VERBS): for each, the fields it takes and requires, the pure function
that cleans them (it reads the request and the configuration, and refuses anything outside the
contract with a code and a message naming the field, before any command runs or any file is
written), the function that executes it on the cleaned values, and whether it runs under the
host lock. The verbs themselves live in their own modules: ``sessions`` (grant, revoke),
``jobs`` (job-*), ``host`` (inventory, status, telemetry, health-check, kill-process); the
contract in ``protocol``, the commands, files and processes in ``system``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from provisioning.agent import host, jobs, sessions, system
from provisioning.agent.protocol import (
    DEFAULT_CONFIG,
    MAX_REQUEST_BYTES,
    AgentError,
    Config,
    error_answer,
    load_config,
    parse_request,
    require,
)


def _no_fields(fields: dict, config: Config) -> dict:
    return {}


@dataclass(frozen=True)
class Verb:
    fields: frozenset[str]  # what the request may hold beside "verb"; all required but optional
    clean: Callable[[dict, Config], dict]  # the cleaned fields, or AgentError; pure
    execute: Callable[..., dict]  # execute(config, **cleaned) -> the answer's fields
    locked: bool = False  # run under the host lock (the job verbs take it where they need it)
    body: bool = False  # may read the raw bytes after the request line: execute(..., body=)
    optional: frozenset[str] = frozenset()

    @property
    def required(self) -> frozenset[str]:
        return self.fields - self.optional


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


NONE: frozenset[str] = frozenset()
JOB_START = _names(
    "job", "account", "stack", "devices", "script", "env", "walltime_s", "grace_s", "input"
)
VERBS: dict[str, Verb] = {
    "inventory": Verb(NONE, _no_fields, host.inventory),
    "status": Verb(NONE, _no_fields, host.status),
    "telemetry": Verb(NONE, _no_fields, host.telemetry),
    "kill-process": Verb(_names("pid", "user"), host.validate_kill, host.kill_process, locked=True),
    # Under the lock: never beside a grant or a revoke.
    "health-check": Verb(
        _names("stack", "device"), host.validate_health_check, host.health_check, locked=True
    ),
    "grant": Verb(
        _names("session", "user", "keys", "stack", "devices", "end"),
        sessions.validate_grant,
        sessions.grant,
        locked=True,
    ),
    # Either session or user: validate_revoke refuses both or neither.
    "revoke": Verb(
        _names("session", "user"),
        sessions.validate_revoke,
        sessions.revoke,
        locked=True,
        optional=_names("session", "user"),
    ),
    # Training jobs take the host lock themselves, around what needs it: job-start spools its
    # archive first, so that a slow upload never holds up grants and revokes.
    "job-start": Verb(
        JOB_START | {"array", "autopkgtest"},
        jobs.validate_start,
        jobs.job_start,
        body=True,
        optional=_names("array", "autopkgtest"),
    ),
    "job-status": Verb(_names("job"), jobs.validate_job, jobs.job_status),
    "job-stop": Verb(_names("job", "grace_s"), jobs.validate_stop, jobs.job_stop),
    "job-logs": Verb(_names("job", "offset", "limit"), jobs.validate_logs, jobs.job_logs),
    "job-clean": Verb(_names("job"), jobs.validate_job, jobs.job_clean),
    "job-output": Verb(_names("job", "limit"), jobs.validate_output, jobs.job_output),
}


def validate(request: dict, config: Config) -> tuple[str, dict]:
    """The verb and its cleaned fields, or AgentError naming the first field refused."""
    verb = request.get("verb")
    if not isinstance(verb, str) or verb not in VERBS:
        raise AgentError("unknown_verb", f"verb: must be one of {', '.join(sorted(VERBS))}")
    entry = VERBS[verb]
    fields = {key: value for key, value in request.items() if key != "verb"}
    unknown = set(fields) - entry.fields
    if unknown:
        raise AgentError("bad_request", f"{sorted(unknown)[0]}: unknown field for {verb}")
    require(fields, entry.required, verb)
    return verb, entry.clean(fields, config)


def execute(verb: str, fields: dict, config: Config, body: BinaryIO | None = None) -> dict:
    entry = VERBS[verb]
    extra = {"body": body} if entry.body else {}
    lock = system.host_lock(config.state_dir) if entry.locked else contextlib.nullcontext()
    with lock:
        return entry.execute(config, **fields, **extra)


def handle(raw: bytes, config: Config, body: BinaryIO | None = None) -> dict:
    """The answer to one request: validated completely first, then executed.

    raw is the request's line; body the rest of stdin, read only by a verb whose request
    announces raw bytes after it (job-start's input.archive_bytes). An answer with "_body" (a
    file) has that many bytes to follow its line (job-output's archive): main() writes them.
    """
    try:
        verb, fields = validate(parse_request(raw), config)
        return {"ok": True, **execute(verb, fields, config, body)}
    except AgentError as exc:
        return error_answer(exc.code, exc.message)
    except OSError as exc:
        return error_answer("host_error", f"{exc.filename or 'host'}: {exc.strerror or exc}")
    except Exception as exc:  # the portal must get an answer it can read, whatever broke
        traceback.print_exc()
        return error_answer("internal_error", f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="porterbox-hostctl", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ssh", action="store_true", help="one JSON request on stdin")
    mode.add_argument(
        "--expire", action="store_true", help="revoke the sessions whose end has passed (timer)"
    )
    mode.add_argument(
        "--reapply-acls", metavar="NODE", nargs="?", const="", default=None,
        help="give the sessions' users their device nodes again (udev); one node or all",
    )  # fmt: skip
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    args = parser.parse_args(argv)
    if not args.ssh:  # the host's own guards: root's timer and udev, never the portal's key
        try:
            config = load_config(args.config)
            if args.expire:
                answer = {"ok": True, **sessions.expire(config)}
            else:
                answer = {"ok": True, **sessions.reapply_acls(config, args.reapply_acls or None)}
        except AgentError as exc:
            answer = error_answer(exc.code, exc.message)
        print(json.dumps(answer), flush=True)
        return 0 if answer["ok"] else 1
    # The request is one line (what follows it, if anything, is raw bytes it announces), or,
    # from an older portal, everything up to the end of stdin.
    raw = sys.stdin.buffer.readline(MAX_REQUEST_BYTES + 1)
    try:
        answer = handle(raw, load_config(args.config), body=sys.stdin.buffer)
    except AgentError as exc:
        answer = error_answer(exc.code, exc.message)
    body = answer.pop("_body", None)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    if body is not None:
        with body:
            shutil.copyfileobj(body, sys.stdout.buffer, 1024 * 1024)
        sys.stdout.buffer.flush()
    return 0 if answer["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
