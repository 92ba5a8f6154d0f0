"""Every case of the SSH public key rules, on real keys."""

import base64
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from portal.accounts.sshkeys import (
    MAX_INPUT_CHARS,
    InvalidKey,
    parse_public_key,
    parse_public_keys,
)
from tests.keys import ed25519_line, private_pem, rsa_line


def ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def ecdsa_line(curve, name):
    key = ec.generate_private_key(curve).public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def sk_ed25519_line(application=b"ssh:", extra=b""):
    point = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    t = b"sk-ssh-ed25519@openssh.com"
    raw = ssh_string(t) + ssh_string(point) + ssh_string(application) + extra
    return f"{t.decode()} {base64.b64encode(raw).decode()} yubikey"


def sk_ecdsa_line():
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    t = b"sk-ecdsa-sha2-nistp256@openssh.com"
    raw = ssh_string(t) + ssh_string(b"nistp256") + ssh_string(point) + ssh_string(b"ssh:")
    return f"{t.decode()} {base64.b64encode(raw).decode()}"


def keygen_fingerprint(tmp_path, line):
    path = tmp_path / "k.pub"
    path.write_text(line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True
    )
    bits, fingerprint = out.stdout.split()[:2]
    return int(bits), fingerprint


@pytest.mark.parametrize(
    ("make", "key_type", "bits"),
    [
        (lambda: ed25519_line("a b c"), "ssh-ed25519", 256),
        (lambda: ecdsa_line(ec.SECP256R1(), "nistp256"), "ecdsa-sha2-nistp256", 256),
        (lambda: ecdsa_line(ec.SECP384R1(), "nistp384"), "ecdsa-sha2-nistp384", 384),
        (lambda: ecdsa_line(ec.SECP521R1(), "nistp521"), "ecdsa-sha2-nistp521", 521),
        (lambda: rsa_line(3072), "ssh-rsa", 3072),
        (lambda: rsa_line(4096), "ssh-rsa", 4096),
        (sk_ed25519_line, "sk-ssh-ed25519@openssh.com", 256),
        (sk_ecdsa_line, "sk-ecdsa-sha2-nistp256@openssh.com", 256),
    ],
)
def test_it_accepts_modern_keys_with_ssh_keygens_fingerprint(tmp_path, make, key_type, bits):
    line = make()
    key = parse_public_key(line)
    assert (key.key_type, key.bits) == (key_type, bits)
    assert key.openssh() == " ".join(line.split()[:2])
    assert (key.bits, key.fingerprint) == keygen_fingerprint(tmp_path, line)


def test_it_keeps_a_comment_with_spaces():
    assert parse_public_key(ed25519_line("Alice Doe <alice@debian.org>")).comment == (
        "Alice Doe <alice@debian.org>"
    )


def test_it_refuses_dsa(tmp_path):
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "dsa", "-N", "", "-f", str(tmp_path / "d")], check=True
    )
    with pytest.raises(InvalidKey, match="DSA keys are insecure"):
        parse_public_key((tmp_path / "d.pub").read_text())


def test_it_refuses_short_rsa_saying_the_size():
    with pytest.raises(InvalidKey, match="2048 bits; at least 3072"):
        parse_public_key(rsa_line(2048))


def test_it_refuses_a_private_key_without_echoing_it():
    pem = private_pem()
    secret = pem.splitlines()[2]
    for text in (pem, ed25519_line() + "\n" + pem):
        results = parse_public_keys(text)
        assert len(results) == 1 and isinstance(results[0], InvalidKey)
        assert "PRIVATE key" in results[0].message
        assert secret not in str(results[0]) and secret not in repr(results[0])


def test_it_refuses_putty_private_keys():
    with pytest.raises(InvalidKey, match="PRIVATE key"):
        parse_public_key("PuTTY-User-Key-File-3: ssh-ed25519")


@pytest.mark.parametrize("prefix", ['restrict,command="/bin/sh" ', 'from="10.0.0.1" ', "no-pty "])
def test_it_refuses_authorized_keys_options(prefix):
    with pytest.raises(InvalidKey, match="remove the options"):
        parse_public_key(prefix + ed25519_line())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello world", "Unknown key type 'hello'"),
        ("ssh-ed25519", "no key data"),
        ("ssh-ed25519 !!!notbase64", "not valid base64"),
        ("ssh-ed25519 AAAA", "truncated"),
        ("ssh-rsa " + ed25519_line().split()[1], "not a ssh-rsa key"),
        (
            "ssh-ed25519 "
            + base64.b64encode(ssh_string(b"ssh-ed25519") + ssh_string(b"x")).decode(),
            "corrupt",
        ),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", "certificate"),
        ("---- BEGIN SSH2 PUBLIC KEY ----", "ssh-keygen -i"),
        ("ssh-ed25519 AAAA\x00", "control characters"),
        ("", "Paste a public key"),
    ],
)
def test_it_refuses_garbage_with_a_clear_message(text, message):
    with pytest.raises(InvalidKey, match=message):
        parse_public_key(text)


def test_it_refuses_bad_security_key_blobs():
    with pytest.raises(InvalidKey, match="trailing bytes"):
        parse_public_key(sk_ed25519_line(extra=b"\x00"))
    with pytest.raises(InvalidKey, match="application"):
        parse_public_key(sk_ed25519_line(application=b"https://evil"))


def test_it_refuses_oversized_input_without_parsing_it():
    results = parse_public_keys("ssh-ed25519 " + "A" * MAX_INPUT_CHARS)
    assert len(results) == 1 and "longer than" in results[0].message
    with pytest.raises(InvalidKey, match="longer than"):
        parse_public_key("ssh-ed25519 " + "A" * 20_000)


def test_it_handles_several_keys_one_by_one():
    good1, good2 = ed25519_line("one"), ed25519_line("two")
    text = f"# my keys\r\n{good1}\r\n\r\nssh-dss AAAA\r\n{good2}\r\n{rsa_line(1024)}\r\n"
    results = parse_public_keys(text)
    assert [r.comment if not isinstance(r, InvalidKey) else r.message[:7] for r in results] == [
        "one",
        "Line 4:",
        "two",
        "Line 6:",
    ]
