"""A single-node Slurm on loopback for tests and bench/slurm_submit.py: Debian's munged,
slurmctld and slurmd in a temporary directory, with their own munge key and ports.

The node advertises GPUs whose device files are copies of /dev/null, so `--gres=gpu:N` is
scheduled and counted exactly as on a GPU node, with nothing real behind it.
Without accounting (`accounting_storage/none`): state comes from slurmctld while it knows the
job (MinJobAge keeps finished jobs an hour here), which is what the portal reads (docs/slurm.md).
slurmctld can be stopped and started again (its state survives in StateSaveLocation), to test
what a cluster that goes away does to the portal.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")
PARTITION = "gpu"
GPUS = 2


def missing() -> str:
    """Why a cluster cannot start here, or ""."""
    absent = [p for p in DAEMONS if not Path(p).exists()]
    absent += [c for c in COMMANDS if not shutil.which(c)]
    if absent:
        return f"{', '.join(absent)} not found (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the single-node Slurm runs as root (SlurmUser=root)"
    return ""


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


@dataclass
class Cluster:
    dir: Path
    node: str
    max_array: int = 1000
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def write_config(self) -> None:
        key = self.dir / "munge" / "key"
        (self.dir / "munge").mkdir(mode=0o700)
        for sub in ("state", "spool", "log", "work"):
            (self.dir / sub).mkdir()
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.conf.write_text(
            f"""ClusterName=porterbox-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.dir}/munge/sock
CredType=cred/munge
StateSaveLocation={self.dir}/state
SlurmdSpoolDir={self.dir}/spool
SlurmctldPidFile={self.dir}/slurmctld.pid
SlurmdPidFile={self.dir}/slurmd.pid
SlurmctldLogFile={self.dir}/log/slurmctld.log
SlurmdLogFile={self.dir}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
MpiDefault=none
ReturnToService=2
MinJobAge=3600
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MaxJobCount=1000000
MaxArraySize={self.max_array + 1}
GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} Gres=gpu:{GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        # slurmd wants a GPU's File to be a device node: copies of /dev/null (1:3) stand in.
        for index in range(GPUS):
            os.mknod(self.dir / f"gpu{index}", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        files = f"{self.dir}/gpu[0-{GPUS - 1}]"
        (self.dir / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File={files}\n")

    def _start(self, name: str, argv: list[str]) -> None:
        with (self.dir / "log" / f"{name}.out").open("a") as out:
            # Debian's daemons with fixed arguments.
            self.procs[name] = subprocess.Popen(
                argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def start_munged(self) -> None:
        m = self.dir / "munge"
        self._start("munged", [
            DAEMONS[0], "--foreground", "--force", f"--key-file={m}/key", f"--socket={m}/sock",
            f"--pid-file={m}/pid", f"--log-file={self.dir}/log/munged.log", f"--seed-file={m}/seed",
        ])  # fmt: skip

    def start_slurmctld(self) -> None:
        self._start("slurmctld", [DAEMONS[1], "-D", "-f", str(self.conf)])

    def stop_slurmctld(self) -> None:
        stop(self.procs.pop("slurmctld"))

    def start_slurmd(self) -> None:
        self._start("slurmd", [DAEMONS[2], "-D", "-N", self.node, "-f", str(self.conf)])

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                break
            if self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle":
                return
            time.sleep(0.25)
        logs = "".join(
            f"== {f.name}\n{f.read_text()[-1500:]}" for f in (self.dir / "log").iterdir()
        )
        raise RuntimeError(f"Slurm did not come up (node not idle):\n{logs}")

    def wait_controller(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run("scontrol", "ping").stdout.count("UP"):
                return
            time.sleep(0.25)
        raise RuntimeError("slurmctld did not answer scontrol ping")

    def close(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            if name in self.procs:
                stop(self.procs.pop(name))
        shutil.rmtree(self.dir, ignore_errors=True)


def start(max_array: int = 1000) -> Cluster:
    """A running cluster, its node idle; close() stops it and removes its directory."""
    tmp = Path(tempfile.mkdtemp(prefix="porterbox-slurm-"))
    tmp.chmod(0o755)
    cluster = Cluster(dir=tmp, node=socket.gethostname().split(".")[0], max_array=max_array)
    try:
        cluster.write_config()
        cluster.start_munged()
        time.sleep(0.5)
        cluster.start_slurmctld()
        time.sleep(0.5)
        cluster.start_slurmd()
        cluster.wait_idle()
    except BaseException:
        cluster.close()
        raise
    return cluster
