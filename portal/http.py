"""Small request helpers every app may import: this module imports no app (docs/decisions.md,
"App layers")."""

import ipaddress

from django.conf import settings

from portal.errors import Busy, Conflict, ServiceError


def client_ip(request) -> str | None:
    """The client's address for the audit log (behind a proxy: the hop the proxy appended)."""
    address = request.META.get("REMOTE_ADDR", "")
    if settings.BEHIND_PROXY and request.META.get("HTTP_X_FORWARDED_FOR"):
        address = request.META["HTTP_X_FORWARDED_FOR"].split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def status_of(error: ServiceError) -> int:
    """The HTTP status of a service's refusal, the same for the API and the pages: 409 for a
    conflict with the current state, 503 for contention, 400 for a request to fix."""
    if isinstance(error, Busy):
        return 503
    if isinstance(error, Conflict):
        return 409
    return 400
