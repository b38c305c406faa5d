"""DMARC evaluation (RFC 7489) with policy records on a loopback DNS server.

DMARC is a function of evidence: the SPF and DKIM results are built here directly (their own
checks are tested in test_spf.py and test_dkim.py), the records come from real DNS.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from cloudmail.policy.dkim import DkimResult
from cloudmail.policy.dmarc import (
    PublicSuffixList,
    check_dmarc,
    organizational_domain,
    parse_record,
)
from cloudmail.policy.spf import SpfResult
from tests.dnsserver import SERVFAIL, TIMEOUT, resolver_for

ZONES = {
    "_dmarc.reject.test": {"TXT": "v=DMARC1; p=reject; sp=quarantine; pct=50; "
                                  "rua=mailto:d@reject.test"},
    "_dmarc.quarantine.test": {"TXT": "v=DMARC1; p=quarantine"},
    "_dmarc.monitor.test": {"TXT": "v=DMARC1; p=none"},
    "_dmarc.strict.test": {"TXT": "v=DMARC1; p=reject; adkim=s; aspf=s"},
    "_dmarc.nosp.test": {"TXT": "v=DMARC1; p=reject"},
    "_dmarc.two.test": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]},
    "_dmarc.bad.test": {"TXT": "v=DMARC1; p=bogus"},
    "_dmarc.badrua.test": {"TXT": "v=DMARC1; p=bogus; rua=mailto:x@badrua.test"},
    "_dmarc.other.test": {"TXT": ["some other text", "v=spf1 -all"]},
    "_dmarc.slow.test": TIMEOUT,
    "_dmarc.broken.test": SERVFAIL,
}


@pytest.fixture(scope="module")
def resolver():
    """A resolver (0.5 s per query) pointed at a loopback server with the DMARC records."""
    yield from resolver_for(ZONES)


def spf(status: str, domain: str) -> SpfResult:
    return SpfResult(status, domain, "mailfrom", f"bounce@{domain}", "192.0.2.1")  # type: ignore


def dkim(status: str, domain: str) -> DkimResult:
    return DkimResult(status, domain, "sel")  # type: ignore[arg-type]


NO_DKIM = [DkimResult("none")]


def always(pct: int) -> bool:
    return True


def never(pct: int) -> bool:
    return False


@pytest_twisted.ensureDeferred
async def test_aligned_dkim_passes(resolver):
    """A passing DKIM signature of the From: domain passes DMARC, whatever SPF says."""
    result = await check_dmarc(resolver, "reject.test", spf("fail", "evil.test"),
                               [dkim("pass", "reject.test")])
    assert (result.status, result.disposition, result.dkim_domain, result.policy) == (
        "pass", "none", "reject.test", "reject")


@pytest_twisted.ensureDeferred
async def test_relaxed_alignment_with_subdomains(resolver):
    """Relaxed alignment (the default) accepts identifiers under the same organizational
    domain, in either direction (RFC 7489 section 3.1)."""
    result = await check_dmarc(resolver, "quarantine.test", spf("pass", "bounces.quarantine.test"),
                               NO_DKIM)
    assert (result.status, result.spf_domain) == ("pass", "bounces.quarantine.test")
    result = await check_dmarc(resolver, "quarantine.test", None,
                               [dkim("pass", "mail.quarantine.test")])
    assert result.status == "pass"


@pytest_twisted.ensureDeferred
async def test_strict_alignment(resolver):
    """adkim=s / aspf=s need the exact From: domain; a subdomain identifier fails."""
    result = await check_dmarc(resolver, "strict.test", spf("pass", "mail.strict.test"),
                               [dkim("pass", "mail.strict.test")], sample=always)
    assert (result.status, result.disposition) == ("fail", "reject")
    result = await check_dmarc(resolver, "strict.test", spf("pass", "strict.test"), NO_DKIM)
    assert result.status == "pass"


@pytest_twisted.ensureDeferred
async def test_unaligned_passes_fail_with_policy(resolver):
    """SPF and DKIM passes for other domains do not count: DMARC fails and the disposition
    is the policy (p=quarantine here)."""
    result = await check_dmarc(resolver, "quarantine.test", spf("pass", "evil.test"),
                               [dkim("pass", "evil.test"), dkim("fail", "quarantine.test")],
                               sample=always)
    assert (result.status, result.disposition, result.policy_domain) == (
        "fail", "quarantine", "quarantine.test")


@pytest_twisted.ensureDeferred
async def test_p_none_is_monitoring_only(resolver):
    """p=none fails without any disposition."""
    result = await check_dmarc(resolver, "monitor.test", spf("fail", "monitor.test"), NO_DKIM)
    assert (result.status, result.disposition, result.policy) == ("fail", "none", "none")


@pytest_twisted.ensureDeferred
async def test_pct_sampling_lowers_disposition(resolver):
    """A message outside the pct= sample gets the next milder disposition (section 6.6.4):
    reject → quarantine; the hook receives the record's pct."""
    seen = []

    def outside(pct: int) -> bool:
        seen.append(pct)
        return False

    result = await check_dmarc(resolver, "reject.test", None, NO_DKIM, sample=outside)
    assert (result.status, result.disposition, result.sampled, seen) == (
        "fail", "quarantine", False, [50])
    result = await check_dmarc(resolver, "reject.test", None, NO_DKIM, sample=always)
    assert (result.disposition, result.sampled) == ("reject", True)


@pytest_twisted.ensureDeferred
async def test_organizational_domain_record_and_sp(resolver):
    """Without a record at the From: domain, the organizational domain's is used, with its
    sp= policy when it has one, else p= (section 6.6.3, 6.3)."""
    result = await check_dmarc(resolver, "news.reject.test", None, NO_DKIM, sample=always)
    assert (result.status, result.policy_domain, result.policy, result.disposition) == (
        "fail", "reject.test", "quarantine", "quarantine")
    result = await check_dmarc(resolver, "a.b.nosp.test", None, NO_DKIM, sample=always)
    assert (result.policy_domain, result.disposition) == ("nosp.test", "reject")


@pytest_twisted.ensureDeferred
async def test_no_record_is_none(resolver):
    """No record (NXDOMAIN, or only non-DMARC TXT) at either level gives "none"; so do two
    records (discovery stops, section 6.6.3)."""
    for domain in ("nothing.test", "other.test", "sub.other.test", "two.test"):
        result = await check_dmarc(resolver, domain, spf("fail", domain), NO_DKIM)
        assert (result.status, result.disposition) == ("none", "none"), domain


@pytest_twisted.ensureDeferred
async def test_lookup_failures_are_temperror(resolver):
    """A timeout or SERVFAIL on the record lookup is a temperror with no disposition."""
    for domain in ("slow.test", "broken.test"):
        result = await check_dmarc(resolver, domain, None, NO_DKIM)
        assert (result.status, result.disposition) == ("temperror", "none"), domain


@pytest_twisted.ensureDeferred
async def test_aligned_temperror_is_not_a_fail(resolver):
    """With no aligned pass, an aligned DKIM or SPF temperror makes DMARC a temperror, so a
    DNS timeout never gets mail rejected."""
    result = await check_dmarc(resolver, "nosp.test", spf("fail", "nosp.test"),
                               [dkim("temperror", "nosp.test")], sample=always)
    assert (result.status, result.disposition) == ("temperror", "none")
    result = await check_dmarc(resolver, "nosp.test", spf("temperror", "nosp.test"), NO_DKIM)
    assert result.status == "temperror"


@pytest_twisted.ensureDeferred
async def test_invalid_policy(resolver):
    """An invalid p= without rua= is a permerror; with rua= it reads as p=none (6.6.3)."""
    result = await check_dmarc(resolver, "bad.test", None, NO_DKIM)
    assert (result.status, result.disposition) == ("permerror", "none")
    result = await check_dmarc(resolver, "badrua.test", None, NO_DKIM)
    assert (result.status, result.policy, result.disposition) == ("fail", "none", "none")


@pytest_twisted.ensureDeferred
async def test_no_from_domain_is_permerror(resolver):
    """A From: without a usable domain cannot be evaluated: permerror."""
    assert (await check_dmarc(resolver, "", None, NO_DKIM)).status == "permerror"


def test_record_parsing_defaults():
    """Tags are case-insensitive in name, whitespace-tolerant; bad optional values fall back
    to defaults; unknown tags are ignored; v=DMARC1 must come first."""
    record = parse_record("v=DMARC1;P=Reject ; adkim=x; pct=abc; fo=1; rua=mailto:a@b.test")
    assert not isinstance(record, str)
    assert (record.policy, record.adkim, record.aspf, record.pct, record.rua) == (
        "reject", "r", "r", 100, ("mailto:a@b.test",))
    assert isinstance(parse_record("p=reject; v=DMARC1"), str)


def test_organizational_domain():
    """Organizational domains follow the Public Suffix List: normal, wildcard and exception
    rules; a name that is itself a public suffix is its own organizational domain."""
    psl = PublicSuffixList("// comment\ncom\nco.uk\n*.kawasaki.jp\n!city.kawasaki.jp\n")
    assert organizational_domain("a.b.example.com", psl) == "example.com"
    assert organizational_domain("mail.example.co.uk", psl) == "example.co.uk"
    assert organizational_domain("x.y.z.kawasaki.jp", psl) == "y.z.kawasaki.jp"
    assert organizational_domain("www.city.kawasaki.jp", psl) == "city.kawasaki.jp"
    assert organizational_domain("co.uk", psl) == "co.uk"
    assert organizational_domain("Mail.Example.TEST.", psl) == "example.test"
