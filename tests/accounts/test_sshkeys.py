"""The SSH public key parser, on real keys, checked against ssh-keygen where it is installed.

Pure Python: runs without Django (pytest -p no:django --noconftest).
"""

import base64
import dataclasses
import hashlib
import shutil
import struct
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from portal.accounts import sshkeys
from portal.accounts.sshkeys import (
    MAX_INPUT_CHARS,
    MAX_LINE_CHARS,
    InvalidKey,
    PublicKey,
    parse_public_key,
    parse_public_keys,
)

SSH_KEYGEN = shutil.which("ssh-keygen")
SK_ED = b"sk-ssh-ed25519@openssh.com"
SK_EC = b"sk-ecdsa-sha2-nistp256@openssh.com"

# Real security keys, from OpenSSH's own test data (regress/unittests/sshkey/testdata/
# ed25519_sk2.pub, its .fp file, and ecdsa_sk1.pub, in openssh-portable).
OPENSSH_ED25519_SK = (
    "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIBXx+7VJzfVAsrZH/MY9"
    "03e97nG4W8NzuYQBbFtoj5hzAAAABHNzaDo= ED25519-SK test key #2"
)
OPENSSH_ED25519_SK_FINGERPRINT = "SHA256:b9BVPS5vuU4yu/FgweojLLg6zbfmBBoWLUgibdxxsoo"
OPENSSH_ECDSA_SK = (
    "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAAA"
    "IbmlzdHAyNTYAAABBBGdVPkKOLUMZ7b6rZfS8BOHotic4NX4MmuyEmiuvkaeKlbb1F+5oNezRYHpcF6P104trNVEO"
    "NCu1XX1CA7px+QUAAAAEc3NoOg== ECDSA-SK test key #1"
)
# OpenSSH's ed25519_sk1-cert.pub, shortened: the parser refuses it on its type word alone.
OPENSSH_SK_CERT = (
    "sk-ssh-ed25519-cert-v01@openssh.com AAAAI3NrLXNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAA"
    "AIJr7CuMntQKvHoUshx374fJLFEkyxKsEOBA1H6hk5scoAAAAICFo/k5LU8863u66YC9eUO2170QduohPURkQnbLa"
    "/dczAAAABHNzaDoAAAAAAAAACAAAAAIAAAAGanVsaXVz ED25519-SK test key #1"
)


# --- key makers ---------------------------------------------------------------------------


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def mpint(value: int) -> bytes:
    return ssh_string(value.to_bytes(value.bit_length() // 8 + 1, "big"))


def line_of(key_type: bytes, raw: bytes, comment: str = "") -> str:
    return f"{key_type.decode()} {base64.b64encode(raw).decode()} {comment}".strip()


def openssh_line(public_key, comment: str = "") -> str:
    raw = public_key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{raw.decode()} {comment}".strip()


def ed25519_line(comment: str = "me@laptop") -> str:
    return openssh_line(ed25519.Ed25519PrivateKey.generate().public_key(), comment)


def ecdsa_line(curve: ec.EllipticCurve, comment: str = "") -> str:
    return openssh_line(ec.generate_private_key(curve).public_key(), comment)


def ed25519_point() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()


def p256_point(fmt=serialization.PublicFormat.UncompressedPoint) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.X962, fmt)


def sk_ed25519_line(point=None, application=b"ssh:", extra=b"", comment="yubikey") -> str:
    point = ed25519_point() if point is None else point
    raw = ssh_string(SK_ED) + ssh_string(point) + ssh_string(application) + extra
    return line_of(SK_ED, raw, comment)


def sk_ecdsa_line(point=None, curve=b"nistp256", application=b"ssh:", extra=b"") -> str:
    point = p256_point() if point is None else point
    raw = ssh_string(SK_EC) + ssh_string(curve) + ssh_string(point) + ssh_string(application)
    return line_of(SK_EC, raw + extra)


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def expected_fingerprint(line: str) -> str:
    digest = hashlib.sha256(blob_of(line)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def ssh_keygen_lf(tmp_path, line: str) -> subprocess.CompletedProcess:
    assert SSH_KEYGEN is not None  # the callers check that it is installed
    path = tmp_path / "key.pub"
    path.write_text(line + "\n")
    return subprocess.run([SSH_KEYGEN, "-lf", str(path)], capture_output=True, text=True)


def bits_and_fingerprint(tmp_path, line: str, bits: int) -> tuple[int, str]:
    """What ssh-keygen -lf says; where it is missing, the size expected and sha256 of the blob."""
    if not SSH_KEYGEN:
        return bits, expected_fingerprint(line)
    out = ssh_keygen_lf(tmp_path, line)
    assert out.returncode == 0, out.stderr
    size, fingerprint = out.stdout.split()[:2]
    return int(size), fingerprint


@pytest.fixture(scope="module")
def rsa_keys():
    made = {}

    def make(bits: int) -> rsa.RSAPublicKey:
        if bits not in made:
            made[bits] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        return made[bits]

    return make


def refused(text: str) -> str:
    with pytest.raises(InvalidKey) as info:
        parse_public_key(text)
    assert info.value.message == str(info.value)
    return info.value.message


# --- accepted keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "key_type", "bits"),
    [
        (lambda rsa_keys: ed25519_line("a b"), "ssh-ed25519", 256),
        (lambda rsa_keys: ecdsa_line(ec.SECP256R1()), "ecdsa-sha2-nistp256", 256),
        (lambda rsa_keys: ecdsa_line(ec.SECP384R1()), "ecdsa-sha2-nistp384", 384),
        (lambda rsa_keys: ecdsa_line(ec.SECP521R1()), "ecdsa-sha2-nistp521", 521),
        (lambda rsa_keys: openssh_line(rsa_keys(3072).public_key()), "ssh-rsa", 3072),
        (lambda rsa_keys: openssh_line(rsa_keys(4096).public_key()), "ssh-rsa", 4096),
        (lambda rsa_keys: sk_ed25519_line(), SK_ED.decode(), 256),
        (lambda rsa_keys: sk_ecdsa_line(), SK_EC.decode(), 256),
        (lambda rsa_keys: OPENSSH_ED25519_SK, SK_ED.decode(), 256),
        (lambda rsa_keys: OPENSSH_ECDSA_SK, SK_EC.decode(), 256),
    ],
    ids=[
        "ed25519", "p256", "p384", "p521", "rsa3072", "rsa4096",
        "sk-ed25519", "sk-ecdsa", "openssh-sk-ed25519", "openssh-sk-ecdsa",
    ],
)  # fmt: skip
def test_it_accepts_each_modern_key_type_as_ssh_keygen_reads_it(
    tmp_path, rsa_keys, make, key_type, bits
):
    line = make(rsa_keys)
    key = parse_public_key(line)
    assert (key.key_type, key.bits) == (key_type, bits)
    assert key.blob == line.split()[1]
    assert (key.bits, key.fingerprint) == bits_and_fingerprint(tmp_path, line, bits)


def test_it_gives_the_fingerprint_openssh_publishes_for_a_real_security_key():
    key = parse_public_key(OPENSSH_ED25519_SK)
    assert key.fingerprint == OPENSSH_ED25519_SK_FINGERPRINT
    assert key.comment == "ED25519-SK test key #2"


def test_it_computes_the_fingerprint_as_unpadded_base64_of_sha256_of_the_blob():
    line = ed25519_line()
    fingerprint = parse_public_key(line).fingerprint
    assert fingerprint == expected_fingerprint(line)
    assert fingerprint.startswith("SHA256:") and not fingerprint.endswith("=")
    assert len(fingerprint) == len("SHA256:") + 43


def test_it_gives_the_authorized_keys_form_without_the_comment():
    line = ed25519_line("alice@laptop")
    type_and_blob = " ".join(line.split()[:2])
    assert parse_public_key(line).openssh() == type_and_blob
    assert parse_public_key(f"  {type_and_blob}\t alice@laptop  \n").openssh() == type_and_blob


def test_it_keeps_a_comment_with_spaces():
    key = parse_public_key(ed25519_line("Alice Doe <alice@debian.org> work laptop"))
    assert key.comment == "Alice Doe <alice@debian.org> work laptop"


def test_it_accepts_no_comment_and_strips_one():
    assert parse_public_key(ed25519_line("")).comment == ""
    assert parse_public_key(ed25519_line("") + "   ").comment == ""
    assert parse_public_key(ed25519_line("") + "   bob@host   ").comment == "bob@host"


def test_it_accepts_tabs_between_fields_and_turns_tabs_in_the_comment_into_spaces():
    key_type, blob = ed25519_line("").split()
    key = parse_public_key(f"{key_type}\t{blob}\tmy\tkey")
    assert (key.key_type, key.blob, key.comment) == (key_type, blob, "my key")


def test_it_accepts_a_200_character_comment_and_refuses_201():
    assert len(parse_public_key(ed25519_line("x" * 200)).comment) == 200
    assert "longer than 200" in refused(ed25519_line("x" * 201))


def test_it_accepts_a_byte_order_mark_before_the_key():
    line = ed25519_line()
    assert parse_public_key("\ufeff" + line).blob == line.split()[1]
    assert isinstance(parse_public_keys("\ufeff# mine\n" + line)[0], PublicKey)


def test_it_returns_a_frozen_public_key():
    key = parse_public_key(ed25519_line())
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.comment = "changed"


# --- refused key types --------------------------------------------------------------------


def dsa_line(tmp_path) -> str:
    """A DSA key from ssh-keygen where it still makes them; else a DSA blob built by hand."""
    if SSH_KEYGEN:
        made = subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "dsa", "-N", "", "-f", str(tmp_path / "dsa")],
            capture_output=True,
        )
        if made.returncode == 0:
            return (tmp_path / "dsa.pub").read_text()
    p, q, g, y = (2**1023 + 1155, 2**159 + 7, 5, 2**1000 + 3)
    return line_of(b"ssh-dss", ssh_string(b"ssh-dss") + b"".join(mpint(v) for v in (p, q, g, y)))


def test_it_refuses_dsa_keys(tmp_path):
    message = refused(dsa_line(tmp_path))
    assert "DSA keys are insecure and no longer accepted by OpenSSH; use ed25519" in message


def test_it_refuses_rsa_under_3072_bits_saying_the_size_and_the_minimum(rsa_keys):
    message = refused(openssh_line(rsa_keys(2048).public_key(), "old"))
    assert "2048 bits" in message and "at least 3072" in message


def test_it_refuses_rsa_over_16384_bits_as_openssh_does(tmp_path):
    n = (1 << 16400) - 1  # odd, never factored: only its size matters
    line = line_of(b"ssh-rsa", ssh_string(b"ssh-rsa") + mpint(65537) + mpint(n))
    assert "16400 bits" in refused(line) and "at most 16384" in refused(line)
    if SSH_KEYGEN:
        assert ssh_keygen_lf(tmp_path, line).returncode != 0


@pytest.mark.parametrize(
    "line",
    [
        OPENSSH_SK_CERT,
        "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29t",
        "ssh-rsa-cert-v01@openssh.com AAAA",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA",
    ],
)
def test_it_refuses_certificates(line):
    message = refused(line)
    assert "certificate" in message and "plain public key" in message


@pytest.mark.parametrize("word", ["ssh-xmss@openssh.com", "rsa-sha2-512", "ssh-ed448", "hello"])
def test_it_refuses_unknown_key_types_naming_the_type_and_what_is_accepted(word):
    message = refused(f"{word} AAAAC3NzaC1lZDI1NTE5 x")
    assert message.startswith(f"Unknown key type '{word}'")
    assert "ssh-ed25519" in message and "3072" in message


def test_it_does_not_quote_a_type_word_that_could_be_key_material():
    word = "MIIEvgIBADANBgkqhkiG9w0BAQEFAASC"  # mixed case, like a base64 line
    message = refused(f"{word} AAAA")
    assert message.startswith("Unknown key type:") and word not in message
    long_word = "x" * 41
    assert long_word not in refused(f"{long_word} AAAA")


def test_it_says_the_key_type_is_missing_when_the_line_starts_with_key_data():
    line = ed25519_line("me")
    message = refused(line.split(None, 1)[1])
    assert "key type is missing" in message and line.split()[1] not in message


# --- private keys -------------------------------------------------------------------------


def pem_private(private_key, fmt, encryption=None) -> str:
    encryption = encryption or serialization.NoEncryption()
    return private_key.private_bytes(serialization.Encoding.PEM, fmt, encryption).decode()


def private_texts(rsa_keys) -> dict[str, str]:
    ed = ed25519.Ed25519PrivateKey.generate()
    openssh_pem = pem_private(ed, serialization.PrivateFormat.OpenSSH)
    return {
        "openssh": openssh_pem,
        "openssh-body-without-header": "\n".join(openssh_pem.splitlines()[1:-1]),
        "openssh-header-without-dashes": "BEGIN OPENSSH PRIVATE KEY\n"
        + openssh_pem.splitlines()[1],
        "pkcs8": pem_private(ed, serialization.PrivateFormat.PKCS8),
        "pkcs8-encrypted": pem_private(
            ec.generate_private_key(ec.SECP256R1()),
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
        "rsa-traditional": pem_private(
            rsa_keys(3072), serialization.PrivateFormat.TraditionalOpenSSL
        ),
        "putty": (
            "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: me\n"
            "Public-Lines: 2\nAAAAC3NzaC1lZDI1NTE5AAAAIOPuTTYpublicPartOfTheKey0123456789\n"
            "Private-Lines: 1\nAAAAIPuTTYsecretPRIVATEmaterial0123456789abcdefghij\n"
            "Private-MAC: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
        ),
        "ssh2-encrypted": (
            "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\n"
            "P2/56wAAAi4AAAA3aWYtbW9kbnsSSH2secretPRIVATEmaterial0123456789\n"
            "---- END SSH2 ENCRYPTED PRIVATE KEY ----\n"
        ),
    }


def secrets_of(text: str) -> list[str]:
    """Distinctive pieces of a private key text: every long base64 line, and its halves."""
    lines = [line for line in text.splitlines() if len(line) >= 40 and "-" not in line[:5]]
    assert lines
    return [piece for line in lines for piece in (line, line[:20], line[-20:])]


KINDS = [
    "openssh", "openssh-body-without-header", "openssh-header-without-dashes", "pkcs8",
    "pkcs8-encrypted", "rsa-traditional", "putty", "ssh2-encrypted",
]  # fmt: skip


def assert_private_refusal(error: InvalidKey, text: str) -> None:
    assert "PRIVATE key" in error.message and "never be shared" in error.message
    assert ".pub" in error.message and "compromised" in error.message
    shown = f"{error} {error!r} {error.args} {error.__cause__} {error.__context__}"
    for secret in secrets_of(text):
        assert secret not in shown


@pytest.mark.parametrize("kind", KINDS)
def test_it_refuses_a_private_key_without_echoing_any_of_it(rsa_keys, kind):
    text = private_texts(rsa_keys)[kind]
    with pytest.raises(InvalidKey) as info:
        parse_public_key(text)
    assert_private_refusal(info.value, text)


@pytest.mark.parametrize("kind", KINDS)
def test_it_refuses_a_whole_paste_with_a_private_key_in_it_as_one_error(rsa_keys, kind):
    secret = private_texts(rsa_keys)[kind]
    for text in (secret, f"{ed25519_line()}\n{secret}\n{ed25519_line()}\n", f"# keys\n{secret}"):
        results = parse_public_keys(text)
        assert len(results) == 1 and isinstance(results[0], InvalidKey)
        assert not results[0].message.startswith("Line")
        assert_private_refusal(results[0], secret)


def test_it_refuses_a_private_key_even_in_an_oversized_paste(rsa_keys):
    text = private_texts(rsa_keys)["openssh"] + "#" * MAX_INPUT_CHARS
    (error,) = parse_public_keys(text)
    assert "PRIVATE key" in error.message


# --- other formats and options ------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    [
        'restrict,command="/usr/bin/rsync --server" ',
        'from="1.2.3.4" ',
        'command="echo hi" ',
        "no-pty ",
        "restrict ",
        "no-port-forwarding,no-X11-forwarding ",
        'environment="A=b" ',
        'permitopen="host:22" ',
    ],
)
def test_it_refuses_authorized_keys_options_before_the_key_type(prefix, rsa_keys):
    for line in (ed25519_line(), openssh_line(rsa_keys(3072).public_key()), "ssh-dss AAAA"):
        assert "remove the options before the key type" in refused(prefix + line)


def test_it_asks_for_the_openssh_format_for_an_rfc4716_key(tmp_path):
    line = ed25519_line("me")
    if SSH_KEYGEN:
        (tmp_path / "k.pub").write_text(line + "\n")
        block = subprocess.run(
            [SSH_KEYGEN, "-e", "-f", str(tmp_path / "k.pub")],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    else:
        body = line.split()[1]
        block = (
            f'---- BEGIN SSH2 PUBLIC KEY ----\nComment: "me"\n{body[:70]}\n{body[70:]}\n'
            "---- END SSH2 PUBLIC KEY ----\n"
        )
    assert block.startswith("---- BEGIN SSH2 PUBLIC KEY ----")
    assert "ssh-keygen -i -f" in refused(block.splitlines()[0])
    assert "ssh-keygen -i -f" in refused(block)  # the whole block, as the API may get it
    good = ed25519_line("after")
    results = parse_public_keys(f"{ed25519_line('before')}\n{block}{good}\n")
    assert [getattr(r, "comment", None) or r.message[:7] for r in results] == [
        "before", "Line 2:", "after",
    ]  # fmt: skip
    assert "ssh-keygen -i -f" in results[1].message


def test_it_asks_to_convert_a_pem_public_key():
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert "ssh-keygen -i -m PKCS8" in refused(pem.splitlines()[0])
    assert "ssh-keygen -i -m PKCS8" in refused(pem)
    (error,) = parse_public_keys(pem)
    assert error.message.startswith("Line 1:") and "ssh-keygen -i -m PKCS8" in error.message


# --- corrupt key data ---------------------------------------------------------------------


def ed25519_raw(point: bytes) -> bytes:
    return ssh_string(b"ssh-ed25519") + ssh_string(point)


def ecdsa_raw(key_type: bytes, curve: bytes, point: bytes) -> bytes:
    return ssh_string(key_type) + ssh_string(curve) + ssh_string(point)


def p384_point() -> bytes:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


P256 = b"ecdsa-sha2-nistp256"
CORRUPT = {
    "ed25519-31-bytes": (line_of(b"ssh-ed25519", ed25519_raw(b"k" * 31)), "corrupt"),
    "ed25519-33-bytes": (line_of(b"ssh-ed25519", ed25519_raw(b"k" * 33)), "corrupt"),
    "ed25519-trailing-bytes": (
        line_of(b"ssh-ed25519", ed25519_raw(b"k" * 32) + b"\0"),
        "trailing bytes",
    ),
    "ed25519-extra-field": (
        line_of(b"ssh-ed25519", ed25519_raw(b"k" * 32) + ssh_string(b"x")),
        "trailing bytes",
    ),
    "ed25519-no-key": (line_of(b"ssh-ed25519", ssh_string(b"ssh-ed25519")), "truncated"),
    "ed25519-cut-short": (line_of(b"ssh-ed25519", ed25519_raw(b"k" * 32)[:-5]), "truncated"),
    "only-part-of-a-length": (line_of(b"ssh-ed25519", b"\0\0\0"), "truncated"),
    "ecdsa-curve-differs-from-type": (
        line_of(P256, ecdsa_raw(P256, b"nistp384", p384_point())),
        "curve inside the key data does not match ecdsa-sha2-nistp256",
    ),
    "ecdsa-point-of-another-curve": (
        line_of(P256, ecdsa_raw(P256, b"nistp256", p384_point())),
        "corrupt",
    ),
    "ecdsa-point-off-the-curve": (
        line_of(P256, ecdsa_raw(P256, b"nistp256", b"\x04" + b"\x01" * 64)),
        "corrupt",
    ),
    "rsa-even-exponent": (
        line_of(b"ssh-rsa", ssh_string(b"ssh-rsa") + mpint(65536) + mpint((1 << 3072) - 1)),
        "corrupt",
    ),
    "sk-ed25519-trailing-bytes": (sk_ed25519_line(extra=b"\0"), "trailing bytes"),
    "sk-ed25519-short-key": (sk_ed25519_line(point=b"k" * 31), "corrupt"),
    "sk-ed25519-no-application": (
        line_of(SK_ED, ssh_string(SK_ED) + ssh_string(b"k" * 32)),
        "truncated",
    ),
    "sk-ed25519-web-application": (sk_ed25519_line(application=b"https://evil"), "application"),
    "sk-ed25519-nul-in-application": (sk_ed25519_line(application=b"ssh:\0x"), "application"),
    "sk-ecdsa-trailing-bytes": (sk_ecdsa_line(extra=b"\0\0\0\0"), "trailing bytes"),
    "sk-ecdsa-wrong-curve": (sk_ecdsa_line(curve=b"nistp384", point=p384_point()), "curve"),
    "sk-ecdsa-compressed-point": (
        sk_ecdsa_line(point=p256_point(serialization.PublicFormat.CompressedPoint)),
        "corrupt",
    ),
    "sk-ecdsa-bad-point": (sk_ecdsa_line(point=b"\x04" + b"\x02" * 64), "corrupt"),
}


# ssh-keygen reads these two, but cryptography refuses them, and so does the portal.
STRICTER_THAN_OPENSSH = {"rsa-even-exponent", "sk-ed25519-web-application"}


@pytest.mark.parametrize("case", CORRUPT, ids=list(CORRUPT))
def test_it_refuses_corrupt_key_data_that_ssh_keygen_refuses_too(tmp_path, case):
    line, expected = CORRUPT[case]
    assert expected in refused(line)
    if SSH_KEYGEN:
        assert (ssh_keygen_lf(tmp_path, line).returncode == 0) == (case in STRICTER_THAN_OPENSSH)


def test_it_refuses_a_type_word_that_differs_from_the_type_inside_the_key():
    blob = ed25519_line().split()[1]
    message = refused(f"ssh-rsa {blob}")
    assert "not a ssh-rsa key" in message and "ssh-ed25519" in message
    message = refused(f"ecdsa-sha2-nistp384 {ecdsa_line(ec.SECP256R1()).split()[1]}")
    assert "not a ecdsa-sha2-nistp384 key" in message and "ecdsa-sha2-nistp256" in message
    message = refused(f"ssh-ed25519 {base64.b64encode(ssh_string(b'x' * 60)).decode()}")
    assert "not a ssh-ed25519 key" in message and "x" * 41 not in message


@pytest.mark.parametrize(
    "blob",
    ["!!!notbase64", "AAAA C3Nz", "AAAAC3NzaC1lZDI1NTE5AAAAI", "AAAAC3NzaC1lZDI1NTE5é=", "AAB="],
)
def test_it_refuses_invalid_base64(blob):
    assert "not valid base64" in refused(f"ssh-ed25519 {blob}".replace(" C3Nz", "*C3Nz"))


def test_it_refuses_base64_with_non_zero_padding_bits():
    blob = sk_ed25519_line().split()[1]  # 74 bytes: one "=", and 2 spare bits before it
    assert blob.endswith("=") and not blob.endswith("==")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    tampered = blob[:-2] + alphabet[alphabet.index(blob[-2]) ^ 1] + "="
    assert base64.b64decode(tampered) == base64.b64decode(blob)
    assert "not valid base64" in refused(f"{SK_ED.decode()} {tampered}")


def test_it_refuses_a_key_type_with_no_key_data():
    assert "ssh-ed25519 key has no key data" in refused("ssh-ed25519")
    assert "no key data" in refused("  ssh-rsa   ")


@pytest.mark.parametrize("text", ["", "   ", "\n", "\t\r\n"])
def test_it_refuses_empty_input(text):
    assert "Paste a public key" in refused(text)
    (error,) = parse_public_keys(text)
    assert "Paste a public key" in error.message


def test_it_refuses_a_paste_of_only_comments():
    (error,) = parse_public_keys("# my key\n\n   # another\n")
    assert "Paste a public key" in error.message


# --- characters and sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["\x00", "\x1b[31m", "\x07", "\x7f", "\x85", "\u202e", "\u200b", "\u2028", "\x0c", "\ud800"],
    ids=["nul", "escape", "bell", "del", "c1-nel", "bidi", "zero-width", "line-sep", "ff", "surr"],
)
def test_it_refuses_control_and_invisible_characters(bad):
    key_type, blob = ed25519_line("").split()
    for line in (
        f"{key_type} {blob} me{bad}x",
        f"{key_type} {blob}{bad}",
        f"{bad}{key_type} {blob}",
    ):
        assert "control characters" in refused(line)
    (error,) = parse_public_keys(f"{key_type} {blob} me{bad}x")
    assert error.message.startswith("Line 1:")  # not split into two lines


def test_it_refuses_several_lines_given_as_one_key():
    assert "one key only" in refused(f"{ed25519_line()}\n{ed25519_line()}")
    assert "one key only" in refused(f"{ed25519_line()}\r{ed25519_line()}")


def test_it_refuses_an_oversized_line_without_parsing_it(monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("parsed an oversized line")

    monkeypatch.setattr(sshkeys, "load_ssh_public_key", must_not_run)
    monkeypatch.setattr(sshkeys.base64, "b64decode", must_not_run)
    line = "ssh-ed25519 " + "A" * MAX_LINE_CHARS
    message = refused(line)
    assert "longer than 16384" in message and "AAAA" not in message
    (error,) = parse_public_keys(line)
    assert error.message.startswith("Line 1:") and "longer than 16384" in error.message


def test_it_refuses_an_oversized_paste_without_parsing_it(monkeypatch):
    monkeypatch.setattr(sshkeys, "parse_public_key", lambda line: pytest.fail("parsed"))
    text = (ed25519_line() + "\n") * (MAX_INPUT_CHARS // 60)
    assert len(text) > MAX_INPUT_CHARS
    (error,) = parse_public_keys(text)
    assert "longer than 65536" in error.message and "AAAA" not in error.message


def test_it_accepts_a_paste_of_exactly_the_maximum_size():
    line = ed25519_line("")
    text = (line + "\n") * (MAX_INPUT_CHARS // (len(line) + 1))
    text += "#" * (MAX_INPUT_CHARS - len(text))
    assert len(text) == MAX_INPUT_CHARS
    assert all(isinstance(r, PublicKey) for r in parse_public_keys(text))


def test_it_lets_a_line_at_the_maximum_size_reach_the_comment_check():
    line = ed25519_line("")
    line += " " + "c" * (MAX_LINE_CHARS - len(line) - 1)
    assert len(line) == MAX_LINE_CHARS
    assert "comment is longer" in refused(line)


def test_it_never_echoes_more_than_40_characters_of_the_input(rsa_keys):
    token = "Zq" * 30  # 60 distinctive characters
    lines = [
        token,
        f"{token} {token}",
        f"ssh-ed25519 {token}",
        f"ssh-ed25519 {token}!",
        f"ssh-rsa {token}",
        f"ssh-ed25519 {ed25519_line('').split()[1]} {token * 4}",
        f"{token}=1 ssh-ed25519 AAAA",
        f"ssh-ed25519-cert-v01@openssh.com {token}",
        f"ssh-dss {token}",
    ]
    for line in lines:
        for message in (refused(line), parse_public_keys(line)[0].message):
            assert token[:41] not in message and token[-41:] not in message


# --- several keys at once -----------------------------------------------------------------


def test_it_parses_several_keys_with_crlf_line_endings_in_order(rsa_keys, tmp_path):
    lines = [
        "# my keys",
        ed25519_line("one"),
        "",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
        "   ",
        openssh_line(rsa_keys(3072).public_key(), "two"),
        openssh_line(rsa_keys(2048).public_key(), "old"),
        "  # ssh-rsa AAAA commented out",
        "garbage here",
        sk_ed25519_line(comment="three"),
        'from="10.0.0.1" ' + ed25519_line(),
        "ssh-ed25519 AAAA",
        ecdsa_line(ec.SECP384R1(), "four"),
    ]
    results = parse_public_keys("\r\n".join(lines) + "\r\n")
    summary = [r.comment if isinstance(r, PublicKey) else r.message for r in results]
    assert [s if not s.startswith("Line") else s.split(":")[0] for s in summary] == [
        "one", "Line 4", "two", "Line 7", "Line 9", "three", "Line 11", "Line 12", "four",
    ]  # fmt: skip
    assert "DSA keys are insecure" in summary[1]
    assert "2048 bits" in summary[3] and "3072" in summary[3]
    assert "Unknown key type" in summary[4]
    assert "remove the options" in summary[6] and "truncated" in summary[7]
    assert [r.key_type for r in results if isinstance(r, PublicKey)] == [
        "ssh-ed25519", "ssh-rsa", SK_ED.decode(), "ecdsa-sha2-nistp384",
    ]  # fmt: skip


def test_it_numbers_lines_the_same_for_lf_crlf_and_cr_endings():
    text = "# keys\n\nbad line\n" + ed25519_line()
    for ending in ("\n", "\r\n", "\r"):
        results = parse_public_keys(text.replace("\n", ending))
        assert results[0].message.startswith("Line 3: Unknown key type 'bad'")
        assert isinstance(results[1], PublicKey) and results[1].comment == "me@laptop"


def test_it_parses_the_same_key_the_same_way_one_by_one_or_together():
    line = ed25519_line("same")
    assert parse_public_keys(f"{line}\n{line}") == [parse_public_key(line)] * 2


# --- the module ---------------------------------------------------------------------------


def test_it_raises_a_value_error_with_a_message_attribute():
    with pytest.raises(ValueError, match="Paste a public key") as info:
        parse_public_key("")
    assert repr(info.value) == f"InvalidKey({info.value.message!r})"


def test_it_does_not_need_django():
    # Loaded from its file: the portal package itself starts Celery, which is not this test's.
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('sshkeys', {sshkeys.__file__!r}); "
        "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
        "sys.exit(any(m == 'django' or m.startswith('django.') for m in sys.modules))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
