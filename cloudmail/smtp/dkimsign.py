"""DKIM signatures (RFC 6376) on the mail we send, made with `cryptography`.

Why not dkimpy's `sign`: it signs RSA with its own pure-Python arithmetic (about 8 ms a
message) and re-parses and re-validates the PEM key every time (about 37 ms with cryptography's
RSA key check), both holding the GIL: together they capped sending at about 20 messages a second
on two cores. Here a key is parsed once (it was validated when it was stored) and signing is
OpenSSL's (0.3 ms). dkimpy still verifies what we receive, and the tests check with it that
every signature made here verifies.

Canonicalisation is relaxed for the header and simple for the body (RFC 6376 3.4), the common
choice: header fields survive refolding, the body is signed as sent. Ed25519 signatures follow
RFC 8463: the SHA-256 hash of the signed data is signed with PureEdDSA.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

_WSP_RUN = re.compile(rb"[ \t]+")
_FOLD = re.compile(rb"\r\n(?=[ \t])")
CRLF = b"\r\n"

SigningKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@functools.lru_cache(maxsize=256)
def signing_key(pem: str) -> SigningKey:
    """The key in `pem`, parsed once. Only keys validated when stored reach here (the admin
    service checks every key it takes), so the RSA consistency check is not repeated."""
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None,
                                             unsafe_skip_rsa_key_validation=True)
    if not isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ValueError("DKIM keys are RSA or Ed25519")
    return key


def header_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a header section as (lower-case name, the field as written, folding
    included, without its final CRLF)."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(CRLF):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + CRLF + line)
        elif b":" in line:
            fields.append((line.split(b":", 1)[0].strip(b" \t").lower(), line))
    return fields


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 3.4.2: name in lower case, unfolded, runs of WSP as one space, none around the
    colon or at the end; CRLF-terminated."""
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", _FOLD.sub(b"", value)).strip(b" ")
    return name.strip(b" \t").lower() + b":" + value + CRLF


def simple_body_hash(body: bytes) -> bytes:
    """RFC 6376 3.4.3 and 3.7: SHA-256 of the body with its trailing empty lines reduced to one
    CRLF (an empty body is one CRLF), base64."""
    end = len(body)
    while end >= 2 and body[end - 2:end] == CRLF:
        end -= 2
    digest = hashlib.sha256(memoryview(body)[:end])
    digest.update(CRLF)
    return base64.b64encode(digest.digest())


def sign(message: bytes, domain: str, selector: str, pem: str, include: list[bytes],
         now: float | None = None) -> bytes:
    """The `DKIM-Signature:` field (CRLF-terminated) for `message` (CRLF line ends), signing
    the last occurrence of each present header field named in `include` (lower case)."""
    key = signing_key(pem)
    head, separator, body = message.partition(b"\r\n\r\n")
    if not separator:
        head, body = message.removesuffix(CRLF), b""
    latest = dict(header_fields(head))
    names = [name for name in include if name in latest]
    algorithm = "ed25519-sha256" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa-sha256"
    stamp = int(time.time() if now is None else now)
    unsigned = (f"DKIM-Signature: v=1; a={algorithm}; c=relaxed/simple; d={domain}; "
                f"s={selector}; t={stamp};\r\n\th={':'.join(n.decode() for n in names)};\r\n"
                f"\tbh={simple_body_hash(body).decode()};\r\n\tb=").encode("ascii")
    data = b"".join(relaxed_header(latest[name]) for name in names)
    data += relaxed_header(unsigned).removesuffix(CRLF)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(hashlib.sha256(data).digest())
    else:
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return unsigned + base64.b64encode(signature) + CRLF
