"""Run ansible/portal.yml against a test host (tests/deploy/container.py), as an admin runs it
against a fresh Debian machine, and reach the portal it serves over HTTPS."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.ansible.bootstrap import ANSIBLE_DIR, BIN, environment
from tests.testhost import TestHost


class PlaybookFailed(AssertionError):
    def __init__(self, output: str):
        super().__init__(output)
        self.output = output


def write_inventory(host: TestHost, *, root_key: Path, tmp: Path, variables: dict) -> Path:
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text(host.known_hosts)
    ssh_args = f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    host_vars = {
        "ansible_host": "127.0.0.1",
        "ansible_port": host.port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(root_key),
        "ansible_ssh_common_args": ssh_args + " -o IdentitiesOnly=yes",
        **variables,
    }
    path = tmp / "portal-inventory.yml"
    path.write_text(json.dumps({"portal": {"hosts": {host.hostname: host_vars}}}, indent=2))
    return path


def run_playbook(inventory: Path, tmp: Path, *extra: str) -> str:
    """ansible/portal.yml's output; PlaybookFailed (with it) if the playbook fails."""
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), *extra, "portal.yml"],
        cwd=ANSIBLE_DIR, env=environment(tmp), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise PlaybookFailed(f"ansible-playbook exited with {done.returncode}:\n{output}")
    return output


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Site:
    """The portal as a browser or the API client reaches it: through nginx, over TLS, trusting
    the site's own (self-signed) certificate only."""

    url: str
    cafile: Path
    token: str = ""
    context: ssl.SSLContext = field(init=False)

    def __post_init__(self):
        self.context = ssl.create_default_context(cafile=str(self.cafile))

    def request(self, path: str, body: dict | None = None, timeout: float = 30) -> Answer:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        assert self.url.startswith("https://"), self.url
        request = urllib.request.Request(self.url + path, data=data, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as r:  # noqa: S310
                return Answer(r.status, dict(r.headers.items()), r.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers.items()), error.read())
