"""The agent's streamed bodies through the local runner (a portal on the GPU host itself): the
real agent as a subprocess, a request line then raw bytes, an answer line then raw bytes."""

import io
import json
import os
import sys
import tarfile

import pytest

from provisioning.client import AgentClient, AgentError, DeviceRef, local_runner

CONFIG = {
    "stacks": {"bookworm": {"chroot": "porterbox-bookworm"}},
    "devices": {"nvidia": {"0": ["/dev/nvidia0"]}},
    "shared_nodes": {"nvidia": []},
}


@pytest.fixture
def client(tmp_path):
    path = tmp_path / "hostctl.json"
    path.write_text(json.dumps({**CONFIG, "state_dir": str(tmp_path / "state")}))
    argv = [sys.executable, "-m", "provisioning.agent.hostctl", "--ssh", "--config", str(path)]
    return AgentClient(local_runner(argv))


def start(client, archive: io.BytesIO, size: int):
    return client.job_start(
        job="j1", account="pj-x", stack="bookworm", devices=[DeviceRef("nvidia", 0)],
        script="true\n", env={}, walltime_s=3600, grace_s=0, input={"archive_bytes": size},
        archive=archive,
    )  # fmt: skip


def test_it_reads_and_checks_an_archive_far_over_the_request_cap(client, tmp_path):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        info = tarfile.TarInfo("data.bin")
        info.size = 3 * 1024 * 1024
        archive.addfile(info, io.BytesIO(os.urandom(info.size)))
        archive.addfile(tarfile.TarInfo("../evil"), io.BytesIO(b""))  # read to its last member
    size = len(data.getvalue())
    assert size > 3 * 1024 * 1024

    with pytest.raises(AgentError) as refused:
        start(client, io.BytesIO(data.getvalue()), size)

    # Checked through to the member at its end, not refused for its size; nothing is kept.
    assert refused.value.code == "bad_input"
    assert refused.value.message.startswith("input.archive: member '../evil'")
    assert os.listdir(tmp_path / "state" / "spool") == []


def test_it_refuses_an_archive_cut_short(client, tmp_path):
    with pytest.raises(AgentError) as refused:
        start(client, io.BytesIO(b"\x1f\x8b" * 100), 1000)
    assert refused.value.code == "bad_input"
    assert "ended after 200 of 1000 bytes" in refused.value.message


def test_it_answers_an_unknown_jobs_output_with_no_bytes(client):
    sink = io.BytesIO()
    answer = client.job_output(job="j1", limit=1024, sink=sink)
    assert (answer.bytes, answer.too_large, sink.getvalue()) == (0, False, b"")
