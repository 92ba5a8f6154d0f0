"""Writes on accounts: SSH keys and roles."""

from dataclasses import dataclass, field

from django.db import IntegrityError, transaction

from portal.accounts.models import SSHKey, User
from portal.accounts.sshkeys import InvalidKey, PublicKey, parse_public_keys

MAX_KEYS_PER_USER = 32


@dataclass
class KeysAdded:
    added: list[SSHKey] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class KeyConflict(Exception):
    """The key is already registered (to this user, or to someone else)."""


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
