"""A real Debian chroot for a test host's stack: what package test runs need as their testbed.

    tarball = debian_tarball()              # built once per machine, then reused
    unpack(tarball, host.path("/srv/chroots/porterbox-bookworm"))
    host.add_stack_tree("bookworm", "porterbox-bookworm")

``debian_tarball`` runs ``mmdebstrap --variant=minbase --include=<packages> <suite> <tarball>
<mirror>`` (about 20 s and 270 MB for bookworm with autopkgtest and dpkg-dev) and keeps the
tarball in a cache directory reused by later runs on the same machine, keyed by what went into
it; a build in progress is a ``.part`` file, renamed once complete, so a present tarball is a
whole one. The cache is ``$PORTERBOX_TEST_CACHE``, by default /var/cache/porterbox-tests.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

SUITE = "bookworm"  # this machine's release, whose keyring mmdebstrap has
MIRROR = "http://deb.debian.org/debian"
# The stack's testbed (ansible/roles/schroot_stacks: schroot_stacks_testbed_packages).
PACKAGES = ("autopkgtest", "dpkg-dev")
BUILD_TIMEOUT_S = 1200


def cache_dir() -> Path:
    return Path(os.environ.get("PORTERBOX_TEST_CACHE", "/var/cache/porterbox-tests"))


def tarball_path(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> Path:
    key = hashlib.sha256(f"{suite} {MIRROR} minbase {' '.join(sorted(packages))}".encode())
    return cache_dir() / f"debian-{suite}-minbase-{key.hexdigest()[:16]}.tar"


def missing(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> list[str]:
    """What this machine lacks to get the tarball (empty: it can, or has it already)."""
    if tarball_path(packages, suite).exists():
        return []
    lacking = [] if shutil.which("mmdebstrap") else ["mmdebstrap"]
    try:
        socket.create_connection((urlsplit(MIRROR).hostname, 80), timeout=5).close()
    except OSError:
        lacking.append(f"{MIRROR} (the chroot's packages come from it)")
    return lacking


def debian_tarball(packages: tuple[str, ...] = PACKAGES, suite: str = SUITE) -> Path:
    """The cached tarball of a minbase Debian with packages; built here if missing."""
    path = tarball_path(packages, suite)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time on a machine: another run waits for it, then finds the tarball.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            return path
        shutil.rmtree(path, ignore_errors=True)  # a directory an older build left by mistake
        part = path.with_suffix(".part")
        part.unlink(missing_ok=True)
        # --format: the ".part" name would otherwise make mmdebstrap write a directory.
        argv = [
            "mmdebstrap",
            "--format=tar",
            "--variant=minbase",
            f"--include={','.join(packages)}",
        ]
        result = subprocess.run(
            [*argv, suite, str(part), MIRROR],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            part.unlink(missing_ok=True)
            raise RuntimeError(f"mmdebstrap failed:\n{result.stdout}{result.stderr}")
        os.replace(part, path)
    return path


def unpack(tarball: Path, directory: Path) -> None:
    """Unpack the tarball into directory (created), owners, modes and device nodes kept."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "tar",
            "--extract",
            "--numeric-owner",
            "--file",
            str(tarball),
            "--directory",
            str(directory),
        ],
        check=True,
        capture_output=True,
    )
