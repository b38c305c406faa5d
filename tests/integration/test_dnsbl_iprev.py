"""DNSBL (RFC 5782) and iprev (RFC 8601 section 3) checks against a real loopback DNS server.

The checks get the resolver as an argument, as mox's do; here it is the real `Resolver` talking
to `tests.dnsserver.DnsServer` with a 0.5 s timeout.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted

from cloudmail.dns import reverse_name
from cloudmail.policy.dnsbl import check_dnsbl, dnsbl_name
from cloudmail.policy.iprev import check_iprev
from tests.dnsserver import SERVFAIL, TIMEOUT, resolver_for

LISTED = "192.0.2.99"
CLEAN = "192.0.2.1"
LISTED6 = "2001:db8::99"
REASON = "Listed: see https://bl.test/lookup?ip=192.0.2.99"

ZONES = {
    # DNSBLs: bl.test lists LISTED with a reason, bl2.test without one, with two codes
    dnsbl_name(LISTED, "bl.test"): {"A": "127.0.0.2", "TXT": REASON},
    dnsbl_name(LISTED, "bl2.test"): {"A": ["127.0.0.4", "127.0.0.10"]},
    dnsbl_name(LISTED6, "bl.test"): {"A": "127.0.0.3", "TXT": "IPv6 listed"},
    dnsbl_name(LISTED, "slow.bl.test"): TIMEOUT,
    dnsbl_name(LISTED, "slow2.bl.test"): TIMEOUT,
    dnsbl_name(LISTED, "broken.bl.test"): SERVFAIL,
    dnsbl_name(LISTED, "refusing.bl.test"): {"A": "127.255.255.254"},
    dnsbl_name(LISTED, "wildcard.bl.test"): {"A": "198.51.100.1"},
    # iprev
    reverse_name("192.0.2.10"): {"PTR": "mail.good.test"},
    "mail.good.test": {"A": ["192.0.2.50", "192.0.2.10", "192.0.2.12"]},
    reverse_name("2001:db8::10"): {"PTR": "mail6.good.test"},
    "mail6.good.test": {"AAAA": "2001:db8::10"},
    reverse_name("192.0.2.12"): {"PTR": ["other.good.test", "gone.good.test", "mail.good.test"]},
    "other.good.test": {"A": "192.0.2.77"},
    reverse_name("192.0.2.13"): {"PTR": ["other.good.test", "gone.good.test", "txt.good.test"]},
    "txt.good.test": {"TXT": "no addresses here"},
    reverse_name("192.0.2.14"): TIMEOUT,
    reverse_name("192.0.2.15"): {"PTR": ["broken.good.test", "other.good.test"]},
    "broken.good.test": SERVFAIL,
    reverse_name("192.0.2.16"): {"PTR": ["broken.good.test", "mail16.good.test"]},
    "mail16.good.test": {"A": "192.0.2.16"},
    reverse_name("192.0.2.17"): {},
}


@pytest.fixture(scope="module")
def resolver():
    """A resolver (0.5 s per query) pointed at a loopback server with ZONES."""
    yield from resolver_for(ZONES)


# --- DNSBL ---------------------------------------------------------------------------------------

def test_dnsbl_query_names():
    """Query names reverse the octets (RFC 5782 section 2.1) or the nibbles (section 2.4, with
    its own example); an IPv4-mapped IPv6 address is asked as IPv4."""
    assert dnsbl_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert dnsbl_name("2001:db8:1:2:3:4:567:89ab", "ugly.example.com.") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com")
    assert dnsbl_name("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"


@pytest_twisted.ensureDeferred
async def test_dnsbl_listed_with_reason(resolver):
    """A listed IP gives status "listed" with the returned code and the zone's TXT reason."""
    result = await check_dnsbl(resolver, LISTED, ["bl.test"])
    assert result.is_listed
    (zone,) = result.listed
    assert (zone.zone, zone.status, zone.codes, zone.reason) == (
        "bl.test", "listed", ("127.0.0.2",), REASON)


@pytest_twisted.ensureDeferred
async def test_dnsbl_listed_without_reason(resolver):
    """A listing without a TXT record has every code and no reason."""
    result = await check_dnsbl(resolver, LISTED, ["bl2.test"])
    (zone,) = result.listed
    assert sorted(zone.codes) == ["127.0.0.10", "127.0.0.4"]
    assert zone.reason is None


@pytest_twisted.ensureDeferred
async def test_dnsbl_not_listed(resolver):
    """An IP the zone does not know (NXDOMAIN) is "notlisted"."""
    result = await check_dnsbl(resolver, CLEAN, ["bl.test", "bl2.test"])
    assert not result.is_listed
    assert [z.status for z in result.zones] == ["notlisted", "notlisted"]


@pytest_twisted.ensureDeferred
async def test_dnsbl_ipv6_nibble_name(resolver):
    """An IPv6 client is looked up by its nibble name (RFC 5782 section 2.4)."""
    result = await check_dnsbl(resolver, LISTED6, ["bl.test"])
    (zone,) = result.listed
    assert zone.codes == ("127.0.0.3",)
    assert zone.reason == "IPv6 listed"


@pytest_twisted.ensureDeferred
async def test_dnsbl_temperror_never_listed(resolver):
    """A zone that times out or fails is "temperror" and never counts as listed: a DNS timeout
    never rejects mail."""
    result = await check_dnsbl(resolver, LISTED, ["slow.bl.test", "broken.bl.test"])
    assert not result.is_listed
    assert [z.status for z in result.zones] == ["temperror", "temperror"]
    assert [z.zone for z in result.temperrors] == ["slow.bl.test", "broken.bl.test"]
    assert "timeout" in result.zones[0].detail and "SERVFAIL" in result.zones[1].detail


@pytest_twisted.ensureDeferred
async def test_dnsbl_unusable_codes_are_not_listings(resolver):
    """Codes outside 127.0.0.0/8 (a wildcarded zone) or in 127.255.255.0/24 (the list refusing
    the query) are status "error", never listed (RFC 5782 section 2.1)."""
    result = await check_dnsbl(resolver, LISTED, ["refusing.bl.test", "wildcard.bl.test"])
    assert not result.is_listed
    assert [(z.status, z.codes) for z in result.zones] == [
        ("error", ("127.255.255.254",)), ("error", ("198.51.100.1",))]


@pytest_twisted.ensureDeferred
async def test_dnsbl_zones_asked_concurrently(resolver):
    """Several zones are asked at once: two zones that each time out after 0.5 s cost 0.5 s, not
    1 s; every zone gets its own result, in the order given, each zone once."""
    zones = ["bl.test", "slow.bl.test", "bl2.test", "slow2.bl.test", "BL.test.", "clean.test"]
    start = time.monotonic()
    result = await check_dnsbl(resolver, LISTED, zones)
    elapsed = time.monotonic() - start
    assert elapsed < 0.9
    assert [(z.zone, z.status) for z in result.zones] == [
        ("bl.test", "listed"), ("slow.bl.test", "temperror"), ("bl2.test", "listed"),
        ("slow2.bl.test", "temperror"), ("clean.test", "notlisted")]
    assert [z.zone for z in result.listed] == ["bl.test", "bl2.test"]


@pytest_twisted.ensureDeferred
async def test_dnsbl_rejects_a_non_address(resolver):
    """check_dnsbl() of something that is not an IP address raises ValueError."""
    with pytest.raises(ValueError):
        await check_dnsbl(resolver, "mail.example.test", ["bl.test"])


# --- iprev ---------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_iprev_pass(resolver):
    """A PTR name whose A records include the IP confirms it: "pass" with that name."""
    result = await check_iprev(resolver, "192.0.2.10")
    assert (result.status, result.name, result.ptr_names) == (
        "pass", "mail.good.test", ("mail.good.test",))
    assert result.confirmed


@pytest_twisted.ensureDeferred
async def test_iprev_pass_ipv6(resolver):
    """An IPv6 client is confirmed through its ip6.arpa PTR name and AAAA records."""
    result = await check_iprev(resolver, "2001:db8::10")
    assert (result.status, result.name) == ("pass", "mail6.good.test")


@pytest_twisted.ensureDeferred
async def test_iprev_pass_on_any_ptr_name(resolver):
    """With several PTR names, one that maps back is enough, whatever the others do."""
    result = await check_iprev(resolver, "192.0.2.12")
    assert (result.status, result.name) == ("pass", "mail.good.test")
    result = await check_iprev(resolver, "192.0.2.16")
    assert (result.status, result.name) == ("pass", "mail16.good.test")


@pytest_twisted.ensureDeferred
async def test_iprev_no_ptr_is_permerror(resolver):
    """An IP without PTR data (NXDOMAIN or an empty answer) is "permerror", as RFC 8601
    section 3 classes "no PTR data are available"; it is not confirmed."""
    for ip in ("192.0.2.11", "192.0.2.17"):
        result = await check_iprev(resolver, ip)
        assert (result.status, result.name, result.ptr_names) == ("permerror", None, ())
        assert not result.confirmed


@pytest_twisted.ensureDeferred
async def test_iprev_fail_when_no_name_maps_back(resolver):
    """PTR names that resolve elsewhere, do not exist, or have no A records give "fail"."""
    result = await check_iprev(resolver, "192.0.2.13")
    assert result.status == "fail"
    assert result.name is None
    assert result.ptr_names == ("other.good.test", "gone.good.test", "txt.good.test")


@pytest_twisted.ensureDeferred
async def test_iprev_temperror_on_ptr_timeout(resolver):
    """A PTR lookup that times out is "temperror", after about the timeout."""
    start = time.monotonic()
    result = await check_iprev(resolver, "192.0.2.14")
    assert result.status == "temperror"
    assert "timeout" in result.detail
    assert time.monotonic() - start < 1.0


@pytest_twisted.ensureDeferred
async def test_iprev_temperror_on_forward_failure(resolver):
    """When no name confirms the IP and a forward lookup failed temporarily, the answer might
    have been "pass": "temperror", not "fail"."""
    result = await check_iprev(resolver, "192.0.2.15")
    assert result.status == "temperror"
    assert "SERVFAIL" in result.detail
