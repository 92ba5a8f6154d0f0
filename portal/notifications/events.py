"""What the portal tells people about, and to whom by default.

Each event has an audience: the user it concerns ("user"), or staff ("staff": every active
staff user who has not turned it off, and the ADMINS addresses). A user chooses per event and
channel on their notification settings; where they have chosen nothing, the event's default
holds: mail for what needs them to act or that they would miss, webhooks (when they have one)
for everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Channel(StrEnum):
    MAIL = "mail"
    WEBHOOK = "webhook"


@dataclass(frozen=True)
class Event:
    key: str
    label: str
    staff: bool = False  # told to staff, not to the user it concerns
    mail: bool = True  # mailed unless the user turned it off


EVENTS = (
    Event("session.ready", "Your session is ready"),
    Event("session.ending", "Your session ends soon"),
    Event("session.idle", "Your session is idle and will be ended"),
    Event("session.ended", "Your session was ended early or reclaimed"),
    Event("session.closed", "Your session is over and its access revoked", mail=False),
    Event("session.squatter", "Processes on devices that were not booked"),
    Event("reservation.pending", "A reservation waits for approval", staff=True),
    Event("reservation.approved", "Your reservation was approved"),
    Event("reservation.rejected", "Your reservation was rejected"),
    Event("reservation.affected", "Your reservation is hit by a drain or maintenance"),
    Event("project.applied", "A partner project applied", staff=True),
    Event("project.approved", "Your project's application was approved"),
    Event("project.rejected", "Your project's application was rejected"),
    Event("job.started", "Your training job started", mail=False),
    Event("job.finished", "Your training job finished"),
    Event("job.failed", "Your training job failed"),
    Event("job.requeued", "Your training job was requeued", mail=False),
    Event("test.finished", "Your package test run finished"),
    Event("host.drained", "A host was drained", staff=True),
    Event("host.alert", "A host needs attention (health, keys)", staff=True),
    Event("maintenance.planned", "Maintenance was planned on a host", staff=True),
)
BY_KEY = {e.key: e for e in EVENTS}
