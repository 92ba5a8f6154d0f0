"""Squatters: processes on a device that their user does not hold (docs/decisions.md).

Each telemetry reading names the processes on every device with their Unix user. A process
whose user is neither the holder of the device now (the reservation's account, or the job's
project account) nor a system account is a squatter. The first time one is seen, its owner is
warned, and the holder and staff are told; if the host's policy says so, it is killed once it
has lasted the host's grace period (`kill-process`, which checks on the host that the pid is
still that user's). A squatter no longer seen is closed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from portal.booking.models import Allocation
from portal.inventory.models import Accelerator, Host, Squatter
from portal.notifications.outbox import notify, notify_staff_text
from portal.operations.jobs import job_account
from provisioning.accounts import unix_name
from provisioning.client import AgentClient, AgentError
from provisioning.transport import TransportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    account: str  # the Unix account allowed on the device now
    label: str  # the session or job, as the mails and the page name it
    people: tuple  # portal users to tell


def holders(host: Host, now: datetime) -> dict[int, Holder]:
    """accelerator id -> who holds it now."""
    held = (
        Allocation.objects.filter(accelerator__host=host, active=True, start__lte=now, end__gt=now)
        .select_related("reservation__user", "job__submitter")
        .only(
            "accelerator_id",
            "reservation__id",
            "reservation__user__username",
            "reservation__user__email",
            "reservation__user__time_zone",
            "job__id",
            "job__requeues",
            "job__project_id",
            "job__submitter__username",
            "job__submitter__email",
            "job__submitter__time_zone",
        )
    )
    found = {}
    for a in held:
        if a.reservation is not None:
            r = a.reservation
            found[a.accelerator_id] = Holder(r.unix_user, f"reservation {r.pk}", (r.user,))
        elif a.job is not None:
            job = a.job
            found[a.accelerator_id] = Holder(job_account(job), f"job {job.pk}", (job.submitter,))
    return found


def portal_user(account: str):
    """The portal user whose Unix account this is (provisioning.accounts.unix_name), or None."""
    User = get_user_model()
    fallback = re.fullmatch(r"u([0-9]{1,18})", account)
    user = (
        User.objects.filter(pk=int(fallback.group(1))).first()
        if fallback
        else User.objects.filter(username=account).first()
    )
    return user if user is not None and unix_name(user.username, user.pk) == account else None


def check(host: Host, reading: dict, now: datetime, client: AgentClient | None = None) -> list[str]:
    """Open, follow and close the host's squatters from one reading; what was done."""
    devices = {(a.vendor, a.index): a for a in Accelerator.objects.filter(host=host, retired=False)}
    held = holders(host, now)
    seen: dict[tuple[int, int, str], Holder | None] = {}
    for sample in reading.get("samples", []):
        accelerator = devices.get((sample["vendor"], sample["index"]))
        if accelerator is None:
            continue
        holder = held.get(accelerator.pk)
        for process in sample["processes"]:
            user = process["user"]
            if user is None or process["system"] or (holder and user == holder.account):
                continue
            seen[(accelerator.pk, process["pid"], user)] = holder

    done = []
    open_ = {
        (s.accelerator_id, s.pid, s.unix_user): s
        for s in Squatter.objects.filter(host=host, gone_at__isnull=True).select_related(
            "accelerator"
        )
    }
    for key in open_.keys() - seen.keys():
        Squatter.objects.filter(pk=open_[key].pk, gone_at__isnull=True).update(gone_at=now)
    for key, holder in seen.items():
        squatter = open_.get(key)
        if squatter is None:
            squatter = _open(host, key, holder, now)
            if squatter is not None:
                done.append(f"squatter {squatter.unix_user} pid {squatter.pid}")
            continue
        Squatter.objects.filter(pk=squatter.pk).update(last_seen=now)
        grace = timedelta(minutes=host.squatter_grace_minutes)
        due = host.squatter_kill and squatter.killed_at is None
        if due and now - squatter.first_seen >= grace and client and _kill(client, squatter, now):
            done.append(f"killed squatter {squatter.unix_user} pid {squatter.pid}")
    return done


def _open(host: Host, key, holder: Holder | None, now: datetime) -> Squatter | None:
    accelerator_id, pid, user = key
    try:
        with transaction.atomic():
            squatter = Squatter.objects.create(
                host=host,
                accelerator_id=accelerator_id,
                pid=pid,
                unix_user=user,
                holder=holder.label if holder else "",
                first_seen=now,
                last_seen=now,
            )
            squatter = Squatter.objects.select_related("accelerator", "host").get(pk=squatter.pk)
            _tell(squatter, holder)  # in the same transaction: the row and its notices
    except IntegrityError:
        return None  # another pass opened it a moment ago, and tells the people
    return squatter


def _tell(squatter: Squatter, holder: Holder | None) -> None:
    host = squatter.host
    deadline = (
        squatter.first_seen + timedelta(minutes=host.squatter_grace_minutes)
        if host.squatter_kill
        else None
    )
    context = {"s": squatter, "host": host, "holder": holder, "deadline": deadline}
    owner = portal_user(squatter.unix_user)
    data = {"host": host.name, "device": squatter.accelerator.index, "pid": squatter.pid}
    if owner is not None:
        notify("session.squatter", owner, "operations/mail_squatter.txt", context, data=data)
    for person in holder.people if holder else ():
        notify("session.squatter", person, "operations/mail_squatted.txt", context, data=data)
    notify_staff_text(
        "host.alert",
        f"Squatter on {host.name}: {squatter.unix_user} on {squatter.accelerator}",
        f"Process {squatter.pid} of {squatter.unix_user} uses {squatter.accelerator}, which "
        f"{'is held by ' + holder.label if holder else 'nobody holds'}.\n"
        + (
            f"It is killed at {deadline:%Y-%m-%d %H:%M} UTC if it still runs (host policy)."
            if deadline
            else "The host's policy is to warn only."
        ),
        data=data,
    )
    log.warning("%s: squatter %s pid %s", host.name, squatter.unix_user, squatter.pid)


def _kill(client: AgentClient, squatter: Squatter, now: datetime) -> bool:
    try:
        client.kill_process(pid=squatter.pid, user=squatter.unix_user)
    except (TransportError, AgentError) as exc:
        Squatter.objects.filter(pk=squatter.pk).update(kill_error=str(exc)[:2000])
        log.warning("killing squatter %s failed: %s", squatter.pk, exc)
        return False
    Squatter.objects.filter(pk=squatter.pk).update(killed_at=now, kill_error="")
    return True
