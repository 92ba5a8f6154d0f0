"""AMD/Xilinx accelerator cards managed by XRT, through ``xbutil examine`` (``xrt-smi`` in
recent XRT releases)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from provisioning.gpu.base import Device, ProbeError, Runner, Sample

# Recent XRT releases ship xbutil as xrt-smi; the report is the same.
TOOLS = ("xbutil", "xrt-smi")


def examine(tool: str, output: str) -> list[str]:
    # The JSON report goes only to a file (--output), which the tool will not overwrite, so the
    # caller hands it a fresh path.
    return [tool, "examine", "--format", "JSON", "--output", output]


def probe(runner: Runner) -> list[Device]:
    for tool in TOOLS:
        with tempfile.TemporaryDirectory(prefix="xbutil-") as tmp:
            report = Path(tmp) / "examine.json"
            try:
                runner(examine(tool, str(report)))
            except FileNotFoundError:
                continue
            if not report.exists():
                raise ProbeError(f"{tool} examine wrote no report")
            return parse_xbutil_examine(report.read_text())
    return []


def parse_xbutil_examine(text: str) -> list[Device]:
    """Devices from the host section (``system.host.devices``) of an examine JSON report.

    That section has no memory size (``memory_mib`` 0: the card's memory banks are in the
    per-card ``examine -d BDF -r memory`` report, of which no recording was at hand). Its ``id``
    is the shell's logic UUID, the same on every card flashed with that shell, so it is not
    used as the device's ``uuid``. Alveo cards are named by their shell (``vbnv``), Ryzen NPUs
    by ``name``. ``arch`` is the platform a design must be built for (see ``_platform``).
    """
    if not text or not text.strip():
        raise ProbeError("xbutil examine report is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProbeError(f"xbutil examine report is not JSON: {exc}") from exc
    try:
        devices = data["system"]["host"]["devices"]
    except (KeyError, TypeError) as exc:
        raise ProbeError("xbutil examine report has no system.host.devices") from exc
    # boost's JSON writer prints an empty child list as "" rather than [].
    if devices == "":
        return []
    if not isinstance(devices, list):
        raise ProbeError("xbutil examine report: system.host.devices is not a list")
    return [_device(index, entry) for index, entry in enumerate(devices)]


def _device(index: int, entry) -> Device:
    if not isinstance(entry, dict) or not entry.get("bdf"):
        raise ProbeError(f"xbutil examine report: device {index} has no bdf")
    model = entry.get("vbnv") or entry.get("name")
    if not model:
        raise ProbeError(f"xbutil examine report: device {entry['bdf']} has no vbnv or name")
    return Device(
        vendor="fpga",
        index=index,
        model=str(model),
        memory_mib=0,
        uuid="",
        pci_bus_id=str(entry["bdf"]),
        arch=_platform(entry),
    )


_QUALIFIER = re.compile(r"[a-z0-9][a-z0-9_.+-]{0,31}")  # portal/inventory/hwspec.py's


def _platform(entry: dict) -> str:
    """The platform an xclbin targets: an Alveo card's shell (``vbnv``, e.g.
    xilinx_u250_gen3x16_xdma_shell_4_1, without the constant "xilinx_"), else XRT's device
    class ("Ryzen" for an NPU); "" where that is no hwspec qualifier (too long, odd letters),
    since a cut name would name another platform."""
    name = str(entry.get("vbnv") or entry.get("device_class") or "").lower()
    name = name.removeprefix("xilinx_")
    return name if _QUALIFIER.fullmatch(name) else ""


# --- telemetry ------------------------------------------------------------------------------


def sample(runner: Runner) -> list[Sample]:
    """A sample per card the examine report lists; [] without xbutil/xrt-smi."""
    return [_empty_sample(device) for device in probe(runner)]


def parse_xbutil_examine_samples(text: str) -> list[Sample]:
    """Telemetry from the host examine report: it lists the cards but measures nothing, so
    every value is None (the per-card ``examine -d BDF -r thermal electrical`` report has the
    temperature and power; no recorded one was at hand, so it is not read yet)."""
    return [_empty_sample(device) for device in parse_xbutil_examine(text)]


def _empty_sample(device: Device) -> Sample:
    return Sample(
        vendor="fpga",
        index=device.index,
        utilization_pct=None,
        memory_used_mib=None,
        temperature_c=None,
        power_w=None,
        processes=[],
    )
