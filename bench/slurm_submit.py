"""Submissions to a Slurm cluster through the portal, side by side with `sbatch` directly.

As root, with Debian's `slurm-wlm`, `munge` and `openssh-server` installed, and DATABASE_URL
naming a PostgreSQL server whose user may CREATE and DROP the throwaway database
`porterbox_bench_slurm`:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/slurm_submit.py

The cluster: a single-node Slurm on loopback (tests/clusters/slurm.py: munged, slurmctld,
slurmd in a temporary directory) whose only partition is set DOWN, so every job stays queued
and nothing runs; its login node is a loopback sshd with its own host keys
(tests/provisioning/sshd.py), reached over the portal's pinned-key transport. Phases, N jobs
each, the same batch script and options each time (`--job-name`, `--partition`, `--time`,
`--gres=gpu:1`, `--chdir`, `--output`, the script on stdin):

1. `sbatch` run directly on the login node (a fork and exec per job), one at a time;
2. `sbatch` over SSH through provisioning/slurm.py (one kept connection), one at a time;
3. the portal: `job_submit_tasks(partition=...)` in-process for N jobs, then cluster passes
   (portal/clusters/services.py) until every job has its Slurm id: per pass `scontrol ping`,
   one `squeue --json` (is any of them there already?), then one command over SSH per 200
   jobs that unpacks their batch scripts (options as #SBATCH lines) and runs `mkdir` and
   `sbatch` for each, and the database writes, one job at a time.

Phase 2 is what one SSH command per job would cost; phase 3 is what the portal does.

Printed: each phase's rate and median/p95 per job, and the ratio to `sbatch` directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
spec = importlib.util.spec_from_file_location("bench_booking", ROOT / "bench" / "booking.py")
assert spec is not None and spec.loader is not None
bb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bb)

from tests.clusters import slurm as test_slurm  # noqa: E402
from tests.provisioning import sshd as sshd_helper  # noqa: E402

BENCH_DB = "porterbox_bench_slurm"
SCRIPT = "true\n"
SBATCH = shutil.which("sbatch") or "/usr/bin/sbatch"


def pct(values: list[float], q: int) -> float:
    return bb.pct(values, q) if values else 0.0


def show(label: str, n: int, wall: float, ms: list[float], base: float | None) -> dict:
    rate = n / wall if wall else 0.0
    ratio = f"  {rate / base:5.2f} x sbatch" if base else ""
    median = statistics.median(ms) if ms else 0.0
    latency = f"   median {median:6.1f} ms  p95 {pct(ms, 95):6.1f} ms" if ms else " " * 38
    print(f"  {label:34} {n:>5} jobs in {wall:6.2f} s = {rate:7.1f} jobs/s{latency}{ratio}")
    return {"rate": rate, "median": median, "p95": pct(ms, 95)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=300, help="jobs per phase")
    args = parser.parse_args()
    if why := test_slurm.missing():
        sys.exit(f"bench/slurm_submit.py needs Slurm: {why}")
    if not sshd_helper.available():
        sys.exit("bench/slurm_submit.py needs OpenSSH's sshd (apt-get install openssh-server)")
    admin_url, bench_url = bb.database_urls("slurm_submit.py", BENCH_DB)
    bb.create_database(admin_url, name=BENCH_DB)
    cluster = test_slurm.start()
    base = Path(tempfile.mkdtemp(prefix="porterbox-bench-login-"))
    server = sshd_helper.start(base / "sshd")
    try:
        (base / "portal").mkdir()
        key = sshd_helper.keygen(base / "portal" / "id_ed25519")
        server.authorize(key.with_suffix(".pub"))
        bb.setup_django(bench_url, str(base / "var"))
        run(args.n, cluster, server, key)
    finally:
        from django.conf import settings

        if settings.configured:
            from django.db import connections

            connections.close_all()
        server.stop()
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
        bb.create_database(admin_url, drop_only=True, name=BENCH_DB)


def run(n: int, cluster: test_slurm.Cluster, server, key: Path) -> None:
    from django.conf import settings
    from django.db import connection

    from portal.accounts.models import PartnerMembership, PartnerProject, User
    from portal.clusters import services
    from portal.clusters.models import (
        Cluster,
        ClusterJob,
        ClusterStack,
        Partition,
        ProjectAccount,
    )
    from portal.inventory.models import DriverStack
    from portal.jobs.services import job_submit_tasks
    from portal.ssh import reset_transport
    from provisioning.slurm import BatchJob

    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
    version = cluster.run("sbatch", "--version").stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Machine: {os.cpu_count()} CPUs, PostgreSQL {pg}, Python {sys.version.split()[0]},"
          f" {version}; load average {load}")  # fmt: skip
    print(f"N = {n} jobs per phase; the partition is DOWN, so every job stays queued")
    down = cluster.run("scontrol", "update", f"PartitionName={test_slurm.PARTITION}", "State=DOWN")
    assert down.returncode == 0, down.stderr

    settings.PORTAL_SSH_KEY_FILE = str(key)
    reset_transport()
    work = cluster.dir / "work"
    row = Cluster.objects.create(
        name="bench", login_host=server.host, login_port=server.port, login_user=server.user,
        host_keys=server.known_keys, slurm_conf=str(cluster.conf), work_dir=str(work),
    )  # fmt: skip
    partition = Partition.objects.create(cluster=row, name=test_slurm.PARTITION, gpus_per_node=2)
    stack = DriverStack.objects.create(name="cuda-12", hwspecs=["cuda"], chroot="cuda-12")
    ClusterStack.objects.create(cluster=row, stack=stack, setup="")
    user = User.objects.create(username="carol")
    project = PartnerProject.objects.create(
        name="Open speech", slug="open-speech", state=PartnerProject.State.APPROVED,
        device_hours_per_month=10**9, max_walltime_hours=24,
    )  # fmt: skip
    PartnerMembership.objects.create(project=project, user=user)
    ProjectAccount.objects.create(cluster=row, project=project, account="speech")

    def batch(name: str) -> BatchJob:
        (work / name).mkdir(parents=True, exist_ok=True)
        return BatchJob(
            name=name, partition=test_slurm.PARTITION, time_limit=timedelta(hours=1),
            work_dir=str(work / name), script=SCRIPT, gpus=1, account="speech",
        )  # fmt: skip

    # 1. sbatch on the login node itself.
    ms, start = [], time.perf_counter()
    for i in range(n):
        job = batch(f"direct-{i}")
        t = time.perf_counter()
        done = subprocess.run(  # noqa: S603  (fixed arguments)
            [SBATCH, "--parsable", *job.options()], input=job.batch_script(), text=True,
            env=cluster.env, capture_output=True, check=False,
        )  # fmt: skip
        ms.append((time.perf_counter() - t) * 1000)
        assert done.returncode == 0, done.stderr
    direct = show("sbatch on the login node", n, time.perf_counter() - start, ms, None)

    # 2. sbatch over the SSH transport.
    slurm = services.slurm_for(row)
    slurm.ping()  # the connection made once, not counted
    ms, start = [], time.perf_counter()
    for i in range(n):
        job = batch(f"ssh-{i}")
        t = time.perf_counter()
        slurm.submit(job)
        ms.append((time.perf_counter() - t) * 1000)
    show("sbatch over SSH (provisioning)", n, time.perf_counter() - start, ms, direct["rate"])

    # 3. The portal: submission, then the cluster passes that sbatch.
    ms, start = [], time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        job_submit_tasks(
            project=project, submitter=user, name=f"portal-{i}", script=SCRIPT, stack=stack,
            walltime=timedelta(hours=1), code_licence="MIT", data_licence="CC0-1.0",
            model_freedom="free", partition=str(partition),
        )  # fmt: skip
        ms.append((time.perf_counter() - t) * 1000)
    submit_wall = time.perf_counter() - start
    show("portal: job_submit (in-process)", n, submit_wall, ms, None)
    passes, pass_ms, start = 0, [], time.perf_counter()
    while ClusterJob.objects.filter(slurm_job_id__isnull=True).exists():
        t = time.perf_counter()
        report = services.cluster_pass(row.pk)
        pass_ms.append((time.perf_counter() - t) * 1000)
        passes += 1
        assert not report.error, report.error
    pass_wall = time.perf_counter() - start
    show(f"portal: cluster passes ({passes})", n, pass_wall, [], direct["rate"])
    print(f"    (passes took {', '.join(f'{x / 1000:.2f}' for x in pass_ms)} s)")
    total = show("portal: submit + passes", n, submit_wall + pass_wall, [], direct["rate"])

    queued = cluster.run("squeue", "-h", "-o", "%j")
    names = queued.stdout.split()
    portal_names = [x for x in names if x.startswith("porterbox-j")]
    print(f"  slurm: {len(names)} jobs queued (expected {3 * n}); portal's: {len(portal_names)}"
          f" distinct {len(set(portal_names))} (expected {n})")  # fmt: skip
    print(f"\nSummary: portal end to end {total['rate']:.1f} jobs/s against sbatch directly"
          f" {direct['rate']:.1f} jobs/s ({total['rate'] / direct['rate']:.2f} x)")  # fmt: skip


if __name__ == "__main__":
    main()
