"""The pass's placements as one batch: one claim and one INSERT for all the jobs, written again
job by job only when the exclusion constraint refuses the batch."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError

from portal.booking import services as booking_services
from portal.booking.models import Allocation
from portal.booking.services import reservation_create
from portal.inventory.models import Accelerator
from portal.jobs import scheduler
from portal.jobs.models import Job
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    PartnerProjectFactory,
    UserFactory,
)

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture(autouse=True)
def no_grace(settings):
    settings.JOBS_STOP_GRACE_SECONDS = 0


@pytest.fixture
def stack(db):
    return DriverStackFactory(name="cuda-12")


@pytest.fixture
def devices(stack):
    """Two hosts with four GPUs each."""
    found = []
    for name in ("gpu1", "gpu2"):
        host = HostFactory(name=name)
        host.stacks.add(stack)
        found += [AcceleratorFactory(host=host, index=i) for i in range(4)]
    return found


def three_jobs(stack):
    project = PartnerProjectFactory(max_concurrent_devices=8)
    return [
        JobFactory(project=project, stack=stack, count=2, walltime=2 * H,
                   queued_at=NOW - H + i * timedelta(seconds=1))
        for i in range(3)
    ]  # fmt: skip


def schedule_with(plan):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "plan", lambda now: plan)
        return scheduler.schedule(NOW)


def held(job) -> set[int]:
    return set(
        Allocation.objects.filter(job=job, active=True).values_list("accelerator", flat=True)
    )


def assert_no_device_held_twice():
    rows = list(Allocation.objects.filter(active=True).values_list("accelerator", "start", "end"))
    for i, (device, start, end) in enumerate(rows):
        for other, s, e in rows[i + 1 :]:
            assert not (device == other and s < end and e > start), (device, start, end, s, e)


def test_a_pass_places_its_jobs_with_one_claim_and_one_insert(
    stack, devices, django_assert_max_num_queries
):
    jobs = three_jobs(stack)
    plan = scheduler.plan(NOW)
    assert len(plan.placed) == 3

    with django_assert_max_num_queries(12):  # lock, 2 reads, savepoint, claim, insert, ...
        scheduler._write_placements(plan, NOW)

    for job in jobs:
        job.refresh_from_db()
        assert job.state == "scheduled" and job.queue_position is None
        assert held(job) == set(plan.placed[job.pk])
        assert job.host_id == Accelerator.objects.get(pk=plan.placed[job.pk][0]).host_id
        assert Allocation.objects.get(job=job, accelerator=plan.placed[job.pk][0]).end == (
            NOW + 2 * H
        )


def test_a_job_cancelled_after_the_plan_holds_nothing_and_the_others_are_placed(stack, devices):
    first, second, third = three_jobs(stack)
    plan = scheduler.plan(NOW)
    Job.objects.filter(pk=second.pk).update(state=Job.State.CANCELLED)

    result = schedule_with(plan)

    assert set(result.placed) == {first.pk, third.pk}
    second.refresh_from_db()
    assert second.state == "cancelled" and second.host_id is None
    assert held(second) == set()
    assert held(first) == set(plan.placed[first.pk]) and held(third) == set(plan.placed[third.pk])


def test_a_batch_the_constraint_refuses_is_written_again_job_by_job(stack, devices):
    """The batch's refusal rolls back its claims too; each job is then claimed and written in
    its own savepoint, and only the refused one waits. (The refusal is the exclusion
    constraint's on PostgreSQL, see below; here it is raised for the job's rows, so that the
    fallback runs on SQLite too.)"""
    first, second, third = three_jobs(stack)
    plan = scheduler.plan(NOW)
    real = booking_services._insert_allocations
    batches = []

    def refusing(owner_field, holds):
        batches.append([hold.owner for hold in holds])
        if any(hold.owner == second.pk for hold in holds):
            raise IntegrityError('conflicting key value violates "allocation_no_overlap"')
        real(owner_field, holds)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(booking_services, "_insert_allocations", refusing)
        result = schedule_with(plan)

    assert batches == [[first.pk, second.pk, third.pk], [first.pk], [second.pk], [third.pk]]
    assert set(result.placed) == {first.pk, third.pk}
    second.refresh_from_db()  # its claim was rolled back with the batch, then with its own
    assert (second.state, second.host_id) == ("queued", None)
    assert "taken a moment ago" in second.wait_reason and second.queue_position == 1
    assert held(second) == set()
    for job in (first, third):
        job.refresh_from_db()
        assert job.state == "scheduled" and held(job) == set(plan.placed[job.pk])


def test_an_error_other_than_an_overlap_is_not_taken_for_one(stack, devices):
    three_jobs(stack)
    plan = scheduler.plan(NOW)

    def broken(owner_field, holds):
        raise IntegrityError("null value in column violates not-null constraint")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(booking_services, "_insert_allocations", broken)
        with pytest.raises(IntegrityError):
            schedule_with(plan)

    assert not Job.objects.filter(state="scheduled").exists()  # the transaction rolled back
    assert not Allocation.objects.exists()


@pytest.mark.postgres
def test_the_constraint_refuses_the_batch_and_only_the_booked_job_waits(stack, devices):
    """A booking the pass's reads do not see (its check blinded here) makes the exclusion
    constraint refuse the batch; the fallback places the other jobs and leaves that one
    waiting, its devices not held twice."""
    first, second, third = three_jobs(stack)
    plan = scheduler.plan(NOW)
    taken = Accelerator.objects.get(pk=plan.placed[second.pk][1])
    reservation_create(
        user=UserFactory(debian_member_source="staff"), host=taken.host, stack=stack,
        start=NOW + H, end=NOW + 3 * H, accelerators=[taken], now=NOW,
    )  # fmt: skip

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(booking_services, "_overlaps", lambda spans, hold: False)  # blind check
        result = schedule_with(plan)

    assert set(result.placed) == {first.pk, third.pk}
    second.refresh_from_db()
    assert (second.state, second.host_id) == ("queued", None)
    assert "booked meanwhile" in second.wait_reason
    assert held(second) == set()
    assert_no_device_held_twice()
    for job in (first, third):
        assert held(job) == set(plan.placed[job.pk])


def test_a_booking_made_after_the_plan_is_seen_by_the_check_on_any_database(stack, devices):
    """The locking path (SQLite has no exclusion constraint): the devices are locked, then read;
    a reservation made between the plan and the write refuses its job, not the others."""
    first, second, third = three_jobs(stack)
    plan = scheduler.plan(NOW)
    taken = Accelerator.objects.get(pk=plan.placed[third.pk][0])
    reservation_create(
        user=UserFactory(debian_member_source="staff"), host=taken.host, stack=stack,
        start=NOW + H, end=NOW + 2 * H, accelerators=[taken], now=NOW,
    )  # fmt: skip

    result = schedule_with(plan)

    assert set(result.placed) == {first.pk, second.pk}
    third.refresh_from_db()
    assert third.state == "queued" and "booked meanwhile" in third.wait_reason
    assert held(third) == set()
    assert_no_device_held_twice()


@pytest.mark.postgres
def test_a_pass_places_and_queues_jobs_whose_ids_pass_32_bits(stack):
    """Ids are 64-bit (BigAutoField): the batch's arrays must be too, or a portal whose jobs or
    devices passed 2^31 could place nothing."""
    big = 2**31 + 10
    host = HostFactory(name="gpu1", id=big)
    host.stacks.add(stack)
    AcceleratorFactory(host=host, index=0, id=big + 1)
    project = PartnerProjectFactory(max_concurrent_devices=8)
    placed, waiting = (
        JobFactory(project=project, stack=stack, count=1, walltime=2 * H, id=big + 2 + i,
                   queued_at=NOW - H + i * timedelta(seconds=1))
        for i in range(2)
    )  # fmt: skip

    result = scheduler.schedule(NOW)

    assert set(result.placed) == {placed.pk}
    placed.refresh_from_db()
    waiting.refresh_from_db()
    assert placed.state == "scheduled" and held(placed) == {big + 1}
    assert waiting.queue_position == 1 and waiting.wait_reason
