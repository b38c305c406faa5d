"""Our DKIM signer against dkimpy's verifier: every signature it makes verifies, RSA and
Ed25519, whatever the header folding, spacing and trailing blank lines; and what is signed is
protected."""

from __future__ import annotations

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloudmail.accounts import dkimkeys
from cloudmail.smtp.dkimsign import simple_body_hash
from cloudmail.smtp.sending import SIGNED_HEADERS, sign

RSA = dkimkeys.generate_private_key()
ED = ed25519.Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption()).decode()
RECORDS = {b"rsa._domainkey.example.com.": dkimkeys.dns_record(RSA).encode(),
           b"ed._domainkey.example.com.": dkimkeys.dns_record(ED).encode()}
MESSAGES = [
    b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nHello.\r\n",
    b"From:   Alice  <a@example.com>  \r\nSubject: folded\r\n\tover  two\r\n   lines \r\n"
    b"TO: b@example.net\r\n\r\nBody\r\n\r\n\r\n",
    b"From: a@example.com\r\nSubject: empty body\r\n\r\n",
    b"From: a@example.com\r\nSubject: no body at all\r\n",
    b"From: a@example.com\r\nSubject: no final CRLF\r\n\r\nlast line",
    "From: a@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nSubject: second\r\n\r\n"
    "8-bit body: café\r\n".encode(),
    b"From: a@example.com\r\nX-Long: " + b"x" * 900 + b"\r\n\r\n" + b"line\r\n" * 10000,
]


def verify(message: bytes) -> list[bool]:
    """dkimpy's verdict on each signature (a body hash mismatch counts as False)."""
    verifier = dkim.DKIM(message)

    def one(i: int) -> bool:
        try:
            return verifier.verify(idx=i, dnsfunc=lambda name, timeout=5: RECORDS[name])
        except dkim.ValidationError:
            return False
    return [one(i) for i in range(message.count(b"DKIM-Signature:"))]


@pytest.mark.parametrize("message", MESSAGES)
def test_rsa_and_ed25519_signatures_verify_with_dkimpy(message):
    """Both signatures of every message verify."""
    assert verify(sign(message, "example.com", [("rsa", RSA), ("ed", ED)])) == [True, True]


def test_signed_fields_and_body_are_protected_but_refolding_is_not_a_change():
    """Changing a signed field or the body breaks the signature; refolding or respacing a
    signed field (relaxed header canonicalisation) and adding blank lines at the end of the
    body (simple body canonicalisation) do not."""
    signed = sign(MESSAGES[0], "example.com", [("rsa", RSA)])
    assert verify(signed.replace(b"Subject: hi", b"Subject:   hi  \r\n ")) == [True]
    assert verify(signed + b"\r\n\r\n") == [True]
    assert verify(signed.replace(b"Subject: hi", b"Subject: ho")) == [False]
    assert verify(signed.replace(b"Hello.", b"Hello!")) == [False]


def test_only_present_fields_are_listed_and_the_body_hash_is_rfc_6376():
    """h= names the signed fields that exist; the body hash of an empty body is that of one
    CRLF (RFC 6376 3.4.3)."""
    signed = sign(MESSAGES[0], "example.com", [("rsa", RSA)])
    assert b"h=from:to:subject;" in signed
    assert set(SIGNED_HEADERS) >= {b"from", b"to", b"subject"}
    assert simple_body_hash(b"") == simple_body_hash(b"\r\n\r\n") == \
        b"frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY="
