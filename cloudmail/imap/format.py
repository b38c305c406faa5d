"""Values written in IMAP response syntax, and the IMAP date forms read back.

RFC 3501 4 (RFC 9051 4) defines the data formats a server sends: atoms, quoted strings, literals,
`NIL` and parenthesized lists. A quoted string cannot carry CR, LF or NUL (RFC 3501 9: `QUOTED-CHAR`
is a 7-bit `TEXT-CHAR`), so anything else goes out as a literal `{n}` CRLF followed by the bytes
exactly; that keeps every value, 8-bit header text included, byte for byte what was stored.

RFC 3501 9 also fixes the two date forms: `date-time` (INTERNALDATE and APPEND, with a day that
is space-padded to two characters and a numeric zone) and `date` (SEARCH BEFORE/ON/SINCE, a day
of one or two digits and no time). Month names are the English ones whatever the locale, and
compare case-insensitively on input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, timezone

#: A longer value goes out as a literal even when it could be quoted (keeps response lines short).
QUOTED_LIMIT = 1000

NIL = b"NIL"

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBERS = {name.upper(): number for number, name in enumerate(_MONTHS, 1)}

_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
#: RFC 3501 9 ATOM-CHAR: CHAR except atom-specials `(){ %*"\]`, SP and CTL.
_ATOM = re.compile(r"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c-\x7e]+")
_DATE_TIME = re.compile(
    r" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"
)
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")


def string(value: bytes | str) -> bytes:
    """`value` as an IMAP string: quoted when it is short 7-bit text without CR, LF or NUL,
    else a literal. A `str` is sent as UTF-8."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if len(value) <= QUOTED_LIMIT and _QUOTABLE.fullmatch(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | str | None) -> bytes:
    """RFC 3501 nstring: `NIL` for None, else `string(value)`."""
    return NIL if value is None else string(value)


def astring(value: str) -> bytes:
    """RFC 3501 astring (mailbox names): the bare atom when it is one and cannot be read as
    `NIL`, else `string(value)`."""
    if _ATOM.fullmatch(value) and value.upper() != "NIL":
        return value.encode("ascii")
    return string(value)


def plist(items: Iterable[bytes]) -> bytes:
    """A parenthesized list of already formatted items: `(a b c)`, or `()`."""
    return b"(" + b" ".join(items) + b")"


def format_internaldate(when: datetime) -> bytes:
    """RFC 3501 date-time with its quotes, e.g. `"25-Nov-2026 12:00:00 +0000"` (a naive
    `when` is taken as UTC; a zone offset is rounded to the minute)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset() or timedelta()
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    text = (
        f'"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} '
        f'{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{hours:02d}{minutes:02d}"'
    )
    return text.encode("ascii")


def parse_internaldate(text: str) -> datetime:
    """An aware datetime from APPEND's date-time (`dd-Mon-yyyy hh:mm:ss +zzzz`, without the
    quotes; the day may be written `5`, `05` or ` 5`). ValueError for anything else."""
    match = _DATE_TIME.fullmatch(text)
    if not match:
        raise ValueError(f"invalid date-time {text!r}")
    day, month, year, hour, minute, second, sign, zone_hours, zone_minutes = match.groups()
    if int(zone_minutes) >= 60:
        raise ValueError(f"invalid zone in {text!r}")
    offset = timedelta(hours=int(zone_hours), minutes=int(zone_minutes))
    zone = timezone(-offset if sign == "-" else offset)
    return datetime(
        int(year), _month(month, text), int(day), int(hour), int(minute), int(second), tzinfo=zone
    )


def parse_search_date(text: str) -> date:
    """The date of a SEARCH key (`1-Feb-1994`, without quotes). ValueError for anything else."""
    match = _DATE.fullmatch(text)
    if not match:
        raise ValueError(f"invalid date {text!r}")
    day, month, year = match.groups()
    return date(int(year), _month(month, text), int(day))


def _month(name: str, text: str) -> int:
    try:
        return _MONTH_NUMBERS[name.upper()]
    except KeyError:
        raise ValueError(f"invalid month in {text!r}") from None
