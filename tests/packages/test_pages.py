"""Package test pages: they render, only Debian members ask for runs, latest.json has
debci's shape per hwspec and stack."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.packages import runs
from portal.packages.models import Archive, SourcePackage
from portal.packages.models import TestRun as Run  # not TestRun: pytest would collect it
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def stack(db):
    stack = DriverStackFactory(name="cuda-12", hwspecs=["cuda"])
    for _ in range(3):
        host = HostFactory()
        host.stacks.add(stack)
        AcceleratorFactory(host=host)
    DriverStackFactory(name="oneapi", hwspecs=["sycl"])
    return stack


def _package(version="1.0", **fields):
    defaults = {
        "tests": [
            {"tests": ["smoke"], "hwspec": "cuda", "restrictions": []},
            {"tests": ["kernels"], "hwspec": "sycl", "restrictions": []},
        ],
        "files": [{"name": f"foo_{version}.dsc", "size": 1, "sha256": "0" * 64}],
    }
    return SourcePackage.objects.create(name="foo", version=version, **{**defaults, **fields})


def _run(package, stack, result, *, regression=False, log="", minutes=5):
    end = timezone.now()
    job = JobFactory(
        project=runs.tests_project(), stack=stack, hwspec="cuda", script="", state="failed",
        exit_status=4 if result == "fail" else 0, log=log,
        started_at=end - timedelta(minutes=minutes), ended_at=end,
    )  # fmt: skip
    return Run.objects.create(
        package=package, hwspec="cuda", stack=stack, trigger="request", job=job,
        result=result, regression=regression, finished=end, summary={"smoke": "FAIL"},
        exit_code=job.exit_status,
    )  # fmt: skip


def test_the_pages_render_what_fits_and_the_history(client, stack):
    old = _run(_package("1.0"), stack, "pass")
    new = _run(_package("2.0"), stack, "fail", regression=True, log="autopkgtest ...\nsmoke FAIL")
    client.force_login(UserFactory())
    listing = client.get("/packages/")
    assert listing.status_code == 200
    text = listing.content.decode()
    assert "foo" in text and "2.0" in text and "regression" in text
    page = client.get("/packages/foo/").content.decode()
    assert "cuda-12, 3 hosts fit" in page
    assert "oneapi, 0 hosts fit" in page
    assert f"#{old.pk}" in page and f"#{new.pk}" in page
    assert "Debian members ask for test runs" in page  # a non-member sees no form
    run = client.get(f"/packages/runs/{new.pk}/").content.decode()
    assert "regression" in run and "smoke FAIL" in run and "exit status 4" in run
    log = client.get(f"/packages/runs/{new.pk}/log/")
    assert log.content.decode() == new.job.log
    assert client.get(f"/packages/runs/{new.pk}/artifacts/").status_code == 404  # none kept


def test_the_pages_need_a_login(client, stack):
    assert client.get("/packages/").status_code == 302
    assert client.get("/packages/nothing/").status_code == 302


def test_an_unknown_package_is_not_found(client):
    client.force_login(UserFactory())
    assert client.get("/packages/nothing/").status_code == 404
    assert client.get("/packages/runs/999/").status_code == 404
    assert client.get("/packages/nothing/latest.json").json()["code"] == "not_found"


def test_a_non_member_cannot_ask_for_a_run(client, stack):
    _package()
    client.force_login(UserFactory())
    answer = client.post("/packages/foo/request/", {"version": "1.0"})
    assert answer.status_code == 403
    assert "Only Debian members ask for test runs" in answer.content.decode()
    assert not Run.objects.exists()


def test_a_member_sees_why_a_request_does_not_fit(client, stack, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    _package(archive=Archive.objects.create(name="a", url=tmp_path.as_uri()))
    client.force_login(UserFactory(debian_member_source="staff"))
    page = client.get("/packages/foo/").content.decode()
    assert 'name="dsc_url"' in page and '<option value="sycl">' in page
    answer = client.post(
        "/packages/foo/request/", {"version": "1.0", "hwspec": "sycl", "stack": "oneapi"}
    )
    assert answer.status_code == 400
    assert "No active host has a sycl device with the stack oneapi" in answer.content.decode()
    # cuda fits, but the files are not in the (empty) archive: said, nothing queued.
    answer = client.post("/packages/foo/request/", {"version": "1.0", "hwspec": "cuda"})
    assert answer.status_code == 400
    assert "foo_1.0.dsc: No such file or directory" in answer.content.decode()
    assert not Run.objects.exists()


def test_latest_json_has_the_latest_run_per_hwspec_and_stack(client, stack):
    _run(_package("1.0"), stack, "pass")
    latest = _run(_package("2.0"), stack, "fail", regression=True, minutes=7)
    answer = client.get("/packages/foo/latest.json")  # public, like debci's
    assert answer.status_code == 200
    assert answer.json() == {
        "package": "foo",
        "results": [
            {
                "run_id": latest.pk, "package": "foo", "version": "2.0", "hwspec": "cuda",
                "stack": "cuda-12", "status": "fail", "regression": True, "trigger": "request",
                "date": latest.finished.isoformat(), "duration_seconds": 420,
            }
        ],
    }  # fmt: skip


def test_a_member_queues_a_run_from_the_package_page(client, stack, settings, tmp_path):
    from portal.packages.watch import watch
    from tests.packages.builder import build_source, publish_archive

    settings.MEDIA_ROOT = tmp_path / "media"
    dsc = build_source(tmp_path / "src", "foo", "1.0", control_field=("XS-Requires-Hwspec", "cuda"))
    publish_archive(tmp_path / "archive", [dsc])
    archive = Archive.objects.create(
        name="a", url=(tmp_path / "archive").as_uri(), suites=["unstable"], components=["main"]
    )
    watch(archive)
    member = UserFactory(debian_member_source="salsa")
    client.force_login(member)
    answer = client.post("/packages/foo/request/", {"version": "1.0", "hwspec": "cuda"})
    run = Run.objects.get()
    assert answer.status_code == 302 and answer["Location"] == f"/packages/runs/{run.pk}/"
    assert (run.requester, run.hwspec, run.stack, run.job.state) == (
        member,
        "cuda",
        stack,
        "queued",
    )
    page = client.get(answer["Location"]).content.decode()
    assert "Queued 1 run." in page and "Not finished yet." in page
