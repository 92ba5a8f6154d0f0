"""The verbs about the host as a whole (docs/agent.md): inventory, status, telemetry,
health-check and kill-process.

Validation is pure and comes first; execution acts on the cleaned values only.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import socket

from provisioning.agent import AGENT_VERSION, jobs, sessions, system
from provisioning.agent.protocol import (
    AgentError,
    Config,
    DeviceRef,
    check_devices,
    check_stack,
    check_user,
    visible_devices_env,
)
from provisioning.gpu import TOOL_TIMEOUT_S, ProbeError, probe_all, sample_each

# Accounts below this uid belong to the system (Debian's login.defs UID_MIN): their processes
# on a device (a display server, a persistence daemon) are never squatters.
UID_MIN = 1000
PID_MAX = 4194304  # the kernel's limit (/proc/sys/kernel/pid_max on 64-bit)
# A health check answers well within the portal's SSH command timeout (60 s by default).
HEALTH_CHECK_TIMEOUT_S = 45
HEALTH_CHECK_OUTPUT_CHARS = 4000


# -- validation: pure, nothing runs and nothing is written -----------------------------------


def validate_kill(fields: dict, config: Config) -> dict:
    pid = fields["pid"]
    if type(pid) is not int or not 1 < pid <= PID_MAX:
        raise AgentError("bad_pid", f"pid: must be a whole number from 2 to {PID_MAX}")
    return {"pid": pid, "user": check_user(fields["user"], config)}


def validate_health_check(fields: dict, config: Config) -> dict:
    stack = check_stack(fields["stack"], config)
    try:
        device = check_devices([fields["device"]], config)
    except AgentError as exc:  # the same rules as a grant's devices, named as this field
        raise AgentError(exc.code, exc.message.replace("devices[0]", "device", 1)) from exc
    return {"stack": stack, "device": device[0]}


# -- the verbs ------------------------------------------------------------------------------


def inventory(config: Config) -> dict:
    try:
        devices = probe_all(probe_runner)
    except ProbeError as exc:
        raise AgentError("probe_failed", f"devices: {exc.message}") from exc
    known = _known_chroots()
    directories = _chroot_directories() if known else {}
    return {
        "devices": [device.as_dict() for device in devices],
        "stacks": [
            {
                "name": name,
                "chroot": chroot,
                "present": chroot in known,
                "digest": stack_digest(directories.get(chroot)) if chroot in known else "",
            }
            for name, chroot in sorted(config.stacks.items())
        ],
        "agent_version": AGENT_VERSION,
        "hostname": socket.gethostname(),
        "kernel": os.uname().release,
        # The configuration's device map, as Ansible writes it: the portal hands it back to
        # Ansible's inventory, so that a run from there keeps it (docs/agent.md, inventory).
        "device_map": {
            "devices": {
                vendor: {str(index): list(nodes) for index, nodes in sorted(indices.items())}
                for vendor, indices in sorted(config.devices.items())
            },
            "shared_nodes": {v: list(n) for v, n in sorted(config.shared_nodes.items())},
        },
    }


def status(config: Config) -> dict:
    return {
        "sessions": sessions.session_entries(config),
        "users": sessions.user_entries(config),
        "jobs": jobs.list_jobs(config.state_dir),
    }


def telemetry(config: Config) -> dict:
    """A reading of every device; a vendor whose tool fails is an error beside the others."""
    samples, errors = sample_each(probe_runner)
    readings = []
    for sample in samples:
        reading = sample.as_dict()
        for process in reading["processes"]:
            process["system"] = system_account(process["user"])
        readings.append(reading)
    return {
        "samples": readings,
        "errors": [{"vendor": vendor, "message": message} for vendor, message in errors],
    }


def health_check(config: Config, *, stack: str, device: DeviceRef) -> dict:
    """Run the host's own check for the device's vendor in a throwaway schroot of the stack."""
    vendor, _ = device
    argv = config.health_checks.get(vendor)
    if argv is None:
        return {"ran": False, "reason": f"no health check is configured for {vendor}"}
    env = [f"{name}={value}" for name, value in visible_devices_env((device,)).items()]
    chroot = config.stacks[stack]
    command = ["schroot", "-c", chroot, "-u", "root", "-d", "/", "--", "env", *env, *argv]
    result = system.run(command, check=False, timeout=HEALTH_CHECK_TIMEOUT_S)
    output = (result.stdout or "") + (result.stderr or "")
    return {
        "ran": True,
        "passed": result.returncode == 0,
        "exit_status": result.returncode,
        "output": output[-HEALTH_CHECK_OUTPUT_CHARS:],
    }


def kill_process(config: Config, *, pid: int, user: str) -> dict:
    """Kill one process of a user (a squatter), if it is still theirs; never a system one."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return {"killed": 0}  # no such user: nothing of theirs runs
    if account.pw_uid < UID_MIN:
        raise AgentError("bad_request", "user: a system account's processes are not killed")
    uid = account.pw_uid
    return {"killed": system.kill_processes(lambda p: p == pid and uid in system.uids_of(p))}


# -- helpers --------------------------------------------------------------------------------


def system_account(user: str | None) -> bool:
    """Whether a process's owner is a system account (root, a daemon), never a squatter."""
    if user is None:
        return False  # the process ended between the probe and now: nothing to say
    if user.isdigit():  # a uid without a passwd entry
        return int(user) < UID_MIN
    try:
        return pwd.getpwnam(user).pw_uid < UID_MIN
    except KeyError:
        return False


def probe_runner(argv: list[str]) -> str:
    """The probes' runner contract on top of system.run(): absent tool -> FileNotFoundError."""
    try:
        return system.run(argv, timeout=TOOL_TIMEOUT_S).stdout
    except system.CommandMissing as exc:
        raise FileNotFoundError(argv[0]) from exc
    except AgentError as exc:
        raise ProbeError(exc.message) from exc


def _known_chroots() -> set[str]:
    try:
        listing = system.run(["schroot", "--list", "--all-chroots"]).stdout
    except AgentError:
        return set()  # no schroot at all: every stack is absent
    return {line.split(":", 1)[1] for line in listing.split() if line.startswith("chroot:")}


def _chroot_directories() -> dict[str, str]:
    """schroot's chroots and their directories, from its own view of its configuration
    (`schroot --config`: chroot.d and schroot.conf alike)."""
    try:
        text = system.run(["schroot", "--config", "--all-chroots"]).stdout
    except AgentError:
        return {}
    directories, chroot = {}, None
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            chroot = line[1:-1]
        elif chroot is not None and line.startswith("directory="):
            directories[chroot] = line.removeprefix("directory=")
    return directories


def stack_digest(directory: str | None) -> str:
    """What is installed in a chroot, in one value that changes when any package does: the
    sha256 of its installed packages' "Package Version" lines, sorted, each ended by a newline.
    The portal tests packages again on a stack whose digest changed (a refresh, a rebuild).

    Read from the chroot's var/lib/dpkg/status, never by running dpkg (nothing of the chroot's
    runs for an inventory); "" where it has none (not a Debian tree)."""
    if not directory:
        return ""
    try:
        with open(os.path.join(directory, "var/lib/dpkg/status"), "rb") as file:
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = []
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            name, colon, value = line.partition(":")
            if colon and not line[:1].isspace():
                fields[name.lower()] = value.strip()
        if "package" in fields and fields.get("status", "").split()[-1:] == ["installed"]:
            lines.append(f"{fields['package']} {fields.get('version', '')}")
    return hashlib.sha256("".join(f"{line}\n" for line in sorted(lines)).encode()).hexdigest()
