"""porterbox-login: sshd's ForceCommand for the group; runs as the user who logged in.

Every login, shell or command (scp, rsync, an sftp server), goes into the user's newest running
session, with the visible-devices variables of its grant (docs/agent.md).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shlex
import sys

from provisioning.agent import STATE_DIR, newest_live_record, schroot_session, session_root

SCHROOT = "/usr/bin/schroot"  # never whatever the caller's PATH finds first
SUDO = "/usr/bin/sudo"
# Inside the session the host's sudo and the wrapper are out of reach (the chroot has its own
# /usr), so `ssh host porterbox-apt install PKG` is run here, on the host, by the wrapper.
APT_WRAPPER = "/usr/local/bin/porterbox-apt"
NO_RESERVATION = "No reservation of yours is active on this host (see the portal)."


def schroot_argv(record: dict, account: pwd.struct_passwd, command: str) -> list[str]:
    """The schroot command that runs `command` (a login shell if empty) in the session."""
    root = session_root(record["session"])
    home = account.pw_dir if os.path.isdir(root + account.pw_dir) else "/"
    if command:
        inner = ["/bin/sh", "-c", command]
    else:
        shell = account.pw_shell if os.path.exists(root + account.pw_shell) else "/bin/sh"
        inner = [shell, "-l"]
    # -p keeps the environment: sshd's variables and the grant's device selection.
    name = f"session:{schroot_session(record['session'])}"
    return ["schroot", "-c", name, "-r", "-p", "-d", home, "--", *inner]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="porterbox-login", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", default=STATE_DIR, help=f"default: {STATE_DIR}")
    args = parser.parse_args(argv)
    account = pwd.getpwuid(os.getuid())
    record = newest_live_record(args.state_dir, account.pw_name)
    if record is None:
        print(NO_RESERVATION, file=sys.stderr)
        return 1
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    if command.split(maxsplit=1)[:1] == ["porterbox-apt"]:
        try:
            apt_args = shlex.split(command)[1:]
        except ValueError as exc:
            print(f"porterbox-apt: {exc}", file=sys.stderr)
            return 2
        # The wrapper checks every argument; sudoers lets the group run it and nothing else.
        os.execv(SUDO, [SUDO, "-n", APT_WRAPPER, *apt_args])  # noqa: S606 - no shell
    os.environ.update(record["env"])
    os.execvp(SCHROOT, schroot_argv(record, account, command))  # noqa: S606 - no shell
    return 1  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
