"""IMAP response syntax (`cloudmail.imap.format`): strings quoted only when that is lossless,
literals otherwise, atoms for mailbox names, and the two RFC 3501 date forms."""

from __future__ import annotations

import locale
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudmail.imap.format import (
    astring,
    format_internaldate,
    nstring,
    parse_internaldate,
    parse_search_date,
    plist,
    string,
)


def test_plain_text_is_quoted_with_escapes():
    """7-bit text is a quoted string; `"` and `\\` are escaped with a backslash."""
    assert string(b"hello world") == b'"hello world"'
    assert string('say "hi" \\ bye') == b'"say \\"hi\\" \\\\ bye"'
    assert string(b"") == b'""'


@pytest.mark.parametrize("value", [b"a\r\nb", b"a\nb", b"a\rb", b"nul\x00", b"caf\xc3\xa9"])
def test_unsafe_bytes_go_out_as_a_literal(value):
    """CR, LF, NUL and 8-bit bytes cannot be quoted: the value becomes `{n}` CRLF + the bytes."""
    assert string(value) == b"{%d}\r\n" % len(value) + value


def test_str_is_utf8_and_long_values_are_literals():
    """A str is sent as UTF-8 (so non-ASCII text is a literal); over 1000 bytes is a literal."""
    assert string("café") == b"{5}\r\ncaf\xc3\xa9"
    assert string(b"x" * 1000) == b'"' + b"x" * 1000 + b'"'
    assert string(b"x" * 1001).startswith(b"{1001}\r\n")


def test_nstring_and_plist():
    """None is NIL, anything else a string; lists are parenthesized, the empty one is `()`."""
    assert nstring(None) == b"NIL"
    assert nstring("NIL") == b'"NIL"'
    assert plist([b"a", b'"b"', b"NIL"]) == b'(a "b" NIL)'
    assert plist([]) == b"()"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("INBOX", b"INBOX"),
        ("Sent.2024[old]", b'"Sent.2024[old]"'),
        ("Mes dossiers", b'"Mes dossiers"'),
        ("a*b", b'"a*b"'),
        ("a%b", b'"a%b"'),
        ("", b'""'),
        ("NIL", b'"NIL"'),
        ("nil", b'"nil"'),
        ("Brouillons&AOk-", b"Brouillons&AOk-"),
        ("Entw\u00fcrfe", b"{9}\r\nEntw\xc3\xbcrfe"),
    ],
)
def test_astring(name, expected):
    """A mailbox name is a bare atom when it is one (not empty, not NIL), else a string."""
    assert astring(name) == expected


def test_internaldate_format():
    """date-time is quoted, the day space-padded, the zone numeric (RFC 3501 9)."""
    plus_two = timezone(timedelta(hours=2))
    assert format_internaldate(datetime(2026, 11, 25, 12, 0, tzinfo=UTC)) == (
        b'"25-Nov-2026 12:00:00 +0000"'
    )
    assert format_internaldate(datetime(2026, 3, 5, 8, 4, 9, tzinfo=plus_two)) == (
        b'" 5-Mar-2026 08:04:09 +0200"'
    )
    minus = timezone(-timedelta(hours=3, minutes=30))
    assert format_internaldate(datetime(2026, 1, 1, tzinfo=minus)).endswith(b' -0330"')


def test_internaldate_naive_is_utc():
    """A naive datetime is taken as UTC."""
    assert format_internaldate(datetime(2026, 1, 9, 1, 2, 3)) == b'" 9-Jan-2026 01:02:03 +0000"'


def test_internaldate_month_names_ignore_the_locale():
    """The month names are the English ones even when the process locale is not English."""
    for name in ("de_DE.UTF-8", "fr_FR.UTF-8"):
        try:
            previous = locale.setlocale(locale.LC_TIME, name)
        except locale.Error:
            continue
        try:
            assert b"-Dec-" in format_internaldate(datetime(2026, 12, 1, tzinfo=UTC))
        finally:
            locale.setlocale(locale.LC_TIME, previous)


@pytest.mark.parametrize("day", ["5", "05", " 5"])
def test_parse_internaldate_day_forms(day):
    """APPEND's date-time is read with the day written `5`, `05` or ` 5`."""
    parsed = parse_internaldate(f"{day}-feb-2026 23:59:58 -0130")
    assert parsed == datetime(2026, 2, 5, 23, 59, 58, tzinfo=timezone(-timedelta(minutes=90)))
    assert parsed.utcoffset() == -timedelta(minutes=90)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5-Feb-2026",
        "31-Feb-2026 00:00:00 +0000",
        "05-Foo-2026 00:00:00 +0000",
        "05-Feb-2026 24:00:00 +0000",
        "05-Feb-2026 00:00:00 +0060",
        "05-Feb-2026 00:00:00 0000",
        "05-Feb-26 00:00:00 +0000",
        '"05-Feb-2026 00:00:00 +0000"',
        "\u0665-Feb-2026 00:00:00 +0000",
    ],
)
def test_parse_internaldate_rejects(text):
    """Anything but a valid date-time raises ValueError."""
    with pytest.raises(ValueError):
        parse_internaldate(text)


ZONES = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@given(st.datetimes(min_value=datetime(1000, 1, 1), timezones=ZONES))
def test_internaldate_round_trip(when):
    """Formatting then parsing gives back the same instant and zone, to the second."""
    parsed = parse_internaldate(format_internaldate(when).decode("ascii").strip('"'))
    assert parsed == when.replace(microsecond=0)
    assert parsed.utcoffset() == when.utcoffset()


def test_parse_search_date():
    """SEARCH dates take a day of one or two digits and any case of month name."""
    assert parse_search_date("1-Feb-1994") == date(1994, 2, 1)
    assert parse_search_date("01-FEB-1994") == date(1994, 2, 1)
    assert parse_search_date("28-dec-2030") == date(2030, 12, 28)


@pytest.mark.parametrize("text", ["", "1-Feb-94", "32-Jan-2000", "1 Feb 1994", "001-Feb-1994"])
def test_parse_search_date_rejects(text):
    """A malformed or impossible date raises ValueError."""
    with pytest.raises(ValueError):
        parse_search_date(text)
