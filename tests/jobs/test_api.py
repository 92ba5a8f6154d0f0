"""The jobs API: submit (JSON or multipart), list, show, log, cancel; someone else's is 404."""

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from portal.jobs import services
from portal.jobs.models import Job
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    PartnerMembershipFactory,
    PartnerProjectFactory,
    UserFactory,
    tarball,
)

H = timedelta(hours=1)


pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture
def stack(db):
    stack = DriverStackFactory(name="cuda-12")
    host = HostFactory(name="gpu1")
    host.stacks.add(stack)
    AcceleratorFactory(host=host, index=0)
    return stack


@pytest.fixture
def member(db):
    return PartnerMembershipFactory(project__slug="speech", project__max_walltime_hours=24)


@pytest.fixture
def api(member):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=member.user).key}")
    return client


def as_user(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def body(**overrides):
    fields = {
        "project": "speech", "name": "asr", "script": "python3 train.py\n", "stack": "cuda-12",
        "count": 1, "hwspec": "cuda:sm_90", "min_memory_gb": 40, "walltime": 4,
        "env": {"EPOCHS": "3"}, "input_git_url": "https://salsa.debian.org/x/asr.git",
        "input_git_ref": "main", "code_licence": "Apache-2.0", "data_licence": "CC-BY-4.0",
        "model_freedom": "free",
    }  # fmt: skip
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def test_it_submits_a_job_with_json(api, member, stack):
    response = api.post("/api/jobs/", body(walltime="PT1H30M"), format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    job = Job.objects.get()
    assert data["id"] == job.pk and data["state"] == "queued"
    assert (data["project"], data["submitter"], data["stack"]) == (
        "speech", member.user.username, "cuda-12"
    )  # fmt: skip
    assert (data["walltime"], data["env"], data["hwspec"]) == (1.5, {"EPOCHS": "3"}, "cuda:sm_90")
    assert data["min_memory_mib"] == 40 * 953 and data["queued_at"] == "2026-11-23T09:07:00Z"
    assert job.walltime == timedelta(hours=1, minutes=30) and job.submitter == member.user


@pytest.mark.parametrize(
    ("walltime", "expected"),
    [(4, 4 * H), ("2.5", 2.5 * H), ("P1DT2H", 26 * H), ("pt45m", 0.75 * H)],
)
def test_it_reads_walltime_as_hours_or_an_iso_duration(api, stack, walltime, expected):
    response = api.post("/api/jobs/", body(walltime=walltime), format="json")
    assert response.status_code == 400 if expected > 24 * H else 201
    if expected <= 24 * H:
        assert Job.objects.get().walltime == expected
    else:
        assert response.json()["code"] == "bad_walltime"


def test_it_takes_an_archive_in_multipart(api, stack, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    archive = SimpleUploadedFile("in.tar.gz", tarball(), "application/gzip")
    fields = body(input_git_url="", input_git_ref="", env='{"EPOCHS": "5"}')
    response = api.post("/api/jobs/", {**fields, "input_archive": archive}, format="multipart")
    assert response.status_code == 201, response.json()
    job = Job.objects.get()
    assert bool(job.input_archive) and job.env == {"EPOCHS": "5"}
    assert response.json()["input_archive"] is True


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"project": "elsewhere"}, "does_not_exist", "project"),
        ({"project": "applied"}, "does_not_exist", "project"),
        ({"walltime": "soon"}, "invalid", "walltime"),
        ({"walltime": "nan"}, "invalid", "walltime"),
        ({"walltime": 1e300}, "invalid", "walltime"),
        ({"walltime": 0}, "bad_walltime", "walltime"),
        ({"env": ["EPOCHS=3"]}, "invalid", "env"),
        ({"env": {"PATH": "/tmp"}}, "bad_env", "env"),
        ({"env": {"EPOCHS": 3}}, "bad_env", "env"),
        ({"count": 5}, "bad_count", "count"),
        ({"hwspec": "tpu"}, "bad_hwspec", "hwspec"),
        ({"hwspec": "cuda:" + "x" * 40}, "max_length", "hwspec"),
        ({"min_memory_gb": -1}, "min_value", "min_memory_gb"),
        ({"input_git_url": "http://example.org/x.git"}, "bad_input", "input_git_url"),
        ({"input_git_url": "https://example.org/" + "x" * 200}, "max_length", "input_git_url"),
        ({"code_licence": "x" * 101}, "max_length", "code_licence"),
        ({"model_freedom": "maybe"}, "invalid_choice", "model_freedom"),
        ({"script": ""}, "blank", "script"),
        ({"stack": "rocm-9"}, "does_not_exist", "stack"),
        ({"name": None}, "required", "name"),
    ],
)
def test_it_refuses_bad_input_naming_the_field(api, member, stack, overrides, code, field):
    PartnerProjectFactory(slug="elsewhere")  # approved, but not the caller's
    PartnerMembershipFactory(user=member.user, project__slug="applied", project__state="applied")
    response = api.post("/api/jobs/", body(**overrides), format="json")
    assert response.status_code == 400, response.json()
    data = response.json()
    assert (data["code"], list(data["errors"])) == (code, [field]), data
    assert data["message"]
    assert not Job.objects.exists()


def test_it_lists_shows_and_cancels_only_the_callers_projects_jobs(api, member, stack):
    mine = JobFactory(project=member.project, stack=stack)
    colleague = JobFactory(project=member.project, stack=stack, state="succeeded")
    theirs = JobFactory(stack=stack)

    listed = api.get("/api/jobs/").json()["results"]

    assert sorted(j["id"] for j in listed) == sorted([mine.pk, colleague.pk])
    assert [j["id"] for j in api.get("/api/jobs/?state=succeeded").json()["results"]] == [
        colleague.pk
    ]
    assert api.get("/api/jobs/?state=lost").status_code == 400
    assert api.get(f"/api/jobs/{colleague.pk}/").json()["state"] == "succeeded"
    for method, path in [
        ("get", f"/api/jobs/{theirs.pk}/"),
        ("get", f"/api/jobs/{theirs.pk}/log/"),
        ("post", f"/api/jobs/{theirs.pk}/cancel/"),
        ("get", "/api/jobs/999999/"),
    ]:
        response = getattr(api, method)(path)
        assert response.status_code == 404 and response.json()["code"] == "not_found", path
    theirs.refresh_from_db()
    assert theirs.state == "queued"


def test_it_shows_any_job_to_staff(member, stack, staff):
    job = JobFactory(project=member.project, stack=stack)
    assert as_user(staff).get(f"/api/jobs/{job.pk}/").status_code == 200


def test_it_cancels_and_says_when_a_job_has_finished(api, member, stack):
    job = JobFactory(project=member.project, stack=stack)
    response = api.post(f"/api/jobs/{job.pk}/cancel/")
    assert (response.status_code, response.json()["state"]) == (200, "cancelled")
    response = api.post(f"/api/jobs/{job.pk}/cancel/")
    assert (response.status_code, response.json()["code"]) == (409, "finished")
    running = JobFactory(project=member.project, stack=stack, state="running")
    response = api.post(f"/api/jobs/{running.pk}/cancel/")
    assert response.json()["stop_requested"] is True


def test_it_serves_the_log_from_an_offset(api, member, stack):
    job = JobFactory(project=member.project, stack=stack, state="running", log="époch 1\n")
    first = api.get(f"/api/jobs/{job.pk}/log/").json()
    assert first == {"offset": 0, "next_offset": 8, "size": 8, "data": "époch 1\n", "eof": False}
    Job.objects.filter(pk=job.pk).update(log="époch 1\népoch 2\n", state="succeeded")
    second = api.get(f"/api/jobs/{job.pk}/log/?offset={first['next_offset']}").json()
    assert (second["data"], second["next_offset"], second["eof"]) == ("époch 2\n", 16, True)
    assert api.get(f"/api/jobs/{job.pk}/log/?offset=99").json()["data"] == ""
    assert api.get(f"/api/jobs/{job.pk}/log/?offset=2&limit=3").json()["data"] == "och"
    response = api.get(f"/api/jobs/{job.pk}/log/?offset=-1")
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_it_keeps_log_offsets_stable_when_the_portal_keeps_only_the_tail(api, member, stack):
    # 100 characters were dropped from the start; the kept text is what followed them.
    job = JobFactory(project=member.project, stack=stack, state="succeeded", log="tail\n",
                     log_dropped=100)  # fmt: skip
    read = api.get(f"/api/jobs/{job.pk}/log/?offset=102").json()
    assert (read["offset"], read["data"], read["next_offset"]) == (102, "il\n", 105)
    early = api.get(f"/api/jobs/{job.pk}/log/?offset=10").json()  # before the kept text
    assert (early["offset"], early["data"], early["size"]) == (100, "tail\n", 105)


def test_it_requires_authentication(stack):
    anonymous = APIClient()
    for method, path in [("get", "/api/jobs/"), ("post", "/api/jobs/")]:
        response = getattr(anonymous, method)(path)
        assert response.status_code == 401 and response.json()["code"] == "not_authenticated"


def test_it_refuses_users_outside_any_approved_project(stack):
    applied = PartnerMembershipFactory(project__slug="speech", project__state="applied")
    for user in (UserFactory(), applied.user):
        response = as_user(user).post("/api/jobs/", body(), format="json")
        assert response.status_code == 400
        assert response.json()["errors"] == {
            "project": ["speech is not one of your approved partner projects."]
        }
    assert as_user(UserFactory()).get("/api/jobs/").json()["results"] == []
    assert not Job.objects.exists()


def test_it_refuses_a_hwspec_the_stack_does_not_serve_with_a_400(api, stack):
    rocm = DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    HostFactory(name="mi1").stacks.add(rocm)
    response = api.post("/api/jobs/", body(stack="rocm-6", hwspec="cuda"), format="json")
    assert response.status_code == 400, response.json()
    data = response.json()
    assert (data["code"], list(data["errors"])) == ("stack_hwspec", ["stack"])
    assert data["message"] == "The stack rocm-6 does not serve cuda."
    assert not Job.objects.exists()


# -- Job arrays (issue 16): one submission, N jobs, like sbatch --array -------------------------


def test_it_submits_an_array_as_its_first_task_and_the_pass_writes_the_others(api, stack):
    response = api.post("/api/jobs/", body(array=4), format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    first = Job.objects.get()  # one row, as sbatch --array writes one job record
    assert data["id"] == first.pk and "array_jobs" not in data
    assert (data["array"], data["array_index"], data["array_size"], data["array_pending"]) == (
        first.pk, 0, 4, 3,
    )  # fmt: skip
    listed = api.get(f"/api/jobs/?array={first.pk}").json()["results"]
    assert [j["id"] for j in listed] == [first.pk]

    services.write_array_tasks()  # the scheduler's next pass

    listed = api.get(f"/api/jobs/?array={first.pk}").json()["results"]
    tasks = list(Job.objects.order_by("array_index"))
    assert [(j["id"], j["array_index"], j["array_size"]) for j in listed] == [
        (t.pk, i, 4) for i, t in enumerate(tasks)
    ]
    assert {(t.state, t.name, t.env["EPOCHS"], t.queued_at) for t in tasks} == {
        ("queued", "asr", "3", first.queued_at)
    }
    assert api.get(f"/api/jobs/{first.pk}/").json()["array_pending"] == 0


def test_the_array_filter_shows_only_the_callers_projects_tasks(api, stack):
    first = api.post("/api/jobs/", body(array=2), format="json").json()["id"]
    services.write_array_tasks()
    stranger = as_user(UserFactory())
    assert stranger.get(f"/api/jobs/?array={first}").json()["results"] == []
    staff = as_user(UserFactory(is_staff=True))
    assert len(staff.get(f"/api/jobs/?array={first}").json()["results"]) == 2
    for bad in ("x", "-1", "1.5", "9" * 30):
        response = api.get("/api/jobs/", {"array": bad})
        assert response.status_code == 400, bad
        assert list(response.json()["errors"]) == ["array"]


def test_a_plain_job_is_in_no_array(api, stack):
    data = api.post("/api/jobs/", body(), format="json").json()
    assert (data["array"], data["array_index"], data["array_size"], data["array_pending"]) == (
        None, None, None, 0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("array", "code", "message"),
    [
        (0, "min_value", "Ensure this value is greater than or equal to 1."),
        (1001, "max_value", "Ensure this value is less than or equal to 1000."),
        ("x", "invalid", "A valid integer is required."),
        (2.5, "invalid", "A valid integer is required."),
    ],
)
def test_it_refuses_a_bad_array_size_precisely(api, stack, array, code, message):
    response = api.post("/api/jobs/", body(array=array), format="json")
    assert response.status_code == 400
    data = response.json()
    assert (data["code"], data["errors"]) == (code, {"array": [message]})
    assert not Job.objects.exists()


def test_an_array_is_refused_whole(api, stack):
    # Each task must fit the project's limits; one refusal, and no task is written.
    response = api.post("/api/jobs/", body(array=5, count=5), format="json")
    assert (response.status_code, response.json()["code"]) == (400, "bad_count")
    assert not Job.objects.exists()


def submit_array(api, size: int) -> list[int]:
    """An array's task ids by index, once the pass has written them."""
    first = api.post("/api/jobs/", body(array=size), format="json").json()["id"]
    services.write_array_tasks()
    return [j["id"] for j in api.get(f"/api/jobs/?array={first}").json()["results"]]


def test_it_cancels_a_whole_array_with_array_1(api, stack):
    ids = submit_array(api, 3)
    Job.objects.filter(pk=ids[1]).update(state="running")
    Job.objects.filter(pk=ids[2]).update(state="succeeded")

    response = api.post(f"/api/jobs/{ids[0]}/cancel/?array=1")

    assert (response.status_code, response.json()["state"]) == (200, "cancelled")
    states = dict(Job.objects.values_list("pk", "state"))
    assert [states[i] for i in ids] == ["cancelled", "running", "succeeded"]
    assert Job.objects.get(pk=ids[1]).stop_requested
    Job.objects.filter(pk=ids[1]).update(state="failed")
    again = api.post(f"/api/jobs/{ids[0]}/cancel/?array=1")
    assert (again.status_code, again.json()["code"]) == (409, "finished")
    assert api.post(f"/api/jobs/{ids[0]}/cancel/?array=yes").status_code == 400


def test_cancelling_a_whole_array_before_the_pass_drops_its_pending_tasks(api, stack):
    first = api.post("/api/jobs/", body(array=3), format="json").json()["id"]
    response = api.post(f"/api/jobs/{first}/cancel/?array=1")
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["array_pending"]) == ("cancelled", 0)
    services.write_array_tasks()
    assert list(Job.objects.values_list("pk", flat=True)) == [first]


def test_cancel_without_array_1_cancels_one_task(api, stack):
    ids = submit_array(api, 2)
    assert api.post(f"/api/jobs/{ids[1]}/cancel/").json()["state"] == "cancelled"
    assert Job.objects.get(pk=ids[0]).state == "queued"


def test_it_submits_an_array_of_1000_in_the_queries_of_an_array_of_20(api, stack):
    # The token; the project, the stack, the membership and a host with the stack (one query,
    # submission_refs); the insert. An array adds its first task's pointer to itself and a
    # transaction's savepoints, whatever its size: the other tasks are the pass's to write.
    def queries(**fields) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            assert api.post("/api/jobs/", body(**fields), format="json").status_code == 201
        return [q["sql"] for q in captured.captured_queries]

    assert len(queries()) == 3
    twenty, thousand = queries(array=20), queries(array=1000)
    assert len(thousand) == len(twenty) <= 3 + 1 + 2
    assert Job.objects.count() == 3  # one row a submission
    assert services.write_array_tasks() == 19 + 999


def test_a_jobs_output_downloads_with_a_token_and_stays_its_projects(
    api, member, settings, tmp_path
):
    from django.core.files.base import ContentFile

    settings.MEDIA_ROOT = tmp_path
    job = JobFactory(project=member.project, submitter=member.user, state="succeeded")
    assert api.get(f"/api/jobs/{job.pk}/output/").json()["code"] == "not_found"  # none yet
    job.output.save("out.tar.gz", ContentFile(b"\x1f\x8bweights"))

    answer = api.get(f"/api/jobs/{job.pk}/output/", HTTP_ACCEPT="application/gzip")

    assert answer.status_code == 200 and answer["Content-Type"] == "application/gzip"
    assert b"".join(answer.streaming_content) == b"\x1f\x8bweights"
    assert f'filename="job-{job.pk}-output.tar.gz"' in answer["Content-Disposition"]
    other = JobFactory(state="succeeded")
    other.output.save("out.tar.gz", ContentFile(b"theirs"))
    assert api.get(f"/api/jobs/{other.pk}/output/").status_code == 404


def test_a_hosts_pinned_keys_are_in_its_answer_for_known_hosts_files(api, stack):
    from portal.inventory.models import Host

    Host.objects.filter(name="gpu1").update(host_keys="ssh-ed25519 AAAAC3Nza\n")
    assert api.get("/api/hosts/gpu1/").json()["host_keys"] == "ssh-ed25519 AAAAC3Nza\n"
