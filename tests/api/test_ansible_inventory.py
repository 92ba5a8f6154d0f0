"""The staff-only Ansible inventory, and the dynamic inventory script that reads it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token

from tests.conftest import require
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

REPO = Path(__file__).resolve().parent.parent.parent
SCRIPT = REPO / "ansible/inventory/portal.py"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb3i3CVdvlDrTYHqlX1ikXoqD9kQVq0nCsJZgChPWBO"


@pytest.fixture
def fleet(db):
    gpu = HostFactory(name="gpu1", fqdn="gpu1.debian.net", ssh_port=2222, host_keys=KEY + "\n")
    gpu.stacks.add(DriverStackFactory(name="cuda-12"))
    AcceleratorFactory(host=gpu, index=0)
    HostFactory(name="amd1", state="maintenance")
    HostFactory(name="old", state="retired")
    return gpu


def test_it_carries_the_device_map_the_hosts_agent_reported(client, fleet, staff):
    fleet.device_nodes = {"nvidia": {"0": ["/dev/nvidia0"]}}
    fleet.shared_nodes = {"nvidia": ["/dev/nvidiactl"]}
    fleet.save()
    client.force_login(staff)

    hostvars = client.get(reverse("api:ansible-inventory")).json()["_meta"]["hostvars"]

    assert hostvars["gpu1"]["porterbox_devices"] == {"nvidia": {"0": ["/dev/nvidia0"]}}
    assert hostvars["gpu1"]["porterbox_shared_nodes"] == {"nvidia": ["/dev/nvidiactl"]}
    # A host that never reported a map gets none: the role keeps the one on the host.
    assert "porterbox_devices" not in hostvars["amd1"]
    assert "porterbox_shared_nodes" not in hostvars["amd1"]


def test_it_answers_only_staff(client, fleet):
    url = reverse("api:ansible-inventory")
    assert client.get(url).status_code == 401
    client.force_login(UserFactory(debian_member_source="staff"))
    assert client.get(url).status_code == 403


def test_it_groups_hosts_by_vendor_stack_and_state_with_their_pinned_keys(client, fleet, staff):
    client.force_login(staff)
    inventory = client.get(reverse("api:ansible-inventory")).json()

    assert inventory["porterbox"]["hosts"] == ["amd1", "gpu1"]  # not the retired one
    assert inventory["nvidia"]["hosts"] == ["gpu1"]
    assert inventory["stack_cuda_12"]["hosts"] == ["gpu1"]
    assert inventory["state_maintenance"]["hosts"] == ["amd1"]
    assert inventory["_meta"]["hostvars"]["gpu1"] == {
        "ansible_host": "gpu1.debian.net",
        "ansible_port": 2222,
        "porterbox_state": "active",
        "porterbox_stack_names": ["cuda-12"],
        "porterbox_host_keys": [KEY],
    }


@pytest.mark.ansible
@pytest.mark.django_db(transaction=True)
def test_ansible_reads_the_portal_and_trusts_only_the_pinned_keys(live_server, tmp_path):
    inventory_cmd = shutil.which("ansible-inventory", path=os.path.dirname(sys.executable))
    require(inventory_cmd is not None, "ansible-inventory (pip install -r requirements-dev.txt)")
    gpu = HostFactory(name="gpu1", fqdn="gpu1.debian.net", ssh_port=2222, host_keys=KEY + "\n")
    AcceleratorFactory(host=gpu, index=0)
    staff = UserFactory(is_staff=True)
    known_hosts = tmp_path / "known_hosts"
    env = {
        **os.environ,
        "PORTAL_URL": live_server.url,
        "PORTAL_TOKEN": Token.objects.create(user=staff).key,
        "PORTAL_KNOWN_HOSTS": str(known_hosts),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path),
        "ANSIBLE_HOME": str(tmp_path),
    }

    done = subprocess.run(
        [inventory_cmd, "-i", str(SCRIPT), "--list"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed["nvidia"]["hosts"] == ["gpu1"]
    hostvars = listed["_meta"]["hostvars"]["gpu1"]
    assert "StrictHostKeyChecking=yes" in hostvars["ansible_ssh_common_args"]
    assert known_hosts.read_text() == f"[gpu1.debian.net]:2222 {KEY}\n"


def test_the_script_refuses_to_send_the_token_over_plain_http(tmp_path):
    env = {**os.environ, "PORTAL_URL": "http://porterbox.example.org", "PORTAL_TOKEN": "x"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 1
    assert "must be https://" in done.stderr
