"""IMAP SEARCH criteria (`cloudmail.imap.search`): what each key of RFC 3501 6.4.4 and RFC 7162
MODSEQ matches, how keys combine, which errors are BAD and which are NO [BADCHARSET], and what a
query tells the server it will need to read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from cloudmail.imap.search import (
    BADCHARSET,
    MAX_DEPTH,
    SearchContext,
    SearchError,
    SearchSyntaxError,
    parse_search,
)
from cloudmail.imap.tokens import Atom

A = Atom
CONTEXT = SearchContext(max_seq=10, max_uid=100)
EST = timezone(timedelta(hours=-5))


@dataclass
class Message:
    """A fake SearchTarget: headers keyed by lower-case name."""

    seq: int = 1
    uid: int = 1
    flags: frozenset[str] = frozenset()
    size: int = 1000
    internal_date: datetime = datetime(2024, 3, 10, 23, 30, tzinfo=EST)
    modseq: int = 5
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    sent: date | None = None

    def header_values(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])

    def all_headers_text(self) -> str:
        return "\r\n".join(f"{name}: {value}" for name, values in self.headers.items()
                           for value in values)

    def body_text(self) -> str:
        return self.body

    def sent_date(self) -> date | None:
        return self.sent


class FlagsOnly(Message):
    """A message whose file must not be read: reading headers or body fails the test."""

    def header_values(self, name: str) -> list[str]:
        raise AssertionError("headers read")

    def all_headers_text(self) -> str:
        raise AssertionError("headers read")

    def body_text(self) -> str:
        raise AssertionError("body read")

    def sent_date(self) -> date | None:
        raise AssertionError("headers read")


def atoms(text: str) -> list:
    """The tokens of a search without quoted strings or parentheses."""
    return [A(word) for word in text.split()]


def hits(args: list, message: Message, context: SearchContext = CONTEXT) -> bool:
    return parse_search(args).matches(message, context)


@pytest.mark.parametrize("key, flag", [
    ("ANSWERED", "\\Answered"), ("DELETED", "\\Deleted"), ("DRAFT", "\\Draft"),
    ("FLAGGED", "\\Flagged"), ("SEEN", "\\Seen"), ("RECENT", "\\Recent"),
])
def test_flag_keys_and_their_negations(key, flag):
    """Each flag key matches a message with the flag, its UN- form (OLD for RECENT) one
    without; the flag is found whatever case it is stored in."""
    negation = "OLD" if key == "RECENT" else "UN" + key
    with_flag, with_other_case, without = (Message(flags=frozenset({flag})),
                                           Message(flags=frozenset({flag.upper()})),
                                           Message(flags=frozenset({"\\Other"})))
    assert hits(atoms(key), with_flag) and hits(atoms(key), with_other_case)
    assert not hits(atoms(key), without)
    assert hits(atoms(negation), without)
    assert not hits(atoms(negation), with_flag) and not hits(atoms(negation), with_other_case)


def test_keys_are_case_insensitive():
    """`unseen`, `Larger` and `uid` mean the same as their upper-case forms."""
    message = Message(size=2000, uid=7)
    assert hits([A("unseen"), A("Larger"), A("1000"), A("uid"), A("7")], message)


def test_new_is_recent_and_unseen():
    """NEW needs \\Recent and no \\Seen; OLD is any message without \\Recent."""
    assert hits(atoms("NEW"), Message(flags=frozenset({"\\Recent"})))
    assert not hits(atoms("NEW"), Message(flags=frozenset({"\\Recent", "\\Seen"})))
    assert not hits(atoms("NEW"), Message())
    assert hits(atoms("OLD"), Message(flags=frozenset({"\\Seen"})))


def test_all_matches_everything():
    """ALL matches any message."""
    assert hits(atoms("ALL"), Message())


def test_keyword_and_unkeyword_ignore_case():
    """KEYWORD finds a keyword in any case, UNKEYWORD its absence; atoms or quoted strings."""
    message = Message(flags=frozenset({"$Junk"}))
    assert hits([A("KEYWORD"), A("$junk")], message)
    assert hits([A("KEYWORD"), b"$JUNK"], message)
    assert not hits([A("KEYWORD"), A("$Phishing")], message)
    assert hits([A("UNKEYWORD"), A("$Phishing")], message)
    assert not hits([A("UNKEYWORD"), A("$JUNK")], message)


def test_larger_and_smaller_are_strict():
    """LARGER n means size > n and SMALLER n size < n; 0 and 4294967295 are valid numbers."""
    message = Message(size=1000)
    assert hits(atoms("LARGER 999"), message) and not hits(atoms("LARGER 1000"), message)
    assert hits(atoms("SMALLER 1001"), message) and not hits(atoms("SMALLER 1000"), message)
    assert hits(atoms("LARGER 0"), message)
    assert hits(atoms("SMALLER 4294967295"), message)


@pytest.mark.parametrize("key, header", [
    ("FROM", "from"), ("TO", "to"), ("CC", "cc"), ("BCC", "bcc"), ("SUBJECT", "subject"),
])
def test_address_and_subject_keys_match_substrings_of_their_header(key, header):
    """FROM, TO, CC, BCC and SUBJECT find a case-insensitive substring in any occurrence of
    their own header, and nothing in other headers."""
    message = Message(headers={header: ["first", "Bob Smith <BOB@example.org>"],
                               "x-other": ["alice"]})
    assert hits([A(key), b"bob@EXAMPLE"], message)
    assert hits([A(key), A("smith")], message)
    assert not hits([A(key), b"alice"], message)
    assert not hits([A(key), b"bob"], Message())


def test_string_arguments_decode_utf8_and_casefold():
    """A quoted UTF-8 string matches decoded header text case-insensitively (casefold: ß ~ SS)."""
    message = Message(headers={"subject": ["Grüße aus STRASSE"]})
    assert hits([A("CHARSET"), A("UTF-8"), A("SUBJECT"), "GRÜSSE".encode()], message)
    assert hits([A("SUBJECT"), "straße".encode()], message)
    assert not hits([A("SUBJECT"), b"\xff"], message)


def test_header_key():
    """HEADER field s looks in that field only (name in any case); an empty string matches
    every message that has the field, and none without it."""
    message = Message(headers={"x-spam-flag": ["YES"], "subject": ["no"]})
    assert hits([A("HEADER"), A("X-Spam-Flag"), b"yes"], message)
    assert not hits([A("HEADER"), b"Subject", b"yes"], message)
    assert hits([A("HEADER"), A("X-SPAM-FLAG"), b""], message)
    assert not hits([A("HEADER"), A("List-Id"), b""], message)


def test_body_and_text():
    """BODY looks in the body only; TEXT in the header section and the body."""
    message = Message(headers={"subject": ["quarterly report"]}, body="See the Figures attached")
    assert hits([A("BODY"), b"figures"], message)
    assert not hits([A("BODY"), b"quarterly"], message)
    assert hits([A("TEXT"), b"figures"], message)
    assert hits([A("TEXT"), b"QUARTERLY"], message)
    assert hits([A("TEXT"), b"subject:"], message)
    assert not hits([A("TEXT"), b"missing"], message)


def test_internal_date_keys_use_the_date_in_its_own_offset():
    """BEFORE, ON and SINCE compare the calendar date of the internal date in its own offset:
    23:30 -05:00 on 10 March is 10 March, though it is 11 March in UTC."""
    message = Message(internal_date=datetime(2024, 3, 10, 23, 30, tzinfo=EST))
    assert hits(atoms("ON 10-Mar-2024"), message)
    assert not hits(atoms("ON 11-Mar-2024"), message)
    assert hits(atoms("BEFORE 11-Mar-2024"), message)
    assert not hits(atoms("BEFORE 10-Mar-2024"), message)
    assert hits(atoms("SINCE 10-Mar-2024"), message)
    assert not hits(atoms("SINCE 11-Mar-2024"), message)


def test_date_forms():
    """Dates take a 1 or 2 digit day, a month in any case, and may come quoted."""
    message = Message(internal_date=datetime(1994, 2, 1, tzinfo=UTC))
    assert hits(atoms("ON 1-Feb-1994"), message)
    assert hits(atoms("ON 01-FEB-1994"), message)
    assert hits([A("ON"), b"1-feb-1994"], message)


def test_sent_date_keys():
    """SENTBEFORE, SENTON and SENTSINCE compare the Date: header's date; a message without a
    usable Date matches none of them."""
    message = Message(sent=date(2023, 12, 31), internal_date=datetime(2024, 1, 5, tzinfo=EST))
    assert hits(atoms("SENTON 31-Dec-2023"), message)
    assert hits(atoms("SENTBEFORE 1-Jan-2024"), message)
    assert not hits(atoms("SENTBEFORE 31-Dec-2023"), message)
    assert hits(atoms("SENTSINCE 31-Dec-2023"), message)
    assert not hits(atoms("SENTSINCE 1-Jan-2024"), message)
    for key in ("SENTON 31-Dec-2023", "SENTBEFORE 1-Jan-2030", "SENTSINCE 1-Jan-1970"):
        assert not hits(atoms(key), Message(sent=None))


def test_sequence_sets_with_star():
    """A bare sequence set matches by sequence number, `*` being the context's max_seq; `5:*`
    with 3 messages still includes message 3."""
    assert hits(atoms("1:5,9:*"), Message(seq=9))
    assert hits(atoms("1:5,9:*"), Message(seq=10))
    assert not hits(atoms("1:5,9:*"), Message(seq=7))
    assert hits(atoms("*"), Message(seq=10)) and not hits(atoms("*"), Message(seq=9))
    small = SearchContext(max_seq=3, max_uid=3)
    assert hits(atoms("5:*"), Message(seq=3), small)
    assert not hits(atoms("5:*"), Message(seq=2), small)


def test_uid_sets_with_star():
    """UID matches by UID, `*` being max_uid; unordered and overlapping ranges work."""
    assert hits(atoms("UID 100"), Message(uid=100, seq=1))
    assert hits(atoms("UID *"), Message(uid=100, seq=1))
    assert not hits(atoms("UID 1"), Message(uid=100, seq=1))
    query = parse_search(atoms("UID 50:40,45:60,90:*,7"))
    assert [uid for uid in range(1, 101) if query.matches(Message(uid=uid), CONTEXT)] == [
        7, *range(40, 61), *range(90, 101)]


def test_star_follows_the_context():
    """One query evaluated under different contexts resolves `*` anew each time."""
    query = parse_search(atoms("UID 5:*"))
    assert not query.matches(Message(uid=4), SearchContext(max_seq=1, max_uid=10))
    assert query.matches(Message(uid=4), SearchContext(max_seq=1, max_uid=4))
    assert not query.matches(Message(uid=4), SearchContext(max_seq=1, max_uid=10))
    assert query.matches(Message(uid=6), SearchContext(max_seq=1, max_uid=10))


def test_modseq():
    """MODSEQ n matches mod-sequences ≥ n, with or without the entry name and type."""
    message = Message(modseq=620162338)
    assert hits(atoms("MODSEQ 620162338"), message)
    assert not hits(atoms("MODSEQ 620162339"), message)
    assert hits([A("MODSEQ"), b"/flags/\\draft", A("all"), A("620162338")], message)
    assert hits([A("MODSEQ"), b"/flags/$junk", A("PRIV"), A("0")], message)
    assert hits(atoms("MODSEQ 9223372036854775807"), Message(modseq=2**63 - 1))


def test_several_keys_are_anded():
    """Keys in a row must all match."""
    message = Message(flags=frozenset({"\\Flagged"}), size=5000)
    assert hits(atoms("FLAGGED LARGER 1000 UNSEEN"), message)
    assert not hits(atoms("FLAGGED LARGER 1000 SEEN"), message)


def test_or_not_and_parentheses_nest():
    """OR takes two keys, NOT one, and a parenthesized list is one key needing all of its keys;
    they nest in any combination (the example of the brief)."""
    args = [A("CHARSET"), A("UTF-8"), A("OR"), A("FROM"), b"bob",
            [A("UNSEEN"), A("LARGER"), A("1000")], A("NOT"), A("DELETED"), A("1:5,9:*")]
    from_bob = {"from": ["bob@example.org"]}
    assert hits(args, Message(seq=2, headers=from_bob, flags=frozenset({"\\Seen"})))
    assert hits(args, Message(seq=9, size=2000))
    assert not hits(args, Message(seq=9, size=500))
    assert not hits(args, Message(seq=7, headers=from_bob))
    assert not hits(args, Message(seq=2, headers=from_bob, flags=frozenset({"\\Deleted"})))
    nested = [A("NOT"), [A("OR"), A("SEEN"), [A("NOT"), A("FLAGGED")]]]
    assert hits(nested, Message(flags=frozenset({"\\Flagged"})))
    assert not hits(nested, Message(flags=frozenset()))
    assert hits(atoms("NOT NOT SEEN"), Message(flags=frozenset({"\\Seen"})))
    assert hits([A("OR"), A("OR"), A("DRAFT"), A("SEEN"), A("FLAGGED")],
                Message(flags=frozenset({"\\Flagged"})))


def test_charset_utf8_and_us_ascii_in_any_case():
    """CHARSET UTF-8 and US-ASCII are accepted in any case, as atoms or quoted."""
    for charset in (A("utf-8"), A("US-ASCII"), b"Utf-8", b"us-ascii"):
        assert hits([A("CHARSET"), charset, A("ALL")], Message())


def test_other_charsets_are_badcharset():
    """Any other charset is a SearchError with the BADCHARSET response code listing ours, not a
    syntax error."""
    with pytest.raises(SearchError) as caught:
        parse_search([A("CHARSET"), A("ISO-8859-1"), A("ALL")])
    assert not isinstance(caught.value, SearchSyntaxError)
    assert caught.value.code == BADCHARSET == "BADCHARSET (UTF-8 US-ASCII)"
    assert "ISO-8859-1" in caught.value.text


def test_what_a_query_needs():
    """needs_headers for header keys, TEXT and SENT* dates; needs_body for BODY and TEXT;
    uses_modseq for MODSEQ; none of them for flags, sizes, internal dates and sets."""
    def needs(args):
        query = parse_search(args)
        return query.needs_headers, query.needs_body, query.uses_modseq
    assert needs(atoms("UNSEEN LARGER 10 SINCE 1-Jan-2024 UID 1:* 1:5")) == (False, False, False)
    assert needs([A("FROM"), b"x"]) == (True, False, False)
    assert needs([A("HEADER"), b"List-Id", b""]) == (True, False, False)
    assert needs(atoms("SENTSINCE 1-Jan-2024")) == (True, False, False)
    assert needs([A("BODY"), b"x"]) == (False, True, False)
    assert needs([A("TEXT"), b"x"]) == (True, True, False)
    assert needs([A("NOT"), [A("OR"), A("SEEN"), A("MODSEQ"), A("4")]]) == (False, False, True)


def test_cheap_keys_run_first():
    """Flag-only queries never read the message; with a body key after a flag key, a message
    failing the flag has its body left unread, in AND and in OR."""
    seen = FlagsOnly(flags=frozenset({"\\Seen"}))
    assert not hits([A("BODY"), b"x", A("UNSEEN")], seen)
    assert hits([A("OR"), A("TEXT"), b"x", A("SEEN")], seen)
    assert hits(atoms("SEEN NOT DELETED UID 1 1 MODSEQ 1 LARGER 5 ON 10-Mar-2024"), seen)


@pytest.mark.parametrize("args", [
    [],
    atoms("CHARSET"),
    atoms("CHARSET UTF-8"),
    atoms("FROM"),
    atoms("HEADER Subject"),
    atoms("OR SEEN"),
    atoms("NOT"),
    atoms("LARGER"),
    atoms("UID"),
    atoms("MODSEQ"),
    [A("MODSEQ"), b"/flags/\\seen", A("all")],
    [A("MODSEQ"), b"/flags/\\seen", A("everyone"), A("5")],
    atoms("BEFORE"),
])
def test_missing_arguments_are_syntax_errors(args):
    """A key without its arguments (or no key at all) is a SearchSyntaxError, code None."""
    with pytest.raises(SearchSyntaxError) as caught:
        parse_search(args)
    assert caught.value.code is None and caught.value.text


@pytest.mark.parametrize("args", [
    atoms("FOO"), atoms("SEEN BOGUS"), atoms("$"), [b"SEEN"], [[]], [A("CHARSET"), [A("x")]],
    atoms("CHARSET UTF-8 CHARSET UTF-8 ALL"),
])
def test_unknown_or_misplaced_keys_are_syntax_errors(args):
    """Unknown keys, strings or empty lists where a key belongs, and a CHARSET that is not
    first, are SearchSyntaxErrors."""
    with pytest.raises(SearchSyntaxError):
        parse_search(args)


@pytest.mark.parametrize("args", [
    atoms("LARGER -1"), atoms("LARGER 4294967296"), atoms("SMALLER 1.5"), atoms("LARGER +3"),
    atoms("SMALLER ٣"), [A("LARGER"), b"10"], atoms("LARGER " + "9" * 5000),
    atoms("MODSEQ 9223372036854775808"), atoms("MODSEQ -1"),
    atoms("UID 0"), atoms("UID 1:x"), atoms("0"), atoms("1,,2"), atoms("4294967296"),
    [A("UID"), b"1:5"], [A("UID"), [A("1")]],
])
def test_bad_numbers_and_sets_are_syntax_errors(args):
    """Numbers must be plain digits within range; sequence sets must parse (no 0, no empty
    parts), and neither may come quoted or in a list."""
    with pytest.raises(SearchSyntaxError):
        parse_search(args)


@pytest.mark.parametrize("text", [
    "1-Foo-2024", "32-Jan-2024", "29-Feb-2023", "1-Jan-24", "123-Jan-2024", "1 Jan 2024",
    "2024-01-01", "1-Jan-0000", "",
])
def test_bad_dates_are_syntax_errors(text):
    """Dates that are not day-Mon-yyyy, or name no real day, are SearchSyntaxErrors for every
    date key."""
    for key in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"):
        with pytest.raises(SearchSyntaxError):
            parse_search([A(key), A(text)])
        with pytest.raises(SearchSyntaxError):
            parse_search([A(key), text.encode()])


def test_list_where_a_string_belongs_is_a_syntax_error():
    """A parenthesized list cannot stand for a string argument or a date."""
    for key in ("FROM", "BODY", "KEYWORD", "ON"):
        with pytest.raises(SearchSyntaxError):
            parse_search([A(key), [A("x")]])


def test_deep_nesting_is_a_syntax_error_not_a_crash():
    """Thousands of NOTs or nested lists are refused as syntax errors before they exhaust the
    stack; nesting up to MAX_DEPTH works."""
    with pytest.raises(SearchSyntaxError):
        parse_search(atoms("NOT " * 5000 + "SEEN"))
    nested: list = [A("SEEN")]
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(SearchSyntaxError):
        parse_search(nested)
    assert hits(atoms("NOT " * (MAX_DEPTH - 1) + "SEEN"), Message())
