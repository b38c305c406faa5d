"""Forward-confirmed reverse DNS of a client IP: the "iprev" method of RFC 8601 section 3.

The PTR names of the IP are looked up, then the addresses of each name (A for an IPv4 client,
AAAA for IPv6, at most `MAX_NAMES` names, concurrently); the IP is confirmed when one name maps
back to it. Statuses, as RFC 8601 section 3 defines them:

- "pass" — a PTR name resolves back to the IP; `name` is that name.
- "fail" — PTR names exist but none maps back (the forward lookups answered, with other
  addresses, no data or NXDOMAIN).
- "permerror" — no PTR data for the IP (NXDOMAIN or an empty answer): "no PTR data are available
  for this IP address", which RFC 8601 classes as permerror, not fail (mox does the same).
- "temperror" — the PTR lookup, or a forward lookup that could have confirmed the IP, failed
  with a timeout, SERVFAIL or the like.

`check_iprev(resolver, ip)` is pure: the resolver is an argument and nothing is recorded.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from twisted.internet import defer

from cloudmail.dns import AsyncResolver, DnsNotFound, DnsTemporaryError

IprevStatus = Literal["pass", "fail", "permerror", "temperror"]

MAX_NAMES = 10
"""PTR names looked up forward at most; a long PTR set is not an amplification lever."""


@dataclass(frozen=True)
class IprevResult:
    """The iprev verdict for `ip`: `name` is the confirmed name on "pass", `ptr_names` every PTR
    name found, `detail` what went wrong on a temperror."""

    ip: str
    status: IprevStatus
    name: str | None = None
    ptr_names: tuple[str, ...] = ()
    detail: str | None = None

    @property
    def confirmed(self) -> bool:
        """True when the reverse name was confirmed by a forward lookup."""
        return self.status == "pass"


async def check_iprev(resolver: AsyncResolver, ip: str) -> IprevResult:
    """Forward-confirmed reverse DNS of `ip` (RFC 8601 section 3). Raises ValueError if `ip` is
    not an IP address; DNS trouble is a "temperror" result."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    try:
        names = await resolver.ptr(str(address))
    except DnsNotFound:
        return IprevResult(ip, "permerror", detail="no PTR record")
    except DnsTemporaryError as e:
        return IprevResult(ip, "temperror", detail=str(e))
    names = list(dict.fromkeys(n.rstrip(".") for n in names if n.rstrip(".")))
    if not names:
        return IprevResult(ip, "permerror", detail="no PTR record")
    checked = names[:MAX_NAMES]
    lookups = [defer.ensureDeferred(_forward(resolver, name, address)) for name in checked]
    outcomes = await defer.gatherResults(lookups, consumeErrors=True)
    for name, outcome in zip(checked, outcomes, strict=True):
        if outcome is True:
            return IprevResult(ip, "pass", name=name, ptr_names=tuple(names))
    errors = [outcome for outcome in outcomes if isinstance(outcome, str)]
    if errors:
        return IprevResult(ip, "temperror", ptr_names=tuple(names), detail="; ".join(errors))
    return IprevResult(ip, "fail", ptr_names=tuple(names),
                       detail="no PTR name resolves back to the address")


async def _forward(resolver: AsyncResolver, name: str,
                   address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool | str:
    """True when `name` has `address` among its addresses, False when it has not (or does not
    exist), or the temporary error as text."""
    try:
        if address.version == 4:
            found = await resolver.a(name)
        else:
            found = await resolver.aaaa(name)
    except DnsNotFound:
        return False
    except DnsTemporaryError as e:
        return str(e)
    for candidate in found:
        try:
            if ipaddress.ip_address(candidate) == address:
                return True
        except ValueError:
            continue
    return False
