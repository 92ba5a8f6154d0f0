from celery import shared_task
from django.conf import settings


# Each send waits at most NOTIFY_TIMEOUT_SECONDS; a round that runs long leaves the rest (still
# pending, their leases run out) to the next.
@shared_task(ignore_result=True, soft_time_limit=240, time_limit=270)
def send_notifications(**_kwargs) -> str:
    from portal.notifications import outbox

    done = outbox.send_due(budget=200 - 2 * settings.NOTIFY_TIMEOUT_SECONDS)
    return ", ".join(f"{n} {what}" for what, n in sorted(done.items())) or "nothing due"
