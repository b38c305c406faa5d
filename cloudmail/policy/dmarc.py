"""DMARC evaluation of the From: domain (RFC 7489), from the SPF and DKIM results.

`check_dmarc(resolver, from_domain, spf, dkim)` discovers the policy (section 6.6.3: the TXT
record at `_dmarc.<from domain>`, else at `_dmarc.<organizational domain>`), checks identifier
alignment (section 3.1: DKIM d= and the SPF-checked domain against the From: domain, relaxed or
strict per `adkim`/`aspf`) and returns a `DmarcResult`:

- "pass" — an aligned DKIM signature or an aligned SPF pass (section 4.2).
- "fail" — neither; `disposition` is then the policy to apply (`p=`, or `sp=` when the record
  was found at the organizational domain), lowered one step when the message falls outside the
  `pct=` sample (section 6.6.4: reject → quarantine, quarantine → none).
- "none" — no DMARC record (or more than one: section 6.6.3 stops discovery).
- "temperror" — the record lookup failed, or no aligned pass but an aligned SPF/DKIM check had
  a temperror: a DNS timeout never rejects mail.
- "permerror" — a record without a valid `p=` (or with an invalid `sp=`) and no `rua=`, or no
  usable From: domain.

The organizational domain (section 3.2) comes from the Public Suffix List at
`/usr/share/publicsuffix/public_suffix_list.dat` (Debian package `publicsuffix`), read once;
without that file the fallback rule is "the last two labels". `pct` sampling goes through a
`sample(pct) → bool` hook, so tests (and operators who want no sampling) can fix it.
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cloudmail.dns import AsyncResolver, DnsNotFound, DnsTemporaryError
from cloudmail.policy.dkim import DkimResult
from cloudmail.policy.spf import SpfResult

DmarcStatus = Literal["pass", "fail", "none", "temperror", "permerror"]
Policy = Literal["none", "quarantine", "reject"]

PUBLIC_SUFFIX_LIST = "/usr/share/publicsuffix/public_suffix_list.dat"
_POLICIES = ("none", "quarantine", "reject")
_LOWERED: dict[str, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(frozen=True)
class DmarcRecord:
    """A parsed DMARC record (RFC 7489 section 6.3); defaults filled in."""

    policy: Policy
    subdomain_policy: Policy | None = None
    adkim: Literal["r", "s"] = "r"
    aspf: Literal["r", "s"] = "r"
    pct: int = 100
    rua: tuple[str, ...] = ()
    text: str = ""


@dataclass(frozen=True)
class DmarcResult:
    """The DMARC verdict for `from_domain`: `policy_domain` is where the record was found,
    `policy` the policy that applies to this From: domain, `disposition` what to do with the
    message (only ever stricter than "none" on "fail"), `sampled` whether the message fell in
    the `pct=` sample, `dkim_domain`/`spf_domain` the aligned identifiers that passed."""

    status: DmarcStatus
    from_domain: str
    disposition: Policy = "none"
    policy: Policy | None = None
    policy_domain: str | None = None
    record: DmarcRecord | None = None
    dkim_domain: str | None = None
    spf_domain: str | None = None
    sampled: bool = True
    detail: str | None = None


class PublicSuffixList:
    """The rules of the Public Suffix List (https://publicsuffix.org/list/), for
    `organizational_domain()`: normal, wildcard (`*.ck`) and exception (`!www.ck`) rules."""

    def __init__(self, text: str) -> None:
        self.rules: set[str] = set()
        self.exceptions: set[str] = set()
        for line in text.splitlines():
            rule = line.strip().split(" ", 1)[0].lower()
            if not rule or rule.startswith("//"):
                continue
            if not rule.isascii():
                try:
                    rule = rule.encode("idna").decode("ascii")
                except UnicodeError:
                    continue
            if rule.startswith("!"):
                self.exceptions.add(rule[1:])
            else:
                self.rules.add(rule)

    def public_suffix(self, domain: str) -> str:
        """The longest public suffix of `domain` (the implicit rule "*" when none matches)."""
        labels = domain.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.exceptions:
                return ".".join(labels[i + 1:])
            wildcard = ".".join(["*"] + labels[i + 1:])
            if candidate in self.rules or (i + 1 < len(labels) and wildcard in self.rules):
                return candidate
        return labels[-1]


@functools.lru_cache(maxsize=1)
def _default_list() -> PublicSuffixList | None:
    if not os.path.exists(PUBLIC_SUFFIX_LIST):
        return None
    with open(PUBLIC_SUFFIX_LIST, encoding="utf-8") as f:
        return PublicSuffixList(f.read())


def organizational_domain(domain: str, suffixes: PublicSuffixList | None = None) -> str:
    """The organizational domain of `domain` (RFC 7489 section 3.2): its public suffix plus one
    label, or `domain` itself when it is a public suffix. Without a list: the last two labels."""
    domain = domain.lower().rstrip(".")
    suffixes = suffixes or _default_list()
    if suffixes is None:
        return ".".join(domain.split(".")[-2:])
    suffix = suffixes.public_suffix(domain)
    if domain == suffix:
        return domain
    return ".".join(domain.split(".")[-(suffix.count(".") + 2):])


def parse_record(text: str) -> DmarcRecord | str:
    """The record `text` parsed (RFC 7489 section 6.3-6.4), or a string saying why it is
    unusable. Unknown tags are ignored; invalid optional values fall back to their defaults;
    a missing or invalid p= (or an invalid sp=) with a rua= reads as p=none (section 6.6.3)."""
    tags: dict[str, str] = {}
    for i, part in enumerate(text.split(";")):
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if i == 0 and (name != "v" or value != "DMARC1"):
            return "record does not start with v=DMARC1"
        if eq and name not in tags:
            tags[name] = value
    rua = tuple(u.strip() for u in tags.get("rua", "").split(",") if u.strip().lower()
                .startswith("mailto:"))
    policy = tags.get("p", "").lower()
    subdomain_policy = tags.get("sp", "").lower() or None
    if policy not in _POLICIES or (subdomain_policy is not None
                                   and subdomain_policy not in _POLICIES):
        if not rua:
            return "no valid p= (or an invalid sp=) and no rua="
        policy, subdomain_policy = "none", None
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(policy=policy,  # type: ignore[arg-type]
                       subdomain_policy=subdomain_policy,  # type: ignore[arg-type]
                       adkim="s" if adkim == "s" else "r", aspf="s" if aspf == "s" else "r",
                       pct=pct if 0 <= pct <= 100 else 100, rua=rua, text=text)


def random_sample(pct: int) -> bool:
    """True for `pct` percent of messages, at random (RFC 7489 section 6.6.4)."""
    return pct >= 100 or random.randrange(100) < pct


async def _discover(resolver: AsyncResolver, domain: str) -> list[str]:
    """The TXT records at `_dmarc.<domain>` that start with v=DMARC1 (section 6.6.3 step 3)."""
    try:
        records = await resolver.txt(f"_dmarc.{domain}")
    except DnsNotFound:
        return []
    return [r for r in records if r.replace(" ", "").startswith("v=DMARC1")]


def _aligned(identifier: str, from_domain: str, mode: str,
             org: Callable[[str], str]) -> bool:
    identifier = identifier.lower().rstrip(".")
    if mode == "s":
        return identifier == from_domain
    return org(identifier) == org(from_domain)


async def check_dmarc(resolver: AsyncResolver, from_domain: str, spf: SpfResult | None,
                      dkim: list[DkimResult], *,
                      sample: Callable[[int], bool] = random_sample,
                      org: Callable[[str], str] = organizational_domain) -> DmarcResult:
    """Evaluate DMARC (RFC 7489 section 6.6) for a message whose From: domain is `from_domain`,
    given its SPF result (None when SPF was not checked) and DKIM results. `sample(pct)` says
    whether the message falls in the pct= sample; `org` maps a domain to its organizational
    domain. DNS trouble is a "temperror" result, never an exception."""
    from_domain = from_domain.strip().lower().rstrip(".")
    if not from_domain or "." not in from_domain:
        return DmarcResult("permerror", from_domain, detail="no usable From: domain")
    policy_domain = from_domain
    try:
        records = await _discover(resolver, from_domain)
        if not records and org(from_domain) != from_domain:
            policy_domain = org(from_domain)
            records = await _discover(resolver, policy_domain)
    except DnsTemporaryError as e:
        return DmarcResult("temperror", from_domain, detail=f"record lookup failed: {e.reason}")
    if not records:
        return DmarcResult("none", from_domain, detail="no DMARC record")
    if len(records) > 1:
        return DmarcResult("none", from_domain, policy_domain=policy_domain,
                           detail=f"{len(records)} DMARC records at _dmarc.{policy_domain}")
    record = parse_record(records[0])
    if isinstance(record, str):
        return DmarcResult("permerror", from_domain, policy_domain=policy_domain, detail=record)
    policy: Policy = record.policy
    if policy_domain != from_domain and record.subdomain_policy is not None:
        policy = record.subdomain_policy  # section 6.3, sp=

    def result(status: DmarcStatus, **evidence: Any) -> DmarcResult:
        return DmarcResult(status, from_domain, policy=policy, policy_domain=policy_domain,
                           record=record, **evidence)

    dkim_domain = next((r.domain for r in dkim if r.status == "pass" and r.domain
                        and _aligned(r.domain, from_domain, record.adkim, org)), None)
    spf_domain = None
    if spf is not None and spf.status == "pass" and _aligned(spf.domain, from_domain,
                                                            record.aspf, org):
        spf_domain = spf.domain
    if dkim_domain or spf_domain:
        return result("pass", dkim_domain=dkim_domain, spf_domain=spf_domain)

    if (spf is not None and spf.status == "temperror"
            and _aligned(spf.domain, from_domain, record.aspf, org)) or any(
            r.status == "temperror" and _aligned(r.domain, from_domain, record.adkim, org)
            for r in dkim if r.domain):
        return result("temperror", detail="an aligned SPF or DKIM check had a temperror")
    sampled = policy == "none" or sample(record.pct)
    disposition = policy if sampled else _LOWERED[policy]
    return result("fail", disposition=disposition, sampled=sampled,
                  detail="no aligned DKIM signature or SPF pass")
