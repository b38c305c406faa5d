"""IMAP SEARCH criteria, parsed once into a matcher that is then run against every message.

RFC 3501 6.4.4 (the same keys in RFC 9051 6.4.4) defines the search keys, and RFC 7162 3.1.5 adds
`MODSEQ`. Keys in a row are ANDed, `OR` and `NOT` combine them and a parenthesized list is one key
that needs all of its keys. String keys match case-insensitive substrings of the decoded values.

A mailbox may hold 100,000 messages, so the arguments become a tree of closures once, and each
message only runs comparisons. Keys that need the header section or the body run after the cheap
ones (flags, numbers, dates), so `UNSEEN BODY x` reads the bodies of unseen messages only, and
`SearchQuery` says whether a message file needs reading at all.

Only UTF-8 and its subset US-ASCII are supported as `CHARSET` (RFC 3501 6.4.4: any other is a
tagged `NO [BADCHARSET ...]`); syntax errors are `SearchSyntaxError`, answered with `BAD`.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

from cloudmail.imap.tokens import MAX_NUMBER, ParseError, SequenceSet

#: The response code (RFC 3501 7.1) for an unsupported charset, listing the ones we take.
BADCHARSET = "BADCHARSET (UTF-8 US-ASCII)"
SUPPORTED_CHARSETS = frozenset({"UTF-8", "US-ASCII"})
#: RFC 7162 7: mod-sequence-value is a positive unsigned 63-bit integer.
MAX_MODSEQ = 2**63 - 1
#: How deeply `NOT`, `OR` and parentheses may nest, well inside Python's recursion limit.
MAX_DEPTH = 100

_MONTHS = {name: number for number, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DIGITS = re.compile(r"[0-9]+")
_MODSEQ_ENTRY_TYPES = frozenset({"PRIV", "SHARED", "ALL"})

#: Flag keys: the flag tested and whether the message must have it.
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
    "RECENT": ("\\Recent", True), "OLD": ("\\Recent", False),
}
#: Keys that look for a string in one header field.
_HEADER_KEYS = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "SUBJECT": "Subject", "TO": "To"}
#: Date keys: (uses the Date: header rather than the internal date, comparison).
_DATE_KEYS: dict[str, tuple[bool, Callable[[date, date], bool]]] = {
    "BEFORE": (False, date.__lt__), "ON": (False, date.__eq__), "SINCE": (False, date.__ge__),
    "SENTBEFORE": (True, date.__lt__), "SENTON": (True, date.__eq__),
    "SENTSINCE": (True, date.__ge__),
}

#: What evaluating a key costs: flags and numbers only, the header section, or the body too.
_CHEAP, _HEADERS, _BODY = 0, 1, 2


class SearchError(Exception):
    """A SEARCH that cannot run: `text` for the reply, `code` its response code (BADCHARSET) or
    None."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class SearchSyntaxError(SearchError):
    """Search arguments that do not follow the grammar; the server answers `BAD`."""

    def __init__(self, text: str) -> None:
        super().__init__(text, None)


class SearchTarget(Protocol):
    """One message as SEARCH sees it. The methods may read the message file; they are only
    called when the query needs them (`SearchQuery.needs_headers`, `needs_body`)."""

    seq: int
    uid: int
    #: System flags (`\\Seen`) and keywords as stored; compared case-insensitively.
    flags: frozenset[str]
    size: int
    #: Aware; its calendar date in its own offset is what BEFORE, ON and SINCE compare.
    internal_date: datetime
    modseq: int

    def header_values(self, name: str) -> list[str]:
        """The decoded, unfolded values of every field called `name` (any case)."""

    def all_headers_text(self) -> str:
        """The whole header section, decoded."""

    def body_text(self) -> str:
        """The body, decoded as far as the store can (for BODY and TEXT)."""

    def sent_date(self) -> date | None:
        """The date of the Date: field in its own offset, or None if missing or unusable."""


@dataclass(frozen=True)
class SearchContext:
    """What `*` means in a sequence set (`max_seq`) and in a UID set (`max_uid`)."""

    max_seq: int
    max_uid: int


Matcher = Callable[[SearchTarget, SearchContext], bool]
_Key = tuple[Matcher, int]


class SearchQuery:
    """Parsed search criteria: call `matches` per message.

    `needs_headers` is true when a header key or a SENT* date appears, `needs_body` when BODY or
    TEXT does; `uses_modseq` when a MODSEQ key does (RFC 7162 3.1.5: the reply then ends with
    `(MODSEQ n)`).
    """

    def __init__(self, match: Matcher, needs_headers: bool, needs_body: bool,
                 uses_modseq: bool) -> None:
        self._match = match
        self.needs_headers = needs_headers
        self.needs_body = needs_body
        self.uses_modseq = uses_modseq

    def matches(self, message: SearchTarget, context: SearchContext) -> bool:
        """True if `message` satisfies the criteria."""
        return self._match(message, context)


def parse_search(args: list) -> SearchQuery:
    """Parse the arguments after `SEARCH` (RFC 3501 6.4.4, RFC 7162 3.1.5); SearchError with
    BADCHARSET for a charset other than UTF-8 or US-ASCII, SearchSyntaxError for bad syntax."""
    cursor = _Cursor(args)
    first = cursor.peek()
    if isinstance(first, str) and first.upper() == "CHARSET":
        cursor.take("CHARSET")
        charset = _string(cursor, "charset name after CHARSET")
        if charset.upper() not in SUPPORTED_CHARSETS:
            raise SearchError(f"charset {charset} is not supported", BADCHARSET)
    if cursor.at_end:
        raise SearchSyntaxError("SEARCH needs a search key")
    parser = _Parser()
    match, _ = parser.all_of(cursor, 0)
    return SearchQuery(match, parser.needs_headers, parser.needs_body, parser.uses_modseq)


class _Cursor:
    """Reads the tokens of one level (the arguments, or one parenthesized list) in order."""

    def __init__(self, tokens: list) -> None:
        self.tokens = tokens
        self.position = 0

    @property
    def at_end(self) -> bool:
        return self.position >= len(self.tokens)

    def peek(self) -> object:
        return None if self.at_end else self.tokens[self.position]

    def take(self, what: str) -> object:
        if self.at_end:
            raise SearchSyntaxError(f"missing {what}")
        self.position += 1
        return self.tokens[self.position - 1]


class _Parser:
    """Turns search keys into matchers, noting what evaluating them will need."""

    def __init__(self) -> None:
        self.needs_headers = False
        self.needs_body = False
        self.uses_modseq = False

    def all_of(self, cursor: _Cursor, depth: int) -> _Key:
        """Every key left in `cursor`, ANDed."""
        keys = []
        while not cursor.at_end:
            keys.append(self.key(cursor, depth))
        return _conjunction(keys)

    def key(self, cursor: _Cursor, depth: int) -> _Key:
        """One search-key (RFC 3501 9), with its arguments."""
        if depth > MAX_DEPTH:
            raise SearchSyntaxError("search keys nested too deeply")
        token = cursor.take("search key")
        if isinstance(token, list):
            if not token:
                raise SearchSyntaxError("empty parenthesized search key")
            return self.all_of(_Cursor(token), depth + 1)
        if not isinstance(token, str):
            raise SearchSyntaxError("search key expected, not a string")
        name = token.upper()
        if name in _FLAG_KEYS:
            return _flag(*_FLAG_KEYS[name]), _CHEAP
        if name in _HEADER_KEYS:
            self.needs_headers = True
            needle = _string(cursor, f"string after {name}")
            return _header_contains(_HEADER_KEYS[name], needle), _HEADERS
        if name in _DATE_KEYS:
            sent, compare = _DATE_KEYS[name]
            day = _date(cursor, name)
            if sent:
                self.needs_headers = True
                return _sent_date(compare, day), _HEADERS
            return _internal_date(compare, day), _CHEAP
        handler = getattr(self, "key_" + name, None)
        if handler is not None:
            return handler(cursor, depth)
        if token and token[0] in "0123456789*":
            return _in_set(_sequence_set(token), by_uid=False), _CHEAP
        raise SearchSyntaxError(f"unknown search key {token}")

    def key_ALL(self, cursor: _Cursor, depth: int) -> _Key:
        return (lambda message, context: True), _CHEAP

    def key_NEW(self, cursor: _Cursor, depth: int) -> _Key:
        return _conjunction([(_flag("\\Recent", True), _CHEAP), (_flag("\\Seen", False), _CHEAP)])

    def key_NOT(self, cursor: _Cursor, depth: int) -> _Key:
        inner, cost = self.key(cursor, depth + 1)
        return (lambda message, context: not inner(message, context)), cost

    def key_OR(self, cursor: _Cursor, depth: int) -> _Key:
        (first, _), (second, cost) = sorted(
            [self.key(cursor, depth + 1), self.key(cursor, depth + 1)], key=lambda key: key[1])
        return (lambda message, context: first(message, context) or second(message, context)), cost

    def key_KEYWORD(self, cursor: _Cursor, depth: int) -> _Key:
        return _flag(_string(cursor, "flag after KEYWORD"), True), _CHEAP

    def key_UNKEYWORD(self, cursor: _Cursor, depth: int) -> _Key:
        return _flag(_string(cursor, "flag after UNKEYWORD"), False), _CHEAP

    def key_LARGER(self, cursor: _Cursor, depth: int) -> _Key:
        least = _number(cursor, "LARGER", MAX_NUMBER)
        return (lambda message, context: message.size > least), _CHEAP

    def key_SMALLER(self, cursor: _Cursor, depth: int) -> _Key:
        most = _number(cursor, "SMALLER", MAX_NUMBER)
        return (lambda message, context: message.size < most), _CHEAP

    def key_UID(self, cursor: _Cursor, depth: int) -> _Key:
        token = cursor.take("sequence set after UID")
        if not isinstance(token, str):
            raise SearchSyntaxError("UID needs a sequence set")
        return _in_set(_sequence_set(token), by_uid=True), _CHEAP

    def key_MODSEQ(self, cursor: _Cursor, depth: int) -> _Key:
        """RFC 7162 3.1.5: MODSEQ ["/flags/..." priv|shared|all] n. We keep one mod-sequence per
        message, so the entry is checked for syntax and otherwise ignored."""
        following = cursor.peek()
        if following is not None and not (isinstance(following, str)
                                          and _DIGITS.fullmatch(following)):
            _string(cursor, "entry name after MODSEQ")
            if _string(cursor, "entry type after MODSEQ").upper() not in _MODSEQ_ENTRY_TYPES:
                raise SearchSyntaxError("MODSEQ entry type must be priv, shared or all")
        least = _number(cursor, "MODSEQ", MAX_MODSEQ)
        self.uses_modseq = True
        return (lambda message, context: message.modseq >= least), _CHEAP

    def key_HEADER(self, cursor: _Cursor, depth: int) -> _Key:
        field = _string(cursor, "field name after HEADER")
        self.needs_headers = True
        return _header_contains(field, _string(cursor, "string after HEADER field")), _HEADERS

    def key_BODY(self, cursor: _Cursor, depth: int) -> _Key:
        needle = _string(cursor, "string after BODY").casefold()
        self.needs_body = True
        return (lambda message, context: needle in message.body_text().casefold()), _BODY

    def key_TEXT(self, cursor: _Cursor, depth: int) -> _Key:
        needle = _string(cursor, "string after TEXT").casefold()
        self.needs_headers = self.needs_body = True

        def match(message: SearchTarget, context: SearchContext) -> bool:
            return (needle in message.all_headers_text().casefold()
                    or needle in message.body_text().casefold())
        return match, _BODY


def _conjunction(keys: list[_Key]) -> _Key:
    """All of `keys`, the cheap ones tried first."""
    if len(keys) == 1:
        return keys[0]
    ordered = sorted(keys, key=lambda key: key[1])
    matchers = tuple(match for match, _ in ordered)

    def match(message: SearchTarget, context: SearchContext) -> bool:
        for test in matchers:
            if not test(message, context):
                return False
        return True
    return match, ordered[-1][1]


def _flag(flag: str, wanted: bool) -> Matcher:
    """Has (or lacks) `flag`, in any case; the exact spelling is tried first as the quick way."""
    folded = flag.casefold()
    if wanted:
        return lambda message, context: (
            flag in message.flags or any(f.casefold() == folded for f in message.flags))
    return lambda message, context: (
        flag not in message.flags and all(f.casefold() != folded for f in message.flags))


def _header_contains(field: str, needle: str) -> Matcher:
    """Some `field` value contains `needle`; an empty needle finds every message with the
    field (RFC 3501 6.4.4 HEADER)."""
    folded = needle.casefold()
    return lambda message, context: any(
        folded in value.casefold() for value in message.header_values(field))


def _internal_date(compare: Callable[[date, date], bool], day: date) -> Matcher:
    return lambda message, context: compare(message.internal_date.date(), day)


def _sent_date(compare: Callable[[date, date], bool], day: date) -> Matcher:
    def match(message: SearchTarget, context: SearchContext) -> bool:
        sent = message.sent_date()
        return sent is not None and compare(sent, day)
    return match


def _in_set(numbers: SequenceSet, by_uid: bool) -> Matcher:
    """Membership by UID or sequence number; the set is resolved into sorted, merged ranges once
    per value of `*` and searched by bisection."""
    resolved: tuple[int, list[int], list[int]] = (-1, [], [])

    def match(message: SearchTarget, context: SearchContext) -> bool:
        nonlocal resolved
        if by_uid:
            number, largest = message.uid, context.max_uid
        else:
            number, largest = message.seq, context.max_seq
        if resolved[0] != largest:
            resolved = (largest, *_merged_ranges(numbers, largest))
        _, lows, highs = resolved
        index = bisect_right(lows, number) - 1
        return index >= 0 and number <= highs[index]
    return match


def _merged_ranges(numbers: SequenceSet, largest: int) -> tuple[list[int], list[int]]:
    """The set's ranges, `*` being `largest`, as sorted lists of disjoint lows and highs."""
    lows: list[int] = []
    highs: list[int] = []
    for low, high in sorted(numbers.bounds(largest)):
        if highs and low <= highs[-1] + 1:
            highs[-1] = max(highs[-1], high)
        else:
            lows.append(low)
            highs.append(high)
    return lows, highs


def _sequence_set(text: str) -> SequenceSet:
    try:
        return SequenceSet.parse(text)
    except ParseError as error:
        raise SearchSyntaxError(str(error)) from None


def _string(cursor: _Cursor, what: str) -> str:
    """An astring: an atom as written, or a quoted string or literal decoded as UTF-8."""
    token = cursor.take(what)
    if isinstance(token, bytes):
        return token.decode("utf-8", "replace")
    if isinstance(token, str):
        return str(token)
    raise SearchSyntaxError(f"{what} must be a string")


def _number(cursor: _Cursor, key: str, limit: int) -> int:
    token = cursor.take(f"number after {key}")
    if isinstance(token, str) and _DIGITS.fullmatch(token):
        try:
            value = int(token)
        except ValueError:
            value = limit + 1
        if value <= limit:
            return value
    raise SearchSyntaxError(f"{key} needs a number from 0 to {limit}")


def _date(cursor: _Cursor, key: str) -> date:
    """RFC 3501 9 date: `1-Feb-1994`, bare or quoted."""
    token = cursor.take(f"date after {key}")
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    match = _DATE.fullmatch(text) if isinstance(text, str) else None
    month = _MONTHS.get(match.group(2).upper()) if match else None
    if match and month:
        try:
            return date(int(match.group(3)), month, int(match.group(1)))
        except ValueError:
            pass
    raise SearchSyntaxError(f"{key} needs a date like 1-Feb-1994")
