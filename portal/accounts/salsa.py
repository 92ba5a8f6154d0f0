"""Debian membership from salsa.debian.org (GitLab) group membership.

With the ``openid`` scope, GitLab's OpenID userinfo endpoint lists the user's groups. At each
salsa login the portal reads them: membership of one of ``SALSA_DEBIAN_GROUPS`` grants the
Debian member role; leaving them withdraws a role that came from salsa, never one that staff
granted. When salsa cannot be asked, the role stays as it was.
"""

import logging

import requests
from allauth.account.signals import user_logged_in
from django.conf import settings
from django.dispatch import receiver

from portal.accounts.models import User
from portal.accounts.services import debian_member_set

log = logging.getLogger(__name__)


def member_source_after_login(current: str, groups: list[str], wanted: list[str]) -> str:
    if current == User.MemberSource.STAFF:
        return current
    if set(groups) & set(wanted):
        return User.MemberSource.SALSA
    return User.MemberSource.NONE


def fetch_groups(base_url: str, access_token: str, timeout: float = 5.0) -> list[str] | None:
    try:
        response = requests.get(
            f"{base_url.rstrip('/')}/oauth/userinfo",
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=timeout,
        )
        response.raise_for_status()
        groups = response.json().get("groups", [])
    except (requests.RequestException, ValueError, AttributeError) as exc:
        log.warning("could not read salsa groups: %s", exc)
        return None
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        log.warning("salsa userinfo has a malformed groups claim")
        return None
    return groups


@receiver(user_logged_in)
def sync_debian_membership(sender, request, user, sociallogin=None, **kwargs):
    if sociallogin is None or sociallogin.account.provider != "gitlab" or not sociallogin.token:
        return
    groups = fetch_groups(settings.SALSA_URL, sociallogin.token.token)
    if groups is None:
        return
    source = member_source_after_login(
        user.debian_member_source, groups, settings.SALSA_DEBIAN_GROUPS
    )
    if source != user.debian_member_source:
        debian_member_set(user=user, source=source)
