"""The session verbs of porterbox-hostctl (docs/agent.md): grant and revoke, the sessions and
users that status reports, and the host's own guards (--expire, --reapply-acls).

A session's grant record is ``<state_dir>/sessions/<session>.json`` (0640, group of the user:
the login reads it), the user's keys ``<state_dir>/keys/<user>`` (sshd's AuthorizedKeysFile).
Validation is pure and comes first; execution acts on the cleaned values only.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import time

from provisioning.accounts import keys_digest
from provisioning.agent import read_records, schroot_session, session_alive, system
from provisioning.agent.protocol import (
    AgentError,
    Config,
    DeviceRef,
    check_devices,
    check_end,
    check_keys,
    check_session,
    check_stack,
    check_user,
    visible_devices_env,
)

# -- validation: pure, nothing runs and nothing is written -----------------------------------


def validate_grant(fields: dict, config: Config) -> dict:
    return {
        "session": check_session(fields["session"]),
        "user": check_user(fields["user"], config),
        "keys": check_keys(fields["keys"]),
        "stack": check_stack(fields["stack"], config),
        "devices": check_devices(fields["devices"], config),
        "end": check_end(fields["end"]),
    }


def validate_revoke(fields: dict, config: Config) -> dict:
    if len(fields) != 1:
        raise AgentError("bad_request", "session: revoke takes either session or user")
    if "session" in fields:
        return {"session": check_session(fields["session"])}
    return {"user": check_user(fields["user"], config)}


# -- the verbs ------------------------------------------------------------------------------


def grant(
    config: Config, *, session: str, user: str, keys: tuple[str, ...], stack: str,
    devices: tuple[DeviceRef, ...], end: int,
) -> dict:  # fmt: skip
    previous = read_record(config, session)
    if previous and (previous["user"], previous["stack"]) != (user, stack):
        raise AgentError("session_conflict", "session: already granted to another user or stack")
    account = system.ensure_account(user, config)
    system.write_file(keys_path(config, user), "".join(f"{key}\n" for key in keys), mode=0o644)
    nodes = system.device_nodes(config, devices)
    record = {
        "session": session,
        "user": user,
        "stack": stack,
        "chroot": config.stacks[stack],
        "devices": [{"vendor": v, "index": i} for v, i in devices],
        "nodes": nodes,
        "keys_sha256": keys_digest(list(keys)),
        "env": visible_devices_env(devices),
        "since": previous["since"] if previous else time.time(),
        "end": end,  # a later grant moves it (an extension); --expire acts on it
    }
    # Recorded before anything is started, so a grant cut short is still found by revoke.
    path = record_path(config, session)
    system.write_file(path, json.dumps(record), mode=0o640, gid=account.pw_gid)
    if not session_alive(session):
        # Begun as the user: schroot then lets only that user (and root) into the session.
        chroot = config.stacks[stack]
        begin = ["schroot", "--begin-session", "-c", chroot, "-n", schroot_session(session)]
        system.run(["runuser", "-u", user, "--", *begin])
    for node in nodes:
        system.run(["setfacl", "-m", f"u:{user}:rw", node])
    if previous:  # a grant with fewer devices than before gives the others back
        release_nodes(config, user, [n for n in previous["nodes"] if n not in nodes], session)
    return {
        "session": session,
        "user": user,
        "schroot_session": schroot_session(session),
        "env": record["env"],
    }


def revoke(config: Config, *, session: str | None = None, user: str | None = None) -> dict:
    if session is not None:
        return {"killed": revoke_session(config, session)}
    if user is None:  # validate_revoke refuses it first
        raise AgentError("bad_request", "session: revoke takes either session or user")
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return {"killed": 0}  # no such account: nothing to end
    if not system.in_group(account, config.group):
        raise AgentError("foreign_account", f"user: {user} is not in {config.group}")
    killed = 0
    for record in read_records(config.state_dir):
        if record["user"] == user:
            killed += revoke_session(config, record["session"])
    # Leftovers without a record (the portal found them in status) are retired too.
    return {"killed": killed + retire_user(config, user)}


def revoke_session(config: Config, session: str) -> int:
    record = read_record(config, session)
    killed = system.end_session(session)
    if record is None:
        return killed
    user = record["user"]
    release_nodes(config, user, record["nodes"], session)
    os.unlink(record_path(config, session))
    if not any(r["user"] == user for r in read_records(config.state_dir)):
        killed += retire_user(config, user)
    return killed


def retire_user(config: Config, user: str) -> int:
    """Lock the user out, then kill every process of theirs."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return 0
    # Locked first, so no new login can start while the processes are being killed.
    system.write_file(keys_path(config, user), "", mode=0o644)
    system.run(["usermod", "--lock", "--expiredate", "1", user])
    return system.kill_processes(lambda pid: uid in system.uids_of(pid))


def release_nodes(config: Config, user: str, nodes: list[str], session: str) -> None:
    """Remove the user's ACLs on nodes they hold through no other session."""
    held = {
        node
        for r in read_records(config.state_dir)
        if r["user"] == user and r["session"] != session
        for node in r["nodes"]
    }
    for node in nodes:
        if node not in held and os.path.exists(node):
            system.run(["setfacl", "-x", f"u:{user}", node])


# -- what status reports --------------------------------------------------------------------


def session_entries(config: Config) -> list[dict]:
    """status's sessions: each grant record, and whether its schroot session runs."""
    return [
        {
            "session": r["session"],
            "user": r["user"],
            "stack": r["stack"],
            "devices": r["devices"],
            "keys_sha256": r["keys_sha256"],
            "end": r.get("end"),
            "alive": session_alive(r["session"]),
        }
        for r in read_records(config.state_dir)
    ]


def user_entries(config: Config) -> list[dict]:
    """status's users: each member of the group, whether sshd refuses them, their processes."""
    try:
        members = sorted(grp.getgrnam(config.group).gr_mem)
    except KeyError:
        members = []
    locked = system.locked_accounts()
    count = system.processes_by_uid()
    users = []
    for user in members:
        with contextlib.suppress(KeyError):
            uid = pwd.getpwnam(user).pw_uid
            users.append({"user": user, "locked": locked.get(user, True), "processes": count[uid]})
    return users


# -- the host's own guards ------------------------------------------------------------------


def expire(config: Config, now: float | None = None) -> dict:
    """Revoke every session whose end has passed: the host's own guard, run by a timer, so a
    session never outlives its slot even with the whole portal down (ARCHITECTURE: defence in
    depth). The portal's pass does the same first in the normal case; both are idempotent."""
    now = time.time() if now is None else now
    expired, killed = [], 0
    with system.host_lock(config.state_dir):
        for record in read_records(config.state_dir):
            end = record.get("end")
            if isinstance(end, int | float) and end <= now:
                killed += revoke_session(config, record["session"])
                expired.append(record["session"])
    return {"expired": expired, "killed": killed}


def reapply_acls(config: Config, node: str | None = None) -> dict:
    """Give each session's user their device nodes again (all, or one node): udev rewrites a
    node's permissions on an add or change event, which drops the ACLs a grant set; the udev
    rule that Ansible installs runs this after it."""
    known = {n for nodes in config.devices.values() for ns in nodes.values() for n in ns}
    known |= {n for ns in config.shared_nodes.values() for n in ns}
    if node is not None and node not in known:
        raise AgentError("bad_request", f"node: {node[:200]!r} is not a device of this host")
    applied = []
    with system.host_lock(config.state_dir):
        for record in read_records(config.state_dir):
            for n in record["nodes"]:
                if (node is None or n == node) and os.path.exists(n):
                    system.run(["setfacl", "-m", f"u:{record['user']}:rw", n])
                    applied.append(f"{record['user']}:{n}")
    return {"applied": applied}


# -- files ----------------------------------------------------------------------------------


def keys_path(config: Config, user: str) -> str:
    return os.path.join(config.state_dir, "keys", user)


def record_path(config: Config, session: str) -> str:
    return os.path.join(config.state_dir, "sessions", f"{session}.json")


def read_record(config: Config, session: str) -> dict | None:
    return system.read_json(record_path(config, session))
