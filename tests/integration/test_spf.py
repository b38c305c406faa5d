"""SPF (RFC 7208) evaluated over the real `Resolver` against a loopback DNS server."""

from __future__ import annotations

import ipaddress

import pytest
import pytest_twisted

from cloudmail.dns import reverse_name
from cloudmail.policy.spf import _Evaluation, _PermError, check_spf, parse_record
from tests.dnsserver import SERVFAIL, TIMEOUT, resolver_for

ZONES = {
    "ip.test": {"TXT": ["v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all", "unrelated text"]},
    "soft.test": {"TXT": "v=spf1 ip4:192.0.2.1 ~all"},
    "neutral.test": {"TXT": "v=spf1 ip4:192.0.2.1"},
    "a.test": {"TXT": "v=spf1 a a:other.a.test/28 -all", "A": "198.51.100.1",
               "AAAA": "2001:db8:a::1"},
    "other.a.test": {"A": "203.0.113.5"},
    "mx.test": {"TXT": "v=spf1 mx -all", "MX": [(10, "mx1.mx.test"), (20, "mx2.mx.test")]},
    "mx1.mx.test": {"A": "198.51.100.10"},
    "mx2.mx.test": {"A": "198.51.100.20", "AAAA": "2001:db8:20::1"},
    "inc.test": {"TXT": "v=spf1 include:ip.test include:soft.test -all"},
    "redir.test": {"TXT": "v=spf1 redirect=ip.test"},
    "redir-none.test": {"TXT": "v=spf1 redirect=nospf.test"},
    "nospf.test": {"TXT": "just some text"},
    "two.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "bad.test": {"TXT": "v=spf1 ip4:192.0.2.1 foo:bar -all"},
    "badip.test": {"TXT": "v=spf1 ip4:300.1.1.1 -all"},
    "unknown-mod.test": {"TXT": "v=spf1 future=thing ip4:192.0.2.1 -all"},
    "late-error.test": {"TXT": "v=spf1 +all ip4:300.1.1.1"},
    "slow.test": TIMEOUT,
    "incslow.test": {"TXT": "v=spf1 include:slow.test -all"},
    "broken.test": SERVFAIL,
    "incnone.test": {"TXT": "v=spf1 include:nospf.test -all"},
    "exp.test": {"TXT": "v=spf1 -all exp=explain.exp.test"},
    "explain.exp.test": {"TXT": "%{i} is not one of %{d}'s senders (%{l})"},
    "exists.test": {"TXT": "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all"},
    "1.2.0.192.bob._spf.exists.test": {"A": "127.0.0.2"},
    "ptr.test": {"TXT": "v=spf1 ptr -all"},
    reverse_name("192.0.2.77"): {"PTR": ["host.ptr.test"]},
    "host.ptr.test": {"A": "192.0.2.77"},
    reverse_name("192.0.2.78"): {"PTR": ["host.ptr.test"]},
    "helo.test": {"TXT": "v=spf1 ip4:192.0.2.9 -all"},
    "void.test": {"TXT": "v=spf1 a:n1.void.test a:n2.void.test a:n3.void.test +all"},
    "loop.test": {"TXT": "v=spf1 include:loop.test -all"},
    "many.test": {"TXT": "v=spf1 " + " ".join(f"a:h{i}.many.test" for i in range(11))
                  + " -all"},
    **{f"h{i}.many.test": {"A": "203.0.113.99"} for i in range(11)},
}


@pytest.fixture(scope="module")
def resolver():
    """A resolver (0.5 s per query) pointed at a loopback server with ZONES."""
    yield from resolver_for(ZONES)


async def status(resolver, ip, mail_from, helo="mail.client.test"):
    return (await check_spf(resolver, ip, mail_from, helo)).status


@pytest_twisted.ensureDeferred
async def test_ip4_ip6_pass_and_fail(resolver):
    """ip4/ip6 mechanisms with prefixes pass a client inside; "-all" fails one outside,
    and the result names the checked domain and the matching term."""
    result = await check_spf(resolver, "192.0.2.55", "Alice@IP.test", "helo.client.test")
    assert (result.status, result.domain, result.identity, result.mechanism) == (
        "pass", "ip.test", "mailfrom", "ip4:192.0.2.0/24")
    assert await status(resolver, "2001:db8:1::5", "alice@ip.test") == "pass"
    failed = await check_spf(resolver, "203.0.113.1", "alice@ip.test", "x.test")
    assert (failed.status, failed.mechanism) == ("fail", "-all")


@pytest_twisted.ensureDeferred
async def test_ipv4_mapped_client_is_treated_as_ipv4(resolver):
    """An IPv4-mapped IPv6 client address is matched against ip4 (RFC 7208 section 5)."""
    assert await status(resolver, "::ffff:192.0.2.55", "a@ip.test") == "pass"


@pytest_twisted.ensureDeferred
async def test_softfail_and_neutral(resolver):
    """"~all" gives softfail; a record with no match and no "all" gives neutral (4.7)."""
    assert await status(resolver, "203.0.113.1", "a@soft.test") == "softfail"
    assert await status(resolver, "203.0.113.1", "a@neutral.test") == "neutral"


@pytest_twisted.ensureDeferred
async def test_a_mechanism_with_prefix(resolver):
    """"a" matches the domain's own addresses (AAAA for IPv6 clients) and "a:name/28" any
    address in the /28 around the named host."""
    assert await status(resolver, "198.51.100.1", "a@a.test") == "pass"
    assert await status(resolver, "2001:db8:a::1", "a@a.test") == "pass"
    assert await status(resolver, "203.0.113.14", "a@a.test") == "pass"
    assert await status(resolver, "203.0.113.16", "a@a.test") == "fail"


@pytest_twisted.ensureDeferred
async def test_mx_mechanism(resolver):
    """"mx" matches the addresses of every MX host of the domain."""
    assert await status(resolver, "198.51.100.20", "a@mx.test") == "pass"
    assert await status(resolver, "2001:db8:20::1", "a@mx.test") == "pass"
    assert await status(resolver, "198.51.100.30", "a@mx.test") == "fail"


@pytest_twisted.ensureDeferred
async def test_include_and_redirect(resolver):
    """include matches only on the included record's pass (a softfail there is no match);
    redirect takes the target's result (section 6.1)."""
    assert await status(resolver, "192.0.2.3", "a@inc.test") == "pass"
    assert await status(resolver, "203.0.113.1", "a@inc.test") == "fail"
    assert await status(resolver, "192.0.2.3", "a@redir.test") == "pass"
    assert await status(resolver, "203.0.113.1", "a@redir.test") == "fail"


@pytest_twisted.ensureDeferred
async def test_none_without_a_record(resolver):
    """No SPF record, an NXDOMAIN domain or an invalid name give "none" (section 4.3, 4.5)."""
    assert await status(resolver, "192.0.2.1", "a@nospf.test") == "none"
    assert await status(resolver, "192.0.2.1", "a@missing.test") == "none"
    assert await status(resolver, "192.0.2.1", "a@localhost") == "none"


@pytest_twisted.ensureDeferred
async def test_permerrors(resolver):
    """Two records, unknown mechanisms, bad addresses, include/redirect to a domain without a
    record, an include loop, more than 10 lookups and more than 2 void lookups are
    permerrors (sections 4.5, 4.6.4, 5.2, 6.1)."""
    for domain in ("two.test", "bad.test", "badip.test", "incnone.test", "redir-none.test",
                   "loop.test", "many.test", "void.test"):
        result = await check_spf(resolver, "192.0.2.1", f"a@{domain}", "x.test")
        assert result.status == "permerror", domain
        assert result.detail


@pytest_twisted.ensureDeferred
async def test_unknown_modifier_is_ignored(resolver):
    """An unknown modifier (name=value) is ignored, not an error (section 6)."""
    assert await status(resolver, "192.0.2.1", "a@unknown-mod.test") == "pass"


@pytest_twisted.ensureDeferred
async def test_temperrors(resolver):
    """A timeout or SERVFAIL on the record, or inside an include, is a temperror."""
    for domain in ("slow.test", "broken.test", "incslow.test"):
        result = await check_spf(resolver, "192.0.2.1", f"a@{domain}", "x.test")
        assert result.status == "temperror", domain
        assert result.detail


@pytest_twisted.ensureDeferred
async def test_null_sender_checks_helo(resolver):
    """For the null sender the HELO identity postmaster@helo is checked (section 2.4)."""
    result = await check_spf(resolver, "192.0.2.9", "", "helo.test")
    assert (result.status, result.domain, result.identity, result.sender) == (
        "pass", "helo.test", "helo", "postmaster@helo.test")
    assert (await check_spf(resolver, "192.0.2.10", "<>", "helo.test")).status == "fail"


@pytest_twisted.ensureDeferred
async def test_explanation_on_fail(resolver):
    """On fail the exp= TXT is fetched and its macros expanded (section 6.2)."""
    result = await check_spf(resolver, "192.0.2.200", "bob@exp.test", "x.test")
    assert result.status == "fail"
    assert result.explanation == "192.0.2.200 is not one of exp.test's senders (bob)"


@pytest_twisted.ensureDeferred
async def test_exists_with_macros(resolver):
    """exists: with %{ir} and %{l1r+-} macros (section 7) builds the right A query."""
    assert await status(resolver, "192.0.2.1", "bob@exists.test") == "pass"
    assert await status(resolver, "192.0.2.2", "bob@exists.test") == "fail"


@pytest_twisted.ensureDeferred
async def test_ptr_mechanism(resolver):
    """ptr matches a PTR name under the domain that resolves back to the client (5.5)."""
    assert await status(resolver, "192.0.2.77", "a@ptr.test") == "pass"
    assert await status(resolver, "192.0.2.78", "a@ptr.test") == "fail"


def test_rejects_non_ip():
    """A client address that is not an IP is a programming error: ValueError."""
    with pytest.raises(ValueError):
        check_spf(None, "nonsense", "a@b.test", "x.test").send(None)


RFC_7208_MACRO_EXAMPLES = [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%%%_%-", "% %20"),
]


@pytest.mark.parametrize(("spec", "expanded"), RFC_7208_MACRO_EXAMPLES)
def test_macro_expansion_rfc_examples(spec, expanded):
    """Macro expansion gives the results of the examples in RFC 7208 section 7.4."""
    evaluation = _Evaluation(None, ipaddress.ip_address("192.0.2.3"),
                             "strong-bad@email.example.com", "mx.example.org")
    assert evaluation.expand(spec, "email.example.com") == expanded


def test_macro_expansion_ipv6_and_errors():
    """%{i} of an IPv6 client is its nibbles (section 7.3); a bad macro, an exp-only letter
    outside exp, or a truncated macro is a permerror."""
    evaluation = _Evaluation(None, ipaddress.ip_address("2001:db8::cb01"),
                             "strong-bad@email.example.com", "mx.example.org")
    assert evaluation.expand("%{ir}.%{v}._spf.%{d2}", "email.example.com") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
    for spec in ("%{x}", "%{c}", "%{d0}", "a%", "%a"):
        with pytest.raises(_PermError):
            evaluation.expand(spec, "example.com")


@pytest.mark.parametrize("record", [
    "v=spf1 ip4:192.0.2.1/33", "v=spf1 ip6:2001:db8::/129", "v=spf1 ip4:2001:db8::1",
    "v=spf1 ip6:192.0.2.1", "v=spf1 all:x", "v=spf1 include", "v=spf1 a/40",
    "v=spf1 redirect=a.test redirect=b.test", "v=spf1 exists", "v=spf1 -ptr/24",
])
def test_record_syntax_errors(record):
    """Malformed terms make the whole record a permerror (RFC 7208 section 4.6, 12)."""
    with pytest.raises(_PermError):
        parse_record(record)


@pytest_twisted.ensureDeferred
async def test_syntax_error_after_a_match_is_still_permerror(resolver):
    """The whole record is parsed before evaluation: a bad term after "+all" still makes the
    result a permerror (section 4.6)."""
    result = await check_spf(resolver, "192.0.2.1", "a@late-error.test", "x.test")
    assert result.status == "permerror"
