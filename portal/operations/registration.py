"""Registering a host: staff confirm its SSH host keys, then the portal pulls its inventory.

Keys are fetched for staff to compare with the host's own (`ssh-keygen -lf
/etc/ssh/ssh_host_ed25519_key.pub` on its console); only confirmed keys are pinned. The
inventory comes from the agent over that pinned connection, never from what staff type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from portal.inventory.models import Accelerator, DriverStack, Host
from portal.operations import agents
from portal.packages import runs
from provisioning.client import AgentError
from provisioning.transport import TransportError, fetch_host_keys, parse_host_keys

__all__ = ["RegistrationError", "SyncResult", "fetch_host_keys", "host_pin_keys"]


class RegistrationError(Exception):
    pass


@dataclass
class SyncResult:
    # Devices as (vendor, index).
    created: list[tuple[str, int]] = field(default_factory=list)
    updated: list[tuple[str, int]] = field(default_factory=list)
    retired: list[tuple[str, int]] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)
    unknown_stacks: list[str] = field(default_factory=list)
    # Stacks whose chroot changed since the last inventory, their packages' tests queued again.
    refreshed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [
            f"{len(self.created)} new, {len(self.updated)} updated, "
            f"{len(self.retired)} retired devices",
            f"stacks: {', '.join(self.stacks) or 'none'}",
        ]
        if self.unknown_stacks:
            parts.append(f"stacks the portal does not know: {', '.join(self.unknown_stacks)}")
        if self.refreshed:
            parts.append(f"refreshed stacks, tested again: {', '.join(self.refreshed)}")
        return "; ".join(parts)


def host_pin_keys(host: Host, key_lines: list[str]) -> Host:
    """Record the keys staff confirmed; the fingerprint comments are dropped."""
    lines = [" ".join(line.split()[:2]) for line in key_lines if line.strip()]
    try:
        parse_host_keys("\n".join(lines))
    except TransportError as exc:
        raise RegistrationError(str(exc)) from exc
    if not lines:
        raise RegistrationError("No host key to pin.")
    host.host_keys = "\n".join(lines) + "\n"
    host.key_mismatch = False
    host.save(update_fields=["host_keys", "key_mismatch"])
    return host


def host_sync_inventory(host: Host) -> SyncResult:
    """Ask the host's agent for its devices and stacks, and make the database say the same."""
    try:
        answer = agents.client_for(host).inventory()
    except (TransportError, AgentError) as exc:
        Host.objects.filter(pk=host.pk).update(last_error=f"Inventory failed: {exc}")
        raise RegistrationError(f"{host.name}: {exc}") from exc
    devices = answer.devices
    # A device is its vendor and index (NVIDIA #0 and AMD #0 are two): the agent names devices
    # that way in grants and readings, each vendor's tool numbering its own from 0.
    refs = [(d.vendor, d.index) for d in devices]
    if len(set(refs)) != len(refs):
        twice = next(ref for ref in refs if refs.count(ref) > 1)
        raise RegistrationError(f"{host.name} reports {twice[0]} device #{twice[1]} twice.")
    present = sorted(s.name for s in answer.stacks if s.present)
    known = {s.name: s for s in DriverStack.objects.filter(name__in=present)}
    result = SyncResult(stacks=sorted(known), unknown_stacks=[n for n in present if n not in known])
    reported = {s.name: s.digest for s in answer.stacks if s.name in known}
    with transaction.atomic():
        previous = Host.objects.select_for_update().get(pk=host.pk).stack_digests or {}
        # A stack seen before with another digest was refreshed; its old digest stays until
        # its runs are queued (below), so a failed queueing is retried by the next inventory.
        changed = sorted(
            name
            for name, digest in reported.items()
            if digest and previous.get(name) and previous[name] != digest
        )
        digests = {n: previous[n] if n in changed else d for n, d in reported.items()}
        existing = {(a.vendor, a.index): a for a in host.accelerators.select_for_update()}
        for d in devices:
            values = {
                "model": d.model[:100],
                "memory_mib": d.memory_mib,
                "uuid": d.uuid[:64],
                "pci_bus_id": d.pci_bus_id[:32],
                "arch": d.arch[:32],
                "retired": False,
            }
            ref = (d.vendor, d.index)
            acc = existing.pop(ref, None)
            if acc is None:
                Accelerator.objects.create(host=host, vendor=ref[0], index=ref[1], **values)
                result.created.append(ref)
            elif any(getattr(acc, k) != v for k, v in values.items()):
                Accelerator.objects.filter(pk=acc.pk).update(**values)
                result.updated.append(ref)
        for acc in existing.values():
            if not acc.retired:
                acc.retired = True
                acc.save(update_fields=["retired"])
                result.retired.append((acc.vendor, acc.index))
        host.stacks.set(known.values())
        # An agent too old to report its map leaves the one the portal knows.
        mapped: dict[str, object] = {"last_error": "", "stack_digests": digests}
        if answer.device_nodes is not None:
            mapped["device_nodes"] = answer.device_nodes
        if answer.shared_nodes is not None:
            mapped["shared_nodes"] = answer.shared_nodes
        Host.objects.filter(pk=host.pk).update(**mapped)
    for name in changed:
        runs.stack_refreshed(known[name])
        with transaction.atomic():
            stored = Host.objects.select_for_update().get(pk=host.pk).stack_digests
            Host.objects.filter(pk=host.pk).update(stack_digests={**stored, name: reported[name]})
        result.refreshed.append(name)
    return result


def host_sync_inventory_by_id(host_id: int) -> SyncResult:
    return host_sync_inventory(Host.objects.get(pk=host_id))
