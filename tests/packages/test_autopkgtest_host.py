"""Package test runs on a real (disposable) host: job-start with autopkgtest, through the real
agent over SSH and the portal's client, on a stack whose chroot is a real Debian (bookworm
minbase with autopkgtest and dpkg-dev, tests/packages/chroot.py), with real source packages
built by dpkg-source (tests/packages/builder.py).

autopkgtest runs as the job's account in the job's schroot session with the null backend: a
test sees exactly its allocated device, a failing test gives 4, and a package whose only test
needs root gives 8 (skipped: the account is not root, and no test is left). What autopkgtest
writes (log, summary) comes back in the job's output.
"""

import hashlib
import io
import subprocess
import tarfile

import pytest

from provisioning.client import AgentClient, DeviceRef, ssh_runner
from provisioning.transport import Target, Transport
from tests.conftest import require
from tests.helpers import wait_for
from tests.packages import chroot
from tests.packages.builder import build_source
from tests.provisioning.sshd import keygen
from tests.testhost import TestHost

pytestmark = [pytest.mark.host, pytest.mark.once]

ACCOUNT = "pj-debian-ci"
STACK, CHROOT = "bookworm", "porterbox-bookworm"
CONFIG = {
    "group": "porterbox-users",
    "devices": {"nvidia": {str(i): [f"/dev/nvidia{i}"] for i in range(4)}},
    "shared_nodes": {"nvidia": ["/dev/nvidiactl"]},
    "job_min_walltime_s": 2,
}
# The test of the device package: its allocated node opens, the others do not, and CUDA sees
# its index. Quiet on stderr, which autopkgtest counts as a failure.
SEES_ITS_DEVICE = """#!/bin/sh
set -e
test "$CUDA_VISIBLE_DEVICES" = 1 || { echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"; exit 1; }
cat /dev/nvidia1 >/dev/null
for other in 0 2 3; do
    if cat /dev/nvidia$other >/dev/null 2>&1; then echo "opened /dev/nvidia$other"; exit 1; fi
done
echo "sees /dev/nvidia1 only"
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    lacking = TestHost.missing() + chroot.missing()
    require(not lacking, f"{', '.join(lacking)} (for a test host with a Debian stack)")
    return tmp_path_factory.mktemp("autopkgtest-host")


@pytest.fixture(scope="module")
def portal_key(base):
    return keygen(base / "portal")


@pytest.fixture(scope="module")
def host(base, portal_key):
    tarball = chroot.debian_tarball()
    test_host = TestHost().start(base / "host")
    try:
        chroot.unpack(tarball, test_host.path(f"/srv/chroots/{CHROOT}"))
        test_host.add_stack_tree(STACK, CHROOT)
        test_host.install_agent(CONFIG)
        test_host.authorize_portal(portal_key.with_suffix(".pub").read_text())
        yield test_host
    finally:
        test_host.stop()


@pytest.fixture(scope="module")
def client(host, portal_key):
    target = Target("127.0.0.1", host.port, "porterbox", host.host_keys)
    with Transport(portal_key, connect_timeout=5, command_timeout=60, retries=0) as transport:
        yield AgentClient(ssh_runner(transport, target))


def package_archive(directory, name, tests) -> tuple[str, bytes]:
    """Build the source package; its .dsc's name and a .tar.gz of the .dsc and its files."""
    dsc = build_source(directory, name, "1.0-1", tests=tests, fmt="3.0 (quilt)")
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=path.name)
    return dsc.name, data.getvalue()


def run_tests(client, job, directory, name, tests, only=()):
    """Start the package's test run on nvidia #1; its end, its log and its output's files."""
    dsc, archive = package_archive(directory, name, tests)
    started = client.job_start(
        job=job, account=ACCOUNT, stack=STACK, devices=[DeviceRef("nvidia", 1)], script="",
        env={}, walltime_s=600, grace_s=1, input={"archive_bytes": len(archive)},
        archive=io.BytesIO(archive), autopkgtest={"dsc": dsc, "tests": list(only)},
    )  # fmt: skip
    assert started.started
    try:

        def ended():
            status = client.job_status(job=job)
            return None if status.running else status

        status = wait_for(ended, 300, interval=0.5, what=f"{job} to end")
        log = client.job_logs(job=job, offset=0, limit=1024 * 1024).data
        sink = io.BytesIO()
        client.job_output(job=job, limit=64 * 1024 * 1024, sink=sink)
        sink.seek(0)
        with tarfile.open(fileobj=sink, mode="r:gz") as output:
            files = {
                m.name: output.extractfile(m).read().decode()
                for m in output.getmembers()
                if m.isfile()
            }
    finally:
        client.job_stop(job=job, grace_s=0)
        client.job_clean(job=job)
    return status, log, files


def test_the_inventory_reports_the_digest_of_the_stacks_packages(client, host):
    # Computed here by dpkg itself, from the same status file.
    listing = subprocess.run(
        ["dpkg-query", f"--admindir={host.path(f'/srv/chroots/{CHROOT}/var/lib/dpkg')}", "-W",
         "-f", "${db:Status-Status} ${Package} ${Version}\n"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = sorted(
        line.split(" ", 1)[1] for line in listing.splitlines() if line.split()[0] == "installed"
    )
    assert any(line.startswith("autopkgtest ") for line in lines)

    [stack] = client.inventory().stacks

    assert (stack.name, stack.present) == (STACK, True)
    assert stack.digest == hashlib.sha256("".join(f"{x}\n" for x in lines).encode()).hexdigest()


def test_a_test_that_sees_only_its_device_passes(client, tmp_path):
    tests = [
        {"name": "devices", "script": SEES_ITS_DEVICE},
        {"name": "not-asked-for", "script": "#!/bin/sh\nexit 1\n"},
    ]
    status, log, files = run_tests(client, "j101", tmp_path, "seesdevice", tests, ["devices"])

    assert (status.state, status.exit_status) == ("succeeded", 0), log
    summary = files["output/autopkgtest/summary"]
    assert summary.split() == ["devices", "PASS"], summary  # the other test was not run
    assert "sees /dev/nvidia1 only" in files["output/autopkgtest/log"]
    # autopkgtest's output, its own lines (teed to /dev/stderr) included, reaches the job's log.
    assert "sees /dev/nvidia1 only" in log
    assert "autopkgtest [" in log and "Permission denied" not in log, log


def test_a_failing_test_gives_4(client, tmp_path):
    tests = [{"name": "breaks", "script": "#!/bin/sh\necho broken\nexit 1\n"}]
    status, log, files = run_tests(client, "j102", tmp_path, "breaks", tests)

    assert (status.state, status.exit_status) == ("failed", 4), log
    assert status.reason == "autopkgtest exited with status 4"
    assert files["output/autopkgtest/summary"].split()[:2] == ["breaks", "FAIL"]


def test_a_package_whose_only_test_needs_root_gives_8(client, tmp_path):
    tests = [{"name": "asroot", "restrictions": "needs-root"}]
    status, log, files = run_tests(client, "j103", tmp_path, "needsroot", tests)

    # Skipped (the account is not root on the testbed), and no test left: 8, not 2.
    assert (status.state, status.exit_status) == ("failed", 8), log
    summary = files["output/autopkgtest/summary"]
    assert summary.split()[:2] == ["asroot", "SKIP"], summary
    assert "needs-root" in summary
