"""Intel data-centre GPUs, through ``xpu-smi`` (Intel XPU Manager)."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace

from provisioning.gpu.base import Device, ProbeError, Runner, Sample

XPU_SMI_DISCOVERY = ["xpu-smi", "discovery", "-j"]
# Metric ids of ``xpu-smi dump -m`` (xpumanager's smi_user_guide): 0 GPU Utilization (%),
# 1 GPU Power (W), 3 GPU Core Temperature (Celsius Degree), 18 GPU Memory Used (MiB).
DUMP_METRICS = "0,1,3,18"


def dump(device_id: int) -> list[str]:
    # Without -n the dump never ends; one reading is a sample.
    return ["xpu-smi", "dump", "-d", str(device_id), "-m", DUMP_METRICS, "-n", "1"]


def device_report(device_id: int) -> list[str]:
    return ["xpu-smi", "discovery", "-d", str(device_id)]


def probe(runner: Runner) -> list[Device]:
    """The devices of the listing, each with the memory size of its own report."""
    try:
        devices = parse_xpu_smi_discovery(runner(XPU_SMI_DISCOVERY))
    except FileNotFoundError:
        return []
    return [
        replace(d, memory_mib=parse_xpu_smi_device_memory(runner(device_report(d.index)), d.index))
        for d in devices
    ]


def parse_xpu_smi_discovery(text: str) -> list[Device]:
    """Devices from ``xpu-smi discovery -j``.

    The listing names no memory size and no architecture, so ``memory_mib`` is 0 here (``probe``
    reads it from each device's report) and ``arch`` "": no xpu-smi output names one, only a
    PCI device id.
    """
    if not text or not text.strip():
        raise ProbeError("xpu-smi discovery -j printed nothing")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProbeError(f"xpu-smi discovery -j output is not JSON: {exc}") from exc
    devices = data.get("device_list") if isinstance(data, dict) else None
    if not isinstance(devices, list):
        raise ProbeError("xpu-smi discovery -j output has no device_list")
    return [_device(position, entry) for position, entry in enumerate(devices)]


def _device(position: int, entry) -> Device:
    try:
        return Device(
            vendor="intel",
            index=int(entry["device_id"]),
            model=str(entry["device_name"]),
            memory_mib=0,
            uuid=str(entry.get("uuid", "")),
            pci_bus_id=str(entry["pci_bdf_address"]),
            arch="",
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProbeError(
            f"xpu-smi: device_list entry {position} is not as expected ({exc!r})"
        ) from exc


_MEMORY = re.compile(r"^\|[^|]*\|\s*Memory Physical Size:\s*(.*?)\s*\|\s*$", re.M)


def parse_xpu_smi_device_memory(text: str, index: int) -> int:
    """The memory in MiB of device ``index``'s ``xpu-smi discovery -d N`` report.

    That table is where xpu-smi prints the size ("Memory Physical Size: 14336.00 MiB"); a
    device without one is an error rather than a device of 0 MiB, which no one could book by
    memory.
    """
    found = _MEMORY.findall(text or "")
    if len(found) != 1:
        raise ProbeError(f"xpu-smi discovery -d {index}: no Memory Physical Size line")
    size = re.fullmatch(r"(\d+(?:\.\d+)?) MiB", found[0])
    if not size:
        raise ProbeError(
            f"xpu-smi discovery -d {index}: Memory Physical Size {found[0]!r} is not 'N MiB'"
        )
    return int(float(size.group(1)))


# --- telemetry ------------------------------------------------------------------------------


def sample(runner: Runner) -> list[Sample]:
    """One ``xpu-smi dump`` reading per device that discovery lists; [] without xpu-smi."""
    try:
        devices = parse_xpu_smi_discovery(runner(XPU_SMI_DISCOVERY))
    except FileNotFoundError:
        return []
    return [parse_xpu_smi_dump(runner(dump(d.index)), d.index) for d in devices]


_DUMP_COLUMNS = {
    "utilization_pct": "GPU Utilization (%)",
    "power_w": "GPU Power (W)",
    "temperature_c": "GPU Core Temperature (Celsius Degree)",
    "memory_used_mib": "GPU Memory Used (MiB)",
}


def parse_xpu_smi_dump(text: str, index: int) -> Sample:
    """The last reading of device ``index`` in ``xpu-smi dump`` CSV output.

    Columns are found by their header, so any metric list works; a metric not asked for, or a
    blank/"N/A" value (xpu-smi leaves a cell empty when it has no reading), is None.
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise ProbeError("xpu-smi dump printed nothing")
    rows = list(csv.reader(lines, skipinitialspace=True))
    header = [name.strip() for name in rows[0]]
    if "DeviceId" not in header:
        raise ProbeError(f"xpu-smi dump output has no DeviceId column: {lines[0]!r}")
    device_column = header.index("DeviceId")
    mine = [
        row
        for row in rows[1:]
        if len(row) > device_column
        and row[device_column].strip().isdigit()
        and int(row[device_column]) == index
    ]
    if not mine:
        raise ProbeError(f"xpu-smi dump has no reading of device {index}")
    last = dict(zip(header, (cell.strip() for cell in mine[-1]), strict=False))

    def value(field: str) -> float | None:
        text = last.get(_DUMP_COLUMNS[field], "")
        if not text or text.upper() == "N/A":
            return None
        try:
            return float(text)
        except ValueError as exc:
            raise ProbeError(f"xpu-smi dump: device {index} {field} is {text!r}") from exc

    used = value("memory_used_mib")
    return Sample(
        vendor="intel",
        index=index,
        utilization_pct=value("utilization_pct"),
        memory_used_mib=None if used is None else int(used),
        temperature_c=value("temperature_c"),
        power_w=value("power_w"),
        processes=[],
    )
