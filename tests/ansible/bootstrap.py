"""Bootstrap a test host (tests/testhost.py) with the Ansible playbook, as a real host is.

    host = TestHost().start(tmp / "host")
    output = bootstrap(host, portal_pub=portal_key_pub, root_key=root_key, tmp=tmp)

The host ends as ansible/site.yml leaves a host with no init system: the agent installed, one
stack (cuda-12: a bare Debian chroot), two NVIDIA GPUs in the device map and the portal's key
authorized; sshd restarted, which the playbook's handler would do on a host with systemd.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.testhost import TestHost

REPO = Path(__file__).resolve().parent.parent.parent
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent  # the virtualenv's, where ansible-core is installed
MIRROR = "http://deb.debian.org/debian"
HOST_VARS = {
    "porterbox_systemd": False,  # the test host has no init system
    "gpu_nvidia_install_driver": False,
    # The smallest Debian that logs in; bookworm, the release of this machine (and its keyring).
    "porterbox_stacks": [
        {
            "name": "cuda-12",
            "chroot": "cuda-12",
            "suite": "bookworm",
            "mirror": MIRROR,
            "variant": "essential",
            "packages": [],
        }
    ],
    "porterbox_devices": {"nvidia": {"0": ["/dev/nvidia0"], "1": ["/dev/nvidia1"]}},
    "porterbox_shared_nodes": {"nvidia": ["/dev/nvidiactl"]},
}


class BootstrapFailed(AssertionError):
    pass


def missing() -> list[str]:
    """What this machine lacks to bootstrap a test host (empty: it can)."""
    lacking = TestHost.missing()
    lacking += [tool for tool in ("ssh",) if not shutil.which(tool)]
    lacking += [tool for tool in ("ansible-playbook",) if not (BIN / tool).exists()]
    try:
        socket.create_connection((urlsplit(MIRROR).hostname, 80), timeout=5).close()
    except OSError:
        lacking.append(f"{MIRROR} (packages and the stack's chroot come from it)")
    return lacking


def environment(tmp: Path) -> dict[str, str]:
    """Ansible's environment: its files under tmp, none in this machine's home."""
    home = tmp / "ansible-home"
    return {
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
    }


def write_inventory(
    host: TestHost, *, portal_pub: str, root_key: Path, tmp: Path, extra: dict | None = None
) -> Path:
    """An inventory of the one host, reached as root with root_key, its keys pinned."""
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text(host.known_hosts)
    ssh_args = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    ssh_args += " -o IdentitiesOnly=yes"
    host_vars = {
        "ansible_host": "127.0.0.1",
        "ansible_port": host.port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(root_key),
        "ansible_ssh_common_args": ssh_args,
        "porterbox_portal_public_key": portal_pub.strip(),
        **HOST_VARS,
        **(extra or {}),
    }
    inventory = {
        "porterbox": {"children": {"nvidia": {"hosts": {host.hostname: host_vars}}}},
    }
    path = tmp / "inventory.yml"
    path.write_text(json.dumps(inventory, indent=2))  # JSON is YAML
    return path


def bootstrap(
    host: TestHost,
    *,
    portal_pub: str | Path,
    root_key: Path,
    tmp: Path,
    extra_vars: dict | None = None,
) -> str:
    """Run ansible/site.yml on host (root logs in with root_key, whose public half is
    root_key.pub); restart its sshd; return the playbook's output. Raises BootstrapFailed with
    that output if the playbook fails. extra_vars add to or override the host's variables.
    """
    if isinstance(portal_pub, Path):
        portal_pub = portal_pub.read_text()
    tmp.mkdir(parents=True, exist_ok=True)
    host.authorize_root(Path(f"{root_key}.pub").read_text())
    inventory = write_inventory(
        host, portal_pub=portal_pub, root_key=root_key, tmp=tmp, extra=extra_vars
    )
    # From ansible/, so that its ansible.cfg applies, as it does for a person.
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml"],
        cwd=ANSIBLE_DIR, env=environment(tmp), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise BootstrapFailed(f"ansible-playbook exited with {done.returncode}:\n{output}")
    host.reload_sshd()  # the playbook's handler, on a host with systemd
    return output


def recap(output: str, hostname: str) -> dict[str, int]:
    """The PLAY RECAP's counts for hostname: {"ok": 12, "changed": 0, ...}."""
    for line in output.splitlines():
        name, _, counts = line.partition(" : ")
        if name.strip() == hostname and counts:
            return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
    raise BootstrapFailed(f"no PLAY RECAP line for {hostname}:\n{output}")
