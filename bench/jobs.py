"""Job submission benchmark on PostgreSQL, side by side with Debian's Slurm from the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/jobs.py

As root, with Debian's `slurm-wlm` and `munge` installed (`apt-get install slurm-wlm munge`;
without them it measures the portal alone and says so). Like bench/booking.py it only uses
DATABASE_URL's database to CREATE and DROP a throwaway one, `porterbox_bench_jobs` unless
`--database` names another (runs at once each need their own).

The portal: gunicorn (4 workers x 4 threads) on the throwaway database, one member of an
approved partner project (quotas and the API's rate limit out of the way), client threads with
keep-alive connections POSTing to /api/jobs/ with token auth:
1. one at a time: N submissions from one client thread;
2. 8-wide: N submissions from 8 client threads;
3. arrays: `--arrays` submissions of `array: N` (at most 1000) one at a time, in tasks per
   second; skipped with a note when the API refuses `array` (400) or ignores it. As Slurm
   writes one job record for an array, a submission writes the array's first task and the
   scheduler's next pass the others: that pass's writer (services.write_array_tasks) is run
   and timed in-process once the server has stopped, before the jobs are counted.
Slurm (the peer): a single-node cluster on loopback started by this script in a temporary
directory (its own munged and key, slurmctld, slurmd; no accounting), stopped and removed at
the end however the run ends; the same three phases with `sbatch --hold` (held jobs: none runs),
`--wrap=true` and `--array=0-(N-1)`, one `sbatch` process per submission as a user runs it.
Printed: each phase's rate, median and p95 latency as the client sees it, and the ratio
portal/Slurm (1.0 or more: at least Slurm's rate). Nothing is asserted about time.
"""

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_booking", ROOT / "bench" / "booking.py")
assert spec is not None and spec.loader is not None  # a .py file: a spec with its loader
bb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bb)

BENCH_DB = "porterbox_bench_jobs"
WIDE = 8
MAX_ARRAY = 1000  # the API's limit and, with MaxArraySize=1001, Slurm's
JOB = {
    "project": "bench", "name": "bench", "script": "true\n", "stack": "cuda-12", "count": 1,
    "hwspec": "cuda", "walltime": 1, "code_licence": "Apache-2.0", "data_licence": "CC-BY-4.0",
    "model_freedom": "free",
}  # fmt: skip
SBATCH = ["sbatch", "--parsable", "--hold", "--wrap=true", "--output=/dev/null"]

# A phase's answers: (ok, ms) per submission, and the wall time of the phase.
Results = tuple[list[tuple[bool, float]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """TERM, then KILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load() -> str:
    """A fleet offering cuda-12, one member of an approved project; the member's token."""
    from rest_framework.authtoken.models import Token

    from portal.accounts.models import PartnerMembership, PartnerProject, User

    bb.make_fleet(scale=1000)  # one host of each model of bench/booking.py
    user = User.objects.create(username="bench", password="!", debian_member_source="staff")  # noqa: S106  (unusable)
    project = PartnerProject.objects.create(
        name="Bench", slug="bench", state=PartnerProject.State.APPROVED,
        device_hours_per_month=10**9, max_concurrent_devices=1000, max_walltime_hours=48,
    )  # fmt: skip
    PartnerMembership.objects.create(project=project, user=user)
    return Token.objects.create(user=user).key


def run_wide(width: int, per_thread: list[list[Callable[[], bool]]]) -> Results:
    """`width` threads, each making its calls in turn; (ok, ms) per call and the wall time."""
    results: list[tuple[bool, float]] = []
    lock = threading.Lock()

    def client(calls):
        mine = []
        for call in calls:
            t0 = time.perf_counter()
            ok = call()
            mine.append((ok, (time.perf_counter() - t0) * 1000))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(per_thread[i],)) for i in range(width)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


class Client:
    """One keep-alive connection to the portal; `post` records the answers it did not expect."""

    def __init__(self, port: int, token: str, errors: list):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
        self.errors = errors

    def post(self, body: dict) -> tuple[int, bytes]:
        for attempt in (1, 2):  # a keep-alive connection the server closed while idle
            try:
                self.conn.request("POST", "/api/jobs/", json.dumps(body), self.headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def submit(self, body: dict) -> bool:
        status, data = self.post(body)
        if status != 201:
            self.errors.append((status, data[:300]))
        return status == 201


def portal_calls(port: int, token: str, width: int, n: int, body: dict, errors: list):
    """n submissions of `body` spread over `width` clients (one connection each)."""
    clients = [Client(port, token, errors) for _ in range(width)]
    return [[partial(clients[i].submit, body)] * len(range(i, n, width)) for i in range(width)]


def sbatch_call(env: dict, args: list[str], errors: list) -> Callable[[], bool]:
    def call() -> bool:
        done = subprocess.run(SBATCH + args, env=env, capture_output=True, text=True, check=False)  # noqa: S603  (fixed arguments)
        if done.returncode:
            errors.append((done.returncode, done.stderr[:300]))
        return done.returncode == 0

    return call


def slurm_calls(env: dict, width: int, n: int, args: list[str], errors: list):
    return [[sbatch_call(env, args, errors)] * len(range(i, n, width)) for i in range(width)]


def figures(results: Results, tasks_per_call: int = 1) -> dict:
    answers, wall = results
    ms = [m for _, m in answers]
    ok = sum(1 for good, _ in answers if good)
    return {
        "n": len(answers), "ok": ok, "rate": ok * tasks_per_call / wall, "wall": wall,
        "median": bb.pct(ms, 50), "p95": bb.pct(ms, 95),
    }  # fmt: skip


def show(who: str, phase: str, f: dict, unit: str) -> None:
    bad = f"  !!!!!! {f['n'] - f['ok']} FAILED !!!!!!" if f["ok"] != f["n"] else ""
    print(
        f"  {who:6} {phase:14} {f['ok']:>5}/{f['n']:<5} in {f['wall']:6.2f} s ="
        f" {f['rate']:8.1f} {unit}/s   median {f['median']:7.1f} ms  p95 {f['p95']:7.1f} ms{bad}"
    )


def job_count() -> int:
    from portal.jobs.models import Job

    return Job.objects.count()


def write_pending_tasks() -> tuple[int, float] | None:
    """The scheduler pass's first step, in-process: the arrays' pending tasks written; (how
    many, ms). None on a portal that writes an array whole at submission."""
    from portal.jobs import services

    write = getattr(services, "write_array_tasks", None)
    if write is None:
        return None
    t0 = time.perf_counter()
    written = write()
    return written, (time.perf_counter() - t0) * 1000


def measure_portal(port: int, token: str, n: int, arrays: int, array: int) -> dict:
    errors: list = []
    warm = portal_calls(port, token, WIDE, 2 * WIDE, JOB, errors)
    run_wide(WIDE, warm)  # every worker and connection once, not counted
    out: dict[str, Any] = {}
    out["single"] = figures(run_wide(1, portal_calls(port, token, 1, n, JOB, errors)))
    show("portal", "one at a time", out["single"], "jobs")
    out["wide"] = figures(run_wide(WIDE, portal_calls(port, token, WIDE, n, JOB, errors)))
    show("portal", f"{WIDE}-wide", out["wide"], "jobs")
    before = job_count()
    status, data = Client(port, token, errors).post({**JOB, "array": 2})
    made = job_count() - before
    # Tasks of the probe once written: both at once, or the first and one for the next pass.
    out["probe"] = made + (json.loads(data).get("array_pending", 0) if status == 201 else 0)
    if status != 201 or out["probe"] != 2:
        out["array_note"] = (
            f"the API answered {status}: {data[:200].decode(errors='replace')}"
            if status != 201
            else f"the API ignored `array` (201, {made} job made for array: 2, none pending)"
        )
        print(f"  portal arrays: skipped, {out['array_note']}")
    else:
        calls = portal_calls(port, token, 1, arrays, {**JOB, "array": array}, errors)
        out["array"] = figures(run_wide(1, calls), tasks_per_call=array)
        show("portal", f"arrays of {array}", out["array"], "tasks")
    out["errors"] = errors
    if errors:
        print(f"  !!!!!! {len(errors)} answers not 201 !!!!!! first: {errors[0]}")
    return out


@contextlib.contextmanager
def slurm_cluster() -> Iterator[dict]:
    """A single-node Slurm on loopback (munged, slurmctld, slurmd) in a temporary directory;
    yields the environment for its commands. Stopped and removed however the block ends."""
    tmp = Path(tempfile.mkdtemp(prefix="porterbox-bench-slurm-"))
    procs: list[subprocess.Popen] = []
    try:
        (tmp / "munge").mkdir(mode=0o700)
        for sub in ("state", "spool", "log"):
            (tmp / sub).mkdir()
        key = tmp / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock, host = tmp / "munge" / "sock", socket.gethostname().split(".")[0]
        conf = tmp / "slurm.conf"
        conf.write_text(
            f"""ClusterName=bench
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MaxJobCount=1000000
MaxArraySize={MAX_ARRAY + 1}
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=bench Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
        )
        env = dict(os.environ, SLURM_CONF=str(conf))
        daemons = [
            ["/usr/sbin/munged", "--foreground", "--force", f"--key-file={key}",
             f"--socket={sock}", f"--pid-file={tmp}/munge/pid", f"--log-file={tmp}/log/munged.log",
             f"--seed-file={tmp}/munge/seed"],
            ["/usr/sbin/slurmctld", "-D", "-c", "-f", str(conf)],
            ["/usr/sbin/slurmd", "-D", "-N", host, "-f", str(conf)],
        ]  # fmt: skip
        for argv in daemons:
            with (tmp / "log" / f"{Path(argv[0]).name}.out").open("w") as out:
                # Debian's daemons with fixed arguments.
                procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT))  # noqa: S603
            time.sleep(0.5)
        sinfo, up = ["sinfo", "-h", "-o", "%T"], False
        for _ in range(120):
            if any(p.poll() is not None for p in procs):
                break
            state = subprocess.run(sinfo, env=env, capture_output=True, text=True, check=False)  # noqa: S603
            if up := state.stdout.strip() == "idle":
                break
            time.sleep(0.25)
        if not up:
            logs = "".join(f"== {f.name}\n{f.read_text()[-1500:]}" for f in (tmp / "log").iterdir())
            raise RuntimeError(f"Slurm did not come up (node not idle in 30 s):\n{logs}")
        yield env
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def measure_slurm(env: dict, n: int, arrays: int, array: int) -> dict:
    errors: list = []
    run_wide(WIDE, slurm_calls(env, WIDE, WIDE, [], errors))  # warm up, not counted
    out: dict[str, Any] = {}
    out["single"] = figures(run_wide(1, slurm_calls(env, 1, n, [], errors)))
    show("slurm", "one at a time", out["single"], "jobs")
    out["wide"] = figures(run_wide(WIDE, slurm_calls(env, WIDE, n, [], errors)))
    show("slurm", f"{WIDE}-wide", out["wide"], "jobs")
    calls = slurm_calls(env, 1, arrays, [f"--array=0-{array - 1}"], errors)
    out["array"] = figures(run_wide(1, calls), tasks_per_call=array)
    show("slurm", f"arrays of {array}", out["array"], "tasks")
    squeue = ["squeue", "-h", "-r", "-o", "%i"]
    queued = subprocess.run(squeue, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    out["queued"] = len(queued.stdout.split())
    if errors:
        print(f"  !!!!!! {len(errors)} sbatch failures !!!!!! first: {errors[0]}")
    return out


def slurm_missing() -> str:
    wanted = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd"]
    missing = [p for p in wanted if not Path(p).exists()]
    missing += [c for c in ("sbatch", "sinfo", "squeue") if not shutil.which(c)]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the single-node Slurm runs as root (SlurmUser=root): run as root"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="submissions per phase")
    parser.add_argument("--arrays", type=int, default=10, help="array submissions")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway database")
    parser.add_argument("--database", default=BENCH_DB,
                        help=f"the throwaway database's name (default {BENCH_DB})")  # fmt: skip
    args = parser.parse_args()
    if not args.database.isidentifier():
        parser.error("--database: letters, digits and underscores")
    admin_url, bench_url = bb.database_urls("jobs.py", args.database)
    bb.create_database(admin_url, name=args.database)
    try:
        with tempfile.TemporaryDirectory(prefix="porterbox-bench-") as var_dir:
            run(args, bench_url, var_dir)
    finally:
        from django.conf import settings

        if settings.configured:
            from django.db import connections

            connections.close_all()
        if not args.keep:
            bb.create_database(admin_url, drop_only=True, name=args.database)


def run(args, bench_url: str, var_dir: str) -> None:
    bb.setup_django(bench_url, var_dir)
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
    machine = f"{os.cpu_count()} CPUs, PostgreSQL {pg}, Python {sys.version.split()[0]}"
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Machine: {machine}; load average {load_avg}")
    token, n, array = load(), args.n, min(args.n, MAX_ARRAY)
    conn_max_age = os.environ.get("DATABASE_CONN_MAX_AGE", "60")
    print(
        f"N = {n} submissions per phase, {args.arrays} arrays of {array}; portal: gunicorn 4"
        f" workers x 4 threads, DATABASE_CONN_MAX_AGE={conn_max_age}"
    )
    # The per-user API rate out of the way: this measures submission, not the limiter.
    rate = {"API_RATE_USER": "1000000/min"}
    with bb.portal_server(bench_url, var_dir, extra_env=rate) as (port, log_path):
        portal = measure_portal(port, token, n, args.arrays, array)
    tracebacks = log_path.read_text().count("Traceback")
    if (written := write_pending_tasks()) is not None:
        portal["next_pass"] = written
        print(f"  portal: the next pass writes the {written[0]} tasks: {written[1]:.1f} ms")
    expected = 2 * WIDE + 2 * n + portal["probe"] + args.arrays * array * ("array" in portal)
    print(f"  portal: {job_count()} jobs in the database (expected {expected});"
          f" {tracebacks} tracebacks in the gunicorn log")  # fmt: skip
    peer = None
    if no_slurm := slurm_missing():
        print(f"  slurm: skipped, {no_slurm}")
    else:
        with slurm_cluster() as env:
            sbatch = [shutil.which("sbatch") or "sbatch", "--version"]
            version = subprocess.run(sbatch, env=env, capture_output=True, text=True, check=False)  # noqa: S603
            machine += f", {version.stdout.strip()}"
            print(f"  slurm: {version.stdout.strip()}, a single node on loopback, jobs held")
            peer = measure_slurm(env, n, args.arrays, array)
        expected = WIDE + 2 * n + args.arrays * array
        print(f"  slurm: {peer['queued']} jobs in the queue (expected {expected}), all held")

    print(f"\nSummary ({machine})")
    print(f"  {'':24} {'portal':>12} {'slurm':>12} {'portal/slurm':>13}")
    for key, label, unit in (
        ("single", "one at a time", "jobs/s"),
        ("wide", f"{WIDE}-wide", "jobs/s"),
        ("array", f"arrays of {array}", "tasks/s"),
    ):
        mine = portal[key]["rate"] if key in portal else None
        theirs = peer[key]["rate"] if peer else None
        ratio = f"{mine / theirs:13.2f}" if mine and theirs else f"{'-':>13}"
        cells = [f"{x:12.1f}" if x is not None else f"{'-':>12}" for x in (mine, theirs)]
        print(f"  {label + ' (' + unit + ')':24} {cells[0]} {cells[1]} {ratio}")
    if "next_pass" in portal and "array" in portal:
        tasks, ms = portal["next_pass"]
        # Submission plus the pass's writing, as the tasks are all in the queue after it.
        whole = portal["array"]["ok"] * array / (portal["array"]["wall"] + ms / 1000)
        theirs = peer["array"]["rate"] if peer else None
        ratio = f"{whole / theirs:13.2f}" if theirs else f"{'-':>13}"
        cell = f"{theirs:12.1f}" if theirs else f"{'-':>12}"
        print(f"  {'+ the pass (tasks/s)':24} {whole:12.1f} {cell} {ratio}")
        print(f"  the next pass writes the {tasks} tasks: {ms:.1f} ms")
    if "array_note" in portal:
        print(f"  portal arrays skipped: {portal['array_note']}")


if __name__ == "__main__":
    main()
