"""Registering a host: staff confirm its SSH host keys, then the portal pulls its inventory.

Keys are fetched for staff to compare with the host's own (`ssh-keygen -lf
/etc/ssh/ssh_host_ed25519_key.pub` on its console); only confirmed keys are pinned. The
inventory comes from the agent over that pinned connection, never from what staff type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from portal.inventory.models import Accelerator, DriverStack, Host
from portal.operations.agents import client_for
from provisioning.client import AgentError
from provisioning.transport import TransportError, fetch_host_keys, parse_host_keys

__all__ = ["RegistrationError", "SyncResult", "fetch_host_keys", "host_pin_keys"]


class RegistrationError(Exception):
    pass


@dataclass
class SyncResult:
    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)
    unknown_stacks: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [
            f"{len(self.created)} new, {len(self.updated)} updated, "
            f"{len(self.retired)} retired devices",
            f"stacks: {', '.join(self.stacks) or 'none'}",
        ]
        if self.unknown_stacks:
            parts.append(f"stacks the portal does not know: {', '.join(self.unknown_stacks)}")
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
        answer = client_for(host).inventory()
    except (TransportError, AgentError) as exc:
        Host.objects.filter(pk=host.pk).update(last_error=f"Inventory failed: {exc}")
        raise RegistrationError(f"{host.name}: {exc}") from exc
    devices = answer.get("devices", [])
    indexes = [d.get("index") for d in devices]
    if len(set(indexes)) != len(indexes):
        raise RegistrationError(
            f"{host.name} reports two devices with the same index; the portal numbers the "
            "devices of a host by one index, so mixed vendors need distinct indices."
        )
    present = sorted(s["name"] for s in answer.get("stacks", []) if s.get("present"))
    known = {s.name: s for s in DriverStack.objects.filter(name__in=present)}
    result = SyncResult(stacks=sorted(known), unknown_stacks=[n for n in present if n not in known])
    with transaction.atomic():
        existing = {a.index: a for a in host.accelerators.select_for_update()}
        for d in devices:
            values = {
                "vendor": d["vendor"],
                "model": str(d.get("model", ""))[:100],
                "memory_mib": int(d.get("memory_mib", 0)),
                "uuid": str(d.get("uuid", ""))[:64],
                "pci_bus_id": str(d.get("pci_bus_id", ""))[:32],
                "arch": str(d.get("arch", ""))[:32],
                "retired": False,
            }
            acc = existing.pop(d["index"], None)
            if acc is None:
                Accelerator.objects.create(host=host, index=d["index"], **values)
                result.created.append(d["index"])
            elif any(getattr(acc, k) != v for k, v in values.items()):
                Accelerator.objects.filter(pk=acc.pk).update(**values)
                result.updated.append(d["index"])
        for acc in existing.values():
            if not acc.retired:
                acc.retired = True
                acc.save(update_fields=["retired"])
                result.retired.append(acc.index)
        host.stacks.set(known.values())
        Host.objects.filter(pk=host.pk).update(last_error="")
    return result


def host_sync_inventory_by_id(host_id: int) -> SyncResult:
    return host_sync_inventory(Host.objects.get(pk=host_id))
