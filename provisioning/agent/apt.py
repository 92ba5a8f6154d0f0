"""porterbox-apt: apt-get as root inside the caller's own session, run with sudo.

    ssh USER@HOST porterbox-apt install|remove PKG[=VERSION|/SUITE]... | update | upgrade

(porterbox-login runs it on the host with sudo: the host's sudo is not inside the session.)

In the spirit of DSA's dd-schroot-cmd: users add packages to their session without being root
in it. Only these verbs and Debian package names pass, each as its own argv element after
"--", so nothing can become an apt option, a path to a local .deb or shell syntax.
"""

from __future__ import annotations

import os
import re
import sys

from provisioning.agent import STATE_DIR, newest_live_record, schroot_session

SCHROOT = "/usr/bin/schroot"  # never whatever the caller's PATH finds first
USAGE = "usage: ssh USER@HOST porterbox-apt install|remove PKG... | update | upgrade"
# Debian policy 5.6.1 for the name, 5.6.12 for the version; a suite as in "foo/bookworm-backports".
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+~:-]+|/[A-Za-z0-9.-]+)?")
WITH_PACKAGES = ("install", "remove")
WITHOUT_PACKAGES = ("update", "upgrade")


class Refused(Exception):
    """The command line is not one the wrapper runs; the message says why."""


def apt_arguments(args: list[str]) -> list[str]:
    """apt-get's arguments for the wrapper's command line, or Refused."""
    if not args or args[0] not in WITH_PACKAGES + WITHOUT_PACKAGES:
        raise Refused(USAGE)
    verb, packages = args[0], args[1:]
    if verb in WITHOUT_PACKAGES:
        if packages:
            raise Refused(f"{verb} takes no package names")
        return ["-y", verb]
    if not packages:
        raise Refused(f"{verb}: name at least one package")
    for package in packages:
        if not PACKAGE.fullmatch(package):
            raise Refused(f"not a Debian package name: {package!r}")
    return ["-y", verb, "--", *packages]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    user = os.environ.get("SUDO_USER", "")
    if os.geteuid() != 0 or not user:
        print(f"porterbox-apt: run it with sudo\n{USAGE}", file=sys.stderr)
        return 2
    try:
        apt_args = apt_arguments(args)
    except Refused as exc:
        print(f"porterbox-apt: {exc}", file=sys.stderr)
        return 2
    record = newest_live_record(STATE_DIR, user)
    if record is None:
        print("porterbox-apt: you have no running session on this host", file=sys.stderr)
        return 1
    session = f"session:{schroot_session(record['session'])}"
    schroot = ["schroot", "-c", session, "-r", "-u", "root", "-d", "/", "--", "apt-get"]
    os.execvp(SCHROOT, [*schroot, *apt_args])  # noqa: S606 - validated argv, no shell
    return 1  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
