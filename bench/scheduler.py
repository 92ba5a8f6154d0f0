"""Scheduler benchmark on PostgreSQL: one fair-share pass over a big queue and a busy calendar.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/scheduler.py

Like bench/booking.py, it only uses DATABASE_URL's database to CREATE and DROP a throwaway one
(`porterbox_bench`). It loads the fleet of bench/booking.py (1,000 accelerators on 125 hosts),
50,000 reservations from an hour ago to 30 days ahead (50 per device, 1-8 h, gaps growing with
the distance), 5,000 finished jobs of 20 partner projects over the last 30 days (their usage
decays into the fair share), and 10,000 queued jobs of those projects in mixed shapes (1, 2, 4
or 8 devices; cuda, cuda:sm_90, rocm, sycl or any; 1-48 h). Then it times:
- `plan()`: the pass without its writes (read the queue and the devices, order, place), N runs;
- `schedule()`: one full pass, writing each placement through the booking service.
Printed: median and p95 of plan() in ms, the seconds of schedule(), how many jobs it placed and
the number of SQL queries of each. Nothing is asserted.
"""

import argparse
import importlib.util
import random
import statistics
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("bench_booking", ROOT / "booking.py")
assert spec is not None and spec.loader is not None  # a .py file: a spec with its loader
bb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bb)

H = timedelta(hours=1)
PROJECTS, FINISHED, QUEUED, PER_DEVICE = 20, 5000, 10_000, 50
SHAPES = [  # (count, hwspec, stack) of queued jobs
    (1, "cuda", "cuda-12"), (2, "cuda", "cuda-12"), (4, "cuda:sm_90", "cuda-12"),
    (8, "", "cuda-12"), (1, "rocm", "rocm-6"), (2, "rocm", "rocm-6"), (1, "sycl", "oneapi"),
]  # fmt: skip


def load(now) -> None:
    from django.db import connection

    from portal.accounts.models import PartnerProject, User
    from portal.booking.availability import floor_to
    from portal.jobs.models import Job

    rng = random.Random(bb.SEED)
    stacks, _, accs = bb.make_fleet()
    user = User.objects.create(username="bench", debian_member_source="staff")
    projects = PartnerProject.objects.bulk_create(
        PartnerProject(
            name=f"Project {i}", slug=f"p{i}", state="approved", share=1 + i % 3,
            device_hours_per_month=100_000, max_concurrent_devices=200, max_walltime_hours=48,
        )
        for i in range(PROJECTS)
    )  # fmt: skip

    base = floor_to(now, bb.Q)
    # COPY rows: an allocation names either its reservation or its job, the other is \N.
    reservations: list[tuple[object, ...]] = []
    allocations: list[tuple[object, ...]] = []
    for acc in accs:  # reservations: a device in three is free for the next hours
        t = rng.randrange(-4, 48)
        for _ in range(PER_DEVICE):
            length = 4 + min(28, int(rng.expovariate(1 / 5)))
            start, end = base + t * bb.Q, base + (t + length) * bb.Q
            rid = len(reservations) + 1
            state = "active" if start <= now else "scheduled"
            reservations.append(
                (rid, user.pk, acc.host_id, stacks["cuda-12"].pk, False, "", start, end, state,
                 now, now, *bb.RESERVATION_DEFAULTS)
            )  # fmt: skip
            allocations.append((rid, acc.pk, rid, "\\N", start, end, True))
            t += length + int(rng.expovariate(1 / (4 + t / 40)))
    jobs = []
    held = []
    for i in range(FINISHED):  # finished jobs: their usage decays into the fair share
        # Five per device, 6 days apart, so that no two overlap (the constraint would refuse).
        acc, slot = accs[i % len(accs)], i // len(accs)
        end = now - (slot * 144 + rng.uniform(2, 100)) * H
        held.append((acc, end - rng.uniform(0.5, 4) * H, end))
        jobs.append(Job(project=rng.choice(projects), submitter=user, name=f"done{i}",
                        script="true", stack=stacks["cuda-12"], walltime=4 * H,
                        state="succeeded", code_licence="MIT", data_licence="CC0-1.0",
                        model_freedom="free", queued_at=end - 5 * H, ended_at=end))  # fmt: skip
    for i in range(QUEUED):
        count, hwspec, stack = rng.choice(SHAPES)
        jobs.append(Job(project=rng.choice(projects), submitter=user, name=f"q{i}",
                        script="true", stack=stacks[stack], count=count, hwspec=hwspec,
                        walltime=rng.randint(1, 48) * H, code_licence="MIT",
                        data_licence="CC0-1.0", model_freedom="free",
                        queued_at=now - rng.uniform(0, 72) * H))  # fmt: skip
    jobs = Job.objects.bulk_create(jobs)
    aid = len(allocations)
    for job, (acc, start, end) in zip(jobs[:FINISHED], held, strict=True):
        aid += 1
        allocations.append((aid, acc.pk, "\\N", job.pk, start, end, True))
    with connection.cursor() as cur:
        bb.copy(cur, "booking_reservation", bb.RESERVATION_COLUMNS, reservations)
        columns = 'id, accelerator_id, reservation_id, job_id, start, "end", active'
        bb.copy(cur, "booking_allocation", columns, allocations)
        for table, last in (("booking_reservation", len(reservations)),
                            ("booking_allocation", aid)):  # fmt: skip
            cur.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, last])
        cur.execute("ANALYZE")
    print(f"  {len(accs)} accelerators, {len(reservations)} reservations, "
          f"{FINISHED} finished and {QUEUED} queued jobs of {PROJECTS} projects")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with bb.throwaway_django():
        from django.db import connection, reset_queries
        from django.test.utils import CaptureQueriesContext
        from django.utils import timezone

        from portal.jobs import scheduler

        now = timezone.now()
        t0 = time.perf_counter()
        load(now)
        print(f"load: {time.perf_counter() - t0:.1f} s")

        times = []
        for _ in range(args.repeat):
            reset_queries()
            with CaptureQueriesContext(connection) as plan_queries:
                t0 = time.perf_counter()
                planned = scheduler.plan(now)
                times.append((time.perf_counter() - t0) * 1000)
        print(
            f"plan(): median {statistics.median(times):.0f} ms, p95 {bb.pct(times, 95):.0f} ms "
            f"over {len(times)} runs; {len(planned.placed)} jobs placed, "
            f"{len(planned.waiting)} wait; {len(plan_queries)} queries"
        )
        with CaptureQueriesContext(connection) as pass_queries:
            t0 = time.perf_counter()
            done = scheduler.schedule(now)
            seconds = time.perf_counter() - t0
        print(
            f"schedule(): {seconds:.2f} s for one pass that placed {len(done.placed)} jobs "
            f"({len(pass_queries)} queries: one transaction per placed job)"
        )


if __name__ == "__main__":
    main()
