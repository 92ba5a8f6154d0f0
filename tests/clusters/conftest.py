"""A real single-node Slurm (tests/clusters/slurm.py) whose login node is a loopback sshd with
its own host keys: the portal reaches it as it reaches a site's login node, over the pinned-key
transport, and runs Debian's sbatch, squeue, scancel and scontrol there.

One cluster and one sshd for the whole session (starting Slurm costs seconds); each test makes
its own rows, and its jobs have names unique to their portal ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from portal.clusters.models import Cluster, ClusterStack, Partition, ProjectAccount
from portal.ssh import reset_transport
from tests.clusters import slurm
from tests.conftest import require
from tests.factories import DriverStackFactory, PartnerMembershipFactory
from tests.provisioning import sshd as sshd_helper


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[slurm.Cluster]:
    require(not slurm.missing(), f"a single-node Slurm ({slurm.missing()})")
    cluster = slurm.start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def login_node(tmp_path_factory, slurm_cluster):
    require(sshd_helper.available(), "OpenSSH's sshd (package openssh-server)")
    base = tmp_path_factory.mktemp("login")
    server = sshd_helper.start(base / "sshd")
    (base / "portal").mkdir()
    key = sshd_helper.keygen(base / "portal" / "id_ed25519")
    server.authorize(key.with_suffix(".pub"))
    yield server, key
    server.stop()


@pytest.fixture
def portal_key(login_node, settings):
    settings.PORTAL_SSH_KEY_FILE = str(login_node[1])
    reset_transport()
    yield
    reset_transport()


@pytest.fixture
def cluster(db, slurm_cluster, login_node, portal_key) -> Cluster:
    server, _ = login_node
    return Cluster.objects.create(
        name="test",
        login_host=server.host,
        login_port=server.port,
        login_user=server.user,
        host_keys=server.known_keys,
        slurm_conf=str(slurm_cluster.conf),
        work_dir=str(slurm_cluster.dir / "work"),
    )


@pytest.fixture
def partition(cluster) -> Partition:
    return Partition.objects.create(cluster=cluster, name=slurm.PARTITION, gpus_per_node=2)


@pytest.fixture
def stack(cluster):
    stack = DriverStackFactory(name="cuda-12")
    # The "module line" of this cluster: a line that a real site's Lmod would be, and that
    # the job's log shows ran before its script.
    ClusterStack.objects.create(cluster=cluster, stack=stack, setup="echo stack cuda-12 ready")
    return stack


@pytest.fixture
def member(cluster):
    membership = PartnerMembershipFactory(
        project__slug="speech", project__max_walltime_hours=24, project__max_concurrent_devices=4
    )
    # Accounting is off on the test cluster, so any account name is taken as it is.
    ProjectAccount.objects.create(cluster=cluster, project=membership.project, account="speech")
    return membership


def until(
    check: Callable[[], object], *, timeout: float = 90, every: float = 0.5, then=None
) -> object:
    """Run passes (`then`) until check() is true; the last answer, or fail saying what."""
    deadline = time.monotonic() + timeout
    while True:
        if then is not None:
            then()
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {check}")
        time.sleep(every)
