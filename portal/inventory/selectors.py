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
        if hwspec and hwspec.kind != "cpu":
            # Stacks are a handful of rows; JSON "contains" is not portable to SQLite.
            stacks = [s.pk for s in stacks if hwspec.kind in s.hwspecs]
        offered = Host.stacks.through.objects.filter(host=OuterRef("pk"), driverstack__in=stacks)
        hosts = hosts.filter(Exists(offered))

    return hosts.prefetch_related(
        "stacks", Prefetch("accelerators", queryset=Accelerator.objects.order_by("index"))
    )
