"""Scheduler benchmark on PostgreSQL: one fair-share pass over a big queue and a busy calendar.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/scheduler.py

Like bench/booking.py, it only uses DATABASE_URL's database to CREATE and DROP a throwaway one
(`porterbox_bench_scheduler`, or `--database NAME`: not booking.py's, so both can run at once).
It loads the fleet of bench/booking.py (1,000 accelerators on 125 hosts), 50,000 reservations
from an hour ago to 30 days ahead (50 per device, 1-8 h, gaps growing with the distance), 5,000
finished jobs of 20 partner projects over the last 30 days (their usage decays into the fair
share), and 10,000 queued jobs of those projects in mixed shapes (1, 2, 4 or 8 devices; cuda,
cuda:sm_90, rocm, sycl or any; 1-48 h). Then it times, in one run:
- `plan()`: the pass without its writes (read the queue and the devices, order, place), N runs;
- `schedule()`: one full pass, with its parts: the plan, the placements' transaction, and the
  queue's turns and wait reasons stored for the /jobs/ page (the order, the write); then the
  next pass. Before it, the queue as a previous pass that found nothing free stored it (every
  job's turn and reason, timed too), so that the pass timed is one of many, not the first;
- `estimate_queue()`, the start estimates' own task (portal/jobs/estimates.py, its own beat
  entry): the first 50 turns' estimated starts, after each of those passes;
- the floor: the same placements' bare writes (each job's allocation INSERT and job UPDATE) as
  raw SQL in one transaction, after the pass's writes were undone; and the ratios; then the
  batched floor, the same rows as two statements (one INSERT, one UPDATE, from unnest());
- `GET /jobs/` (the Django test client, in-process) with the 10,000 waiting jobs after the
  pass, and with only 10 of them waiting (the others cancelled in a transaction rolled back).
Printed: milliseconds (median, p95) and SQL queries of each, and the 1-minute load average
(other work on the machine slows every figure: compare the ratios). Nothing is asserted.
"""

import argparse
import functools
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


def _timed(module, name: str, spent: dict[str, float]) -> None:
    """Wrap module.name so that its wall time adds up in spent[name], its calls in spent[#name]."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
            spent[f"#{name}"] = spent.get(f"#{name}", 0) + 1

    setattr(module, name, wrapper)


def undo(placed: dict[int, list[int]]) -> None:
    """Put the placed jobs back in the queue, their allocations gone, for the floor's writes."""
    from portal.booking.models import Allocation
    from portal.jobs.models import Job

    Allocation.objects.filter(job_id__in=list(placed)).delete()
    Job.objects.filter(pk__in=list(placed)).update(state="queued", host=None)


def floor(placed: dict[int, list[int]], now) -> tuple[float, int]:
    """The placements' bare writes in one transaction, raw SQL: (seconds, statements)."""
    from django.db import connection, transaction

    from portal.inventory.models import Accelerator
    from portal.jobs.models import Job
    from portal.jobs.scheduler import stop_grace

    hosts = dict(Accelerator.objects.values_list("pk", "host_id"))
    ends = {pk: now + w + stop_grace() for pk, w in Job.objects.filter(pk__in=list(placed))
            .values_list("pk", "walltime")}  # fmt: skip
    statements = 0
    t0 = time.perf_counter()
    with transaction.atomic():
        cur = connection.connection.cursor()  # the driver's own cursor: no Django on the way
        for job_id, devices in placed.items():
            rows = ", ".join(["(%s, %s, %s, %s, true)"] * len(devices))
            values = [v for pk in devices for v in (pk, job_id, now, ends[job_id])]
            cur.execute(
                # Only placeholders are formatted in; the values are parameters.
                f'INSERT INTO booking_allocation (accelerator_id, job_id, start, "end", active) VALUES {rows}',  # noqa: E501, S608
                values,
            )
            cur.execute(
                "UPDATE jobs_job SET state = 'scheduled', host_id = %s, wait_reason = '' "
                "WHERE id = %s AND state IN ('queued', 'requeued')",
                [hosts[devices[0]], job_id],
            )
            statements += 2
    return time.perf_counter() - t0, statements


def floor_batched(placed: dict[int, list[int]], now) -> tuple[float, int]:
    """The same writes as two statements in one transaction: one INSERT ... SELECT FROM
    unnest() of all the allocations, one UPDATE ... FROM unnest() of all the jobs."""
    from django.db import connection, transaction

    from portal.inventory.models import Accelerator
    from portal.jobs.models import Job
    from portal.jobs.scheduler import stop_grace

    hosts = dict(Accelerator.objects.values_list("pk", "host_id"))
    ends = {pk: now + w + stop_grace() for pk, w in Job.objects.filter(pk__in=list(placed))
            .values_list("pk", "walltime")}  # fmt: skip
    rows = [(pk, job_id, ends[job_id]) for job_id, devices in placed.items() for pk in devices]
    t0 = time.perf_counter()
    with transaction.atomic():
        cur = connection.connection.cursor()
        cur.execute(
            'INSERT INTO booking_allocation (accelerator_id, job_id, start, "end", active) '
            "SELECT a, j, %s, e, true FROM unnest(%s::integer[], %s::integer[], "
            "%s::timestamptz[]) AS v(a, j, e)",
            [now, *(list(column) for column in zip(*rows, strict=True))],
        )
        cur.execute(
            "UPDATE jobs_job SET state = 'scheduled', host_id = v.h, wait_reason = '' "
            "FROM unnest(%s::integer[], %s::integer[]) AS v(id, h) "
            "WHERE jobs_job.id = v.id AND state IN ('queued', 'requeued')",
            [list(placed), [hosts[devices[0]] for devices in placed.values()]],
        )
    return time.perf_counter() - t0, 2


def loadavg() -> str:
    """The 1-minute load average, as `uptime` says it."""
    return Path("/proc/loadavg").read_text().split()[0]


def page(repeat: int) -> tuple[list[float], int, str]:
    """GET /jobs/ as a staff user: (ms per run, queries of the last run, its body)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from portal.accounts.models import User

    client = Client(SERVER_NAME="127.0.0.1")
    client.force_login(User.objects.get(username="bench"))
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            t0 = time.perf_counter()
            response = client.get("/jobs/", secure=True)
            times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.status_code
    return times, len(queries), response.content.decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--database", default="porterbox_bench_scheduler")
    args = parser.parse_args()
    vars(bb)["BENCH_DB"] = args.database  # booking.py's throwaway_django() reads it
    # ... for its URL, but creates and drops through create_database(), whose name defaults to
    # booking.py's own database: name ours, so that neither run drops the other's.
    vars(bb)["create_database"] = functools.partial(bb.create_database, name=args.database)
    with bb.throwaway_django():
        from django.db import connection, reset_queries, transaction
        from django.test.utils import CaptureQueriesContext
        from django.utils import timezone

        from portal.jobs import estimates, scheduler
        from portal.jobs.models import Job

        now = timezone.now()
        print(f"load average at the start: {loadavg()}")
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
        spent: dict[str, float] = {}
        for name in ("plan", "_write_placements", "store_queue", "turn_order", "write_waiting"):
            _timed(scheduler, name, spent)
        for name in ("estimate_starts", "earliest_starts"):
            _timed(estimates, name, spent)

        def one_pass(label: str):
            spent.clear()
            with CaptureQueriesContext(connection) as queries:
                t0 = time.perf_counter()
                result = scheduler.schedule(now)
                seconds = time.perf_counter() - t0
            print(
                f"{label}: {seconds:.2f} s, {len(result.placed)} jobs placed, {len(queries)} "
                f"queries: plan {spent['plan']:.2f} s, placements' transaction "
                f"{spent.get('_write_placements', 0):.2f} s, turns and wait reasons stored "
                f"{spent['store_queue']:.2f} s (the turns' order {spent['turn_order']:.2f} s, "
                f"their write {spent.get('write_waiting', 0):.2f} s); it asks for estimates: "
                f"{result.estimates_stale} (load average {loadavg()})"
            )
            return result, seconds

        def estimate(label: str) -> float:
            spent.clear()
            with CaptureQueriesContext(connection) as queries:
                t0 = time.perf_counter()
                estimated = estimates.estimate_queue(now)
                seconds = time.perf_counter() - t0
            reads = spent.get("#earliest_starts", 0)
            print(
                f"{label}: {seconds:.2f} s, {estimated} jobs estimated, {len(queries)} queries: "
                f"searches {spent.get('estimate_starts', 0):.2f} s ({reads} calendar reads, one "
                f"per kind of device, {1000 * spent.get('earliest_starts', 0) / max(reads, 1):.0f}"
                f" ms each)"
            )
            return seconds

        # The queue as a previous pass left it, which found nothing free (every job waits, with
        # its reason and turn), so that the pass timed is one of many: it writes the turns that
        # moved and the reasons that changed, not every reason of a queue never stored.
        previous = scheduler.plan(now)
        previous.placed = {}
        with CaptureQueriesContext(connection):
            t0 = time.perf_counter()
            scheduler.store_queue(now, previous)
            stored = time.perf_counter() - t0
        print(
            f"the queue stored by a previous pass (every job's turn and reason, "
            f"{len(previous.jobs)} rows): {stored:.2f} s"
        )
        done, seconds = one_pass("schedule(), one pass")
        writes = spent["_write_placements"]
        placing = spent["plan"] + writes
        estimating = estimate("estimate_queue(), the estimates' task after it")
        positions = Job.objects.filter(queue_position__isnull=False).count()
        estimated = Job.objects.filter(estimated_start__isnull=False).count()
        print(f"  stored: {positions} turns, {estimated} start estimates")
        one_pass("schedule(), the next pass (nothing new fits)")
        estimate("estimate_queue(), again (nothing moved: nothing written)")

        undo(done.placed)
        bare, statements = floor(done.placed, now)
        undo(done.placed)
        batched, _ = floor_batched(done.placed, now)
        print(
            f"floor: {bare:.2f} s for the same {len(done.placed)} placements' bare writes "
            f"({statements} statements, one transaction, raw SQL). Ratios to the floor: the "
            f"placements' transaction {writes / bare:.1f}x, placing (plan and writes, "
            f"{placing:.2f} s) {placing / bare:.1f}x, the pass {seconds / bare:.1f}x, the "
            f"estimates' task {estimating / bare:.1f}x, the pass and the task together "
            f"({seconds + estimating:.2f} s) {(seconds + estimating) / bare:.1f}x"
        )
        print(
            f"floor, batched: {batched:.2f} s for the same writes as 2 statements (unnest). "
            f"Ratios: the placements' transaction {writes / batched:.1f}x, the pass "
            f"{seconds / batched:.1f}x (load average {loadavg()})"
        )

        ms, many, body = page(args.repeat)
        waiting = Job.objects.filter(state="queued").count()
        assert "Waiting for the next scheduler pass." not in body  # reasons stored by the pass
        print(
            f"GET /jobs/ with {waiting} waiting jobs: median {statistics.median(ms):.0f} ms, "
            f"p95 {bb.pct(ms, 95):.0f} ms over {len(ms)} runs; {many} queries"
        )
        with transaction.atomic():
            keep = list(Job.objects.filter(state="queued").values_list("pk", flat=True)[:10])
            Job.objects.filter(state="queued").exclude(pk__in=keep).update(state="cancelled")
            ms, few, _ = page(args.repeat)
            transaction.set_rollback(True)
        print(
            f"GET /jobs/ with 10 waiting jobs: median {statistics.median(ms):.0f} ms; {few} "
            f"queries ({'the same count' if few == many else 'NOT the same count'})"
        )


if __name__ == "__main__":
    main()
