"""The job pages: the queue in fair-share order, a job, submitting, usage, what was trained."""

from datetime import UTC, datetime, timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal.booking.models import Allocation
from portal.celery import app
from portal.jobs import estimates, scheduler, selectors, tasks
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
from tests.helpers import NOW

H = timedelta(hours=1)


pytestmark = pytest.mark.usefixtures("frozen")

CONFIRMED = {"confirmed": "1"}  # what the confirmation page or dialog sends


@pytest.fixture(autouse=True)
def no_grace(settings):
    settings.JOBS_STOP_GRACE_SECONDS = 0


@pytest.fixture
def stack(db):
    return DriverStackFactory(name="cuda-12")


@pytest.fixture
def devices(stack):
    host = HostFactory(name="gpu1")
    host.stacks.add(stack)
    return [AcceleratorFactory(host=host, index=i) for i in range(4)]


@pytest.fixture
def member(db):
    return PartnerMembershipFactory(
        user__username="alice", user__time_zone="Europe/Berlin", project__slug="speech",
        project__max_walltime_hours=24,
    )  # fmt: skip


@pytest.fixture
def alice(client, member):
    client.force_login(member.user)
    return client


def held(job, device, start, end, active=True):
    return Allocation.objects.create(
        accelerator=device, job=job, start=start, end=end, active=active
    )


# -- The queue ------------------------------------------------------------------------------


def test_it_orders_the_queue_by_fair_share(alice, member, stack, devices):
    busy = member.project
    idle = PartnerProjectFactory(name="Idle", slug="idle")
    past = JobFactory(project=busy, stack=stack, state="succeeded")
    held(past, devices[0], NOW - 30 * H, NOW - 10 * H)
    # busy's jobs waited longest, but idle used less (0 against about 19 decayed device-hours):
    # idle's first job goes first. Each turn is charged (30 device-hours for idle's job), so
    # busy's two short jobs come next, and idle's second job last.
    b1, b2 = (JobFactory(project=busy, stack=stack, queued_at=NOW - (5 - i) * H) for i in range(2))
    i1, i2 = (
        JobFactory(project=idle, stack=stack, queued_at=NOW - H + i * timedelta(seconds=1),
                   walltime=30 * H)
        for i in range(2)
    )  # fmt: skip

    scheduler.store_queue(NOW)

    assert turns() == [i1.pk, b1.pk, b2.pk, i2.pk]
    page = alice.get(reverse("jobs:queue")).content.decode()
    assert page.index(f"#{i1.pk} {i1.name}") < page.index(f"#{b1.pk} {b1.name}")


def turns():
    """Waiting jobs in the turn order the scheduler stored."""
    waiting = Job.objects.filter(queue_position__isnull=False).order_by("queue_position")
    return list(waiting.values_list("pk", flat=True))


def test_it_weighs_usage_by_share(member, stack, devices):
    small, large = member.project, PartnerProjectFactory(slug="large", share=4)
    for project, device in ((small, devices[0]), (large, devices[1])):
        held(JobFactory(project=project, stack=stack, state="succeeded"), device,
             NOW - 12 * H, NOW - 2 * H)  # fmt: skip
    first = JobFactory(project=small, stack=stack, queued_at=NOW - 2 * H)
    second = JobFactory(project=large, stack=stack, queued_at=NOW - H)
    scheduler.store_queue(NOW)
    assert turns() == [second.pk, first.pk]


def test_it_shows_wait_reasons_estimates_and_held_back_jobs(
    alice, member, stack, devices, monkeypatch
):
    DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    fits = JobFactory(project=member.project, stack=stack, queued_at=NOW - 3 * H,
                      wait_reason="Held: over the monthly quota.")  # fmt: skip
    never = JobFactory(project=member.project, stack=stack, hwspec="rocm", queued_at=NOW - 2 * H)
    late = JobFactory(project=member.project, stack=stack, queued_at=NOW - H)
    suspended = JobFactory(project=PartnerProjectFactory(state="suspended"), stack=stack)
    running = JobFactory(project=member.project, stack=stack, state="running",
                         host=devices[0].host, started_at=NOW - H)  # fmt: skip
    monkeypatch.setattr(scheduler, "ESTIMATED", 2)
    scheduler.store_queue(NOW)  # what each pass of the scheduler stores
    estimates.estimate_queue(NOW)  # and the estimates of the first turns

    response = alice.get(reverse("jobs:queue"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "Held: over the monthly quota." in page
    # Free now; the estimate is the next 15-minute step, shown in Berlin time.
    row = page[page.index(f"#{fits.pk} ") :]
    assert "Mon 23 Nov 2026 10:15 CET" in row[: row.index("</tr>")]
    row = page[page.index(f"#{never.pk} ") :]
    assert "no slot within the horizon" in row[: row.index("</tr>")]
    row = page[page.index(f"#{late.pk} ") :]
    assert "not estimated" in row[: row.index("</tr>")]
    held_back = page[page.index("Held back") :]
    assert f"#{suspended.pk} " in held_back
    running_part = page[page.index("<h2>Running") : page.index("<h2>Scheduled")]
    assert f"#{running.pk} {running.name}" in running_part and "gpu1" in running_part


def row_of(page, job):
    at = page.index(f"#{job.pk} ")
    return page[page.rindex("<tr>", 0, at) : page.index("</tr>", at)]


def test_it_shows_the_stored_turn_and_says_when_a_job_came_after_the_last_pass(
    alice, member, stack, devices
):
    first = JobFactory(project=member.project, stack=stack, queued_at=NOW - 2 * H)
    scheduler.store_queue(NOW)
    estimates.estimate_queue(NOW)
    later = JobFactory(project=member.project, stack=stack, queued_at=NOW - H)

    page = alice.get(reverse("jobs:queue")).content.decode()

    assert "<td>1</td>" in row_of(page, first)
    assert "<td>new</td>" in row_of(page, later) and "not estimated" in row_of(page, later)
    assert page.index(f"#{first.pk} ") < page.index(f"#{later.pk} ")
    detail = alice.get(reverse("jobs:job_detail", args=[first.pk])).content.decode()
    assert "1 in the queue" in detail and "Mon 23 Nov 2026 10:15 CET" in detail


@pytest.fixture
def eager():
    """Celery runs a task where it is sent: here, the estimates a pass asks for."""
    before = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = before


def test_the_queue_shows_the_next_turns_estimates_once_a_pass_has_placed_the_first_job(
    alice, member, stack, devices, monkeypatch, frozen, eager
):
    """Beat's pass as a member sees it: the pass stores turns, the estimate task it asks for
    (run here at once) the starts of the first turns; a placed job leaves the waiting list with
    its estimate, and the next jobs show theirs."""
    monkeypatch.setattr(scheduler, "ESTIMATED", 2)
    running = JobFactory(project=member.project, stack=stack, state="running",
                         host=devices[0].host, started_at=NOW - H)  # fmt: skip
    free_at = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
    for device in devices:
        held(running, device, NOW - H, free_at)
    first, second, third = (
        JobFactory(project=member.project, stack=stack, count=4, walltime=H,
                   queued_at=NOW - (3 - i) * H)
        for i in range(3)
    )  # fmt: skip

    assert tasks.schedule() == 0  # nothing fits before the running job's end

    page = alice.get(reverse("jobs:queue")).content.decode()
    assert "Mon 23 Nov 2026 12:00 CET" in row_of(page, first)
    assert "Mon 23 Nov 2026 12:00 CET" in row_of(page, second)  # the queue ahead not counted
    assert "not estimated" in row_of(page, third)

    frozen.move_to(free_at)
    Job.objects.filter(pk=running.pk).update(state="succeeded", ended_at=free_at)
    assert tasks.schedule() == 1  # the first job takes the four devices for an hour

    page = alice.get(reverse("jobs:queue")).content.decode()
    waiting = page[page.index("<h2>Waiting") :]
    assert f"#{first.pk} " in page[page.index("<h2>Scheduled") : page.index("<h2>Waiting")]
    assert f"#{first.pk} " not in waiting
    assert "<td>1</td>" in row_of(waiting, second) and "<td>2</td>" in row_of(waiting, third)
    assert "Mon 23 Nov 2026 13:00 CET" in row_of(waiting, second)
    assert "Mon 23 Nov 2026 13:00 CET" in row_of(waiting, third)
    assert Job.objects.get(pk=first.pk).estimated_start is None
    detail = alice.get(reverse("jobs:job_detail", args=[first.pk])).content.decode()
    assert "Earliest start" not in detail


def test_the_queue_costs_as_many_queries_with_60_waiting_jobs_as_with_10(
    alice, member, stack, devices
):
    """The page reads what the scheduler stored: its queries do not grow with the queue."""
    DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    projects = [member.project, *(PartnerProjectFactory(slug=f"p{i}") for i in range(3))]
    PartnerMembershipFactory(user=member.user, project=projects[1])
    shapes = [{"count": 1}, {"count": 2, "hwspec": "cuda"}, {"count": 4, "walltime": 3 * H},
              {"hwspec": "rocm"}, {"min_memory_mib": 1024}]  # fmt: skip
    JobFactory(project=PartnerProjectFactory(state="suspended"), stack=stack)  # held back
    JobFactory(project=projects[2], stack=stack, state="running", host=devices[0].host,
               started_at=NOW - H)  # fmt: skip

    def add(n):
        for i in range(n):
            project, shape = projects[i % len(projects)], shapes[i % len(shapes)]
            JobFactory(project=project, stack=stack, queued_at=NOW - i * timedelta(minutes=1),
                       **shape)  # fmt: skip
        scheduler.store_queue(NOW)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            response = alice.get(reverse("jobs:queue"))
        assert response.status_code == 200
        return len(captured), response.content.decode()

    add(10)
    few, page = queries()
    assert page.count("Waiting for the next scheduler pass.") == 10
    add(50)
    many, page = queries()
    assert page.count("Waiting for the next scheduler pass.") == 60
    assert few == many


def test_it_lists_the_waiting_jobs_a_page_at_a_time(alice, member, stack, monkeypatch):
    monkeypatch.setattr("portal.jobs.views.WAITING_PER_PAGE", 3)
    jobs = [JobFactory(project=member.project, stack=stack, queued_at=NOW - (5 - i) * H)
            for i in range(5)]  # fmt: skip
    scheduler.store_queue(NOW)

    first = alice.get(reverse("jobs:queue")).content.decode()
    second = alice.get(reverse("jobs:queue"), {"page": 2}).content.decode()

    assert "5 waiting jobs, 1-3 shown" in first and "Page 1 of 2" in first
    assert all(f"#{j.pk} " in first for j in jobs[:3]) and f"#{jobs[3].pk} " not in first
    assert "5 waiting jobs, 4-5 shown" in second
    assert all(f"#{j.pk} " in second for j in jobs[3:])


def test_it_bounds_the_running_and_scheduled_jobs_listed(
    alice, member, stack, devices, monkeypatch
):
    monkeypatch.setattr("portal.jobs.views.HOLDING_SHOWN", 2)
    for state in ("running", "running", "running", "scheduled"):
        JobFactory(project=member.project, stack=stack, state=state, host=devices[0].host,
                   started_at=NOW - H)  # fmt: skip
    page = alice.get(reverse("jobs:queue")).content.decode()
    assert "3 jobs running on their devices, the first 2 shown" in page
    assert "1 job placed on devices" in page and "shown)" not in page


def test_it_links_only_the_viewers_own_jobs_from_the_queue(alice, member, stack):
    mine = JobFactory(project=member.project, stack=stack)
    theirs = JobFactory(stack=stack)
    page = alice.get(reverse("jobs:queue")).content.decode()
    assert reverse("jobs:job_detail", args=[mine.pk]) in page
    assert reverse("jobs:job_detail", args=[theirs.pk]) not in page
    assert f"#{theirs.pk} {theirs.name}" in page


# -- A job ----------------------------------------------------------------------------------


def test_it_shows_a_job_to_its_project_and_staff_only(client, member, stack, staff):
    job = JobFactory(project=member.project, stack=stack, script="echo secret-step")
    url = reverse("jobs:job_detail", args=[job.pk])
    for user, expected in [
        (member.user, 200),
        (PartnerMembershipFactory(project=member.project).user, 200),
        (PartnerMembershipFactory().user, 404),
        (UserFactory(), 404),
        (staff, 200),
    ]:
        client.force_login(user)
        for path in (url, reverse("jobs:job_log", args=[job.pk])):
            assert client.get(path).status_code == expected, (user, path)
    client.force_login(PartnerMembershipFactory().user)
    assert "secret-step" not in client.get(url).content.decode()
    assert client.post(reverse("jobs:job_cancel", args=[job.pk]), CONFIRMED).status_code == 404
    client.logout()
    assert client.get(url).status_code == 302
    job.refresh_from_db()
    assert job.state == "queued"


def test_an_arrays_task_says_where_it_is_and_what_the_next_pass_writes(alice, member, devices):
    response = alice.post(reverse("jobs:submit"), form(member, array="4"))
    first = Job.objects.get()
    assert response.url == reverse("jobs:job_detail", args=[first.pk])
    page = alice.get(response.url).content.decode()
    link = f'<a href="{reverse("jobs:job_detail", args=[first.pk])}">#{first.pk}</a>'
    assert (
        f"task 0 of 4 of array {link}; the other 3 tasks are queued at the scheduler's next pass"
    ) in page

    tasks.schedule()  # the pass writes them, then places what fits

    page = alice.get(response.url).content.decode()
    assert f"task 0 of 4 of array {link}</dd>" in page  # nothing pending now
    last = Job.objects.get(array=first, array_index=3)
    page = alice.get(reverse("jobs:job_detail", args=[last.pk])).content.decode()
    assert f"task 3 of 4 of array {link}</dd>" in page


def test_it_shows_the_log_tail_in_the_users_zone_and_the_whole_log_as_text(alice, member, stack):
    log = "".join(f"line {i:04d}\n" for i in range(1, 301))
    job = JobFactory(project=member.project, stack=stack, state="running", log=log,
                     started_at=datetime(2026, 11, 23, 8, 0, tzinfo=UTC),
                     env={"EPOCHS": "3"})  # fmt: skip

    page = alice.get(reverse("jobs:job_detail", args=[job.pk])).content.decode()

    assert "line 0101" in page and "line 0300" in page and "line 0100" not in page
    assert "Mon 23 Nov 2026 09:00 CET" in page  # started, in Berlin time
    assert "EPOCHS=3" in page and "python3 train.py" in page
    assert f'href="{reverse("jobs:job_detail", args=[job.pk])}#log"' in page
    response = alice.get(reverse("jobs:job_log", args=[job.pk]))
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="job-{job.pk}.log"'
    assert response.content.decode() == log


def test_it_cancels_a_waiting_job_and_asks_a_running_one_to_stop(alice, member, stack):
    waiting = JobFactory(project=member.project, stack=stack)
    running = JobFactory(project=member.project, stack=stack, state="running")
    response = alice.post(reverse("jobs:job_cancel", args=[waiting.pk]), CONFIRMED, follow=True)
    assert "Cancelled." in response.content.decode()
    alice.post(reverse("jobs:job_cancel", args=[running.pk]), CONFIRMED)
    waiting.refresh_from_db()
    running.refresh_from_db()
    assert (waiting.state, running.state, running.stop_requested) == (
        "cancelled", "running", True
    )  # fmt: skip
    response = alice.post(reverse("jobs:job_cancel", args=[waiting.pk]), CONFIRMED, follow=True)
    assert "finished already" in response.content.decode()


def test_it_only_takes_posts_to_cancel(alice, member, stack):
    job = JobFactory(project=member.project, stack=stack)
    assert alice.get(reverse("jobs:job_cancel", args=[job.pk])).status_code == 405


# -- Submitting -----------------------------------------------------------------------------


def form(member, **overrides):
    return {
        "project": member.project.slug, "name": "asr", "script": "python3 train.py",
        "stack": "cuda-12", "count": "1", "hwspec": "", "min_memory_gb": "",
        "walltime_hours": "2", "env": "", "input_git_url": "", "input_git_ref": "",
        "code_licence": "MIT", "data_licence": "CC0-1.0", "model_freedom": "free",
        **overrides,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "field", "says"),
    [
        ({"env": "EPOCHS"}, "env", "Line 1: write NAME=value."),
        ({"env": "A=1\nA=2"}, "env", "A is set twice"),
        ({"env": "LD_PRELOAD=/tmp/x.so"}, "env", "set by the host"),
        ({"walltime_hours": "25"}, "walltime_hours", "at most 24 hours"),
        ({"walltime_hours": "0"}, "walltime_hours", "must be positive"),
        ({"count": "9"}, "count", "at most 4 devices at once"),
        ({"hwspec": "tpu"}, "hwspec", "Unknown hardware spec"),
        ({"input_git_url": "http://example.org/x.git"}, "input_git_url", "https://"),
        ({"input_git_url": "https://example.org/x.git", "input_git_ref": "--upload-pack=x"},
         "input_git_ref", "Not a branch or tag"),
        ({"stack": "rocm-6"}, "stack", "No host offers the stack rocm-6"),
        ({"free_only": "on"}, "stack", "The stack cuda-12 is non-free, not free."),
        ({"script": "   "}, "script", ""),
        ({"model_freedom": "maybe"}, "model_freedom", ""),
        ({"project": "elsewhere"}, "project", "valid choice"),
    ],
)  # fmt: skip
def test_it_refuses_bad_input_on_the_field_and_creates_nothing(
    alice, member, devices, overrides, field, says
):
    DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    PartnerProjectFactory(slug="elsewhere")  # approved, but not alice's
    response = alice.post(reverse("jobs:submit"), form(member, **overrides))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors, errors
    assert says in " ".join(errors[field])
    assert f'class="error" role="alert">{errors[field][0]}' in response.content.decode().replace(
        "&#x27;", "'"
    )
    assert not Job.objects.exists()


def test_it_takes_an_archive_as_input(alice, member, devices, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    archive = SimpleUploadedFile("input.tar.gz", tarball(), "application/gzip")
    response = alice.post(reverse("jobs:submit"), {**form(member), "input_archive": archive})
    assert response.status_code == 302
    job = Job.objects.get()
    assert job.input_archive.name.startswith("jobs/input/input")
    both = SimpleUploadedFile("input.tar.gz", tarball(), "application/gzip")
    response = alice.post(
        reverse("jobs:submit"),
        {**form(member, input_git_url="https://example.org/r.git"), "input_archive": both},
    )
    assert "not both" in response.context["form"].errors["input_git_url"][0]
    assert Job.objects.count() == 1


def test_it_explains_the_submit_page_to_non_members(client, user, devices):
    client.force_login(user)
    response = client.get(reverse("jobs:submit"))
    assert response.status_code == 403
    assert reverse("projects:apply") in response.content.decode()
    applied = PartnerMembershipFactory(user=user, project__state="applied")
    response = client.post(reverse("jobs:submit"), {"project": applied.project.slug})
    assert response.status_code == 403
    assert not Job.objects.exists()


# -- Usage ----------------------------------------------------------------------------------


def test_it_counts_usage_by_month_and_member_across_a_boundary_and_up_to_now(
    client, member, stack, devices
):
    project = member.project
    bob = PartnerMembershipFactory(project=project, user__username="bob").user
    done = JobFactory(project=project, submitter=member.user, stack=stack, state="succeeded")
    # Two devices from 22:00 on 31 October to 04:00 on 1 November (UTC): 2 x 2 h, then 2 x 4 h.
    for device in devices[:2]:
        held(done, device, datetime(2026, 10, 31, 22, tzinfo=UTC),
             datetime(2026, 11, 1, 4, tzinfo=UTC))  # fmt: skip
    # Running since two hours, booked for ten more: it counts up to now.
    running = JobFactory(project=project, submitter=bob, stack=stack, state="running")
    held(running, devices[2], NOW - 2 * H, NOW + 10 * H)
    # Not counted: a cancelled job's allocation, another project's, and one before the window.
    cancelled = JobFactory(project=project, stack=stack, state="cancelled")
    held(cancelled, devices[3], NOW - 5 * H, NOW - 4 * H, active=False)
    held(JobFactory(stack=stack, state="succeeded"), devices[3], NOW - 3 * H, NOW - H)
    held(done, devices[3], datetime(2025, 11, 1, tzinfo=UTC), datetime(2025, 11, 2, tzinfo=UTC))

    usage = selectors.project_usage(project, NOW)

    months = {bar.label: bar.hours for bar in usage.months}
    assert (usage.months[0].label, usage.months[-1].label) == ("2025-12", "2026-11")
    assert len(usage.months) == 12
    assert (months["2026-10"], months["2026-11"], months["2026-09"]) == (4.0, 10.0, 0.0)
    assert [(bar.label, bar.hours) for bar in usage.members] == [("alice", 12.0), ("bob", 2.0)]
    assert (usage.total, usage.this_month) == (14.0, 10.0)
    assert usage.months[-1].width == 100.0 and usage.months[-2].width == 40.0

    client.force_login(bob)
    page = client.get(reverse("jobs:project_usage", args=[project.slug])).content.decode()
    assert "<svg" in page and 'role="img"' in page
    assert '<th scope="row">2026-10</th><td>4.00</td>' in page
    assert '<th scope="row">alice</th><td>12.00</td>' in page
    assert "<script" not in page


def test_it_charges_and_shows_a_scheduled_job_that_never_started_as_scheduled(
    alice, member, stack, devices
):
    from portal.jobs import scheduler

    # Placed two hours ago on gpu1, never started (its host has not answered since).
    placed = JobFactory(project=member.project, stack=stack, state="scheduled",
                        host=devices[0].host, queued_at=NOW - 3 * H)  # fmt: skip
    held(placed, devices[0], NOW - 2 * H, NOW + 2 * H)
    running = JobFactory(project=member.project, stack=stack, state="running",
                         host=devices[0].host, started_at=NOW - H)  # fmt: skip
    held(running, devices[1], NOW - H, NOW + 3 * H)

    usage = selectors.project_usage(member.project, NOW)
    assert (usage.this_month, usage.total) == (1.0, 1.0)
    assert selectors.device_hours([placed, running], NOW) == {running.pk: 1.0}
    assert scheduler.month_usage(NOW)[member.project_id] == 1.0
    assert scheduler.decayed_usage(NOW)[member.project_id] < 1.0 + 1e-9

    page = alice.get(reverse("jobs:queue")).content.decode()
    running_part = page[page.index("<h2>Running") : page.index("<h2>Scheduled")]
    scheduled_part = page[page.index("<h2>Scheduled") : page.index("<h2>Waiting")]
    assert f"#{placed.pk} " not in running_part and f"#{running.pk} " in running_part
    assert f"#{placed.pk} " in scheduled_part and "state-scheduled" in scheduled_part
    detail = alice.get(reverse("jobs:job_detail", args=[placed.pk])).content.decode()
    assert "<dt>Device-hours</dt><dd>0.00</dd>" in detail


def test_it_shows_usage_to_members_and_staff_only(client, member, staff):
    url = reverse("jobs:project_usage", args=[member.project.slug])
    for user, expected in [
        (member.user, 200),
        (staff, 200),
        (PartnerMembershipFactory().user, 404),
        (UserFactory(), 404),
    ]:
        client.force_login(user)
        assert client.get(url).status_code == expected
    client.logout()
    assert client.get(url).status_code == 302
    client.force_login(staff)
    assert client.get(reverse("jobs:project_usage", args=["nope"])).status_code == 404


# -- Trained on our hardware ----------------------------------------------------------------


def test_it_lists_only_succeeded_jobs_on_the_public_trained_page(client, member, stack, devices):
    good = JobFactory(project=member.project, stack=stack, state="succeeded", name="whisper-tiny",
                      model_freedom="toxiccandy", data_licence="proprietary",
                      ended_at=NOW - H)  # fmt: skip
    held(good, devices[0], NOW - 4 * H, NOW - H)
    held(good, devices[1], NOW - 4 * H, NOW - H)
    for state in ("failed", "running", "queued", "cancelled", "timed_out"):
        JobFactory(project=member.project, stack=stack, state=state, name=f"hidden-{state}")

    response = client.get(reverse("jobs:trained"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "whisper-tiny" in page and "ToxicCandy" in page and "proprietary" in page
    assert "<td>6.0</td>" in page  # two devices for three hours
    assert "hidden-" not in page
    assert client.get(reverse("jobs:trained") + "?page=99").status_code == 200
    assert client.get(reverse("jobs:trained") + "?page=x").status_code == 200


def test_it_lets_staff_read_and_cancel_jobs_in_the_admin(client, member, stack, staff):
    job = JobFactory(project=member.project, stack=stack, log="hello\n")
    client.force_login(staff)
    assert client.get(reverse("admin:jobs_job_changelist")).status_code == 200
    assert client.get(reverse("admin:jobs_job_change", args=[job.pk])).status_code == 200
    assert client.get(reverse("admin:jobs_job_add")).status_code == 403
    client.post(
        reverse("admin:jobs_job_changelist"),
        {"action": "cancel", "_selected_action": [job.pk]},
    )
    job.refresh_from_db()
    assert job.state == "cancelled"


def test_it_offers_the_kept_output_to_the_projects_members_only(
    client, alice, member, stack, settings, tmp_path
):
    from django.core.files.base import ContentFile

    settings.MEDIA_ROOT = tmp_path
    job = JobFactory(project=member.project, stack=stack, state="succeeded")
    url = reverse("jobs:job_output", args=[job.pk])
    assert alice.get(url).status_code == 404  # nothing kept
    job.output.save("out.tar.gz", ContentFile(tarball({"output/model.bin": b"w"})))

    response = alice.get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == job.output.open("rb").read()
    client.force_login(UserFactory())
    assert client.get(url).status_code == 404


def test_it_refuses_a_hwspec_the_stack_does_not_serve_as_the_finder_does(alice, member, devices):
    HostFactory(name="mi1").stacks.add(DriverStackFactory(name="rocm-6", hwspecs=["rocm"]))
    response = alice.post(reverse("jobs:submit"), form(member, stack="rocm-6", hwspec="cuda"))
    assert response.status_code == 400
    assert response.context["form"].errors["stack"] == ["The stack rocm-6 does not serve cuda."]
    assert not Job.objects.exists()


def test_it_stops_showing_and_taking_jobs_from_a_member_removed_from_the_project(
    alice, member, devices
):
    job = JobFactory(project=member.project, submitter=member.user, state=Job.State.RUNNING)
    assert alice.get(reverse("jobs:job_detail", args=[job.pk])).status_code == 200

    member.delete()  # a manager removes alice

    assert alice.get(reverse("jobs:job_detail", args=[job.pk])).status_code == 404
    assert alice.get(reverse("jobs:job_log", args=[job.pk])).status_code == 404
    assert alice.post(reverse("jobs:job_cancel", args=[job.pk]), CONFIRMED).status_code == 404
    assert alice.post(reverse("jobs:submit"), form(member)).status_code == 403  # no project left
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING  # the project's job goes on
    assert Job.objects.count() == 1
