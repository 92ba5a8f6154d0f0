#!/usr/bin/env python3
"""Ansible dynamic inventory: the portal's hosts, groups and pinned SSH host keys.

    PORTAL_URL=https://porterbox.debian.net PORTAL_TOKEN_FILE=~/.config/porterbox/token \
        ansible-playbook -i inventory/portal.py site.yml

The token is a staff user's API token (`manage.py drf_create_token USER`), from PORTAL_TOKEN or
the file PORTAL_TOKEN_FILE. The hosts' pinned keys (confirmed when each host was registered) are
written to a known_hosts file (PORTAL_KNOWN_HOSTS, default ~/.cache/porterbox/known_hosts) that
every host's ssh uses with StrictHostKeyChecking=yes: Ansible trusts exactly what the portal
trusts. Standard library only.
"""

import json
import os
import shlex
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

TIMEOUT_S = 30


def fail(message: str) -> None:
    print(f"portal inventory: {message}", file=sys.stderr)
    sys.exit(1)


def token() -> str:
    if path := os.environ.get("PORTAL_TOKEN_FILE"):
        return Path(path).expanduser().read_text().strip()
    return os.environ.get("PORTAL_TOKEN", "")


def fetch(url: str, key: str) -> dict:
    parts = urllib.parse.urlsplit(url)
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not local:
        fail("PORTAL_URL must be https:// (or http:// on this machine): the token is a secret")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        url.rstrip("/") + "/api/ansible-inventory/",
        headers={"Authorization": f"Token {key}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
            return json.load(answer)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        fail(f"{request.full_url} answered {exc.code}: {detail}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        fail(f"{request.full_url}: {exc}")
    raise AssertionError("unreachable")


def pin_host_keys(inventory: dict, known_hosts: Path) -> None:
    """Write every host's pinned keys to known_hosts and make its ssh use only that file."""
    lines = []
    for hostvars in inventory["_meta"]["hostvars"].values():
        host, port = hostvars["ansible_host"], hostvars["ansible_port"]
        name = host if port == 22 else f"[{host}]:{port}"
        lines += [f"{name} {key}" for key in hostvars.pop("porterbox_host_keys", [])]
        hostvars["ansible_ssh_common_args"] = " ".join(
            ["-o", shlex.quote(f"UserKnownHostsFile={known_hosts}"),
             "-o", "StrictHostKeyChecking=yes"]
        )  # fmt: skip
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    temporary = known_hosts.with_suffix(".tmp")
    temporary.write_text("".join(f"{line}\n" for line in lines))
    temporary.replace(known_hosts)


def main() -> None:
    if "--host" in sys.argv:
        print("{}")  # every host's variables are in _meta
        return
    url, key = os.environ.get("PORTAL_URL", ""), token()
    if not url or not key:
        fail("set PORTAL_URL and PORTAL_TOKEN (or PORTAL_TOKEN_FILE)")
    inventory = fetch(url, key)
    default = Path("~/.cache/porterbox/known_hosts").expanduser()
    pin_host_keys(inventory, Path(os.environ.get("PORTAL_KNOWN_HOSTS", default)))
    json.dump(inventory, sys.stdout, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
