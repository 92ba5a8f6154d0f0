"""Slurm commands on a cluster's login node, over the pinned-key SSH transport.

The portal submits and follows partner jobs on an existing Slurm cluster (docs/slurm.md) with
the commands users run there: `sbatch --parsable`, `squeue --json`, `scancel`, and mirrors
bookings of porterbox hosts that are Slurm nodes with `scontrol ... reservation`. Every
command is an argv list of validated values (the transport quotes it for the remote shell);
the only text that reaches a shell is the batch script, which runs as the job on the cluster,
and every value the portal puts in it is quoted with shlex.quote.

No Django here: the portal's services hand in plain values and get typed objects back.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

from provisioning.transport import Result, Target, Transport, TransportError

__all__ = [
    "BatchJob",
    "Login",
    "Reservation",
    "Slurm",
    "SlurmError",
    "SlurmJob",
    "check_name",
    "check_path",
]

# Names Slurm and the shell read the same way: partitions, accounts, job and reservation names,
# node names, GRES types, user names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
# Absolute paths of plain characters, no "..": work directories and slurm.conf.
PATH = re.compile(r"/[A-Za-z0-9_.+/-]{0,254}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")

# Slurm's job states, in the three groups the portal needs (squeue's JOB STATE CODES).
WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
RUNNING = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"})
FINISHED = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
     "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
)  # fmt: skip


class SlurmError(TransportError):
    """A Slurm command failed: the controller did not answer, or it refused the request. The
    message quotes Slurm's own words, for staff and for the job's wait reason."""


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ValueError(f"{what}: {value!r} is not a Slurm name (letters, digits, _ . + -)")
    return value


def check_path(value: str, what: str) -> str:
    if not isinstance(value, str) or not PATH.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(f"{what}: {value!r} is not an absolute path of plain characters")
    return value


@dataclass(frozen=True)
class Login:
    """How to reach a cluster: its login node, and its slurm.conf where it is not the default."""

    target: Target
    slurm_conf: str = ""

    def __post_init__(self) -> None:
        if self.slurm_conf:
            check_path(self.slurm_conf, "slurm_conf")


@dataclass(frozen=True)
class BatchJob:
    """A portal job as Slurm is asked to run it. `script` is the job's own shell script; the
    portal's prologue (environment, input, stack setup) goes before it."""

    name: str
    partition: str
    time_limit: timedelta
    work_dir: str
    script: str
    gpus: int = 0
    gres_type: str = ""
    account: str = ""
    comment: str = ""
    env: tuple[tuple[str, str], ...] = ()
    setup: str = ""  # the stack's line on this cluster: `module load cuda/12.2`, say
    git_url: str = ""
    git_ref: str = ""

    def options(self) -> list[str]:
        check_name(self.name, "job name")
        check_name(self.partition, "partition")
        check_path(self.work_dir, "work_dir")
        minutes = -(-int(self.time_limit.total_seconds()) // 60)  # rounded up
        if minutes < 1:
            raise ValueError("the time limit must be at least a minute")
        argv = [
            f"--job-name={self.name}",
            f"--partition={self.partition}",
            f"--time={minutes}",
            f"--chdir={self.work_dir}",
            f"--output={self.work_dir}/log",
            "--open-mode=append",
        ]
        if self.account:
            argv.append(f"--account={check_name(self.account, 'account')}")
        if self.gpus:
            kind = f"gpu:{check_name(self.gres_type, 'GRES type')}" if self.gres_type else "gpu"
            argv.append(f"--gres={kind}:{int(self.gpus)}")
        if self.comment:
            if not re.fullmatch(r"[A-Za-z0-9_.:/=-]{1,100}", self.comment):
                raise ValueError(f"comment: {self.comment!r} has characters Slurm may not keep")
            argv.append(f"--comment={self.comment}")
        return argv

    def batch_script(self, directives: bool = False) -> str:
        """The script sbatch reads: a prologue of quoted values, then the job's own; with
        `directives`, the options as #SBATCH lines (for a script sbatch reads from a file)."""
        q = shlex.quote
        lines = ["#!/bin/sh"]
        if directives:
            lines += [f"#SBATCH {option}" for option in self.options()]
        lines.append(f"# {self.name}: written by the porterbox portal")
        lines.append(f"export PORTERBOX_OUTPUT={q(self.work_dir + '/output')}")
        lines.append(f"export PORTERBOX_INPUT={q(self.work_dir + '/input')}")
        for name, value in self.env:
            if not ENV_NAME.fullmatch(name) or name.startswith(("SLURM_", "PORTERBOX_")):
                raise ValueError(f"environment variable name {name!r} is not allowed")
            lines.append(f"export {name}={q(value)}")
        if self.setup:
            if "\n" in self.setup or "\r" in self.setup:
                raise ValueError("the stack's setup is one line")
            lines.append(self.setup)
        lines.append('cd "$PORTERBOX_INPUT" || exit 1')
        if self.git_url:
            branch = f"--branch {q(self.git_ref)} " if self.git_ref else ""
            lines.append(f"git clone --quiet --depth 1 {branch}-- {q(self.git_url)} . || exit 1")
        lines.append("")
        return "\n".join(lines) + self.script + ("" if self.script.endswith("\n") else "\n")


@dataclass(frozen=True)
class SlurmJob:
    """One job as squeue reports it."""

    job_id: int
    name: str
    state: str  # Slurm's base state: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, ...
    reason: str
    exit_code: int | None  # the batch script's exit status, when it ended by exiting
    signal: int | None  # the signal that ended it, if any
    submitted: datetime | None
    started: datetime | None
    ended: datetime | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def elapsed(self) -> timedelta:
        """How long it ran, as Slurm's Elapsed: end - start (0 if it never started)."""
        if self.started is None:
            return timedelta(0)
        return max(timedelta(0), (self.ended or datetime.now(UTC)) - self.started)


@dataclass(frozen=True)
class Reservation:
    name: str
    start: datetime
    end: datetime
    nodes: str
    flags: frozenset[str]


def _time(value: object) -> datetime | None:
    """squeue's epoch seconds (0: not yet) -> an aware datetime. Slurm 23.02+ wraps numbers as
    {"set": bool, "number": n}."""
    if isinstance(value, dict):
        value = value.get("number") if value.get("set", True) else 0
    if not isinstance(value, int) or value <= 0:
        return None
    return datetime.fromtimestamp(value, UTC)


def _state(value: object) -> str:
    # A string up to 22.05, a list of flags from 23.02.
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value).split()[0] if value else ""


def _exit(value: object) -> tuple[int | None, int | None]:
    """squeue's exit_code (a wait status up to 22.05; an object from 23.02) -> (status, signal)."""
    if isinstance(value, dict):
        code = value.get("return_code")
        sig = (value.get("signal") or {}).get("id")
        code = code.get("number") if isinstance(code, dict) else code
        sig = sig.get("number") if isinstance(sig, dict) else sig
        return (
            code if isinstance(code, int) else None,
            sig if isinstance(sig, int) and sig else None,
        )
    if not isinstance(value, int):
        return None, None
    if value & 0x7F:
        return None, value & 0x7F
    return value >> 8, None


def parse_jobs(text: str) -> list[SlurmJob]:
    try:
        data = json.loads(text)
        rows = data["jobs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SlurmError(f"squeue --json answered something else: {text[:200]!r}") from exc
    jobs = []
    for row in rows:
        code, sig = _exit(row.get("exit_code"))
        jobs.append(
            SlurmJob(
                job_id=int(row["job_id"]),
                name=str(row.get("name", "")),
                state=_state(row.get("job_state")),
                reason=str(row.get("state_reason", "") or ""),
                exit_code=code,
                signal=sig,
                submitted=_time(row.get("submit_time")),
                started=_time(row.get("start_time")),
                ended=_time(row.get("end_time")),
            )
        )
    return jobs


SCONTROL_TIME = "%Y-%m-%dT%H:%M:%S"


def parse_reservations(text: str) -> dict[str, Reservation]:
    """`scontrol -o show reservation` (one reservation a line, Key=Value words) -> by name."""
    found = {}
    for line in text.splitlines():
        fields = dict(word.split("=", 1) for word in line.split() if "=" in word)
        if "ReservationName" not in fields:
            continue
        found[fields["ReservationName"]] = Reservation(
            name=fields["ReservationName"],
            start=datetime.strptime(fields["StartTime"], SCONTROL_TIME).replace(tzinfo=UTC),
            end=datetime.strptime(fields["EndTime"], SCONTROL_TIME).replace(tzinfo=UTC),
            nodes=fields.get("Nodes", ""),
            flags=frozenset(fields.get("Flags", "").split(",")),
        )
    return found


def _slurm_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime(SCONTROL_TIME)


class Slurm:
    """The Slurm commands the portal runs on one cluster's login node."""

    def __init__(self, transport: Transport, login: Login) -> None:
        self.transport, self.login = transport, login

    def _argv(self, argv: list[str]) -> list[str]:
        # Times are read and written in UTC whatever the login node's zone.
        env = ["env", "TZ=UTC"]
        if self.login.slurm_conf:
            env.append(f"SLURM_CONF={self.login.slurm_conf}")
        return [*env, *argv]

    def _run(self, argv: list[str], stdin: bytes = b"", **streams) -> Result:
        result = self.transport.call(self.login.target, self._argv(argv), stdin, **streams)
        if result.exit_status != 0:
            said = result.stderr.strip() or result.stdout.strip()
            words = said.decode("utf-8", "replace") or "no message"
            raise SlurmError(f"{self.login.target}: {argv[0]} failed: {words[-500:]}")
        return result

    # -- jobs --------------------------------------------------------------------------------

    # Makes the job's directory with input/ and output/, then runs the rest of its arguments
    # (a fixed script; the values are its arguments, never part of it): one SSH command, not two.
    _IN_DIRECTORY = 'mkdir -p -- "$1/input" "$1/output" || exit 1; shift; exec "$@"'

    def prepare(self, work_dir: str, archive: BinaryIO) -> None:
        """The job's directory on the cluster's shared file system, with input/ and output/,
        and the archive (a .tar.gz the portal checked) unpacked into input/."""
        check_path(work_dir, "work_dir")
        unpack = ["tar", "-xzf", "-", "--no-same-owner", "-C", f"{work_dir}/input"]
        self._run(["sh", "-c", self._IN_DIRECTORY, "prepare", work_dir, *unpack], body=archive)

    def submit(self, job: BatchJob) -> int:
        """Make the job's directory (input/, output/) and sbatch the job; its Slurm job id."""
        script = job.batch_script().encode()
        sbatch = ["sbatch", "--parsable", *job.options()]
        result = self._run(
            ["sh", "-c", self._IN_DIRECTORY, "submit", job.work_dir, *sbatch], script
        )
        # --parsable: "id" or "id;cluster".
        answer = result.stdout.decode("utf-8", "replace").strip().split(";")[0]
        if not answer.isdigit():
            raise SlurmError(f"sbatch answered {answer[:100]!r}, not a job id")
        return int(answer)

    # Unpacks each job's batch.sh under $1 (the cluster's work directory), then for each job
    # name makes its directories and runs sbatch on its script: one line a job, "name = id" or
    # "name ! why". A fixed script; names (checked) and the path are its arguments.
    _SUBMIT_MANY = (
        'set -f; base=$1; shift; tar -xzf - --no-same-owner -C "$base" || exit 1; for name; do '
        'd="$base/$name"; if ! mkdir -p -- "$d/input" "$d/output"; then '
        'echo "$name ! cannot make its directory"; continue; fi; '
        'if out=$(sbatch --parsable "$d/batch.sh" 2>&1); then echo "$name = $out"; '
        'else echo "$name !" $out; fi; done'
    )

    def submit_many(self, base: str, jobs: list[BatchJob]) -> dict[str, int | SlurmError]:
        """sbatch many jobs in one command on the login node (each in `base`/its name): each
        job's Slurm id, or SlurmError with Slurm's refusal. A job missing from the answer was
        perhaps submitted (the caller finds it by name later). The command failing as a whole
        raises TransportError: nothing is known of any job then."""
        check_path(base, "work_dir")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for job in jobs:
                if job.work_dir != f"{base}/{check_name(job.name, 'job name')}":
                    raise ValueError(f"{job.name}: its directory is not {base}/{job.name}")
                data = job.batch_script(directives=True).encode()
                member = tarfile.TarInfo(f"{job.name}/batch.sh")
                member.size, member.mode = len(data), 0o600
                archive.addfile(member, io.BytesIO(data))
        buffer.seek(0)
        argv = ["sh", "-c", self._SUBMIT_MANY, "submit", base, *(job.name for job in jobs)]
        try:
            result = self._run(argv, body=buffer)
        except SlurmError as exc:  # the command as a whole, not one job
            raise TransportError(str(exc)) from exc
        answers: dict[str, int | SlurmError] = {}
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            name, _, rest = line.partition(" ")
            sign, _, said = rest.partition(" ")
            first = said.strip().split(";")[0]
            if sign == "=" and first.isdigit():
                answers[name] = int(first)
            else:
                answers[name] = SlurmError(f"sbatch: {said.strip()[:500] or 'no message'}")
        return answers

    def jobs(self, *, names: Iterable[str] = (), ids: Iterable[int] = ()) -> list[SlurmJob]:
        """The jobs slurmctld knows (finished ones until MinJobAge) among these names or ids.

        squeue of Slurm 22.05 ignores its filters with --json; they are passed for later
        versions, and the answer is filtered here in any case."""
        names, ids = sorted(set(names)), sorted(set(ids))
        if not names and not ids:
            return []
        for name in names:
            check_name(name, "job name")
        result = self._run(["squeue", "--json", "--states=all"])
        jobs = parse_jobs(result.stdout.decode("utf-8", "replace"))
        wanted_names, wanted_ids = set(names), set(ids)
        return [j for j in jobs if j.name in wanted_names or j.job_id in wanted_ids]

    def cancel(self, job_id: int) -> None:
        self._run(["scancel", str(int(job_id))])

    def read(self, path: str, offset: int, limit: int) -> bytes:
        """Up to limit bytes of a file from offset (b"" if it does not exist yet)."""
        check_path(path, "path")
        argv = [
            "sh", "-c", 'test -e "$1" || exit 0; exec dd if="$1" bs=65536 iflag=skip_bytes,'
            'count_bytes skip="$2" count="$3" status=none', "read", path,
            str(int(offset)), str(int(limit)),
        ]  # fmt: skip
        return self._run(argv).stdout

    def exists(self, path: str) -> bool:
        check_path(path, "path")
        argv = self._argv(["test", "-e", path])
        return self.transport.call(self.login.target, argv).exit_status == 0

    def fetch_output(self, work_dir: str, sink: BinaryIO) -> None:
        """What the job left in output/, as a .tar.gz written to sink."""
        check_path(work_dir, "work_dir")
        # The transport's streaming mode keeps stdout's first line apart: an empty one here.
        # No output/ (a job found by name that the portal did not prepare): nothing to fetch.
        script = 'echo; test -d "$1" || exit 0; exec tar -czf - -C "$1" .'
        argv = ["sh", "-c", script, "output", f"{work_dir}/output"]
        self._run(argv, sink=sink)

    def ping(self) -> None:
        """Raises SlurmError unless slurmctld answers."""
        result = self._run(["scontrol", "ping"])
        if b"UP" not in result.stdout:
            raise SlurmError(f"{self.login.target}: slurmctld is down: {result.stdout[:200]!r}")

    # -- reservations ------------------------------------------------------------------------

    def reservations(self) -> dict[str, Reservation]:
        result = self._run(["scontrol", "-o", "show", "reservation"])
        return parse_reservations(result.stdout.decode("utf-8", "replace"))

    def create_reservation(
        self, name: str, *, nodes: str, start: datetime, end: datetime, users: str
    ) -> None:
        """A maintenance-like reservation of whole nodes: no job runs on them in [start, end),
        and jobs already there are not a reason to refuse it (the portal's booking is the
        truth: docs/slurm.md)."""
        self._run([
            "scontrol", "create", "reservation", f"ReservationName={check_name(name, 'name')}",
            f"StartTime={_slurm_time(start)}", f"EndTime={_slurm_time(end)}",
            f"Nodes={check_name(nodes, 'node')}", f"Users={check_name(users, 'user')}",
            "Flags=MAINT,IGNORE_JOBS",
        ])  # fmt: skip

    def update_reservation(self, name: str, *, start: datetime | None, end: datetime) -> None:
        """A new end, and a new start unless it is None (one that began keeps its start)."""
        begin = [f"StartTime={_slurm_time(start)}"] if start is not None else []
        self._run([
            "scontrol", "update", f"ReservationName={check_name(name, 'name')}", *begin,
            f"EndTime={_slurm_time(end)}",
        ])  # fmt: skip

    def delete_reservation(self, name: str) -> None:
        self._run(["scontrol", "delete", f"ReservationName={check_name(name, 'name')}"])
