"""The Unix account a portal user gets on a host: derived here, checked again by the agent."""

import re

_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
_FALLBACK = re.compile(r"u[0-9]+")
# Names that exist on a Debian host or that the portal itself uses: never hand them out. The
# agent also refuses any existing account it did not create, whatever this list says.
RESERVED = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "sshd",
        "messagebus",
        "postgres",
        "porterbox",
        "admin",
        "staff",
        "operator",
        "schroot",
    ]
)


# Partner projects' job accounts are pj-<project id>; no person may have such a name.
JOB_ACCOUNT_PREFIX = "pj-"


def unix_name(username: str, user_id: int) -> str:
    """The user's portal name where it is a safe Unix name, else `u<id>`.

    Names of the form u<digits>, and those of job accounts (pj-...), always take the fallback,
    so two users, or a user and a project, never share an account.
    """
    if (
        _NAME.fullmatch(username)
        and username not in RESERVED
        and not _FALLBACK.fullmatch(username)
        and not username.startswith(JOB_ACCOUNT_PREFIX)
    ):
        return username
    return f"u{user_id}"


def keys_digest(key_lines: list[str]) -> str:
    """What the agent reports of a user's installed keys: sha256 of the sorted "type base64"
    lines, joined by newlines. The portal compares it with the keys it wants installed."""
    import hashlib

    normal = sorted(" ".join(line.split()[:2]) for line in key_lines)
    return hashlib.sha256("\n".join(normal).encode()).hexdigest()
