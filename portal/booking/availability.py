"""Reads of free capacity: which accelerators meet a need, and when they are next free.

Availability is computed, never stored (the pretix way). The search runs in the database: a
slot can only open at the search's own start or when an allocation or a maintenance window
ends, so those are the candidate starts. An allocation's end counts only if its own device
stays free for the duration; for more than one device, a correlated count of the host's
matching accelerators that nothing holds for [t, t + duration) decides. Per host the database
keeps the earliest fitting candidate (ORDER BY ... LIMIT 1), so one row per host comes back.
The allocation indexes (`allocation_active_idx`, and the accelerator foreign key) serve the
probes.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import (
    Count,
    DateTimeField,
    Exists,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce

from portal.booking.models import Allocation
from portal.inventory.hwspec import VENDORS_FOR_KIND, Hwspec
from portal.inventory.models import Accelerator, DriverStack, Host, MaintenanceWindow

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def floor_to(moment: datetime, step: timedelta) -> datetime:
    return moment - (moment - EPOCH) % step


def ceil_to(moment: datetime, step: timedelta) -> datetime:
    rest = (moment - EPOCH) % step
    return moment + (step - rest) if rest else moment


@dataclass(frozen=True)
class Need:
    """What a booking or a job needs: N devices of a kind, each with enough memory."""

    count: int = 1
    hwspec: Hwspec | None = None
    min_memory_mib: int = 0
    stack: DriverStack | None = None

    def describe(self) -> str:
        what = f"{self.count} {self.hwspec or 'any'} device{'s' if self.count > 1 else ''}"
        if self.min_memory_mib:
            what += f" with at least {self.min_memory_mib * 1024**2 / 1000**3:.0f} GB"
        if self.stack:
            what += f" and the stack {self.stack.name}"
        return what


@dataclass(frozen=True)
class Slot:
    host: Host
    start: datetime
    end: datetime
    free: int  # matching accelerators free for the whole slot


def _device_filter(need: Need) -> Q:
    """What the need asks of each device itself (not of its host)."""
    found = Q(retired=False)
    if need.min_memory_mib:
        found &= Q(memory_mib__gte=need.min_memory_mib)
    spec = need.hwspec
    if spec and spec.kind != "cpu":
        found &= Q(vendor__in=VENDORS_FOR_KIND[spec.kind])
        if spec.qualifier:
            found &= Q(arch=spec.qualifier)
    if need.stack is not None:
        found &= Q(
            vendor__in={v for kind in need.stack.hwspecs for v in VENDORS_FOR_KIND.get(kind, ())}
        )
    return found


def matching_accelerators(need: Need, host: Host | None = None) -> QuerySet[Accelerator]:
    """Bookable accelerators that meet the need on hosts in service that offer its stack."""
    found = Accelerator.objects.filter(_device_filter(need), host__state=Host.State.ACTIVE)
    if host is not None:
        found = found.filter(host=host)
    if need.stack is not None:
        offered = Host.stacks.through.objects.filter(
            host=OuterRef("host"), driverstack=need.stack.pk
        )
        found = found.filter(Exists(offered))
    return found


def maintenance_overlaps(host: Host, start: datetime, end: datetime) -> QuerySet:
    return MaintenanceWindow.objects.filter(host=host, start__lt=end, end__gt=start)


def _held(accelerator_ref, start, end) -> Exists:
    return Exists(
        Allocation.objects.filter(
            accelerator=accelerator_ref, active=True, start__lt=end, end__gt=start
        )
    )


def _in_maintenance(host_ref, start, end) -> Exists:
    return Exists(MaintenanceWindow.objects.filter(host=host_ref, start__lt=end, end__gt=start))


def free_accelerators(
    need: Need, start: datetime, end: datetime, *, host: Host | None = None
) -> list[tuple[Host, list[Accelerator]]]:
    """Hosts with enough matching accelerators free for [start, end), each with its free ones
    in the order to take them: smaller devices first, so large ones stay for those who need them.
    """
    free = (
        matching_accelerators(need, host)
        .exclude(_held(OuterRef("pk"), start, end))
        .exclude(_in_maintenance(OuterRef("host"), start, end))
        .select_related("host")
        .order_by("host__name", "memory_mib", "index")
    )
    by_host: dict[int, list[Accelerator]] = {}
    for acc in free:
        by_host.setdefault(acc.host_id, []).append(acc)
    return [(accs[0].host, accs) for accs in by_host.values() if len(accs) >= need.count]


def _free_count(need: Need, host_field: str, at: str | datetime, duration: timedelta) -> Coalesce:
    """How many matching accelerators of the outer row's host are free for [at, at + duration).

    `at` is a datetime, or the name of the outer row's field that holds the candidate start.
    """
    # The count is a subquery over accelerators; "held" a subquery within it, two levels down.
    start = OuterRef(OuterRef(at)) if isinstance(at, str) else Value(at)
    end = ExpressionWrapper(start + Value(duration), output_field=DateTimeField())
    # The outer query has already kept only hosts in service that offer the stack.
    counted = (
        Accelerator.objects.filter(_device_filter(need), host=OuterRef(host_field))
        .exclude(_held(OuterRef("pk"), start, end))
        .order_by()
        .values("host")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def availability(
    need: Need,
    *,
    duration: timedelta,
    earliest: datetime,
    days: int,
    step: timedelta,
    limit: int = 10,
) -> list[Slot]:
    """The earliest slot of each host that meets the need within `days`, soonest first.

    `earliest` must be on the booking grid; candidate starts found from allocation ends are
    rounded up to it (a slot found that way is checked again at the rounded time).
    """
    horizon = earliest + timedelta(days=days)
    matching = matching_accelerators(need)
    hosts = Host.objects.filter(Exists(matching.filter(host=OuterRef("pk"))))

    def usable(candidates: QuerySet, host_field: str, time_field: str, one_free: bool) -> QuerySet:
        """Candidates where the need fits; `one_free`: each already has one device free."""
        start = OuterRef(time_field)
        end = ExpressionWrapper(start + Value(duration), output_field=DateTimeField())
        candidates = candidates.exclude(_in_maintenance(OuterRef(host_field), start, end))
        if one_free and need.count == 1:
            return candidates  # the common case needs no count
        return candidates.annotate(free=_free_count(need, host_field, time_field, duration)).filter(
            free__gte=need.count
        )

    first: dict[int, datetime] = {}

    def keep(host_id: int, moment: datetime) -> None:
        moment = ceil_to(moment, step)
        if moment < horizon and (host_id not in first or moment < first[host_id]):
            first[host_id] = moment

    # 1. Free right at `earliest`.
    now_free = hosts.annotate(free=_free_count(need, "pk", earliest, duration)).filter(
        free__gte=need.count
    )
    now_free = now_free.exclude(_in_maintenance(OuterRef("pk"), earliest, earliest + duration))
    for host_id in now_free.values_list("pk", flat=True):
        keep(host_id, earliest)

    def first_of(candidates: QuerySet, host_field: str, one_free: bool = False) -> Subquery:
        """The host's earliest candidate start where the need fits."""
        fitting = usable(candidates, host_field, "end", one_free).order_by("end").values("end")[:1]
        return Subquery(fitting, output_field=DateTimeField())

    # 2. Free when an allocation of a matching accelerator ends, and that accelerator stays free
    # for the duration (a slot can only open when some device it uses becomes free).
    ends = (
        Allocation.objects.filter(
            active=True, end__gt=earliest, end__lt=horizon, accelerator__in=matching
        )
        .annotate(host_id=F("accelerator__host"))
        .filter(host_id=OuterRef("pk"))
        .exclude(
            _held(
                OuterRef("accelerator"),
                OuterRef("end"),
                ExpressionWrapper(OuterRef("end") + Value(duration), output_field=DateTimeField()),
            )
        )
    )
    # 3. Free when a maintenance window of the host ends.
    windows = MaintenanceWindow.objects.filter(
        end__gt=earliest, end__lt=horizon, host=OuterRef("pk")
    )
    rows = hosts.annotate(
        after_allocation=first_of(ends, "host_id", one_free=True),
        after_maintenance=first_of(windows, "host"),
    ).values_list("pk", "after_allocation", "after_maintenance")
    for host_id, *moments in rows:
        for moment in moments:
            if moment is not None:
                keep(host_id, moment)

    found = Host.objects.in_bulk(list(first))
    slots = []
    for host_id, start in sorted(first.items(), key=lambda item: (item[1], found[item[0]].name)):
        host = found[host_id]
        picked = free_accelerators(need, start, start + duration, host=host)
        if picked:  # re-checked at the rounded time
            slots.append(Slot(host, start, start + duration, len(picked[0][1])))
        if len(slots) == limit:
            break
    return slots
