"""Device telemetry: the loop's readings stored compactly, then rolled up and expired.

The reconcile pass asks a host's agent for a reading (`telemetry` verb, docs/agent.md) once
every PORTAL_TELEMETRY_SECONDS and `record`s it: one DeviceSample row per device, and the whole
answer on the host (its processes, for the host page and the squatter check). `retain`, run
hourly by beat, turns every full hour of readings older than PORTAL_TELEMETRY_RAW_HOURS into
one hourly row, in the same transaction that deletes those readings (so an hour is either
readings or a rollup, never both, and charts never count it twice), and deletes hourly rows
older than PORTAL_TELEMETRY_HOURLY_DAYS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Avg, Count, Max
from django.db.models.functions import TruncHour

from portal.booking.availability import floor_to
from portal.inventory.models import Accelerator, DeviceSample, Host
from provisioning.client import Telemetry

R = DeviceSample.Resolution
HOUR = timedelta(hours=1)


def due(host: Host, now: datetime) -> bool:
    """Whether this pass should read the host's devices."""
    interval = timedelta(seconds=settings.PORTAL_TELEMETRY_SECONDS)
    return host.telemetry_at is None or now - host.telemetry_at >= interval


def record(host: Host, answer: Telemetry, now: datetime) -> dict:
    """Store one reading of the host's devices (read like any input: provisioning.client
    `Telemetry`); returns it as stored on the host (`Host.telemetry`)."""
    reading = answer.as_dict()
    devices = {(a.vendor, a.index): a for a in Accelerator.objects.filter(host=host, retired=False)}
    rows = []
    for s in answer.samples:
        accelerator = devices.get((s.vendor, s.index))
        if accelerator is None:
            continue  # not in the inventory: the health check says so
        rows.append(
            DeviceSample(
                accelerator=accelerator,
                at=now,
                resolution=R.READING,
                utilization_pct=s.utilization_pct,
                utilization_max_pct=s.utilization_pct,
                memory_used_mib=s.memory_used_mib,
                temperature_c=s.temperature_c,
                power_w=s.power_w,
            )
        )
    with transaction.atomic():
        # Two passes in the same instant (a retried task) write the same rows once.
        DeviceSample.objects.bulk_create(rows, ignore_conflicts=True)
        Host.objects.filter(pk=host.pk).update(telemetry=reading, telemetry_at=now)
    host.telemetry, host.telemetry_at = reading, now
    return reading


@dataclass(frozen=True)
class Retained:
    rolled_up: int  # hourly rows written
    readings_deleted: int
    hours_deleted: int


def retain(now: datetime) -> Retained:
    """Roll full hours of old readings into hourly rows, and expire old hourly rows."""
    cutoff = floor_to(now - timedelta(hours=settings.PORTAL_TELEMETRY_RAW_HOURS), HOUR)
    old = DeviceSample.objects.filter(resolution=R.READING, at__lt=cutoff)
    with transaction.atomic():
        hours = (
            old.annotate(hour=TruncHour("at", tzinfo=UTC))
            .values("accelerator_id", "hour")
            .annotate(
                utilization=Avg("utilization_pct"),
                utilization_max=Max("utilization_max_pct"),
                memory=Max("memory_used_mib"),
                temperature=Max("temperature_c"),
                power=Avg("power_w"),
                readings=Count("id"),
            )
        )
        rows = [
            DeviceSample(
                accelerator_id=h["accelerator_id"],
                at=h["hour"],
                resolution=R.HOUR,
                readings=h["readings"],
                utilization_pct=h["utilization"],
                utilization_max_pct=h["utilization_max"],
                memory_used_mib=h["memory"],
                temperature_c=h["temperature"],
                power_w=h["power"],
            )
            for h in hours
        ]
        # A retention run beside this one may have rolled the same hours: same rows, kept once.
        DeviceSample.objects.bulk_create(rows, ignore_conflicts=True)
        readings_deleted, _ = old.delete()
    expiry = now - timedelta(days=settings.PORTAL_TELEMETRY_HOURLY_DAYS)
    hours_deleted, _ = DeviceSample.objects.filter(resolution=R.HOUR, at__lt=expiry).delete()
    return Retained(len(rows), readings_deleted, hours_deleted)
