"""SPF, DKIM and DMARC at the MX listener, against a real DNS server on loopback and smtplib."""

from __future__ import annotations

import base64
import smtplib

import dkim
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.threads import deferToThread

from tests.integration.conftest import dns_table
from tests.integration.test_smtp_inbound import book, inbox

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY_PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
PUBLIC = base64.b64encode(KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()

ZONES = {
    "signed.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "sel._domainkey.signed.test": {"TXT": [f"v=DKIM1; k=rsa; p={PUBLIC}"]},
    "_dmarc.signed.test": {"TXT": ["v=DMARC1; p=reject"]},
    "strict.test": {"TXT": ["v=spf1 -all"]},
    "_dmarc.strict.test": {"TXT": ["v=DMARC1; p=reject"]},
    "careful.test": {"TXT": ["v=spf1 -all"]},
    "_dmarc.careful.test": {"TXT": ["v=DMARC1; p=quarantine"]},
}


def message(author: str, *, sign: bool = False, extra: bytes = b"") -> bytes:
    text = (extra + f"From: {author}\r\nTo: alice@example.com\r\nSubject: test\r\n"
            "Message-ID: <1@test>\r\n\r\nHello.\r\n".encode())
    if sign:
        text = dkim.sign(text, b"sel", b"signed.test", KEY_PEM,
                         include_headers=[b"from", b"to", b"subject"]) + text
    return text


def send(port: int, sender: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.remote.test")
        client.sendmail(sender, ["alice@example.com"], data)


async def mx(start_mx, dns_server):
    server = dns_server(ZONES)
    container, port = start_mx(dns=dns_table(server), smtp={"authenticate": True})
    await book(container)
    return container, port


@pytest_twisted.ensureDeferred
async def test_a_signed_aligned_message_passes_and_says_so(start_mx, dns_server):
    """SPF pass, DKIM pass and DMARC pass are recorded in our Authentication-Results header."""
    container, port = await mx(start_mx, dns_server)
    await deferToThread(send, port, "bounce@signed.test", message("a@signed.test", sign=True))
    [stored] = inbox(container, "alice")
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert b"Authentication-Results: mail.example.test;" in head
    assert b"spf=pass" in head and b"dkim=pass" in head and b"dmarc=pass" in head


@pytest_twisted.ensureDeferred
async def test_dmarc_reject_is_refused_at_end_of_data(start_mx, dns_server):
    """A From: domain whose DMARC says reject, with SPF failing and no signature: 550 5.7.1."""
    container, port = await mx(start_mx, dns_server)
    with pytest.raises(smtplib.SMTPDataError) as info:
        await deferToThread(send, port, "x@strict.test", message("a@strict.test"))
    assert info.value.smtp_code == 550 and info.value.smtp_error.startswith(b"5.7.1")
    assert b"strict.test" in info.value.smtp_error
    assert inbox(container, "alice") == []


@pytest_twisted.ensureDeferred
async def test_dmarc_quarantine_goes_to_spam(start_mx, dns_server):
    """A DMARC quarantine failure is accepted into the Spam folder, not the inbox."""
    container, port = await mx(start_mx, dns_server)
    await deferToThread(send, port, "x@careful.test", message("a@careful.test"))
    assert inbox(container, "alice") == []
    spam = container.config.server.data_dir / "mail" / "example.com" / "alice" / ".Spam" / "new"
    [stored] = [p.read_bytes() for p in spam.iterdir()]
    assert b"dmarc=fail" in stored


@pytest_twisted.ensureDeferred
async def test_forged_results_claiming_our_name_are_removed(start_mx, dns_server):
    """An incoming Authentication-Results with our hostname is dropped; others are kept."""
    container, port = await mx(start_mx, dns_server)
    forged = (b"Authentication-Results: MAIL.example.test; dmarc=pass\r\n"
              b"Authentication-Results: other.example; spf=pass\r\n")
    await deferToThread(send, port, "bounce@signed.test",
                        message("a@signed.test", sign=True, extra=forged))
    [stored] = inbox(container, "alice")
    assert b"MAIL.example.test; dmarc=pass" not in stored
    assert b"Authentication-Results: other.example; spf=pass" in stored
    assert stored.count(b"Authentication-Results: mail.example.test;") == 1
