"""DKIM verification (RFC 6376) with keys published on a loopback DNS server.

Messages are signed with dkimpy (`dkim.sign`) using RSA keys generated here; the public keys
are TXT records at `selector._domainkey.domain` served by `tests.dnsserver.DnsServer`.
"""

from __future__ import annotations

import base64

import dkim
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet import threads

from cloudmail.policy.dkim import verify_dkim
from tests.dnsserver import SERVFAIL, TIMEOUT, resolver_for


def _keypair(bits: int = 1024) -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()


def _ed25519_keypair() -> tuple[bytes, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    return base64.b64encode(seed), "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode()


KEY, KEY_TXT = _keypair()
ED_KEY, ED_TXT = _ed25519_keypair()
OTHER_KEY, OTHER_TXT = _keypair()

ZONES = {
    "sel._domainkey.signer.test": {"TXT": KEY_TXT},
    "sel2._domainkey.other.test": {"TXT": OTHER_TXT},
    "ed._domainkey.signer.test": {"TXT": ED_TXT},
    "wrong._domainkey.signer.test": {"TXT": OTHER_TXT},
    "revoked._domainkey.signer.test": {"TXT": "v=DKIM1; k=rsa; p="},
    "garbage._domainkey.signer.test": {"TXT": "v=DKIM1; k=rsa; p=!!notbase64!!"},
    "slow._domainkey.signer.test": TIMEOUT,
    "broken._domainkey.signer.test": SERVFAIL,
}

MESSAGE = (b"From: Alice <alice@signer.test>\r\n"
           b"To: bob@example.test\r\n"
           b"Subject: hello\r\n"
           b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <1@signer.test>\r\n"
           b"\r\n"
           b"Hello Bob,\r\nthis is signed.\r\n")


def sign(message: bytes, selector: bytes = b"sel", domain: bytes = b"signer.test",
         key: bytes = KEY) -> bytes:
    return dkim.sign(message, selector, domain, key,
                     include_headers=[b"from", b"to", b"subject", b"date"]) + message


@pytest.fixture(scope="module")
def resolver():
    """A resolver (0.5 s per query) pointed at a loopback server with the DKIM keys."""
    yield from resolver_for(ZONES)


@pytest_twisted.ensureDeferred
async def test_valid_signature_passes(resolver):
    """A message signed with the published key passes, reporting d=, s= and the b= prefix."""
    signed = sign(MESSAGE)
    (result,) = await verify_dkim(resolver, signed)
    assert (result.status, result.domain, result.selector, result.algorithm) == (
        "pass", "signer.test", "sel", "rsa-sha256")
    assert len(result.signature_prefix) == 8
    assert result.signature_prefix in signed.replace(b"\r\n", b"").replace(b" ", b"").decode()


@pytest_twisted.ensureDeferred
async def test_ed25519_signature(resolver):
    """An Ed25519 signature (RFC 8463) verifies; a changed body fails it."""
    signed = dkim.sign(MESSAGE, b"ed", b"signer.test", ED_KEY,
                       signature_algorithm=b"ed25519-sha256") + MESSAGE
    (result,) = await verify_dkim(resolver, signed)
    assert (result.status, result.algorithm) == ("pass", "ed25519-sha256")
    (result,) = await verify_dkim(resolver, signed.replace(b"this is signed", b"forged"))
    assert result.status == "fail"


@pytest_twisted.ensureDeferred
async def test_changed_body_fails(resolver):
    """A body changed after signing fails with a body hash mismatch."""
    signed = sign(MESSAGE).replace(b"this is signed", b"this is forged")
    (result,) = await verify_dkim(resolver, signed)
    assert (result.status, result.reason) == ("fail", "body hash mismatch")


@pytest_twisted.ensureDeferred
async def test_changed_signed_header_fails(resolver):
    """A signed header field changed after signing fails the signature check."""
    signed = sign(MESSAGE).replace(b"Subject: hello", b"Subject: pay now")
    (result,) = await verify_dkim(resolver, signed)
    assert result.status == "fail"


@pytest_twisted.ensureDeferred
async def test_wrong_key_fails(resolver):
    """A signature checked against another key (the selector's key changed) fails."""
    (result,) = await verify_dkim(resolver, sign(MESSAGE, selector=b"wrong"))
    assert result.status == "fail"


@pytest_twisted.ensureDeferred
async def test_missing_key_is_permerror(resolver):
    """No key record at the selector (NXDOMAIN) is a permerror (RFC 6376 section 6.1.2)."""
    (result,) = await verify_dkim(resolver, sign(MESSAGE, selector=b"gone"))
    assert (result.status, result.selector) == ("permerror", "gone")
    assert "no key" in result.reason


@pytest_twisted.ensureDeferred
async def test_revoked_or_malformed_key_is_permerror(resolver):
    """An empty p= (revoked key) or a key that is not base64 is a permerror."""
    for selector in (b"revoked", b"garbage"):
        (result,) = await verify_dkim(resolver, sign(MESSAGE, selector=selector))
        assert result.status == "permerror", selector


@pytest_twisted.ensureDeferred
async def test_key_timeout_or_servfail_is_temperror(resolver):
    """A key lookup that times out or gets SERVFAIL is a temperror."""
    for selector in (b"slow", b"broken"):
        (result,) = await verify_dkim(resolver, sign(MESSAGE, selector=selector))
        assert result.status == "temperror", selector


@pytest_twisted.ensureDeferred
async def test_unsigned_message_is_none(resolver):
    """A message without DKIM-Signature gives a single "none" result."""
    (result,) = await verify_dkim(resolver, MESSAGE)
    assert result.status == "none"


@pytest_twisted.ensureDeferred
async def test_malformed_signature_is_permerror(resolver):
    """A DKIM-Signature missing required tags is a permerror, with no key lookup needed."""
    message = b"DKIM-Signature: v=1; a=rsa-sha256; d=signer.test\r\n" + MESSAGE
    (result,) = await verify_dkim(resolver, message)
    assert result.status == "permerror"


@pytest_twisted.ensureDeferred
async def test_one_result_per_signature(resolver):
    """Two signatures (an author domain and a third party) give two results, top first; a
    bad one does not spoil the good one."""
    message = sign(sign(MESSAGE), selector=b"sel2", domain=b"other.test", key=OTHER_KEY)
    results = await verify_dkim(resolver, message)
    assert [(r.status, r.domain) for r in results] == [("pass", "other.test"),
                                                       ("pass", "signer.test")]
    message = sign(sign(MESSAGE), selector=b"gone", domain=b"other.test", key=OTHER_KEY)
    results = await verify_dkim(resolver, message)
    assert [(r.status, r.domain) for r in results] == [("permerror", "other.test"),
                                                       ("pass", "signer.test")]


@pytest_twisted.ensureDeferred
async def test_lf_line_endings(resolver):
    """A message stored with LF line endings verifies as the CRLF one it was signed as."""
    signed = sign(MESSAGE).replace(b"\r\n", b"\n")
    (result,) = await verify_dkim(resolver, signed)
    assert result.status == "pass"


@pytest_twisted.ensureDeferred
async def test_verification_runs_in_the_given_thread_runner(resolver):
    """The blocking verification goes through `run_in_thread` (e.g. a named pool), once per
    signature with a key; the key lookup itself stays on the reactor."""
    calls = []

    def runner(fn, *args):
        calls.append(fn.__name__)
        return threads.deferToThread(fn, *args)

    (result,) = await verify_dkim(resolver, sign(MESSAGE), run_in_thread=runner)
    assert result.status == "pass"
    assert calls == ["_verify_in_thread"]
    await verify_dkim(resolver, sign(MESSAGE, selector=b"gone"), run_in_thread=runner)
    assert calls == ["_verify_in_thread"]
