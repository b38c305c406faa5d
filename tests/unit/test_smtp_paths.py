"""The MAIL/RCPT argument parser (`cloudmail.smtp.paths`): RFC 5321 4.1.2 paths and ESMTP
parameters, RFC 6531 UTF-8 addresses, and fuzzing that shows it never raises anything but
PathError."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cloudmail.smtp.paths import (
    MailPath,
    PathError,
    parse_mail_argument,
    parse_params,
    parse_path,
    parse_rcpt_argument,
)

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=10)
local_parts = st.lists(atoms, min_size=1, max_size=4).map(".".join).filter(lambda s: len(s) <= 64)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)


@pytest.mark.parametrize("text, address", [
    ("FROM:<alice@example.com>", "alice@example.com"),
    ("from:<alice@example.com>", "alice@example.com"),
    ("FROM: <alice@example.com>", "alice@example.com"),
    ("FROM:<>", ""),
    ("FROM:<@a.test,@b.test:alice@example.com>", "alice@example.com"),
    ('FROM:<"a b>c"@example.com>', '"a b>c"@example.com'),
    ('FROM:<"a\\"b"@example.com>', '"a\\"b"@example.com'),
    ("FROM:<root@[192.0.2.1]>", "root@[192.0.2.1]"),
    ("FROM:<root@[IPv6:2001:db8::1]>", "root@[IPv6:2001:db8::1]"),
    ("FROM:<jörg@bücher.example>", "jörg@bücher.example"),
])
def test_valid_reverse_paths(text, address):
    """RFC 5321 4.1.2 reverse paths, quoted local parts, address literals, a source route
    (dropped) and RFC 6531 UTF-8 addresses parse to the address as written."""
    assert parse_mail_argument(text).path.address == address


@pytest.mark.parametrize("text", [
    "FROM:alice@example.com", "FROM:<alice@example.com", "FROM:<alice>", "FROM:<@example.com>",
    "FROM:<alice@>", "FROM:<a..b@example.com>", "FROM:<.a@example.com>", "FROM:<a@b@example.com>",
    "FROM:<a@-example.com>", "FROM:<a@example..com>", "FROM:<a@[300.1.1.1]>",
    "FROM:<a@[IPv6:zz]>", 'FROM:<"open@example.com>', "FROM:<a@example.com>SIZE=1",
    "TO:<a@example.com>", "FROM:<" + "a" * 65 + "@example.com>",
    "FROM:<a@" + "b" * 250 + ".com>", "FROM:<a b@example.com>",
])
def test_invalid_reverse_paths(text):
    """Missing brackets, empty or doubled dots, bad domains and literals, unclosed quotes, a
    parameter glued to the path, and over-long local parts or domains are PathError."""
    with pytest.raises(PathError):
        parse_mail_argument(text)


def test_ascii_only_mode_refuses_utf8():
    """Without SMTPUTF8 semantics (`utf8=False`) a non-ASCII local part or domain is refused."""
    with pytest.raises(PathError):
        parse_path("<jörg@example.com>", utf8=False)
    with pytest.raises(PathError):
        parse_path("<a@bücher.example>", utf8=False)


def test_rcpt_postmaster_and_params():
    """`<Postmaster>` in any case is the local postmaster; parameters are split, upper-cased
    and a repeated one is refused."""
    assert parse_rcpt_argument("TO:<postMaster>").path == MailPath(local="Postmaster")
    parsed = parse_mail_argument("FROM:<a@b.test> size=10 SMTPUTF8 body=8BITMIME")
    assert parsed.params == {"SIZE": "10", "SMTPUTF8": None, "BODY": "8BITMIME"}
    with pytest.raises(PathError):
        parse_params("SIZE=1 size=2")
    with pytest.raises(PathError):
        parse_params("-BAD=1")
    with pytest.raises(PathError):
        parse_params("KEY=a=b")


@settings(max_examples=500)
@given(st.text(max_size=300))
@example("FROM:<\ud800@a.b>")
@example('FROM:<"\\')
@example("FROM:<@:>")
def test_fuzzed_mail_arguments_never_crash(text):
    """Any text at all either parses or raises PathError, in both modes."""
    for utf8 in (True, False):
        try:
            result = parse_mail_argument(text, utf8=utf8)
        except PathError:
            continue
        assert isinstance(result.path, MailPath)


@settings(max_examples=500)
@given(st.text(alphabet=st.sampled_from(list('<>@."\\:,[] =ab1-é\x00')), max_size=60))
def test_fuzzed_structural_characters_never_crash(text):
    """Inputs made of the grammar's structural characters either parse or raise PathError."""
    for parse in (parse_mail_argument, parse_rcpt_argument):
        for prefix in ("FROM:", "TO:"):
            try:
                parse(prefix + text)
            except PathError:
                pass


@given(local_parts, domains)
def test_generated_addresses_round_trip(local, domain):
    """Every RFC 5321 dot-string local part at an LDH domain parses back to itself, as MAIL
    and as RCPT."""
    mail = parse_mail_argument(f"FROM:<{local}@{domain}>")
    rcpt = parse_rcpt_argument(f"TO:<{local}@{domain}> ")
    assert mail.path.address == rcpt.path.address == f"{local}@{domain}"
    assert (mail.path.local, mail.path.domain) == (local, domain)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e,
                                      exclude_characters='"\\'), max_size=30), domains)
def test_quoted_local_parts_round_trip(content, domain):
    """Any printable ASCII (other than quote and backslash) inside quotes is a valid local
    part (RFC 5321 4.1.2 qtextSMTP) and comes back with its quotes."""
    local = f'"{content}"'
    if len(local) > 64:
        return
    path = parse_path(f"<{local}@{domain}>")
    assert path.quoted and path.address == f"{local}@{domain}"
