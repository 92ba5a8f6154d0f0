"""Create (or reset) the local admin account and print its credentials; for `make run`."""

import secrets

from allauth.account.models import EmailAddress
from django.core.management.base import BaseCommand
from django.db import transaction

from portal.accounts.models import User


class Command(BaseCommand):
    help = "Ensure a superuser exists with a fresh random password, and print it."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="admin@localhost")

    @transaction.atomic
    def handle(self, *args, username, email, **options):
        password = secrets.token_urlsafe(12)
        user, _ = User.objects.get_or_create(username=username, defaults={"email": email})
        user.is_staff = user.is_superuser = True
        user.debian_member_source = user.debian_member_source or User.MemberSource.STAFF
        user.set_password(password)
        user.save()
        EmailAddress.objects.update_or_create(
            user=user, email=user.email, defaults={"verified": True, "primary": True}
        )
        self.stdout.write(f"Admin login: {username} / {password}")
