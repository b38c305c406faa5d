"""Sieve tests (RFC 5228 5 and extensions): header, address, envelope, body, date, string,
match types, comparators, relational, regex, subaddress, MIME options — each case a script run on
a message, asserting the dry-run lines; and the pure helpers of `cloudmail.sieve.matching`."""

from __future__ import annotations

import pytest

from cloudmail.sieve import matching
from cloudmail.sieve.ast import SieveError
from cloudmail.sieve.checker import compile_script
from cloudmail.sieve.interpreter import SieveEnvelope, run
from tests.sieve_support import MESSAGE, MULTIPART, NOW, context, sieve

YES = ['fileinto "yes"']
NO = ["keep"]


def check(test: str, message: bytes = MESSAGE, **kwargs) -> bool:
    lines = sieve(f'if {test} {{ fileinto "yes"; }}', message, **kwargs)
    assert lines in (YES, NO), lines
    return lines == YES


HEADER_CASES = [
    ('header :is "Subject" "[acme-users] [fwd] version 1.0 is out"', True),
    ('header :is "subject" "[ACME-USERS] [FWD] VERSION 1.0 IS OUT"', True),
    ('header :is "Subject" "acme"', False),
    ('header :contains "Subject" "version"', True),
    ('header :contains "Subject" "VERSION"', True),
    ('header :contains "Subject" ""', True),
    ('header :contains "X-Missing" ""', False),
    ('header :contains ["X-Missing", "Subject"] "fwd"', True),
    ('header :contains "Subject" ["nope", "1.0"]', True),
    ('header :matches "Subject" "[*] *"', True),
    ('header :matches "Subject" "*1.?*"', True),
    ('header :matches "Subject" "*2.?*"', False),
    ('header :matches "Subject" "\\\\[acme*"', True),
    ('header :matches "Subject" "acme*"', False),
    ('header :matches "Subject" "*"', True),
    ('header :matches "X-Missing" "*"', False),
    ('header :is "X-Encoded" "Café crème"', True),
    ('header :contains "X-Encoded" "crème"', True),
    ('header :comparator "i;octet" :is "Subject" "[ACME-USERS] [fwd] version 1.0 is out"', False),
    ('header :comparator "i;octet" :contains "Subject" "acme"', True),
    ('header :comparator "i;octet" :contains "Subject" "ACME"', False),
    ('header :comparator "i;ascii-casemap" :matches "Subject" "[ACME*"', True),
    ('header :comparator "i;octet" :matches "Subject" "[ACME*"', False),
    ('header :is "X-Spam-Score" "12"', True),
    ('header :index 1 :is "X-Spam-Score" "12"', False),
    ('header :index 2 :is "X-Spam-Score" "12"', True),
    ('header :index 1 :last :is "X-Spam-Score" "12"', True),
    ('header :index 3 :is "X-Spam-Score" "12"', False),
    ('exists "Subject"', True),
    ('exists ["Subject", "From"]', True),
    ('exists ["Subject", "X-Missing"]', False),
    ('exists "subject"', True),
    ('not exists "X-Missing"', True),
    ('size :over 100', True),
    ('size :over 10K', False),
    ('size :under 10K', True),
    ('size :under 10', False),
    ('true', True),
    ('false', False),
    ('not true', False),
    ('not false', True),
    ('allof (true, true)', True),
    ('allof (true, false)', False),
    ('anyof (false, true)', True),
    ('anyof (false, false)', False),
    ('not anyof (false, not true)', True),
    ('allof (header :contains "Subject" "acme", not exists "X-Missing")', True),
]


@pytest.mark.parametrize("test, expected", HEADER_CASES)
def test_header_exists_size_and_logic(test, expected):
    """header/exists/size/true/false/not/allof/anyof evaluate as RFC 5228 5 says; header values
    are RFC 2047 decoded; :index/:last pick one occurrence (RFC 5260 6)."""
    assert check(test) is expected


ADDRESS_CASES = [
    ('address :is "From" "alice@example.org"', True),
    ('address :is "From" "ALICE@EXAMPLE.ORG"', True),
    ('address :is :all "From" "alice@example.org"', True),
    ('address :is "From" "Alice Example <alice@example.org>"', False),
    ('address :localpart :is "From" "alice"', True),
    ('address :domain :is "From" "example.org"', True),
    ('address :domain :is "To" "example.net"', True),
    ('address :domain :is "Cc" "example.com"', True),
    ('address :domain :comparator "i;octet" :is "Cc" "example.com"', False),
    ('address :domain :matches ["To", "Cc"] "*.net"', True),
    ('address :localpart :contains "To" "lists"', True),
    ('address :user :is "To" "bob"', True),
    ('address :detail :is "To" "lists"', True),
    ('address :detail :is "Cc" ""', False),
    ('address :detail :matches "Cc" "*"', False),
    ('address :user :is "Cc" "dave"', True),
    ('address :all :contains "To" "carol"', True),
    ('address :is "X-Missing" "a@b"', False),
    ('address :count "eq" :comparator "i;ascii-numeric" "To" "2"', True),
    ('address :count "eq" :comparator "i;ascii-numeric" ["To", "Cc"] "3"', True),
    ('address :count "gt" :comparator "i;ascii-numeric" "To" "2"', False),
    ('address :index 1 :localpart :is "To" "carol"', True),
]


@pytest.mark.parametrize("test, expected", ADDRESS_CASES)
def test_address(test, expected):
    """address takes every address of the header (groups and display names dropped) and
    compares the part asked for (RFC 5228 5.1, RFC 5233 :user/:detail)."""
    assert check(test) is expected


ENVELOPE_CASES = [
    ('envelope :is "from" "alice@example.org"', True, {}),
    ('envelope :domain :is "from" "EXAMPLE.org"', True, {}),
    ('envelope :is "to" "bob+lists@example.com"', True, {}),
    ('envelope :user :is "to" "bob"', True, {}),
    ('envelope :detail :is "to" "lists"', True, {}),
    ('envelope :detail :is "to" "lists"', False, {"recipient": "bob@example.com"}),
    ('envelope :detail :is "to" ""', True, {"recipient": "bob+@example.com"}),
    ('envelope :user :is "to" "bob"', True, {"recipient": "bob-folder@example.com"}),
    ('envelope :detail :is "to" "folder"', True, {"recipient": "bob-folder@example.com"}),
    ('envelope :detail :is "to" "a-b"', True, {"recipient": "bob+a-b@example.com"}),
    ('envelope :is "from" ""', True, {"sender": ""}),
    ('envelope :localpart :is "from" ""', True, {"sender": ""}),
    ('envelope :domain :is "from" ""', True, {"sender": ""}),
    ('envelope :is "from" "alice@example.org"', False, {"sender": ""}),
    ('envelope :matches "from" "*@*"', False, {"sender": ""}),
]


@pytest.mark.parametrize("test, expected, envelope", ENVELOPE_CASES)
def test_envelope(test, expected, envelope):
    """envelope compares MAIL FROM (the null path as "") and RCPT TO (RFC 5228 5.4)."""
    assert check(test, **envelope) is expected


MATCH_VARIABLE_CASES = [
    ('header :matches "Subject" "[*] *"', "${1}|${2}", "acme-users|[fwd] version 1.0 is out"),
    ('header :matches "Subject" "*"', "${0}", "[acme-users] [fwd] version 1.0 is out"),
    ('header :matches "Subject" "[acme-?sers]*"', "${1}", "u"),
    ('header :matches "From" "*<*@*>"', "${2}@${3}", "alice@example.org"),
    ('address :matches :localpart "From" "a*e"', "${1}", "lic"),
    ('header :regex "Subject" "version ([0-9]+)\\\\.([0-9]+)"', "${1}.${2}", "1.0"),
    ('header :regex "Subject" "^\\\\[([a-z-]+)\\\\]"', "${1}", "acme-users"),
    ('header :regex "Subject" "(x)?acme"', "[${1}]", "[]"),
    ('header :is "Subject" "nope"', "[${1}]", "[]"),
    ('string :matches "a.b.c" "*.*"', "${1}/${2}", "a/b.c"),
    ('string :matches "abc" "???"', "${3}${2}${1}", "cba"),
]


@pytest.mark.parametrize("test, template, expected", MATCH_VARIABLE_CASES)
def test_match_variables(test, template, expected):
    """:matches and :regex set ${0}..${N}; the leftmost * matches as little as possible
    (RFC 5229 3.2)."""
    assert sieve(f'if {test} {{ }} fileinto "{template}";') == [f'fileinto "{expected}"']


def test_match_variables_survive_a_failed_match():
    """A failed :matches leaves the previous match variables alone (RFC 5229 3.2)."""
    script = ('if header :matches "Subject" "[*]*" {} if header :matches "Subject" "nope*" {} '
              'fileinto "${1}";')
    assert sieve(script) == ['fileinto "acme-users"']


RELATIONAL_CASES = [
    ('header :value "gt" :comparator "i;ascii-numeric" "X-Spam-Score" "10"', True),
    ('header :value "gt" :comparator "i;ascii-numeric" "X-Spam-Score" "12"', False),
    ('header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "12"', True),
    ('header :value "lt" :comparator "i;ascii-numeric" "X-Spam-Score" "7"', False),
    ('header :value "le" :comparator "i;ascii-numeric" "X-Spam-Score" "7"', True),
    ('header :value "eq" :comparator "i;ascii-numeric" "X-Spam-Score" "007"', True),
    ('header :value "ne" :comparator "i;ascii-numeric" "X-Spam-Score" "7"', True),
    ('header :value "gt" "X-Spam-Score" "10"', True),
    ('header :value "lt" :comparator "i;octet" "X-Spam-Score" "10"', False),
    ('header :value "gt" :comparator "i;ascii-numeric" "Subject" "99999"', True),
    ('header :value "lt" :comparator "i;ascii-numeric" "Subject" "99999"', False),
    ('header :count "eq" :comparator "i;ascii-numeric" "X-Spam-Score" "2"', True),
    ('header :count "ge" :comparator "i;ascii-numeric" "Received" "2"', False),
    ('header :count "eq" :comparator "i;ascii-numeric" "X-Missing" "0"', True),
    ('header :count "lt" :comparator "i;ascii-numeric" ["Subject", "X-Spam-Score"] "4"', True),
    ('header :is :comparator "i;ascii-numeric" "X-Spam-Score" "7"', True),
    ('header :is :comparator "i;ascii-numeric" "Subject" "abc"', True),
    ('string :count "eq" :comparator "i;ascii-numeric" ["a", "", "b"] "2"', True),
    ('string :value "gt" :comparator "i;ascii-casemap" "b" "A"', True),
]


@pytest.mark.parametrize("test, expected", RELATIONAL_CASES)
def test_relational(test, expected):
    """:value and :count (RFC 5231) with i;ascii-numeric (non-numbers are infinity)."""
    assert check(test) is expected


REGEX_CASES = [
    ('header :regex "Subject" "version [0-9]\\\\.[0-9]"', True),
    ('header :regex "Subject" "^version"', False),
    ('header :regex "Subject" "^\\\\[ACME"', True),
    ('header :regex :comparator "i;octet" "Subject" "^\\\\[ACME"', False),
    ('header :regex "From" "@example\\\\.(org|net)>$"', True),
    ('address :regex :domain "To" "^example\\\\.(com|net)$"', True),
    ('string :regex "${undefined}" "^$"', True),
]


@pytest.mark.parametrize("test, expected", REGEX_CASES)
def test_regex(test, expected):
    """:regex searches (not anchored unless the pattern says so), case-insensitive under the
    default comparator."""
    assert check(test) is expected


def test_regex_that_does_not_compile_is_a_runtime_error():
    """A bad expression only known at run time fails the run: the message is kept."""
    assert sieve('set "re" "(unclosed"; if header :regex "Subject" "${re}" { discard; }') == [
        "error: runtime", "keep"]


def test_catastrophic_regex_is_refused():
    """Nested quantifiers are refused rather than left to backtrack for ever."""
    assert sieve('if header :regex "Subject" "(a+)+$" { discard; }') == ["error: runtime", "keep"]


BODY_CASES = [
    ('body :contains "meeting"', MESSAGE, True),
    ('body :contains "MEETING"', MESSAGE, True),
    ('body :raw :contains "noon"', MESSAGE, True),
    ('body :text :contains "noon"', MESSAGE, True),
    ('body :content "text" :contains "noon"', MESSAGE, True),
    ('body :content "image" :contains "noon"', MESSAGE, False),
    ('body :matches "*at noon*"', MESSAGE, True),
    ('body :contains "Café"', MULTIPART, True),
    ('body :raw :contains "Caf=C3=A9"', MULTIPART, True),
    ('body :raw :contains "Café"', MULTIPART, False),
    ('body :text :contains "html secret"', MULTIPART, True),
    ('body :content "text/plain" :contains "html secret"', MULTIPART, False),
    ('body :content "text/html" :contains "html secret"', MULTIPART, True),
    ('body :content "application/pdf" :contains "%PDF"', MULTIPART, True),
    ('body :content "" :contains "%PDF"', MULTIPART, True),
    ('body :text :contains "%PDF"', MULTIPART, False),
    ('body :contains "preamble"', MULTIPART, False),
]


@pytest.mark.parametrize("test, message, expected", BODY_CASES)
def test_body(test, message, expected):
    """body (RFC 5173): :raw is the undecoded body, :content picks parts by type with their
    transfer encoding and charset undone, :text is :content "text"."""
    assert check(test, message) is expected


DATE_CASES = [
    ('date :is "Date" "date" "2026-12-01"', True),
    ('date :originalzone :is "Date" "hour" "10"', True),
    ('date :originalzone :is "Date" "zone" "+0100"', True),
    ('date :zone "+0000" :is "Date" "hour" "09"', True),
    ('date :zone "-0500" :is "Date" "time" "04:30:45"', True),
    ('date :is "Date" "hour" "10"', True),
    ('date :is "Date" "year" "2026"', True),
    ('date :is "Date" "month" "12"', True),
    ('date :is "Date" "day" "01"', True),
    ('date :is "Date" "minute" "30"', True),
    ('date :is "Date" "second" "45"', True),
    ('date :is "Date" "weekday" "2"', True),
    ('date :is "Date" "julian" "61375"', True),
    ('date :originalzone :is "Date" "iso8601" "2026-12-01T10:30:45+01:00"', True),
    ('date :originalzone :is "Date" "std11" "Tue, 01 Dec 2026 10:30:45 +0100"', True),
    ('date :value "ge" :originalzone "Date" "date" "2026-11-30"', True),
    ('date :is "X-Missing" "year" "2026"', False),
    ('date :zone "+0000" :is "Received" "time" "10:00:00"', True),
    ('currentdate :is "date" "2026-12-05"', True),
    ('currentdate :is "hour" "14"', True),
    ('currentdate :zone "+0000" :is "hour" "13"', True),
    ('currentdate :zone "+0000" :is "zone" "+0000"', True),
    ('currentdate :is "zone" "+0100"', True),
    ('currentdate :value "lt" "date" "2027-01-01"', True),
    ('currentdate :value "gt" "date" "2027-01-01"', False),
    ('currentdate :matches "iso8601" "2026-12-05T*"', True),
    ('currentdate :is "weekday" "6"', True),
]


@pytest.mark.parametrize("test, expected", DATE_CASES)
def test_date_and_currentdate(test, expected):
    """date and currentdate (RFC 5260): parts in the local zone (the zone of `now`), :zone or
    :originalzone; currentdate uses the `now` given to the run."""
    assert check(test) is expected


MIME_CASES = [
    ('header :mime :type "Content-Type" "multipart"', MULTIPART, True),
    ('header :mime :subtype "Content-Type" "mixed"', MULTIPART, True),
    ('header :mime :contenttype "Content-Type" "multipart/mixed"', MULTIPART, True),
    ('header :mime :param "boundary" "Content-Type" "XX"', MULTIPART, True),
    ('header :mime :type "Content-Type" "text"', MESSAGE, True),
    ('header :mime :anychild :contenttype "Content-Type" "application/pdf"', MULTIPART, True),
    ('header :mime :anychild :contenttype "Content-Type" "image/png"', MULTIPART, False),
    ('header :mime :anychild :param "filename" "Content-Disposition" "*.pdf"', MULTIPART, False),
    ('header :mime :anychild :param "filename" :matches "Content-Disposition" "*.pdf"',
     MULTIPART, True),
    ('exists :mime :anychild "Content-Disposition"', MULTIPART, True),
    ('exists :mime :anychild "Content-Disposition"', MESSAGE, False),
]


@pytest.mark.parametrize("test, message, expected", MIME_CASES)
def test_mime_options(test, message, expected):
    """:mime with :type/:subtype/:contenttype/:param, and :anychild (RFC 5703 4)."""
    assert check(test, message) is expected


@pytest.mark.parametrize("script, message, expected", [
    ('foreverypart { if header :mime :contenttype "Content-Type" "application/pdf" '
     '{ fileinto "pdf"; } }', MULTIPART, ['fileinto "pdf"']),
    ('foreverypart { if header :mime :param "filename" :matches "Content-Disposition" "*.pdf" '
     '{ fileinto "attachments"; break; } }', MULTIPART, ['fileinto "attachments"']),
    ('set "n" "0"; foreverypart { set "n" "${n}x"; } fileinto "${n}";', MULTIPART,
     ['fileinto "0xxx"']),
    ('set "n" ""; foreverypart { set "n" "${n}x"; if true { break; } } fileinto "n${n}";',
     MULTIPART, ['fileinto "nx"']),
    ('set "n" ""; foreverypart { set "n" "${n}x"; } fileinto "n${n}";', MESSAGE,
     ['fileinto "nx"']),
    ('foreverypart :name "outer" { foreverypart { fileinto "inner"; } '
     'if header :mime :type "Content-Type" "text" { break :name "outer"; } fileinto "no"; } '
     'fileinto "done";', MULTIPART, ['fileinto "done"']),
    ('foreverypart { if header :mime :type "Content-Type" "text" { fileinto "text"; } }',
     MULTIPART, ['fileinto "text"']),
    ('foreverypart { if header :contains "Subject" "report" { fileinto "top"; } }', MULTIPART,
     ['fileinto "top"']),
])
def test_foreverypart(script, message, expected):
    """foreverypart visits every part below the top (the message itself when it is not
    multipart); break leaves the innermost or the named loop (RFC 5703 3)."""
    assert sieve(script, message) == expected


@pytest.mark.parametrize("test, expected", [
    ('string :is "${undefined}" ""', True),
    ('string :is ["a", "b"] "b"', True),
    ('string :contains "abc" "B"', True),
    ('string :comparator "i;octet" :contains "abc" "B"', False),
    ('string :matches "x.y" "*.*"', True),
    ('hasflag "\\\\Seen"', False),
    ('ihave "fileinto"', True),
    ('ihave ["fileinto", "x-unknown"]', False),
    ('mailboxexists "INBOX"', True),
    ('mailboxexists ["INBOX", "Archive"]', False),
])
def test_string_hasflag_ihave_mailboxexists(test, expected):
    """string (RFC 5229 5), hasflag, ihave (RFC 5463), mailboxexists (RFC 5490)."""
    assert check(test) is expected


def test_mailboxexists_asks_the_context():
    """mailboxexists is true only when every mailbox exists."""
    names = {"INBOX", "Archive"}
    assert check('mailboxexists ["INBOX", "Archive"]', mailbox_exists=names.__contains__)


@pytest.mark.parametrize("comparator, value, key, order", [
    ("i;octet", "a", "b", -1),
    ("i;octet", "B", "a", -1),
    ("i;ascii-casemap", "B", "a", 1),
    ("i;ascii-casemap", "ABC", "abc", 0),
    ("i;ascii-casemap", "É", "é", -1),
    ("i;ascii-numeric", "10", "9", 1),
    ("i;ascii-numeric", "007", "7", 0),
    ("i;ascii-numeric", "12abc", "12", 0),
    ("i;ascii-numeric", "abc", "999999", 1),
    ("i;ascii-numeric", "abc", "xyz", 0),
    ("i;ascii-numeric", "1", "x", -1),
])
def test_comparators(comparator, value, key, order):
    """i;octet is bytes, i;ascii-casemap folds ASCII only, i;ascii-numeric reads the leading
    digits with non-numbers as infinity (RFC 4790 9)."""
    assert matching.compare(comparator, value, key) == order


@pytest.mark.parametrize("address, part, expected", [
    ("bob+x@example.com", "all", "bob+x@example.com"),
    ("bob+x@example.com", "localpart", "bob+x"),
    ("bob+x@example.com", "domain", "example.com"),
    ("bob+x@example.com", "user", "bob"),
    ("bob+x@example.com", "detail", "x"),
    ("bob@example.com", "detail", None),
    ("bob-a+b@example.com", "detail", "a+b"),
    ("bob@example.com", "user", "bob"),
    ('"a@b"@example.com', "localpart", '"a@b"'),
    ("nodomain", "domain", ""),
])
def test_address_parts(address, part, expected):
    """Address parts split at the last "@" and the first separator."""
    assert matching.address_part(address, part) == expected


@pytest.mark.parametrize("match_type, comparator, value, key, expected", [
    ("matches", "i;octet", "a*b", "a\\*b", (True, ["a*b"])),
    ("matches", "i;octet", "axb", "a\\*b", (False, None)),
    ("matches", "i;octet", "a?b", "a\\?b", (True, ["a?b"])),
    ("matches", "i;octet", "a\\b", "a\\\\b", (True, ["a\\b"])),
    ("matches", "i;octet", "", "*", (True, ["", ""])),
    ("matches", "i;octet", "line\nbreak", "line*", (True, ["line\nbreak", "\nbreak"])),
    ("contains", "i;ascii-casemap", "Hello", "LL", (True, None)),
    ("is", "i;ascii-casemap", "Hello", "hello", (True, None)),
])
def test_match_function(match_type, comparator, value, key, expected):
    """:matches escapes (\\* \\? \\\\), spans lines; the captures list starts with ${0}."""
    assert matching.match(match_type, comparator, value, key) == expected


def test_numeric_comparator_refuses_contains():
    """i;ascii-numeric has no substring operation (RFC 4790 9.1)."""
    with pytest.raises(matching.MatchError):
        matching.match("contains", "i;ascii-numeric", "1", "1")


def test_match_budget_bounds_matches_work():
    """A run may do only so much :matches work; past it the run fails and the mail is kept."""
    script = 'if header :matches "Subject" "*a*b*c*d*e*f*g*" { discard; }'
    assert sieve(script, max_match_work=10) == ["error: runtime", "keep"]
    assert sieve(script) == ["keep"]


def test_matches_does_not_backtrack_exponentially():
    """A pattern of many stars on a long value is decided in polynomial time."""
    message = b"Subject: " + b"a" * 20000 + b"\r\n\r\nbody\r\n"
    script = 'if header :matches "Subject" "*a*a*a*a*a*a*a*a*a*b" { discard; }'
    assert sieve(script, message) == ["keep"]
    assert matching.glob_match("*a*a*b", "a" * 50 + "b", False) == ["a" * 50 + "b", "", "", "a" * 48]


@pytest.mark.parametrize("pattern, value, fold, expected", [
    ("[*] *", "[a] [b] c", False, ["[a] [b] c", "a", "[b] c"]),
    ("*.*", "a.b.c", False, ["a.b.c", "a", "b.c"]),
    ("a*", "A-x", True, ["A-x", "-x"]),
    ("a*", "A-x", False, None),
    ("?*?", "ab", False, ["ab", "a", "", "b"]),
    ("?", "", False, None),
    ("", "", False, [""]),
    ("**", "xy", False, ["xy", "", "xy"]),
    ("*\\**", "a*b", False, ["a*b", "a", "b"]),
])
def test_glob_match(pattern, value, fold, expected):
    """The :matches engine: captures per wildcard, leftmost star shortest."""
    assert matching.glob_match(pattern, value, fold) == expected


@pytest.mark.parametrize("part, expected", [
    ("year", "2026"), ("month", "12"), ("day", "05"), ("date", "2026-12-05"),
    ("julian", "61379"), ("hour", "14"), ("minute", "30"), ("second", "15"),
    ("time", "14:30:15"), ("iso8601", "2026-12-05T14:30:15+01:00"),
    ("std11", "Sat, 05 Dec 2026 14:30:15 +0100"), ("zone", "+0100"), ("weekday", "6"),
])
def test_date_parts(part, expected):
    """The RFC 5260 4.2 date parts."""
    assert matching.date_part(NOW, part) == expected


@pytest.mark.parametrize("raw, name, expected", [
    (b"Subject: a\r\n b\r\n\r\n", "Subject", ["a b"]),
    (b"Subject: a\n\tb\n\nbody\n", "subject", ["a\tb"]),
    (b"Subject: =?utf-8?b?Y2Fmw6k=?= ok\r\n\r\n", "Subject", ["café ok"]),
    (b"Subject: =?iso-8859-1?q?caf=E9?=\r\n\r\n", "Subject", ["café"]),
    (b"Subject: =?x-unknown?q?abc?=\r\n\r\n", "Subject", ["=?x-unknown?q?abc?="]),
    (b"Subject:\r\n\r\n", "Subject", [""]),
    (b"A: 1\r\nB: 2\r\nA: 3\r\n\r\n", "a", ["1", "3"]),
    (b"no header here\r\n\r\n", "no header here", []),
])
def test_message_headers(raw, name, expected):
    """Header values are unfolded, trimmed and RFC 2047 decoded; bad charsets stay as written."""
    from cloudmail.sieve.message import SieveMessage
    assert SieveMessage(raw).headers(name) == expected


@pytest.mark.parametrize("raw", [
    b"A: 1\n\nbody\n", b"A: 1\r\n\r\nbody\r\n", b"A: 1\r\n", b"", b"\r\nbody only",
    b"A: 1\r\n folded\r\n\r\n",
])
def test_message_round_trips_unchanged(raw):
    """Without edits the message comes back byte for byte, line endings included."""
    from cloudmail.sieve.message import SieveMessage
    assert SieveMessage(raw).to_bytes() == raw


def test_address_header_parsing():
    """Groups, display names and comments are dropped; empty groups give nothing."""
    from cloudmail.sieve.message import SieveMessage
    message = SieveMessage(b'To: "A, B" <a@x.org>, list: c@y.org, d@z.org;, (c) e@w.org\r\n'
                           b"Cc: undisclosed-recipients:;\r\n\r\n")
    assert message.addresses("To") == ["a@x.org", "c@y.org", "d@z.org", "e@w.org"]
    assert message.addresses("Cc") == []


def test_extracttext_inside_foreverypart():
    """extracttext (RFC 5703 7) stores the decoded text of the current part, :first N chars;
    outside foreverypart it is a compile error."""
    script = compile_script('require ["variables", "foreverypart", "extracttext", "fileinto", "mime"];'
                   'foreverypart { if header :mime :subtype "Content-Type" "plain" '
                   '{ extracttext :first 4 "t"; fileinto "got-${t}"; } }')
    result = run(script, MULTIPART, SieveEnvelope("a@b.c", "bob@example.com"), context=context())
    assert result.lines() == ['fileinto "got-Café"']
    with pytest.raises(SieveError, match='"extracttext" must be inside "foreverypart"'):
        compile_script('require ["variables", "foreverypart", "extracttext"]; extracttext "t";')
