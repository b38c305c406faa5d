"""Evidence first, then one decision: what to do with a received message.

`gather_message_evidence` runs SPF, DKIM and DMARC (each a pure check over our resolver) and
`analyze` turns the evidence into one verdict, as mox does: deliver, deliver as junk (the Spam
folder, for a DMARC `quarantine` failure), or reject (`550 5.7.1` for a DMARC `reject` failure,
RFC 7489 section 6.6.4). A DNS problem never rejects mail: temporary errors only ever deliver.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any, Callable

from twisted.internet.defer import Deferred

from cloudmail.address import AddressError, normalize_domain
from cloudmail.dns import AsyncResolver
from cloudmail.policy.dkim import DkimResult, verify_dkim
from cloudmail.policy.dmarc import DmarcResult, check_dmarc
from cloudmail.policy.spf import SpfResult, check_spf

@dataclass(frozen=True)
class MessageEvidence:
    """What the checks found: the From: domain (None if there is not exactly one) and results."""

    from_domain: str | None
    spf: SpfResult | None
    dkim: tuple[DkimResult, ...]
    dmarc: DmarcResult | None

    def summary(self) -> str:
        """The results in one short text for the log: `spf=pass dkim=pass(d=x) dmarc=none`."""
        spf = self.spf.status if self.spf else "none"
        dkim = " ".join(f"dkim={d.status}(d={d.domain})" if d.domain else f"dkim={d.status}"
                        for d in self.dkim) or "dkim=none"
        dmarc = self.dmarc.status if self.dmarc else "none"
        return f"spf={spf} {dkim} dmarc={dmarc}"


@dataclass(frozen=True)
class Verdict:
    """The one decision: `deliver`, `junk` (to the Spam folder) or `reject`, and why."""

    action: str
    reason: str


def from_domain(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The domain of the one author address in the one From: field, or None (RFC 7489 6.6.1)."""
    values = [value for name, value in headers if name.lower() == b"from"]
    if len(values) != 1:
        return None
    authors = getaddresses([values[0].decode("utf-8", "replace")])
    if len(authors) != 1 or "@" not in authors[0][1]:
        return None
    try:
        return normalize_domain(authors[0][1].rpartition("@")[2])
    except AddressError:
        return None


async def gather_message_evidence(resolver: AsyncResolver, ip: str, helo: str, sender: str,
                                  headers: list[tuple[bytes, bytes]], message: bytes,
                                  run_in_thread: Callable[..., Deferred[Any]]) -> MessageEvidence:
    """SPF of the sender, DKIM of the message, then DMARC of its From: domain."""
    try:
        spf: SpfResult | None = await check_spf(resolver, ip, sender, helo)
    except ValueError:
        spf = None
    dkim = tuple(await verify_dkim(resolver, message, run_in_thread=run_in_thread))
    author = from_domain(headers)
    dmarc = await check_dmarc(resolver, author, spf, list(dkim)) if author else None
    return MessageEvidence(author, spf, dkim, dmarc)


def analyze(evidence: MessageEvidence) -> Verdict:
    """Reject a DMARC failure whose policy says reject, junk one that says quarantine."""
    dmarc = evidence.dmarc
    if dmarc is not None and dmarc.status == "fail":
        if dmarc.disposition == "reject":
            return Verdict("reject", f"DMARC policy of {dmarc.policy_domain} says reject")
        if dmarc.disposition == "quarantine":
            return Verdict("junk", f"DMARC policy of {dmarc.policy_domain} says quarantine")
    return Verdict("deliver", "no policy objects")
