"""The agent's contract (docs/agent.md): its errors, its configuration, the request and answer
framing, and the checks of the fields that several verbs share.

Pure: nothing here runs a command or writes a file. The verbs' own modules (sessions, jobs,
host) clean their fields with these checks; ``hostctl`` frames requests and answers with them.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from provisioning.accounts import RESERVED
from provisioning.agent import STATE_DIR

DEFAULT_CONFIG = "/etc/porterbox/hostctl.json"
MAX_REQUEST_BYTES = 1024 * 1024
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

DeviceRef = tuple[str, int]  # (vendor, index), as the configuration's device map names it


class AgentError(Exception):
    """A refusal or a failure, answered as {"ok": false, "error": {"code", "message"}}."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


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


# -- framing --------------------------------------------------------------------------------


def parse_request(raw: bytes) -> dict:
    """The request's line as a JSON object; a repeated field, NaN or a non-object is refused."""
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


def error_answer(code: str, message: str) -> dict:
    return {"ok": False, "error": {"code": code, "message": message}}


def require(fields: dict, required: frozenset[str], verb: str) -> None:
    """Refuse a request that lacks one of the verb's required fields (the first by name)."""
    missing = required - set(fields)
    if missing:
        raise AgentError("bad_request", f"{sorted(missing)[0]}: required for {verb}")


# -- field checks: pure, nothing runs and nothing is written ---------------------------------


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


def check_devices(value: object, config: Config) -> tuple[DeviceRef, ...]:
    """(vendor, index) pairs, each one a device of the configuration's map, none twice."""
    if not isinstance(value, list):
        raise AgentError("bad_devices", "devices: must be a list of {vendor, index}")
    seen: list[DeviceRef] = []
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


def check_end(value: object) -> int:
    """The slot's end, Unix seconds: the host revokes the session then by itself (--expire)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**40:
        raise AgentError("bad_request", "end: must be the slot's end in Unix seconds")
    if value <= time.time():
        raise AgentError("bad_request", "end: the slot is over; nothing to grant")
    return value


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


def check_integer(field: str, value: object, low: int, high: int, code: str = "bad_request") -> int:
    if type(value) is not int or not low <= value <= high:  # bool is an int subclass
        raise AgentError(code, f"{field}: must be an integer from {low} to {high}")
    return value


def check_utf8(text: str, code: str, field: str) -> bytes:
    """The text's UTF-8 bytes; refused where it holds a lone surrogate."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: JSON can carry one, a file cannot
        raise AgentError(code, f"{field}: not valid Unicode") from exc


def visible_devices_env(devices: tuple[DeviceRef, ...]) -> dict[str, str]:
    """What the login exports: each vendor's booked indices, "" where none of it is booked."""
    # CUDA numbers devices fastest first unless told otherwise; nvidia-smi and NVML, whose
    # indices the portal books, count in PCI bus order.
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    for vendor, variable in VISIBLE_DEVICES.items():
        env[variable] = ",".join(str(i) for v, i in sorted(devices) if v == vendor)
    return env
