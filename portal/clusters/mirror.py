"""Bookings of porterbox hosts that are Slurm nodes, mirrored as Slurm reservations.

The portal's Allocation table stays the single source of truth (docs/architecture.md, "The
booking invariant"): each pass computes, from it and the maintenance windows, the reservations
Slurm must hold on the node, and closes the difference with `scontrol create | update |
delete reservation`. Slurm's backfill then runs jobs around them and never inside them.

Granularity: a reservation of some of a host's devices holds the whole node in Slurm (a Slurm
reservation of part of a node's GPUs is not what backfill honours for every job shape); so
Slurm never runs on a booked device, at the price of idle free devices of that node meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Max, Min
from django.utils import timezone

from portal.booking.models import Allocation, Reservation
from portal.inventory.models import MaintenanceWindow
from provisioning.transport import TransportError

from .models import Cluster, SlurmNode
from .services import slurm_for

log = logging.getLogger(__name__)
PREFIX = "porterbox-"
# Slurm keeps times to the second; closer than this is the same time.
SAME = timedelta(seconds=1)


@dataclass
class MirrorReport:
    cluster: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    error: str = ""


def wanted(node: SlurmNode, now: datetime) -> dict[str, tuple[datetime, datetime]]:
    """The Slurm reservations the node must have: name -> [start, end)."""
    found: dict[str, tuple[datetime, datetime]] = {}
    slots = (
        Allocation.objects.filter(
            accelerator__host=node.host_id, reservation__isnull=False, active=True, end__gt=now
        )
        .exclude(reservation__state__in=(Reservation.State.CANCELLED, Reservation.State.ENDED))
        .values("reservation_id")
        .annotate(start=Min("start"), end=Max("end"))
    )
    for slot in slots:
        found[f"{PREFIX}{node.node_name}-r{slot['reservation_id']}"] = (slot["start"], slot["end"])
    windows = MaintenanceWindow.objects.filter(host=node.host_id, end__gt=now)
    for window in windows:
        found[f"{PREFIX}{node.node_name}-m{window.pk}"] = (window.start, window.end)
    return found


def mirror_all(now: datetime | None = None) -> list[MirrorReport]:
    clusters = Cluster.objects.filter(enabled=True, nodes__isnull=False).distinct()
    return [mirror_cluster(c.pk, now) for c in clusters]


def mirror_cluster(cluster_id: int, now: datetime | None = None) -> MirrorReport:
    """One pass: each node's reservations in Slurm made equal to the portal's bookings."""
    cluster = Cluster.objects.get(pk=cluster_id)
    report = MirrorReport(cluster.name)
    now = now or timezone.now()
    desired: dict[str, tuple[str, datetime, datetime]] = {}
    for node in SlurmNode.objects.filter(cluster=cluster):
        for name, (start, end) in wanted(node, now).items():
            desired[name] = (node.node_name, start, end)
    slurm = slurm_for(cluster)
    try:
        present = {n: r for n, r in slurm.reservations().items() if n.startswith(PREFIX)}
        for name, (node_name, start, end) in sorted(desired.items()):
            have = present.get(name)
            if have is None:
                # A booking that began already starts in Slurm now (no start in the past).
                begin = max(start, now + SAME)
                slurm.create_reservation(
                    name, nodes=node_name, start=begin, end=end, users=cluster.login_user
                )
                report.created.append(name)
            elif abs(have.end - end) >= SAME or (start > now and abs(have.start - start) >= SAME):
                # An active Slurm reservation keeps its start; the end follows the booking.
                slurm.update_reservation(name, start=None if have.start <= now else start, end=end)
                report.updated.append(name)
        for name in sorted(set(present) - set(desired)):
            slurm.delete_reservation(name)
            report.deleted.append(name)
    except TransportError as exc:
        log.warning("cluster %s: mirroring bookings failed: %s", cluster.name, exc)
        report.error = str(exc)
    return report
