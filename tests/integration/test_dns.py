"""The resolver facade (`cloudmail.dns.Resolver`) against a real twisted.names server on loopback.

Every lookup goes over UDP (TCP after truncation) to `tests.dnsserver.DnsServer`; the timeout is
0.5 s so the name that never answers fails fast.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol

from cloudmail.dns import (
    DnsNotFound,
    DnsTemporaryError,
    Resolver,
    is_null_mx,
    reverse_name,
)
from tests.dnsserver import REFUSED, SERVFAIL, TIMEOUT, DnsServer

TIMEOUT_SECONDS = 0.5
LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 700

ZONES = {
    "example.test": {"A": ["192.0.2.1", "192.0.2.2"], "AAAA": "2001:db8:0:0::1",
                     "MX": [(20, "mx2.example.test"), (10, "mx1.example.test")],
                     "TXT": ["v=spf1 -all", ("part one, ", "part two")]},
    "www.example.test": {"CNAME": "example.test"},
    "txt-only.example.test": {"TXT": "hello"},
    "empty.example.test": {},
    "nullmx.example.test": {"MX": (0, "")},
    "big.example.test": {"TXT": LONG_TXT},
    "xn--bcher-kva.example.test": {"A": "192.0.2.7"},
    "1.2.0.192.in-addr.arpa": {"PTR": ["example.test", "alias.example.test"]},
    reverse_name("2001:db8::1"): {"PTR": "example.test"},
    "slow.example.test": TIMEOUT,
    "servfail.example.test": SERVFAIL,
    "refused.example.test": REFUSED,
    "partly.example.test": {"A": "192.0.2.9", "AAAA": TIMEOUT},
}


@pytest.fixture(scope="module")
def server():
    """One loopback DNS server with ZONES for the module."""
    dns_server = DnsServer(ZONES)
    dns_server.start()
    yield dns_server
    pytest_twisted.blockon(dns_server.stop())


@pytest.fixture
def resolver(server):
    """A resolver pointed at the test server, 0.5 s per query."""
    r = Resolver(server.nameservers, timeout=TIMEOUT_SECONDS)
    yield r
    r.close()


@pytest_twisted.ensureDeferred
async def test_a_returns_every_address(resolver):
    """a() gives the IPv4 addresses as dotted quads, in answer order."""
    assert await resolver.a("example.test") == ["192.0.2.1", "192.0.2.2"]


@pytest_twisted.ensureDeferred
async def test_aaaa_returns_compressed_addresses(resolver):
    """aaaa() gives IPv6 addresses in compressed text form (RFC 5952)."""
    assert await resolver.aaaa("example.test") == ["2001:db8::1"]


@pytest_twisted.ensureDeferred
async def test_txt_joins_character_strings_per_record(resolver):
    """txt() gives one string per record, its character-strings joined with nothing between
    (RFC 7208 section 3.3)."""
    assert sorted(await resolver.txt("example.test")) == ["part one, part two", "v=spf1 -all"]


@pytest_twisted.ensureDeferred
async def test_truncated_udp_answer_is_retried_over_tcp(resolver, server):
    """A TXT record too big for a 512-byte UDP answer arrives whole, through the TCP retry."""
    before = server.queries.count(("big.example.test", "TXT"))
    assert await resolver.txt("big.example.test") == [LONG_TXT]
    assert server.queries.count(("big.example.test", "TXT")) == before + 2  # UDP, then TCP


@pytest_twisted.ensureDeferred
async def test_mx_sorted_by_preference(resolver):
    """mx() gives (preference, exchange) pairs, lowest preference first (RFC 5321 section 5.1)."""
    records = await resolver.mx("example.test")
    assert records == [(10, "mx1.example.test"), (20, "mx2.example.test")]
    assert not is_null_mx(records)


@pytest_twisted.ensureDeferred
async def test_null_mx(resolver):
    """An RFC 7505 null MX (`MX 0 .`) comes back as [(0, "")] and is_null_mx() says so."""
    records = await resolver.mx("nullmx.example.test")
    assert records == [(0, "")]
    assert is_null_mx(records)


@pytest_twisted.ensureDeferred
async def test_no_any_queries(resolver, server):
    """Lookups ask for the record type they need; nothing asks for ANY (RFC 8482)."""
    await resolver.mx("example.test")
    assert all(rtype not in ("ALL_RECORDS", "ANY") for _name, rtype in server.queries)
    assert ("example.test", "MX") in server.queries


@pytest_twisted.ensureDeferred
async def test_ptr_ipv4_and_ipv6(resolver):
    """ptr() builds the in-addr.arpa name, or the ip6.arpa nibble name, from an address."""
    assert sorted(await resolver.ptr("192.0.2.1")) == ["alias.example.test", "example.test"]
    assert await resolver.ptr("2001:db8::1") == ["example.test"]


@pytest_twisted.ensureDeferred
async def test_ptr_rejects_a_non_address(resolver):
    """ptr() of something that is not an IP address raises ValueError before any query."""
    with pytest.raises(ValueError):
        await resolver.ptr("example.test")


@pytest_twisted.ensureDeferred
async def test_cname_is_followed(resolver):
    """An A lookup of a CNAME gives the target's addresses."""
    assert await resolver.a("www.example.test") == ["192.0.2.1", "192.0.2.2"]


@pytest_twisted.ensureDeferred
async def test_trailing_dot_and_idn_names(resolver):
    """A trailing dot is accepted; a non-ASCII name is sent as its IDNA A-label."""
    assert await resolver.a("example.test.") == ["192.0.2.1", "192.0.2.2"]
    assert await resolver.a("bücher.example.test") == ["192.0.2.7"]


@pytest_twisted.ensureDeferred
async def test_nxdomain_raises_not_found(resolver):
    """A name that does not exist raises DnsNotFound (NXDOMAIN), for every lookup type."""
    for lookup in (resolver.a, resolver.aaaa, resolver.txt, resolver.mx):
        with pytest.raises(DnsNotFound) as info:
            await lookup("missing.example.test")
        assert info.value.name == "missing.example.test"
    with pytest.raises(DnsNotFound):
        await resolver.ptr("192.0.2.200")


@pytest_twisted.ensureDeferred
async def test_existing_name_without_records_is_empty(resolver):
    """A name that exists without records of the type asked is an empty list, not an error."""
    assert await resolver.a("txt-only.example.test") == []
    assert await resolver.mx("txt-only.example.test") == []
    assert await resolver.a("empty.example.test") == []


@pytest_twisted.ensureDeferred
async def test_servfail_and_refused_are_temporary(resolver):
    """SERVFAIL and REFUSED raise DnsTemporaryError, saying which."""
    with pytest.raises(DnsTemporaryError) as info:
        await resolver.a("servfail.example.test")
    assert info.value.reason == "SERVFAIL"
    with pytest.raises(DnsTemporaryError) as info:
        await resolver.txt("refused.example.test")
    assert info.value.reason == "REFUSED"


@pytest_twisted.ensureDeferred
async def test_timeout_is_short_and_does_not_block_the_reactor(resolver):
    """A name the server never answers raises DnsTemporaryError after about the configured
    timeout (not twisted.names' 60 s), while the reactor keeps running: a timer keeps ticking and
    another lookup is answered in the meantime."""
    ticks = []
    ticker = task.LoopingCall(lambda: ticks.append(time.monotonic()))
    ticker.start(0.05)
    start = time.monotonic()
    slow = defer.ensureDeferred(resolver.a("slow.example.test"))
    assert await resolver.a("example.test") == ["192.0.2.1", "192.0.2.2"]
    answered_meanwhile = time.monotonic() - start
    with pytest.raises(DnsTemporaryError) as info:
        await slow
    elapsed = time.monotonic() - start
    ticker.stop()
    assert info.value.reason == "timeout"
    assert answered_meanwhile < 0.2
    assert TIMEOUT_SECONDS * 0.9 <= elapsed < TIMEOUT_SECONDS + 0.5
    assert len(ticks) >= 7


@pytest_twisted.ensureDeferred
async def test_timeout_of_one_type_only(resolver):
    """A name whose AAAA never answers still answers A; the AAAA lookup is a temporary error."""
    assert await resolver.a("partly.example.test") == ["192.0.2.9"]
    with pytest.raises(DnsTemporaryError):
        await resolver.aaaa("partly.example.test")


@pytest_twisted.ensureDeferred
async def test_no_server_listening_is_temporary():
    """With nothing listening at the name server address, lookups fail as temporary errors
    within the timeout."""
    closed = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    port = closed.getHost().port
    await defer.maybeDeferred(closed.stopListening)
    r = Resolver([("127.0.0.1", port)], timeout=0.3)
    start = time.monotonic()
    try:
        with pytest.raises(DnsTemporaryError):
            await r.a("example.test")
    finally:
        r.close()
    assert time.monotonic() - start < 1.0


def test_default_resolver_reads_resolv_conf():
    """Without name servers the resolver uses /etc/resolv.conf and close() stops re-reading it."""
    r = Resolver(None, timeout=1.0)
    try:
        assert r._client.resolv == "/etc/resolv.conf"
        assert r._client.timeout == (1.0,)
    finally:
        r.close()
    assert not r._client._parseCall.active()
