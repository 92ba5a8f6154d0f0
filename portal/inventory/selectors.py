"""Reads of the inventory: the host list and its filters, computed in the database."""

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet

from portal.inventory.hwspec import VENDORS_FOR_KIND, Hwspec
from portal.inventory.models import Accelerator, DriverStack, Host


def host_list(
    *,
    vendor: str = "",
    hwspec: Hwspec | None = None,
    min_memory_mib: int | None = None,
    stack: str = "",
    free_only: bool = False,
    include_retired: bool = False,
) -> QuerySet[Host]:
    """Hosts with one accelerator that meets every device filter and a stack that serves them.

    Device filters (vendor, memory, hwspec qualifier) must hold for the same accelerator: a
    host with a small NVIDIA card and a large AMD card does not match "NVIDIA, 40 GB".
    """
    hosts = Host.objects.all()
    if not include_retired:
        hosts = hosts.exclude(state=Host.State.RETIRED)
    if hwspec and hwspec.arch:
        hosts = hosts.filter(architecture=hwspec.arch)

    device = Q()
    if vendor:
        device &= Q(vendor=vendor)
    if min_memory_mib:
        device &= Q(memory_mib__gte=min_memory_mib)
    if hwspec and hwspec.kind != "cpu":
        device &= Q(vendor__in=VENDORS_FOR_KIND[hwspec.kind])
        if hwspec.qualifier:
            device &= Q(arch=hwspec.qualifier)
    if device:
        accelerators = Accelerator.objects.filter(device, host=OuterRef("pk"), retired=False)
        hosts = hosts.filter(Exists(accelerators))

    if stack or free_only or (hwspec and hwspec.kind != "cpu"):
        stacks = DriverStack.objects.all()
        if stack:
            stacks = stacks.filter(name=stack)
        if free_only:
            stacks = stacks.filter(area=DriverStack.Area.MAIN)
        serving: QuerySet[DriverStack] | list[int] = stacks
        if hwspec and hwspec.kind != "cpu":
            # Stacks are a handful of rows; JSON "contains" is not portable to SQLite.
            serving = [s.pk for s in stacks if hwspec.kind in s.hwspecs]
        offered = Host.stacks.through.objects.filter(host=OuterRef("pk"), driverstack__in=serving)
        hosts = hosts.filter(Exists(offered))

    return hosts.prefetch_related(
        "stacks", Prefetch("accelerators", queryset=Accelerator.objects.order_by("index"))
    )


def devices_held(user, host: Host, now) -> set[tuple[str, int]]:
    """(vendor, index) of the host's devices the user holds now: by their own reservation, or
    by a job of a partner project they belong to."""
    holds = Q(allocations__reservation__user=user) | Q(
        allocations__job__project__partnermembership__user=user
    )
    return set(
        Accelerator.objects.filter(
            holds,
            host=host,
            allocations__active=True,
            allocations__start__lte=now,
            allocations__end__gt=now,
        ).values_list("vendor", "index")
    )
