"""The device probes, fed with real recorded tool output (tests/fixtures/gpu/SOURCES.md)."""

import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

import provisioning.gpu as gpu
from provisioning.gpu import Device, ProbeError, amd, base, fpga, intel, nvidia, probe_all

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gpu"
MIB = 1024 * 1024
H100_CSV = "nvidia-smi-csv/h100-80gb-hbm3_drv590.48.01_load_query-gpu-all-fields.csv"
FAKE_NVIDIA_SMI = Path(__file__).resolve().parent / "fake_nvidia_smi.py"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def h100_capture() -> list[dict]:
    """The rows of the recorded ``nvidia-smi --query-gpu=... --format=csv`` (H100, driver 590)."""
    text = fixture("nvidia-smi-csv/h100-80gb-hbm3_drv590.48.01_load_query-gpu-all-fields.csv")
    return list(csv.DictReader(text.splitlines(), skipinitialspace=True))


class FakeNVML:
    """Stands in for the pynvml module, answering from a recorded nvidia-smi capture.

    The exception classes are pynvml's own, so the probe's ``except`` clauses are the real ones.
    """

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported

    def __init__(self, rows, *, init_error=None, as_bytes=False):
        self.rows = rows
        self.init_error = init_error
        # pynvml before 11.5 returned bytes where today's returns str.
        self.encode = (lambda s: s.encode()) if as_bytes else (lambda s: s)
        self.shut_down = False

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return len(self.rows)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.rows[index]

    def nvmlDeviceGetName(self, row):
        return self.encode(row["name"])

    def nvmlDeviceGetMemoryInfo(self, row):
        mib = int(row["memory.total [MiB]"].removesuffix(" MiB"))
        return SimpleNamespace(total=mib * MIB)

    def nvmlDeviceGetUUID(self, row):
        return self.encode(row["uuid"])

    def nvmlDeviceGetPciInfo(self, row):
        return SimpleNamespace(busId=self.encode(row["pci.bus_id"]))

    def nvmlDeviceGetCudaComputeCapability(self, row):
        major, minor = row["compute_cap"].split(".")
        return int(major), int(minor)


def no_nvml():
    return FakeNVML([], init_error=pynvml.NVMLError_LibraryNotFound())


def absent(argv):
    raise FileNotFoundError(argv[0])


class Recorded:
    """A runner that answers each tool from a fixture, by its whole command line where that is
    listed, else by its name; a tool not listed is not installed. `calls`: the tools it ran."""

    def __init__(self, outputs: dict[str | tuple[str, ...], str]) -> None:
        self.outputs = outputs
        self.calls: list[str] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv[0])
        key = tuple(argv) if tuple(argv) in self.outputs else argv[0]
        if key not in self.outputs:
            raise FileNotFoundError(argv[0])
        text = fixture(self.outputs[key])
        if argv[0] in fpga.TOOLS:  # they write their report to --output, not stdout
            Path(argv[argv.index("--output") + 1]).write_text(text)
            return ""
        return text


# --- NVIDIA -------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True])
def test_it_reads_a_gpu_through_nvml(as_bytes):
    nvml = FakeNVML(h100_capture(), as_bytes=as_bytes)

    devices = nvidia.probe(nvml)

    assert devices == [
        Device(
            vendor="nvidia",
            index=0,
            model="NVIDIA H100 80GB HBM3",
            memory_mib=81559,
            uuid="GPU-00000000-0000-0000-0000-000000000000",
            pci_bus_id="00000000:00:09.0",
            arch="sm_90",
        )
    ]
    assert nvml.shut_down


@pytest.mark.parametrize(
    "error", [pynvml.NVMLError_LibraryNotFound(), pynvml.NVMLError_DriverNotLoaded()]
)
def test_it_finds_no_nvidia_gpu_without_library_or_driver(error):
    assert nvidia.probe(FakeNVML(h100_capture(), init_error=error)) == []


def test_it_reports_an_nvml_failure_as_a_probe_error():
    nvml = FakeNVML(h100_capture(), init_error=pynvml.NVMLError_NoPermission())

    with pytest.raises(ProbeError, match="NVML could not start"):
        nvidia.probe(nvml)


def test_it_leaves_arch_empty_when_nvml_has_no_compute_capability():
    nvml = FakeNVML(h100_capture())

    def not_supported(row):
        raise pynvml.NVMLError_NotSupported()

    nvml.nvmlDeviceGetCudaComputeCapability = not_supported

    [device] = nvidia.probe(nvml)
    assert device.arch == ""
    assert device.model == "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "tesla-t4.xml",
            [("Tesla T4", 15360, "GPU-d37e67a5-91dd-3774-a5cb-99096249601a", "00000000:00:1E.0")],
        ),
        (
            "dual_a5000-v13.xml",
            [
                (
                    "NVIDIA RTX A5000",
                    24564,
                    "GPU-12345678-aaaa-bbbb-cccc-0123456789ab",
                    "00000000:81:00.0",
                ),
                (
                    "NVIDIA RTX A5000",
                    24564,
                    "GPU-12345678-aaaa-bbbb-cccc-0123456789cd",
                    "00000000:C1:00.0",
                ),
            ],
        ),
        # MIG enabled: one physical GPU with its full memory, not its four MIG slices.
        (
            "a100-sxm4-v12.xml",
            [
                (
                    "NVIDIA A100-SXM4-80GB",
                    81920,
                    "GPU-513536b6-7d19-9063-b049-1e69664bb298",
                    "00000000:01:00.0",
                )
            ],
        ),
        (
            "pro-6000-maxq-blackwell-v13.xml",
            [
                (
                    "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition",
                    97887,
                    "GPU-12345678-aaaa-bbbb-cccc-0123456789ab",
                    "00000000:61:00.0",
                )
            ],
        ),
    ],
)
def test_it_parses_recorded_nvidia_smi_xml(name, expected):
    devices = nvidia.parse_smi_xml(fixture(f"nvidia-smi/{name}"))

    assert [(d.model, d.memory_mib, d.uuid, d.pci_bus_id) for d in devices] == expected
    assert [d.index for d in devices] == list(range(len(expected)))
    # nvidia-smi's XML has no compute capability; only NVML gives the sm_XY qualifier.
    assert {(d.vendor, d.arch) for d in devices} == {("nvidia", "")}


def fake_nvidia_smi(tmp_path, monkeypatch, *options: str) -> None:
    """An nvidia-smi first on PATH that answers from the recorded H100 capture (see
    fake_nvidia_smi.py), and no pynvml: what the agent meets on a host."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv = [sys.executable, str(FAKE_NVIDIA_SMI), str(FIXTURES / H100_CSV), *options, "--"]
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail


def test_it_reads_the_compute_capability_from_nvidia_smi_without_pynvml(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch)

    devices = nvidia.probe()  # the default runner: the nvidia-smi on PATH

    assert devices == [
        Device(
            vendor="nvidia",
            index=0,
            model="NVIDIA H100 80GB HBM3",
            memory_mib=81559,
            uuid="GPU-00000000-0000-0000-0000-000000000000",
            pci_bus_id="00000000:00:09.0",
            arch="sm_90",
        )
    ]


def test_it_falls_back_to_the_xml_where_the_driver_knows_no_compute_cap(tmp_path, monkeypatch):
    # Drivers before R510 refuse the field; their -q -x still lists the GPUs.
    xml = str(FIXTURES / "nvidia-smi/dual_a5000-v13.xml")
    fake_nvidia_smi(tmp_path, monkeypatch, "--no-field", "compute_cap", "--xml", xml)

    devices = nvidia.probe()

    assert [(d.pci_bus_id, d.arch) for d in devices] == [
        ("00000000:81:00.0", ""),
        ("00000000:C1:00.0", ""),
    ]


def test_it_reports_an_nvidia_smi_that_refuses_another_field(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "--no-field", "pci.bus_id")

    with pytest.raises(ProbeError, match=r'Field "pci\.bus_id" is not a valid field'):
        nvidia.probe()


def test_it_reads_the_whole_recorded_capture_by_its_header():
    [device] = nvidia.parse_smi_csv(fixture(H100_CSV))  # 212 columns, the six among them

    assert (device.index, device.memory_mib, device.arch) == (0, 81559, "sm_90")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda text: "", "printed nothing"),
        (lambda text: fixture("nvidia-smi/tesla-t4.xml"), "has no index, name"),
        (lambda text: text.replace(", 9.0,", ", 9,0,", 1), "does not match the header"),
        (lambda text: text.replace(", 9.0,", ", 9.x,", 1), "compute_cap '9.x'"),
        (lambda text: text.replace(", 81559 MiB,", ", [N/A],", 1), "has no memory.total"),
        (lambda text: text.replace(", 81559 MiB,", ", 80 GiB,", 1), "is not 'N MiB'"),
    ],
)
def test_it_rejects_unreadable_nvidia_smi_csv(change, message):
    with pytest.raises(ProbeError, match=message):
        nvidia.parse_smi_csv(change(fixture(H100_CSV)))


def test_it_leaves_arch_empty_where_nvidia_smi_has_no_compute_capability():
    text = fixture(H100_CSV).replace(", 9.0,", ", [N/A],", 1)

    assert [d.arch for d in nvidia.parse_smi_csv(text)] == [""]


def test_it_finds_no_nvidia_gpu_without_pynvml_or_nvidia_smi(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)

    assert nvidia.probe(runner=absent) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "printed nothing"),
        ("  \n", "printed nothing"),
        ("NVIDIA-SMI has failed because it couldn't communicate with the driver", "not XML"),
        ("<html></html>", "not <nvidia_smi_log>"),
        ("<nvidia_smi_log><gpu><product_name>X</product_name></gpu></nvidia_smi_log>", "total"),
    ],
)
def test_it_rejects_unreadable_nvidia_smi_xml(text, message):
    with pytest.raises(ProbeError, match=message):
        nvidia.parse_smi_xml(text)


def test_it_rejects_truncated_nvidia_smi_xml():
    text = fixture("nvidia-smi/tesla-t4.xml")

    with pytest.raises(ProbeError, match="not XML"):
        nvidia.parse_smi_xml(text[: len(text) // 2])


def test_it_rejects_a_gpu_without_uuid_in_nvidia_smi_xml():
    text = fixture("nvidia-smi/tesla-t4.xml").replace(
        "<uuid>GPU-d37e67a5-91dd-3774-a5cb-99096249601a</uuid>", ""
    )

    with pytest.raises(ProbeError, match="GPU 0 has no <uuid>"):
        nvidia.parse_smi_xml(text)


# --- AMD ----------------------------------------------------------------------------------


def test_it_parses_recorded_amd_smi_static_json():
    [device] = amd.parse_amd_smi(fixture("amd-smi/mi210_static_json.json"))

    # That amd-smi release prints no BDF and no serial in `static`.
    assert device == Device(
        vendor="amd",
        index=0,
        model="AMD Instinct MI210",
        memory_mib=65520,
        uuid="",
        pci_bus_id="",
        arch="gfx90a",
    )


def test_it_parses_recorded_rocm_smi_json_of_four_mi100():
    devices = amd.parse_rocm_smi(fixture("rocm-smi/mi100_rocm602.json"))

    assert [d.index for d in devices] == [0, 1, 2, 3]
    assert {d.model for d in devices} == {"Arcturus GL-XL [Instinct MI100]"}
    assert {d.memory_mib for d in devices} == {34342961152 // MIB}
    assert [d.uuid for d in devices] == [
        "0x79ccd55167a2124a",
        "0x4edfb117a17a07d",
        "0xd4a9ec48d03d261d",
        "0x1b9dd972253c3736",
    ]
    assert [d.pci_bus_id for d in devices] == [
        "0000:83:00.0",
        "0000:A3:00.0",
        "0000:C3:00.0",
        "0000:E3:00.0",
    ]
    # ROCm 6.0.2's rocm-smi prints no GFX version.
    assert {d.arch for d in devices} == {""}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "rx6700xt_rocm612.json",
            Device(
                vendor="amd",
                index=0,
                model="Navi 22 [Radeon RX 6700/6700 XT / 6800M]",
                memory_mib=12868124672 // MIB,
                uuid="",  # the card reports "Unique ID": "N/A"
                pci_bus_id="0000:07:00.0",
                arch="gfx1031",
            ),
        ),
        (
            "vega-20-WKS-GL-XE.json",
            Device(
                vendor="amd",
                index=0,
                model="Radeon Instinct MI50 32GB",
                memory_mib=34342961152 // MIB,
                uuid="0x2f048617326b1ea",
                pci_bus_id="0000:63:00.0",
                arch="",
            ),
        ),
    ],
)
def test_it_parses_recorded_rocm_smi_json_of_one_card(name, expected):
    assert amd.parse_rocm_smi(fixture(f"rocm-smi/{name}")) == [expected]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "rocm-smi printed nothing"),
        ("ERROR: GPU[0] : Unable to read", "not JSON"),
        ("[]", "not an object"),
        ('{"system": {"Driver version": "6.3.6"}}', "no cardN entry"),
        ('{"card0": {"Card Series": "X"}}', "VRAM total None"),
        ('{"card0": {"VRAM Total Memory (B)": "1024"}}', "no product name"),
        ('{"card0": "N/A"}', "card0 is not an object"),
    ],
)
def test_it_rejects_unreadable_rocm_smi_json(text, message):
    with pytest.raises(ProbeError, match=message):
        amd.parse_rocm_smi(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "amd-smi printed nothing"),
        ('{"gpu_data": [', "not JSON"),
        ('{"gpu_list": []}', "no gpu_data list"),
        ('{"gpu_data": [{"gpu": 0, "asic": {}}]}', "entry 0 is not as expected"),
        (
            '{"gpu_data": [{"gpu": 0, "asic": {"market_name": "X"},'
            ' "vram": {"size": {"value": "N/A", "unit": "MB"}}}]}',
            "VRAM size",
        ),
    ],
)
def test_it_rejects_unreadable_amd_smi_json(text, message):
    with pytest.raises(ProbeError, match=message):
        amd.parse_amd_smi(text)


def test_it_prefers_amd_smi_to_rocm_smi():
    runner = Recorded(
        {"amd-smi": "amd-smi/mi210_static_json.json", "rocm-smi": "rocm-smi/mi100_rocm602.json"}
    )

    assert [d.model for d in amd.probe(runner)] == ["AMD Instinct MI210"]
    assert runner.calls == ["amd-smi"]


def test_it_falls_back_to_rocm_smi_without_amd_smi():
    runner = Recorded({"rocm-smi": "rocm-smi/mi100_rocm602.json"})

    assert len(amd.probe(runner)) == 4
    assert runner.calls == ["amd-smi", "rocm-smi"]


def test_it_finds_no_amd_gpu_without_either_tool():
    assert amd.probe(absent) == []


# --- Intel --------------------------------------------------------------------------------


XPU_LISTING = "xpu-smi/xpumanager-doc_discovery-j_windows_flex170.json"
XPU_REPORT = "xpu-smi/xpumanager-doc_discovery-d0_windows_flex170.txt"  # the same machine's


@pytest.mark.parametrize(
    ("name", "model", "uuid"),
    [
        (
            "xpumanager-doc_discovery-j_linux_0x020a.json",
            "Intel(R) Graphics [0x020a]",
            "00000000-0000-0000-0000-020a00008086",
        ),
        (
            "xpumanager-doc_discovery-j_windows_flex170.json",
            "Intel(R) Data Center GPU Flex Series 170",
            "01000000-0000-004d-0000-000856c08086",
        ),
    ],
)
def test_it_parses_recorded_xpu_smi_discovery(name, model, uuid):
    devices = intel.parse_xpu_smi_discovery(fixture(f"xpu-smi/{name}"))

    # The listing names no memory size (each device's report does) and no architecture.
    assert devices == [
        Device(
            vendor="intel",
            index=0,
            model=model,
            memory_mib=0,
            uuid=uuid,
            pci_bus_id="0000:4d:00.0",
            arch="",
        )
    ]


def test_it_reads_an_intel_gpus_memory_from_its_own_report():
    runner = Recorded(
        {
            ("xpu-smi", "discovery", "-j"): XPU_LISTING,
            ("xpu-smi", "discovery", "-d", "0"): XPU_REPORT,
        }
    )

    assert intel.probe(runner) == [
        Device(
            vendor="intel",
            index=0,
            model="Intel(R) Data Center GPU Flex Series 170",
            memory_mib=14336,  # "Memory Physical Size: 14336.00 MiB"
            uuid="01000000-0000-004d-0000-000856c08086",
            pci_bus_id="0000:4d:00.0",
            arch="",
        )
    ]


@pytest.mark.parametrize(
    ("name", "mib"),
    [
        ("xpumanager-doc_discovery-d_linux_0x020a.txt", 32768),
        ("xpumanager-doc_discovery-d0_windows_flex170.txt", 14336),
    ],
)
def test_it_parses_the_memory_of_recorded_xpu_smi_device_reports(name, mib):
    assert intel.parse_xpu_smi_device_memory(fixture(f"xpu-smi/{name}"), 0) == mib


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda text: "", "no Memory Physical Size line"),
        (lambda text: text.replace("Memory Physical Size", "Memory Size"), "no Memory Physical"),
        (lambda text: text.replace("14336.00 MiB", "unknown     "), "'unknown' is not 'N MiB'"),
    ],
)
def test_it_rejects_an_xpu_smi_device_report_without_memory(change, message):
    with pytest.raises(ProbeError, match=message):
        intel.parse_xpu_smi_device_memory(change(fixture(XPU_REPORT)), 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "printed nothing"),
        ("Error: Level Zero initialization failed", "not JSON"),
        ('{"devices": []}', "no device_list"),
        ('{"device_list": [{"device_id": 0}]}', "entry 0 is not as expected"),
    ],
)
def test_it_rejects_unreadable_xpu_smi_output(text, message):
    with pytest.raises(ProbeError, match=message):
        intel.parse_xpu_smi_discovery(text)


def test_it_reads_an_empty_xpu_smi_device_list_as_no_devices():
    assert intel.parse_xpu_smi_discovery('{"device_list": []}') == []


def test_it_finds_no_intel_gpu_without_xpu_smi():
    assert intel.probe(absent) == []


# --- XRT (xbutil) -------------------------------------------------------------------------


def test_it_parses_a_recorded_xrt_examine_report():
    devices = fpga.parse_xbutil_examine(fixture("xrt-smi/ryzen-ai-doc_examine_json_npu.json"))

    # The host report has no memory and only the shell's logic UUID; the platform of an NPU is
    # its device class.
    assert devices == [
        Device(
            vendor="fpga",
            index=0,
            model="NPU",
            memory_mib=0,
            uuid="",
            pci_bus_id="00c5:00:01.1",
            arch="ryzen",
        )
    ]


@pytest.mark.parametrize(
    ("shell", "arch"),
    [
        ("xilinx_u250_gen3x16_xdma_shell_4_1", "u250_gen3x16_xdma_shell_4_1"),
        ("xilinx_u55c_gen3x16_xdma_base_3", "u55c_gen3x16_xdma_base_3"),
        # Longer than a hwspec qualifier: no arch rather than a cut name.
        ("xilinx_vck5000_gen4x8_qdma_base_2_with_a_long_suffix", ""),
    ],
)
def test_it_names_an_alveo_cards_platform_by_its_shell(shell, arch):
    # An Alveo card's entry carries its shell in vbnv (XRT's XBUtilities::get_available_devices).
    text = fixture("xrt-smi/ryzen-ai-doc_examine_json_npu.json").replace(
        '"name": "NPU"', f'"vbnv": "{shell}"'
    )

    [device] = fpga.parse_xbutil_examine(text.replace('"Ryzen"', '"Alveo"'))

    assert (device.model, device.arch) == (shell, arch)


def test_it_runs_xbutil_with_a_report_file():
    runner = Recorded({"xbutil": "xrt-smi/ryzen-ai-doc_examine_json_npu.json"})

    assert [d.pci_bus_id for d in fpga.probe(runner)] == ["00c5:00:01.1"]


def test_it_runs_xrt_smi_where_xbutil_is_gone():
    runner = Recorded({"xrt-smi": "xrt-smi/ryzen-ai-doc_examine_json_npu.json"})

    assert [d.model for d in fpga.probe(runner)] == ["NPU"]
    assert runner.calls == ["xbutil", "xrt-smi"]


def test_it_reports_xbutil_that_wrote_no_report():
    with pytest.raises(ProbeError, match="wrote no report"):
        fpga.probe(lambda argv: "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "report is empty"),
        ("System Configuration\n  OS Name : Linux", "not JSON"),
        ('{"system": {"host": {"os": {}}}}', "no system.host.devices"),
        ('{"system": {"host": {"devices": {}}}}', "not a list"),
        ('{"system": {"host": {"devices": [{"name": "NPU"}]}}}', "device 0 has no bdf"),
        ('{"system": {"host": {"devices": [{"bdf": "0000:3b:00.1"}]}}}', "no vbnv or name"),
    ],
)
def test_it_rejects_unreadable_xbutil_reports(text, message):
    with pytest.raises(ProbeError, match=message):
        fpga.parse_xbutil_examine(text)


def test_it_reads_an_empty_xbutil_device_list_as_no_devices():
    # boost::property_tree writes a node without children as "".
    assert fpga.parse_xbutil_examine('{"system": {"host": {"devices": ""}}}') == []


def test_it_finds_no_fpga_without_xbutil_or_xrt_smi():
    runner = Recorded({})

    assert fpga.probe(runner) == []
    assert runner.calls == ["xbutil", "xrt-smi"]


# --- All vendors ----------------------------------------------------------------------------


def test_it_merges_every_vendor():
    runner = Recorded(
        {
            "amd-smi": "amd-smi/mi210_static_json.json",
            ("xpu-smi", "discovery", "-j"): XPU_LISTING,
            ("xpu-smi", "discovery", "-d", "0"): XPU_REPORT,
            "xbutil": "xrt-smi/ryzen-ai-doc_examine_json_npu.json",
        }
    )

    devices = probe_all(runner, nvml=FakeNVML(h100_capture()))

    assert [(d.vendor, d.model, d.memory_mib, d.arch) for d in devices] == [
        ("nvidia", "NVIDIA H100 80GB HBM3", 81559, "sm_90"),
        ("amd", "AMD Instinct MI210", 65520, "gfx90a"),
        ("intel", "Intel(R) Data Center GPU Flex Series 170", 14336, ""),
        ("fpga", "NPU", 0, "ryzen"),
    ]


def test_it_finds_nothing_on_a_host_without_any_tool():
    assert probe_all(absent, nvml=no_nvml()) == []


def test_it_lets_a_failing_tool_fail_the_whole_probe():
    def broken_rocm_smi(argv):
        if argv[0] == "rocm-smi":
            raise ProbeError("rocm-smi exited with status 2: No AMD GPUs specified")
        raise FileNotFoundError(argv[0])

    with pytest.raises(ProbeError, match="rocm-smi exited"):
        probe_all(broken_rocm_smi, nvml=no_nvml())


def test_it_serialises_a_device_as_a_dict():
    [device] = nvidia.probe(FakeNVML(h100_capture()))

    assert device.as_dict() == {
        "vendor": "nvidia",
        "index": 0,
        "model": "NVIDIA H100 80GB HBM3",
        "memory_mib": 81559,
        "uuid": "GPU-00000000-0000-0000-0000-000000000000",
        "pci_bus_id": "00000000:00:09.0",
        "arch": "sm_90",
    }


# --- The default runner -------------------------------------------------------------------


def test_it_returns_the_standard_output_of_a_tool():
    assert gpu.run_tool([sys.executable, "-c", "print('ok')"]) == "ok\n"


def test_it_lets_a_missing_tool_raise_file_not_found():
    with pytest.raises(FileNotFoundError):
        gpu.run_tool(["provisioning-gpu-test-no-such-tool"])


def test_it_turns_a_failing_tool_into_a_probe_error():
    script = "import sys; sys.stderr.write('no devices'); sys.exit(3)"

    with pytest.raises(ProbeError, match="exited with status 3: no devices"):
        gpu.run_tool([sys.executable, "-c", script])


def test_it_turns_a_hung_tool_into_a_probe_error(monkeypatch):
    monkeypatch.setattr(base, "TOOL_TIMEOUT_S", 0.2)  # read by run_tool where it is

    with pytest.raises(ProbeError, match="did not answer"):
        gpu.run_tool([sys.executable, "-c", "import time; time.sleep(5)"])


def test_it_runs_tools_without_a_shell(monkeypatch):
    seen = {}

    def fake_run(argv, **kwargs):
        seen.update(kwargs, argv=argv)
        return subprocess.CompletedProcess(argv, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    gpu.run_tool(["nvidia-smi", "-q", "-x"])

    assert seen["argv"] == ["nvidia-smi", "-q", "-x"]
    assert not seen.get("shell")
    assert seen["check"] is True
    assert seen["timeout"] == gpu.TOOL_TIMEOUT_S
