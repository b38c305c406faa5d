"""A real twisted.names DNS server on loopback, serving test zones written as a Python dict.

    server = DnsServer({
        "example.com": {"MX": [(10, "mx.example.com")], "A": ["192.0.2.1"],
                        "TXT": ["v=spf1 -all"]},
        "mx.example.com": {"A": ["192.0.2.25"], "AAAA": ["2001:db8::25"]},
        "www.example.com": {"CNAME": "example.com"},
        "1.2.0.192.in-addr.arpa": {"PTR": ["example.com"]},
        "slow.example.com": TIMEOUT,             # the server never answers
        "broken.example.com": SERVFAIL,          # answers SERVFAIL
        "half.example.com": {"A": ["192.0.2.9"], "AAAA": TIMEOUT},   # per type too
    })
    port = server.start()          # UDP and TCP on 127.0.0.1:port
    Resolver(server.nameservers)   # [("127.0.0.1", port)]
    ...
    yield server.stop()            # a Deferred

Record values: A/AAAA an address; MX `(preference, exchange)` (exchange `""` is the RFC 7505
null MX); TXT a string (split into 255-byte character-strings) or a tuple of strings (one record
of several character-strings); PTR/CNAME a name. A single value may stand for a one-item list.
Every name is authoritative under one root SOA, so a name not in the dict is NXDOMAIN and a
listed name without records of the asked type is an empty NOERROR answer. UDP answers larger
than 512 bytes are truncated, so clients retry over TCP. `queries` records every question asked,
as `(name, type)`. Start and stop it on the pytest-twisted reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.names import authority, dns, server

TIMEOUT = "timeout"
SERVFAIL = "servfail"
REFUSED = "refused"
_BEHAVIOURS = {SERVFAIL: dns.ESERVER, REFUSED: dns.EREFUSED}

_SOA = dns.Record_SOA(mname=b"ns.test", rname=b"hostmaster.test", serial=1, refresh=3600,
                      retry=600, expire=86400, minimum=60, ttl=60)


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _txt_strings(value: str | tuple[str, ...]) -> list[bytes]:
    if isinstance(value, tuple):
        return [s.encode() for s in value]
    data = value.encode()
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


def _record(rtype: str, value: Any) -> dns.IEncodable:
    if rtype == "A":
        return dns.Record_A(value, ttl=60)
    if rtype == "AAAA":
        return dns.Record_AAAA(value, ttl=60)
    if rtype == "MX":
        preference, exchange = value
        return dns.Record_MX(preference, exchange.encode(), ttl=60)
    if rtype == "TXT":
        return dns.Record_TXT(*_txt_strings(value), ttl=60)
    if rtype == "PTR":
        return dns.Record_PTR(value.encode(), ttl=60)
    if rtype == "CNAME":
        return dns.Record_CNAME(value.encode(), ttl=60)
    raise ValueError(f"unsupported record type {rtype}")


class DictAuthority(authority.FileAuthority):
    """twisted.names' authoritative lookup logic over records from a dict (see the module)."""

    def __init__(self, zones: dict[str, Any]) -> None:
        self._zones = zones
        super().__init__(None)

    def loadFile(self, filename: None) -> None:
        self.soa = (b"", _SOA)
        self.records = {}
        for name, types in self._zones.items():
            records = self.records.setdefault(name.lower().rstrip(".").encode(), [])
            if isinstance(types, dict):
                for rtype, values in types.items():
                    if values not in (TIMEOUT, SERVFAIL, REFUSED):
                        records.extend(_record(rtype, v) for v in _values(values))

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> defer.Deferred:
        if self.records.get(name.lower()) == []:  # listed without records: NOERROR, no data
            soa = dns.RRHeader(self.soa[0], dns.SOA, dns.IN, 60, self.soa[1], auth=True)
            return defer.succeed(([], [soa], []))
        return super()._lookup(name, cls, type, timeout)


class DictServerFactory(server.DNSServerFactory):
    """A `DNSServerFactory` that logs questions and misbehaves on names marked TIMEOUT (no
    answer at all), SERVFAIL or REFUSED — per name, or per name and type."""

    def __init__(self, zones: dict[str, Any]) -> None:
        super().__init__(authorities=[DictAuthority(zones)])
        self.zones = {name.lower().rstrip("."): v for name, v in zones.items()}
        self.queries: list[tuple[str, str]] = []

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> Any:
        query = message.queries[0]
        name = query.name.name.decode("ascii", "replace").lower().rstrip(".")
        type_name = dns.QUERY_TYPES.get(query.type, dns.EXT_QUERIES.get(query.type, "?"))
        self.queries.append((name, type_name))
        entry = self.zones.get(name)
        if isinstance(entry, dict):
            entry = entry.get(type_name)
        if isinstance(entry, str) and entry == TIMEOUT:
            return None
        if isinstance(entry, str) and entry in _BEHAVIOURS:
            response = self._responseFromMessage(message=message, rCode=_BEHAVIOURS[entry])
            self.sendReply(protocol, response, address)
            return None
        return super().handleQuery(message, protocol, address)

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        if address is not None:  # UDP: truncate past 512 bytes (RFC 1035 section 4.2.1)
            message.maxSize = 512
        super().sendReply(protocol, message, address)


class DnsServer:
    """The test DNS server: `start()` → port (UDP and TCP on 127.0.0.1), `stop()` → Deferred."""

    def __init__(self, zones: dict[str, Any]) -> None:
        self.factory = DictServerFactory(zones)
        self.port: int | None = None
        self._listeners: list[Any] = []

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every question received so far, as `(name, type)`, lowercased, without the dot."""
        return self.factory.queries

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """The server as `Resolver(nameservers=...)` takes it."""
        assert self.port is not None, "start() the server first"
        return [("127.0.0.1", self.port)]

    def start(self) -> int:
        """Listen on one free port for both UDP and TCP; return it."""
        for _ in range(50):
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(self.factory),
                                    interface="127.0.0.1")
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, self.factory, interface="127.0.0.1")
            except CannotListenError:
                udp.stopListening()
                continue
            self._listeners = [udp, tcp]
            self.port = port
            return port
        raise RuntimeError("no free port for both UDP and TCP on 127.0.0.1")

    def stop(self) -> defer.Deferred:
        """Stop listening and close open TCP connections."""
        for protocol in list(self.factory.connections):
            protocol.transport.loseConnection()
        stopping = [defer.maybeDeferred(listener.stopListening) for listener in self._listeners]
        self._listeners = []
        return defer.gatherResults(stopping)


def resolver_for(zones: dict, timeout: float = 0.5):
    """For a fixture: `yield from resolver_for(ZONES)` serves the zones on loopback and yields
    a Resolver pointed at them; both are stopped when the fixture ends."""
    import pytest_twisted

    from cloudmail.dns import Resolver

    server = DnsServer(zones)
    server.start()
    resolver = Resolver(server.nameservers, timeout=timeout)
    yield resolver
    resolver.close()
    pytest_twisted.blockon(server.stop())
