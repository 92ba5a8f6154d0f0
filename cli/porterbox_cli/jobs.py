"""`porterbox jobs`: submit training jobs to partner projects, follow their logs, fetch output."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from porterbox_cli.errors import REFUSED, CliError
from porterbox_cli.output import Duration, emit_json, fields, local, table

FINISHED = ("succeeded", "failed", "cancelled", "timed_out")


def _show_job(state, job: dict) -> None:
    if state.as_json:
        return emit_json(job)
    pairs: list[tuple[str, object]] = [
        ("Job", job["id"]),
        ("Name", job["name"]),
        ("Project", job["project"]),
        ("State", job["state"] + (f" ({job['wait_reason']})" if job.get("wait_reason") else "")),
        ("Devices", f"{job['count']} {job['hwspec'] or 'any'} on {job['stack']}"),
        ("Walltime", f"{job['walltime']:g} h"),
        ("Host", job.get("host") or "-"),
        ("Queued", local(job["queued_at"])),
        ("Started", local(job.get("started_at"))),
        ("Ended", local(job.get("ended_at"))),
    ]
    if job.get("exit_status") is not None:
        pairs.append(("Exit status", job["exit_status"]))
    if job.get("last_error"):
        pairs.append(("Last error", job["last_error"]))
    if job.get("array_size") is not None:
        pairs.append(("Array", _array(job)))
    elif len(job.get("array_jobs", [])) > 1:  # a portal from before array_size
        pairs.append(("Array jobs", ",".join(map(str, job["array_jobs"]))))
    fields(pairs)


def _array(job: dict) -> str:
    """Where the job is in its array; of the first task, how to list the tasks."""
    size, index, first = job["array_size"], job["array_index"], job["array"]
    if index != 0:
        return f"task {index} of {size} of array #{first}"
    said = f"{size} task{'s' if size != 1 else ''}"
    if size == 1:
        return said
    pending = job.get("array_pending") or 0
    if pending:  # as Slurm splits an array's tasks off its one record
        said += f" ({pending} written at the scheduler's next pass)"
    return f"{said}; list them: porterbox jobs list --array {first}"


def _env(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: give NAME=value", param_hint="--env")
        env[name] = value
    return env


@click.group()
def jobs() -> None:
    """Training jobs of your partner projects."""


@jobs.command()
@click.option("--project", required=True, help="Your partner project's slug.")
@click.option("--name", required=True, help="The job's name.")
@click.option("--script", type=click.File("r"), required=True,
              help="The shell script to run ('-': standard input).")  # fmt: skip
@click.option("--stack", required=True, help="The driver stack (cuda-12, rocm-6, ...).")
@click.option("--count", "-n", type=click.IntRange(1), default=1, show_default=True)
@click.option("--hwspec", default="", help='cuda, "cuda | rocm", ...')
@click.option("--memory", "min_memory_gb", type=click.IntRange(0, 4096), default=0)
@click.option("--walltime", type=Duration(), required=True, help="4h, 30m, 1d, or hours.")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--git-url", default="", help="A git repository to check out as input.")
@click.option("--git-ref", default="", help="Its branch, tag or commit.")
@click.option("--archive", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A .tar.gz to upload as input.")  # fmt: skip
@click.option("--code-licence", required=True, help="The training code's licence (SPDX).")
@click.option("--data-licence", required=True, help="The data's licence (SPDX).")
@click.option("--model-freedom", type=click.Choice(["free", "toxiccandy", "non-free"]),
              required=True)  # fmt: skip
@click.option("--array", type=click.IntRange(1), help="Submit N tasks alike (sbatch --array).")
@click.option("--partition", default="", metavar="CLUSTER/PARTITION",
              help="A Slurm cluster's partition to run on, instead of the fleet.")  # fmt: skip
@click.pass_obj
def submit(state, project, name, script, stack, count, hwspec, min_memory_gb, walltime, env,
           git_url, git_ref, archive, code_licence, data_licence, model_freedom,
           array, partition) -> None:  # fmt: skip
    """Submit a job; the fair-share scheduler places it."""
    body: dict[str, object] = {
        "project": project, "name": name, "script": script.read(), "stack": stack,
        "count": count, "hwspec": hwspec, "min_memory_gb": min_memory_gb,
        "walltime": walltime.total_seconds() / 3600, "env": _env(env),
        "input_git_url": git_url, "input_git_ref": git_ref, "code_licence": code_licence,
        "data_licence": data_licence, "model_freedom": model_freedom,
    }  # fmt: skip
    if array:
        body["array"] = array
    if partition:
        body["partition"] = partition
    if archive is None:
        answer = state.api.post("/api/jobs/", body)
    else:
        form = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in body.items()}
        with archive.open("rb") as upload:
            answer = state.api.request(
                "POST", "/api/jobs/", data=form,
                files={"input_archive": (archive.name, upload, "application/gzip")},
            ).json()  # fmt: skip
    _show_job(state, answer)


@jobs.command(name="list")
@click.option("--state", "job_state", help="Only jobs in this state (queued, running, ...).")
@click.option("--project", help="Only this project's jobs.")
@click.option("--array", type=click.IntRange(1), metavar="ID",
              help="Only the tasks of this array (its first task's id), by index.")  # fmt: skip
@click.pass_obj
def list_(state, job_state, project, array) -> None:
    """Jobs of your projects, newest first (an array's tasks: by index)."""
    found = state.api.all_pages("/api/jobs/", state=job_state, project=project, array=array)
    if state.as_json:
        return emit_json(found)
    rows = [
        (j["id"], j["state"], j["project"], j["name"], j.get("host") or "-",
         local(j["queued_at"]), local(j.get("ended_at")))
        for j in found
    ]  # fmt: skip
    table(["ID", "STATE", "PROJECT", "NAME", "HOST", "QUEUED", "ENDED"], rows, "No job.")


@jobs.command()
@click.argument("job", type=int)
@click.pass_obj
def show(state, job) -> None:
    """One job."""
    _show_job(state, state.api.get(f"/api/jobs/{job}/"))


@jobs.command()
@click.argument("job", type=int)
@click.option("--array", "whole_array", is_flag=True, help="Every unfinished task of its array.")
@click.pass_obj
def cancel(state, job, whole_array) -> None:
    """Cancel a waiting job, or stop a running one."""
    answer = state.api.post(f"/api/jobs/{job}/cancel/", array=1 if whole_array else 0)
    _show_job(state, answer)


@jobs.command()
@click.argument("job", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.option("--interval", type=click.FloatRange(0.1), default=2.0, show_default=True,
              help="Seconds between polls with -f.")  # fmt: skip
@click.pass_obj
def logs(state, job, follow, interval) -> None:
    """The job's output as the portal keeps it (its tail, for a long log)."""
    offset = 0
    out = sys.stdout
    while True:
        eof = False
        for chunk in state.api.log_chunks(job, offset):
            if chunk["offset"] > offset:
                click.echo(f"[... {chunk['offset'] - offset} characters dropped ...]", err=True)
            out.write(chunk["data"])
            out.flush()
            offset = chunk["next_offset"]
            eof = chunk["eof"]
        if eof or not follow:
            return
        time.sleep(interval)


@jobs.command()
@click.argument("job", type=int)
@click.option("--output", "-o", "target", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write it (default: job-ID-output.tar.gz).")  # fmt: skip
@click.pass_obj
def output(state, job, target) -> None:
    """Download what the job left (its output archive)."""
    target = target or Path(f"job-{job}-output.tar.gz")
    try:
        size = state.api.download(f"/api/jobs/{job}/output/", target)
    except CliError as exc:
        if exc.code == "not_found" and exc.message.startswith("No API operation"):
            raise CliError(
                "this portal's API offers no download of a job's output; get it from the job's "
                f"page: {state.api.portal.url}/jobs/{job}/",
                "not_supported",
                REFUSED,
            ) from None
        raise
    click.echo(f"{target} ({size} bytes)", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(jobs)
