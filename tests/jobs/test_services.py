"""Submitting and cancelling jobs: members only, clear refusals, nothing half-written."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.booking.models import Allocation
from portal.jobs import scheduler, services
from portal.jobs.models import Job
from portal.jobs.services import JobError, job_cancel, job_submit
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    PartnerMembershipFactory,
    UserFactory,
)

H = timedelta(hours=1)


@pytest.fixture
def member(db):
    return PartnerMembershipFactory(project__max_walltime_hours=24)


@pytest.fixture
def stack(db):
    stack = DriverStackFactory(name="cuda-12")
    host = HostFactory()
    host.stacks.add(stack)
    AcceleratorFactory(host=host, index=0)
    return stack


def submit(member, stack, **overrides):
    fields = {
        "project": member.project, "submitter": member.user, "name": "train", "script": "true",
        "stack": stack, "walltime": 2 * H, "code_licence": "MIT", "data_licence": "CC0-1.0",
        "model_freedom": "free",
    }  # fmt: skip
    return job_submit(**{**fields, **overrides})


def test_it_queues_a_valid_job(member, stack):
    job = submit(member, stack, env={"EPOCHS": "3"}, hwspec="CUDA:sm_90", count=2)
    assert (job.state, job.env, job.hwspec, job.count) == (
        "queued",
        {"EPOCHS": "3"},
        "cuda:sm_90",
        2,
    )


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"script": "  "}, "bad_script", "script"),
        ({"script": "x" * 70000}, "bad_script", "script"),
        ({"count": 0}, "bad_count", "count"),
        ({"count": 9}, "bad_count", "count"),  # over the project's concurrent devices
        ({"hwspec": "tpu"}, "bad_hwspec", "hwspec"),
        ({"walltime": 25 * H}, "bad_walltime", "walltime"),
        ({"walltime": timedelta(0)}, "bad_walltime", "walltime"),
        ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "bad_env", "env"),
        ({"env": {"PATH": "/tmp"}}, "bad_env", "env"),
        ({"env": {"bad name": "x"}}, "bad_env", "env"),
        ({"env": {"X": "a\0b"}}, "bad_env", "env"),
        ({"input_git_url": "http://example.org/x.git"}, "bad_input", "input_git_url"),
        ({"input_git_url": "https://x.org/r.git", "input_git_ref": "--upload-pack=x"},
         "bad_input", "input_git_ref"),
        ({"model_freedom": "maybe"}, "bad_freedom", "model_freedom"),
    ],
)  # fmt: skip
def test_it_refuses_bad_input_naming_the_field(member, stack, overrides, code, field):
    with pytest.raises(JobError) as refused:
        submit(member, stack, **overrides)
    assert (refused.value.code, refused.value.field) == (code, field)
    assert not Job.objects.exists()


def test_it_refuses_an_archive_over_the_limit(member, stack, settings):
    settings.JOBS_MAX_ARCHIVE_MB = 1
    archive = SimpleUploadedFile("in.tar.gz", b"x" * (1024 * 1024 + 1))
    with pytest.raises(JobError, match="over 1 MB"):
        submit(member, stack, input_archive=archive)


def test_it_refuses_non_members_and_unapproved_projects(member, stack):
    with pytest.raises(JobError) as refused:
        submit(member, stack, submitter=UserFactory())
    assert refused.value.code == "not_member"
    member.project.state = "applied"
    member.project.save()
    with pytest.raises(JobError):
        submit(member, stack)


def test_it_refuses_a_stack_no_host_offers(member, stack):
    with pytest.raises(JobError) as refused:
        submit(member, DriverStackFactory(name="rocm-6"))
    assert refused.value.code == "stack_missing"


def test_it_cancels_a_scheduled_job_and_frees_its_devices(member, stack, settings):
    settings.JOBS_STOP_GRACE_SECONDS = 0
    job = submit(member, stack)
    scheduler.schedule(datetime.now(UTC))
    assert Allocation.objects.filter(job=job, active=True).exists()

    job = job_cancel(job=job, actor=member.user)

    assert job.state == "cancelled"
    assert not Allocation.objects.filter(job=job, active=True).exists()


def test_it_asks_the_loop_to_stop_a_running_job(member, stack):
    job = submit(member, stack)
    Job.objects.filter(pk=job.pk).update(state="running")
    job = job_cancel(job=job, actor=member.user)
    assert (job.state, job.stop_requested) == ("running", True)


def test_only_members_and_staff_cancel(member, stack):
    job = submit(member, stack)
    with pytest.raises(JobError):
        job_cancel(job=job, actor=UserFactory())
    assert job_cancel(job=job, actor=UserFactory(is_staff=True)).state == "cancelled"
    with pytest.raises(JobError, match="finished"):
        job_cancel(job=job, actor=member.user)


def test_it_refuses_an_archive_the_host_would_refuse(member, stack):
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        member_info = tarfile.TarInfo("../escape.txt")
        archive.addfile(member_info, io.BytesIO(b""))
    upload = SimpleUploadedFile("in.tar.gz", data.getvalue())

    with pytest.raises(JobError) as refused:
        submit(member, stack, input_archive=upload)
    assert refused.value.field == "input_archive"
    with pytest.raises(JobError, match="The archive"):
        submit(member, stack, input_archive=SimpleUploadedFile("in.tar.gz", b"not a tarball"))
    assert not Job.objects.exists()


def test_it_refuses_a_hwspec_the_stack_does_not_serve_as_the_finder_does(member, stack):
    rocm = DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    HostFactory().stacks.add(rocm)
    with pytest.raises(JobError) as refused:
        submit(member, rocm, hwspec="cuda")
    assert (refused.value.code, refused.value.field) == ("stack_hwspec", "stack")
    assert refused.value.message == "The stack rocm-6 does not serve cuda."
    assert not Job.objects.exists()
    assert submit(member, rocm, hwspec="rocm:gfx90a").hwspec == "rocm:gfx90a"
    assert submit(member, rocm, hwspec="cpu").hwspec == "cpu"


def test_it_writes_an_array_whole_or_not_at_all(member, stack, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the database went away mid-array")

    monkeypatch.setattr(services, "_copy_tasks", broken)
    with pytest.raises(RuntimeError):
        submit(member, stack, array=3)
    assert not Job.objects.exists()  # the first task, written before, went with the rest


def test_an_arrays_tasks_are_the_first_one_copied_by_the_database(member, stack):
    """The tasks after the first are made by one INSERT ... SELECT from its row: what the
    service hands back is what a read gives, every field alike but the pk and index."""
    tasks = services.job_submit_tasks(
        project=member.project, submitter=member.user, name="sweep", script="echo $X\n",
        stack=stack, walltime=2 * H, code_licence="MIT", data_licence="CC0-1.0",
        model_freedom="free", env={"X": "1"}, input_git_url="https://example.org/x.git",
        input_git_ref="main", count=2, hwspec="cuda", array=5,
    )  # fmt: skip
    stored = list(Job.objects.order_by("array_index"))
    assert [t.pk for t in tasks] == [j.pk for j in stored]
    assert [j.array_index for j in stored] == [0, 1, 2, 3, 4]
    names = [f.attname for f in Job._meta.concrete_fields if f.name not in ("id", "array_index")]

    def fields(job):  # a file field's value is its name ("" and None alike: no archive)
        return {f: getattr(job, f).name or "" if f == "input_archive" else getattr(job, f)
                for f in names}  # fmt: skip

    for given, read in zip(tasks, stored, strict=True):
        assert (given.array_id, given.array_index) == (stored[0].pk, read.array_index)
        assert fields(given) == fields(read) == fields(stored[0])


def test_it_refuses_an_array_size_out_of_bounds(member, stack):
    for array in (0, 1001, True):
        with pytest.raises(JobError) as refused:
            submit(member, stack, array=array)
        assert (refused.value.code, refused.value.field) == ("bad_array", "array")
    assert not Job.objects.exists()


def test_an_array_of_one_is_an_array(member, stack):
    job = submit(member, stack, array=1)
    assert (job.array_id, job.array_index) == (job.pk, 0)
    assert list(Job.objects.values_list("pk", flat=True)) == [job.pk]  # one task, no copy


def test_the_submit_form_passes_the_array_on(member, stack):
    from portal.jobs.forms import JobForm

    fields = {
        "project": member.project.slug, "name": "train", "script": "true", "stack": "cuda-12",
        "count": 1, "walltime_hours": "2", "code_licence": "MIT", "data_licence": "CC0-1.0",
        "model_freedom": "free",
    }  # fmt: skip
    form = JobForm(member.user, {**fields, "array": "3"})
    assert form.is_valid(), form.errors
    first = job_submit(submitter=member.user, **form.submit_kwargs())
    assert list(Job.objects.filter(array=first).values_list("array_index", flat=True)) == [0, 1, 2]
    refused = JobForm(member.user, {**fields, "array": "1001"})
    assert not refused.is_valid() and "array" in refused.errors
    # Left empty, as a browser sends the untouched field: one plain job.
    plain = JobForm(member.user, {**fields, "array": ""})
    assert plain.is_valid(), plain.errors
    job = job_submit(submitter=member.user, **plain.submit_kwargs())
    assert (job.array_id, job.array_index) == (None, None)
