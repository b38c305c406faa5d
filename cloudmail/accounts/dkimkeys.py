"""DKIM signing keys of the domains: made when a domain is added, published as a TXT record.

RSA 2048 is what every receiver verifies (RFC 8301 requires at least 1024; Ed25519 keys of
RFC 8463 are accepted too when an operator sets one). Key generation is CPU work: run it in the
`auth` thread pool.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


class DkimKeyError(ValueError):
    """The text is not a usable DKIM private key."""


def generate_private_key() -> str:
    """A new RSA 2048 private key as PKCS#8 PEM text."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def generate_ed25519_private_key() -> str:
    """A new Ed25519 private key (RFC 8463) as PKCS#8 PEM text."""
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def algorithm(pem: str) -> str:
    """"rsa" or "ed25519": the kind of DKIM key this PEM text holds."""
    return "ed25519" if isinstance(load_private_key(pem), ed25519.Ed25519PrivateKey) else "rsa"


def load_private_key(pem: str) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """Parse a PEM private key that DKIM can sign with (RSA of 1024+ bits, or Ed25519)."""
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise DkimKeyError(f"not an unencrypted PEM private key ({e})")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise DkimKeyError(f"an RSA key of {key.key_size} bits is too small (1024 at least)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise DkimKeyError("DKIM keys are RSA or Ed25519")


def dns_record(pem: str) -> str:
    """The TXT record value to publish at `selector._domainkey.domain` for this key."""
    key = load_private_key(pem)
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
