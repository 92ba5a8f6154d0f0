"""The pieces of a provisioning test on the test host, shared by the tests and bench/.

A test host (tests/testhost.py) bootstrapped by the Ansible playbooks, with device nodes
standing in for two NVIDIA GPUs and an `nvidia-smi` that prints the recorded output of a real
dual RTX A5000 machine; people who log in with OpenSSH's ssh; a real Celery worker with beat.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.db import connection

from portal.accounts.models import User
from portal.booking.models import Reservation
from tests.ansible.bootstrap import bootstrap
from tests.provisioning.sshd import keygen
from tests.testhost import TestHost

REPO = Path(__file__).resolve().parent.parent.parent
SMI_XML = REPO / "tests/fixtures/gpu/nvidia-smi/dual_a5000-v13.xml"
# This machine's recording is its -q -x report: the inventory's query for compute_cap is refused
# as drivers before R510 refuse it, so the probe reads the report, as it does on such a host.
FAKE_SMI = "#!/bin/sh\n# Recorded output of a real machine (tests/fixtures/gpu/SOURCES.md).\n" \
    'case "$*" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; ' \
    "exit 2;; esac\n" \
    "exec cat /usr/local/share/porterbox-test/nvidia-smi.xml\n"  # fmt: skip


def prepare_host(host: TestHost, portal_pub: Path, tmp: Path) -> TestHost:
    """A bare test host bootstrapped by ansible/site.yml, as a real one is (one stack, cuda-12;
    two GPUs), plus an nvidia-smi that prints what a real one printed."""
    tmp.mkdir(parents=True, exist_ok=True)
    root_key = keygen(tmp / "root_ed25519")
    # Jobs that outlive their walltime in seconds, not minutes.
    extra = {"porterbox_agent_job_min_walltime_s": 1}
    bootstrap(host, portal_pub=portal_pub, root_key=root_key, tmp=tmp, extra_vars=extra)
    host.write_file(SMI_XML_ON_HOST, SMI_XML.read_text())
    host.write_file("/usr/bin/nvidia-smi", FAKE_SMI, 0o755)  # where Debian puts it
    return host


SMI_XML_ON_HOST = "/usr/local/share/porterbox-test/nvidia-smi.xml"
_PROCESSES = re.compile(r"<processes>.*?</processes>", re.S)
_PROCESS = """<process_info>
				<gpu_instance_id>N/A</gpu_instance_id>
				<compute_instance_id>N/A</compute_instance_id>
				<pid>{pid}</pid>
				<type>C</type>
				<process_name>python3</process_name>
				<used_memory>{mib} MiB</used_memory>
			</process_info>"""


def smi_xml(
    processes: dict[int, list[tuple[int, int]]] | None = None,
    replace: dict[str, str] | None = None,
) -> str:
    """The recorded dual A5000 output, with the processes of GPU i set to processes[i]
    ((pid, MiB) pairs, pids of the test host), and texts replaced (e.g. a temperature).

    Only the process list and what `replace` names differ from what the real tool printed."""
    text = SMI_XML.read_text()
    if processes is not None:
        blocks = iter(range(len(_PROCESSES.findall(text))))

        def listed(_match) -> str:
            entries = [
                _PROCESS.format(pid=pid, mib=mib) for pid, mib in processes.get(next(blocks), [])
            ]
            return "<processes>" + "".join(entries) + "</processes>"

        text = _PROCESSES.sub(listed, text)
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def host_fingerprint(host: TestHost) -> str:
    return host.run("ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub").split()[1]


@dataclass
class Person:
    """A portal user with a real key pair, who logs in to the test host with OpenSSH's ssh."""

    user: User
    key: Path
    known_hosts: Path
    port: int

    @property
    def unix(self) -> str:
        return Reservation(user=self.user).unix_user

    def ssh(self, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-p", str(self.port), "-F", "/dev/null",
             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "ConnectTimeout=5",
             f"{self.unix}@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip


class Worker:
    """A real Celery worker with embedded beat, in its own process group, on this test's DB."""

    def __init__(self, tmp: Path, portal_key: Path, lease_seconds: int = 30):
        self.tmp = tmp
        db = connection.settings_dict
        if connection.vendor == "postgresql":
            url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        else:
            url = f"sqlite:///{db['NAME']}"
        self.mail = tmp / "mail"
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            "PORTAL_VAR_DIR": str(tmp / "var"),
            "CELERY_QUEUE": f"test-{uuid.uuid4().hex[:8]}",  # nothing else's messages
            "PORTAL_SSH_KEY_FILE": str(portal_key),
            "PORTAL_RECONCILE_SECONDS": "1",
            "PORTAL_LEASE_SECONDS": str(lease_seconds),
            "PORTAL_SSH_RETRIES": "0",
            "EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
            "EMAIL_FILE_PATH": str(self.mail),
        }
        self.process: subprocess.Popen | None = None

    def start(self) -> Worker:
        celery = str(Path(sys.executable).parent / "celery")
        log = (self.tmp / "worker.log").open("ab")
        self.process = subprocess.Popen(
            [celery, "-A", "portal", "worker", "--beat", "--concurrency", "1",
             "--loglevel", "INFO", "-Q", self.env["CELERY_QUEUE"],
             "--schedule", str(self.tmp / "beat-schedule")],
            env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool: no cleanup of any kind runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    @property
    def log(self) -> str:
        return (self.tmp / "worker.log").read_text(errors="replace")

    def mails(self) -> str:
        if not self.mail.exists():
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted(self.mail.iterdir()))
