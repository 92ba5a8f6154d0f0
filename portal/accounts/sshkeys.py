"""Parse and check the OpenSSH public keys that users paste (stdlib and cryptography only).

Why each rule:
- ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa and the two FIDO ``sk-`` types are the
  types today's OpenSSH accepts; anything else would be stored but never work.
- DSA is weak and disabled in OpenSSH since 9.8; RSA below 3072 bits is retired by NIST, and
  OpenSSH refuses RSA above 16384 bits.
- The type word must match the type inside the key data, and the data must hold exactly one
  well-formed key (no truncation, no trailing bytes), so what is stored is what sshd reads.
- Certificates are signed by a CA for a limited time; the portal installs plain keys.
- authorized_keys options (``command=``, ``from=``, ...) are the portal's to set, not the user's.
- A private key pasted by mistake must never be stored, echoed or logged: it is refused as a
  whole, and its message quotes nothing of the input.
- RFC 4716 and PEM blocks are other formats: the user is told how to convert them.
- Size bounds stop a huge paste before any parsing; control and invisible characters could
  hide text in the comment shown to admins, or split a line in authorized_keys.
- Error messages quote the input only where it is a short word that cannot be key material.
"""

import base64
import binascii
import hashlib
import re
import struct
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

MAX_INPUT_CHARS = 64 * 1024
MAX_LINE_CHARS = 16 * 1024
MAX_COMMENT_CHARS = 200
MIN_RSA_BITS = 3072
MAX_RSA_BITS = 16384

# Key type -> number of length-prefixed strings in its wire blob (the type string included).
FIELDS = {
    "ssh-ed25519": 2,  # type, key
    "ecdsa-sha2-nistp256": 3,  # type, curve, point
    "ecdsa-sha2-nistp384": 3,
    "ecdsa-sha2-nistp521": 3,
    "ssh-rsa": 3,  # type, e, n
    "sk-ssh-ed25519@openssh.com": 3,  # type, key, application
    "sk-ecdsa-sha2-nistp256@openssh.com": 4,  # type, curve, point, application
}
ACCEPTED = (
    "ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa (3072 bits or more), "
    "sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com"
)
# Anything that shows a private key: PEM/OpenSSH headers, PuTTY files, SSH.com's format, and
# the first base64 characters of an OpenSSH private key body ("openssh-key-v1") without header.
PRIVATE_MARKERS = (
    "PRIVATE KEY-----",
    "PRIVATE KEY ----",
    "BEGIN OPENSSH PRIVATE KEY",
    "PuTTY-User-Key-File",
    "Private-Lines:",
    "b3BlbnNzaC1rZXktdjE",
)
PRIVATE_MESSAGE = (
    "This is a PRIVATE key: it was not stored, and it should never be shared with anyone. "
    "Paste the public key instead (the .pub file, e.g. ~/.ssh/id_ed25519.pub). Consider this "
    "key compromised: make a new one with ssh-keygen -t ed25519 and stop using the old one."
)
OPTION_NAMES = {
    "agent-forwarding", "cert-authority", "no-agent-forwarding", "no-port-forwarding",
    "no-pty", "no-touch-required", "no-user-rc", "no-x11-forwarding", "port-forwarding",
    "pty", "restrict", "touch-required", "user-rc", "verify-required", "x11-forwarding",
}  # fmt: skip
_SAFE_WORD = re.compile(r"[a-z][a-z0-9@._-]{0,39}")  # lower case: never a base64 key chunk
_BLOCK_BEGIN = re.compile(r"-{4,5} ?BEGIN ")
_BLOCK_END = re.compile(r"-{4,5} ?END ")


class InvalidKey(ValueError):
    """A pasted key is refused; ``message`` is a sentence to show the user."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"InvalidKey({self.message!r})"


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    blob: str  # base64 of the wire blob, exactly as in the key line
    comment: str
    bits: int
    fingerprint: str  # as ssh-keygen -lf prints it

    def openssh(self) -> str:
        """The key as it goes into authorized_keys (without the user's comment)."""
        return f"{self.key_type} {self.blob}"


def _has_private_key(text: str) -> bool:
    return any(marker in text for marker in PRIVATE_MARKERS)


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls; Cf: invisible format characters (bidi overrides, zero-width...);
    # Cs: lone surrogates; Zl/Zp: line and paragraph separators.
    return char != "\t" and unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _read_fields(raw: bytes, count: int, *, whole: bool = True) -> list[bytes]:
    """Read ``count`` SSH strings from a wire blob; with ``whole``, nothing may follow."""
    fields, offset = [], 0
    for _ in range(count):
        if len(raw) - offset < 4:
            raise InvalidKey("The key data is truncated or corrupt.")
        (length,) = struct.unpack_from(">I", raw, offset)
        offset += 4
        if length > len(raw) - offset:
            raise InvalidKey("The key data is truncated or corrupt.")
        fields.append(raw[offset : offset + length])
        offset += length
    if whole and offset != len(raw):
        raise InvalidKey("The key data has trailing bytes after the key: it is corrupt.")
    return fields


def _refuse_type_word(word: str, line: str) -> InvalidKey:
    """The error for a line whose first word is not an accepted key type."""
    if word == "ssh-dss":
        return InvalidKey(
            "DSA keys are insecure and no longer accepted by OpenSSH; use ed25519 "
            "(ssh-keygen -t ed25519)."
        )
    if "-cert-v0" in word:
        return InvalidKey(
            "This is an SSH certificate, not a plain public key; paste the public key it was "
            "made from (the .pub file without -cert)."
        )
    later_words = line.split()[1:]
    if (
        "=" in word
        or "," in word
        or word.lower() in OPTION_NAMES
        or any(w in FIELDS or w == "ssh-dss" for w in later_words)
    ):
        return InvalidKey(
            "The line starts with authorized_keys options (such as restrict or command=); "
            "remove the options before the key type: the portal sets options itself."
        )
    if word.startswith("AAAA"):
        return InvalidKey(f"The key type is missing: the line must start with one of {ACCEPTED}.")
    shown = f" {word!r}" if _SAFE_WORD.fullmatch(word) else ""
    return InvalidKey(f"Unknown key type{shown}: use {ACCEPTED}.")


def _key_bits(key_type: str, blob: str, fields: list[bytes]) -> int:
    """Check the key itself with cryptography; return its size as ssh-keygen shows it."""
    curve = re.search(r"nistp\d+", key_type)
    if curve and fields[1] != curve[0].encode():
        raise InvalidKey(f"The curve inside the key data does not match {key_type}.")
    if key_type.startswith("sk-"):
        application = fields[-1]
        if not application.startswith(b"ssh:") or b"\0" in application:
            raise InvalidKey(
                "The security key's application is not an ssh: one; make the key with "
                "ssh-keygen -t ed25519-sk."
            )
    try:
        key = load_ssh_public_key(f"{key_type} {blob}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm, NotImplementedError):
        raise InvalidKey(f"The {key_type} key data is corrupt: it is not a valid key.") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidKey(
                f"This RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed. "
                "Make a new key with ssh-keygen -t ed25519."
            )
        if key.key_size > MAX_RSA_BITS:
            raise InvalidKey(
                f"This RSA key has {key.key_size} bits; OpenSSH accepts at most {MAX_RSA_BITS}."
            )
        return key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.curve.key_size
    return 256  # ed25519, plain or security key


def parse_public_key(line: str) -> PublicKey:
    """Parse one ``type base64 [comment]`` line; raise InvalidKey with a clear message."""
    if _has_private_key(line):
        raise InvalidKey(PRIVATE_MESSAGE)
    if len(line) > MAX_LINE_CHARS:
        raise InvalidKey(f"The line is longer than {MAX_LINE_CHARS} characters: it is not a key.")
    line = line.removeprefix("\ufeff")
    if not line.strip():
        raise InvalidKey("Paste a public key: the contents of a .pub file.")
    line = line.strip(" \t\r\n")
    if line.startswith("---- BEGIN SSH2 PUBLIC KEY"):
        raise InvalidKey(
            "This is an RFC 4716 (SSH2) public key; convert it to OpenSSH's one-line format "
            "with ssh-keygen -i -f FILE, and paste that."
        )
    if _BLOCK_BEGIN.match(line):
        raise InvalidKey(
            "This is a PEM block, not an OpenSSH public key; convert a PEM public key to "
            "OpenSSH's one-line format with ssh-keygen -i -m PKCS8 -f FILE, and paste that."
        )
    if "\n" in line or "\r" in line:
        raise InvalidKey("Paste one key only: this text has several lines.")
    if any(_is_control(char) for char in line):
        raise InvalidKey(
            "The text contains control characters or invisible formatting characters; paste "
            "the .pub file's text as it is."
        )
    line = line.strip()  # other Unicode spaces around the key are harmless
    parts = line.split(None, 2)
    key_type = parts[0]
    if key_type not in FIELDS:
        raise _refuse_type_word(key_type, line)
    if len(parts) < 2:
        raise InvalidKey(f"The {key_type} key has no key data after its type.")
    blob = parts[1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"The {key_type} key data is not valid base64.") from None
    if base64.b64encode(raw).decode() != blob:
        raise InvalidKey(f"The {key_type} key data is not valid base64 (bad padding).")
    (inner_type,) = _read_fields(raw, 1, whole=False)
    if inner_type != key_type.encode():
        inner = inner_type.decode("ascii", "replace")
        holds = f" (it holds a {inner} key)" if inner in FIELDS or inner == "ssh-dss" else ""
        raise InvalidKey(
            f"The key data is not a {key_type} key{holds}: the type word must match the key."
        )
    fields = _read_fields(raw, FIELDS[key_type])
    bits = _key_bits(key_type, blob, fields)
    comment = parts[2].replace("\t", " ").strip() if len(parts) > 2 else ""
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidKey(f"The comment is longer than {MAX_COMMENT_CHARS} characters.")
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return PublicKey(key_type, blob, comment, bits, f"SHA256:{digest}")


def parse_public_keys(text: str) -> list[PublicKey | InvalidKey]:
    """Parse a paste of several keys: one result per key line, in order.

    Blank lines and ``#`` comments are skipped; a private key anywhere refuses the whole paste
    with one message, and an RFC 4716 or PEM block gives one error at its first line.
    """
    if _has_private_key(text):
        return [InvalidKey(PRIVATE_MESSAGE)]  # one message, never a line of the key
    if len(text) > MAX_INPUT_CHARS:
        return [InvalidKey(f"The text is longer than {MAX_INPUT_CHARS} characters.")]
    results: list[PublicKey | InvalidKey] = []
    in_block = False
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text.removeprefix("\ufeff")), 1):
        stripped = line.strip()
        if in_block:
            in_block = not _BLOCK_END.match(stripped)
            continue
        if not stripped or stripped.startswith("#"):
            continue
        in_block = bool(_BLOCK_BEGIN.match(stripped))
        try:
            results.append(parse_public_key(line))
        except InvalidKey as exc:
            results.append(InvalidKey(f"Line {number}: {exc.message}"))
    return results or [InvalidKey("Paste a public key: the contents of a .pub file.")]
