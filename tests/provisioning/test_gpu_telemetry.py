"""Telemetry samples, read from real recorded tool output (tests/fixtures/gpu/SOURCES.md)."""

import csv
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from provisioning.gpu import (
    ProbeError,
    Process,
    Sample,
    amd,
    fpga,
    intel,
    nvidia,
    process_owner,
    sample_all,
)
from tests.provisioning.test_gpu_probes import MIB, FakeNVML, absent, fixture, h100_capture, no_nvml

H100_APPS = "nvidia-smi-csv/h100-80gb-hbm3_drv590.48.01_load_query-compute-apps.csv"


def h100_apps() -> list[dict]:
    """The rows of the recorded ``nvidia-smi --query-compute-apps=... --format=csv`` (H100)."""
    return list(csv.DictReader(fixture(H100_APPS).splitlines(), skipinitialspace=True))


def mib(text: str) -> int:
    return int(text.removesuffix(" MiB"))


class FakeTelemetryNVML(FakeNVML):
    """FakeNVML answering the telemetry queries from the same H100 capture (and its processes,
    captured on that machine at the same load)."""

    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, rows, apps, **kwargs):
        super().__init__(rows, **kwargs)
        self.apps = apps

    def nvmlDeviceGetMemoryInfo(self, row):
        return SimpleNamespace(
            total=mib(row["memory.total [MiB]"]) * MIB, used=mib(row["memory.used [MiB]"]) * MIB
        )

    def nvmlDeviceGetUtilizationRates(self, row):
        return SimpleNamespace(
            gpu=int(row["utilization.gpu [%]"].removesuffix(" %")),
            memory=int(row["utilization.memory [%]"].removesuffix(" %")),
        )

    def nvmlDeviceGetTemperature(self, row, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return int(row["temperature.gpu"])

    def nvmlDeviceGetPowerUsage(self, row):
        # NVML answers in milliwatts; nvidia-smi printed "631.95 W".
        return round(float(row["power.draw [W]"].removesuffix(" W")) * 1000)

    def nvmlDeviceGetComputeRunningProcesses(self, row):
        return [
            SimpleNamespace(
                pid=int(app["pid"]), usedGpuMemory=mib(app["used_gpu_memory [MiB]"]) * MIB
            )
            for app in self.apps
            if app["gpu_bus_id"] == row["pci.bus_id"]
        ]


def fake_proc(root: Path, uids: dict[int, int]) -> Path:
    """A /proc with a ``status`` file (the kernel's layout) for each pid."""
    for pid, uid in uids.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "status").write_text(
            f"Name:\tpython\nUmask:\t0022\nState:\tS (sleeping)\nPid:\t{pid}\n"
            f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
        )
    return root


NO_SUCH_UID = 4_000_000_123  # no passwd entry


class Recorded:
    """A runner answering (tool, subcommand) from fixtures; a tool not listed is not installed.
    `calls`: the command lines it ran."""

    def __init__(self, outputs: dict[tuple[str, str], str]) -> None:
        self.outputs = outputs
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        key = (argv[0], argv[1])
        if not any(tool == argv[0] for tool, _ in self.outputs):
            raise FileNotFoundError(argv[0])
        text = fixture(self.outputs[key])
        if argv[0] in fpga.TOOLS:
            Path(argv[argv.index("--output") + 1]).write_text(text)
            return ""
        return text


# --- NVIDIA through NVML ----------------------------------------------------------------------


def test_it_samples_a_gpu_through_nvml(tmp_path):
    proc = fake_proc(tmp_path, {11327: 0, 11328: NO_SUCH_UID})
    nvml = FakeTelemetryNVML(h100_capture(), h100_apps())

    samples = nvidia.sample(nvml, owner=partial(process_owner, proc_root=proc))

    assert samples == [
        Sample(
            vendor="nvidia",
            index=0,
            utilization_pct=100.0,
            memory_used_mib=19818,
            temperature_c=59.0,
            power_w=631.95,
            processes=[
                Process(pid=11327, user="root", used_memory_mib=2566),
                Process(pid=11328, user=str(NO_SUCH_UID), used_memory_mib=1542),
                # gpu_burn has no status file here: the process ended, its owner is unknown.
                Process(pid=11345, user=None, used_memory_mib=15690),
            ],
        )
    ]
    assert nvml.shut_down


def test_it_reads_what_nvml_does_not_support_as_none():
    nvml = FakeTelemetryNVML(h100_capture(), h100_apps())

    def not_supported(*args):
        raise pynvml.NVMLError_NotSupported()

    nvml.nvmlDeviceGetUtilizationRates = not_supported
    nvml.nvmlDeviceGetPowerUsage = not_supported
    nvml.nvmlDeviceGetTemperature = not_supported
    nvml.nvmlDeviceGetComputeRunningProcesses = not_supported

    [sample] = nvidia.sample(nvml)

    assert sample == Sample("nvidia", 0, None, 19818, None, None, [])


def test_it_reads_an_unknown_process_memory_as_none():
    nvml = FakeTelemetryNVML(h100_capture(), h100_apps())
    nvml.nvmlDeviceGetComputeRunningProcesses = lambda row: [
        SimpleNamespace(pid=11345, usedGpuMemory=None)  # what pynvml gives under WDDM
    ]

    [sample] = nvidia.sample(nvml)

    assert sample.processes == [Process(pid=11345, user=None, used_memory_mib=None)]


def test_it_samples_no_nvidia_gpu_without_library_or_driver():
    assert nvidia.sample(no_nvml()) == []


def test_it_reports_a_failing_nvml_query_as_a_probe_error():
    nvml = FakeTelemetryNVML(h100_capture(), h100_apps())

    def lost(row):
        raise pynvml.NVMLError_GpuIsLost()

    nvml.nvmlDeviceGetMemoryInfo = lost

    with pytest.raises(ProbeError, match="NVML query failed"):
        nvidia.sample(nvml)
    assert nvml.shut_down


# --- NVIDIA through nvidia-smi -q -x ----------------------------------------------------------


def test_it_parses_the_processes_of_a_recorded_tesla_t4():
    assert nvidia.parse_smi_xml_samples(fixture("nvidia-smi/tesla-t4.xml")) == [
        Sample(
            vendor="nvidia",
            index=0,
            utilization_pct=0.0,
            memory_used_mib=1032,
            temperature_c=40.0,
            power_w=26.78,
            processes=[
                Process(pid=675, user=None, used_memory_mib=22),
                Process(pid=5762, user=None, used_memory_mib=1005),
            ],
        )
    ]


def test_it_reads_the_na_utilization_of_a_mig_a100_as_none():
    # v12 DTD: power under <gpu_power_readings>; MIG mode reports gpu_util "N/A".
    assert nvidia.parse_smi_xml_samples(fixture("nvidia-smi/a100-sxm4-v12.xml")) == [
        Sample("nvidia", 0, None, 50, 27.0, 67.03, [])
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "nvidia-smi/dual_a5000-v13.xml",
            [
                Sample("nvidia", 0, 0.0, 22437, 13.0, 6.41, [Process(100477, None, 22430)]),
                Sample("nvidia", 1, 0.0, 17253, 15.0, 13.60, [Process(100477, None, 17246)]),
            ],
        ),
        (
            "nvidia-smi/pro-6000-maxq-blackwell-v13.xml",
            [Sample("nvidia", 0, 0.0, 65720, 24.0, 3.97, [Process(116860, None, 65710)])],
        ),
    ],
)
def test_it_parses_the_average_power_of_recorded_v13_xml(name, expected):
    assert nvidia.parse_smi_xml_samples(fixture(name)) == expected


def test_it_samples_through_nvidia_smi_without_pynvml(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    runner = Recorded({("nvidia-smi", "-q"): "nvidia-smi/tesla-t4.xml"})
    proc = fake_proc(tmp_path, {5762: 0})

    [sample] = nvidia.sample(runner=runner, owner=partial(process_owner, proc_root=proc))

    assert runner.calls == [nvidia.SMI_XML]
    assert sample.processes == [
        Process(pid=675, user=None, used_memory_mib=22),
        Process(pid=5762, user="root", used_memory_mib=1005),
    ]


def test_it_samples_no_nvidia_gpu_without_pynvml_or_nvidia_smi(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert nvidia.sample(runner=absent) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "printed nothing"),
        ("<nvidia_smi_log><gpu>", "not XML"),
        (
            "<nvidia_smi_log><gpu><temperature><gpu_temp>hot</gpu_temp></temperature></gpu>"
            "</nvidia_smi_log>",
            "is not 'N C'",
        ),
    ],
)
def test_it_rejects_unreadable_nvidia_smi_xml_samples(text, message):
    with pytest.raises(ProbeError, match=message):
        nvidia.parse_smi_xml_samples(text)


# --- Process owners ---------------------------------------------------------------------------


def test_it_names_the_owner_of_a_process_from_proc(tmp_path):
    proc = fake_proc(tmp_path, {1: 0, 2: NO_SUCH_UID})

    assert process_owner(1, proc_root=proc) == "root"
    assert process_owner(2, proc_root=proc) == str(NO_SUCH_UID)
    assert process_owner(3, proc_root=proc) is None


# --- AMD --------------------------------------------------------------------------------------


def test_it_parses_recorded_rocm_smi_samples_of_four_mi100():
    # VRAM Total Used Memory (B) 6750208 is 6.4 MiB on every card.
    assert amd.parse_rocm_smi_samples(fixture("rocm-smi/mi100_rocm602.json")) == [
        Sample("amd", 0, 0.0, 6, 53.0, 36.0, []),
        Sample("amd", 1, 0.0, 6, 55.0, 44.0, []),
        Sample("amd", 2, 0.0, 6, 54.0, 43.0, []),
        Sample("amd", 3, 0.0, 6, 51.0, 39.0, []),
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # 1572745216 B of VRAM used
        ("rocm-smi/rx6700xt_rocm612.json", Sample("amd", 0, 0.0, 1499, 45.0, 6.0, [])),
        # 10850304 B of VRAM used
        ("rocm-smi/vega-20-WKS-GL-XE.json", Sample("amd", 0, 0.0, 10, 36.0, 26.0, [])),
    ],
)
def test_it_parses_recorded_rocm_smi_samples_of_one_card(name, expected):
    assert amd.parse_rocm_smi_samples(fixture(name))[0] == expected


def test_it_reads_na_rocm_smi_values_as_none():
    # An MI300-class GPU has no edge sensor: the junction temperature stands in.
    text = (
        '{"card0": {"Temperature (Sensor edge) (C)": "N/A", '
        '"Temperature (Sensor junction) (C)": "41.0", "GPU use (%)": "N/A"}}'
    )

    assert amd.parse_rocm_smi_samples(text) == [Sample("amd", 0, None, None, 41.0, None, [])]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "printed nothing"),
        ('{"system": {}}', "no cardN entry"),
        ('{"card0": {"GPU use (%)": "busy"}}', "not a number"),
    ],
)
def test_it_rejects_unreadable_rocm_smi_samples(text, message):
    with pytest.raises(ProbeError, match=message):
        amd.parse_rocm_smi_samples(text)


def test_it_samples_amd_gpus_with_rocm_smi():
    runner = Recorded({("rocm-smi", "--showuse"): "rocm-smi/rx6700xt_rocm612.json"})

    assert amd.sample(runner) == [Sample("amd", 0, 0.0, 1499, 45.0, 6.0, [])]
    assert runner.calls == [amd.ROCM_SMI_SAMPLE]


def test_it_samples_no_amd_gpu_without_rocm_smi():
    assert amd.sample(absent) == []


# --- Intel ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # the last of 5 readings: "06:14:50.000,    0, 0.00, 14.61,    0"
        (
            "xpu-smi/xpumanager-doc_dump_d0_m0-1-2_linux.csv",
            Sample("intel", 0, 0.0, None, None, 14.61, []),
        ),
        # the last of 3 readings: "05:47:44.000, 0, 0.00, 51, 2050"
        (
            "xpu-smi/xpumanager-doc_dump_d0_m0-1-2_windows.csv",
            Sample("intel", 0, 0.0, None, None, 51.0, []),
        ),
    ],
)
def test_it_parses_the_last_reading_of_a_recorded_xpu_smi_dump(name, expected):
    # These dumps asked for metrics 0,1,2: no temperature nor memory columns, so None.
    assert intel.parse_xpu_smi_dump(fixture(name), 0) == expected


def test_it_reads_blank_xpu_smi_dump_cells_as_none():
    text = (
        "Timestamp, DeviceId, GPU Utilization (%), GPU Power (W), "
        "GPU Core Temperature (Celsius Degree), GPU Memory Used (MiB)\n"
        "06:14:46.000,    1, 12.50,    , 48.00, 2048.00\n"
    )

    assert intel.parse_xpu_smi_dump(text, 1) == Sample("intel", 1, 12.5, 2048, 48.0, None, [])


@pytest.mark.parametrize(
    ("text", "index", "message"),
    [
        ("", 0, "printed nothing"),
        ("Device ID,Device Name\n0,x\n", 0, "no DeviceId column"),
        (fixture("xpu-smi/xpumanager-doc_dump_d0_m0-1-2_linux.csv"), 1, "no reading of device 1"),
        ("Timestamp, DeviceId, GPU Power (W)\n06:14:46.000, 0, lots\n", 0, "power_w is 'lots'"),
    ],
)
def test_it_rejects_unreadable_xpu_smi_dumps(text, index, message):
    with pytest.raises(ProbeError, match=message):
        intel.parse_xpu_smi_dump(text, index)


def test_it_dumps_each_intel_gpu_that_discovery_lists():
    runner = Recorded(
        {
            ("xpu-smi", "discovery"): "xpu-smi/xpumanager-doc_discovery-j_linux_0x020a.json",
            ("xpu-smi", "dump"): "xpu-smi/xpumanager-doc_dump_d0_m0-1-2_linux.csv",
        }
    )

    assert intel.sample(runner) == [Sample("intel", 0, 0.0, None, None, 14.61, [])]
    assert runner.calls == [
        intel.XPU_SMI_DISCOVERY,
        ["xpu-smi", "dump", "-d", "0", "-m", "0,1,3,18", "-n", "1"],
    ]


def test_it_samples_no_intel_gpu_without_xpu_smi():
    assert intel.sample(absent) == []


# --- FPGA -------------------------------------------------------------------------------------


def test_it_samples_each_card_of_a_recorded_xrt_report_without_measurements():
    text = fixture("xrt-smi/ryzen-ai-doc_examine_json_npu.json")

    assert fpga.parse_xbutil_examine_samples(text) == [Sample("fpga", 0, None, None, None, None)]


def test_it_samples_no_fpga_without_xbutil_or_xrt_smi():
    assert fpga.sample(absent) == []


# --- All vendors ------------------------------------------------------------------------------


def test_it_samples_every_vendor(tmp_path):
    runner = Recorded(
        {
            ("rocm-smi", "--showuse"): "rocm-smi/vega-20-WKS-GL-XE.json",
            ("xpu-smi", "discovery"): "xpu-smi/xpumanager-doc_discovery-j_windows_flex170.json",
            ("xpu-smi", "dump"): "xpu-smi/xpumanager-doc_dump_d0_m0-1-2_windows.csv",
            ("xbutil", "examine"): "xrt-smi/ryzen-ai-doc_examine_json_npu.json",
        }
    )
    nvml = FakeTelemetryNVML(h100_capture(), h100_apps())
    owner = partial(process_owner, proc_root=fake_proc(tmp_path, {}))

    samples = sample_all(runner, nvml=nvml, owner=owner)

    assert [(s.vendor, s.index, s.power_w) for s in samples] == [
        ("nvidia", 0, 631.95),
        ("amd", 0, 26.0),
        ("intel", 0, 51.0),
        ("fpga", 0, None),
    ]
    assert samples[0].as_dict()["processes"][2] == {
        "pid": 11345,
        "user": None,
        "used_memory_mib": 15690,
    }


def test_it_samples_nothing_on_a_host_without_any_tool():
    assert sample_all(absent, nvml=no_nvml()) == []


def test_it_lets_a_failing_tool_fail_the_whole_sample():
    def broken_xpu_smi(argv):
        if argv[0] == "xpu-smi":
            raise ProbeError("xpu-smi exited with status 1: device not found")
        raise FileNotFoundError(argv[0])

    with pytest.raises(ProbeError, match="xpu-smi exited"):
        sample_all(broken_xpu_smi, nvml=no_nvml())
