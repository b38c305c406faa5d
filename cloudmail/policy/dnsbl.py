"""DNS blocklist (DNSBL) lookups of a client IP address (RFC 5782).

`check_dnsbl(resolver, ip, zones)` asks every zone at once and returns a `DnsblResult` with one
`ZoneResult` per zone:

- "listed" — the zone has A records for the IP (RFC 5782 section 2.1), with the codes returned
  (`127.0.0.2` …) and the zone's TXT reason when it publishes one (section 2.1, often a URL).
- "notlisted" — NXDOMAIN, or no A records.
- "temperror" — the zone did not answer usably (timeout, SERVFAIL, …). Never counts as listed:
  a DNS timeout never rejects mail.
- "error" — the zone answered with codes outside 127.0.0.0/8 (section 2.1 requires them inside;
  anything else is a hijacked or wildcarded zone) or in 127.255.255.0/24, which lists such as
  Spamhaus use to say the query itself was refused (e.g. through a public resolver). Never listed.

The query name is the IP reversed — octets for IPv4 (section 2.1), nibbles for IPv6 (section
2.4) — followed by the zone: `2.0.0.127.zen.spamhaus.org`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from twisted.internet import defer

from cloudmail.dns import AsyncResolver, DnsNotFound, DnsTemporaryError

ZoneStatus = Literal["listed", "notlisted", "temperror", "error"]

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_QUERY_ERRORS = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True)
class ZoneResult:
    """What one blocklist zone said about the IP; `detail` explains an error or temperror."""

    zone: str
    status: ZoneStatus
    codes: tuple[str, ...] = ()
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class DnsblResult:
    """What every zone said about `ip`, in the order the zones were given."""

    ip: str
    zones: tuple[ZoneResult, ...]

    @property
    def listed(self) -> tuple[ZoneResult, ...]:
        """The zones that list the IP."""
        return tuple(z for z in self.zones if z.status == "listed")

    @property
    def temperrors(self) -> tuple[ZoneResult, ...]:
        """The zones that could not be asked (these never count as listed)."""
        return tuple(z for z in self.zones if z.status == "temperror")

    @property
    def is_listed(self) -> bool:
        """True when at least one zone lists the IP."""
        return bool(self.listed)


def dnsbl_name(ip: str, zone: str) -> str:
    """The DNSBL query name of `ip` in `zone`: reversed octets (RFC 5782 section 2.1) or
    reversed nibbles (section 2.4). Raises ValueError if `ip` is not an IP address."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    reversed_ip = address.reverse_pointer.rsplit(".", 2)[0]  # drop in-addr.arpa / ip6.arpa
    return f"{reversed_ip}.{zone.strip('.')}"


async def check_dnsbl(resolver: AsyncResolver, ip: str, zones: list[str]) -> DnsblResult:
    """Ask every zone in `zones` (concurrently, each once) whether it lists `ip` (RFC 5782).
    Raises ValueError if `ip` is not an IP address; DNS trouble is a zone's "temperror"."""
    dnsbl_name(ip, "invalid")
    unique = list(dict.fromkeys(z.strip(".").lower() for z in zones if z.strip(".")))
    checks = [defer.ensureDeferred(_check_zone(resolver, ip, zone)) for zone in unique]
    results = await defer.gatherResults(checks, consumeErrors=True)
    return DnsblResult(ip=ip, zones=tuple(results))


async def _check_zone(resolver: AsyncResolver, ip: str, zone: str) -> ZoneResult:
    name = dnsbl_name(ip, zone)
    try:
        codes = await resolver.a(name)
    except DnsNotFound:
        return ZoneResult(zone, "notlisted")
    except DnsTemporaryError as e:
        return ZoneResult(zone, "temperror", detail=str(e))
    if not codes:
        return ZoneResult(zone, "notlisted")
    unusable = [c for c in codes if not _is_listing_code(c)]
    if unusable:
        return ZoneResult(zone, "error", codes=tuple(codes),
                          detail=f"answer outside 127.0.0.0/8 or a query error code: "
                                 f"{', '.join(unusable)}")
    try:
        reasons = await resolver.txt(name)
    except (DnsNotFound, DnsTemporaryError):
        reasons = []
    reason = " ".join(r for r in reasons if r) or None
    return ZoneResult(zone, "listed", codes=tuple(codes), reason=reason)


def _is_listing_code(code: str) -> bool:
    try:
        address = ipaddress.IPv4Address(code)
    except ValueError:
        return False
    return address in _LOOPBACK and address not in _QUERY_ERRORS
