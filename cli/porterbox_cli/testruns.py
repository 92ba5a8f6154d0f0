"""`porterbox test-runs`: autopkgtest runs of source packages on matching hardware."""

from __future__ import annotations

import click

from porterbox_cli.output import emit_json, fields, local, table

RESULTS = ["pass", "fail", "neutral", "tmpfail", "pending"]


def _outcome(run: dict) -> str:
    return run["result"] or run["state"] or "pending"


def _show_runs(state, runs: list[dict], empty: str = "No test run.") -> None:
    rows = [
        (r["id"], r["package"], r["version"], r["hwspec"], r["stack"], _outcome(r),
         local(r["created"]), r["job"] or "-")
        for r in runs
    ]  # fmt: skip
    headers = ["ID", "PACKAGE", "VERSION", "HWSPEC", "STACK", "RESULT", "CREATED", "JOB"]
    table(headers, rows, empty)


@click.group(name="test-runs")
def test_runs() -> None:
    """Package tests (autopkgtest) on hardware that fits the package's hwspec."""


@test_runs.command(name="list")
@click.option("--package", help="Only this source package's runs.")
@click.option("--result", type=click.Choice(RESULTS), help="Only runs with this result.")
@click.pass_obj
def list_(state, package, result) -> None:
    """Test runs, newest first."""
    found = state.api.all_pages("/api/test-runs/", package=package, result=result)
    if state.as_json:
        return emit_json(found)
    _show_runs(state, found)


@test_runs.command()
@click.argument("run", type=int)
@click.pass_obj
def show(state, run) -> None:
    """One test run; its log is its job's: porterbox jobs logs JOB."""
    r = state.api.get(f"/api/test-runs/{run}/")
    if state.as_json:
        return emit_json(r)
    pairs: list[tuple[str, object]] = [
        ("Test run", r["id"]),
        ("Package", f"{r['package']} {r['version']}"),
        ("On", f"{r['hwspec']} with {r['stack']}"),
        ("Tests", " ".join(r["tests"]) or "all"),
        ("Result", _outcome(r) + (" (regression)" if r.get("regression") else "")),
        ("Trigger", r["trigger"]),
        ("Created", local(r["created"])),
        ("Finished", local(r.get("finished"))),
        ("Job", r["job"] or "-"),
    ]
    if r.get("exit_code") is not None:
        pairs.append(("Exit code", r["exit_code"]))
    fields(pairs)


@test_runs.command()
@click.argument("package", required=False, default="")
@click.option("--version", "version", default="", help="The version (default: the newest).")
@click.option("--dsc-url", default="", help="A .dsc at an http(s) URL instead of PACKAGE.")
@click.option("--hwspec", default="", help="Only this hwspec (default: every one that fits).")
@click.option("--stack", help="Only this stack.")
@click.pass_obj
def request(state, package, version, dsc_url, hwspec, stack) -> None:
    """Queue runs of PACKAGE (from an archive the portal watches) or of --dsc-url (Debian
    members)."""
    if bool(package) == bool(dsc_url):
        raise click.UsageError("give PACKAGE or --dsc-url URL")
    body = {"package": package, "version": version, "dsc_url": dsc_url, "hwspec": hwspec}
    if stack:
        body["stack"] = stack
    made = state.api.post("/api/test-runs/", body)
    if state.as_json:
        return emit_json(made)
    _show_runs(state, made)


def register(cli: click.Group) -> None:
    cli.add_command(test_runs)
