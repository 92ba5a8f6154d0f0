"""Submitting and cancelling jobs: members only, clear refusals, nothing half-written."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError, connection, transaction

from portal.booking.models import Allocation
from portal.inventory.models import Host
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
    real_save = Job.save

    def broken(self, *args, **kwargs):  # the first task's pointer to itself fails
        if kwargs.get("update_fields"):
            raise RuntimeError("the database went away mid-array")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Job, "save", broken)
    with pytest.raises(RuntimeError):
        submit(member, stack, array=3)
    assert not Job.objects.exists()  # the first task, inserted before, went with it


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_an_array_is_written_as_its_first_task_with_the_rest_pending(member, stack, size):
    """As `sbatch --array` writes one job record: the tasks after the first wait for the pass."""
    job = submit(member, stack, array=size)
    assert list(Job.objects.values_list("pk", flat=True)) == [job.pk]
    stored = Job.objects.get()
    assert (stored.array_id, stored.array_index, stored.array_size, stored.array_pending) == (
        job.pk, 0, size, size - 1,
    )  # fmt: skip
    assert (job.array_size, job.array_pending) == (size, size - 1)  # what the caller holds


def test_a_plain_job_has_no_array_size(member, stack):
    job = Job.objects.get(pk=submit(member, stack).pk)
    assert (job.array_id, job.array_size, job.array_pending) == (None, None, 0)


def fields_of(job, names):  # a file field's value is its name ("" and None alike: none)
    return {n: getattr(job, n).name or "" if n == "input_archive" else getattr(job, n)
            for n in names}  # fmt: skip


SUBMITTED = [f.attname for f in Job._meta.concrete_fields if f.name in services.SUBMITTED]
OTHERS = [f.attname for f in Job._meta.concrete_fields
          if f.name not in (*services.SUBMITTED, "id", "array_index")]  # fmt: skip


def test_the_writer_makes_the_other_tasks_as_submitted_even_of_a_running_first(member, stack):
    """The pass writes tasks 1..N-1 with what was submitted; the rest is a new job's, not what
    has happened to the first task by then (it runs, has a log, was requeued ...)."""
    first = submit(
        member, stack, name="sweep", script="echo $X\n", env={"X": "1"}, count=2,
        input_git_url="https://example.org/x.git", input_git_ref="main", hwspec="cuda",
        array=5,
    )  # fmt: skip
    host = Host.objects.get()
    Job.objects.filter(pk=first.pk).update(
        state="running", host=host, started_at=datetime.now(UTC), log="epoch 1\n",
        log_offset=8, requeues=1, wait_reason="waited", queue_position=1, last_error="x",
    )  # fmt: skip
    first = Job.objects.get(pk=first.pk)

    assert services.write_array_tasks() == 4

    tasks = list(Job.objects.exclude(pk=first.pk).order_by("array_index"))
    assert [t.array_index for t in tasks] == [1, 2, 3, 4]
    fresh = Job()  # a new job's defaults
    for task in tasks:
        assert fields_of(task, SUBMITTED) == fields_of(first, SUBMITTED)
        assert (task.array_id, task.array_size, task.state) == (first.pk, 5, "queued")
        assert fields_of(task, OTHERS) == fields_of(fresh, OTHERS)
    assert Job.objects.get(pk=first.pk).array_pending == 0
    assert Job.objects.get(pk=first.pk).state == "running"  # the first is left as it is
    assert services.write_array_tasks() == 0  # written once
    assert Job.objects.count() == 5


def test_cancelling_the_first_task_alone_leaves_the_pending_ones(member, stack):
    first = submit(member, stack, array=3)
    assert job_cancel(job=first, actor=member.user).state == "cancelled"
    assert Job.objects.get(pk=first.pk).array_pending == 2

    assert services.write_array_tasks() == 2
    states = dict(Job.objects.values_list("array_index", "state"))
    assert states == {0: "cancelled", 1: "queued", 2: "queued"}


def test_cancelling_the_whole_array_before_the_pass_writes_no_task(member, stack):
    first = submit(member, stack, array=4)
    job = job_cancel(job=first, actor=member.user, whole_array=True)
    assert (job.state, job.array_pending) == ("cancelled", 0)

    assert services.write_array_tasks() == 0
    assert list(Job.objects.values_list("pk", flat=True)) == [first.pk]
    with pytest.raises(JobError, match="finished"):
        job_cancel(job=first, actor=member.user, whole_array=True)


def test_the_whole_array_is_cancellable_while_tasks_are_pending_of_a_finished_first(member, stack):
    first = submit(member, stack, array=3)
    Job.objects.filter(pk=first.pk).update(state="succeeded")
    job = job_cancel(job=first, actor=member.user, whole_array=True)  # not refused
    assert (job.state, job.array_pending) == ("succeeded", 0)
    assert services.write_array_tasks() == 0


def test_cancelling_the_whole_array_after_the_pass_cancels_the_written_tasks(member, stack):
    first = submit(member, stack, array=3)
    services.write_array_tasks()
    job_cancel(job=first, actor=member.user, whole_array=True)
    assert set(Job.objects.values_list("state", flat=True)) == {"cancelled"}


def test_one_pass_writes_every_pending_array(member, stack):
    arrays = [submit(member, stack, array=n) for n in (2, 3, 1)]
    plain = submit(member, stack)
    assert services.write_array_tasks() == 1 + 2
    made = {
        first.pk: list(Job.objects.filter(array=first).order_by("array_index")
                       .values_list("array_index", flat=True))
        for first in arrays
    }  # fmt: skip
    assert made == {arrays[0].pk: [0, 1], arrays[1].pk: [0, 1, 2], arrays[2].pk: [0]}
    assert Job.objects.count() == 2 + 3 + 1 + 1 and plain.array_id is None


def test_the_writer_goes_in_batches_oldest_array_first_and_stops_at_its_time(
    member, stack, monkeypatch
):
    monkeypatch.setattr(services, "ARRAYS_PER_BATCH", 2)
    arrays = [submit(member, stack, array=3) for _ in range(5)]

    assert services.write_array_tasks(seconds=0) == 2 * 2  # one batch: the two oldest
    pending = dict(
        Job.objects.filter(pk__in=[a.pk for a in arrays]).values_list("pk", "array_pending")
    )
    assert [pending[a.pk] for a in arrays] == [0, 0, 2, 2, 2]

    assert services.write_array_tasks() == 3 * 2  # the next pass: every batch left
    assert Job.objects.count() == 5 * 3


def test_a_failed_write_leaves_the_tasks_pending(member, stack):
    first = submit(member, stack, array=3)

    def fail_insert(execute, sql, params, many, context):
        if sql.startswith("INSERT") and "WITH RECURSIVE" in sql:
            raise DatabaseError("the database went away")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(fail_insert), pytest.raises(DatabaseError):
        services.write_array_tasks()
    assert Job.objects.get(pk=first.pk).array_pending == 2  # the claim went with the insert
    assert services.write_array_tasks() == 2


def test_the_schedule_task_writes_the_pending_tasks_before_the_pass(member, stack, monkeypatch):
    from portal.jobs import tasks

    first = submit(member, stack, array=3)
    seen = []
    real = scheduler.schedule

    def schedule(*args, **kwargs):
        seen.append(Job.objects.filter(array=first).count())
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler, "schedule", schedule)
    tasks.schedule()
    assert seen == [3]


def _in_thread(work):
    """Run `work` on its own connection; (started, finished, result list, failures)."""
    started, finished = threading.Event(), threading.Event()
    result, failed = [], []

    def run():
        try:
            started.set()
            result.append(work())
        except Exception as exc:  # the test must show it
            failed.append(exc)
        finally:
            connection.close()
            finished.set()

    thread = threading.Thread(target=run)
    thread.start()
    started.wait()
    return thread, finished, result, failed


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_writers_at_once_write_the_tasks_once(member, stack):
    first = submit(member, stack, array=50)
    with transaction.atomic():
        assert services.write_array_tasks() == 49  # holds its claim until it commits
        thread, finished, result, failed = _in_thread(services.write_array_tasks)
        assert not finished.wait(0.5)  # the second waits for the first's row lock
    thread.join()
    assert (failed, result) == ([], [0])
    indices = list(Job.objects.filter(array=first).values_list("array_index", flat=True))
    assert sorted(indices) == list(range(50))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_writer_waits_for_a_cancel_of_the_whole_array_and_writes_nothing(member, stack):
    first = submit(member, stack, array=5)
    with transaction.atomic():
        job_cancel(job=first, actor=member.user, whole_array=True)
        thread, finished, result, failed = _in_thread(services.write_array_tasks)
        assert not finished.wait(0.5)
    thread.join()
    assert (failed, result) == ([], [0])
    assert list(Job.objects.values_list("pk", "state")) == [(first.pk, "cancelled")]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_cancel_of_the_whole_array_waits_for_a_writer_and_cancels_what_it_wrote(member, stack):
    first = submit(member, stack, array=5)
    with transaction.atomic():
        assert services.write_array_tasks() == 4
        thread, finished, _, failed = _in_thread(
            lambda: job_cancel(job=first, actor=member.user, whole_array=True)
        )
        assert not finished.wait(0.5)
    thread.join()
    assert failed == []
    assert list(Job.objects.values_list("state", flat=True)) == ["cancelled"] * 5


def test_it_refuses_an_array_size_out_of_bounds(member, stack):
    for array in (0, 1001, True):
        with pytest.raises(JobError) as refused:
            submit(member, stack, array=array)
        assert (refused.value.code, refused.value.field) == ("bad_array", "array")
    assert not Job.objects.exists()


def test_an_array_of_one_is_an_array(member, stack):
    job = submit(member, stack, array=1)
    assert (job.array_id, job.array_index, job.array_size) == (job.pk, 0, 1)
    assert services.write_array_tasks() == 0  # nothing pending
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
    services.write_array_tasks()
    assert list(Job.objects.filter(array=first).values_list("array_index", flat=True)) == [0, 1, 2]
    refused = JobForm(member.user, {**fields, "array": "1001"})
    assert not refused.is_valid() and "array" in refused.errors
    # Left empty, as a browser sends the untouched field: one plain job.
    plain = JobForm(member.user, {**fields, "array": ""})
    assert plain.is_valid(), plain.errors
    job = job_submit(submitter=member.user, **plain.submit_kwargs())
    assert (job.array_id, job.array_index) == (None, None)
