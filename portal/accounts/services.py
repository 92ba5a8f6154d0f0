"""Writes on accounts: SSH keys, roles, partner projects and their members."""

import logging
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from portal.accounts.audit import staff_log
from portal.accounts.models import PartnerMembership, PartnerProject, SSHKey, User
from portal.accounts.sshkeys import InvalidKey, PublicKey, parse_public_keys
from portal.errors import Conflict, ServiceError
from portal.notifications.models import Webhook
from portal.notifications.outbox import notify_many, notify_staff, notify_webhook

log = logging.getLogger(__name__)

MAX_KEYS_PER_USER = 32


@dataclass
class KeysAdded:
    added: list[SSHKey] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class KeyConflict(Conflict):
    """The key is already registered (to this user, or to someone else), or the user has as
    many keys as they may."""

    def __init__(self, message: str):
        super().__init__("key_registered", message)


def ssh_key_add(*, user: User, key: PublicKey) -> SSHKey:
    """Register one parsed key. A key identifies one person, so it may be registered once."""
    # Each key in its own transaction: in a paste of several, one conflict spoils no other.
    with transaction.atomic():
        if SSHKey.objects.filter(user=user).count() >= MAX_KEYS_PER_USER:
            raise KeyConflict(f"You already have {MAX_KEYS_PER_USER} keys; remove one first.")
        try:
            with transaction.atomic():
                return SSHKey.objects.create(
                    user=user,
                    key_type=key.key_type,
                    blob=key.blob,
                    comment=key.comment,
                    bits=key.bits,
                    fingerprint=key.fingerprint,
                )
        except IntegrityError:
            if SSHKey.objects.filter(user=user, fingerprint=key.fingerprint).exists():
                raise KeyConflict(f"{key.fingerprint} is already on your account.") from None
            raise KeyConflict(
                f"{key.fingerprint} is registered to another account; a key may belong to one "
                "person only. Generate a new key with ssh-keygen -t ed25519."
            ) from None


def ssh_keys_add_text(*, user: User, text: str) -> KeysAdded:
    """Register every key of a paste, one by one; report each failure on its own."""
    result = KeysAdded()
    for item in parse_public_keys(text):
        if isinstance(item, InvalidKey):
            result.errors.append(item.message)
            continue
        try:
            result.added.append(ssh_key_add(user=user, key=item))
        except KeyConflict as exc:
            result.errors.append(str(exc))
    return result


def ssh_key_remove(*, user: User, key_id: int) -> bool:
    deleted, _ = SSHKey.objects.filter(user=user, pk=key_id).delete()
    return deleted > 0


def debian_member_set(*, user: User, source: str) -> None:
    """Grant (source "staff" or "salsa") or withdraw ("") the Debian member role."""
    User.objects.filter(pk=user.pk).update(debian_member_source=source)
    user.debian_member_source = source


# -- Partner projects ---------------------------------------------------------------------------

# Slugs that name pages under /projects/ rather than a project.
RESERVED_SLUGS = {"apply", "applications", "new", "mine"}


# A change to a partner project the service refuses: portal/errors.py's refusal.
ProjectError = ServiceError


def may_manage_project(user: User, project: PartnerProject) -> bool:
    """Managers of a project (and staff) change its members."""
    return (
        user.is_staff
        or PartnerMembership.objects.filter(
            project=project, user=user, role=PartnerMembership.Role.MANAGER
        ).exists()
    )


def _free_slug(name: str) -> str:
    base = slugify(name)[:50] or "project"
    if base in RESERVED_SLUGS:
        base = f"{base}-project"
    slug, n = base, 1
    while PartnerProject.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def project_apply(
    *,
    applicant: User,
    name: str,
    url: str = "",
    description: str = "",
    code_licence: str = "",
    data_licence: str = "",
    contact_email: str = "",
) -> PartnerProject:
    """An application: the project waits for staff in state `applied`, its applicant manages it."""
    try:
        with transaction.atomic():
            project = PartnerProject.objects.create(
                name=name, slug=_free_slug(name), url=url, description=description,
                code_licence=code_licence, data_licence=data_licence,
                contact_email=contact_email, state=PartnerProject.State.APPLIED,
            )  # fmt: skip
            PartnerMembership.objects.create(
                project=project, user=applicant, role=PartnerMembership.Role.MANAGER
            )
            notify_staff(
                "project.applied", "accounts/mail_project_applied.txt",
                {"project": project, "applicant": applicant},
                data={"project": project.slug, "name": project.name},
            )  # fmt: skip
    except IntegrityError:  # another application took the name (or its slug) meanwhile
        raise ProjectError(
            "name_taken", f"A project named {name!r} exists already.", "name"
        ) from None
    return project


def project_decide(
    *, project: PartnerProject, actor: User, approve: bool, reason: str = ""
) -> bool:
    """Staff approve or reject an application (a rejection says why); False if it was decided
    already. The project's members are mailed the decision and the reason."""
    if not actor.is_staff:
        raise ProjectError("staff_only", "Only staff decide on applications.")
    reason = reason.strip()[:2000]
    if not approve and not reason:
        raise ProjectError("reason_required", "Say why the application is rejected.", "reason")
    to = PartnerProject.State.APPROVED if approve else PartnerProject.State.REJECTED
    with transaction.atomic():
        # A conditional UPDATE: two staff members clicking at once decide once.
        done = PartnerProject.objects.filter(
            pk=project.pk, state=PartnerProject.State.APPLIED
        ).update(state=to, decision_reason=reason)
        if done:
            project.state, project.decision_reason = to, reason
            what = "Application approved" if approve else "Application rejected"
            staff_log(actor, project, f"{what}{': ' + reason if reason else ''}")
            _tell_members(project)
    return bool(done)


def _tell_members(project: PartnerProject) -> None:
    """Tell the members the decision and the reason (and the project's webhook), queued in
    the decision's transaction."""
    event = (
        "project.approved" if project.state == PartnerProject.State.APPROVED else "project.rejected"
    )
    data = {"project": project.slug, "name": project.name, "state": project.state}
    context = {"project": project}
    members = list(project.members.filter(is_active=True).order_by("pk"))
    notify_many(event, members, "accounts/mail_project_decided.txt", context, data=data)
    if members and (hook := Webhook.objects.filter(project=project).first()):
        notify_webhook(event, hook, "accounts/mail_project_decided.txt", context, data=data)


def membership_add(
    *, project: PartnerProject, actor: User, username: str, role: str = "member"
) -> PartnerMembership:
    if not may_manage_project(actor, project):
        raise ProjectError("managers_only", f"Only managers of {project} add members.")
    if role not in PartnerMembership.Role.values:
        raise ProjectError("bad_role", "Choose manager or member.", "role")
    user = User.objects.filter(username=username, is_active=True).first()
    if user is None:
        raise ProjectError(
            "unknown_user", f"No user {username[:150]!r} here; they log in once first.", "username"
        )
    try:
        with transaction.atomic():
            return PartnerMembership.objects.create(project=project, user=user, role=role)
    except IntegrityError:
        raise ProjectError(
            "already_member", f"{user.username} is a member already.", "username"
        ) from None


def membership_remove(*, project: PartnerProject, actor: User, user_id: int) -> None:
    if not may_manage_project(actor, project):
        raise ProjectError("managers_only", f"Only managers of {project} remove members.")
    with transaction.atomic():
        # Lock the project's memberships, so two managers removing each other at once cannot
        # leave the project without one.
        members = list(
            PartnerMembership.objects.select_for_update().filter(project=project).order_by("pk")
        )
        leaving = next((m for m in members if m.user_id == user_id), None)
        if leaving is None:
            raise ProjectError("not_member", "Not a member of this project.")
        managers = [m for m in members if m.role == PartnerMembership.Role.MANAGER]
        if leaving.role == PartnerMembership.Role.MANAGER and len(managers) == 1:
            raise ProjectError(
                "last_manager", "A project keeps at least one manager; add another one first."
            )
        leaving.delete()
