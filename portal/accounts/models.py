"""Users, their roles, their SSH public keys, and the partner projects they belong to.

Roles (docs/architecture.md, "Roles"):
- Debian member: may book hardware. Granted by staff, or from salsa group membership.
- Partner member: member of an approved partner project (submits training jobs).
- Staff: Django's is_staff; manages hosts, policies, approvals.
"""

import hashlib
import secrets
import zoneinfo
from datetime import timedelta
from functools import cache

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.utils import timezone


@cache
def time_zone_names() -> list[str]:
    return sorted(zoneinfo.available_timezones() - {"localtime"})


def validate_time_zone(value: str) -> None:
    if value not in time_zone_names():
        raise ValidationError(f"Unknown time zone {value[:60]!r}; pick one like Europe/Berlin.")


class User(AbstractUser):
    class MemberSource(models.TextChoices):
        NONE = "", "not a Debian member"
        STAFF = "staff", "granted by staff"
        SALSA = "salsa", "salsa group membership"

    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    # Who made this user a Debian member; empty when they are not one. A salsa grant is
    # refreshed at each salsa login, a staff grant is kept until staff removes it.
    debian_member_source = models.CharField(
        max_length=8, choices=MemberSource.choices, blank=True, default=""
    )

    @property
    def is_debian_member(self) -> bool:
        return bool(self.debian_member_source)

    @property
    def is_partner_member(self) -> bool:
        return self.partner_memberships.filter(
            project__state=PartnerProject.State.APPROVED
        ).exists()

    @property
    def roles(self) -> list[str]:
        roles = []
        if self.is_debian_member:
            roles.append("Debian member")
        if self.is_partner_member:
            roles.append("partner member")
        if self.is_staff:
            roles.append("staff")
        return roles


class SSHKey(models.Model):
    """A public key; the provisioning loop installs a user's current keys on granted hosts."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="ssh_keys")
    key_type = models.CharField(max_length=64)
    blob = models.TextField()  # base64 wire blob, as in the key line
    comment = models.CharField(max_length=200, blank=True)
    bits = models.PositiveIntegerField()
    # Unique: a key identifies one person on the hosts, so two users cannot share it.
    fingerprint = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "id"]
        verbose_name = "SSH key"

    def __str__(self):
        return f"{self.key_type} {self.fingerprint} {self.comment}".strip()

    def openssh(self) -> str:
        return f"{self.key_type} {self.blob}"


class PartnerProject(models.Model):
    """A FOSS project outside Debian that runs training jobs (jobs, quotas: issue 6)."""

    class State(models.TextChoices):
        APPLIED = "applied", "applied, waiting for staff"
        APPROVED = "approved", "approved"
        REJECTED = "rejected", "rejected"
        SUSPENDED = "suspended", "suspended"

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=60, unique=True)
    url = models.URLField(blank=True)
    description = models.TextField(blank=True)
    contact_email = models.EmailField(blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.APPLIED)
    # What staff said with their decision (a rejection always says why), shown to the members.
    decision_reason = models.TextField(blank=True)
    code_licence = models.CharField("licence of the code", max_length=100, blank=True)
    data_licence = models.CharField("licence of the training data", max_length=100, blank=True)
    # Quotas and the fair-share weight (portal/jobs/scheduler.py), set by staff.
    device_hours_per_month = models.PositiveIntegerField(default=500)
    max_concurrent_devices = models.PositiveSmallIntegerField(default=4)
    max_walltime_hours = models.PositiveIntegerField(default=48)
    share = models.PositiveSmallIntegerField(
        default=1, help_text="Fair-share weight: a project with share 2 gets twice the device time."
    )
    created = models.DateTimeField(default=timezone.now)
    members: "models.ManyToManyField[User, PartnerMembership]" = models.ManyToManyField(
        User, through="PartnerMembership", related_name="partner_projects"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class PartnerMembership(models.Model):
    class Role(models.TextChoices):
        MANAGER = "manager", "manager"
        MEMBER = "member", "member"

    project = models.ForeignKey(PartnerProject, on_delete=models.CASCADE)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="partner_memberships")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_project")
        ]

    def __str__(self):
        return f"{self.user} ({self.role}) in {self.project}"


class FeedToken(models.Model):
    """The secret in the address of a user's calendar feed (/api/feeds/<token>.ics).

    Only the token's SHA-256 is kept: a copy of the database gives nobody's feed away, and the
    token is shown once, when it is made. One per user: a new one replaces the old.
    """

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="feed_token")
    digest = models.CharField(max_length=64, unique=True)  # hex SHA-256 of the token
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)  # within an hour (see used)

    def __str__(self):
        return f"calendar feed of {self.user}"

    @staticmethod
    def digest_of(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, user: User) -> str:
        """A new token for the user, replacing any old one; the only time it is seen whole."""
        token = secrets.token_urlsafe(32)
        with transaction.atomic():
            # The user's row is the lock: two issues at once make one row, not an IntegrityError.
            User.objects.select_for_update().filter(pk=user.pk).first()
            cls.objects.update_or_create(
                user=user, defaults={"digest": cls.digest_of(token), "created": timezone.now()}
            )
        return token

    @classmethod
    def revoke(cls, user: User) -> bool:
        return cls.objects.filter(user=user).delete()[0] > 0

    @classmethod
    def owner(cls, token: str) -> User | None:
        """The active user whose token this is, or None."""
        found = (
            cls.objects.select_related("user")
            .filter(digest=cls.digest_of(token), user__is_active=True)
            .first()
        )
        if found is None:
            return None
        found.used()
        return found.user

    def used(self) -> None:
        """Note the fetch, at most once an hour: a calendar polls every few minutes, and a
        write per poll would cost more than "last fetched" is worth."""
        now = timezone.now()
        stale = models.Q(last_used__isnull=True) | models.Q(last_used__lt=now - timedelta(hours=1))
        FeedToken.objects.filter(models.Q(pk=self.pk) & stale).update(last_used=now)
