"""Bookings of a porterbox host that is a Slurm node, mirrored as Slurm reservations on a real
cluster: made in one pass, following an extension, removed at the end; a Slurm job that would
overlap one starts only after it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from portal.booking import services as booking
from portal.booking.models import BookingPolicy
from portal.clusters.mirror import mirror_cluster
from portal.clusters.models import SlurmNode
from portal.inventory.models import MaintenanceWindow
from tests.clusters.conftest import until
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory, UserFactory

pytestmark = pytest.mark.once
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


@pytest.fixture
def node_host(cluster, slurm_cluster):
    host = HostFactory(name="gpunode")
    stack = DriverStackFactory(name="cuda-12")
    host.stacks.add(stack)
    for index in range(2):
        AcceleratorFactory(host=host, index=index)
    SlurmNode.objects.create(host=host, cluster=cluster, node_name=slurm_cluster.node)
    # Minute granularity, so the test waits minutes, not quarters of an hour.
    BookingPolicy.objects.update_or_create(pk=1, defaults={"granularity_minutes": 1,
                                                           "min_minutes": 1})  # fmt: skip
    return host


def slurm_reservations(slurm_cluster) -> dict[str, tuple[datetime, datetime]]:
    answer = slurm_cluster.run("env", "TZ=UTC", "scontrol", "-o", "show", "reservation")
    found = {}
    for line in answer.stdout.splitlines():
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        if "ReservationName" in fields:
            start, end = (
                datetime.strptime(fields[k], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
                for k in ("StartTime", "EndTime")
            )
            found[fields["ReservationName"]] = (start, end)
    return found


def test_a_booking_is_mirrored_extended_and_removed_and_slurm_jobs_run_around_it(
    cluster, node_host, slurm_cluster
):
    user = UserFactory(debian_member_source="staff")
    # On the minute, at least half a minute ahead: Slurm refuses to change a reservation that
    # has started, and the extension below comes a second or so after the booking.
    start = (timezone.now() + 90 * SECOND).replace(second=0, microsecond=0)
    stack = node_host.stacks.get()
    accelerator = node_host.accelerators.order_by("index").first()
    reservation = booking.reservation_create(
        user=user, host=node_host, stack=stack, start=start, end=start + MINUTE,
        accelerators=[accelerator],
    )  # fmt: skip
    name = f"porterbox-{slurm_cluster.node}-r{reservation.pk}"

    report = mirror_cluster(cluster.pk)

    assert report.created == [name] and not report.error
    assert slurm_reservations(slurm_cluster)[name] == (start, start + MINUTE)

    booking.reservation_extend(reservation=reservation, end=start + 2 * MINUTE, actor=user)
    report = mirror_cluster(cluster.pk)

    assert report.updated == [name]
    assert slurm_reservations(slurm_cluster)[name] == (start, start + 2 * MINUTE)
    assert mirror_cluster(cluster.pk).updated == []  # the same: nothing to do

    # A three-minute job submitted now overlaps the booking (it starts at most 90 s from
    # now), so Slurm starts it after it. (A one-minute job fitted before a booking more than a
    # minute ahead, and Slurm rightly started it at once.)
    submitted = slurm_cluster.run(
        "sbatch", "--parsable", "--partition=gpu", "--time=3", "--job-name=around-booking",
        "--output=/dev/null", "--wrap=true",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip())

    def started() -> datetime | None:
        answer = slurm_cluster.run("squeue", "--json", "--states=all")
        (job,) = [j for j in json.loads(answer.stdout)["jobs"] if j["job_id"] == job_id]
        running = job["job_state"] in ("RUNNING", "COMPLETING", "COMPLETED")
        return datetime.fromtimestamp(job["start_time"], UTC) if running else None

    began = until(started, timeout=240, every=2)
    assert isinstance(began, datetime) and began >= start + 2 * MINUTE

    # The booking is over: after the next pass Slurm has no reservation for it.
    assert timezone.now() >= start + 2 * MINUTE
    mirror_cluster(cluster.pk)
    assert name not in slurm_reservations(slurm_cluster)


def test_a_cancelled_booking_is_removed_from_slurm(cluster, node_host, slurm_cluster):
    user = UserFactory(debian_member_source="staff")
    start = timezone.now().replace(second=0, microsecond=0) + 5 * MINUTE
    reservation = booking.reservation_create(
        user=user, host=node_host, stack=node_host.stacks.get(), start=start,
        end=start + 10 * MINUTE, whole_host=True,
    )  # fmt: skip
    name = f"porterbox-{slurm_cluster.node}-r{reservation.pk}"
    mirror_cluster(cluster.pk)
    assert name in slurm_reservations(slurm_cluster)

    booking.reservation_cancel(reservation=reservation, actor=user)
    report = mirror_cluster(cluster.pk)

    assert report.deleted == [name]
    assert name not in slurm_reservations(slurm_cluster)


def test_a_maintenance_window_of_a_slurm_node_is_mirrored_and_removed_with_it(
    cluster, node_host, slurm_cluster
):
    start = timezone.now().replace(second=0, microsecond=0) + 30 * MINUTE
    window = MaintenanceWindow.objects.create(
        host=node_host, start=start, end=start + 60 * MINUTE, reason="firmware"
    )
    name = f"porterbox-{slurm_cluster.node}-m{window.pk}"

    assert mirror_cluster(cluster.pk).created == [name]
    assert slurm_reservations(slurm_cluster)[name] == (start, start + 60 * MINUTE)

    window.delete()

    assert mirror_cluster(cluster.pk).deleted == [name]
    assert name not in slurm_reservations(slurm_cluster)


def test_reservations_not_made_by_the_portal_are_left_alone(cluster, node_host, slurm_cluster):
    start = (timezone.now() + 90 * MINUTE).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    made = slurm_cluster.run(
        "env", "TZ=UTC", "scontrol", "create", "reservation", "ReservationName=site-maint",
        f"StartTime={start}", "Duration=10", "Nodes=ALL", "Users=root", "Flags=MAINT",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    try:
        report = mirror_cluster(cluster.pk)

        assert report.deleted == [] and "site-maint" in slurm_reservations(slurm_cluster)
    finally:
        slurm_cluster.run("scontrol", "delete", "ReservationName=site-maint")
