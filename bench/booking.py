"""Booking benchmark on PostgreSQL: availability search latency and booking throughput.

Run from the repository root against a PostgreSQL server (trust or password in the URL):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/booking.py

The database named in DATABASE_URL is only used to CREATE and DROP a throwaway database,
`porterbox_bench`; everything else happens there. `--quick` loads 10x less data (a smoke run),
`--keep` leaves the bench database in place for EXPLAIN ANALYZE afterwards.

Phases and what they print:
1. load: 1,000 accelerators on 125 hosts and 200,000 active allocations (one reservation each)
   over the next 30 days, dense this week and thinning out, via COPY; seconds and table sizes.
2. availability: `availability()` in-process for a set of needs over 7 and 30 days; median and
   p95 ms per need, and how many slots it found (at most 10, the service's limit).
3. API: gunicorn (4 workers x 4 threads), client threads with keep-alive POSTing to
   /api/reservations/ with token auth: (a) distinct free slots, all must be 201, one client at
   a time and 8 at once; (b) 16 threads on the same 4 devices and overlapping times: 201 or
   409, never 5xx; then a check in the database that no accelerator holds overlapping active
   allocations. `DATABASE_CONN_MAX_AGE` is passed through to gunicorn (default 60).
4. The floor: the same kind of booking as a raw transaction through psycopg2 (the user's row
   and the devices' rows locked in sorted order, the reservation and its allocations
   inserted), one at a time and 8 at once, on distinct free slots; and the API's share of it.
Nothing is asserted about time; the figures are for people (bench/README.md).
"""

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from functools import partial
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "porterbox_bench"
SEED = 20261122
Q = timedelta(minutes=15)  # the booking grid
DAYS, PER_DEVICE, THREADS, REQUESTS = 30, 200, 16, 800
WIDE = 8  # clients at once for the distinct bookings and the floor
# (vendor, model, arch, MiB, stack, hosts); each host has 8 devices of one model.
FLEET = [
    ("nvidia", "NVIDIA A100-SXM4-40GB", "sm_80", 40960, "cuda-12", 25),
    ("nvidia", "NVIDIA A100-SXM4-80GB", "sm_80", 81920, "cuda-12", 25),
    ("nvidia", "NVIDIA H100 80GB HBM3", "sm_90", 81559, "cuda-12", 30),
    ("nvidia", "NVIDIA H200", "sm_90", 143771, "cuda-12", 15),
    ("amd", "AMD Instinct MI210", "gfx90a", 65520, "rocm-6", 15),
    ("intel", "Intel Data Center GPU Max 1100", "pvc", 49152, "oneapi", 10),
    ("fpga", "AMD Alveo U280", "u280", 8192, "fpga", 5),
]
STACKS = {
    "cuda-12": ["cuda", "opencl"],
    "rocm-6": ["rocm", "opencl"],
    "oneapi": ["sycl", "opencl"],
    "fpga": ["fpga"],
}
# (label, count, hwspec, min GB, stack, hours)
NEEDS = [
    ("1x cuda 2h", 1, "cuda", 0, "cuda-12", 2),
    ("4x cuda:sm_90 >=80GB 8h", 4, "cuda:sm_90", 80, "cuda-12", 8),
    ("2x rocm 4h", 2, "rocm", 0, "rocm-6", 4),
    ("1x opencl 1h", 1, "opencl", 0, None, 1),
    ("8x any 24h", 8, None, 0, None, 24),
]


def pct(values, q):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def create_database(admin_url: str, drop_only: bool = False, name: str = BENCH_DB) -> None:
    """(Re)create the throwaway database `name`, or only drop it."""
    import psycopg2

    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if not drop_only:
            cur.execute(f"CREATE DATABASE {name}")
    conn.close()


def portal_env(bench_url: str, var_dir: str) -> dict:
    """The portal's settings for the bench database, in-process and for gunicorn alike."""
    return {
        "DATABASE_URL": bench_url,
        "SECRET_KEY": "bench-only-not-a-secret",
        "DJANGO_DEBUG": "0",
        "SECURE_SSL_REDIRECT": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "STATIC_MANIFEST": "0",
        "CACHE_URL": "locmem://",
        "PORTAL_VAR_DIR": var_dir,
        "LOG_LEVEL": "ERROR",  # the 409s would log a warning each
        "DATABASE_CONN_MAX_AGE": os.environ.get("DATABASE_CONN_MAX_AGE", "60"),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }


def setup_django(bench_url: str, var_dir: str) -> None:
    os.environ.update(portal_env(bench_url, var_dir))
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


@contextlib.contextmanager
def throwaway_django():
    """Django on the throwaway database of DATABASE_URL's server, dropped at the end (for the
    benchmarks that need nothing but the ORM: bench/scheduler.py, bench/telemetry.py)."""
    admin_url = os.environ.get("DATABASE_URL", "")
    if not admin_url.startswith("postgres"):
        sys.exit("Set DATABASE_URL=postgres://...: the figures are for PostgreSQL.")
    create_database(admin_url)
    try:
        bench_url = admin_url.rsplit("/", 1)[0] + "/" + BENCH_DB
        setup_django(bench_url, tempfile.mkdtemp(prefix="porterbox-bench-"))
        yield
    finally:
        from django.db import connections

        connections.close_all()
        create_database(admin_url, drop_only=True)


RESERVATION_COLUMNS = (
    'id, user_id, host_id, stack_id, whole_host, purpose, start, "end", state, created, updated,'
    " last_error, ready_mailed, ending_mailed"
)
RESERVATION_DEFAULTS = ("", False, False)  # what the reconcile loop writes later
ALLOCATION_COLUMNS = 'id, accelerator_id, reservation_id, start, "end", active'


def copy(cursor, table: str, columns: str, rows) -> None:
    buf = StringIO("".join("\t".join(map(str, row)) + "\n" for row in rows))
    cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN", buf)


def make_fleet(scale: int = 1):
    """FLEET's hosts (8 devices each) and STACKS, written; (stacks by name, [(host, stack
    name)], accelerators). Shared with bench/scheduler.py."""
    from portal.inventory.models import Accelerator, DriverStack, Host

    stacks = {
        s.name: s
        for s in DriverStack.objects.bulk_create(
            DriverStack(name=n, hwspecs=k, chroot=n, area="main" if n == "oneapi" else "non-free")
            for n, k in STACKS.items()
        )
    }
    hosts: list[tuple[Host, str]] = []
    accs: list[Accelerator] = []
    for vendor, model, arch, mib, stack, count in FLEET:
        for _ in range(max(1, count // scale)):
            name = f"{vendor}{len(hosts) + 1:03d}"
            hosts.append((Host(name=name, fqdn=f"{name}.bench.test"), stack))
            spec = {"vendor": vendor, "model": model, "arch": arch, "memory_mib": mib}
            accs += [Accelerator(host=hosts[-1][0], index=i, **spec) for i in range(8)]
    Host.objects.bulk_create(h for h, _ in hosts)
    Host.stacks.through.objects.bulk_create(
        Host.stacks.through(host=h, driverstack=stacks[s]) for h, s in hosts
    )
    Accelerator.objects.bulk_create(accs)
    return stacks, hosts, accs


def load(scale: int, now) -> dict:
    """Fleet, users with tokens and the calendar; returns what the later phases book into."""
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from portal.accounts.models import User
    from portal.booking.availability import floor_to

    rng = random.Random(SEED)
    stacks, hosts, accs = make_fleet(scale)
    users = User.objects.bulk_create(
        User(username=f"bench{i:03d}", password="!", debian_member_source="staff")  # noqa: S106  (unusable)
        for i in range(300 // scale)
    )
    tokens = Token.objects.bulk_create(Token(key=Token.generate_key(), user=u) for u in users)
    stack_of = {h.pk: stacks[s].pk for h, s in hosts}

    # Per device: back-to-back bookings of 1-8 h (mostly short) with gaps that grow with the
    # distance from now: this week is ~85% booked, the end of the month much less.
    base, horizon = floor_to(now, Q), DAYS * 96
    reservations: list[tuple[object, ...]] = []
    allocations, gaps = [], []
    for acc in accs:
        t, made = -rng.randrange(32), 0
        while made < PER_DEVICE:
            gap = int(rng.expovariate(1 / (1 + 12 * max(t, 0) / horizon)))
            length = 4 + min(28, int(rng.expovariate(1 / 5)))
            if t + gap + length > horizon:
                break
            if gap >= 4 and t >= 96:  # a free hour a day or more ahead: for the API phase
                gaps.append((acc, base + t * Q))
            t += gap
            start, end = base + t * Q, base + (t + length) * Q
            rid, state = len(reservations) + 1, "active" if t <= 0 else "scheduled"
            who, where = rng.choice(users).pk, (acc.host_id, stack_of[acc.host_id])
            reservations.append(
                (rid, who, *where, False, "", start, end, state, now, now, *RESERVATION_DEFAULTS)
            )
            allocations.append((rid, acc.pk, rid, start, end, True))
            t, made = t + length, made + 1
    with connection.cursor() as cur:
        copy(cur, "booking_reservation", RESERVATION_COLUMNS, reservations)
        copy(cur, "booking_allocation", ALLOCATION_COLUMNS, allocations)
        for table in ("booking_reservation", "booking_allocation"):
            cur.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)", [table, rid])
        # As autovacuum leaves a production table (the visibility map set, so index-only scans
        # skip the heap); a table loaded by COPY and never vacuumed reads every row's page.
        cur.execute("VACUUM ANALYZE")
    hosts, tokens = [h for h, _ in hosts], [t.key for t in tokens]
    return {
        "hosts": hosts, "tokens": tokens, "gaps": gaps, "allocations": len(allocations),
        "users": [u.pk for u in users], "stack_of": stack_of,
    }  # fmt: skip


def table_sizes() -> None:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT relname, reltuples::bigint, pg_size_pretty(pg_table_size(oid)),"
            " pg_size_pretty(pg_indexes_size(oid)) FROM pg_class WHERE relkind = 'r' AND relname"
            " IN ('booking_reservation', 'booking_allocation', 'inventory_accelerator',"
            " 'inventory_host') ORDER BY relname"
        )
        for name, rows, data, index in cur.fetchall():
            print(f"  {name:24} {rows:>8} rows  table {data:>8}  indexes {index:>8}")


# The floor for the availability search: one statement, the way a hand-written PostgreSQL query
# would answer it. Per matching device, the window minus its busy time (range_agg) as a
# tstzmultirange; each free range long enough becomes the range of starts it allows, minus the
# host's maintenance windows; then a running +1/-1 count per host, and per host the first point
# where the count reaches the need (a range of starts is [first, last + 1 us), so that a gap just
# as long as the duration still allows one). It ignores the booking grid, so it does less.
FLOOR_SQL = """
WITH dev AS ({matching}),
busy AS (
  SELECT a.accelerator_id, range_agg(tstzrange(a.start, a."end")) AS busy
  FROM booking_allocation a JOIN dev ON dev.id = a.accelerator_id
  WHERE a.active AND a.start < %(stop)s AND a."end" > %(earliest)s
  GROUP BY a.accelerator_id),
vetoes AS (
  SELECT m.host_id, range_agg(tstzrange(m.start - %(duration)s, m."end", '()')) AS vetoed
  FROM inventory_maintenancewindow m
  WHERE m.start < %(stop)s AND m."end" > %(earliest)s GROUP BY m.host_id),
starts AS (
  SELECT dev.host_id, unnest(
    tstzmultirange(tstzrange(lower(r), upper(r) - %(duration)s + interval '1 microsecond'))
    - coalesce(v.vetoed, '{{}}'::tstzmultirange)) AS s
  FROM dev
  LEFT JOIN busy b ON b.accelerator_id = dev.id
  LEFT JOIN vetoes v ON v.host_id = dev.host_id
  CROSS JOIN LATERAL unnest(
    tstzmultirange(tstzrange(%(earliest)s, %(stop)s))
    - coalesce(b.busy, '{{}}'::tstzmultirange)) AS r
  WHERE upper(r) - lower(r) >= %(duration)s),
events AS (
  SELECT host_id, lower(s) AS t, 1 AS d FROM starts WHERE lower(s) < %(horizon)s
  UNION ALL SELECT host_id, upper(s), -1 FROM starts),
counted AS (
  SELECT host_id, t, sum(d) OVER (PARTITION BY host_id ORDER BY t) AS free FROM events)
SELECT host_id, min(t) AS first FROM counted WHERE free >= %(count)s AND t < %(horizon)s
GROUP BY host_id ORDER BY first, host_id LIMIT 10
"""


def floor_availability(need, duration: timedelta, earliest, days: int) -> list:
    """The floor's slots: (host id, first start), at most 10, soonest first."""
    from django.db import connection

    from portal.booking.availability import matching_accelerators

    matching, params = matching_accelerators(need).values("id", "host_id").query.sql_with_params()
    horizon = earliest + timedelta(days=days)
    named = {f"m{i}": value for i, value in enumerate(params)}
    matching = matching % tuple(f"%({name})s" for name in named)
    values = {
        **named,
        "earliest": earliest,
        "horizon": horizon,
        "stop": horizon + duration,
        "duration": duration,
        "count": need.count,
    }
    with connection.cursor() as cur:
        cur.execute(FLOOR_SQL.format(matching=matching), values)
        return cur.fetchall()


def timed(call, repeat: int, budget: float) -> tuple[list[float], Any]:
    """Wall times in ms of `call()` (at least 3 runs, then up to `repeat` within `budget` s)."""
    times: list[float] = []
    deadline = time.monotonic() + budget
    enough = min(3, repeat)
    result = None
    while len(times) < enough or (len(times) < repeat and time.monotonic() < deadline):
        t0 = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def measure_availability(repeat: int, budget: float) -> dict:
    from django.utils import timezone

    from portal.booking.availability import Need, availability, ceil_to
    from portal.booking.forms import GB
    from portal.inventory.hwspec import Hwspec
    from portal.inventory.models import DriverStack

    stacks = {s.name: s for s in DriverStack.objects.all()}
    earliest = ceil_to(timezone.now(), Q)
    summary = {}
    for days in (7, 30):
        every, floors, worst = [], [], 0.0
        for label, count, spec, gb, stack, hours in NEEDS:
            hwspec, duration = Hwspec.parse(spec) if spec else None, timedelta(hours=hours)
            need = Need(
                count, hwspec, min_memory_mib=gb * GB, stack=stacks.get(stack) if stack else None
            )
            search = partial(
                availability, need, duration=duration, earliest=earliest, days=days, step=Q
            )
            times, slots = timed(search, repeat, budget)
            floor_search = partial(floor_availability, need, duration, earliest, days)
            floor, floor_slots = timed(floor_search, repeat, budget)
            hours_away = (slots[0].start - earliest) / timedelta(hours=1) if slots else None
            first = f"  first in {hours_away:.1f} h" if slots else ""
            ratio = pct(times, 50) / pct(floor, 50)
            worst = max(worst, ratio)
            print(
                f"  {days:2}d {label:26} n={len(times):2}  median {pct(times, 50):8.1f} ms"
                f"  p95 {pct(times, 95):8.1f} ms  slots {len(slots):2}{first}"
                f"  | floor {pct(floor, 50):7.1f} ms ({len(floor_slots)} slots)"
                f"  ratio {ratio:4.2f}"
            )
            every += times
            floors += floor
        summary[days] = (pct(every, 50), pct(every, 95), pct(floors, 50), worst)
        print(
            f"  {days:2}d {'all needs':26}       median {summary[days][0]:8.1f} ms"
            f"  p95 {summary[days][1]:8.1f} ms  | floor median {summary[days][2]:7.1f} ms"
            f"  worst ratio {worst:4.2f}"
        )
    return summary


@contextlib.contextmanager
def portal_server(bench_url: str, var_dir: str, extra_env: dict | None = None):
    """gunicorn on a free port (4 workers x 4 threads; `extra_env` on top of the bench's
    environment); stopped (TERM, then KILL) however the block ends. bench/jobs.py uses it too."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, **portal_env(bench_url, var_dir), **(extra_env or {}))
    log_path = Path(var_dir) / "gunicorn.log"
    with log_path.open("w") as log:
        gunicorn = [str(Path(sys.executable).parent / "gunicorn"), "portal.wsgi"]
        gunicorn += ["-b", f"127.0.0.1:{port}", "--workers", "4", "--threads", "4"]
        # Our own venv's gunicorn with fixed arguments.
        proc = subprocess.Popen(gunicorn, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api/stacks/")
                if conn.getresponse().status == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("gunicorn did not answer in 30 s")
        yield port, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_load(port: int, jobs: list[list[tuple[str, dict]]]):
    """One thread per job list, each with its own keep-alive connection; (status, ms, body)."""
    results, lock = [], threading.Lock()

    def client(job):
        conn, mine = http.client.HTTPConnection("127.0.0.1", port, timeout=120), []
        for token, body in job:
            headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
            t0 = time.perf_counter()
            for attempt in (1, 2):  # a keep-alive connection the server closed while idle
                try:
                    conn.request("POST", "/api/reservations/", json.dumps(body), headers)
                    response = conn.getresponse()
                    data = response.read()
                    break
                except (http.client.RemoteDisconnected, ConnectionError):
                    conn.close()
                    if attempt == 2:
                        raise
            mine.append((response.status, (time.perf_counter() - t0) * 1000, data))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(job,)) for job in jobs]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def report(name: str, results, wall: float) -> dict:
    ms = [m for _, m, _ in results]
    statuses, n = Counter(status for status, _, _ in results), len(results)
    figures = {"statuses": statuses, "n": n, "rps": n / wall, "median": pct(ms, 50)}
    figures["p95"] = pct(ms, 95)
    print(
        f"  {name}: {len(results)} requests in {wall:.1f} s = {figures['rps']:.0f} req/s,"
        f" median {figures['median']:.0f} ms, p95 {figures['p95']:.0f} ms,"
        f" status {dict(figures['statuses'])}"
    )
    bad = [(s, body[:300]) for s, _, body in results if s >= 500]
    if bad:
        print(f"  !!!!!! {len(bad)} SERVER ERRORS (5xx) !!!!!! first: {bad[0]}")
    return figures


def body(host, start, length: int, devices: list[int]) -> dict:
    """A booking of devices (indices) of one NVIDIA host, `length` quarters from `start`."""
    end = (start + length * Q).isoformat()
    return {"host": host.name, "stack": "cuda-12", "start": start.isoformat(), "end": end,
            "devices": devices}  # fmt: skip


def free_bookings(data: dict, n: int, rng) -> list[tuple[object, object]]:
    """n distinct free hours of NVIDIA devices (from the generated calendar), no two alike;
    each phase takes its own, so every booking of (a) and of the floor must succeed."""
    return rng.sample([g for g in data["gaps"] if g[0].vendor == "nvidia"], n)


def distinct(port: int, data: dict, picked, width: int, rng, name: str) -> dict:
    jobs: list[list[tuple[str, dict]]] = [[] for _ in range(width)]
    for i, (acc, start) in enumerate(picked):
        jobs[i % width].append((rng.choice(data["tokens"]), body(acc.host, start, 4, [acc.index])))
    return report(name, *run_load(port, jobs))


def measure_api(port: int, data: dict, scale: int, picked: list) -> dict:
    from django.db import connection
    from django.utils import timezone

    from portal.booking.availability import ceil_to

    rng, tokens, n = random.Random(SEED + 1), data["tokens"], REQUESTS // scale
    run_load(port, [[(tokens[0], {})] * 4 for _ in range(THREADS)])  # warm up: 400s, not counted
    # (a) Distinct devices and free hours: every one a 201; one client, then WIDE at once.
    one = distinct(port, data, picked[:n], 1, rng, "(a) distinct slots, 1 client")
    wide = distinct(port, data, picked[n : 2 * n], WIDE, rng, f"(a) distinct slots, {WIDE} clients")
    # (b) Everyone wants devices 0-3 of one host, 1-2 h in the same 5 hours, 1 or 2 at a time.
    host, t0 = data["hosts"][0], ceil_to(timezone.now() + timedelta(days=DAYS + 2), Q)
    jobs: list[list[tuple[str, dict]]] = [[] for _ in range(THREADS)]
    for i in range(n):
        devices = rng.sample(range(4), rng.choice((1, 1, 2)))
        wanted = body(host, t0 + rng.randrange(16) * Q, rng.choice((4, 8)), devices)
        jobs[i % THREADS].append((rng.choice(tokens), wanted))
    results, wall = run_load(port, jobs)
    contended = report(f"(b) contended, {THREADS} clients", results, wall)
    granted = sum(len(json.loads(b)["devices"]) for s, _, b in results if s == 201)
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM booking_allocation a JOIN booking_allocation b ON"
            ' a.accelerator_id = b.accelerator_id AND a.id < b.id AND a.start < b."end"'
            ' AND b.start < a."end" WHERE a.active AND b.active'
        )
        overlaps = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM booking_allocation WHERE accelerator_id IN"
            " (SELECT id FROM inventory_accelerator WHERE host_id = %s AND index < 4)"
            " AND start >= %s AND active",
            [host.pk, t0],
        )
        stored = cur.fetchone()[0]
    ok = "OK" if overlaps == 0 and stored == granted else "!!!!!! FAILED !!!!!!"
    print(f"  double-booking check: {overlaps} overlapping active allocation pairs in the table;")
    print(f"  the contended devices hold {stored} allocations, the 201s granted {granted}: {ok}")
    return {"one": one, "wide": wide, "contended": contended, "overlaps": overlaps, "ok": ok}


RAW_RESERVATION = (
    "INSERT INTO booking_reservation (user_id, host_id, stack_id, whole_host, purpose, start,"
    ' "end", state, created, updated, last_error, ready_mailed, ending_mailed) VALUES'
    " (%s, %s, %s, false, '', %s, %s, 'scheduled', now(), now(), '', false, false) RETURNING id"
)
RAW_ALLOCATIONS = (
    'INSERT INTO booking_allocation (accelerator_id, reservation_id, start, "end", active)'
    " SELECT unnest(%s::bigint[]), %s, %s, %s, true"
)


def raw_booking(cur, user: int, host: int, stack: int, devices: list[int], start, end) -> None:
    """The minimal booking transaction: what the service must do whatever else it checks."""
    cur.execute("SELECT id FROM accounts_user WHERE id = %s FOR UPDATE", [user])
    cur.execute(
        "SELECT id FROM inventory_accelerator WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
        [sorted(devices)],
    )
    cur.execute(RAW_RESERVATION, [user, host, stack, start, end])
    cur.execute(RAW_ALLOCATIONS, [sorted(devices), cur.fetchone()[0], start, end])


def measure_floor(bench_url: str, data: dict, picked, width: int, rng) -> dict:
    """Raw booking transactions on distinct free hours, `width` connections at once."""
    import psycopg2

    jobs: list[list[tuple]] = [[] for _ in range(width)]
    for i, (acc, start) in enumerate(picked):
        user, stack = rng.choice(data["users"]), data["stack_of"][acc.host_id]
        jobs[i % width].append((user, acc.host_id, stack, [acc.pk], start, start + 4 * Q))
    conns = [psycopg2.connect(bench_url) for _ in range(width)]  # connected before the clock
    results, lock = [], threading.Lock()

    def client(conn, job):
        mine = []
        for booking in job:
            t0 = time.perf_counter()
            with conn, conn.cursor() as cur:  # one transaction, committed at the end
                raw_booking(cur, *booking)
            mine.append((201, (time.perf_counter() - t0) * 1000, b""))
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=pair) for pair in zip(conns, jobs, strict=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for conn in conns:
        conn.close()
    clients = "1 connection" if width == 1 else f"{width} connections"
    return report(f"raw booking transaction, {clients}", results, wall)


def database_urls(script: str, bench_db: str) -> tuple[str, str]:
    """DATABASE_URL (PostgreSQL only: figures on SQLite would mean nothing) and the URL of the
    throwaway database `bench_db` on the same server; exits with a clear message otherwise."""
    admin_url = os.environ.get("DATABASE_URL", "")
    if urlsplit(admin_url).scheme not in ("postgres", "postgresql", "pgsql"):
        sys.exit(
            f"bench/{script} measures PostgreSQL only (its figures mean nothing on SQLite):"
            "\n  DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres"
            f" .venv/bin/python bench/{script}"
        )
    if urlsplit(admin_url).path.strip("/") == bench_db:
        sys.exit(f"Name another database in DATABASE_URL: {bench_db} is dropped and recreated.")
    return admin_url, urlsplit(admin_url)._replace(path=f"/{bench_db}").geturl()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x less data: a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    parser.add_argument(
        "--database",
        default=BENCH_DB,
        metavar="NAME",
        help=f"the throwaway database, dropped and recreated (default {BENCH_DB})",
    )
    parser.add_argument("--repeat", type=int, default=20, help="availability runs per need")
    parser.add_argument("--budget", type=float, default=30, help="seconds per need (min 3 runs)")
    parser.add_argument(
        "--search-only", action="store_true", help="the availability search alone, no API phase"
    )
    parser.add_argument(
        "--api-only", action="store_true", help="the booking API and its floor, no search phase"
    )
    args = parser.parse_args()
    if args.search_only and args.api_only:
        parser.error("--search-only and --api-only exclude each other")
    if not args.database.isidentifier():
        parser.error(f"--database {args.database!r}: a plain name (letters, digits, _)")
    admin_url, bench_url = database_urls("booking.py", args.database)
    scale = 10 if args.quick else 1
    create_database(admin_url, name=args.database)
    try:
        with tempfile.TemporaryDirectory(prefix="porterbox-bench-") as var_dir:
            run(args, scale, bench_url, var_dir)
    finally:
        from django.conf import settings

        if settings.configured:
            from django.db import connections

            connections.close_all()
        if not args.keep:
            create_database(admin_url, drop_only=True, name=args.database)


def run(args, scale: int, bench_url: str, var_dir: str) -> None:
    t0 = time.perf_counter()
    setup_django(bench_url, var_dir)
    from django.db import connection
    from django.utils import timezone

    from portal.booking.models import BookingPolicy

    with connection.cursor() as cur:
        cur.execute("SHOW server_version")
        pg = cur.fetchone()[0]
    machine = f"{os.cpu_count()} CPUs, PostgreSQL {pg}, Python {sys.version.split()[0]}"
    print(f"Machine: {machine}; migrate {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    data = load(scale, timezone.now())
    loaded = time.perf_counter() - t0
    print(
        f"Load: {8 * len(data['hosts'])} accelerators on {len(data['hosts'])} hosts,"
        f" {data['allocations']} allocations (one reservation each):"
        f" {loaded:.1f} s with VACUUM ANALYZE"
    )
    table_sizes()
    search = {}
    if not args.api_only:
        print("Availability search, in-process (slots: at most 10):")
        search = measure_availability(args.repeat, args.budget)
    if args.search_only:
        return
    BookingPolicy.current()  # quotas out of the way: this measures the booking path
    BookingPolicy.objects.update(
        max_days_ahead=DAYS * 2, max_concurrent_reservations=10**6, max_device_hours_per_week=10**6
    )
    n = REQUESTS // scale
    picked = free_bookings(data, 4 * n, random.Random(SEED + 2))
    conn_max_age = portal_env(bench_url, var_dir)["DATABASE_CONN_MAX_AGE"]
    print(f"Booking API, gunicorn 4 workers x 4 threads, DATABASE_CONN_MAX_AGE={conn_max_age}:")
    with portal_server(bench_url, var_dir) as (port, log_path):
        api = measure_api(port, data, scale, picked[: 2 * n])
    print("The floor: the booking transaction alone, raw SQL through psycopg2:")
    rng = random.Random(SEED + 3)
    raw_floor = {
        "one": measure_floor(bench_url, data, picked[2 * n : 3 * n], 1, rng),
        "wide": measure_floor(bench_url, data, picked[3 * n :], WIDE, rng),
    }
    log = log_path.read_text()
    errors = log.count("Traceback")
    if errors:
        print(f"  !!!!!! {errors} TRACEBACKS IN THE GUNICORN LOG !!!!!!\n{log[-4000:]}")

    a, b = api["wide"], api["contended"]
    fives = sum(
        v for s, v in (api["one"]["statuses"] + a["statuses"] + b["statuses"]).items() if s >= 500
    )
    print(f"\nSummary ({machine})")
    print(f"  load               {data['allocations']:>7} allocations   {loaded:7.1f} s")
    for days, (median, p95, floor, worst) in search.items():
        print(
            f"  availability {days:2}d  median {median:7.1f} ms   p95 {p95:7.1f} ms"
            f"   floor median {floor:7.1f} ms   worst need/floor {worst:4.2f}"
        )
    rows = (
        ("API distinct 1", api["one"]), (f"API distinct {WIDE}", a), (f"API contended {THREADS}", b)
    )  # fmt: skip
    for name, f in rows:
        st = f["statuses"]
        print(
            f"  {name:17}  {f['rps']:5.0f} req/s  median {f['median']:5.0f} ms  p95"
            f" {f['p95']:5.0f} ms  201: {st[201]}/{f['n']}  409: {st[409]}"
            f"  other: {f['n'] - st[201] - st[409]}"
        )
    for width, key in ((1, "one"), (WIDE, "wide")):
        raw, mine = raw_floor[key]["rps"], api[key]["rps"]
        print(
            f"  floor {width}-wide       {raw:5.0f} req/s  API {mine:5.0f} req/s"
            f"  API/floor {mine / raw:5.1%}"
        )
    print(f"  double booking     {api['overlaps']} overlaps, {api['ok']}; 5xx: {fives}")
    print(f"  gunicorn log       {errors} tracebacks")


if __name__ == "__main__":
    main()
