"""Sender Policy Framework: the check_host() function of RFC 7208, over our async resolver.

`check_spf(resolver, ip, mail_from, helo)` evaluates the SPF record of the MAIL FROM domain, or
of the HELO name for the null sender (RFC 7208 section 2.4), and returns an `SpfResult`:

- "pass" / "fail" / "softfail" / "neutral" — the qualifier of the mechanism that matched, or
  "neutral" when none matched and there is no redirect (section 4.7).
- "none" — no SPF record, or the domain is not a valid name (sections 4.3, 4.5).
- "temperror" — a DNS lookup that the answer depends on timed out or failed (section 2.6.6).
- "permerror" — a malformed record, more than one record, more than 10 DNS-querying terms, more
  than 2 void lookups, or an include/redirect to a domain without a record (section 2.6.7).

The evaluation is written here rather than run through pyspf in a thread: every query goes
through `cloudmail.dns.Resolver` (short per-call timeouts, never blocking the reactor) and the
checker stays a pure function of the resolver, as mox's `spf.Verify` is. Supported: all, ip4,
ip6, a, mx, ptr, include, exists, redirect and exp, with macros (section 7). Limits of section
4.6.4: 10 DNS-querying terms, 10 MX names per mx, 10 PTR names per ptr, 2 void lookups.
"""

from __future__ import annotations

import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from cloudmail.dns import AsyncResolver, DnsNotFound, DnsTemporaryError

SpfStatus = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]

MAX_DNS_TERMS = 10
"""Mechanisms and modifiers that query DNS, per check (RFC 7208 section 4.6.4)."""
MAX_VOID_LOOKUPS = 2
"""DNS queries that may return NXDOMAIN or no data (RFC 7208 section 4.6.4)."""
MAX_NAMES = 10
"""MX names (mx) and PTR names (ptr) looked at per mechanism (RFC 7208 section 4.6.4)."""

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_VERSION = re.compile(r"^v=spf1(?: |$)", re.IGNORECASE)
_MODIFIER = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$")
_MECHANISM = re.compile(r"^([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)(?::(.*?))?"
                        r"(?:/(\d+))?(?://(\d+))?$")
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|(.))")


@dataclass(frozen=True)
class SpfResult:
    """The SPF verdict: `domain` is the domain checked (MAIL FROM domain, or the HELO name for
    the null sender), `identity` which one ("mailfrom" or "helo"), `explanation` the domain's
    exp= text on "fail", `mechanism` the term that matched, `detail` why on an error."""

    status: SpfStatus
    domain: str
    identity: Literal["mailfrom", "helo"]
    sender: str
    ip: str
    explanation: str | None = None
    mechanism: str | None = None
    detail: str | None = None


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


class _Evaluation:
    """The state shared by one check_host() and its includes and redirects."""

    def __init__(self, resolver: AsyncResolver, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 sender: str, helo: str) -> None:
        self.resolver = resolver
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.dns_terms = 0
        self.void_lookups = 0

    def count_term(self) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    async def lookup(self, rtype: str, name: str, *, void_counts: bool = True) -> list:
        """A DNS lookup; NXDOMAIN is an empty answer, counted as void (section 4.6.4)."""
        try:
            answer = await getattr(self.resolver, rtype)(name)
        except DnsNotFound:
            answer = []
        except DnsTemporaryError as e:
            raise _TempError(str(e)) from None
        if not answer and void_counts:
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void DNS lookups")
        return answer

    async def addresses(self, name: str, *, void_counts: bool = True) -> list[str]:
        rtype = "a" if self.ip.version == 4 else "aaaa"
        return await self.lookup(rtype, name, void_counts=void_counts)

    # --- check_host(), RFC 7208 section 4 -------------------------------------------------------

    async def check_host(self, domain: str) -> tuple[SpfStatus, str | None, str | None]:
        """(status, matched term, explanation) for `domain`; raises _PermError/_TempError."""
        if not valid_domain(domain):
            return "none", None, None
        try:
            records = await self.resolver.txt(domain)
        except DnsNotFound:
            return "none", None, None
        except DnsTemporaryError as e:
            raise _TempError(str(e)) from None
        spf = [r for r in records if _VERSION.match(r)]
        if not spf:
            return "none", None, None
        if len(spf) > 1:
            raise _PermError(f"{domain} has {len(spf)} SPF records")  # section 4.5
        mechanisms, redirect, exp = parse_record(spf[0])
        for qualifier, name, arg, cidr4, cidr6, text in mechanisms:
            if await self.matches(domain, name, arg, cidr4, cidr6):
                status = _QUALIFIERS[qualifier or "+"]
                explanation = await self.explain(domain, exp) if status == "fail" else None
                return status, text, explanation  # type: ignore[return-value]
        if redirect is not None:  # section 6.1
            self.count_term()
            target = self.expand(redirect, domain)
            status, text, explanation = await self.check_host(target)
            if status == "none":
                raise _PermError(f"redirect to {target} without an SPF record")
            return status, text, explanation
        return "neutral", None, None

    async def matches(self, domain: str, name: str, arg: str | None, cidr4: int | None,
                      cidr6: int | None) -> bool:
        """Whether mechanism `name` (section 5) matches the client IP."""
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            return self.in_network(arg or "")
        self.count_term()
        target = self.expand(arg, domain) if arg else domain
        if name == "include":  # section 5.2
            status, _text, _exp = await self.check_host(target)
            if status in ("none", "permerror"):
                raise _PermError(f"include:{target} has no SPF record")
            return status == "pass"
        if name == "a":
            return self.in_any(await self.addresses(target), cidr4, cidr6)
        if name == "mx":
            exchanges = await self.lookup("mx", target)
            if len(exchanges) > MAX_NAMES:
                raise _PermError(f"mx:{target} has more than {MAX_NAMES} MX records")
            for _preference, exchange in exchanges:
                if exchange and self.in_any(
                        await self.addresses(exchange, void_counts=False), cidr4, cidr6):
                    return True
            return False
        if name == "ptr":  # section 5.5: validated names ending in the target domain
            return bool(await self.validated_names(target))
        if name == "exists":  # section 5.7: an A lookup, whatever the client IP version
            return bool(await self.lookup("a", target))
        raise _PermError(f"unknown mechanism {name}")

    def in_network(self, arg: str) -> bool:
        """Whether the client is in the ip4/ip6 network `arg` (checked by parse_record)."""
        network = ipaddress.ip_network(arg, strict=False)
        return network.version == self.ip.version and self.ip in network

    def in_any(self, addresses: list[str], cidr4: int | None, cidr6: int | None) -> bool:
        prefix = (cidr4 if cidr4 is not None else 32) if self.ip.version == 4 else (
            cidr6 if cidr6 is not None else 128)
        for address in addresses:
            try:
                network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
            except ValueError:
                continue
            if network.version == self.ip.version and self.ip in network:
                return True
        return False

    async def validated_names(self, suffix: str | None = None) -> set[str]:
        """The client's PTR names that resolve back to it (section 5.5), lowercased; with
        `suffix`, only names equal to or under it are tried."""
        try:
            names = await self.resolver.ptr(str(self.ip))
        except (DnsNotFound, DnsTemporaryError):
            return set()  # section 5.5: a PTR error means no match
        validated = set()
        for name in names[:MAX_NAMES]:
            name = name.lower()
            if suffix and not (name == suffix.lower() or name.endswith("." + suffix.lower())):
                continue
            try:
                if str(self.ip) in await self.addresses(name, void_counts=False):
                    validated.add(name)
            except _TempError:
                continue
        return validated

    async def explain(self, domain: str, exp: str | None) -> str | None:
        """The exp= explanation (section 6.2); any trouble just means no explanation."""
        if exp is None:
            return None
        try:
            target = self.expand(exp, domain)
            texts = await self.resolver.txt(target)
            if len(texts) != 1:
                return None
            return self.expand(texts[0], domain, explanation=True)
        except (DnsNotFound, DnsTemporaryError, _PermError, ValueError):
            return None

    # --- macros, RFC 7208 section 7 -------------------------------------------------------------

    def expand(self, spec: str, domain: str, *, explanation: bool = False) -> str:
        """`spec` with its macros expanded; a domain-spec is shortened to 253 characters by
        dropping labels from the left (section 7.3)."""
        local, _, sender_domain = self.sender.rpartition("@")

        def value(letter: str) -> str:
            letter = letter.lower()
            if letter == "s":
                return self.sender
            if letter == "l":
                return local or "postmaster"
            if letter == "o":
                return sender_domain
            if letter == "d":
                return domain
            if letter == "i":
                if self.ip.version == 4:
                    return str(self.ip)
                return _ip_nibbles(self.ip)
            if letter == "p":
                return "unknown"  # section 7.3: "p" SHOULD NOT be used; no extra lookups
            if letter == "v":
                return "in-addr" if self.ip.version == 4 else "ip6"
            if letter == "h":
                return self.helo
            if not explanation:
                raise _PermError(f"macro %{{{letter}}} is only allowed in exp text")
            if letter == "c":
                return str(self.ip)
            if letter == "r":
                return "unknown"
            return str(int(time.time()))  # "t"

        def replace(match: re.Match[str]) -> str:
            letter, digits, reverse, delimiters, escape = match.groups()
            if escape is not None:
                if escape == "%":
                    return "%"
                if escape == "_":
                    return " "
                if escape == "-":
                    return "%20"
                raise _PermError(f"invalid macro %{escape} in {spec!r}")
            parts = re.split("[" + re.escape(delimiters or ".") + "]", value(letter))
            if reverse:
                parts.reverse()
            if digits:
                if int(digits) == 0:
                    raise _PermError(f"invalid macro transformer in {spec!r}")
                parts = parts[-int(digits):]
            text = ".".join(parts)
            if letter.isupper():
                text = urllib.parse.quote(text, safe="")
            return text

        expanded = _MACRO.sub(replace, spec)
        if "%" in _MACRO.sub("", spec):
            raise _PermError(f"incomplete macro in {spec!r}")
        if not explanation:
            while len(expanded) > 253 and "." in expanded:
                expanded = expanded.split(".", 1)[1]
        return expanded


def valid_domain(domain: str) -> bool:
    """A name check_host() can evaluate: at least two labels, none empty or over 63 octets
    (RFC 7208 section 4.3)."""
    labels = domain.rstrip(".").split(".")
    return (len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels)
            and len(domain) <= 253)


def parse_record(record: str) -> tuple[list[tuple], str | None, str | None]:
    """The mechanisms, redirect= and exp= of an SPF record (RFC 7208 section 4.6, 12).
    Mechanisms are `(qualifier, name, argument, cidr4, cidr6, text)`; unknown modifiers are
    ignored (section 6); a syntax error raises _PermError."""
    mechanisms: list[tuple] = []
    redirect = exp = None
    for term in record.split()[1:]:
        modifier = _MODIFIER.match(term)
        if modifier and ":" not in modifier.group(1) and "/" not in modifier.group(1):
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if (redirect if name == "redirect" else exp) is not None:
                    raise _PermError(f"duplicate {name}= modifier")  # section 6
                if not value:
                    raise _PermError(f"empty {name}= modifier")
                if name == "redirect":
                    redirect = value
                else:
                    exp = value
            continue
        mechanism = _MECHANISM.match(term)
        if not mechanism:
            raise _PermError(f"invalid term {term!r}")
        qualifier, name, arg, cidr4, cidr6 = mechanism.groups()
        name = name.lower()
        if name not in _MECHANISMS:
            raise _PermError(f"unknown mechanism {term!r}")
        if name in ("ip4", "ip6"):
            if not arg:
                raise _PermError(f"{name} without an address")
            prefix = cidr4 if cidr6 is None else None
            if cidr6 is not None or (prefix is not None and (
                    int(prefix) > (32 if name == "ip4" else 128))):
                raise _PermError(f"invalid prefix in {term!r}")
            arg = f"{arg}/{prefix}" if prefix is not None else arg
            try:
                network = ipaddress.ip_network(arg, strict=False)
            except ValueError:
                raise _PermError(f"invalid address in {term!r}") from None
            if network.version != (4 if name == "ip4" else 6):
                raise _PermError(f"invalid address in {term!r}")
            cidr4 = cidr6 = None
        elif name in ("all", "include", "exists", "ptr"):
            if cidr4 is not None or cidr6 is not None:
                raise _PermError(f"prefix not allowed in {term!r}")
            if name == "all" and arg is not None:
                raise _PermError(f"invalid term {term!r}")
            if name in ("include", "exists") and not arg:
                raise _PermError(f"{name} needs a domain")
        else:
            if cidr4 is not None and int(cidr4) > 32 or cidr6 is not None and int(cidr6) > 128:
                raise _PermError(f"invalid prefix in {term!r}")
        if arg is not None and arg == "":
            raise _PermError(f"empty domain in {term!r}")
        mechanisms.append((qualifier, name, arg,
                           None if cidr4 is None else int(cidr4),
                           None if cidr6 is None else int(cidr6), term))
    if any(m[1] == "all" for m in mechanisms):
        redirect = None  # section 6.1: redirect is ignored when "all" is present
    return mechanisms, redirect, exp


def _ip_nibbles(ip: ipaddress.IPv6Address) -> str:
    return ".".join(ip.packed.hex())


async def check_spf(resolver: AsyncResolver, ip: str, mail_from: str, helo: str) -> SpfResult:
    """The SPF result for a client at `ip` sending MAIL FROM `mail_from` after HELO `helo`
    (RFC 7208 sections 2.3, 2.4, 4). `mail_from` may be empty or "<>" (the null sender): then
    the HELO identity `postmaster@helo` is checked. Raises ValueError if `ip` is not an IP
    address; DNS trouble is a "temperror" result, never an exception."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    mail_from = mail_from.strip().strip("<>")
    helo = helo.strip().rstrip(".")
    if mail_from:
        local, at, domain = mail_from.rpartition("@")
        if not at:
            local, domain = "postmaster", mail_from
        sender = f"{local or 'postmaster'}@{domain}"
        identity: Literal["mailfrom", "helo"] = "mailfrom"
    else:
        domain, sender, identity = helo, f"postmaster@{helo}", "helo"
    domain = domain.rstrip(".").lower()
    evaluation = _Evaluation(resolver, address, sender, helo)
    try:
        status, mechanism, explanation = await evaluation.check_host(domain)
    except _PermError as e:
        return SpfResult("permerror", domain, identity, sender, ip, detail=str(e))
    except _TempError as e:
        return SpfResult("temperror", domain, identity, sender, ip, detail=str(e))
    return SpfResult(status, domain, identity, sender, ip, explanation=explanation,
                     mechanism=mechanism)
