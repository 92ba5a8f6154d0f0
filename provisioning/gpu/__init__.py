"""Device probes: map what the vendor tools report to one ``Device`` schema.

Pure Python (standard library plus ``pynvml``), so it runs on the hosts themselves; it never
imports Django or ``portal``. Each vendor module has parsers that take the tool's recorded
text (the tests feed them real captured output) and a ``probe`` that runs the tool.
"""

from __future__ import annotations

import pwd
from pathlib import Path

from provisioning.gpu import amd, fpga, intel, nvidia
from provisioning.gpu.base import (
    TOOL_TIMEOUT_S,
    Device,
    Owner,
    ProbeError,
    Process,
    Runner,
    Sample,
    run_tool,
)

__all__ = [
    "TOOL_TIMEOUT_S",
    "Device",
    "Owner",
    "ProbeError",
    "Process",
    "Runner",
    "Sample",
    "probe_all",
    "process_owner",
    "run_tool",
    "sample_all",
    "sample_each",
]


def probe_all(runner: Runner | None = None, *, nvml=None) -> list[Device]:
    """Every device of every vendor on this host, vendor by vendor.

    A vendor whose tool is absent contributes nothing; a tool that is present but fails raises
    ProbeError, because registering a host with fewer devices than it has is worse than not
    registering it.
    """
    runner = runner or run_tool
    devices = nvidia.probe(nvml, runner=runner)
    for vendor in (amd, intel, fpga):
        devices.extend(vendor.probe(runner))
    return devices


def process_owner(pid: int, proc_root: str | Path = "/proc") -> str | None:
    """The login name of the real uid in ``<proc_root>/<pid>/status``; None if it cannot be read.

    A uid without a passwd entry (a container's user, say) is returned as its number.
    """
    try:
        status = (Path(proc_root) / str(pid) / "status").read_text()
    except OSError:  # the process has ended, or /proc is hidden from us
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit():
                return None
            try:
                return pwd.getpwuid(int(fields[1])).pw_name
            except KeyError:
                return fields[1]
    return None


def sample_all(
    runner: Runner | None = None, *, nvml=None, owner: Owner | None = None
) -> list[Sample]:
    """A telemetry sample of every device of every vendor on this host, like ``probe_all``.

    A vendor whose tool is absent contributes nothing; a tool that is present but fails raises
    ProbeError. ``owner`` maps a pid to its user (default: ``process_owner`` on /proc).
    """
    samples, errors = sample_each(runner, nvml=nvml, owner=owner)
    if errors:
        raise ProbeError(errors[0][1])
    return samples


def sample_each(
    runner: Runner | None = None, *, nvml=None, owner: Owner | None = None
) -> tuple[list[Sample], list[tuple[str, str]]]:
    """Like ``sample_all``, but a vendor whose tool fails is reported, not raised: the samples
    of the others, and (vendor, message) for each failure. Telemetry wants both: a broken
    driver on one device type must not hide what the others do."""
    runner = runner or run_tool
    probes = {
        "nvidia": lambda: nvidia.sample(nvml, runner=runner, owner=owner or process_owner),
        "amd": lambda: amd.sample(runner),
        "intel": lambda: intel.sample(runner),
        "fpga": lambda: fpga.sample(runner),
    }
    samples: list[Sample] = []
    errors: list[tuple[str, str]] = []
    for vendor, probe in probes.items():
        try:
            samples.extend(probe())
        except ProbeError as exc:
            errors.append((vendor, exc.message))
    return samples, errors
