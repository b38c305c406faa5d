"""The Sender Rewriting Scheme: the envelope sender of mail we forward (a Sieve `redirect`) is
rewritten into one of our own addresses, so that the receiver's SPF check of the forward passes,
and a bounce to it finds its way back to the original sender.

The format is the one of libsrs2 and postsrsd, so addresses made elsewhere are understood:

- `SRS0=HHHH=TT=orig.domain=orig-local@our.domain` for a plain address, where TT is the day
  (days since 1970, mod 1024, two base32 letters) and HHHH the first four base64 characters of
  HMAC-SHA1(secret, TT + orig.domain + orig-local) over the lower-cased text;
- `SRS1=HHHH=first.forwarder==HHHH=TT=orig.domain=orig-local@our.domain` when the address is
  an SRS0 address of another forwarder already (the chain stays one level deep).

`reverse` accepts an address only when its hash is right and its day at most `MAX_AGE_DAYS`
old, so nobody can use the reverse path as an open relay.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time
from collections.abc import Callable

BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
TIME_SLOTS = 1024
MAX_AGE_DAYS = 21
HASH_LENGTH = 4
SEPARATORS = "=+-"


class SrsError(ValueError):
    """The address is not a valid SRS address of ours (bad hash, too old, malformed)."""


class Srs:
    """Rewriting for `domain` (ours) with `secret` (kept, mode 0600, in the data folder)."""

    def __init__(self, secret: bytes | Callable[[], bytes], domain: str) -> None:
        self._secret_source = secret
        self.domain = domain

    @functools.cached_property
    def _secret(self) -> bytes:
        """The secret, read (or made) on first use, not at start-up (before privileges drop)."""
        source = self._secret_source
        return source if isinstance(source, bytes) else source()

    def forward(self, address: str, now: float | None = None) -> str:
        """The address to use as the envelope sender when forwarding mail from `address`.
        The null sender and addresses in our domain stay as they are."""
        local, at, domain = address.rpartition("@")
        if not at or not local or domain.lower() == self.domain:
            return address
        head = local[:5].upper()
        if head in ("SRS0=", "SRS0+", "SRS0-", "SRS1=", "SRS1+", "SRS1-"):
            return self._forward_srs(local, domain)
        stamp = _timestamp(time.time() if now is None else now)
        return f"SRS0={self._hash(stamp, domain, local)}={stamp}={domain}={local}@{self.domain}"

    def _forward_srs(self, local: str, domain: str) -> str:
        """An SRS address of another forwarder becomes SRS1 (as libsrs2 does): the first
        forwarder's domain and its SRS0 part are kept, under a hash of ours."""
        if local[:4].upper() == "SRS1":
            first, _, rest = local[5:].partition("=")[2].partition("==")
        else:
            first, rest = domain, local[5:]
        return f"SRS1={self._hash(first, rest)}={first}=={rest}@{self.domain}"

    def reverse(self, address: str, now: float | None = None) -> str:
        """The original address behind an SRS address of ours; raises SrsError when it is
        not one (or is forged, or too old)."""
        local, at, domain = address.rpartition("@")
        if not at or domain.lower() != self.domain:
            raise SrsError(f"{address} is not an address of {self.domain}")
        kind, body = local[:4].upper(), local[5:]
        if kind == "SRS0" and local[4:5] in SEPARATORS:
            parts = body.split("=", 3)
            if len(parts) != 4 or not all(parts):
                raise SrsError(f"{address} is not an SRS0 address")
            given, stamp, orig_domain, orig_local = parts
            if not hmac.compare_digest(given.lower(),
                                       self._hash(stamp, orig_domain, orig_local).lower()):
                raise SrsError(f"{address}: wrong hash")
            if _age_days(stamp, time.time() if now is None else now) > MAX_AGE_DAYS:
                raise SrsError(f"{address}: too old")
            return f"{orig_local}@{orig_domain}"
        if kind == "SRS1" and local[4:5] in SEPARATORS:
            given, _, rest = body.partition("=")
            first, separator, srs0 = rest.partition("==")
            if not (given and first and separator and srs0):
                raise SrsError(f"{address} is not an SRS1 address")
            if not hmac.compare_digest(given.lower(), self._hash(first, srs0).lower()):
                raise SrsError(f"{address}: wrong hash")
            return f"SRS0={srs0}@{first}"
        raise SrsError(f"{address} is not an SRS address")

    def _hash(self, *parts: str) -> str:
        digest = hmac.new(self._secret, "".join(parts).lower().encode("utf-8"),
                          hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[:HASH_LENGTH]


def _timestamp(now: float) -> str:
    day = int(now // 86400) % TIME_SLOTS
    return BASE32[day >> 5] + BASE32[day & 31]


def _age_days(stamp: str, now: float) -> int:
    """Days since the stamp was made (stamps wrap every 1024 days); a malformed one is old."""
    stamp = stamp.upper()
    if len(stamp) != 2 or any(c not in BASE32 for c in stamp):
        return TIME_SLOTS
    then = BASE32.index(stamp[0]) << 5 | BASE32.index(stamp[1])
    return (int(now // 86400) - then) % TIME_SLOTS
