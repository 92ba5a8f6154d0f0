"""The `porterbox` command: log in, find and book devices, change bookings, open the session.

Exit codes are porterbox_cli/errors.py's; `--json` prints the API's JSON as it is (a list
command: every page's results in one array). Shell completion is click's:
`eval "$(_PORTERBOX_COMPLETE=bash_source porterbox)"` (zsh_source, fish_source alike).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import click

from porterbox_cli import __version__, config
from porterbox_cli.api import Api
from porterbox_cli.errors import REFUSED, CliError
from porterbox_cli.output import (
    Duration,
    Moment,
    emit_json,
    fields,
    iso,
    local,
    parse_api_time,
    table,
)


@dataclass
class State:
    portal_name: str | None
    as_json: bool
    _api: Api | None = field(default=None, init=False)

    @property
    def api(self) -> Api:
        if self._api is None:
            self._api = Api(config.select(self.portal_name))
        return self._api


pass_state = click.make_pass_decorator(State)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--portal", "portal_name", metavar="NAME", help="The portal to talk to (by name).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON, for scripts.")
@click.version_option(__version__, prog_name="porterbox")
@click.pass_context
def cli(ctx: click.Context, portal_name: str | None, as_json: bool) -> None:
    """Book accelerators on Debian's GPU porterboxes, open sessions, run jobs.

    \b
    Exit codes: 0 done; 1 the portal refused (its message and code are printed);
    2 wrong usage; 3 not logged in or token refused; 4 portal unreachable or failing.
    Completion: eval "$(_PORTERBOX_COMPLETE=bash_source porterbox)"
    """
    ctx.obj = State(portal_name, as_json)


# -- login ----------------------------------------------------------------------------------


@cli.command()
@click.argument("url")
@click.option("--default", "make_default", is_flag=True, help="Make it the default portal.")
@pass_state
def login(state: State, url: str, make_default: bool) -> None:
    """Store an API token for the portal at URL (from PORTERBOX_TOKEN, or asked for).

    Get the token on the portal's account page (URL/account/profile/, "API token").
    The first portal you log in to is the default; name others with --portal NAME.
    """
    url = config.normalize_url(url)
    token = os.environ.get("PORTERBOX_TOKEN", "").strip()
    if not token:
        token = click.prompt(
            f"API token (from {url}/account/profile/)", hide_input=True, err=True
        ).strip()
    name = state.portal_name or config.default_name(url)
    api = Api(config.Portal(name, url, token))
    api.get("/api/reservations/", limit=1)  # a wrong token is a 401 here, not later
    config.remember(name, url, token, make_default=make_default)
    click.echo(f"Logged in to {url} as portal {name!r} (token kept in {config.config_file()}).")


# -- hosts and availability --------------------------------------------------------------------


def _devices(host: dict) -> str:
    kinds: dict[str, int] = {}
    for a in host.get("accelerators", []):
        if a.get("retired"):
            continue
        memory = f" {round(a['memory_mib'] / 1024)}G" if a.get("memory_mib") else ""
        kind = f"{a['vendor']} {a['model']}{memory}"
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n}x {kind}" for kind, n in kinds.items()) or "-"


@cli.command()
@click.option("--hwspec", help="Only hosts that serve it (cuda, rocm:gfx1030, ...).")
@click.option("--stack", help="Only hosts with this driver stack.")
@click.option("--memory", "min_memory_gb", type=int, help="At least this many GB per device.")
@click.option("--free-only", is_flag=True, help="Only free stacks (Debian main).")
@pass_state
def hosts(state, hwspec, stack, min_memory_gb, free_only) -> None:
    """The hosts in service and their devices."""
    found = state.api.all_pages(
        "/api/hosts/",
        hwspec=hwspec,
        stack=stack,
        min_memory_gb=min_memory_gb,
        free_only="on" if free_only else None,
    )
    if state.as_json:
        return emit_json(found)
    rows = [
        (h["name"], h["state"], h["architecture"], ",".join(h["stacks"]) or "-",
         ",".join(h["hwspecs"]) or "-", _devices(h))
        for h in found
    ]  # fmt: skip
    table(["HOST", "STATE", "ARCH", "STACKS", "HWSPECS", "DEVICES"], rows, "No host matches.")


def _need_options(command):
    options = [
        click.option("--count", "-n", type=click.IntRange(1, 64), default=1, show_default=True,
                     help="How many devices."),
        click.option("--hwspec", help='What they must be: cuda, cuda:sm_90, "cuda | rocm".'),
        click.option("--memory", "min_memory_gb", type=click.IntRange(0, 4096),
                     help="At least this many GB per device."),
        click.option("--hours", type=Duration(), default="2", show_default=True,
                     help="How long: hours, or 30m, 1h30m, 1d."),
        click.option("--stack", help="The driver stack (cuda-12, rocm-6, ...)."),
        click.option("--from", "start", type=Moment(),
                     help="Not before this time (ISO 8601; local time without an offset)."),
    ]  # fmt: skip
    for option in reversed(options):
        command = option(command)
    return command


def _hours(duration: timedelta) -> str:
    return f"{duration / timedelta(hours=1):g}"


def _slots(state: State, count, hwspec, min_memory_gb, hours, stack, start, days=None) -> list:
    return state.api.get(
        "/api/availability/",
        count=count,
        hwspec=hwspec,
        min_memory_gb=min_memory_gb,
        hours=_hours(hours),
        stack=stack,
        start=iso(start) if start else None,
        days=days,
    )


@cli.command()
@_need_options
@click.option("--days", type=click.IntRange(1), help="How many days ahead to look.")
@pass_state
def find(state, count, hwspec, min_memory_gb, hours, stack, start, days) -> None:
    """The earliest slot of each host that meets a need, soonest first."""
    slots = _slots(state, count, hwspec, min_memory_gb, hours, stack, start, days)
    if state.as_json:
        return emit_json(slots)
    rows = [(s["host"], local(s["start"]), local(s["end"]), s["free"]) for s in slots]
    table(["HOST", "FROM", "UNTIL", "FREE"], rows, "No slot meets the need in that time.")


# -- reservations ---------------------------------------------------------------------------


def _show_reservation(state: State, r: dict) -> None:
    if state.as_json:
        return emit_json(r)
    pairs: list[tuple[str, object]] = [
        ("Reservation", r["id"]),
        ("State", r["state"]),
        ("Host", r["host"]),
        ("Devices", "whole host" if r["whole_host"] else ",".join(map(str, r["devices"]))),
        ("Stack", r["stack"]),
        ("From", local(r["start"])),
        ("Until", local(r["end"])),
    ]
    if r.get("purpose"):
        pairs.append(("Purpose", r["purpose"]))
    if r.get("last_error"):
        pairs.append(("Last error", r["last_error"]))
    pairs.append(("Log in", f"porterbox ssh {r['id']}   ({r['ssh']['command']})"))
    fields(pairs)


@cli.command()
@_need_options
@click.option("--host", help="On this host (with --devices: required).")
@click.option("--devices", help="Device indexes on --host, as 0,1 (instead of a need).")
@click.option("--whole-host", is_flag=True, help="Every device of --host.")
@click.option("--purpose", default="", help="What it is for (shown to staff).")
@pass_state
def book(state, count, hwspec, min_memory_gb, hours, stack, start, host, devices, whole_host,
         purpose) -> None:  # fmt: skip
    """Book devices: by need (the first slot that meets it), or chosen by --host and --devices.

    \b
    porterbox book --count 2 --hwspec "cuda | rocm" --hours 4 --stack cuda-12
    porterbox book --host gpu1 --devices 0,1 --from 2026-12-04T09:00 --hours 8 --stack cuda-12
    """
    if not stack:
        raise click.UsageError("give the driver stack: --stack NAME (porterbox hosts lists them)")
    body: dict[str, object] = {"stack": stack, "purpose": purpose}
    if devices or whole_host:
        if not host:
            raise click.UsageError("--devices and --whole-host need --host")
        if start is None:
            raise click.UsageError("chosen devices need a start: --from TIME")
        if devices:
            try:
                body["devices"] = [int(d) for d in devices.split(",") if d.strip()]
            except ValueError:
                raise click.BadParameter("give indexes as 0,1", param_hint="--devices") from None
        body["whole_host"] = whole_host
        body["host"] = host
    else:
        slots = _slots(state, count, hwspec, min_memory_gb, hours, stack, start)
        if host:
            slots = [s for s in slots if s["host"] == host]
        if not slots:
            raise CliError("no slot meets the need in the days searched", "no_slot", REFUSED)
        start = parse_api_time(slots[0]["start"])
        body.update(count=count, host=slots[0]["host"], hwspec=hwspec or "")
        if min_memory_gb:
            body["min_memory_gb"] = min_memory_gb
    body["start"] = iso(start)
    body["end"] = iso(start + hours)
    _show_reservation(state, state.api.post("/api/reservations/", body))


@cli.command(name="list")
@click.option("--when", type=click.Choice(["upcoming", "current", "past"]), help="Only these.")
@pass_state
def list_(state, when) -> None:
    """Your reservations."""
    found = state.api.all_pages("/api/reservations/", when=when)
    if state.as_json:
        return emit_json(found)
    rows = [
        (r["id"], r["state"], r["host"],
         "all" if r["whole_host"] else ",".join(map(str, r["devices"])), r["stack"],
         local(r["start"]), local(r["end"]))
        for r in found
    ]  # fmt: skip
    table(["ID", "STATE", "HOST", "DEVICES", "STACK", "FROM", "UNTIL"], rows, "No reservation.")


@cli.command()
@click.argument("reservation", type=int)
@pass_state
def show(state, reservation) -> None:
    """One reservation, with the line that logs in."""
    _show_reservation(state, state.api.get(f"/api/reservations/{reservation}/"))


def _blocker(b: dict) -> str:
    mine = " (yours)" if b.get("yours") else ""
    return f"{b['host']} #{b['index']}, booked {local(b['start'])} - {local(b['end'])}{mine}"


@cli.command()
@click.argument("reservation", type=int)
@click.option("--to", "to", type=Moment(), help="The new end.")
@click.option("--by", "by", type=Duration(), help="Longer by this much (2h, 30m).")
@pass_state
def extend(state, reservation, to, by) -> None:
    """End later. A refusal says how far it can go and what blocks it."""
    path = f"/api/reservations/{reservation}/"
    end = _new_end(state, path, to, by, sign=1)
    try:
        changed = state.api.post(f"{path}extend/", {"end": iso(end)})
    except CliError as refusal:
        if refusal.exit_code != REFUSED or refusal.code == "not_found":
            raise
        try:
            limit = state.api.get(f"{path}extension/")
        except CliError:
            raise refusal from None  # the refusal says enough
        blockers = refusal.body.get("blockers") or limit.get("blockers") or []
        details = [f"at most until {local(limit['latest_end'])} ({limit['reason']})"]
        details += [f"in the way: {_blocker(b)}" for b in blockers]
        raise CliError(refusal.message, refusal.code, REFUSED, refusal.body, details) from None
    _show_reservation(state, changed)


def _new_end(state: State, path: str, to, by, *, sign: int) -> datetime:
    if (to is None) == (by is None):
        raise click.UsageError("give either --to TIME or --by DURATION")
    if to is not None:
        return to
    return datetime.fromisoformat(state.api.get(path)["end"]) + sign * by


@cli.command()
@click.argument("reservation", type=int)
@click.option("--to", "to", type=Moment(), help="The new end.")
@click.option("--by", "by", type=Duration(), help="Shorter by this much (2h, 30m).")
@pass_state
def shorten(state, reservation, to, by) -> None:
    """End earlier, giving the time back."""
    path = f"/api/reservations/{reservation}/"
    end = _new_end(state, path, to, by, sign=-1)
    _show_reservation(state, state.api.post(f"{path}shorten/", {"end": iso(end)}))


@cli.command()
@click.argument("reservation", type=int)
@pass_state
def end(state, reservation) -> None:
    """End a running reservation now (the session closes)."""
    _show_reservation(state, state.api.post(f"/api/reservations/{reservation}/end/"))


@cli.command()
@click.argument("reservation", type=int)
@pass_state
def cancel(state, reservation) -> None:
    """Cancel a reservation that has not started."""
    _show_reservation(state, state.api.post(f"/api/reservations/{reservation}/cancel/"))


# -- ssh --------------------------------------------------------------------------------------


def _host_keys(state: State, host: str) -> list[str]:
    """The keys the portal pinned for `host` (its API answer's `host_keys`), as "keytype
    base64" lines."""
    lines = state.api.get(f"/api/hosts/{host}/").get("host_keys")
    if isinstance(lines, str):
        lines = lines.splitlines()
    keys = []
    for line in lines or []:
        parts = line.split()
        if parts and not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
            parts = parts[1:]  # a known_hosts line: its host pattern
        if len(parts) >= 2 and not parts[0].startswith(("#", "@")):
            keys.append(f"{parts[0]} {parts[1]}")
    if not keys:
        raise CliError(
            f"the portal publishes no pinned host key of {host} to you; ssh would have to trust "
            "the key on first use, which porterbox does not do (ask staff for the fingerprints)",
            "no_host_keys",
            REFUSED,
        )
    return keys


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("reservation", type=int)
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--print", "print_only", is_flag=True, help="Print the ssh command, do not run it.")
@pass_state
def ssh(state, reservation, ssh_args, print_only) -> None:
    """Log in to a reservation's session, trusting only the host keys the portal pinned.

    \b
    Arguments after -- go to ssh, options then a command:
    porterbox ssh 12 -- -L 8888:localhost:8888
    porterbox ssh 12 -- nvidia-smi
    """
    r = state.api.get(f"/api/reservations/{reservation}/")
    login = r["ssh"]
    keys = _host_keys(state, r["host"])
    pattern = login["host"] if login["port"] == 22 else f"[{login['host']}]:{login['port']}"
    directory = config.config_dir() / "known_hosts.d"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    known = directory / f"{state.api.portal.name.replace('/', '_')}-{r['host']}"
    known.write_text("".join(f"{pattern} {key}\n" for key in keys))
    program = shutil.which("ssh")
    if program is None:
        raise CliError("ssh is not installed (apt install openssh-client)", "no_ssh", REFUSED)
    argv = [
        "ssh", "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
        "-o", "UpdateHostKeys=no", "-p", str(login["port"]), f"{login['user']}@{login['host']}",
        *ssh_args,  # ssh reads options after the destination too; then the command
    ]  # fmt: skip
    if print_only:
        click.echo(" ".join(argv))
        return
    sys.stdout.flush()
    os.execv(program, argv)  # noqa: S606 (an argv list, no shell)


from porterbox_cli import jobs, testruns  # noqa: E402  (groups that register on cli)

jobs.register(cli)
testruns.register(cli)


def main() -> None:
    cli(prog_name="porterbox")


if __name__ == "__main__":
    main()
