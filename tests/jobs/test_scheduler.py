"""The fair-share scheduler: who goes first, where jobs fit between reservations, quotas."""

from datetime import UTC, datetime, timedelta

import pytest

from portal.booking.models import Allocation
from portal.booking.services import Conflict, reservation_create
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

# Not tests.helpers.NOW (off the 15-minute grid): these tests book from now.
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture
def stack(db):
    return DriverStackFactory(name="cuda-12")


@pytest.fixture
def devices(stack):
    """One host with four GPUs."""
    host = HostFactory(name="gpu1")
    host.stacks.add(stack)
    return [AcceleratorFactory(host=host, index=i) for i in range(4)]


@pytest.fixture(autouse=True)
def no_grace(settings):
    settings.JOBS_STOP_GRACE_SECONDS = 0
    settings.JOBS_USAGE_HALF_LIFE_HOURS = 24


def past_usage(project, stack, device, hours, ended_ago=H):
    """A finished job of the project that held a device for `hours`."""
    job = JobFactory(project=project, stack=stack, state=Job.State.SUCCEEDED)
    end = NOW - ended_ago
    Allocation.objects.create(accelerator=device, job=job, start=end - hours * H, end=end)


def queue(project, stack, n, *, waited=H, **kwargs):
    return [
        JobFactory(project=project, stack=stack, queued_at=NOW - waited + i * timedelta(seconds=1),
                   **kwargs)
        for i in range(n)
    ]  # fmt: skip


def placed_projects(result, jobs_by_pk):
    return sorted(jobs_by_pk[pk].project.slug for pk in result.placed)


def test_it_gives_free_devices_to_the_project_that_used_less(stack, devices):
    busy, idle = PartnerProjectFactory(slug="busy"), PartnerProjectFactory(slug="idle")
    past_usage(busy, stack, devices[0], hours=50)
    # busy's jobs have waited longer, but idle has used less: idle goes first.
    busy_jobs = queue(busy, stack, 3, waited=5 * H)
    idle_jobs = queue(idle, stack, 3, waited=H)
    Allocation.objects.create(
        accelerator=devices[0], job=JobFactory(project=busy, stack=stack, state="running"),
        start=NOW - H, end=NOW + 10 * H,
    )  # fmt: skip

    result = scheduler.schedule(NOW)

    placed = {Job.objects.get(pk=pk).project.slug for pk in result.placed}
    assert placed == {"idle"}
    assert len(result.placed) == 3  # three free devices, all to the project that used less
    assert all(Job.objects.get(pk=j.pk).state == "scheduled" for j in idle_jobs)
    assert all(Job.objects.get(pk=j.pk).state == "queued" for j in busy_jobs)


def test_it_interleaves_projects_with_equal_shares_and_usage(stack, devices):
    a, b = PartnerProjectFactory(slug="a"), PartnerProjectFactory(slug="b")
    queue(a, stack, 4, waited=3 * H)  # a's jobs came first
    queue(b, stack, 4, waited=H)

    result = scheduler.schedule(NOW)

    assert sorted(Job.objects.get(pk=pk).project.slug for pk in result.placed) == [
        "a", "a", "b", "b",
    ]  # fmt: skip


def test_it_weighs_usage_by_share(stack, devices):
    big, small = PartnerProjectFactory(slug="big", share=3), PartnerProjectFactory(slug="small")
    queue(big, stack, 4)
    queue(small, stack, 4)

    result = scheduler.schedule(NOW)

    assert sorted(Job.objects.get(pk=pk).project.slug for pk in result.placed) == [
        "big", "big", "big", "small",
    ]  # fmt: skip


def test_it_lets_past_usage_fade_with_the_half_life(stack, devices):
    old, recent = PartnerProjectFactory(slug="old"), PartnerProjectFactory(slug="recent")
    past_usage(old, stack, devices[0], hours=40, ended_ago=30 * 24 * H)  # a month ago: faded
    past_usage(recent, stack, devices[1], hours=4, ended_ago=H)

    usage = scheduler.decayed_usage(NOW)

    assert usage[old.pk] < 0.001 < usage[recent.pk]
    assert usage[recent.pk] == pytest.approx(4 * 0.5 ** (1 / 24), rel=1e-6)


def test_it_starts_a_job_only_if_it_ends_before_the_next_reservation(stack, devices):
    member = UserFactory(debian_member_source="staff")
    for d in devices[1:]:  # three devices are booked from now on
        reservation_create(
            user=member, host=d.host, stack=stack, start=NOW, end=NOW + 8 * H,
            accelerators=[d], now=NOW,
        )  # fmt: skip
    member2 = UserFactory(debian_member_source="staff")
    reservation_create(  # device 0 is free for two hours, then booked
        user=member2, host=devices[0].host, stack=stack, start=NOW + 2 * H, end=NOW + 4 * H,
        accelerators=[devices[0]], now=NOW,
    )  # fmt: skip
    project = PartnerProjectFactory()
    long = JobFactory(project=project, stack=stack, walltime=3 * H, queued_at=NOW - 2 * H)
    short = JobFactory(project=project, stack=stack, walltime=2 * H, queued_at=NOW - H)

    result = scheduler.schedule(NOW)

    assert list(result.placed) == [short.pk]  # backfilled before the 11:00 booking
    long.refresh_from_db()
    assert long.state == "queued"
    assert "No 1 matching device free for its walltime" in long.wait_reason
    held = Allocation.objects.get(job=short)
    assert (held.accelerator, held.start, held.end) == (devices[0], NOW, NOW + 2 * H)


def test_it_holds_a_project_over_its_monthly_quota_with_the_reason(stack, devices):
    project = PartnerProjectFactory(device_hours_per_month=10)
    past_usage(project, stack, devices[0], hours=9)
    job = queue(project, stack, 1, walltime=2 * H)[0]

    result = scheduler.schedule(NOW)

    assert result.placed == {}
    job.refresh_from_db()
    assert job.state == "queued"
    assert job.wait_reason.startswith("Held: over the monthly quota (9.0 of 10 device-hours")


def test_it_keeps_a_project_within_its_concurrent_devices(stack, devices):
    project = PartnerProjectFactory(max_concurrent_devices=3)
    queue(project, stack, 2, count=2)

    result = scheduler.schedule(NOW)

    assert len(result.placed) == 1
    waiting = Job.objects.get(state="queued")
    assert "holds 2 of its 3 concurrent devices" in waiting.wait_reason


def test_it_places_multi_device_jobs_on_one_host_with_matching_devices(stack, devices):
    other = HostFactory(name="gpu2")
    other.stacks.add(stack)
    AcceleratorFactory(host=other, index=0, memory_mib=16384, arch="sm_75")
    project = PartnerProjectFactory()
    big = JobFactory(project=project, stack=stack, count=3, hwspec="cuda:sm_90",
                     min_memory_mib=40000)  # fmt: skip

    result = scheduler.schedule(NOW)

    assert len(result.placed[big.pk]) == 3
    big.refresh_from_db()
    assert big.host == devices[0].host


def test_a_job_holds_its_devices_against_bookings(stack, devices):
    project = PartnerProjectFactory()
    job = JobFactory(project=project, stack=stack, count=4, walltime=2 * H)
    scheduler.schedule(NOW)
    member = UserFactory(debian_member_source="staff")

    with pytest.raises(Conflict) as refused:
        reservation_create(
            user=member, host=devices[0].host, stack=stack, start=NOW + H, end=NOW + 3 * H,
            accelerators=[devices[0]], now=NOW,
        )  # fmt: skip
    assert "held by a training job" in refused.value.message
    assert Job.objects.get(pk=job.pk).state == "scheduled"


def test_it_leaves_a_job_waiting_when_its_devices_were_taken_after_the_plan(stack, devices):
    project = PartnerProjectFactory()
    job = JobFactory(project=project, stack=stack, count=4)
    plan = scheduler.plan(NOW)
    member = UserFactory(debian_member_source="staff")
    reservation_create(  # a user books one of them between the plan and the write
        user=member, host=devices[0].host, stack=stack, start=NOW, end=NOW + H,
        accelerators=[devices[2]], now=NOW,
    )  # fmt: skip

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "plan", lambda now: plan)
        result = scheduler.schedule(NOW)

    assert result.placed == {}
    job.refresh_from_db()
    assert job.state == "queued" and "taken a moment ago" in job.wait_reason
    assert not Allocation.objects.filter(job=job).exists()
