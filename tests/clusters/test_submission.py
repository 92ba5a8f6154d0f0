"""Choosing a cluster partition at submission (API and page): what is refused, and what is
bound; no Slurm is needed for these."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from portal.clusters.models import Cluster, ClusterJob, ClusterStack, Partition, ProjectAccount
from portal.jobs import scheduler
from portal.jobs.models import Job
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    PartnerMembershipFactory,
)

pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture
def cluster(db):
    return Cluster.objects.create(
        name="hpc", login_host="login.example.org", login_user="porterbox",
        host_keys="ssh-ed25519 AAAA", work_dir="/scratch/porterbox",
    )  # fmt: skip


@pytest.fixture
def stack(cluster):
    stack = DriverStackFactory(name="cuda-12")
    ClusterStack.objects.create(cluster=cluster, stack=stack, setup="module load cuda/12.2")
    return stack


@pytest.fixture
def partition(cluster):
    return Partition.objects.create(cluster=cluster, name="a100", gpus_per_node=4)


@pytest.fixture
def member(cluster):
    membership = PartnerMembershipFactory(project__slug="speech", project__max_walltime_hours=24)
    ProjectAccount.objects.create(cluster=cluster, project=membership.project, account="speech")
    return membership


def post(user, **fields):
    client = APIClient()
    client.force_authenticate(user)
    body = {
        "project": "speech", "name": "asr", "script": "python3 train.py\n", "stack": "cuda-12",
        "count": 2, "walltime": 4, "code_licence": "Apache-2.0", "data_licence": "CC-BY-4.0",
        "model_freedom": "free", "partition": "hpc/a100", **fields,
    }  # fmt: skip
    return client.post("/api/jobs/", body, format="json")


def test_it_binds_a_job_to_the_partition_and_the_fleet_leaves_it(member, partition, stack):
    # The fleet offers the stack too, with a free device: the job still goes to the cluster.
    AcceleratorFactory(host=HostFactory(), index=0).host.stacks.add(stack)
    response = post(member.user, count=1)

    assert response.status_code == 201, response.json()
    job = Job.objects.get()
    assert ClusterJob.objects.get(job=job).partition == partition
    assert scheduler.schedule().placed == {}
    assert Job.objects.get().state == Job.State.QUEUED
    # The answer, the job's API answer and its page say where it runs.
    assert response.json()["partition"] == "hpc/a100"
    client = APIClient()
    client.force_authenticate(member.user)
    assert client.get(f"/api/jobs/{job.pk}/").json()["partition"] == "hpc/a100"
    assert [j["partition"] for j in client.get("/api/jobs/").json()["results"]] == ["hpc/a100"]
    client.force_login(member.user)
    assert (
        "<dt>Runs on</dt><dd>Slurm: hpc/a100</dd>"
        in client.get(f"/jobs/{job.pk}/").content.decode()
    )


def test_a_fleet_job_says_no_partition(member, partition, stack):
    AcceleratorFactory(host=HostFactory(), index=0).host.stacks.add(stack)
    response = post(member.user, partition="", count=1)

    assert response.status_code == 201, response.json()
    assert response.json()["partition"] == ""


def test_it_binds_every_task_of_an_array(member, partition, stack):
    response = post(member.user, array=3)

    assert response.status_code == 201, response.json()
    assert ClusterJob.objects.filter(partition=partition).count() == 3
    # Written whole at submission (the binding needs every task): nothing left for a pass.
    assert (response.json()["array_size"], response.json()["array_pending"]) == (3, 0)
    assert sorted(Job.objects.values_list("array_index", flat=True)) == [0, 1, 2]


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"partition": "hpc/nope"}, "bad_partition", "partition"),
        ({"partition": "nonsense"}, "bad_partition", "partition"),
        ({"count": 5}, "bad_count", "count"),
        ({"env": {"SLURM_HINT": "nomultithread"}}, "bad_env", "env"),
    ],
)
def test_it_refuses_what_the_partition_cannot_run(member, partition, stack, fields, code, field):
    response = post(member.user, **fields)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert field in response.json()["errors"]
    assert not Job.objects.exists()


def test_a_project_without_a_slurm_account_there_is_refused(member, partition, stack):
    ProjectAccount.objects.all().delete()

    response = post(member.user)

    assert (response.status_code, response.json()["code"]) == (400, "no_account")
    assert not Job.objects.exists()


def test_a_stack_the_cluster_does_not_offer_is_refused(member, partition, stack):
    DriverStackFactory(name="rocm-6")

    response = post(member.user, stack="rocm-6")

    assert (response.status_code, response.json()["code"]) == (400, "stack_missing")


def test_a_disabled_cluster_takes_no_job(member, partition, stack, cluster):
    Cluster.objects.filter(pk=cluster.pk).update(enabled=False)

    assert post(member.user).json()["code"] == "bad_partition"


def test_the_page_offers_the_partitions_of_the_users_projects(client, member, partition, stack):
    client.force_login(member.user)

    page = client.get("/jobs/submit/")

    assert page.status_code == 200
    assert b'value="hpc/a100"' in page.content


def test_the_page_shows_no_choice_where_no_cluster_takes_the_users_jobs(client, member, stack):
    ProjectAccount.objects.all().delete()
    client.force_login(member.user)

    page = client.get("/jobs/submit/")

    assert b'type="hidden" name="partition"' in page.content


def test_the_clusters_page_says_whether_a_cluster_answers(client, member, partition):
    Cluster.objects.update(reachable=False, last_error="secret detail")
    client.force_login(member.user)

    page = client.get("/clusters/")

    assert page.status_code == 200
    assert b"hpc/a100" in page.content and b"Cannot be reached" in page.content
    assert b"secret detail" not in page.content  # staff only
