"""DKIM signature verification (RFC 6376) with dkimpy, its DNS answered by our resolver.

`verify_dkim(resolver, message)` returns one `DkimResult` per DKIM-Signature header field, top
to bottom, or a single "none" result when the message has none. Statuses are those of RFC 8601
section 2.7.1:

- "pass" — the signature verified; "fail" — it did not (body hash mismatch, bad signature).
- "permerror" — the signature cannot be evaluated: a malformed or incomplete DKIM-Signature,
  no key at `selector._domainkey.domain` (NXDOMAIN or no TXT, RFC 6376 section 6.1.2), a
  malformed, revoked (empty p=) or too small key.
- "temperror" — the key lookup timed out or failed (SERVFAIL …): never a reason to reject.
- "none" — the message is not signed.

How dkimpy is held (DESIGN.md): the keys are fetched first with `cloudmail.dns.Resolver`
(concurrently, each name once), then dkimpy verifies in a thread (`deferToThread`, since
canonicalising and hashing a large body is CPU work) with a `dnsfunc` that answers only from
those records, so dkimpy never does DNS of its own and never blocks the reactor.
"""

from __future__ import annotations

import binascii
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import dkim
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred

from cloudmail.dns import AsyncResolver, DnsNotFound, DnsTemporaryError

DkimStatus = Literal["pass", "fail", "neutral", "temperror", "permerror", "none"]

MIN_KEY_BITS = 1024
"""RSA keys shorter than this are refused (RFC 8301 section 3.2)."""
MAX_SIGNATURES = 10
"""Signatures evaluated per message; later ones are reported as permerror (not verified)."""

_quiet = logging.getLogger("cloudmail.policy.dkim.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False

_END_OF_HEADER = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class DkimResult:
    """The verdict on one DKIM-Signature: `domain` (d=), `selector` (s=), `identity` (i=, or
    None), `signature_prefix` the first characters of b= (RFC 6008 header.b, to tell signatures
    of one domain apart), `reason` a short human-readable why."""

    status: DkimStatus
    domain: str = ""
    selector: str = ""
    reason: str = ""
    identity: str | None = None
    signature_prefix: str = ""
    algorithm: str = ""


@dataclass(frozen=True)
class _Signature:
    index: int
    domain: str
    selector: str
    identity: str | None
    signature_prefix: str
    algorithm: str
    error: str | None  # a tag-level problem found before any DNS

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def _tag(tags: dict[bytes, bytes], key: bytes) -> str:
    return re.sub(r"\s+", "", tags.get(key, b"").decode("ascii", "replace"))


def _signatures(message: bytes) -> list[_Signature] | str:
    """The DKIM-Signature header fields of `message`, parsed enough to fetch their keys, or a
    string saying why the header could not be parsed."""
    end = _END_OF_HEADER.search(message)
    header = message[:end.end()] if end else message
    try:
        fields, _body = dkim.rfc822_parse(header)
    except dkim.MessageFormatError as e:
        return f"unparseable header: {e}"
    signatures = []
    for index, (name, value) in enumerate(v for v in fields if v[0].lower() == b"dkim-signature"):
        try:
            tags = dkim.util.parse_tag_value(value)
        except dkim.util.InvalidTagValueList as e:
            signatures.append(_Signature(index, "", "", None, "", "", f"malformed tag list: {e}"))
            continue
        domain, selector = _tag(tags, b"d").lower().rstrip("."), _tag(tags, b"s")
        error = None
        if not domain or not selector:
            error = "signature without d= or s="
        signatures.append(_Signature(index, domain, selector,
                                     _tag(tags, b"i") if b"i" in tags else None,
                                     _tag(tags, b"b")[:8], _tag(tags, b"a").lower(), error))
    return signatures


def _verify_in_thread(message: bytes, index: int, key: bytes) -> tuple[DkimStatus, str]:
    """Verify signature `index` of `message` with `key` (the TXT record text) — blocking."""
    verifier = dkim.DKIM(message, logger=_quiet, minkey=MIN_KEY_BITS)
    try:
        prepared = verifier.verify_headerprep(index)
        if not prepared:
            return "permerror", "signature not found"
        sig, include_headers, sigheaders = prepared
        verifier.pk, verifier.keysize, verifier.ktag, verifier.seqtlsrpt = dkim.evaluate_pk(
            b"key", key)
        ok = verifier.verify_sig_process(sig, include_headers, sigheaders[index], None)
    except dkim.ValidationError as e:
        if "body hash mismatch" in str(e):
            return "fail", "body hash mismatch"
        return "permerror", f"invalid signature: {e}"
    except (dkim.KeyFormatError, binascii.Error) as e:
        return "permerror", f"unusable key: {e}"
    except (dkim.DKIMException, ValueError, TypeError) as e:
        return "permerror", f"{type(e).__name__}: {e}"
    if ok:
        return "pass", "signature verified"
    return "fail", "signature did not verify"


async def _fetch_key(resolver: AsyncResolver, name: str) -> tuple[DkimStatus | None, str]:
    """(None, key text) for a usable key record, or (status, reason) when there is none."""
    try:
        records = await resolver.txt(name)
    except DnsNotFound:
        return "permerror", f"no key at {name} (NXDOMAIN)"
    except DnsTemporaryError as e:
        return "temperror", f"key lookup failed: {e.reason}"
    keys = [r for r in records if "p=" in r]
    if not keys:
        return "permerror", f"no key record at {name}"
    if len(keys) > 1:
        return "permerror", f"{len(keys)} key records at {name}"
    return None, keys[0]


async def verify_dkim(resolver: AsyncResolver, message: bytes, *,
                      run_in_thread: Callable[..., Deferred] = threads.deferToThread,
                      ) -> list[DkimResult]:
    """Verify every DKIM-Signature of `message` (RFC 6376 section 6). One result per signature,
    top to bottom; `[DkimResult("none")]` for an unsigned message. DNS trouble is a
    "temperror" result, never an exception. `run_in_thread(fn, *args)` runs the blocking
    verification (default: the reactor's thread pool; pass e.g.
    `lambda fn, *a: pools.run("io", fn, *a)` for a named pool of `cloudmail.threads`)."""
    signatures = _signatures(message)
    if isinstance(signatures, str):
        return [DkimResult("permerror", reason=signatures)]
    if not signatures:
        return [DkimResult("none", reason="message not signed")]
    names = sorted({s.key_name for s in signatures[:MAX_SIGNATURES] if s.error is None})
    fetched = await defer.gatherResults(
        [defer.ensureDeferred(_fetch_key(resolver, name)) for name in names], consumeErrors=True)
    keys = dict(zip(names, fetched))
    results = []
    for signature in signatures:
        def result(status: DkimStatus, reason: str, s: _Signature = signature) -> DkimResult:
            return DkimResult(status, s.domain, s.selector, reason, s.identity,
                              s.signature_prefix, s.algorithm)

        if signature.index >= MAX_SIGNATURES:
            results.append(result("permerror", f"more than {MAX_SIGNATURES} signatures"))
        elif signature.error is not None:
            results.append(result("permerror", signature.error))
        else:
            problem, key = keys[signature.key_name]
            if problem is not None:
                results.append(result(problem, key))
            else:
                status, reason = await run_in_thread(
                    _verify_in_thread, message, signature.index, key.encode("ascii", "replace"))
                results.append(result(status, reason))
    return results
