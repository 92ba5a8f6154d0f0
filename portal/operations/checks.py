"""Scheduled health checks of the devices, in the spirit of LAVA's health checks.

Every PORTAL_HEALTH_CHECK_HOURS, on each active host the loop may talk to, one free device
of each vendor is checked: the host's agent runs the check its own configuration names for
that vendor (`health_checks` in hostctl.json, docs/agent.md) inside a stack that serves the
vendor, with only that device visible. Each run is a `HealthCheck` row. A check that ran and
failed is a health problem of that vendor's check, so the host is drained (health.update, the
one writer of a host's problems) and staff are mailed; the problem stays, whatever the loop's
telemetry finds, until a check of that vendor passes. A host that could not be asked is not
drained here: the reconcile loop's own health covers reachability.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from django.utils import timezone

from portal.booking.models import Allocation
from portal.inventory.hwspec import VENDORS_FOR_KIND
from portal.inventory.models import Accelerator, DriverStack, HealthCheck, Host
from portal.operations import agents, health, services
from provisioning.client import AgentError, DeviceRef
from provisioning.transport import TransportError

log = logging.getLogger(__name__)

# A device booked to start this soon is left alone: a check must not delay a session.
FREE_FOR = timedelta(minutes=15)
SHOWN_OUTPUT_CHARS = 300  # of a failed check's output, in the drain reason


def stack_for(host: Host, vendor: str) -> DriverStack | None:
    """The host's first stack (by name) with a kind the vendor's devices can run."""
    for stack in host.stacks.order_by("name"):
        kinds = {str(spec).partition(":")[0] for spec in stack.hwspecs or []}
        if any(vendor in VENDORS_FOR_KIND.get(kind, ()) for kind in kinds):
            return stack
    return None


def free_devices(host: Host, now: datetime) -> dict[str, Accelerator]:
    """Vendor -> the lowest-index device of it that no allocation holds in [now, now + 15 min)."""
    busy = set(
        Allocation.objects.filter(
            accelerator__host=host, active=True, start__lt=now + FREE_FOR, end__gt=now
        ).values_list("accelerator_id", flat=True)
    )
    by_vendor: dict[str, list[Accelerator]] = defaultdict(list)
    for acc in host.accelerators.filter(retired=False).order_by("index"):
        by_vendor[acc.vendor].append(acc)
    found = {}
    for vendor, devices in sorted(by_vendor.items()):
        free = [acc for acc in devices if acc.pk not in busy]
        if free:
            found[vendor] = free[0]
    return found


def run_checks(now: datetime) -> list[str]:
    """Check one free device of each vendor on every active host; a line per check for the log."""
    done = []
    for host in services.hosts_to_reconcile():
        if host.state != Host.State.ACTIVE or host.drained_at is not None:
            continue
        done += check_host(host, now)
    return done


def check_host(host: Host, now: datetime) -> list[str]:
    done, checked, failures = [], [], []
    vendors = sorted(set(host.accelerators.filter(retired=False).values_list("vendor", flat=True)))
    free = free_devices(host, now)
    for vendor in vendors:
        acc = free.get(vendor)
        if acc is None:
            done.append(f"{host.name}: every {vendor} device is in use, not checked")
            continue
        stack = stack_for(host, vendor)
        if stack is None:
            done.append(f"{host.name}: no stack serves {vendor}, not checked")
            continue
        row = _check(host, acc, stack, now)
        done.append(f"{host.name}: {vendor} #{acc.index} {_result(row)}")
        if row.passed is not None:  # a check that did not run says nothing of the devices
            checked.append(health.check_source(vendor))
        if row.passed is False:
            failures.append(
                {
                    "code": health.HEALTH_CHECK,
                    "vendor": vendor,
                    "message": f"The health check of {vendor} #{acc.index} failed (exit status "
                    f"{row.exit_status}, stack {stack.name}): {_tail(row.output)}",
                }
            )
    if checked:  # a pass clears that vendor's old failure, a failure drains
        health.update(host, failures, now, sources=checked)
    return done


def _check(host: Host, acc: Accelerator, stack: DriverStack, now: datetime) -> HealthCheck:
    row = HealthCheck.objects.create(host=host, accelerator=acc, stack=stack, started=now)
    try:
        answer = agents.client_for(host).health_check(
            stack=stack.name, device=DeviceRef(acc.vendor, acc.index)
        )
    except (TransportError, AgentError) as exc:
        log.warning("%s: the health check of %s could not run: %s", host.name, acc, exc)
        row.output = f"The agent could not run the check: {exc}"
    else:
        if answer.ran:
            row.passed = answer.passed
            row.exit_status = answer.exit_status
            row.output = answer.output
        else:
            row.output = f"Not run: {answer.reason or 'no reason given'}"
    row.finished = timezone.now()
    row.save(update_fields=["passed", "exit_status", "output", "finished"])
    return row


def _result(row: HealthCheck) -> str:
    if row.passed is None:
        return "not checked"
    return "passed" if row.passed else f"failed ({row.exit_status})"


def _tail(output: str) -> str:
    text = " ".join(output.split())
    if not text:
        return "no output"
    return text if len(text) <= SHOWN_OUTPUT_CHARS else "…" + text[-SHOWN_OUTPUT_CHARS:]
