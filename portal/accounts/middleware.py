import zoneinfo

from django.contrib import messages
from django.shortcuts import redirect
from django.utils import timezone


class UserTimezoneMiddleware:
    """Show every time in the user's own zone; storage stays aware UTC."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            try:
                timezone.activate(zoneinfo.ZoneInfo(user.time_zone))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                timezone.deactivate()
        else:
            timezone.deactivate()
        return self.get_response(request)


class StaffNeedMFAMiddleware:
    """Staff act only with a second factor: a staff account without one (TOTP or WebAuthn)
    reaches nothing but the pages that set one up, so no staff page or admin is one stolen
    password away. API tokens are a credential of their own and do not pass here."""

    ALLOWED = ("/accounts/", "/static/", "/healthz")

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from allauth.mfa.models import Authenticator
        from allauth.mfa.utils import is_mfa_enabled

        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and user.is_staff
            and not request.path.startswith(self.ALLOWED)
            and not is_mfa_enabled(user, [Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN])
        ):
            messages.warning(
                request,
                "Staff accounts need a second factor: set up an authenticator app or a "
                "security key to go on.",
            )
            return redirect("mfa_index")
        return self.get_response(request)
