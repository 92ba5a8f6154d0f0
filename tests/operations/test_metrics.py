"""GET /metrics: what Prometheus scrapes, who may scrape it, and how many queries it costs."""

from datetime import timedelta

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from portal.accounts.models import User
from portal.booking.models import Allocation, Reservation
from portal.inventory.models import Accelerator, DeviceSample, Host, Squatter
from portal.operations.metrics import PorterboxCollector
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    UserFactory,
)
from tests.helpers import NOW

S = timedelta(seconds=1)
M = timedelta(minutes=1)
H = timedelta(hours=1)
TOKEN = "s3cret-scrape-token"
R = Reservation.State


pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture(autouse=True)
def ticks(settings):
    settings.PORTAL_RECONCILE_SECONDS = 5  # a host counts as up for 60 s after a visit
    settings.PORTAL_METRICS_TOKEN = TOKEN


def booker():
    # One user for every reservation and job: hashing a password per user is slow.
    return User.objects.filter(username="booker").first() or UserFactory(username="booker")


def reserve(host, state, start, end, *, granted=None, devices=(), **allocation):
    """A reservation of `devices` for [start, end), opened `granted` after its start."""
    r = Reservation.objects.create(
        user=booker(),
        host=host,
        stack=DriverStackFactory(),
        state=state,
        start=start,
        end=end,
        granted_at=start + granted if granted is not None else None,
    )
    for device in devices:
        Allocation.objects.create(
            accelerator=device, reservation=r, start=start, end=end, **allocation
        )
    return r


def reading(device, at, **values):
    return DeviceSample.objects.create(accelerator=device, at=at, **values)


def squatter(device, pid=4242, **fields):
    return Squatter.objects.create(
        host=device.host, accelerator=device, pid=pid, unix_user="mallory", **fields
    )


@pytest.fixture
def fleet(db):
    """Three hosts in service and a retired one, with bookings, jobs, readings and a squatter."""
    alpha = HostFactory(name="alpha", last_seen=NOW - 30 * S)
    beta = HostFactory(
        name="beta", last_seen=NOW - 30 * S, last_error="ssh: timed out", drained_at=NOW - H
    )
    gamma = HostFactory(name="gamma", state=Host.State.MAINTENANCE, last_seen=NOW - 5 * M)
    omega = HostFactory(name="omega", state=Host.State.RETIRED, last_seen=NOW)
    a0, a1 = (AcceleratorFactory(host=alpha, index=i) for i in (0, 1))
    a2 = AcceleratorFactory(host=alpha, index=2, retired=True)
    b0 = AcceleratorFactory(host=beta, index=0, vendor=Accelerator.Vendor.AMD, arch="gfx90a")
    g0 = AcceleratorFactory(host=gamma, index=0)
    AcceleratorFactory(host=gamma, index=1, vendor=Accelerator.Vendor.INTEL, arch="")
    o0 = AcceleratorFactory(host=omega, index=0)

    # Open reservations: one of each state. Latencies of the granted ones: 3 s, 0 s (early).
    reserve(alpha, R.ACTIVE, NOW - H, NOW + H, granted=3 * S, devices=[a0])
    reserve(alpha, R.SCHEDULED, NOW + 2 * H, NOW + 3 * H, devices=[a1])
    reserve(beta, R.PROVISIONING, NOW - M, NOW + H, devices=[b0])
    reserve(alpha, R.ENDING, NOW - 2 * H, NOW - M, granted=-30 * S, devices=[a1])
    reserve(alpha, R.FAILED, NOW - 10 * M, NOW + 50 * M)
    reserve(alpha, R.PENDING_APPROVAL, NOW + 24 * H, NOW + 25 * H)
    # Over: not open, but their latencies count (45 s, 400 s, exactly 10 s).
    reserve(gamma, R.ENDED, NOW - 24 * H, NOW - 23 * H, granted=45 * S, devices=[g0])
    reserve(gamma, R.ENDED, NOW - 48 * H, NOW - 47 * H, granted=400 * S)
    reserve(gamma, R.ENDED, NOW - 72 * H, NOW - 71 * H, granted=10 * S)
    reserve(alpha, R.FAILED, NOW - 3 * H, NOW - 2 * H)
    reserve(alpha, R.CANCELLED, NOW + H, NOW + 2 * H, devices=[a1], active=False)
    # Held now, but by a retired device or host: left out.
    reserve(omega, R.ACTIVE, NOW - H, NOW + H, granted=S, devices=[o0])
    reserve(alpha, R.ACTIVE, NOW - H, NOW + H, devices=[a2])

    JobFactory.create_batch(2, state="queued", submitter=booker())
    JobFactory(state="requeued", submitter=booker())
    JobFactory(state="succeeded", submitter=booker())
    running = JobFactory(state="running", host=gamma, submitter=booker())
    Allocation.objects.create(accelerator=g0, job=running, start=NOW - M, end=NOW + H)

    reading(a0, NOW - 5 * M, utilization_pct=10.0)
    reading(
        a0, NOW - 30 * S, utilization_pct=87.5, memory_used_mib=40960, temperature_c=71.0,
        power_w=350.5,
    )  # fmt: skip
    reading(a0, NOW - 10 * S, resolution=DeviceSample.Resolution.HOUR, utilization_pct=5.0)
    reading(a1, NOW - 20 * M, utilization_pct=99.0)  # too old to say anything about now
    reading(b0, NOW - M, utilization_pct=12.0, memory_used_mib=1024)  # no temperature, power
    reading(a2, NOW - M, utilization_pct=50.0)
    reading(o0, NOW - M, utilization_pct=50.0)

    squatter(a0)
    squatter(a1, pid=7, gone_at=NOW - M)
    squatter(o0)


def scrape(client, **headers):
    response = client.get(reverse("metrics"), headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == CONTENT_TYPE_LATEST
    return parse(response.content.decode())


def parse(text):
    """{sample name: {((label, value), ...): value}}, labels sorted."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def by(metrics, name, label):
    return {dict(labels)[label]: value for labels, value in metrics[name].items()}


@pytest.fixture
def metrics(client, staff, fleet):
    client.force_login(staff)
    return scrape(client)


def test_it_says_which_hosts_are_up_and_drained(metrics):
    assert by(metrics, "porterbox_host_up", "host") == {"alpha": 1, "beta": 0, "gamma": 0}
    assert by(metrics, "porterbox_host_drained", "host") == {"alpha": 0, "beta": 1, "gamma": 1}


def test_it_counts_a_host_as_up_for_three_reconcile_ticks(client, staff, db, settings):
    HostFactory(name="slow", last_seen=NOW - 75 * S)
    client.force_login(staff)
    assert by(scrape(client), "porterbox_host_up", "host") == {"slow": 0}  # 5 s ticks: 60 s
    settings.PORTAL_RECONCILE_SECONDS = 30
    assert by(scrape(client), "porterbox_host_up", "host") == {"slow": 1}  # 3 x 30 s


def test_it_counts_devices_in_service_and_those_held_now(metrics):
    def per_device(name):
        return {
            (dict(labels)["host"], dict(labels)["vendor"]): value
            for labels, value in metrics[name].items()
        }

    assert per_device("porterbox_devices") == {
        ("alpha", "nvidia"): 2,
        ("beta", "amd"): 1,
        ("gamma", "intel"): 1,
        ("gamma", "nvidia"): 1,
    }
    assert per_device("porterbox_devices_busy") == {
        ("alpha", "nvidia"): 1,  # a reservation; the other device's slot is later
        ("beta", "amd"): 1,  # provisioning
        ("gamma", "intel"): 0,
        ("gamma", "nvidia"): 1,  # a running job
    }


def test_it_counts_reservations_whose_slot_is_not_over(metrics):
    assert by(metrics, "porterbox_reservations", "state") == {
        "pending": 1,
        "scheduled": 1,
        "provisioning": 1,
        "active": 2,  # one of them holds a retired device; one on a retired host is left out
        "ending": 1,
        "failed": 1,
    }
    assert metrics["porterbox_reservations_active"] == {(): 3}


def test_it_counts_jobs_waiting_and_holding_devices(metrics):
    assert by(metrics, "porterbox_jobs", "state") == {
        "queued": 2,
        "requeued": 1,
        "scheduled": 0,
        "starting": 0,
        "running": 1,
    }
    assert metrics["porterbox_jobs_queued"] == {(): 3}


def test_it_builds_the_provisioning_latency_histogram(metrics):
    # Granted 3 s, 0 s (early), 45 s, 400 s, 10 s and 1 s (retired host) after the start.
    assert by(metrics, "porterbox_provisioning_latency_seconds_bucket", "le") == {
        "1.0": 2,
        "2.0": 2,
        "5.0": 3,
        "10.0": 4,  # a bound is inclusive
        "30.0": 4,
        "60.0": 5,
        "120.0": 5,
        "300.0": 5,
        "600.0": 6,
        "+Inf": 6,
    }
    assert metrics["porterbox_provisioning_latency_seconds_count"] == {(): 6}
    assert metrics["porterbox_provisioning_latency_seconds_sum"] == {(): 459}


def test_it_reports_each_devices_latest_reading_of_the_last_ten_minutes(metrics):
    def per_device(name):
        return {
            (dict(labels)["host"], dict(labels)["vendor"], dict(labels)["index"]): value
            for labels, value in metrics.get(name, {}).items()
        }

    assert per_device("porterbox_device_utilization_percent") == {
        ("alpha", "nvidia", "0"): 87.5,
        ("beta", "amd", "0"): 12.0,
    }
    assert per_device("porterbox_device_memory_used_bytes") == {
        ("alpha", "nvidia", "0"): 40960 * 1024 * 1024,
        ("beta", "amd", "0"): 1024 * 1024 * 1024,
    }
    assert per_device("porterbox_device_temperature_celsius") == {("alpha", "nvidia", "0"): 71}
    assert per_device("porterbox_device_power_watts") == {("alpha", "nvidia", "0"): 350.5}


def test_it_counts_open_squatters_per_host(metrics):
    assert by(metrics, "porterbox_squatters", "host") == {"alpha": 1, "beta": 0, "gamma": 0}


def test_it_describes_every_metric(client, staff, fleet):
    client.force_login(staff)
    text = client.get(reverse("metrics")).content.decode()
    families = list(text_string_to_metric_families(text))
    assert len(families) == 14
    assert all(family.name.startswith("porterbox_") and family.documentation for family in families)


def test_it_answers_for_an_empty_site(client, staff):
    client.force_login(staff)
    metrics = scrape(client)
    assert "porterbox_host_up" not in metrics
    assert metrics["porterbox_jobs_queued"] == {(): 0}
    assert metrics["porterbox_provisioning_latency_seconds_count"] == {(): 0}
    assert metrics["porterbox_provisioning_latency_seconds_sum"] == {(): 0}


def test_it_reads_the_database_a_fixed_number_of_times(fleet):
    def queries():
        with CaptureQueriesContext(connection) as captured:
            list(PorterboxCollector().collect())
        return len(captured)

    before = queries()
    for n in range(5):
        device = AcceleratorFactory(host=HostFactory(last_seen=NOW))
        reading(device, NOW - S, utilization_pct=1.0)
        reserve(device.host, R.ACTIVE, NOW - H, NOW + H, granted=n * S, devices=[device])
        squatter(device)
    assert queries() == before <= 8


def test_it_lets_the_scraper_in_with_the_token(client, fleet):
    metrics = scrape(client, authorization=f"Bearer {TOKEN}")
    assert by(metrics, "porterbox_host_up", "host")["alpha"] == 1


def test_it_answers_head(client, staff):
    client.force_login(staff)
    assert client.head(reverse("metrics")).status_code == 200


def test_it_keeps_proxies_from_caching_it(client, staff):
    client.force_login(staff)
    assert "no-store" in client.get(reverse("metrics"))["Cache-Control"]


def test_it_challenges_anonymous_callers(client, db):
    response = client.get(reverse("metrics"))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer ")
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer",
        "Bearer ünïcödé",
    ],
)
def test_it_refuses_a_wrong_token(client, db, authorization):
    response = client.get(reverse("metrics"), headers={"authorization": authorization})
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="porterbox", error="invalid_token"'


@pytest.mark.parametrize("authorization", ["Bearer ", "Bearer", f"Bearer {TOKEN}"])
def test_it_accepts_no_token_when_none_is_set(client, db, settings, authorization):
    settings.PORTAL_METRICS_TOKEN = ""
    response = client.get(reverse("metrics"), headers={"authorization": authorization})
    assert response.status_code == 401


def test_it_forbids_logged_in_users_who_are_not_staff(client, user):
    # They are known and logging in again would not help: 403, not a 401 challenge.
    client.force_login(user)
    response = client.get(reverse("metrics"))
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response


def test_it_answers_only_get_and_head(client, staff):
    client.force_login(staff)
    response = client.post(reverse("metrics"))
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


def test_it_answers_503_when_the_database_fails(client, staff, monkeypatch):
    client.force_login(staff)

    def broken(self):
        raise DatabaseError("connection lost")
        yield

    monkeypatch.setattr(PorterboxCollector, "collect", broken)
    response = client.get(reverse("metrics"))
    assert response.status_code == 503
