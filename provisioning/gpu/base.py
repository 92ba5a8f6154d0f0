"""What the device probes share: the schema of a device and of a reading, the error, the runner.

The vendor modules build on this; the package (``provisioning.gpu``) runs them all.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

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
