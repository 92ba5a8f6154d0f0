"""Parse and check OpenSSH public keys that users paste (no Django here).

Why each rule: DSA and short RSA are no longer safe (OpenSSH refuses DSA since 9.8; NIST
retires RSA below 3072 bits); options such as ``command=`` belong to the portal, not to the
user; a private key pasted by mistake must never be stored, echoed or logged; size bounds keep
a huge paste from costing anything. Keys are decoded by ``cryptography``; the FIDO ``sk-``
types, which it does not load, are checked by reading their wire format here.
"""

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

MAX_INPUT_CHARS = 64 * 1024
MAX_LINE_CHARS = 16 * 1024
MAX_COMMENT_CHARS = 200
MIN_RSA_BITS = 3072

ECDSA_CURVES = {"nistp256": 256, "nistp384": 384, "nistp521": 521}
KNOWN_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    *(f"ecdsa-sha2-{c}" for c in ECDSA_CURVES),
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}
PRIVATE_MARKERS = ("PRIVATE KEY-----", "PuTTY-User-Key-File", "BEGIN SSH2 ENCRYPTED PRIVATE KEY")
PRIVATE_MESSAGE = (
    "This is a PRIVATE key. It was not stored; never share it with anyone. Paste the "
    "public key instead (the .pub file, e.g. ~/.ssh/id_ed25519.pub), and consider this key "
    "compromised: make a new one with ssh-keygen -t ed25519."
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class InvalidKey(ValueError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __repr__(self):
        return f"InvalidKey({self.message!r})"


@dataclass(frozen=True)
class PublicKey:
    key_type: str
    blob: str
    comment: str
    bits: int
    fingerprint: str

    def openssh(self) -> str:
        return f"{self.key_type} {self.blob}"


def _shown(text: str) -> str:
    return repr(text[:40] + ("…" if len(text) > 40 else ""))


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(data):
        raise InvalidKey("The key data is truncated.")
    (length,) = struct.unpack(">I", data[offset : offset + 4])
    end = offset + 4 + length
    if end > len(data):
        raise InvalidKey("The key data is truncated.")
    return data[offset + 4 : end], end


def _sk_bits(key_type: str, raw: bytes) -> int:
    """Check a FIDO security-key blob: type, key, application, and nothing more."""
    _, offset = _read_string(raw, 0)
    if key_type.startswith("sk-ssh-ed25519"):
        point, offset = _read_string(raw, offset)
        if len(point) != 32:
            raise InvalidKey("The ed25519 security key has a key of the wrong length.")
        ed25519.Ed25519PublicKey.from_public_bytes(point)
        bits = 256
    else:
        curve, offset = _read_string(raw, offset)
        if curve != b"nistp256":
            raise InvalidKey("The security key's curve does not match its type.")
        point, offset = _read_string(raw, offset)
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        except ValueError:
            raise InvalidKey("The security key holds an invalid ECDSA point.") from None
        bits = 256
    application, offset = _read_string(raw, offset)
    if not application.startswith(b"ssh:"):
        raise InvalidKey("The security key's application is not an ssh: one.")
    if offset != len(raw):
        raise InvalidKey("The key data has trailing bytes.")
    return bits


def _bits(key_type: str, raw: bytes, blob: str) -> int:
    if key_type.startswith("sk-"):
        return _sk_bits(key_type, raw)
    try:
        key = load_ssh_public_key(f"{key_type} {blob}".encode())
    except (ValueError, TypeError, struct.error, IndexError):
        raise InvalidKey(f"The {key_type} key data is corrupt or truncated.") from None
    except Exception:  # cryptography's own UnsupportedAlgorithm and the like
        raise InvalidKey(f"The {key_type} key data cannot be read.") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidKey(
                f"This RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are needed. "
                "Make an ed25519 key: ssh-keygen -t ed25519."
            )
        return key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key_type != f"ecdsa-sha2-nistp{key.curve.key_size}":
            raise InvalidKey("The ECDSA key's curve does not match its type.")
        return key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return 256
    raise InvalidKey(f"Unsupported key type {key_type}.")


def parse_public_key(line: str) -> PublicKey:
    """Parse one ``type base64 [comment]`` line; raise InvalidKey with a clear message."""
    if any(marker in line for marker in PRIVATE_MARKERS):
        raise InvalidKey(PRIVATE_MESSAGE)
    if len(line) > MAX_LINE_CHARS:
        raise InvalidKey(f"This line is longer than {MAX_LINE_CHARS} characters: not a key.")
    line = line.strip()
    if not line:
        raise InvalidKey("Paste a public key.")
    if _CONTROL.search(line):
        raise InvalidKey("The key contains control characters; paste the .pub file's text.")
    if line.startswith("---- BEGIN SSH2 PUBLIC KEY"):
        raise InvalidKey(
            "This is an RFC 4716 (SSH2) key; convert it to OpenSSH's one-line format with "
            "ssh-keygen -i -f KEYFILE."
        )
    parts = line.split(None, 2)
    key_type = parts[0]
    if key_type == "ssh-dss":
        raise InvalidKey(
            "DSA keys are insecure and no longer accepted by OpenSSH; use ed25519 "
            "(ssh-keygen -t ed25519)."
        )
    if key_type.endswith("-cert-v01@openssh.com"):
        raise InvalidKey("This is an SSH certificate; paste the plain public key instead.")
    if key_type not in KNOWN_TYPES:
        if any(f" {t} " in f" {line} " for t in KNOWN_TYPES | {"ssh-dss"}):
            raise InvalidKey(
                "The line starts with authorized_keys options; remove the options before the "
                "key type (the portal sets the options itself)."
            )
        raise InvalidKey(
            f"Unknown key type {_shown(key_type)}: use ssh-ed25519, ecdsa-sha2-nistp256/384/521, "
            "ssh-rsa (3072 bits or more), or an sk- security key."
        )
    if len(parts) < 2:
        raise InvalidKey(f"The {key_type} key has no key data after its type.")
    blob = parts[1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"The {key_type} key data is not valid base64.") from None
    inner, _ = _read_string(raw, 0)
    if inner != key_type.encode():
        raise InvalidKey(f"The key data is not a {key_type} key (its type inside differs).")
    bits = _bits(key_type, raw, blob)
    comment = parts[2].strip() if len(parts) > 2 else ""
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidKey(f"The comment is longer than {MAX_COMMENT_CHARS} characters.")
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return PublicKey(key_type, blob, comment, bits, f"SHA256:{digest}")


def parse_public_keys(text: str) -> list[PublicKey | InvalidKey]:
    """Parse a paste of several keys, one result per key line, in order."""
    if any(marker in text for marker in PRIVATE_MARKERS):
        return [InvalidKey(PRIVATE_MESSAGE)]  # one message, never a line of the key
    if len(text) > MAX_INPUT_CHARS:
        return [InvalidKey(f"The text is longer than {MAX_INPUT_CHARS} characters.")]
    results: list[PublicKey | InvalidKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            results.append(parse_public_key(line))
        except InvalidKey as exc:
            results.append(InvalidKey(f"Line {number}: {exc.message}"))
    if not results:
        results.append(InvalidKey("Paste a public key."))
    return results
