"""Building and stripping Authentication-Results header fields (RFC 8601)."""

from __future__ import annotations

import email.parser
import email.policy

from hypothesis import given
from hypothesis import strategies as st

from cloudmail.policy.authresults import (
    authserv_id,
    build_authentication_results,
    strip_our_results,
)
from cloudmail.policy.dkim import DkimResult
from cloudmail.policy.dmarc import DmarcResult
from cloudmail.policy.iprev import IprevResult
from cloudmail.policy.spf import SpfResult

HOST = "mx.example.org"

SPF_PASS = SpfResult("pass", "example.com", "mailfrom", "alice@example.com", "192.0.2.1")
DKIM_PASS = DkimResult("pass", "example.com", "sel", "signature verified", "@example.com",
                       "AbCd+/12", "rsa-sha256")
DMARC_PASS = DmarcResult("pass", "example.com", policy="reject", disposition="none")
IPREV_PASS = IprevResult("192.0.2.1", "pass", name="mail.example.com")


def test_full_header():
    """All four methods, one per folded line, with their registered properties; the field
    ends in CRLF and every line is a continuation of the first."""
    header = build_authentication_results(HOST, iprev=IPREV_PASS, spf=SPF_PASS,
                                          dkim=[DKIM_PASS], dmarc=DMARC_PASS)
    assert header == (
        b"Authentication-Results: mx.example.org;\r\n"
        b"\tiprev=pass policy.iprev=192.0.2.1 (mail.example.com);\r\n"
        b"\tspf=pass smtp.mailfrom=alice@example.com;\r\n"
        b"\tdkim=pass header.d=example.com header.i=@example.com header.s=sel"
        b" header.a=rsa-sha256 header.b=\"AbCd+/12\";\r\n"
        b"\tdmarc=pass (p=reject dis=none) header.from=example.com\r\n")


def test_no_results_is_none():
    """With nothing to report the field says `none` (RFC 8601 section 2.2)."""
    assert build_authentication_results(HOST) == (
        b"Authentication-Results: mx.example.org; none\r\n")


def test_null_sender_spf_uses_helo():
    """An SPF result for the null sender reports smtp.helo, not smtp.mailfrom."""
    spf = SpfResult("softfail", "helo.example.net", "helo", "postmaster@helo.example.net",
                    "192.0.2.1")
    header = build_authentication_results(HOST, spf=spf)
    assert b"spf=softfail smtp.helo=helo.example.net\r\n" in header


def test_errors_carry_a_quoted_reason():
    """temperror/permerror/fail results carry reason="…", with quotes, backslashes and
    control characters made harmless; comments escape parentheses."""
    spf = SpfResult("permerror", "example.com", "mailfrom", "a@example.com", "192.0.2.1",
                    detail='bad "term" \\ here\r\nInjected: yes')
    dkim = DkimResult("fail", "example.com", "sel", "body hash mismatch")
    iprev = IprevResult("2001:db8::1", "fail", ptr_names=("evil (x).example",))
    header = build_authentication_results(HOST, spf=spf, dkim=[dkim], iprev=iprev)
    assert b'spf=permerror reason="bad \\"term\\" \\\\ here  Injected: yes"' in header
    assert b'dkim=fail reason="body hash mismatch" header.d=example.com' in header
    assert b'iprev=fail policy.iprev="2001:db8::1" (evil \\(x\\).example)' in header
    assert header.count(b"\r\n") == 4 and b"\r\nInjected" not in header


def test_odd_sender_is_quoted():
    """A MAIL FROM local part that is not a dot-atom is given as a quoted-string."""
    spf = SpfResult("pass", "example.com", "mailfrom", '"john doe"@example.com', "192.0.2.1")
    header = build_authentication_results(HOST, spf=spf)
    assert b'smtp.mailfrom="\\"john doe\\"@example.com"' in header


def test_dmarc_fail_shows_policy_and_disposition():
    """A DMARC fail shows the policy and the disposition taken in a comment."""
    dmarc = DmarcResult("fail", "example.com", policy="reject", disposition="quarantine")
    header = build_authentication_results(HOST, dmarc=dmarc)
    assert b"dmarc=fail (p=reject dis=quarantine) header.from=example.com\r\n" in header


def test_one_resinfo_per_dkim_signature():
    """Every DKIM result gets its own resinfo, "none" for an unsigned message."""
    header = build_authentication_results(HOST, dkim=[DKIM_PASS, DkimResult(
        "permerror", "other.example", "s2", "no key")])
    assert header.count(b"dkim=") == 2
    assert build_authentication_results(HOST, dkim=[DkimResult("none")]) == (
        b"Authentication-Results: mx.example.org;\r\n\tdkim=none\r\n")


def test_stdlib_parser_reads_it():
    """The built field parses as one header of a message with Python's email package."""
    header = build_authentication_results(HOST, iprev=IPREV_PASS, spf=SPF_PASS,
                                          dkim=[DKIM_PASS], dmarc=DMARC_PASS)
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        header + b"Subject: x\r\n\r\nbody\r\n")
    assert message["Subject"] == "x"
    assert str(message["Authentication-Results"]).startswith("mx.example.org;")


def test_strip_removes_only_ours():
    """Fields claiming our hostname (any case, trailing dot, after a comment, quoted,
    folded) are removed; other authserv-ids and other fields stay byte for byte."""
    lines = [
        b"Received: from a by b\r\n",
        b"Authentication-Results: MX.Example.ORG; spf=pass smtp.mailfrom=x@evil.test\r\n",
        b"Authentication-Results: other.example; dkim=pass\r\n",
        b"authentication-results :\r\n",
        b"\t(forged) mx.example.org.;\r\n",
        b"\tdkim=pass header.d=bank.test\r\n",
        b"Authentication-Results: \"mx.example.org\" 1; none\r\n",
        b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass\r\n",
        b"Authentication-Results: mx.example.org.evil.test; none\r\n",
        b"Subject: hi\r\n",
        b" continued\r\n",
    ]
    assert strip_our_results(lines, "mx.example.org") == [
        lines[0], lines[2], lines[7], lines[8], lines[9], lines[10]]


def test_authserv_id_parsing():
    """The authserv-id comes after optional comments; a missing one is None."""
    assert authserv_id(b"Authentication-Results: (a (nested) comment) Host.Test; none") == (
        "host.test")
    assert authserv_id(b"Authentication-Results: host.test 1;spf=pass") == "host.test"
    assert authserv_id(b"Authentication-Results:   ") is None
    assert authserv_id(b"Subject: host.test") is None


@given(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True))
def test_built_header_is_stripped_by_its_own_host(hostname):
    """Whatever our hostname, the field we build names it as authserv-id, so a copy of it in
    an incoming message is stripped."""
    header = build_authentication_results(hostname, spf=SPF_PASS, dkim=[DKIM_PASS])
    assert authserv_id(header) == hostname
    lines = header.splitlines(keepends=True)
    assert strip_our_results(lines + [b"To: x\r\n"], hostname.upper()) == [b"To: x\r\n"]


@given(st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\r\n", b"") + b"\r\n"),
                max_size=10))
def test_strip_never_loses_other_lines(lines):
    """Stripping only ever removes whole Authentication-Results fields: every kept line is an
    input line, in order, and nothing without that field name disappears."""
    kept = strip_our_results(lines, HOST)
    iterator = iter(lines)
    assert all(any(line == other for other in iterator) for line in kept)
    if not any(b"authentication-results" in line.lower() for line in lines):
        assert kept == lines
