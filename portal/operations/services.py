"""The reconcile loop: make each host match the database (docs/architecture.md).

Level-triggered: a pass computes which sessions must exist on a host now (reservations whose
slot is running), asks the host what exists (`status`), and closes the difference with
idempotent agent calls: revoke what must not be there, grant what is missing or different.
Nothing here holds a database transaction while the agent is called; each state change is a
conditional UPDATE (`Reservation.move`), so two workers, or a worker killed half-way and its
successor, never undo each other. A per-host lease keeps two workers off one host.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.db import transaction
from django.db.models import Prefetch, Q
from django.utils import timezone

from portal.booking.models import Allocation, Reservation
from portal.booking.services import BookingError, about, may_hold, reservation_withdraw
from portal.inventory.models import Host
from portal.notifications.outbox import notify, notify_staff_text
from portal.operations import activity, agents, health, squatters, telemetry
from portal.operations.agents import is_reachable_in_principle
from portal.operations.jobs import JobPass, requeue_from_failed_host
from portal.operations.logs import context
from provisioning.accounts import JOB_ACCOUNT_PREFIX, keys_digest
from provisioning.client import AgentClient, AgentError, DeviceRef, SessionState, epoch_seconds
from provisioning.transport import HostKeyMismatch, TransportError

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Held(TypedDict):
        active_allocations: list[Allocation]

    # A reservation read with the allocations that hold its devices (due_reservations).
    DueReservation = WithAnnotations[Reservation, _Held]

log = logging.getLogger(__name__)

S = Reservation.State
# Reservations that must have a session while their slot runs; a failed one is retried.
LIVE = (S.SCHEDULED, S.PROVISIONING, S.ACTIVE, S.FAILED)
# Reservations that may still have a session on the host after their slot.
CLOSING = (S.SCHEDULED, S.PROVISIONING, S.ACTIVE, S.ENDING, S.FAILED)
ENDING_WARNING = timedelta(minutes=15)


@dataclass(frozen=True)
class Wanted:
    """The session a reservation needs on its host."""

    reservation: Reservation
    keys: tuple[str, ...]
    devices: tuple[DeviceRef, ...]

    @property
    def session(self) -> str:
        return self.reservation.session_name

    @property
    def user(self) -> str:
        return self.reservation.unix_user

    @property
    def stack(self) -> str:
        return self.reservation.stack.name

    def matches(self, found: SessionState) -> bool:
        """Whether the host's session is this one, alive, with these keys and devices."""
        return (
            found.alive
            and found.user == self.user
            and found.stack == self.stack
            and found.keys_sha256 == keys_digest(list(self.keys))
            and set(found.devices) == set(self.devices)
            # The host's own end (it revokes by itself then) follows an extension or a
            # shortening: a different end is a new grant.
            and found.end == epoch_seconds(self.reservation.end)
        )


def due_reservations(host: Host, now: datetime) -> list[DueReservation]:
    return list(
        Reservation.objects.filter(host=host, state__in=LIVE, start__lte=now, end__gt=now)
        .select_related("user", "stack", "host")
        .prefetch_related(
            "user__ssh_keys",
            Prefetch(
                "allocations",
                Allocation.objects.filter(active=True).select_related("accelerator"),
                to_attr="active_allocations",
            ),
        )
    )


def wanted(reservation: DueReservation) -> Wanted:
    return Wanted(
        reservation=reservation,
        keys=tuple(k.openssh() for k in reservation.user.ssh_keys.all()),
        devices=tuple(
            sorted(
                (
                    DeviceRef(a.accelerator.vendor, a.accelerator.index)
                    for a in reservation.active_allocations
                ),
                key=lambda d: (d.vendor, d.index),
            )
        ),
    )


# -- the per-host lease ---------------------------------------------------------------------------


def _claim_lease(host_id: int, owner: str, now: datetime) -> bool:
    until = now + timedelta(seconds=settings.PORTAL_LEASE_SECONDS)
    free = Q(lease_until__isnull=True) | Q(lease_until__lte=now)
    return bool(Host.objects.filter(free, pk=host_id).update(lease_until=until, lease_owner=owner))


def _release_lease(host_id: int, owner: str) -> None:
    Host.objects.filter(pk=host_id, lease_owner=owner).update(lease_until=None, lease_owner="")


def hosts_to_reconcile():
    """Every host the loop may talk to; retired ones hold no sessions."""
    hosts = Host.objects.exclude(state=Host.State.RETIRED)
    return [h for h in hosts if is_reachable_in_principle(h)]


# What reconcile_host answers when another worker holds the host (kicks.py waits for it).
LEASE_HELD = "another worker holds this host"
# The longest a pass waits, after reading the host, for the instant it was kicked for.
MAX_DECIDE_WAIT = 2


def reconcile_host(
    host_id: int, *, client: AgentClient | None = None, decide_at: datetime | None = None
) -> str:
    """One pass over one host; returns a line for the worker's log.

    `decide_at`: a kick's instant (kicks.py). The pass reads the host's status first, then waits
    for that instant before it decides, so a session opens or closes with only the agent's own
    step after the instant."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not _claim_lease(host_id, owner, timezone.now()):
        return LEASE_HELD
    try:
        host = Host.objects.get(pk=host_id)
        return _Pass(host, client or agents.client_for(host), decide_at).run()
    finally:
        _release_lease(host_id, owner)


class _Pass:
    def __init__(self, host: Host, client: AgentClient, decide_at: datetime | None = None):
        self.host, self.client = host, client
        self.now = timezone.now()
        self.decide_at = decide_at
        self.done: list[str] = []

    def run(self) -> str:
        try:
            status = self.client.status()
        except (TransportError, AgentError) as exc:
            self._host_failed(exc)
            return f"{self.host.name}: {exc}"
        if self.decide_at is not None:
            # Bounded: the lease was claimed to cover a pass, not a wait.
            if (wait := (self.decide_at - timezone.now()).total_seconds()) > 0:
                time.sleep(min(wait, MAX_DECIDE_WAIT))
            self.now = timezone.now()
        self._host_seen()
        sessions = {s.session: s for s in status.sessions}
        due = {}
        for r in due_reservations(self.host, self.now):
            if may_hold(r.user):
                due[r.session_name] = r
            else:  # never granted, and revoked below if it was
                self._withdraw(r)

        # Revoke first, so devices are clean before the next slot's grant.
        left = {name for name in sessions if name not in due and not self._revoke(session=name)}
        self._close_finished(still_on_host=left)
        due_users = {r.unix_user for r in due.values()}
        for account in status.users:
            leftover = account.processes or not account.locked
            job_account = account.user.startswith(JOB_ACCOUNT_PREFIX)  # the jobs' own
            if account.user not in due_users and leftover and not job_account:
                self._revoke(user=account.user)

        for name, reservation in due.items():
            want = wanted(reservation)
            found = sessions.get(name)
            if found is not None and want.matches(found):
                self._mark_active(reservation)
            elif self.host.state != Host.State.ACTIVE and reservation.granted_at is None:
                # Drained or in maintenance: no new starts; running sessions go on.
                why = self.host.drain_reason or self.host.get_state_display()
                self._failed(reservation, f"The host is not taking new sessions: {why}")
            else:
                self._grant(want)
        self._warn_ending()
        self._watch_devices()
        self.done += activity.track(self.host, status, self.now)
        JobPass(self.host, self.client, self.now, self.done).run(status.jobs)
        return f"{self.host.name}: " + (", ".join(self.done) or "in line")

    # -- the host -----------------------------------------------------------------------------

    def _host_seen(self) -> None:
        Host.objects.filter(pk=self.host.pk).update(
            last_seen=self.now, last_error="", key_mismatch=False
        )

    def _host_failed(self, exc: Exception) -> None:
        mismatch = isinstance(exc, HostKeyMismatch)
        with transaction.atomic():
            Host.objects.filter(pk=self.host.pk).update(last_error=str(exc), key_mismatch=mismatch)
            if mismatch and not self.host.key_mismatch:  # alarm once, when it starts
                notify_staff_text(
                    "host.alert",
                    f"Host key mismatch on {self.host.name}: nothing is sent to it",
                    f"{exc}\n\nConfirm and record the host's keys in the portal if it was "
                    "reinstalled; otherwise treat it as an attack.",
                    data={"host": self.host.name},
                )
        log.warning("%s: %s", self.host.name, exc, extra=context(self.host))
        if problem := health.unreachable_problem(self.host, self.now):
            health.update(self.host, [problem], self.now)
        if lost := requeue_from_failed_host(self.host, self.now):
            self.done.append(f"requeued {lost} jobs")
        # The users whose slot is running must see why they have no session.
        reason = f"The host cannot be reached: {exc}"
        for reservation in due_reservations(self.host, self.now):
            self._failed(reservation, reason)

    def _watch_devices(self) -> None:
        """Read the devices when due: store it, check the host's health, look for squatters."""
        if not telemetry.due(self.host, self.now):
            problems = self.host.health_problems or []
            if any(p.get("code") == "unreachable" for p in problems):  # it answered this pass
                rest = [p for p in problems if p.get("code") != "unreachable"]
                health.update(self.host, rest, self.now)
            return
        try:
            answer = self.client.telemetry()
        except (TransportError, AgentError) as exc:
            Host.objects.filter(pk=self.host.pk).update(telemetry_at=self.now)
            problem = {"code": "agent_error", "message": f"Reading the devices failed: {exc}"}
            health.update(self.host, [problem], self.now)
            return
        reading = telemetry.record(self.host, answer, self.now)
        devices = list(self.host.accelerators.filter(retired=False))
        health.update(self.host, health.telemetry_problems(self.host, reading, devices), self.now)
        self.done += squatters.check(self.host, reading, self.now, self.client)

    # -- sessions -----------------------------------------------------------------------------

    def _grant(self, want: Wanted) -> None:
        r = want.reservation
        if not want.keys:
            self._failed(r, "You have no SSH key in the portal; add one on your profile page.")
            return
        Reservation.move(r.pk, S.PROVISIONING, from_=(S.SCHEDULED, S.ACTIVE, S.FAILED))
        try:
            self.client.grant(
                session=want.session,
                user=want.user,
                keys=want.keys,
                stack=want.stack,
                devices=want.devices,
                end=r.end,
            )
        except (TransportError, AgentError) as exc:
            self._failed(r, f"Opening the session failed: {exc}")
            return
        self.done.append(f"granted {want.session}")
        log.info(
            "%s: granted %s to %s (%d devices, until %s)", self.host.name, want.session,
            want.user, len(want.devices), r.end.isoformat(),
            extra=context(self.host, reservation=r),
        )  # fmt: skip
        self._mark_active(r)

    def _mark_active(self, r: Reservation) -> None:
        fields = {"last_error": "", "granted_at": r.granted_at or self.now}
        if Reservation.move(
            r.pk, S.ACTIVE, from_=(S.SCHEDULED, S.PROVISIONING, S.FAILED), **fields
        ):
            _tell_once(r, "ready_mailed", "session.ready", "operations/mail_ready.txt")

    def _failed(self, r: Reservation, reason: str) -> None:
        Reservation.move(
            r.pk, S.FAILED, from_=(S.SCHEDULED, S.PROVISIONING, S.ACTIVE, S.FAILED),
            last_error=reason[:2000],
        )  # fmt: skip
        self.done.append(f"{r.session_name} failed")
        log.warning(
            "%s %s: %s", self.host.name, r.session_name, reason,
            extra=context(self.host, reservation=r),
        )  # fmt: skip

    def _withdraw(self, r: Reservation) -> None:
        """End the reservation of a user who may no longer hold it (ARCHITECTURE: access is
        decided at every tick from the database as it is now)."""
        reason = (
            "your account was deactivated"
            if not r.user.is_active
            else "your account no longer has the Debian member role"
        )
        try:
            reservation_withdraw(reservation=r, reason=reason, now=self.now)
        except BookingError as exc:  # ended or changed meanwhile: the next pass sees it
            log.info(
                "%s: not withdrawn: %s",
                r.session_name,
                exc,
                extra=context(self.host, reservation=r),
            )
            return
        self.done.append(f"withdrew {r.session_name}")
        log.info(
            "%s: withdrew %s: %s", self.host.name, r.session_name, reason,
            extra=context(self.host, reservation=r),
        )  # fmt: skip

    def _revoke(self, *, session: str | None = None, user: str | None = None) -> bool:
        extra = context(self.host, reservation=_reservation_of(session))
        try:
            revoked = self.client.revoke(session=session, user=user)
        except (TransportError, AgentError) as exc:
            log.warning(
                "%s: revoking %s failed: %s", self.host.name, session or user, exc, extra=extra
            )
            return False
        self.done.append(f"revoked {session or f'user {user}'}")
        log.info(
            "%s: revoked %s (%d processes killed)", self.host.name,
            session or f"user {user}", revoked.killed, extra=extra,
        )  # fmt: skip
        return True

    def _close_finished(self, still_on_host: set[str]) -> None:
        """Reservations whose slot is over (or that were ended) and whose session is gone."""
        over = Reservation.objects.filter(
            host=self.host, state__in=CLOSING, revoked_at__isnull=True
        ).filter(Q(end__lte=self.now) | Q(state=S.ENDING))
        for r in over.only("pk", "state", "end"):
            if r.session_name in still_on_host:
                continue  # the revoke failed; the next pass tries again
            # No session was ever opened (scheduled, failed): the slot passed with the host away.
            closed = S.FAILED if r.state in (S.SCHEDULED, S.FAILED) else S.ENDED
            with transaction.atomic():  # the close and its notice
                moved = Reservation.move(r.pk, closed, from_=(r.state,), revoked_at=self.now)
                if moved and closed == S.ENDED:
                    r = Reservation.objects.select_related("user", "host", "stack").get(pk=r.pk)
                    notify(
                        "session.closed", r.user, "operations/mail_closed.txt", {"r": r},
                        data=about(r),
                    )  # fmt: skip
            if moved:
                log.info(
                    "%s: closed %s as %s", self.host.name, r.session_name, closed,
                    extra=context(self.host, reservation=r),
                )  # fmt: skip

    def _warn_ending(self) -> None:
        soon = Reservation.objects.filter(
            host=self.host,
            state=S.ACTIVE,
            ending_mailed=False,
            end__gt=self.now,
            end__lte=self.now + ENDING_WARNING,
        ).select_related("user", "host")
        for r in soon:
            _tell_once(r, "ending_mailed", "session.ending", "operations/mail_ending.txt")


def _reservation_of(session: str | None) -> int | None:
    """The reservation a session is named for (`r<id>`, Reservation.session_name), if any."""
    if session and session[:1] == "r" and session[1:].isdigit():
        return int(session[1:])
    return None


def _tell_once(r: Reservation, flag: str, event: str, template: str) -> None:
    """Tell the owner about their reservation unless they were told already: the flag is
    claimed like a transition, in the transaction that queues the notification."""
    with transaction.atomic():
        if not Reservation.objects.filter(pk=r.pk, **{flag: False}).update(**{flag: True}):
            return
        r = Reservation.objects.select_related("user", "host", "stack").get(pk=r.pk)
        notify(event, r.user, template, {"r": r}, data=about(r))
