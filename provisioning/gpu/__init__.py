"""Device probes: map what the vendor tools report to one ``Device`` schema.

Pure Python (standard library plus ``pynvml``), so it runs on the hosts themselves; it never
imports Django or ``portal``. Each vendor module has parsers that take the tool's recorded
text (the tests feed them real captured output) and a ``probe`` that runs the tool.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass

Runner = Callable[[list[str]], str]

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
