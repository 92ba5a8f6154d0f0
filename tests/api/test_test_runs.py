"""The test runs API: Debian members queue runs of an archive's version or of a .dsc at a URL
(a real package, served over HTTP), precise refusals, filters, a package's view."""

import functools
import http.server
import threading

import pytest
from rest_framework.test import APIClient

from portal.packages import runs
from portal.packages.models import Archive, SourcePackage
from portal.packages.models import TestRun as Run  # not TestRun: pytest would collect it
from portal.packages.watch import watch
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    UserFactory,
)
from tests.packages.builder import build_source, publish_archive

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("api-runs")
    dsc = build_source(work, "gpu-pkg", "1.0", control_field=("XS-Requires-Hwspec", "cuda|sycl"))
    return work, dsc


@pytest.fixture
def fleet(db):
    cuda = DriverStackFactory(name="cuda-12", hwspecs=["cuda"])
    DriverStackFactory(name="oneapi", hwspecs=["sycl"])
    for _ in range(2):
        host = HostFactory()
        host.stacks.add(cuda)
        AcceleratorFactory(host=host)
    return cuda


@pytest.fixture
def archive(built, fleet, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    root = tmp_path / "archive"
    publish_archive(root, [built[1]])
    archive = Archive.objects.create(
        name="test", url=root.as_uri(), suites=["unstable"], components=["main"]
    )
    watch(archive)
    return archive


@pytest.fixture
def served(built):
    """The package's directory over HTTP: a member's .dsc URL is http(s) only."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built[0]))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _client(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def member(db):
    return UserFactory(debian_member_source="salsa")


def test_a_member_queues_a_version_of_the_archive(archive, member):
    answer = _client(member).post(
        "/api/test-runs/", {"package": "gpu-pkg", "version": "1.0"}, format="json"
    )
    assert answer.status_code == 201, answer.json()
    (run,) = answer.json()
    assert (run["package"], run["version"], run["hwspec"], run["stack"]) == (
        "gpu-pkg", "1.0", "cuda", "cuda-12",
    )  # fmt: skip
    assert (run["state"], run["result"], run["trigger"], run["requester"]) == (
        "queued", "", "request", member.username,
    )  # fmt: skip
    assert Run.objects.get(pk=run["id"]).job.project.slug == "debian-ci"


def test_a_member_queues_a_dsc_at_a_url(fleet, member, served, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    answer = _client(member).post(
        "/api/test-runs/", {"dsc_url": f"{served}/gpu-pkg_1.0.dsc"}, format="json"
    )
    assert answer.status_code == 201, answer.json()
    (run,) = answer.json()
    package = SourcePackage.objects.get(pk=Run.objects.get(pk=run["id"]).package_id)
    assert (package.archive, package.dsc_url, package.submitter) == (
        None, f"{served}/gpu-pkg_1.0.dsc", member,
    )  # fmt: skip
    assert [f["name"] for f in package.files] == ["gpu-pkg_1.0.dsc", "gpu-pkg_1.0.tar.xz"]
    assert package.tests == [{"tests": ["smoke"], "hwspec": "cuda|sycl", "restrictions": []}]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"package": "gpu-pkg", "version": "1.0", "hwspec": "sycl"}, 400, "no_host", "hwspec"),
        ({"package": "gpu-pkg", "version": "1.0", "hwspec": "rocm"}, 400,
         "hwspec_not_declared", "hwspec"),
        ({"package": "gpu-pkg", "version": "1.0", "hwspec": "cuda", "stack": "oneapi"}, 400,
         "stack_hwspec", "stack"),
        ({"package": "gpu-pkg", "version": "9.9"}, 400, "unknown_version", "version"),
        ({"package": "nothing", "version": "1.0"}, 400, "unknown_package", "package"),
        ({"package": "gpu-pkg"}, 400, "bad_source", None),
        ({"dsc_url": "file:///etc/passwd.dsc"}, 400, "invalid", "dsc_url"),
        ({"package": "gpu-pkg", "version": "1.0", "stack": "nope"}, 400, "does_not_exist", "stack"),
    ],
)  # fmt: skip
def test_it_refuses_what_cannot_be_queued_and_says_why(archive, member, body, status, code, field):
    answer = _client(member).post("/api/test-runs/", body, format="json")
    assert answer.status_code == status
    assert answer.json()["code"] == code, answer.json()
    if field:
        assert field in answer.json()["errors"]
    assert not Run.objects.exists()


def test_only_debian_members_ask_for_runs(archive):
    answer = _client(UserFactory()).post(
        "/api/test-runs/", {"package": "gpu-pkg", "version": "1.0"}, format="json"
    )
    assert answer.status_code == 403
    assert answer.json()["code"] == "permission_denied"
    assert "Only Debian members" in answer.json()["message"]
    assert APIClient().get("/api/test-runs/").status_code == 401


def _recorded(package, stack, result):
    job = JobFactory(project=runs.tests_project(), stack=stack, script="", state="succeeded")
    return Run.objects.create(
        package=package, hwspec="cuda", stack=stack, trigger="new-version", job=job,
        result=result,
    )  # fmt: skip


def test_it_lists_runs_with_filters_and_shows_one(archive, fleet):
    package = SourcePackage.objects.get(name="gpu-pkg")
    passed, failed = _recorded(package, fleet, "pass"), _recorded(package, fleet, "fail")
    client = _client(UserFactory())  # any logged-in caller reads them
    listed = client.get("/api/test-runs/?package=gpu-pkg").json()
    assert [r["id"] for r in listed["results"]] == [failed.pk, passed.pk]
    assert [r["id"] for r in client.get("/api/test-runs/?result=fail").json()["results"]] == [
        failed.pk
    ]
    assert client.get("/api/test-runs/?package=other").json()["results"] == []
    assert client.get("/api/test-runs/?result=broken").json()["code"] == "invalid"
    one = client.get(f"/api/test-runs/{passed.pk}/").json()
    assert (one["result"], one["state"], one["job"]) == ("pass", "succeeded", passed.job_id)
    assert client.get("/api/test-runs/999999/").status_code == 404


def test_a_package_says_its_versions_stanzas_and_latest_results(archive, fleet):
    package = SourcePackage.objects.get(name="gpu-pkg")
    run = _recorded(package, fleet, "pass")
    body = _client(UserFactory()).get("/api/packages/gpu-pkg/").json()
    assert body["name"] == "gpu-pkg"
    assert [(v["version"], v["archive"]) for v in body["versions"]] == [("1.0", "test")]
    (stanza,) = body["stanzas"]
    assert stanza["tests"] == ["smoke"]
    assert stanza["alternatives"] == [
        {"hwspec": "cuda", "stacks": [{"stack": "cuda-12", "hosts": 2}]},
        {"hwspec": "sycl", "stacks": [{"stack": "oneapi", "hosts": 0}]},
    ]
    assert [(r["run_id"], r["status"]) for r in body["latest"]] == [(run.pk, "pass")]
    missing = _client(UserFactory()).get("/api/packages/nothing/")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
