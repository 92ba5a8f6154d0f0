"""Small request helpers every app may import: this module imports no app (docs/decisions.md,
"App layers")."""

import ipaddress

from django.conf import settings


def client_ip(request) -> str | None:
    """The client's address for the audit log (behind a proxy: the hop the proxy appended)."""
    address = request.META.get("REMOTE_ADDR", "")
    if settings.BEHIND_PROXY and request.META.get("HTTP_X_FORWARDED_FOR"):
        address = request.META["HTTP_X_FORWARDED_FOR"].split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None
