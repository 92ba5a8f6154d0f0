"""Device probes: map what the vendor tools report to one ``Device`` schema.

Pure Python (standard library plus ``pynvml``), so it runs on the hosts themselves; it never
imports Django or ``portal``. Each vendor module has parsers that take the tool's recorded
text (the tests feed them real captured output) and a ``probe`` that runs the tool.
"""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

Runner = Callable[[list[str]], str]
Owner = Callable[[int], str | None]  # pid -> user, see process_owner

# Long enough for a cold driver to answer on a host with many devices, short enough that a hung
# tool cannot stall provisioning.
TOOL_TIMEOUT_S = 60


@dataclass(frozen=True)
class Device:
    vendor: str  # "nvidia" | "amd" | "intel" | "fpga"
    index: int  # the vendor tool's own numbering
    model: str
    memory_mib: int
    uuid: str  # "" where the tool reports none
    pci_bus_id: str  # as the tool prints it, e.g. "00000000:01:00.0"; "" if unknown
    arch: str  # "sm_90", "gfx90a", ...; "" if unknown

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Process:
    pid: int
    user: str | None  # the owner's login name (its uid as text if it has none); None if unknown
    used_memory_mib: int | None


@dataclass(frozen=True)
class Sample:
    """One telemetry reading of one device; a value the tool does not report is None."""

    vendor: str
    index: int  # the same numbering as Device.index
    utilization_pct: float | None
    memory_used_mib: int | None
    temperature_c: float | None
    power_w: float | None
    processes: list[Process] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class ProbeError(Exception):
    """A tool is there but its output could not be read (or it failed)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def run_tool(argv: list[str]) -> str:
    """The default runner: no shell, a timeout, a non-zero exit is an error.

    A missing executable raises FileNotFoundError, which the probes read as "no such hardware
    here"; every other failure becomes a ProbeError so that a broken driver is not mistaken for
    an empty host.
    """
    try:
        result = subprocess.run(  # noqa: S603 - argv is fixed by the probes, no shell
            argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=True
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()[:500]
        raise ProbeError(f"{argv[0]} exited with status {exc.returncode}: {detail}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProbeError(f"{argv[0]} did not answer within {TOOL_TIMEOUT_S}s") from exc
    except PermissionError as exc:
        raise ProbeError(f"{argv[0]} cannot be run: {exc}") from exc
    return result.stdout


def probe_all(runner: Runner | None = None, *, nvml=None) -> list[Device]:
    """Every device of every vendor on this host, vendor by vendor.

    A vendor whose tool is absent contributes nothing; a tool that is present but fails raises
    ProbeError, because registering a host with fewer devices than it has is worse than not
    registering it.
    """
    from provisioning.gpu import amd, fpga, intel, nvidia

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
    from provisioning.gpu import amd, fpga, intel, nvidia

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
