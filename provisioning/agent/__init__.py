"""The host agent (docs/agent.md): what runs on a porterbox, as root or as the user.

Three entry points share the host layout kept here: ``hostctl`` (the portal's verbs, as root),
``login`` (sshd's ForceCommand, as the user) and ``apt`` (the apt wrapper, via sudo). Standard
library only, plus ``provisioning.accounts`` and ``provisioning.gpu``: hosts run it with
Debian's /usr/bin/python3, without Django or the portal.
"""

from __future__ import annotations

import json
import os

AGENT_VERSION = "1"

STATE_DIR = "/var/lib/porterbox"
SESSION_PREFIX = "porterbox-"
# schroot keeps one file per live session here, readable by everyone: existence is liveness.
SCHROOT_SESSIONS = "/var/lib/schroot/session"
SCHROOT_MOUNT = "/run/schroot/mount"


def schroot_session(session: str) -> str:
    return SESSION_PREFIX + session


def session_alive(session: str) -> bool:
    return os.path.exists(os.path.join(SCHROOT_SESSIONS, schroot_session(session)))


def session_root(session: str) -> str:
    """Where the session's tree is mounted on the host."""
    return os.path.join(SCHROOT_MOUNT, schroot_session(session))


def read_records(state_dir: str) -> list[dict]:
    """The grant records this process may read, sorted by session name.

    Users can read only their own records (0640, group of the user), so a record that cannot be
    opened or parsed is skipped rather than fatal: the login must work whatever others hold.
    """
    directory = os.path.join(state_dir, "sessions")
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    records = []
    for name in names:
        if not name.endswith(".json"):
            continue  # the temporary files of an atomic write
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as file:
                record = json.load(file)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("session") == name[: -len(".json")]:
            records.append(record)
    return records


def newest_live_record(state_dir: str, user: str) -> dict | None:
    """The user's most recently granted record whose schroot session is running."""
    mine = [
        r for r in read_records(state_dir) if r.get("user") == user and session_alive(r["session"])
    ]
    return max(mine, key=lambda r: r.get("since", 0), default=None)
