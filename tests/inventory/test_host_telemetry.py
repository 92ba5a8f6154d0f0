"""Per-device telemetry on the host page: series per span, their drawing, processes, health."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db.models import prefetch_related_objects
from django.urls import reverse

from portal.booking.models import Allocation, Reservation
from portal.inventory import charts
from portal.inventory.models import DeviceSample
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

# Not tests.helpers.NOW: the readings below lie at fixed times of 4 May 2026 around this one.
NOW = datetime(2026, 5, 4, 12, 30, tzinfo=UTC)
HOUR = DeviceSample.Resolution.HOUR


def reading(acc, at, **values):
    return DeviceSample.objects.create(accelerator=acc, at=at, **values)


def rollup(acc, at, readings=60, **values):
    return DeviceSample.objects.create(
        accelerator=acc, at=at, resolution=HOUR, readings=readings, **values
    )


@pytest.fixture(autouse=True)
def _now():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def host(db):
    return HostFactory(name="gpu1")


@pytest.fixture
def acc(host):
    return AcceleratorFactory(host=host, index=0, model="H100", memory_mib=80 * 1024)


def series_of(host, span):
    (series,) = charts.device_series(host, charts.SPANS[span], now=NOW)
    return series.points


def test_it_gives_the_readings_of_the_last_hour_as_they_are(host, acc):
    reading(acc, NOW - timedelta(minutes=61), utilization_pct=99)  # before the span
    reading(acc, NOW - timedelta(minutes=30), utilization_pct=10, temperature_c=40)
    reading(acc, NOW - timedelta(minutes=29), utilization_pct=20, memory_used_mib=1024)
    rollup(acc, NOW - timedelta(minutes=30), utilization_pct=77)  # rollups are not readings

    points = series_of(host, "hour")

    assert [(p.at, p.utilization_pct) for p in points] == [
        (NOW - timedelta(minutes=30), 10),
        (NOW - timedelta(minutes=29), 20),
    ]
    assert points[0].temperature_c == 40 and points[0].memory_used_mib is None
    assert points[1].memory_used_mib == 1024


def test_it_averages_a_day_into_ten_minute_buckets(host, acc):
    base = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
    reading(acc, base + timedelta(minutes=1), utilization_pct=10, temperature_c=50)
    reading(acc, base + timedelta(minutes=5), utilization_pct=30, temperature_c=60)
    reading(acc, base + timedelta(minutes=9, seconds=59), memory_used_mib=2048)  # NULL util
    reading(acc, base + timedelta(minutes=10), utilization_pct=90, memory_used_mib=512)
    reading(acc, NOW - timedelta(hours=25), utilization_pct=100)  # before the span

    points = series_of(host, "day")

    assert [p.at for p in points] == [base, base + timedelta(minutes=10)]
    first, second = points
    assert first.utilization_pct == pytest.approx(20)  # the NULL is left out of the mean
    assert first.utilization_max_pct == 30
    assert first.temperature_c == 60 and first.memory_used_mib == 2048
    assert second.utilization_pct == pytest.approx(90) and second.temperature_c is None


def test_it_gives_a_week_of_hours_from_rollups_and_readings(host, acc):
    old_hour = datetime(2026, 5, 1, 7, 0, tzinfo=UTC)
    rollup(
        acc,
        old_hour,
        readings=60,
        utilization_pct=40,
        utilization_max_pct=95,
        memory_used_mib=4096,
        temperature_c=70,
    )
    # The next hour is still readings: bucketed to the hour beside the rollup.
    reading(acc, old_hour + timedelta(hours=1, minutes=2), utilization_pct=10, temperature_c=50)
    reading(acc, old_hour + timedelta(hours=1, minutes=40), utilization_pct=30, temperature_c=55)
    rollup(acc, NOW - timedelta(days=8), utilization_pct=100)  # before the span

    points = series_of(host, "week")

    assert [p.at for p in points] == [old_hour, old_hour + timedelta(hours=1)]
    rolled, read = points
    assert rolled.utilization_pct == pytest.approx(40) and rolled.utilization_max_pct == 95
    assert rolled.memory_used_mib == 4096 and rolled.temperature_c == 70
    assert read.utilization_pct == pytest.approx(20) and read.utilization_max_pct == 30
    assert read.temperature_c == 55


def test_it_weighs_a_rollup_by_its_readings_in_a_bucket(host, acc):
    # A shorter raw retention puts a rollup and readings in one 10-minute bucket's reach of a
    # day; a rollup of 50 readings outweighs one reading.
    hour = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
    rollup(acc, hour, readings=50, utilization_pct=60)
    reading(acc, hour + timedelta(minutes=3), utilization_pct=9)

    (point,) = series_of(host, "day")

    assert point.utilization_pct == pytest.approx((60 * 50 + 9) / 51)


def test_it_reads_every_device_in_one_query(host, acc, django_assert_num_queries):
    other = AcceleratorFactory(host=host, index=1, model="H100")
    AcceleratorFactory(host=host, index=2, retired=True)
    reading(acc, NOW - timedelta(minutes=5), utilization_pct=1)
    reading(other, NOW - timedelta(minutes=5), utilization_pct=2)
    prefetch_related_objects([host], "accelerators")  # as the view does

    for span in charts.SPANS.values():
        with django_assert_num_queries(1):
            series = charts.device_series(host, span, now=NOW)
        assert [s.accelerator.index for s in series] == [0, 1]


def test_it_breaks_the_line_where_more_than_two_buckets_are_missing():
    start = datetime(2026, 5, 4, tzinfo=UTC)
    step = timedelta(minutes=10)
    # Buckets 0 and 1, then 4 (two missing: joined), then 8 (three missing: broken).
    times = [start + n * step for n in (0, 1, 4, 8)]

    lines = charts.polylines(
        times,
        [0, 50, 100, 25],
        start=start,
        end=start + 10 * step,
        step=step,
        scale=lambda v: v,
    )

    assert lines == ["0.0,120.0 60.0,60.0 240.0,0.0", "479.0,90.0 481.0,90.0"]


def test_it_skips_null_values_and_clamps_to_the_scale():
    start = datetime(2026, 5, 4, tzinfo=UTC)
    step = timedelta(minutes=1)
    times = [start + n * step for n in range(4)]

    lines = charts.polylines(
        times,
        [None, 150, None, -5],
        start=start,
        end=start + 4 * step,
        step=step,
        scale=lambda v: v,
    )

    assert lines == ["150.0,0.0 450.0,120.0"]
    assert charts.summarize([None, 10, None, 30]) == charts.Summary(latest=30, mean=20, max=30)
    assert charts.summarize([None, None]) is None


def test_it_scales_memory_to_the_device_and_describes_each_metric(host, acc):
    points = [
        charts.Point(NOW - timedelta(minutes=2), 10, 10, 20 * 1024, 40),
        charts.Point(NOW - timedelta(minutes=1), 30, 30, 40 * 1024, None),
    ]
    chart = charts.chart(charts.DeviceSeries(acc, points), charts.SPANS["hour"], now=NOW)

    utilization, memory, temperature = chart.metrics
    assert memory.polylines == ["580.0,90.0 590.0,60.0"]  # 25% then 50% of 80 GiB
    assert utilization.description == "Utilisation: latest 30%, mean 20%, maximum 30%."
    assert memory.description == (
        "Memory used: latest 40 GiB (50%), mean 30 GiB (37.5%), maximum 40 GiB (50%)."
    )
    assert temperature.description == "Temperature: latest 40 °C, mean 40 °C, maximum 40 °C."
    assert temperature.polylines == ["579.0,72.0 581.0,72.0"]  # a lone point is a tick


# -- The page -----------------------------------------------------------------------------------


@pytest.fixture
def busy_host(host, acc):
    reading(acc, NOW - timedelta(minutes=3), utilization_pct=20, temperature_c=50)
    reading(acc, NOW - timedelta(minutes=2), utilization_pct=60, temperature_c=70)
    reading(acc, NOW - timedelta(minutes=1), utilization_pct=40, memory_used_mib=8192)
    host.telemetry = {
        "samples": [
            {
                "vendor": "nvidia",
                "index": 0,
                "utilization_pct": 40.0,
                "processes": [
                    {"pid": 4242, "user": "alice", "used_memory_mib": 8000, "system": False}
                ],
            }
        ],
        "errors": [{"vendor": "amd", "message": "rocm-smi exited with status 1: boom"}],
    }
    host.telemetry_at = NOW - timedelta(seconds=30)
    host.save()
    return host


def page(client, host, query=""):
    return client.get(reverse("inventory:host_detail", args=[host.name]) + query)


def test_it_draws_a_chart_per_device_with_its_figures(client, busy_host):
    AcceleratorFactory(host=busy_host, index=1, model="Quiet GPU")

    response = page(client, busy_host)

    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('role="img"') == 1 and "<polyline" in html
    assert "Utilisation: latest 40%, mean 40%, maximum 60%." in html
    assert "Temperature: latest 70 °C, mean 60 °C, maximum 70 °C." in html
    assert "Memory used: latest 8 GiB (10%)" in html
    assert "No readings yet over the last hour." in html  # the quiet device
    assert '<a href="?span=hour#telemetry" aria-current="true">' in html
    assert '<a href="?span=day#telemetry">' in html


def test_it_shows_the_axis_times_in_the_users_zone(client, busy_host):
    client.force_login(UserFactory(time_zone="Europe/Berlin"))

    html = page(client, busy_host).content.decode()

    assert "Mon 4 May 13:30" in html and "Mon 4 May 14:30 CEST" in html


def test_it_says_when_there_is_no_reading(client, host, acc):
    html = page(client, host, "?span=week").content.decode()
    assert "No readings yet over the last 7 days." in html
    assert '<a href="?span=week#telemetry" aria-current="true">' in html


def test_it_refuses_an_unknown_span(client, busy_host):
    response = page(client, busy_host, "?span=<year>")

    assert response.status_code == 400
    html = response.content.decode()
    assert "Unknown span “&lt;year&gt;”: choose one of hour, day, week." in html
    assert "<polyline" not in html


ROW = "<td>#0 H100</td><td>4242</td><td>alice</td><td>8000 MiB</td>"


def test_it_shows_process_owners_to_staff_and_the_devices_holders_only(
    client, busy_host, acc, staff
):
    html = page(client, busy_host).content.decode()
    assert "alice" not in html and "4242" not in html and "Current processes" not in html

    client.force_login(UserFactory())  # a member who holds nothing here
    html = page(client, busy_host).content.decode()
    assert "Current processes" in html and "As of Mon 4 May 2026 12:29:30" in html
    assert "alice" not in html and "4242" not in html
    assert "1 process on devices you do not hold" in html
    assert "rocm-smi exited" not in html  # probe errors are for staff

    holder = UserFactory()
    reservation = Reservation.objects.create(
        user=holder, host=busy_host, stack=DriverStackFactory(), start=NOW - timedelta(hours=1),
        end=NOW + timedelta(hours=1), state=Reservation.State.ACTIVE,
    )  # fmt: skip
    Allocation.objects.create(accelerator=acc, reservation=reservation, start=reservation.start,
                              end=reservation.end)  # fmt: skip
    client.force_login(holder)
    assert ROW in page(client, busy_host).content.decode()

    client.force_login(staff)
    assert ROW in page(client, busy_host).content.decode()


def test_it_shows_staff_the_probe_errors(client, busy_host, staff):
    client.force_login(staff)
    html = page(client, busy_host).content.decode()
    assert "rocm-smi exited with status 1: boom" in html


def test_it_shows_health_and_lets_staff_resume_a_drained_host(client, host, staff):
    host.health_problems = [{"code": "too_hot", "message": "GPU 0 is at 95 °C (limit 90 °C)"}]
    host.drained_at = NOW - timedelta(hours=1)
    host.drain_reason = "too hot"
    host.idle_reclaim_minutes = 120
    host.squatter_kill = True
    host.squatter_grace_minutes = 5
    host.save()
    resume = reverse("operations:host_resume", args=[host.name])
    maintenance = reverse("operations:host_maintenance", args=[host.name])

    html = page(client, host).content.decode()
    assert "GPU 0 is at 95 °C" in html and "Drained since Mon 4 May 2026 11:30 UTC" in html
    assert resume not in html and maintenance not in html and "Idle reclaim" not in html

    client.force_login(UserFactory())
    html = page(client, host).content.decode()
    assert resume not in html and maintenance not in html
    assert "90 °C" in html and "killed after 5 min" in html and "after 120 min" in html

    client.force_login(staff)
    html = page(client, host).content.decode()
    assert f'action="{resume}"' in html and "csrfmiddlewaretoken" in html
    assert "Resume: accept new sessions and jobs" in html
    assert f'href="{maintenance}"' in html


def test_it_says_idle_reclaim_is_off_and_squatters_are_warned(client, host):
    client.force_login(UserFactory())
    html = page(client, host).content.decode()
    assert "warned, not killed" in html and "<dd>off</dd>" in html
    assert "No known problem." in html


@pytest.mark.parametrize("span", ["hour", "day", "week"])
def test_it_keeps_the_queries_bounded(client, staff, span, django_assert_max_num_queries):
    client.force_login(staff)
    small = HostFactory(name="small")
    AcceleratorFactory(host=small, index=0)
    large = HostFactory(name="large")
    for index in range(8):
        acc = AcceleratorFactory(host=large, index=index)
        DeviceSample.objects.bulk_create(
            DeviceSample(accelerator=acc, at=NOW - timedelta(minutes=m), utilization_pct=m % 100)
            for m in range(1, 6 * 60, 7)
        )
        rollup(acc, NOW - timedelta(days=3), utilization_pct=5)

    page(client, small, f"?span={span}")  # warm the session and the content types
    with django_assert_max_num_queries(11) as small_queries:
        assert page(client, small, f"?span={span}").status_code == 200
    with django_assert_max_num_queries(len(small_queries)):
        assert page(client, large, f"?span={span}").status_code == 200


def test_it_shows_staff_the_squatters_and_the_latest_health_checks(client, host, acc, staff):
    from portal.inventory.models import HealthCheck, Squatter

    Squatter.objects.create(host=host, accelerator=acc, pid=4242, unix_user="mallory")
    Squatter.objects.create(
        host=host, accelerator=acc, pid=77, unix_user="gone", gone_at=NOW - timedelta(hours=1)
    )
    HealthCheck.objects.create(
        host=host, accelerator=acc, started=NOW - timedelta(hours=2), passed=False,
        exit_status=3, output="CUDA error: uncorrectable ECC error encountered",
    )  # fmt: skip

    client.force_login(UserFactory())
    html = page(client, host).content.decode()
    assert "mallory" not in html and "ECC error" not in html  # for staff only

    client.force_login(staff)
    html = page(client, host).content.decode()
    assert "<code>mallory</code>" in html and "<code>gone</code>" not in html  # open ones
    assert "failed (3)" in html and "uncorrectable ECC error" in html


def test_readings_rarer_than_the_setting_are_joined_into_lines_not_dots(host, acc):
    """A host read every six minutes (a slow loop; the demo's data is every ten): the hour's
    chart is lines, not a dot per reading; a real outage still breaks them."""
    minutes = (58, 52, 46, 40, 34, 4)  # every six minutes, then nothing for half an hour
    points = [charts.Point(NOW - timedelta(minutes=m), 50, 50, 1024, 40) for m in minutes]

    chart = charts.chart(charts.DeviceSeries(acc, points), charts.SPANS["hour"], now=NOW)

    utilization = chart.metrics[0]
    assert len(utilization.polylines) == 2
    assert [len(line.split()) for line in utilization.polylines] == [5, 2]  # 2: a lone tick
    assert charts.cadence([NOW, NOW + timedelta(minutes=10), NOW + timedelta(minutes=20)]) == (
        timedelta(minutes=10)
    )
    assert charts.cadence([NOW]) == timedelta(0)
