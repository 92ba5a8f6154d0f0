"""The fair-share scheduler: who goes first, where jobs fit between reservations, quotas."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from portal.booking import services as booking_services
from portal.booking.models import Allocation
from portal.booking.services import Conflict, reservation_create
from portal.inventory.models import Accelerator
from portal.jobs import estimates, scheduler
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


def test_a_job_whose_devices_were_taken_waits_and_the_others_are_still_placed(stack, devices):
    project = PartnerProjectFactory()
    first, second = queue(project, stack, 2, count=2)
    plan = scheduler.plan(NOW)
    taken = plan.placed[first.pk][0]
    reservation_create(  # one of the first job's devices, booked between the plan and the write
        user=UserFactory(debian_member_source="staff"), host=devices[0].host, stack=stack,
        start=NOW, end=NOW + H, accelerators=[Accelerator.objects.get(pk=taken)], now=NOW,
    )  # fmt: skip

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "plan", lambda now: plan)
        result = scheduler.schedule(NOW)

    assert list(result.placed) == [second.pk]
    first.refresh_from_db()
    assert first.state == "queued" and "taken a moment ago" in first.wait_reason
    assert Job.objects.get(pk=second.pk).state == "scheduled"
    assert Allocation.objects.filter(job=second).count() == 2
    assert not Allocation.objects.filter(job=first).exists()


def test_it_never_holds_one_device_twice_in_a_pass(stack, devices):
    """The placer hands each device out once; the writer checks anyway."""
    project = PartnerProjectFactory()
    first, second = queue(project, stack, 2)
    plan = scheduler.plan(NOW)
    plan.placed[second.pk] = plan.placed[first.pk]  # a plan gone wrong

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "plan", lambda now: plan)
        result = scheduler.schedule(NOW)

    assert list(result.placed) == [first.pk]
    assert Job.objects.get(pk=second.pk).state == "queued"


@pytest.mark.postgres
def test_the_exclusion_constraint_rolls_back_only_the_refused_jobs_savepoint(stack, devices):
    project = PartnerProjectFactory()
    first, second = queue(project, stack, 2, count=2)
    plan = scheduler.plan(NOW)
    taken = plan.placed[first.pk][0]
    reservation_create(
        user=UserFactory(debian_member_source="staff"), host=devices[0].host, stack=stack,
        start=NOW, end=NOW + H, accelerators=[Accelerator.objects.get(pk=taken)], now=NOW,
    )  # fmt: skip

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scheduler, "plan", lambda now: plan)
        patch.setattr(booking_services, "_overlaps", lambda spans, hold: False)  # blind check
        result = scheduler.schedule(NOW)

    assert list(result.placed) == [second.pk]
    first.refresh_from_db()  # its claim was rolled back with its savepoint
    assert (first.state, first.host_id) == ("queued", None)
    assert not Allocation.objects.filter(job=first).exists()
    assert Allocation.objects.filter(job=second).count() == 2


def test_a_pass_stores_each_waiting_jobs_turn_but_no_estimate(stack, devices):
    a, b = PartnerProjectFactory(slug="a"), PartnerProjectFactory(slug="b")
    placed = queue(a, stack, 1, count=4, waited=3 * H)  # takes all four devices
    a_waits = queue(a, stack, 2, waited=2 * H)
    b_waits = queue(b, stack, 2, waited=H)
    never = JobFactory(project=b, stack=stack, count=5, queued_at=NOW - H / 2)  # one host of 4
    held_back = JobFactory(project=PartnerProjectFactory(state="suspended"), stack=stack)

    result = scheduler.schedule(NOW)

    assert list(result.placed) == [placed[0].pk]
    rows = dict(Job.objects.values_list("pk", "queue_position"))
    # Usage counts what ran (the placed job not yet): a's jobs waited longest, then turns
    # alternate, each charged as if it fitted.
    assert [rows[j.pk] for j in (a_waits[0], b_waits[0], a_waits[1], b_waits[1], never)] == [
        1, 2, 3, 4, 5,
    ]  # fmt: skip
    assert rows[placed[0].pk] is None and rows[held_back.pk] is None
    assert not Job.objects.filter(estimated_start__isnull=False).exists()  # estimates.py's
    assert result.estimates_stale  # it placed a job and made the first turns

    estimates.estimate_queue(NOW)

    starts = dict(Job.objects.values_list("pk", "estimated_start"))
    # The four devices are held for an hour: the next slot starts when they are free.
    assert starts[b_waits[0].pk] == NOW + H and starts[a_waits[1].pk] == NOW + H
    assert starts[never.pk] is None  # nothing fits within the horizon
    assert starts[placed[0].pk] is None and starts[held_back.pk] is None
    assert rows == dict(Job.objects.values_list("pk", "queue_position"))  # turns untouched


def test_a_pass_that_moved_nothing_leaves_the_estimates_as_they_are(stack, devices):
    project = PartnerProjectFactory()
    reservation_create(  # all four devices are booked for the first hour
        user=UserFactory(debian_member_source="staff"), host=devices[0].host, stack=stack,
        start=NOW, end=NOW + H, accelerators=devices, now=NOW,
    )  # fmt: skip
    job = JobFactory(project=project, stack=stack, count=4, walltime=H)
    scheduler.schedule(NOW)
    estimates.estimate_queue(NOW)
    stored = Job.objects.values_list("queue_position", "estimated_start", "wait_reason")
    before = stored.get(pk=job.pk)
    assert before[:2] == (1, NOW + H) and before[2].startswith("No 4 matching devices free")

    again = scheduler.schedule(NOW)

    assert not again.estimates_stale  # no pass asks for estimates when nothing moved
    assert stored.get(pk=job.pk) == before  # the pass kept the estimate, the task the turn


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_estimates_wait_while_a_pass_writes(stack, devices):
    """The pass and the estimate task write the same jobs one at a time (`queue_lock`), so their
    multi-row updates never wait on each other crosswise; the task has its own connection."""
    reservation_create(  # all four devices are booked for the first hour
        user=UserFactory(debian_member_source="staff"), host=devices[0].host, stack=stack,
        start=NOW, end=NOW + H, accelerators=devices, now=NOW,
    )  # fmt: skip
    job = JobFactory(project=PartnerProjectFactory(), stack=stack, count=4, walltime=H)
    scheduler.schedule(NOW)
    started, finished = threading.Event(), threading.Event()
    failed = []

    def estimate():
        try:
            started.set()
            estimates.estimate_queue(NOW)
        except Exception as exc:  # the test must show it
            failed.append(exc)
        finally:
            connection.close()
            finished.set()

    with scheduler.queue_lock():  # as a pass does while it writes
        thread = threading.Thread(target=estimate)
        thread.start()
        started.wait()
        assert not finished.wait(0.5)  # it waits for the lock
        assert Job.objects.get(pk=job.pk).estimated_start is None
    thread.join()

    assert failed == []
    assert Job.objects.get(pk=job.pk).estimated_start == NOW + H


def test_it_estimates_each_shape_once_and_only_the_first_jobs(stack, devices, monkeypatch):
    project = PartnerProjectFactory()
    queue(project, stack, 5, count=4, walltime=H)  # placed: one after another they wait
    reads = []
    real = estimates.earliest_starts
    monkeypatch.setattr(
        estimates,
        "earliest_starts",
        lambda need, asks, **kw: reads.append(1) or real(need, asks, **kw),
    )
    monkeypatch.setattr(scheduler, "ESTIMATED", 3)

    scheduler.schedule(NOW)
    assert reads == []  # the pass estimates nothing
    assert estimates.estimate_queue(NOW) == 3

    assert len(reads) == 1  # one kind of device
    estimated = Job.objects.filter(estimated_start__isnull=False)
    assert sorted(estimated.values_list("queue_position", flat=True)) == [1, 2, 3]


def test_it_clears_the_turn_and_estimate_of_jobs_that_stopped_waiting(stack, devices):
    project = PartnerProjectFactory()
    reservation_create(  # all four devices are booked for the first hour
        user=UserFactory(debian_member_source="staff"), host=devices[0].host, stack=stack,
        start=NOW, end=NOW + H, accelerators=devices, now=NOW,
    )  # fmt: skip
    starts, cancelled = queue(project, stack, 2, count=2, walltime=H)
    scheduler.schedule(NOW)
    estimates.estimate_queue(NOW)
    assert set(Job.objects.values_list("queue_position", "estimated_start")) == {
        (1, NOW + H), (2, NOW + H),
    }  # fmt: skip
    Job.objects.filter(pk=cancelled.pk).update(state=Job.State.CANCELLED)

    scheduler.schedule(NOW + H)  # the devices are free: the first job is placed

    starts.refresh_from_db()
    assert (starts.state, starts.queue_position, starts.estimated_start) == (
        "scheduled", None, None,
    )  # fmt: skip
    cancelled.refresh_from_db()
    assert cancelled.queue_position is None  # the pass's column
    estimates.estimate_queue(NOW + H)
    assert not Job.objects.filter(estimated_start__isnull=False).exists()


def test_it_clears_the_estimate_of_a_job_that_fell_behind_the_first_turns(
    stack, devices, monkeypatch
):
    monkeypatch.setattr(scheduler, "ESTIMATED", 1)
    reservation_create(  # all four devices are booked for the first hour
        user=UserFactory(debian_member_source="staff"), host=devices[0].host, stack=stack,
        start=NOW, end=NOW + H, accelerators=devices, now=NOW,
    )  # fmt: skip
    slow, fast = PartnerProjectFactory(slug="slow"), PartnerProjectFactory(slug="fast")
    late = JobFactory(project=slow, stack=stack, count=4, walltime=H, queued_at=NOW - H)
    scheduler.schedule(NOW)
    estimates.estimate_queue(NOW)
    assert Job.objects.values_list("queue_position", "estimated_start").get(pk=late.pk) == (
        1, NOW + H,
    )  # fmt: skip
    past_usage(slow, stack, devices[0], hours=10)  # slow used more: fast's new job goes first
    first = JobFactory(project=fast, stack=stack, count=4, walltime=H)

    assert scheduler.schedule(NOW).estimates_stale
    estimates.estimate_queue(NOW)

    stored = dict(Job.objects.values_list("pk", "queue_position"))
    assert (stored[first.pk], stored[late.pk]) == (1, 2)
    starts = dict(Job.objects.values_list("pk", "estimated_start"))
    assert (starts[first.pk], starts[late.pk]) == (NOW + H, None)


def test_a_pass_writes_its_placements_in_one_transaction(
    stack, devices, django_assert_max_num_queries
):
    project = PartnerProjectFactory()
    queue(project, stack, 4)
    with django_assert_max_num_queries(40):  # a transaction per job was 7 queries each
        result = scheduler.schedule(NOW)
    assert len(result.placed) == 4


def test_it_reads_the_calendar_once_for_every_count_and_walltime_of_a_kind_of_device(
    stack, devices, monkeypatch
):
    project = PartnerProjectFactory()
    for hours in (1, 2, 3, 5, 8):
        for count in (5, 6):  # never fit on four devices: they wait
            JobFactory(project=project, stack=stack, count=count, walltime=hours * H)
    asked = []
    real = estimates.earliest_starts
    monkeypatch.setattr(
        estimates,
        "earliest_starts",
        lambda need, asks, **kw: asked.append(set(asks)) or real(need, asks, **kw),
    )

    scheduler.schedule(NOW)
    estimates.estimate_queue(NOW)

    grace = scheduler.stop_grace()
    assert asked == [{(c, h * H + grace) for h in (1, 2, 3, 5, 8) for c in (5, 6)}]
    estimated = Job.objects.filter(queue_position__isnull=False)
    assert estimated.count() == 10
    assert not estimated.filter(estimated_start__isnull=False).exists()


def test_it_estimates_each_walltime_where_its_start_differs(stack, devices):
    project = PartnerProjectFactory()
    reservation_create(  # all four devices are booked from 3 h on, for a day
        user=UserFactory(debian_member_source="staff"), host=devices[0].host, stack=stack,
        start=NOW + 3 * H, end=NOW + 27 * H, accelerators=devices, now=NOW,
    )  # fmt: skip
    blocker = JobFactory(project=project, stack=stack, count=4, walltime=H, queued_at=NOW - H)
    jobs = {hours: JobFactory(project=project, stack=stack, count=4, walltime=hours * H)
            for hours in (1, 2, 3, 4)}  # fmt: skip

    scheduler.schedule(NOW)  # the blocker takes the four devices for the first hour
    estimates.estimate_queue(NOW)

    assert Job.objects.get(pk=blocker.pk).state == "scheduled"
    starts = {h: Job.objects.get(pk=j.pk).estimated_start for h, j in jobs.items()}
    assert starts == {1: NOW + H, 2: NOW + H, 3: NOW + 27 * H, 4: NOW + 27 * H}
