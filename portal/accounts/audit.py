"""Staff actions outside the admin, written to the admin's own log (django.contrib.admin's
LogEntry), LAVA-style: each shows in the object's History and in "Recent actions", with who
and why. Reservations keep their own trail (booking.AuditEntry), which owners see too."""

from django.contrib.admin.models import CHANGE, LogEntry


def staff_log(actor, obj, message: str) -> None:
    """Record that `actor` (a user; None for the portal itself, not logged here) did `message`."""
    if actor is None or not actor.pk:
        return
    LogEntry.objects.log_actions(
        user_id=actor.pk,
        queryset=[obj],
        action_flag=CHANGE,
        change_message=message[:2000],
        single_object=True,
    )
