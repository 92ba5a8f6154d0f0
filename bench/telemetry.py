"""Telemetry benchmark on PostgreSQL: storing readings, rolling them up, charts, /metrics.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/telemetry.py

Like bench/booking.py, it only uses DATABASE_URL's database to CREATE and DROP a throwaway one
(`porterbox_bench`). It loads the fleet of bench/booking.py (1,000 accelerators on 125 hosts),
then what the loop keeps at a reading a minute: 49 hours of readings of every device (the
oldest hour is due for its rollup) and 7 days of hourly rows before them (`--days` for more).
Then it times:
- `record()`: one host's reading (8 devices), as each reconcile pass with telemetry writes it;
- `retain()`: the hourly run that rolls the oldest hour of every device up and deletes it;
- `charts.host_charts()`: the host page's series for the last hour, day and week of one host;
- the `/metrics` collector over the whole fleet.
Printed: median and p95 in ms (seconds for retain), queries, and the table's size. Nothing is
asserted.
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

COLUMNS = (
    "accelerator_id, at, resolution, readings, utilization_pct, utilization_max_pct, "
    "memory_used_mib, temperature_c, power_w"
)


def load(now, days: int) -> list:
    from django.db import connection

    from portal.booking.availability import floor_to

    rng = random.Random(bb.SEED)
    _, hosts, accs = bb.make_fleet()
    hour = floor_to(now, timedelta(hours=1))
    with connection.cursor() as cursor:
        for acc in accs:
            rows = []
            for m in range(49 * 60):  # a reading a minute
                busy = rng.random() * 100
                at = now - timedelta(minutes=m)
                rows.append((acc.pk, at.isoformat(), 0, 1, busy, busy, 1000, 40 + busy / 3, 300))
            for h in range(50, 50 + 24 * days):  # the hourly rows before them
                at = hour - timedelta(hours=h)
                rows.append((acc.pk, at.isoformat(), 3600, 60, 50, 99, 2000, 70, 280))
            bb.copy(cursor, "operations_devicesample", COLUMNS, rows)
        cursor.execute("ANALYZE operations_devicesample")
    return [h for h, _ in hosts]


def timed(function, repeat: int) -> tuple[list[float], int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            t0 = time.perf_counter()
            function()
            times.append((time.perf_counter() - t0) * 1000)
    return times, len(queries)


def line(name: str, times: list[float], queries: int) -> None:
    print(
        f"{name}: median {statistics.median(times):.1f} ms, p95 {bb.pct(times, 95):.1f} ms "
        f"over {len(times)} runs; {queries} queries"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--days", type=int, default=7, help="of hourly rows (default 7)")
    args = parser.parse_args()
    with bb.throwaway_django():
        from django.db import connection
        from django.utils import timezone
        from prometheus_client import CollectorRegistry, generate_latest

        from portal.inventory import charts
        from portal.inventory.models import Host
        from portal.operations import telemetry
        from portal.operations.metrics import PorterboxCollector
        from provisioning.client import Telemetry

        now = timezone.now()
        t0 = time.perf_counter()
        hosts = load(now, args.days)
        print(f"load: {time.perf_counter() - t0:.1f} s")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), pg_size_pretty(pg_table_size('operations_devicesample')), "
                "pg_size_pretty(pg_indexes_size('operations_devicesample')) "
                "FROM operations_devicesample"
            )
            rows, table, indexes = cursor.fetchone()
        print(f"operations_devicesample: {rows} rows, table {table}, indexes {indexes}")

        host = Host.objects.get(pk=hosts[0].pk)
        # As the client gives it to the loop: the agent's answer through its parser.
        answer = Telemetry.parse({
            "samples": [
                {"vendor": a.vendor, "index": a.index, "utilization_pct": 50.0,
                 "memory_used_mib": 1000, "temperature_c": 60.0, "power_w": 300.0,
                 "processes": [{"pid": 100 + a.index, "user": "alice", "used_memory_mib": 900,
                                "system": False}]}
                for a in host.accelerators.all()
            ],
            "errors": [],
        })  # fmt: skip
        moments = iter(now + timedelta(seconds=i + 1) for i in range(args.repeat))
        line(
            "record() of 8 devices",
            *timed(lambda: telemetry.record(host, answer, next(moments)), args.repeat),
        )

        t0 = time.perf_counter()
        done = telemetry.retain(now)
        print(
            f"retain(): {time.perf_counter() - t0:.2f} s: {done.rolled_up} hourly rows written, "
            f"{done.readings_deleted} readings deleted"
        )

        for name, span in charts.SPANS.items():
            line(
                f"host page series, {name}",
                *timed(lambda s=span: charts.host_charts(host, s, now=now), args.repeat),
            )

        sizes: list[int] = []

        def scrape() -> None:
            registry = CollectorRegistry()
            registry.register(PorterboxCollector(now))
            sizes.append(len(generate_latest(registry)))

        line("/metrics collector, whole fleet", *timed(scrape, args.repeat))
        print(f"/metrics body: {sizes[-1]} bytes")


if __name__ == "__main__":
    main()
