"""porterbox-hostctl: the verbs the portal runs on a host, as root (docs/agent.md).

    python3 -m provisioning.agent.hostctl --ssh [--config PATH] < request.json

Two layers. Validation is pure: it reads the request and the configuration, and refuses
anything outside the contract with a code and a message naming the field, before any command
runs or any file is written. Execution then acts on the cleaned values only, and every command
it starts goes through ``run()``: an argv list, never a shell, with a timeout.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import fcntl
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import BinaryIO

from provisioning.accounts import RESERVED, keys_digest
from provisioning.agent import (
    AGENT_VERSION,
    STATE_DIR,
    read_records,
    schroot_session,
    session_alive,
    session_root,
)
from provisioning.gpu import TOOL_TIMEOUT_S, ProbeError, probe_all, sample_each

DEFAULT_CONFIG = "/etc/porterbox/hostctl.json"
MAX_REQUEST_BYTES = 1024 * 1024
COMMAND_TIMEOUT_S = 120  # useradd or a schroot overlay mount on a busy host, with margin
# A fixed environment: the agent's commands never depend on the caller's PATH or locale.
COMMAND_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
SHADOW = "/etc/shadow"
MAX_KILL_ROUNDS = 50
# Accounts below this uid belong to the system (Debian's login.defs UID_MIN): their processes
# on a device (a display server, a persistence daemon) are never squatters.
UID_MIN = 1000
PID_MAX = 4194304  # the kernel's limit (/proc/sys/kernel/pid_max on 64-bit)
# A health check answers well within the portal's SSH command timeout (60 s by default).
HEALTH_CHECK_TIMEOUT_S = 45
HEALTH_CHECK_OUTPUT_CHARS = 4000
MAX_HEALTH_CHECK_ARGS = 64

SESSION = re.compile(r"[a-z][a-z0-9-]{0,39}")
USER = re.compile(r"[a-z][a-z0-9-]{0,30}")
GROUP = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
STACK = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
CHROOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEVICE_INDEX = re.compile(r"0|[1-9][0-9]{0,3}")
VENDORS = ("nvidia", "amd", "intel", "fpga")
# The variable each vendor's runtime reads to pick its devices; FPGAs have none.
VISIBLE_DEVICES = {
    "nvidia": "CUDA_VISIBLE_DEVICES",
    "amd": "ROCR_VISIBLE_DEVICES",
    "intel": "ZE_AFFINITY_MASK",
}
# Key type -> how many SSH strings its blob holds, the type included (RFC 4253 and 5656,
# OpenSSH's PROTOCOL.u2f): a blob of another shape is not a key sshd could use.
KEY_TYPES = {
    "ssh-ed25519": 2,
    "ecdsa-sha2-nistp256": 3,
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "ssh-rsa": 3,
    "sk-ssh-ed25519@openssh.com": 3,
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,
}
MAX_KEYS = 32
MAX_KEY_CHARS = 16 * 1024

FIELDS = {
    "inventory": frozenset(),
    "status": frozenset(),
    "telemetry": frozenset(),
    "kill-process": frozenset({"pid", "user"}),
    "health-check": frozenset({"stack", "device"}),
    "grant": frozenset({"session", "user", "keys", "stack", "devices", "end"}),
    "revoke": frozenset({"session", "user"}),
    # Training jobs: provisioning/agent/jobs.py.
    "job-start": frozenset(
        {"job", "account", "stack", "devices", "script", "env", "walltime_s", "grace_s", "input"}
    ),
    "job-status": frozenset({"job"}),
    "job-stop": frozenset({"job", "grace_s"}),
    "job-logs": frozenset({"job", "offset", "limit"}),
    "job-clean": frozenset({"job"}),
    "job-output": frozenset({"job", "limit"}),
}
JOB_VERBS = frozenset(
    {"job-start", "job-status", "job-stop", "job-logs", "job-clean", "job-output"}
)


class AgentError(Exception):
    """A refusal or a failure, answered as {"ok": false, "error": {"code", "message"}}."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class CommandMissing(AgentError):
    """The program to run is not installed."""


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    stacks: dict[str, str]  # stack name -> schroot chroot name
    devices: dict[str, dict[int, tuple[str, ...]]]  # vendor -> index -> device nodes
    shared_nodes: dict[str, tuple[str, ...]]  # vendor -> nodes every user of it needs
    group: str = "porterbox-users"
    state_dir: str = STATE_DIR
    home_base: str = "/home"
    job_min_walltime_s: int = 60  # the protocol's minimum; a test host's config lowers it
    # vendor -> the argv of its health check, run inside a stack's chroot (health-check verb)
    health_checks: dict[str, tuple[str, ...]] = dataclass_field(default_factory=dict)


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError) as exc:
        raise AgentError("bad_config", f"config: cannot read {path}: {exc}") from exc
    return parse_config(data)


def parse_config(data: object) -> Config:
    if not isinstance(data, dict):
        raise _bad_config("config", "must be a JSON object")
    known = {"stacks", "devices", "shared_nodes", "group", "state_dir", "home_base"}
    known |= {"health_checks"}
    unknown = set(data) - known - {"job_min_walltime_s"}
    if unknown:
        raise _bad_config(f"config.{sorted(unknown)[0]}", "unknown key")
    group = data.get("group", "porterbox-users")
    if not isinstance(group, str) or not GROUP.fullmatch(group):
        raise _bad_config("config.group", "must be a Unix group name")
    shared = _config_vendors("config.shared_nodes", data.get("shared_nodes", {}))
    min_walltime = data.get("job_min_walltime_s", 60)
    if type(min_walltime) is not int or not 1 <= min_walltime <= 60:
        raise _bad_config("config.job_min_walltime_s", "must be an integer from 1 to 60")
    return Config(
        stacks=_config_stacks(data.get("stacks", {})),
        devices=_config_devices(data.get("devices", {})),
        shared_nodes={v: _config_paths(f"config.shared_nodes.{v}", n) for v, n in shared},
        group=group,
        state_dir=_config_path("config.state_dir", data.get("state_dir", STATE_DIR)),
        home_base=_config_path("config.home_base", data.get("home_base", "/home")),
        job_min_walltime_s=min_walltime,
        health_checks=_config_health_checks(data.get("health_checks", {})),
    )


def _bad_config(field: str, problem: str) -> AgentError:
    return AgentError("bad_config", f"{field}: {problem}")


def _config_stacks(stacks: object) -> dict[str, str]:
    if not isinstance(stacks, dict):
        raise _bad_config("config.stacks", "must be an object")
    result = {}
    for name, entry in stacks.items():
        if not STACK.fullmatch(name):
            raise _bad_config(f"config.stacks.{name!r}", f"a stack name must match {STACK.pattern}")
        if not isinstance(entry, dict) or set(entry) != {"chroot"}:
            raise _bad_config(f"config.stacks.{name}", 'must be {"chroot": NAME}')
        if not isinstance(entry["chroot"], str) or not CHROOT.fullmatch(entry["chroot"]):
            raise _bad_config(f"config.stacks.{name}.chroot", f"must match {CHROOT.pattern}")
        result[name] = entry["chroot"]
    return result


def _config_vendors(field: str, value: object) -> Iterator[tuple[str, object]]:
    if not isinstance(value, dict):
        raise _bad_config(field, "must be an object")
    for vendor, entry in value.items():
        if vendor not in VENDORS:
            raise _bad_config(f"{field}.{vendor!r}", f"vendor must be one of {', '.join(VENDORS)}")
        yield vendor, entry


def _config_devices(devices: object) -> dict[str, dict[int, tuple[str, ...]]]:
    result = {}
    for vendor, indices in _config_vendors("config.devices", devices):
        if not isinstance(indices, dict):
            raise _bad_config(f"config.devices.{vendor}", 'must be {"<index>": [nodes]}')
        for index in indices:
            if not DEVICE_INDEX.fullmatch(index):
                raise _bad_config(f"config.devices.{vendor}.{index!r}", "not a device index")
        result[vendor] = {
            int(i): _config_paths(f"config.devices.{vendor}.{i}", n) for i, n in indices.items()
        }
    return result


def _config_health_checks(checks: object) -> dict[str, tuple[str, ...]]:
    """vendor -> argv: a program by its absolute path, then its arguments (strings)."""
    result = {}
    for vendor, argv in _config_vendors("config.health_checks", checks):
        field = f"config.health_checks.{vendor}"
        if not isinstance(argv, list) or not 1 <= len(argv) <= MAX_HEALTH_CHECK_ARGS:
            raise _bad_config(
                field, f"must be an argv list of 1 to {MAX_HEALTH_CHECK_ARGS} strings"
            )
        for number, arg in enumerate(argv):
            if not isinstance(arg, str) or "\0" in arg:
                raise _bad_config(f"{field}[{number}]", "must be a string without NUL")
        result[vendor] = (_config_path(f"{field}[0]", argv[0]), *argv[1:])
    return result


def _config_paths(field: str, paths: object) -> tuple[str, ...]:
    if not isinstance(paths, list):
        raise _bad_config(field, "must be a list of paths")
    return tuple(_config_path(f"{field}[{n}]", path) for n, path in enumerate(paths))


def _config_path(field: str, path: object) -> str:
    # Normalised absolute paths only: they are handed to setfacl and joined with user names.
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        raise _bad_config(field, "must be an absolute path")
    if os.path.normpath(path) != path or any(c in path for c in "\0\n"):
        raise _bad_config(field, "must be a normalised path")
    return path


# -- validation: pure, nothing runs and nothing is written -----------------------------------


def parse_request(raw: bytes) -> dict:
    if len(raw) > MAX_REQUEST_BYTES:
        raise AgentError("bad_request", "request: larger than 1 MiB")
    try:
        request = json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise AgentError("bad_request", f"request: not valid JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise AgentError("bad_request", "request: must be a JSON object")
    return request


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    # A repeated field could be read one way here and another way by whoever logged it.
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a field is repeated")
    return dict(pairs)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def validate(request: dict, config: Config) -> tuple[str, dict]:
    """The verb and its cleaned fields, or AgentError naming the first field refused."""
    verb = request.get("verb")
    if not isinstance(verb, str):
        raise AgentError("unknown_verb", f"verb: must be one of {', '.join(sorted(FIELDS))}")
    if verb not in FIELDS:
        raise AgentError("unknown_verb", f"verb: must be one of {', '.join(sorted(FIELDS))}")
    fields = {key: value for key, value in request.items() if key != "verb"}
    unknown = set(fields) - FIELDS[verb]
    if unknown:
        raise AgentError("bad_request", f"{sorted(unknown)[0]}: unknown field for {verb}")
    if verb == "grant":
        return verb, _validate_grant(fields, config)
    if verb == "revoke":
        return verb, _validate_revoke(fields, config)
    if verb == "kill-process":
        return verb, _validate_kill(fields, config)
    if verb == "health-check":
        return verb, _validate_health_check(fields, config)
    if verb in JOB_VERBS:
        from provisioning.agent import jobs  # here: jobs builds on this module

        return verb, jobs.validate(verb, fields, config)
    return verb, {}


def _validate_grant(fields: dict, config: Config) -> dict:
    missing = FIELDS["grant"] - set(fields)
    if missing:
        raise AgentError("bad_request", f"{sorted(missing)[0]}: required for grant")
    return {
        "session": check_session(fields["session"]),
        "user": check_user(fields["user"], config),
        "keys": check_keys(fields["keys"]),
        "stack": check_stack(fields["stack"], config),
        "devices": check_devices(fields["devices"], config),
        "end": check_end(fields["end"]),
    }


def _validate_revoke(fields: dict, config: Config) -> dict:
    if len(fields) != 1:
        raise AgentError("bad_request", "session: revoke takes either session or user")
    if "session" in fields:
        return {"session": check_session(fields["session"])}
    return {"user": check_user(fields["user"], config)}


def _validate_kill(fields: dict, config: Config) -> dict:
    for name in ("pid", "user"):
        if name not in fields:
            raise AgentError("bad_request", f"{name}: required for kill-process")
    pid = fields["pid"]
    if type(pid) is not int or not 1 < pid <= PID_MAX:
        raise AgentError("bad_pid", f"pid: must be a whole number from 2 to {PID_MAX}")
    return {"pid": pid, "user": check_user(fields["user"], config)}


def _validate_health_check(fields: dict, config: Config) -> dict:
    missing = FIELDS["health-check"] - set(fields)
    if missing:
        raise AgentError("bad_request", f"{sorted(missing)[0]}: required for health-check")
    stack = check_stack(fields["stack"], config)
    try:
        device = check_devices([fields["device"]], config)
    except AgentError as exc:  # the same rules as a grant's devices, named as this field
        raise AgentError(exc.code, exc.message.replace("devices[0]", "device", 1)) from exc
    return {"stack": stack, "device": device[0]}


def check_end(value: object) -> int:
    """The slot's end, Unix seconds: the host revokes the session then by itself (--expire)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**40:
        raise AgentError("bad_request", "end: must be the slot's end in Unix seconds")
    if value <= time.time():
        raise AgentError("bad_request", "end: the slot is over; nothing to grant")
    return value


def check_session(value: object) -> str:
    if not isinstance(value, str) or not SESSION.fullmatch(value):
        raise AgentError("bad_session", f"session: must match ^{SESSION.pattern}$")
    return value


def check_user(value: object, config: Config) -> str:
    if not isinstance(value, str) or not USER.fullmatch(value):
        raise AgentError("bad_user", f"user: must match ^{USER.pattern}$")
    # The group's name would clash with the user's own group (useradd --user-group).
    if value in RESERVED or value == config.group:
        raise AgentError("bad_user", "user: a reserved or system name")
    return value


def check_stack(value: object, config: Config) -> str:
    if not isinstance(value, str) or value not in config.stacks:
        known = ", ".join(sorted(config.stacks)) or "none"
        raise AgentError("unknown_stack", f"stack: not a stack of this host (it has: {known})")
    return value


def check_devices(value: object, config: Config) -> tuple[tuple[str, int], ...]:
    """(vendor, index) pairs, each one a device of the configuration's map, none twice."""
    if not isinstance(value, list):
        raise AgentError("bad_devices", "devices: must be a list of {vendor, index}")
    seen: list[tuple[str, int]] = []
    for number, entry in enumerate(value):
        field = f"devices[{number}]"
        if not isinstance(entry, dict) or set(entry) != {"vendor", "index"}:
            raise AgentError("bad_devices", f"{field}: must be exactly {{vendor, index}}")
        vendor, index = entry["vendor"], entry["index"]
        if type(index) is not int:  # bool is an int subclass: true is not device 1
            raise AgentError("bad_devices", f"{field}.index: must be an integer")
        if vendor not in VENDORS or index not in config.devices.get(vendor, {}):
            raise AgentError("unknown_device", f"{field}: not a device of this host")
        if (vendor, index) in seen:
            raise AgentError("bad_devices", f"{field}: booked twice")
        seen.append((vendor, index))
    return tuple(sorted(seen))


def check_keys(value: object) -> tuple[str, ...]:
    """The keys as sorted "type base64" lines: what the keys file will hold."""
    if not isinstance(value, list) or len(value) > MAX_KEYS:
        raise AgentError("bad_keys", f"keys: must be a list of at most {MAX_KEYS} public keys")
    return tuple(sorted(normalise_key(key, f"keys[{n}]") for n, key in enumerate(value)))


def normalise_key(line: object, field: str = "key") -> str:
    """ "type base64" of an OpenSSH public key line; its options and comment are dropped.

    Only the two checked words are ever written, so nothing else in the line (a command= option,
    a comment with shell syntax) can reach authorized_keys; a line break anywhere is refused
    because sshd would read it as a second line.
    """
    if not isinstance(line, str) or len(line) > MAX_KEY_CHARS:
        raise AgentError("bad_keys", f"{field}: must be a public key line of at most 16 KiB")
    if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in line):
        raise AgentError("bad_keys", f"{field}: contains a line break or control character")
    words = _without_options(line.strip(), field).split()
    if len(words) < 2 or words[0] not in KEY_TYPES:
        raise AgentError("bad_keys", f"{field}: must be 'type base64 [comment]' of a known type")
    key_type, blob = words[0], words[1]
    try:
        strings = _ssh_strings(base64.b64decode(blob, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise AgentError("bad_keys", f"{field}: the key data is not base64 of a key") from exc
    # The blob names its own type; sshd refuses a line where the two differ.
    if len(strings) != KEY_TYPES[key_type] or strings[0] != key_type.encode():
        raise AgentError("bad_keys", f"{field}: the key data is not a {key_type} key")
    return f"{key_type} {blob}"


def _ssh_strings(raw: bytes) -> list[bytes]:
    """The length-prefixed strings of a key blob; ValueError if one is cut short."""
    strings, offset = [], 0
    while offset < len(raw):
        if len(raw) - offset < 4:
            raise ValueError("truncated")
        (length,) = struct.unpack_from(">I", raw, offset)
        if length > len(raw) - offset - 4:
            raise ValueError("truncated")
        strings.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return strings


def _without_options(line: str, field: str) -> str:
    """The line after its authorized_keys options, read the way sshd reads them."""
    if not line or line.split(None, 1)[0] in KEY_TYPES:
        return line
    quoted, position = False, 0
    while position < len(line) and (quoted or line[position] not in " \t"):
        if line[position] == "\\" and line[position + 1 : position + 2] == '"':
            position += 1
        elif line[position] == '"':
            quoted = not quoted
        position += 1
    if quoted:
        raise AgentError("bad_keys", f"{field}: an option has an unterminated quote")
    return line[position:]


def visible_devices_env(devices: tuple[tuple[str, int], ...]) -> dict[str, str]:
    """What the login exports: each vendor's booked indices, "" where none of it is booked."""
    # CUDA numbers devices fastest first unless told otherwise; nvidia-smi and NVML, whose
    # indices the portal books, count in PCI bus order.
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    for vendor, variable in VISIBLE_DEVICES.items():
        env[variable] = ",".join(str(i) for v, i in sorted(devices) if v == vendor)
    return env


# -- execution ------------------------------------------------------------------------------


def run(
    argv: list[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run one command: the only place the agent starts a process."""
    try:
        result = subprocess.run(  # noqa: S603 - an argv list of validated values, never a shell
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=COMMAND_ENV,
            cwd="/",
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandMissing("command_failed", f"{argv[0]}: not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise AgentError("command_failed", f"{argv[0]}: no answer within {timeout:g}s") from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[:500]
        message = f"{' '.join(argv[:2])} exited with status {result.returncode}: {detail}"
        raise AgentError("command_failed", message)
    return result


def execute(verb: str, fields: dict, config: Config, body: BinaryIO | None = None) -> dict:
    if verb in JOB_VERBS:
        from provisioning.agent import jobs  # here: jobs builds on this module

        return jobs.execute(verb, fields, config, body)
    if verb in ("grant", "revoke"):
        with host_lock(config):
            return grant(config, **fields) if verb == "grant" else revoke(config, **fields)
    if verb == "kill-process":
        with host_lock(config):
            return kill_process(**fields)
    if verb == "telemetry":
        return telemetry()
    if verb == "health-check":
        with host_lock(config):  # never beside a grant or revoke
            return health_check(config, **fields)
    return inventory(config) if verb == "inventory" else status(config)


@contextlib.contextmanager
def host_lock(config: Config) -> Iterator[None]:
    """One changing verb at a time: the reconcile loop and a staff member may overlap."""
    _make_dir(config.state_dir)
    fd = os.open(config.state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def inventory(config: Config) -> dict:
    try:
        devices = probe_all(_probe_runner)
    except ProbeError as exc:
        raise AgentError("probe_failed", f"devices: {exc.message}") from exc
    known = _known_chroots()
    return {
        "devices": [device.as_dict() for device in devices],
        "stacks": [
            {"name": name, "chroot": chroot, "present": chroot in known}
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


def telemetry() -> dict:
    """A reading of every device; a vendor whose tool fails is an error beside the others."""
    samples, errors = sample_each(_probe_runner)
    readings = []
    for sample in samples:
        reading = sample.as_dict()
        for process in reading["processes"]:
            process["system"] = _system_account(process["user"])
        readings.append(reading)
    return {
        "samples": readings,
        "errors": [{"vendor": vendor, "message": message} for vendor, message in errors],
    }


def health_check(config: Config, *, stack: str, device: tuple[str, int]) -> dict:
    """Run the host's own check for the device's vendor in a throwaway schroot of the stack."""
    vendor, _ = device
    argv = config.health_checks.get(vendor)
    if argv is None:
        return {"ran": False, "reason": f"no health check is configured for {vendor}"}
    env = [f"{name}={value}" for name, value in visible_devices_env((device,)).items()]
    chroot = config.stacks[stack]
    command = ["schroot", "-c", chroot, "-u", "root", "-d", "/", "--", "env", *env, *argv]
    result = run(command, check=False, timeout=HEALTH_CHECK_TIMEOUT_S)
    output = (result.stdout or "") + (result.stderr or "")
    return {
        "ran": True,
        "passed": result.returncode == 0,
        "exit_status": result.returncode,
        "output": output[-HEALTH_CHECK_OUTPUT_CHARS:],
    }


def _system_account(user: str | None) -> bool:
    """Whether a process's owner is a system account (root, a daemon), never a squatter."""
    if user is None:
        return False  # the process ended between the probe and now: nothing to say
    if user.isdigit():  # a uid without a passwd entry
        return int(user) < UID_MIN
    try:
        return pwd.getpwnam(user).pw_uid < UID_MIN
    except KeyError:
        return False


def kill_process(*, pid: int, user: str) -> dict:
    """Kill one process of a user (a squatter), if it is still theirs; never a system one."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return {"killed": 0}  # no such user: nothing of theirs runs
    if account.pw_uid < UID_MIN:
        raise AgentError("bad_request", "user: a system account's processes are not killed")
    uid = account.pw_uid
    return {"killed": kill_processes(lambda p: p == pid and uid in _uids_of(p))}


def _probe_runner(argv: list[str]) -> str:
    """The probes' runner contract on top of run(): absent tool -> FileNotFoundError."""
    try:
        return run(argv, timeout=TOOL_TIMEOUT_S).stdout
    except CommandMissing as exc:
        raise FileNotFoundError(argv[0]) from exc
    except AgentError as exc:
        raise ProbeError(exc.message) from exc


def _known_chroots() -> set[str]:
    try:
        listing = run(["schroot", "--list", "--all-chroots"]).stdout
    except AgentError:
        return set()  # no schroot at all: every stack is absent
    return {line.split(":", 1)[1] for line in listing.split() if line.startswith("chroot:")}


def status(config: Config) -> dict:
    sessions = [
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
    try:
        members = sorted(grp.getgrnam(config.group).gr_mem)
    except KeyError:
        members = []
    locked = _locked_accounts()
    count = _processes_by_uid()
    users = []
    for user in members:
        with contextlib.suppress(KeyError):
            uid = pwd.getpwnam(user).pw_uid
            users.append({"user": user, "locked": locked.get(user, True), "processes": count[uid]})
    from provisioning.agent import jobs  # jobs imports this module

    return {"sessions": sessions, "users": users, "jobs": jobs.list_jobs(config.state_dir)}


def _locked_accounts() -> dict[str, bool]:
    """user -> whether sshd would refuse them: a "!" password or an expiry date that passed."""
    today = int(time.time() // 86400)
    return {
        user: password.startswith("!") or (expire.isdigit() and int(expire) <= today)
        for user, (password, expire) in _shadow().items()
    }


def _shadow() -> dict[str, tuple[str, str]]:
    """user -> (password field, expiry field) of /etc/shadow."""
    entries = {}
    with open(SHADOW, encoding="utf-8", errors="replace") as file:
        for line in file:
            fields = line.rstrip("\n").split(":")
            if len(fields) >= 8:
                entries[fields[0]] = (fields[1], fields[7])
    return entries


def grant(config: Config, *, session, user, keys, stack, devices, end) -> dict:
    previous = read_record(config, session)
    if previous and (previous["user"], previous["stack"]) != (user, stack):
        raise AgentError("session_conflict", "session: already granted to another user or stack")
    account = ensure_account(user, config)
    write_file(keys_path(config, user), "".join(f"{key}\n" for key in keys), mode=0o644)
    nodes = _device_nodes(config, devices)
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
    write_file(record_path(config, session), json.dumps(record), mode=0o640, gid=account.pw_gid)
    if not session_alive(session):
        # Begun as the user: schroot then lets only that user (and root) into the session.
        chroot = config.stacks[stack]
        begin = ["schroot", "--begin-session", "-c", chroot, "-n", schroot_session(session)]
        run(["runuser", "-u", user, "--", *begin])
    for node in nodes:
        run(["setfacl", "-m", f"u:{user}:rw", node])
    if previous:  # a grant with fewer devices than before gives the others back
        _release_nodes(config, user, [n for n in previous["nodes"] if n not in nodes], session)
    return {
        "session": session,
        "user": user,
        "schroot_session": schroot_session(session),
        "env": record["env"],
    }


def ensure_account(user: str, config: Config) -> pwd.struct_passwd:
    """The user's account, created in the group if missing, unlocked; never someone else's."""
    try:
        grp.getgrnam(config.group)
    except KeyError:
        run(["groupadd", "--system", config.group])
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        home = os.path.join(config.home_base, user)
        run(
            [
                *("useradd", "--create-home", "--home-dir", home, "--shell", "/bin/bash"),
                *("--user-group", "--groups", config.group),
                *("--comment", "porterbox portal user", user),
            ]
        )
        account = pwd.getpwnam(user)
    if not _in_group(account, config.group):
        message = f"user: {user} exists and is not in {config.group}; the agent did not create it"
        raise AgentError("foreign_account", message)
    if _shadow().get(user) != ("*", ""):  # a repeated grant leaves the account as it is
        run(["usermod", "--password", "*", "--expiredate", "", user])
    return account


def _in_group(account: pwd.struct_passwd, group: str) -> bool:
    entry = grp.getgrnam(group)
    return account.pw_name in entry.gr_mem or account.pw_gid == entry.gr_gid


def _device_nodes(config: Config, devices: tuple[tuple[str, int], ...]) -> list[str]:
    """The booked devices' nodes, then their vendors' shared nodes that exist on this host."""
    nodes = [node for vendor, index in devices for node in config.devices[vendor][index]]
    for vendor in sorted({vendor for vendor, _ in devices}):
        nodes += [n for n in config.shared_nodes.get(vendor, ()) if os.path.exists(n)]
    return list(dict.fromkeys(nodes))


def revoke(config: Config, *, session: str | None = None, user: str | None = None) -> dict:
    if session is not None:
        return {"killed": revoke_session(config, session)}
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return {"killed": 0}  # no such account: nothing to end
    if not _in_group(account, config.group):
        raise AgentError("foreign_account", f"user: {user} is not in {config.group}")
    killed = 0
    for record in read_records(config.state_dir):
        if record["user"] == user:
            killed += revoke_session(config, record["session"])
    # Leftovers without a record (the portal found them in status) are retired too.
    return {"killed": killed + retire_user(config, user)}


def revoke_session(config: Config, session: str) -> int:
    record = read_record(config, session)
    killed = end_session(session)
    if record is None:
        return killed
    user = record["user"]
    _release_nodes(config, user, record["nodes"], session)
    os.unlink(record_path(config, session))
    if not any(r["user"] == user for r in read_records(config.state_dir)):
        killed += retire_user(config, user)
    return killed


def expire(config: Config, now: float | None = None) -> dict:
    """Revoke every session whose end has passed: the host's own guard, run by a timer, so a
    session never outlives its slot even with the whole portal down (ARCHITECTURE: defence in
    depth). The portal's pass does the same first in the normal case; both are idempotent."""
    now = time.time() if now is None else now
    expired, killed = [], 0
    with host_lock(config):
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
    with host_lock(config):
        for record in read_records(config.state_dir):
            for n in record["nodes"]:
                if (node is None or n == node) and os.path.exists(n):
                    run(["setfacl", "-m", f"u:{record['user']}:rw", n])
                    applied.append(f"{record['user']}:{n}")
    return {"applied": applied}


def end_session(session: str) -> int:
    """Kill what runs inside the session, then end it (schroot unmounts and drops its layer)."""
    roots = (session_root(session), "/var" + session_root(session))
    killed = kill_processes(lambda pid: _root_of(pid).startswith(tuple(r + "/" for r in roots)))
    if not session_alive(session):
        return killed
    result = run(["schroot", "--end-session", "-c", schroot_session(session)], check=False)
    if result.returncode != 0 and session_alive(session):
        detail = result.stderr.strip()[:500]
        raise AgentError("command_failed", f"session: schroot --end-session failed: {detail}")
    return killed


def retire_user(config: Config, user: str) -> int:
    """Lock the user out, then kill every process of theirs."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        return 0
    # Locked first, so no new login can start while the processes are being killed.
    write_file(keys_path(config, user), "", mode=0o644)
    run(["usermod", "--lock", "--expiredate", "1", user])
    return kill_processes(lambda pid: uid in _uids_of(pid))


def _release_nodes(config: Config, user: str, nodes: list[str], session: str) -> None:
    """Remove the user's ACLs on nodes they hold through no other session."""
    held = {
        node
        for r in read_records(config.state_dir)
        if r["user"] == user and r["session"] != session
        for node in r["nodes"]
    }
    for node in nodes:
        if node not in held and os.path.exists(node):
            run(["setfacl", "-x", f"u:{user}", node])


# -- processes ------------------------------------------------------------------------------


def kill_processes(matches: Callable[[int], bool]) -> int:
    """SIGSTOP every matching process, then SIGKILL them, until none is left; how many died.

    Stopping all of them first means none can fork a replacement or restart another while the
    others are being killed. The wait between rounds grows: a process that held a GPU can take
    seconds to exit.
    """
    killed: set[int] = set()
    parents: set[int] = set()
    for round_ in range(MAX_KILL_ROUNDS):
        stopped = _signal_matching(matches, signal.SIGSTOP)
        if not stopped:
            _resume(parents - killed)
            return len(killed)
        parents.update(int(_status(pid).get("PPid", "0")) for pid in stopped)
        _signal_matching(matches, signal.SIGKILL)
        killed.update(stopped)
        time.sleep(min(0.05 * (round_ + 1), 0.5))
    raise AgentError("processes_remain", "processes: some survived SIGKILL")


def _signal_matching(matches: Callable[[int], bool], sig: int) -> set[int]:
    """Send sig to every matching process; the pids it reached."""
    reached = set()
    for pid in _pids():
        if not matches(pid):
            continue
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            # Checked again through the pidfd's process: a pid reused meanwhile is left alone.
            if matches(pid):
                signal.pidfd_send_signal(fd, sig)
                reached.add(pid)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)
    return reached


def _resume(pids: set[int]) -> None:
    """Continue the surviving parents: su and runuser (root) stop themselves when their child
    is stopped, as job control, and would wait forever for a SIGCONT."""
    for pid in pids - {0, 1}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _status(pid: int) -> dict[str, str]:
    """The fields of /proc/<pid>/status; none for a process that is gone."""
    try:
        # A process names itself: its name may be any bytes, never a reason to skip it.
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as file:
            return dict(line.split(":", 1) for line in file if ":" in line)
    except OSError:
        return {}


def _uids_of(pid: int) -> set[int]:
    """Real, effective and saved uid of a live process; none for a zombie or a gone one."""
    fields = _status(pid)
    if fields.get("State", "").split()[:1] in (["Z"], ["X"]):
        return set()  # already dead, waiting for its parent: nothing to kill
    return {int(uid) for uid in fields.get("Uid", "").split()[:3]}


def _root_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/root") + "/"
    except OSError:
        return ""


def _processes_by_uid() -> Counter:
    counts: Counter = Counter()
    for pid in _pids():
        counts.update(_uids_of(pid))
    return counts


# -- files ----------------------------------------------------------------------------------


def keys_path(config: Config, user: str) -> str:
    return os.path.join(config.state_dir, "keys", user)


def record_path(config: Config, session: str) -> str:
    return os.path.join(config.state_dir, "sessions", f"{session}.json")


def read_record(config: Config, session: str) -> dict | None:
    try:
        with open(record_path(config, session), encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def write_file(path: str, text: str, *, mode: int, gid: int = 0) -> None:
    """Replace a root-owned file atomically: sshd and the login never see half a file."""
    directory = os.path.dirname(path)
    _make_dir(directory)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchown(file.fileno(), 0, gid)
            os.fchmod(file.fileno(), mode)
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _make_dir(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)
    # Whatever the umask made of it: users list the records to find theirs (which stay 0640).
    os.chmod(path, 0o755)  # noqa: S103


# -- entry point ----------------------------------------------------------------------------


def handle(raw: bytes, config: Config, body: BinaryIO | None = None) -> dict:
    """The answer to one request: validated completely first, then executed.

    raw is the request's line; body the rest of stdin, read only by a verb whose request
    announces raw bytes after it (job-start's input.archive_bytes). An answer with "_body" (a
    file) has that many bytes to follow its line (job-output's archive): main() writes them.
    """
    try:
        verb, fields = validate(parse_request(raw), config)
        return {"ok": True, **execute(verb, fields, config, body)}
    except AgentError as exc:
        return _error(exc.code, exc.message)
    except OSError as exc:
        return _error("host_error", f"{exc.filename or 'host'}: {exc.strerror or exc}")
    except Exception as exc:  # the portal must get an answer it can read, whatever broke
        traceback.print_exc()
        return _error("internal_error", f"{type(exc).__name__}: {exc}")


def _error(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="porterbox-hostctl", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ssh", action="store_true", help="one JSON request on stdin")
    mode.add_argument(
        "--expire", action="store_true", help="revoke the sessions whose end has passed (timer)"
    )
    mode.add_argument(
        "--reapply-acls", metavar="NODE", nargs="?", const="", default=None,
        help="give the sessions' users their device nodes again (udev); one node or all",
    )  # fmt: skip
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"default: {DEFAULT_CONFIG}")
    args = parser.parse_args(argv)
    if not args.ssh:  # the host's own guards: root's timer and udev, never the portal's key
        try:
            config = load_config(args.config)
            if args.expire:
                answer = {"ok": True, **expire(config)}
            else:
                answer = {"ok": True, **reapply_acls(config, args.reapply_acls or None)}
        except AgentError as exc:
            answer = _error(exc.code, exc.message)
        print(json.dumps(answer), flush=True)
        return 0 if answer["ok"] else 1
    # The request is one line (what follows it, if anything, is raw bytes it announces), or,
    # from an older portal, everything up to the end of stdin.
    raw = sys.stdin.buffer.readline(MAX_REQUEST_BYTES + 1)
    try:
        answer = handle(raw, load_config(args.config), body=sys.stdin.buffer)
    except AgentError as exc:
        answer = _error(exc.code, exc.message)
    body = answer.pop("_body", None)
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    if body is not None:
        with body:
            shutil.copyfileobj(body, sys.stdout.buffer, 1024 * 1024)
        sys.stdout.buffer.flush()
    return 0 if answer["ok"] else 1


if __name__ == "__main__":
    # As the package's module, not as __main__: jobs imports it by that name, and a second
    # copy would raise an AgentError that this one's handle() does not catch.
    from provisioning.agent import hostctl

    sys.exit(hostctl.main())
