"""Registering a host: the real agent's inventory, through JSON, into the portal's devices.

The host here is this machine in single-machine mode: the portal runs the agent (the same
module, under a python without pynvml, as on a host) with its vendor tools replaced by ones that
print what real tools printed (tests/fixtures/gpu): an H100 for nvidia-smi, an MI210 for amd-smi.
"""

import json
import shlex
import shutil
import sys
from datetime import UTC, datetime

import pytest
import time_machine
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from portal.booking.models import Reservation
from portal.inventory.models import DeviceSample, Host
from portal.operations import services, telemetry
from portal.operations.registration import RegistrationError, host_sync_inventory
from portal.packages import runs
from provisioning.agent import protocol, system
from provisioning.client import Telemetry
from tests.factories import DriverStackFactory, HostFactory, UserFactory
from tests.provisioning.test_gpu_probes import FAKE_NVIDIA_SMI, FIXTURES, H100_CSV

REPO = FIXTURES.parent.parent.parent
NOW = datetime(2026, 11, 23, 9, 7, tzinfo=UTC)
DEVICES = {"amd": {"0": ["/dev/dri/renderD128"]}, "nvidia": {"0": ["/dev/nvidia0"]}}
SHARED = {"amd": ["/dev/kfd"], "nvidia": ["/dev/nvidiactl", "/dev/nvidia-uvm"]}
# The agent as the launcher runs it, but with the tools of tools_dir on its PATH.
AGENT = """\
import sys
sys.modules["pynvml"] = None  # the host's python3 has no NVML binding
sys.path.insert(0, {repo!r})
from provisioning.agent import hostctl, system
system.COMMAND_ENV["PATH"] = {tools!r}
sys.exit(hostctl.main(["--ssh", "--config", {config!r}]))
"""


def tool(directory, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.fixture
def agent_config(tmp_path):
    config = tmp_path / "hostctl.json"
    config.write_text(json.dumps({"stacks": {}, "devices": DEVICES, "shared_nodes": SHARED}))
    return config


@pytest.fixture
def mixed_host(db, tmp_path, settings, agent_config):
    """A host whose agent finds an NVIDIA H100 #0 and an AMD MI210 #0."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake_smi = [sys.executable, str(FAKE_NVIDIA_SMI), str(FIXTURES / H100_CSV), "--"]
    tool(tools, "nvidia-smi", f'exec {shlex.join(fake_smi)} "$@"')
    mi210 = shlex.join([shutil.which("cat"), str(FIXTURES / "amd-smi/mi210_static_json.json")])
    tool(tools, "amd-smi", f'[ "$*" = "static --json" ] && exec {mi210}; exit 3')
    program = AGENT.format(repo=str(REPO), tools=str(tools), config=str(agent_config))
    settings.PORTAL_LOCAL_AGENT = [sys.executable, "-c", program]
    return HostFactory(name="mixed", connection=Host.Connection.LOCAL)


def test_it_registers_nvidia_0_and_amd_0_as_two_devices(mixed_host):
    result = host_sync_inventory(mixed_host)

    assert sorted(result.created) == [("amd", 0), ("nvidia", 0)]
    found = mixed_host.accelerators.order_by("vendor")
    assert [(a.vendor, a.index, a.model, a.memory_mib, a.arch) for a in found] == [
        ("amd", 0, "AMD Instinct MI210", 65520, "gfx90a"),
        ("nvidia", 0, "NVIDIA H100 80GB HBM3", 81559, "sm_90"),
    ]
    # Again: the same two devices, nothing new, nothing retired.
    again = host_sync_inventory(mixed_host)
    assert (again.created, again.updated, again.retired) == ([], [], [])
    assert mixed_host.accelerators.count() == 2


def test_it_keeps_the_agents_device_map(mixed_host):
    host_sync_inventory(mixed_host)

    mixed_host.refresh_from_db()
    assert (mixed_host.device_nodes, mixed_host.shared_nodes) == (DEVICES, SHARED)


def test_it_refuses_a_host_that_reports_one_device_twice(mixed_host, settings, agent_config):
    answer = json.dumps(
        {
            "ok": True,
            "devices": [{"vendor": "amd", "index": 0, "model": "X"}] * 2,
            "stacks": [],
        }
    )
    settings.PORTAL_LOCAL_AGENT = [sys.executable, "-c", f"print({answer!r})"]

    with pytest.raises(RegistrationError, match="reports amd device #0 twice"):
        host_sync_inventory(mixed_host)
    assert mixed_host.accelerators.count() == 0


@time_machine.travel(NOW, tick=False)
def test_booking_grant_and_readings_find_the_device_of_its_vendor(mixed_host, agent_config):
    host_sync_inventory(mixed_host)
    # A stack both vendors serve (this host has no schroot, so its agent reports none).
    mixed_host.stacks.add(DriverStackFactory(name="opencl", hwspecs=["opencl"]))
    amd = mixed_host.accelerators.get(vendor="amd")
    api = APIClient()
    user = UserFactory(username="alice", debian_member_source="salsa")
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    body = {"host": "mixed", "stack": "opencl", "start": "2026-11-23T09:00:00Z"}
    body["end"] = "2026-11-23T10:00:00Z"

    # Booking: an index that is two devices is refused with the way out; vendor and index books.
    ambiguous = api.post("/api/reservations/", {**body, "devices": [0]}, format="json")
    assert ambiguous.status_code == 400
    assert "two accelerators #0 (amd, nvidia)" in ambiguous.json()["errors"]["devices"][0]
    booked = api.post(
        "/api/reservations/", {**body, "devices": [{"vendor": "amd", "index": 0}]}, format="json"
    )
    assert booked.status_code == 201, booked.json()
    reservation = Reservation.objects.get(pk=booked.json()["id"])
    assert [a.accelerator for a in reservation.allocations.all()] == [amd]

    # The booking page names each #0 by its vendor, and books the one chosen.
    client = Client()
    client.force_login(user)
    page = client.get("/hosts/mixed/book/").content.decode()
    assert 'value="amd:0"' in page and 'value="nvidia:0"' in page
    by_page = client.post(
        "/hosts/mixed/book/",
        {"accelerators": ["nvidia:0"], "stack": "opencl", "start": "2026-11-23T09:15",
         "end": "2026-11-23T10:00"},
    )  # fmt: skip
    assert by_page.status_code == 302
    nvidia = mixed_host.accelerators.get(vendor="nvidia")
    assert [a.accelerator for a in Reservation.objects.latest("pk").allocations.all()] == [nvidia]
    Reservation.objects.latest("pk").delete()

    # Grant: the loop asks for AMD #0, and the agent's map gives that card's nodes.
    [due] = services.due_reservations(mixed_host, NOW)
    devices = services.wanted(due).devices
    assert [(d.vendor, d.index) for d in devices] == [("amd", 0)]
    config = protocol.load_config(str(agent_config))
    refs = protocol.check_devices([d.as_dict() for d in devices], config)
    nodes = system.device_nodes(config, refs)  # and AMD's shared nodes that exist here
    assert [n for n in nodes if n not in SHARED["amd"]] == ["/dev/dri/renderD128"]

    # Readings: each vendor's #0 is stored on its own device.
    samples = [
        {"vendor": v, "index": 0, "utilization_pct": u, "memory_used_mib": 1, "processes": []}
        for v, u in (("nvidia", 90.0), ("amd", 10.0))
    ]
    telemetry.record(mixed_host, Telemetry.parse({"samples": samples, "errors": []}), NOW)
    stored = {r.accelerator.vendor: r.utilization_pct for r in DeviceSample.objects.all()}
    assert stored == {"nvidia": 90.0, "amd": 10.0}


def answering_stacks(settings, *stacks):
    """The host's agent answers an inventory of no devices and these stacks."""
    answer = json.dumps({"ok": True, "devices": [], "stacks": list(stacks)})
    settings.PORTAL_LOCAL_AGENT = [sys.executable, "-c", f"print({answer!r})"]


def bookworm(digest):
    return {"name": "bookworm", "chroot": "porterbox-bookworm", "present": True, "digest": digest}


def test_a_stack_whose_digest_changed_is_tested_again(mixed_host, settings, monkeypatch):
    stack = DriverStackFactory(name="bookworm")
    # The one stand-in: queueing the runs is portal.packages' work, tested there; here only
    # that the sync asks for it, with which stack, and when.
    refreshed = []
    monkeypatch.setattr(runs, "stack_refreshed", refreshed.append)

    answering_stacks(settings, bookworm("a" * 64))
    first = host_sync_inventory(mixed_host)
    answering_stacks(settings, bookworm("a" * 64))
    same = host_sync_inventory(mixed_host)
    assert refreshed == [] and first.refreshed == same.refreshed == []  # first seen: no refresh
    mixed_host.refresh_from_db()
    assert mixed_host.stack_digests == {"bookworm": "a" * 64}

    answering_stacks(settings, bookworm("b" * 64))
    changed = host_sync_inventory(mixed_host)

    assert refreshed == [stack]
    assert changed.refreshed == ["bookworm"]
    mixed_host.refresh_from_db()
    assert mixed_host.stack_digests == {"bookworm": "b" * 64}


def test_a_refresh_whose_runs_could_not_be_queued_is_retried(mixed_host, settings, monkeypatch):
    stack = DriverStackFactory(name="bookworm")
    mixed_host.stack_digests = {"bookworm": "a" * 64}
    mixed_host.save()

    def broken(stack):
        raise RuntimeError("the queue is away")

    monkeypatch.setattr(runs, "stack_refreshed", broken)
    answering_stacks(settings, bookworm("b" * 64))
    with pytest.raises(RuntimeError):
        host_sync_inventory(mixed_host)
    mixed_host.refresh_from_db()
    assert mixed_host.stack_digests == {"bookworm": "a" * 64}  # the next inventory tries again

    refreshed = []
    monkeypatch.setattr(runs, "stack_refreshed", refreshed.append)
    host_sync_inventory(mixed_host)
    assert refreshed == [stack]
    mixed_host.refresh_from_db()
    assert mixed_host.stack_digests == {"bookworm": "b" * 64}


def test_a_chroot_without_dpkg_status_refreshes_nothing(mixed_host, settings, monkeypatch):
    DriverStackFactory(name="bookworm")
    mixed_host.stack_digests = {"bookworm": "a" * 64}
    mixed_host.save()
    refreshed = []
    monkeypatch.setattr(runs, "stack_refreshed", refreshed.append)

    answering_stacks(settings, bookworm(""))
    host_sync_inventory(mixed_host)

    assert refreshed == []
    mixed_host.refresh_from_db()
    assert mixed_host.stack_digests == {"bookworm": ""}
