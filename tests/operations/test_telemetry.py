"""What the portal keeps of a host's telemetry answer: the schema, nothing else."""

import json
from functools import partial

import pytest
from django.utils import timezone

from portal.inventory.models import DeviceSample
from portal.operations.telemetry import record
from provisioning import gpu
from provisioning.agent import host as agent_host
from provisioning.agent import hostctl, protocol
from provisioning.client import AgentError, Telemetry
from tests.factories import AcceleratorFactory, HostFactory
from tests.provisioning.test_gpu_probes import h100_capture
from tests.provisioning.test_gpu_telemetry import (
    NO_SUCH_UID,
    FakeTelemetryNVML,
    Recorded,
    fake_proc,
    h100_apps,
)


def test_the_agents_reading_of_every_vendor_is_stored_per_device(db, monkeypatch, tmp_path):
    """The agent's telemetry verb on recorded outputs of the four vendors' tools (NVML as
    captured on an H100, rocm-smi, xpu-smi, xbutil), through JSON, into the portal."""
    runner = Recorded(
        {
            ("rocm-smi", "--showuse"): "rocm-smi/vega-20-WKS-GL-XE.json",
            ("xpu-smi", "discovery"): "xpu-smi/xpumanager-doc_discovery-j_windows_flex170.json",
            ("xpu-smi", "dump"): "xpu-smi/xpumanager-doc_dump_d0_m0-1-2_windows.csv",
            ("xbutil", "examine"): "xrt-smi/ryzen-ai-doc_examine_json_npu.json",
        }
    )
    pids = [int(app["pid"]) for app in h100_apps()]
    owners = fake_proc(tmp_path, {pids[0]: 0, pids[1]: NO_SUCH_UID})  # root, and a person
    nvml = FakeTelemetryNVML(h100_capture(), h100_apps())
    monkeypatch.setattr(agent_host, "probe_runner", runner)
    monkeypatch.setattr(
        agent_host,
        "sample_each",
        partial(gpu.sample_each, nvml=nvml, owner=partial(gpu.process_owner, proc_root=owners)),
    )
    config = protocol.parse_config({"stacks": {}, "devices": {}, "shared_nodes": {}})
    answer = json.loads(json.dumps(hostctl.handle(b'{"verb": "telemetry"}', config)))
    assert answer["ok"] is True and answer["errors"] == []

    # One host per vendor (the inventory numbers a host's devices once, across vendors).
    now = timezone.now()
    for vendor in ("nvidia", "amd", "intel", "fpga"):
        host = HostFactory(name=f"{vendor}-host")
        AcceleratorFactory(host=host, vendor=vendor, index=0)
        reading = record(host, Telemetry.parse(answer), now)
        host.refresh_from_db()
        assert host.telemetry == reading and host.telemetry_at == now

    rows = {r.accelerator.vendor: r for r in DeviceSample.objects.select_related("accelerator")}
    assert {v: rows[v].power_w for v in rows} == {
        "nvidia": 631.95,
        "amd": 26.0,
        "intel": 51.0,
        "fpga": None,  # the recorded xbutil report has no measurement
    }
    assert rows["nvidia"].utilization_pct is not None and rows["nvidia"].temperature_c
    processes = reading["samples"][0]["processes"]
    assert [(p["user"], p["system"]) for p in processes[:3]] == [
        ("root", True),
        (str(NO_SUCH_UID), False),
        (None, False),  # ended before its owner was read
    ]


def test_a_hosts_answer_is_read_like_any_input():
    answer = {
        "samples": [
            {
                "vendor": "nvidia",
                "index": 0,
                "utilization_pct": 37.5,
                "memory_used_mib": 1024,
                "temperature_c": float("nan"),  # never stored as a reading
                "power_w": -3,  # no negative power
                "processes": [
                    {"pid": 42, "user": "alice", "used_memory_mib": 100, "system": False},
                    {"pid": True, "user": "bob"},  # a bool is not a pid
                    {"pid": 43, "user": ["root"], "system": "yes"},  # neither is a list a user
                    "rm -rf /",
                ],
                "extra": "dropped",
            },
            {"vendor": "amd", "index": "1"},  # an index must be a number
            {"index": 2},  # and a sample needs its vendor
        ],
        "errors": [{"vendor": "intel", "message": "xpu-smi exited with status 1"}, "junk"],
    }
    assert Telemetry.parse(answer).as_dict() == {
        "samples": [
            {
                "vendor": "nvidia",
                "index": 0,
                "utilization_pct": 37.5,
                "memory_used_mib": 1024,
                "temperature_c": None,
                "power_w": None,
                "processes": [
                    {"pid": 42, "user": "alice", "used_memory_mib": 100, "system": False},
                    {"pid": 43, "user": None, "used_memory_mib": None, "system": False},
                ],
            }
        ],
        "errors": [{"vendor": "intel", "message": "xpu-smi exited with status 1"}],
    }
    assert Telemetry.parse({"samples": [], "errors": []}).as_dict() == {"samples": [], "errors": []}


def test_an_answer_without_its_lists_is_a_bad_answer():
    with pytest.raises(AgentError) as missing:
        Telemetry.parse({"samples": []})
    assert (missing.value.code, str(missing.value)) == (
        "bad_answer",
        "bad_answer: telemetry.errors: missing",
    )
    with pytest.raises(AgentError) as wrong:
        Telemetry.parse({"samples": {"nvidia": 1}, "errors": []})
    assert wrong.value.message == "telemetry.samples: a list was expected, not dict"
