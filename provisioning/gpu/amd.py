"""AMD GPUs, through ``amd-smi`` (ROCm 6+) or the older ``rocm-smi``."""

from __future__ import annotations

import json
import re

from provisioning.gpu.base import Device, ProbeError, Runner, Sample

AMD_SMI = ["amd-smi", "static", "--json"]
ROCM_SMI = [
    "rocm-smi",
    "--showproductname",
    "--showmeminfo",
    "vram",
    "--showuniqueid",
    "--showbus",
    "--json",
]
ROCM_SMI_SAMPLE = [
    "rocm-smi",
    "--showuse",
    "--showmemuse",
    "--showmeminfo",
    "vram",
    "--showtemp",
    "--showpower",
    "--showpids",
    "--json",
]
MIB = 1024 * 1024


def probe(runner: Runner) -> list[Device]:
    """amd-smi where installed, else rocm-smi; [] where neither is."""
    try:
        return parse_amd_smi(runner(AMD_SMI))
    except FileNotFoundError:
        pass
    try:
        return parse_rocm_smi(runner(ROCM_SMI))
    except FileNotFoundError:
        return []


def _load_json(text: str, tool: str):
    if not text or not text.strip():
        raise ProbeError(f"{tool} printed nothing")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{tool} output is not JSON: {exc}") from exc


def _na(value) -> str:
    # The tools print "N/A" for what a device does not report (e.g. the RX 6700 XT's Unique ID).
    text = str(value or "").strip()
    return "" if text.upper() == "N/A" else text


def parse_rocm_smi(text: str) -> list[Device]:
    """Devices from ``rocm-smi ... --json``: one ``cardN`` object per GPU."""
    data = _load_json(text, "rocm-smi")
    if not isinstance(data, dict):
        raise ProbeError("rocm-smi JSON is not an object of cardN entries")
    cards = sorted(
        (int(match.group(1)), card)
        for key, card in data.items()
        if (match := re.fullmatch(r"card(\d+)", key))
    )
    if not cards:
        raise ProbeError("rocm-smi JSON has no cardN entry")
    return [_rocm_card(index, card) for index, card in cards]


def _rocm_card(index: int, card) -> Device:
    if not isinstance(card, dict):
        raise ProbeError(f"rocm-smi: card{index} is not an object")
    # ROCm 6.0 prints "Card series", 6.1 "Card Series": compare keys case-insensitively.
    fields = {key.lower(): value for key, value in card.items()}
    model = _na(fields.get("card series") or fields.get("device name"))
    if not model:
        raise ProbeError(f"rocm-smi: card{index} has no product name (--showproductname)")
    vram = fields.get("vram total memory (b)")
    if vram is None or not str(vram).isdigit():
        raise ProbeError(f"rocm-smi: card{index} VRAM total {vram!r} is not a byte count")
    return Device(
        vendor="amd",
        index=index,
        model=model,
        memory_mib=int(vram) // MIB,
        uuid=_na(fields.get("unique id")),
        pci_bus_id=_na(fields.get("pci bus")),
        # Older rocm-smi (e.g. the MI100/ROCm 6.0.2 capture) does not print the GFX version.
        arch=_na(fields.get("gfx version")),
    )


def parse_amd_smi(text: str) -> list[Device]:
    """Devices from ``amd-smi static --json``."""
    data = _load_json(text, "amd-smi")
    # Recent amd-smi wraps the list in {"gpu_data": [...]}; earlier releases print the bare list.
    gpus = data.get("gpu_data") if isinstance(data, dict) else data
    if not isinstance(gpus, list):
        raise ProbeError("amd-smi static JSON has no gpu_data list")
    return [_amd_smi_gpu(position, gpu) for position, gpu in enumerate(gpus)]


def _amd_smi_gpu(position: int, gpu) -> Device:
    try:
        asic, vram = gpu["asic"], gpu["vram"]
        index = int(gpu.get("gpu", position))
        model = _na(asic["market_name"])
        size = vram["size"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProbeError(f"amd-smi: GPU entry {position} is not as expected ({exc!r})") from exc
    if not model:
        raise ProbeError(f"amd-smi: GPU {index} has no market_name")
    bus = gpu.get("bus") or {}
    return Device(
        vendor="amd",
        index=index,
        model=model,
        memory_mib=_amd_smi_mib(size, index),
        # Neither is in the MI210 capture; other amd-smi releases print them, so read if there.
        uuid=_na(asic.get("asic_serial")),
        pci_bus_id=_na(bus.get("bdf")) if isinstance(bus, dict) else "",
        arch=_na(asic.get("target_graphics_version")),
    )


def _amd_smi_mib(size, index: int) -> int:
    # amd-smi labels VRAM "MB" but computes bytes / 2**20 (MI210: 65520 "MB" of 64 GiB), so MiB.
    if isinstance(size, dict):
        value, unit = size.get("value"), size.get("unit")
    else:  # older releases print a string such as "65520 MB"
        value, _, unit = str(size).partition(" ")
    factor = {"MB": 1, "MIB": 1, "GB": 1024, "GIB": 1024}.get(str(unit).upper())
    if factor is None or not str(value).isdigit():
        raise ProbeError(f"amd-smi: GPU {index} VRAM size {size!r} is not understood")
    return int(str(value)) * factor


# --- telemetry ------------------------------------------------------------------------------


def sample(runner: Runner) -> list[Sample]:
    """One telemetry sample per GPU rocm-smi sees; [] where rocm-smi is not installed."""
    try:
        return parse_rocm_smi_samples(runner(ROCM_SMI_SAMPLE))
    except FileNotFoundError:
        return []


# Edge is the board temperature rocm-smi has always printed; MI300-class GPUs have no edge
# sensor (N/A), so the junction (hotspot) reading stands in.
_TEMPERATURE_KEYS = ("temperature (sensor edge) (c)", "temperature (sensor junction) (c)")
# ROCm up to 6.1 prints the average package power; later releases print the current socket
# power for GPUs that only have that one.
_POWER_KEYS = ("average graphics package power (w)", "current socket graphics package power (w)")


def parse_rocm_smi_samples(text: str) -> list[Sample]:
    """Telemetry from ``rocm-smi --showuse ... --json``; "N/A" or a missing field is None.

    Processes are left empty: rocm-smi's ``--showpids`` table names the GPUs a process uses but
    not which one holds its VRAM, and no recorded JSON of it was at hand to map it from.
    """
    data = _load_json(text, "rocm-smi")
    if not isinstance(data, dict):
        raise ProbeError("rocm-smi JSON is not an object of cardN entries")
    cards = sorted(
        (int(match.group(1)), card)
        for key, card in data.items()
        if (match := re.fullmatch(r"card(\d+)", key))
    )
    if not cards:
        raise ProbeError("rocm-smi JSON has no cardN entry")
    return [_rocm_sample(index, card) for index, card in cards]


def _rocm_number(fields: dict, keys: tuple[str, ...], index: int) -> float | None:
    for key in keys:
        text = _na(fields.get(key))
        if not text:
            continue
        try:
            return float(text)
        except ValueError as exc:
            raise ProbeError(f"rocm-smi: card{index} {key!r} is {text!r}, not a number") from exc
    return None


def _rocm_sample(index: int, card) -> Sample:
    if not isinstance(card, dict):
        raise ProbeError(f"rocm-smi: card{index} is not an object")
    fields = {key.lower(): value for key, value in card.items()}
    used = _rocm_number(fields, ("vram total used memory (b)",), index)
    return Sample(
        vendor="amd",
        index=index,
        utilization_pct=_rocm_number(fields, ("gpu use (%)",), index),
        memory_used_mib=None if used is None else int(used) // MIB,
        temperature_c=_rocm_number(fields, _TEMPERATURE_KEYS, index),
        power_w=_rocm_number(fields, _POWER_KEYS, index),
        processes=[],
    )
