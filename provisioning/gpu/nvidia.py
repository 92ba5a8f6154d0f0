"""NVIDIA GPUs, through NVML (pynvml) or, where pynvml is missing, ``nvidia-smi -q -x``."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from provisioning.gpu import Device, ProbeError, Runner

SMI_XML = ["nvidia-smi", "-q", "-x"]
MIB = 1024 * 1024


def _text(value) -> str:
    # Older pynvml releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


def probe(nvml=None, *, runner: Runner | None = None) -> list[Device]:
    """The GPUs NVML sees; [] where there is no NVIDIA driver or library."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return _probe_smi(runner)
    try:
        nvml.nvmlInit()
    except (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded):
        return []
    except nvml.NVMLError as exc:
        raise ProbeError(f"NVML could not start: {exc}") from exc
    try:
        return [_nvml_device(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as exc:
        raise ProbeError(f"NVML query failed: {exc}") from exc
    finally:
        nvml.nvmlShutdown()


def _nvml_device(nvml, index: int) -> Device:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        arch = f"sm_{major}{minor}"
    except nvml.NVMLError_NotSupported:
        arch = ""
    return Device(
        vendor="nvidia",
        index=index,
        model=_text(nvml.nvmlDeviceGetName(handle)),
        memory_mib=nvml.nvmlDeviceGetMemoryInfo(handle).total // MIB,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=_text(nvml.nvmlDeviceGetPciInfo(handle).busId),
        arch=arch,
    )


def _probe_smi(runner: Runner | None) -> list[Device]:
    from provisioning.gpu import run_tool

    try:
        return parse_smi_xml((runner or run_tool)(SMI_XML))
    except FileNotFoundError:
        return []


def parse_smi_xml(text: str) -> list[Device]:
    """Devices from ``nvidia-smi -q -x``.

    The XML carries no compute capability, so ``arch`` is "" here (only NVML knows it). MIG
    instances are not listed: like NVML's device count, one entry per physical GPU.
    """
    if not text or not text.strip():
        raise ProbeError("nvidia-smi -q -x printed nothing")
    try:
        root = ET.fromstring(text)  # noqa: S314 - output of the local nvidia-smi
    except ET.ParseError as exc:
        raise ProbeError(f"nvidia-smi -q -x output is not XML: {exc}") from exc
    if root.tag != "nvidia_smi_log":
        raise ProbeError(f"nvidia-smi -q -x output has root <{root.tag}>, not <nvidia_smi_log>")
    return [_smi_gpu(gpu, index) for index, gpu in enumerate(root.findall("gpu"))]


def _smi_gpu(gpu: ET.Element, index: int) -> Device:
    def field(path: str) -> str:
        value = gpu.findtext(path)
        if value is None or not value.strip():
            raise ProbeError(f"nvidia-smi -q -x: GPU {index} has no <{path}>")
        return value.strip()

    total = field("fb_memory_usage/total")
    match = re.fullmatch(r"(\d+) MiB", total)
    if not match:
        raise ProbeError(f"nvidia-smi -q -x: GPU {index} memory total {total!r} is not 'N MiB'")
    return Device(
        vendor="nvidia",
        index=index,
        model=field("product_name"),
        memory_mib=int(match.group(1)),
        uuid=field("uuid"),
        pci_bus_id=field("pci/pci_bus_id"),
        arch="",
    )
