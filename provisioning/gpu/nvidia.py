"""NVIDIA GPUs, through NVML (pynvml) or, where pynvml is missing (the agent runs the host's
own python3, which has none), through nvidia-smi."""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

from provisioning.gpu.base import Device, Owner, ProbeError, Process, Runner, Sample, run_tool

SMI_XML = ["nvidia-smi", "-q", "-x"]
# What a Device needs, asked of nvidia-smi by name. compute_cap is the only source of the
# sm_XY qualifier without NVML: the -q -x report has none.
SMI_FIELDS = ("index", "name", "memory.total", "uuid", "pci.bus_id", "compute_cap")
SMI_CSV = ["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv"]
MIB = 1024 * 1024


def _text(value) -> str:
    # Older pynvml releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


def probe(nvml=None, *, runner: Runner | None = None) -> list[Device]:
    """The GPUs NVML sees; [] where there is no NVIDIA driver or library."""
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]  # the module stands in for the parameter
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


def _from_smi(runner: Runner | None, parse):
    """parse(nvidia-smi -q -x), the fallback without pynvml; [] where there is no nvidia-smi."""

    try:
        return parse((runner or run_tool)(SMI_XML))
    except FileNotFoundError:
        return []


def _probe_smi(runner: Runner | None) -> list[Device]:
    """The CSV query with compute_cap; the XML, without arch, where the driver predates that
    field (R510: bullseye's 470 answers 'Field "compute_cap" is not a valid field to query.')."""

    try:
        return parse_smi_csv((runner or run_tool)(SMI_CSV))
    except FileNotFoundError:
        return []
    except ProbeError as exc:
        if '"compute_cap" is not a valid field' not in exc.message:
            raise
    return _from_smi(runner, parse_smi_xml)


def parse_smi_csv(text: str) -> list[Device]:
    """Devices from ``nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv``.

    Columns are found by their header ("memory.total [MiB]" is memory.total), so a capture
    that asked for more fields reads the same. A compute_cap of "[N/A]" leaves ``arch`` "".
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise ProbeError("nvidia-smi --query-gpu printed nothing")
    rows = list(csv.reader(lines, skipinitialspace=True))
    header = [re.sub(r" \[.*\]$", "", name.strip()) for name in rows[0]]
    lacking = [name for name in SMI_FIELDS if name not in header]
    if lacking:
        raise ProbeError(f"nvidia-smi --query-gpu output has no {', '.join(lacking)} column")
    return [_smi_csv_gpu(header, row) for row in rows[1:]]


def _smi_csv_gpu(header: list[str], row: list[str]) -> Device:
    if len(row) != len(header):
        raise ProbeError(f"nvidia-smi --query-gpu: row {row!r} does not match the header")
    values = dict(zip(header, row, strict=True))
    index = values["index"].strip()
    if not index.isdigit():
        raise ProbeError(f"nvidia-smi --query-gpu: index {index!r} is not a number")

    def field(name: str) -> str:
        value = values[name].strip()
        if not value or value.startswith("[") or value == "N/A":  # [N/A], [Not Supported]
            raise ProbeError(f"nvidia-smi --query-gpu: GPU {index} has no {name} ({value!r})")
        return value

    total = field("memory.total")
    memory = re.fullmatch(r"(\d+) MiB", total)
    if not memory:
        raise ProbeError(
            f"nvidia-smi --query-gpu: GPU {index} memory.total {total!r} is not 'N MiB'"
        )
    capability = values["compute_cap"].strip()
    arch = re.fullmatch(r"(\d+)\.(\d+)", capability)
    if arch is None and not capability.startswith("["):
        raise ProbeError(f"nvidia-smi --query-gpu: GPU {index} compute_cap {capability!r}")
    return Device(
        vendor="nvidia",
        index=int(index),
        model=field("name"),
        memory_mib=int(memory.group(1)),
        uuid=field("uuid"),
        pci_bus_id=field("pci.bus_id"),
        arch=f"sm_{arch.group(1)}{arch.group(2)}" if arch else "",
    )


def parse_smi_xml(text: str) -> list[Device]:
    """Devices from ``nvidia-smi -q -x``.

    The XML carries no compute capability, so ``arch`` is "" here (NVML and the CSV query
    know it; this is the path of drivers too old for the query's compute_cap). MIG
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


# --- telemetry ------------------------------------------------------------------------------


def sample(nvml=None, *, runner: Runner | None = None, owner: Owner | None = None) -> list[Sample]:
    """One telemetry sample per GPU NVML sees (``nvidia-smi -q -x`` without pynvml); [] where
    there is no NVIDIA driver or library. ``owner`` names the user of each process's pid."""
    if nvml is None:
        try:
            import pynvml as nvml  # type: ignore[no-redef]  # the module stands in for the parameter
        except ImportError:
            return _with_owners(_sample_smi(runner), owner)
    try:
        nvml.nvmlInit()
    except (nvml.NVMLError_LibraryNotFound, nvml.NVMLError_DriverNotLoaded):
        return []
    except nvml.NVMLError as exc:
        raise ProbeError(f"NVML could not start: {exc}") from exc
    try:
        samples = [_nvml_sample(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as exc:
        raise ProbeError(f"NVML query failed: {exc}") from exc
    finally:
        nvml.nvmlShutdown()
    return _with_owners(samples, owner)


def _with_owners(samples: list[Sample], owner: Owner | None) -> list[Sample]:
    if owner is None:
        return samples
    return [
        replace(s, processes=[replace(p, user=owner(p.pid)) for p in s.processes]) for s in samples
    ]


def _nvml_sample(nvml, index: int) -> Sample:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def optional(query):
        # A GPU that does not measure something (GeForce power, MIG utilization) says so.
        try:
            return query()
        except nvml.NVMLError_NotSupported:
            return None

    utilization = optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    temperature = optional(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    milliwatts = optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    processes = optional(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
    return Sample(
        vendor="nvidia",
        index=index,
        utilization_pct=None if utilization is None else float(utilization),
        memory_used_mib=nvml.nvmlDeviceGetMemoryInfo(handle).used // MIB,
        temperature_c=None if temperature is None else float(temperature),
        power_w=None if milliwatts is None else milliwatts / 1000,
        processes=[
            Process(
                pid=int(p.pid),
                user=None,
                # pynvml gives None where the driver cannot tell (Windows WDDM).
                used_memory_mib=None if p.usedGpuMemory is None else p.usedGpuMemory // MIB,
            )
            for p in processes
        ],
    )


def _sample_smi(runner: Runner | None) -> list[Sample]:
    return _from_smi(runner, parse_smi_xml_samples)


def parse_smi_xml_samples(text: str) -> list[Sample]:
    """Telemetry from ``nvidia-smi -q -x``; "N/A" (or a missing element) becomes None.

    The XML names no process owner, so ``user`` is None here (``sample`` fills it in). Power is
    ``power_draw`` where the driver prints it (v11/v12 DTDs), else the v13 DTD's
    ``average_power_draw`` (the value the v13 ``power.draw`` query field reports), else
    ``instant_power_draw``.
    """
    root = _smi_root(text)
    return [_smi_sample(gpu, index) for index, gpu in enumerate(root.findall("gpu"))]


def _smi_root(text: str) -> ET.Element:
    if not text or not text.strip():
        raise ProbeError("nvidia-smi -q -x printed nothing")
    try:
        root = ET.fromstring(text)  # noqa: S314 - output of the local nvidia-smi
    except ET.ParseError as exc:
        raise ProbeError(f"nvidia-smi -q -x output is not XML: {exc}") from exc
    if root.tag != "nvidia_smi_log":
        raise ProbeError(f"nvidia-smi -q -x output has root <{root.tag}>, not <nvidia_smi_log>")
    return root


def _smi_value(element: ET.Element, paths: tuple[str, ...], unit: str, index: int) -> float | None:
    """The first of ``paths`` that has a number, read as "<number> <unit>"; None for N/A."""
    for path in paths:
        text = (element.findtext(path) or "").strip()
        if not text or text.upper() in ("N/A", "[N/A]", "UNKNOWN ERROR", "[UNKNOWN ERROR]"):
            continue
        match = re.fullmatch(rf"(-?\d+(?:\.\d+)?) ?{re.escape(unit)}", text)
        if not match:
            raise ProbeError(f"nvidia-smi -q -x: GPU {index} <{path}> {text!r} is not 'N {unit}'")
        return float(match.group(1))
    return None


def _smi_sample(gpu: ET.Element, index: int) -> Sample:
    memory_used = _smi_value(gpu, ("fb_memory_usage/used",), "MiB", index)
    power_paths = tuple(
        f"{section}/{name}"
        for name in ("power_draw", "average_power_draw", "instant_power_draw")
        for section in ("power_readings", "gpu_power_readings")
    )
    processes = []
    for info in gpu.findall("processes/process_info"):
        pid = (info.findtext("pid") or "").strip()
        if not pid.isdigit():
            raise ProbeError(f"nvidia-smi -q -x: GPU {index} has a process with pid {pid!r}")
        used = _smi_value(info, ("used_memory",), "MiB", index)
        processes.append(
            Process(pid=int(pid), user=None, used_memory_mib=None if used is None else int(used))
        )
    return Sample(
        vendor="nvidia",
        index=index,
        utilization_pct=_smi_value(gpu, ("utilization/gpu_util",), "%", index),
        memory_used_mib=None if memory_used is None else int(memory_used),
        temperature_c=_smi_value(gpu, ("temperature/gpu_temp",), "C", index),
        power_w=_smi_value(gpu, power_paths, "W", index),
        processes=processes,
    )
