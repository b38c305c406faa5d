"""A resolver facade over twisted.names: short per-call timeouts, plain answers, typed errors.

Twisted's `client.Resolver` retries with timeouts of 1, 3, 11 and 45 seconds — a minute before a
dead name server is given up on, far too long for an SMTP session. `Resolver` passes a one-step
timeout tuple on every query, bounds the TCP fallback (after a truncated UDP answer) as well, and
turns the `(answers, authority, additional)` tuples into plain Python values:

- `a()` / `aaaa()` → address strings, `txt()` → one string per record (its character-strings
  joined, RFC 7208 section 3.3), `mx()` → `(preference, exchange)` sorted by preference,
  `ptr()` → names, from an IP address (the in-addr.arpa / ip6.arpa name is built here).
- Names come back without the trailing dot. A CNAME chain in the answer is followed (the answer
  records must hang off the queried name or a CNAME target, so stray records are ignored).
- NXDOMAIN raises `DnsNotFound` (so does a name that cannot be encoded, e.g. an empty label);
  a name that exists without records of the type returns `[]`.
  Timeouts, SERVFAIL, REFUSED, FORMERR and network trouble raise `DnsTemporaryError`.
- RFC 7505 null MX (`MX 0 .`) comes back as `[(0, "")]`; `is_null_mx()` recognises it.
- No ANY queries, ever (RFC 8482).

The policy checks (`cloudmail.policy`) take any object with these methods (`AsyncResolver`), so
unit tests can hand them a fake built from a dict.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

import idna
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.names import client, dns, error
from twisted.python.failure import Failure

DEFAULT_TIMEOUT = 5.0
RESOLV_CONF = "/etc/resolv.conf"


class DnsError(Exception):
    """A DNS lookup did not give an answer; `name` and `rtype` say which lookup."""

    def __init__(self, name: str, rtype: str, reason: str) -> None:
        super().__init__(f"{rtype} {name}: {reason}")
        self.name = name
        self.rtype = rtype
        self.reason = reason


class DnsNotFound(DnsError):
    """The name does not exist (NXDOMAIN, RFC 1035 section 4.1.1 RCODE 3)."""


class DnsTemporaryError(DnsError):
    """No usable answer now: timeout, SERVFAIL, REFUSED, a malformed reply or a network error.

    Mail checks treat this as "temperror" (RFC 8601 section 2.7): never a reason to reject."""


class AsyncResolver(Protocol):
    """What the policy checks need from a resolver (`Resolver` or a test fake)."""

    async def a(self, name: str) -> list[str]: ...
    async def aaaa(self, name: str) -> list[str]: ...
    async def txt(self, name: str) -> list[str]: ...
    async def mx(self, name: str) -> list[tuple[int, str]]: ...
    async def ptr(self, ip: str) -> list[str]: ...


def is_null_mx(records: list[tuple[int, str]]) -> bool:
    """True when `records` (as `Resolver.mx` returns them) is an RFC 7505 null MX: the domain
    accepts no mail. RFC 7505 section 3 requires it to be the only MX record."""
    return len(records) == 1 and records[0][1] == ""


def reverse_name(ip: str) -> str:
    """The PTR owner name of an IP address: `4.3.2.1.in-addr.arpa` or the nibble form under
    `ip6.arpa` (RFC 1035 section 3.5, RFC 3596 section 2.5). Raises ValueError for a non-IP."""
    return ipaddress.ip_address(ip).reverse_pointer


def encode_name(name: str) -> bytes:
    """A domain name as DNS wire text: ASCII as is (underscores allowed, for `_dmarc`,
    `_domainkey`), anything else through IDNA 2008 (UTS 46). Raises ValueError if invalid."""
    name = name.rstrip(".")
    if not name:
        raise ValueError("empty domain name")
    try:
        return name.encode("ascii")
    except UnicodeEncodeError:
        try:
            return idna.encode(name, uts46=True)
        except idna.IDNAError as e:
            raise ValueError(f"invalid domain name {name!r}: {e}") from None


def _text(name: dns.Name) -> str:
    return name.name.decode("ascii", "backslashreplace").rstrip(".")


class Resolver:
    """Async DNS lookups with a short timeout on every query.

    `nameservers` is a list of `(ip, port)` (IPv4 or IPv6); `None` or `[]` reads
    /etc/resolv.conf (re-read when it changes, as twisted.names does). `timeout`, in seconds, is
    how long each UDP attempt waits for an answer (one attempt per server); a lookup gives up
    after at most twice that, TCP retry after truncation included.
    """

    def __init__(self, nameservers: list[tuple[str, int]] | None, timeout: float = DEFAULT_TIMEOUT,
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self._reactor: IReactorTime = reactor
        self.timeout = timeout
        if nameservers:
            self._client = client.Resolver(servers=list(nameservers), timeout=(timeout,),
                                           reactor=reactor)
        else:
            self._client = client.Resolver(resolv=RESOLV_CONF, timeout=(timeout,), reactor=reactor)

    def close(self) -> None:
        """Stop re-reading resolv.conf and drop any TCP connection to a name server."""
        call = getattr(self._client, "_parseCall", None)
        if call is not None and call.active():
            call.cancel()
        for protocol in list(self._client.connections):
            protocol.transport.loseConnection()

    async def a(self, name: str) -> list[str]:
        """The IPv4 addresses of `name` (RFC 1035 section 3.4.1)."""
        records = await self._query(name, dns.A)
        return [r.dottedQuad() for r in records]

    async def aaaa(self, name: str) -> list[str]:
        """The IPv6 addresses of `name` (RFC 3596), in compressed form."""
        records = await self._query(name, dns.AAAA)
        return [str(ipaddress.IPv6Address(r.address)) for r in records]

    async def txt(self, name: str) -> list[str]:
        """One string per TXT record of `name`, its character-strings concatenated without
        separators (RFC 7208 section 3.3, RFC 6376 section 3.6.2.2); bytes decoded as UTF-8."""
        records = await self._query(name, dns.TXT)
        return [b"".join(r.data).decode("utf-8", "replace") for r in records]

    async def mx(self, name: str) -> list[tuple[int, str]]:
        """The MX records of `name` as `(preference, exchange)`, lowest preference first
        (RFC 5321 section 5.1). A null MX (RFC 7505) is `[(0, "")]`: see `is_null_mx()`."""
        records = await self._query(name, dns.MX)
        return sorted((r.preference, _text(r.name)) for r in records)

    async def ptr(self, ip: str) -> list[str]:
        """The PTR names of the IP address `ip` (RFC 1035 section 3.5, RFC 3596 section 2.5)."""
        records = await self._query(reverse_name(ip), dns.PTR)
        return [_text(r.name) for r in records]

    async def _query(self, name: str, rtype: int) -> list[Any]:
        """The payloads of the `rtype` records that answer `name`, following CNAMEs."""
        type_name = dns.QUERY_TYPES.get(rtype, str(rtype))
        try:
            qname = encode_name(name)
        except ValueError as e:
            raise DnsNotFound(name, type_name, str(e)) from None
        lookup = self._client.query(dns.Query(qname, rtype, dns.IN), (self.timeout,))
        try:
            answers, _authority, _additional = await self._bounded(lookup, name, type_name)
        except DnsError:
            raise
        except error.DNSNameError:
            raise DnsNotFound(name, type_name, "NXDOMAIN") from None
        except error.DNSServerError:
            raise DnsTemporaryError(name, type_name, "SERVFAIL") from None
        except error.DNSQueryRefusedError:
            raise DnsTemporaryError(name, type_name, "REFUSED") from None
        except (error.DNSFormatError, error.DNSNotImplementedError, error.DNSUnknownError) as e:
            raise DnsTemporaryError(name, type_name, type(e).__name__) from None
        except defer.TimeoutError:
            raise DnsTemporaryError(name, type_name, "timeout") from None
        except Exception as e:  # noqa: BLE001 -- network trouble of any kind is temporary
            raise DnsTemporaryError(name, type_name, f"{type(e).__name__}: {e}") from None
        return _follow(qname, rtype, answers)

    def _bounded(self, lookup: defer.Deferred, name: str, type_name: str) -> defer.Deferred:
        """`lookup`, or a `DnsTemporaryError` once twice the timeout has passed (the UDP attempt
        is bounded by twisted.names itself; this bounds a TCP retry, whose timeout is fixed)."""
        outer: defer.Deferred = defer.Deferred()

        def expire() -> None:
            outer.errback(DnsTemporaryError(name, type_name, "timeout"))

        call = self._reactor.callLater(2 * self.timeout, expire)

        def done(result: Any) -> None:
            if call.active():
                call.cancel()
                outer.callback(result)
            elif isinstance(result, Failure):
                result.trap(Exception)  # the caller has had its timeout; drop the late error

        lookup.addBoth(done)
        return outer


def _follow(qname: bytes, rtype: int, answers: list[dns.RRHeader]) -> list[Any]:
    """The payloads of `rtype` records owned by `qname` or by a name its CNAME chain leads to
    (RFC 1034 section 3.6.2), in answer order."""
    owners = {qname.lower().rstrip(b".")}
    cnames = {rr.name.name.lower(): rr.payload.name.name.lower()
              for rr in answers if rr.type == dns.CNAME and rtype != dns.CNAME}
    for _ in range(len(cnames)):
        targets = {cnames[o] for o in owners if o in cnames} - owners
        if not targets:
            break
        owners |= targets
    return [rr.payload for rr in answers
            if rr.type == rtype and rr.name.name.lower().rstrip(b".") in owners]
