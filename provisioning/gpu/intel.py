"""Intel data-centre GPUs, through ``xpu-smi`` (Intel XPU Manager)."""

from __future__ import annotations

import json

from provisioning.gpu import Device, ProbeError, Runner

XPU_SMI_DISCOVERY = ["xpu-smi", "discovery", "-j"]


def probe(runner: Runner) -> list[Device]:
    try:
        return parse_xpu_smi_discovery(runner(XPU_SMI_DISCOVERY))
    except FileNotFoundError:
        return []


def parse_xpu_smi_discovery(text: str) -> list[Device]:
    """Devices from ``xpu-smi discovery -j``.

    The listing names no memory size and no architecture, so ``memory_mib`` is 0 and ``arch``
    "" (the per-device ``xpu-smi discovery -d N -j`` would have the memory; not read yet).
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
