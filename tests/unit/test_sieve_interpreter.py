"""The Sieve interpreter: actions and the implicit keep (RFC 5228 2.10), every action command and
extension (fileinto, copy, reject, vacation, imap4flags, variables, editheader, include, enotify,
mailbox), run-time errors and limits — each case a script run on a message, asserting the dry-run
lines; plus the vacation rules and the dry-run format."""

from __future__ import annotations

import pytest

from cloudmail.sieve import vacation
from cloudmail.sieve.actions import (
    Discard, FileInto, Keep, Notify, Redirect, Reject, RunFailure, Vacation,
    VacationSuppressed, format_actions, sorted_flags,
)
from cloudmail.sieve.ast import Command, Position, Script, StringList
from cloudmail.sieve.interpreter import SieveEnvelope, run
from cloudmail.sieve.message import SieveMessage
from tests.sieve_support import ALL, MESSAGE, run_script, sieve

P = Position(1, 1)


ACTION_CASES = [
    ("", ["keep"]),
    ("keep;", ["keep"]),
    ("keep; keep;", ["keep"]),
    ("discard;", ["discard"]),
    ("discard; keep;", ["discard", "keep"]),
    ("stop; discard;", ["keep"]),
    ("discard; stop; keep;", ["discard"]),
    ('fileinto "Archive";', ['fileinto "Archive"']),
    ('fileinto "Archive"; fileinto "Archive";', ['fileinto "Archive"']),
    ('fileinto "A"; fileinto "B";', ['fileinto "A"', 'fileinto "B"']),
    ('fileinto :copy "Archive";', ['fileinto "Archive"', "keep"]),
    ('fileinto "Archive"; keep;', ['fileinto "Archive"', "keep"]),
    ('keep; fileinto "INBOX";', ["keep"]),
    ('fileinto "INBOX"; keep;', ['fileinto "INBOX"']),
    ('fileinto :copy "INBOX";', ['fileinto "INBOX"']),
    ('fileinto :copy "A"; fileinto :copy "A";', ['fileinto "A"', "keep"]),
    ('fileinto :copy "A"; fileinto "A";', ['fileinto "A"']),
    ('fileinto :create "New/Box";', ['fileinto "New/Box" create']),
    ('fileinto "Box"; fileinto :create "Box";', ['fileinto "Box" create']),
    ('fileinto "Quote\\"d";', ['fileinto "Quote\\"d"']),
    ('redirect "carol@example.net";', ['redirect "carol@example.net"']),
    ('redirect :copy "carol@example.net";', ['redirect "carol@example.net"', "keep"]),
    ('redirect "carol@example.net"; redirect "CAROL@example.net";',
     ['redirect "carol@example.net"']),
    ('redirect "carol@example.net"; keep;', ['redirect "carol@example.net"', "keep"]),
    ('redirect "bob+lists@example.com";', ['redirect "bob+lists@example.com" '
                                           'suppressed="mail-loop"', "keep"]),
    ('redirect "bob@example.com";', ['redirect "bob@example.com" suppressed="mail-loop"',
                                     "keep"]),
    ('reject "Go away";', ['reject "Go away"']),
    ('ereject "Go away";', ['reject "Go away"']),
    ('reject text:\nline one\nline "two"\n.\n;', ['reject "line one\\nline \\"two\\"\\n"']),
    ('if true { fileinto "yes"; } else { fileinto "no"; }', ['fileinto "yes"']),
    ('if false { fileinto "yes"; } else { fileinto "no"; }', ['fileinto "no"']),
    ('if false { fileinto "1"; } elsif true { fileinto "2"; } else { fileinto "3"; }',
     ['fileinto "2"']),
    ('if false { fileinto "1"; } elsif false { fileinto "2"; } else { fileinto "3"; }',
     ['fileinto "3"']),
    ('if true { fileinto "1"; } elsif true { fileinto "2"; } else { fileinto "3"; }',
     ['fileinto "1"']),
    ('if false { fileinto "1"; } elsif false { fileinto "2"; }', ["keep"]),
    ('if true { if false { discard; } else { fileinto "inner"; } }', ['fileinto "inner"']),
    ('if true { stop; } discard;', ["keep"]),
    ('if header :contains "Subject" "acme" { fileinto "lists"; stop; } fileinto "other";',
     ['fileinto "lists"']),
    ('fileinto "A"; if true { stop; } fileinto "B";', ['fileinto "A"']),
]


@pytest.mark.parametrize("script, expected", ACTION_CASES)
def test_actions_and_implicit_keep(script, expected):
    """RFC 5228 2.10: keep, discard, fileinto, redirect and reject cancel the implicit keep
    (not with :copy); duplicates are done once; stop ends the script; a redirect back to the
    recipient is suppressed as a loop and does not cancel the keep."""
    assert sieve(script) == expected


FLAG_CASES = [
    ('addflag "\\\\Seen";', ['keep flags="\\\\Seen"']),
    ('addflag "\\\\seen";', ['keep flags="\\\\Seen"']),
    ('addflag ["$Label1", "\\\\Flagged \\\\Seen"];', ['keep flags="\\\\Seen \\\\Flagged $Label1"']),
    ('addflag "a b"; addflag "B c";', ['keep flags="a b c"']),
    ('setflag "x"; setflag "y";', ['keep flags="y"']),
    ('addflag "x y z"; removeflag "Y";', ['keep flags="x z"']),
    ('addflag "\\\\Deleted"; removeflag "\\\\deleted";', ["keep"]),
    ('addflag "\\\\Draft \\\\Answered \\\\Seen";', ['keep flags="\\\\Seen \\\\Answered \\\\Draft"']),
    ('addflag "x"; keep :flags "y";', ['keep flags="y"']),
    ('addflag "x"; fileinto "A";', ['fileinto "A" flags="x"']),
    ('fileinto :flags "\\\\Seen" "A";', ['fileinto "A" flags="\\\\Seen"']),
    ('fileinto :create :flags "\\\\Seen" "A";', ['fileinto "A" create flags="\\\\Seen"']),
    ('addflag "x"; fileinto :copy "A"; removeflag "x";', ['fileinto "A" flags="x"', "keep"]),
    ('addflag "x"; if hasflag "X" { fileinto "has"; }', ['fileinto "has" flags="x"']),
    ('addflag "x y"; if hasflag "y x" { fileinto "both"; }', ['fileinto "both" flags="x y"']),
    ('if hasflag :count "eq" :comparator "i;ascii-numeric" "0" { fileinto "none"; }',
     ['fileinto "none"']),
    ('addflag "flagvar" "a b"; if hasflag "flagvar" "b" { fileinto "var"; }',
     ['fileinto "var"']),
    ('setflag "flagvar" "a"; addflag "flagvar" "b"; removeflag "flagvar" "a"; '
     'fileinto "${flagvar}";', ['fileinto "b"']),
    ('addflag "x"; keep; addflag "y";', ['keep flags="x"']),
    ('keep :flags "a"; keep :flags "b";', ['keep flags="a b"']),
]


@pytest.mark.parametrize("script, expected", FLAG_CASES)
def test_imap4flags(script, expected):
    """imap4flags (RFC 5232): the internal flags or a named variable; keep and fileinto take
    :flags or the current internal flags; system flags first and canonical."""
    assert sieve(script) == expected


VARIABLE_CASES = [
    ('set "a" "x"; fileinto "${a}";', ['fileinto "x"']),
    ('set "A" "x"; fileinto "${a}";', ['fileinto "x"']),
    ('fileinto "[${undefined}]";', ['fileinto "[]"']),
    ('set "a" "1"; set "b" "${a}${a}"; fileinto "${b}";', ['fileinto "11"']),
    ('fileinto "${bad-name}";', ['fileinto "${bad-name}"']),
    ('fileinto "${";', ['fileinto "${"']),
    ('set :lower "a" "MiXeD"; fileinto "${a}";', ['fileinto "mixed"']),
    ('set :upper "a" "MiXeD"; fileinto "${a}";', ['fileinto "MIXED"']),
    ('set :lowerfirst "a" "MiXeD"; fileinto "${a}";', ['fileinto "miXeD"']),
    ('set :upperfirst "a" "miXeD"; fileinto "${a}";', ['fileinto "MiXeD"']),
    ('set :upperfirst :lower "a" "miXeD"; fileinto "${a}";', ['fileinto "Mixed"']),
    ('set :length "a" "hello"; fileinto "${a}";', ['fileinto "5"']),
    ('set :length :upper "a" "hello"; fileinto "${a}";', ['fileinto "5"']),
    ('set :quotewildcard "a" "a*b?c\\\\d"; fileinto "${a}";', ['fileinto "a\\\\*b\\\\?c\\\\\\\\d"']),
    ('set :quoteregex "a" "1.0+"; fileinto "${a}";', ['fileinto "1\\\\.0\\\\+"']),
    ('set :encodeurl "a" "a b&c"; fileinto "${a}";', ['fileinto "a%20b%26c"']),
    ('set "s" "[acme*"; if header :matches "Subject" "${s}" { fileinto "pattern"; }',
     ['fileinto "pattern"']),
    ('set :quotewildcard "s" "[acme*"; if header :matches "Subject" "${s}" '
     '{ fileinto "literal"; }', ["keep"]),
    ('set "x" "a"; if string :is "${x}" "a" { fileinto "eq"; }', ['fileinto "eq"']),
    ('if header :matches "From" "*<*>" { set "who" "${2}"; } fileinto "from/${who}";',
     ['fileinto "from/alice@example.org"']),
    ('if envelope :matches :detail "to" "*" { fileinto "INBOX.${1}"; }',
     ['fileinto "INBOX.lists"']),
    ('set "d" "3"; vacation :days 1 :subject "${d}" "away ${d}";',
     ['vacation to="alice@example.org" from="bob+lists@example.com" subject="3" '
      'seconds=86400 reason="away 3"', "keep"]),
]


@pytest.mark.parametrize("script, expected", VARIABLE_CASES)
def test_variables(script, expected):
    """variables (RFC 5229): names are case-insensitive, unknown ones are empty, malformed
    references stay as written; modifiers apply in precedence order."""
    assert sieve(script) == expected


def test_without_variables_extension_nothing_is_expanded():
    """Without `require "variables"`, "${x}" is literal text."""
    result = run_script('require "fileinto"; fileinto "${x}";')
    assert result.lines() == ['fileinto "${x}"']


EDITHEADER_CASES = [
    ('addheader "X-Sieve" "yes"; if header :is "X-Sieve" "yes" { fileinto "added"; }',
     ['fileinto "added"']),
    ('deleteheader "Subject"; if not exists "Subject" { fileinto "gone"; }', ['fileinto "gone"']),
    ('deleteheader "X-Spam-Score"; if header :count "eq" :comparator "i;ascii-numeric" '
     '"X-Spam-Score" "0" { fileinto "none"; }', ['fileinto "none"']),
    ('deleteheader :index 1 "X-Spam-Score"; if header :is "X-Spam-Score" "7" '
     '{ fileinto "still"; }', ["keep"]),
    ('deleteheader :index 1 :last "X-Spam-Score"; if header :is "X-Spam-Score" "7" '
     '{ fileinto "still"; }', ['fileinto "still"']),
    ('deleteheader "X-Spam-Score" "12"; if header :is "X-Spam-Score" "12" { fileinto "no"; } '
     'elsif header :is "X-Spam-Score" "7" { fileinto "kept7"; }', ['fileinto "kept7"']),
    ('deleteheader :matches "Subject" "*acme*"; if exists "Subject" { fileinto "no"; }',
     ["keep"]),
    ('deleteheader "Received"; if exists "Received" { fileinto "protected"; }',
     ['fileinto "protected"']),
    ('addheader "X-A" "1"; addheader :last "X-A" "2"; '
     'if header :index 1 :is "X-A" "1" { fileinto "first"; }', ['fileinto "first"']),
    ('addheader "X-A" "1"; addheader "X-A" "2"; '
     'if header :index 1 :is "X-A" "2" { fileinto "top"; }', ['fileinto "top"']),
    ('addheader "X-U" "Café"; if header :is "X-U" "Café" { fileinto "utf8"; }',
     ['fileinto "utf8"']),
]


@pytest.mark.parametrize("script, expected", EDITHEADER_CASES)
def test_editheader_is_seen_by_later_tests(script, expected):
    """addheader/deleteheader (RFC 5293): later tests see the change; Received is protected."""
    assert sieve(script) == expected


def test_editheader_changes_the_kept_message():
    """The kept message carries the edits; everything else stays byte for byte."""
    result = run_script(ALL + 'addheader "X-Filtered" "yes"; deleteheader "X-Spam-Score"; '
                        'addheader :last "X-Last" "z";')
    assert result.lines() == ["keep"]
    assert result.message.startswith(b"X-Filtered: yes\r\nReturn-Path: <alice@example.org>\r\n")
    assert b"X-Spam-Score" not in result.message
    assert b"X-Last: z\r\n\r\nHello Bob,\r\nthe meeting is at noon.\r\n" in result.message
    untouched = run_script(ALL + "keep;")
    assert untouched.message == MESSAGE


def test_editheader_change_is_dropped_on_error():
    """A failed run keeps the original message."""
    result = run_script(ALL + 'addheader "X-Filtered" "yes"; redirect "${bad}";')
    assert result.lines() == ["error: runtime", "keep"]
    assert result.message == MESSAGE


VACATION_CASES = [
    ('vacation "I am away";', {},
     ['vacation to="alice@example.org" from="bob+lists@example.com" '
      'subject="Auto: [acme-users] [fwd] version 1.0 is out" seconds=604800 '
      'reason="I am away"', "keep"]),
    ('vacation :days 3 :subject "Away" :from "bob@example.com" :handle "h1" "Back soon";', {},
     ['vacation to="alice@example.org" from="bob@example.com" subject="Away" seconds=259200 '
      'handle="h1" reason="Back soon"', "keep"]),
    ('vacation :days 0 :subject "S" "r";', {},
     ['vacation to="alice@example.org" from="bob+lists@example.com" subject="S" '
      'seconds=86400 reason="r"', "keep"]),
    ('vacation :seconds 0 :subject "S" "r";', {},
     ['vacation to="alice@example.org" from="bob+lists@example.com" subject="S" seconds=0 '
      'reason="r"', "keep"]),
    ('vacation :seconds 3600 :subject "S" "r";', {},
     ['vacation to="alice@example.org" from="bob+lists@example.com" subject="S" '
      'seconds=3600 reason="r"', "keep"]),
    ('vacation "r"; discard;', {}, ['vacation to="alice@example.org" '
                                     'from="bob+lists@example.com" subject="Auto: [acme-users] '
                                     '[fwd] version 1.0 is out" seconds=604800 reason="r"',
                                     "discard"]),
    ('vacation "r";', {"sender": ""}, ['vacation suppressed="system-address"', "keep"]),
    ('vacation "r";', {"sender": "MAILER-DAEMON@example.org"},
     ['vacation suppressed="system-address"', "keep"]),
    ('vacation "r";', {"sender": "owner-list@example.org"},
     ['vacation suppressed="system-address"', "keep"]),
    ('vacation "r";', {"sender": "list-request@example.org"},
     ['vacation suppressed="system-address"', "keep"]),
    ('vacation "r";', {"sender": "bob@example.com"}, ['vacation suppressed="own-address"', "keep"]),
    ('vacation "r";', {"recipient": "zed@example.com", "own_addresses": ()},
     ['vacation suppressed="not-addressed"', "keep"]),
    ('vacation :addresses "carol@example.net" "r";',
     {"recipient": "zed@example.com", "own_addresses": ()},
     ['vacation to="alice@example.org" from="zed@example.com" subject="Auto: [acme-users] '
      '[fwd] version 1.0 is out" seconds=604800 reason="r"', "keep"]),
    ('vacation "r";', {"recipient": "dave@example.com", "own_addresses": ()},
     ['vacation to="alice@example.org" from="dave@example.com" subject="Auto: [acme-users] '
      '[fwd] version 1.0 is out" seconds=604800 reason="r"', "keep"]),
    ('addheader "Auto-Submitted" "auto-generated"; vacation "r";', {},
     ["vacation to=\"alice@example.org\" from=\"bob+lists@example.com\" subject=\"Auto: "
      "[acme-users] [fwd] version 1.0 is out\" seconds=604800 reason=\"r\"", "keep"]),
    ('addheader "List-Id" "<acme.example.org>"; vacation "r";', {},
     ['vacation suppressed="mailing-list"', "keep"]),
    ('addheader "Precedence" "bulk"; vacation "r";', {},
     ['vacation suppressed="precedence"', "keep"]),
    ('addheader "Precedence" "first-class"; vacation :subject "S" "r";', {},
     ['vacation to="alice@example.org" from="bob+lists@example.com" subject="S" '
      'seconds=604800 reason="r"', "keep"]),
    ('addheader "X-Auto-Response-Suppress" "DR, OOF"; vacation "r";', {},
     ['vacation suppressed="auto-response-suppress"', "keep"]),
    ('vacation "r"; vacation "again";', {}, ["error: runtime", "keep"]),
    ('vacation :subject "S" "multi\nline\ttab";', {},
     ['vacation to="alice@example.org" from="bob+lists@example.com" subject="S" '
      'seconds=604800 reason="multi\\nline\\ttab"', "keep"]),
]


@pytest.mark.parametrize("script, envelope, expected", VACATION_CASES)
def test_vacation(script, envelope, expected):
    """vacation (RFC 5230, vacation-seconds RFC 6131): the reply's fields, the interval, and
    every reason not to answer (RFC 3834)."""
    assert sieve(script, **envelope) == expected


def test_auto_submitted_suppresses_vacation():
    """A message marked Auto-Submitted (anything but "no") is never answered."""
    message = MESSAGE.replace(b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:")
    assert sieve('vacation "r";', message) == ['vacation suppressed="auto-submitted"', "keep"]
    message = MESSAGE.replace(b"Subject:", b"Auto-Submitted: no\r\nSubject:")
    assert sieve('vacation :subject "S" "r";', message)[0].startswith("vacation to=")


def test_vacation_action_carries_thread_headers_and_handle():
    """The action holds In-Reply-To/References and the history key (RFC 5230 4.2, 5.8)."""
    action = run_script(ALL + 'vacation :subject "S" "r";').actions[0]
    assert isinstance(action, Vacation)
    assert action.in_reply_to == "<m1@example.org>"
    assert action.references == "<m1@example.org>"
    assert action.history_key == vacation.default_handle("r", "S", None, False)
    assert action.handle is None
    other = run_script(ALL + 'vacation :subject "T" "r";').actions[0]
    assert other.history_key != action.history_key
    reply = vacation.build_reply(action, message_id="<r1@example.com>", date=0)
    assert b"Auto-Submitted: auto-replied" in reply
    assert b"In-Reply-To: <m1@example.org>\r\n" in reply
    assert reply.endswith(b"\r\n\r\nr")


@pytest.mark.parametrize("days, seconds, expected", [
    (None, None, 604800), (1, None, 86400), (0, None, 86400), (1000, None, 365 * 86400),
    (None, 0, 0), (None, 60, 60),
])
def test_vacation_interval(days, seconds, expected):
    """:days at least one day, :seconds may be 0, 7 days by default."""
    assert vacation.vacation_seconds(days, seconds) == expected


@pytest.mark.parametrize("sender, expected", [
    ("MAILER-DAEMON@x.org", True), ("postmaster@x.org", True), ("owner-l@x.org", True),
    ("l-request@x.org", True), ("noreply@x.org", True), ("alice@x.org", False),
])
def test_system_addresses(sender, expected):
    """Robots are never answered (RFC 3834 2)."""
    assert vacation.is_system_address(sender) is expected


def test_subject_default():
    """"Auto: " and the original subject, unless :subject."""
    assert vacation.reply_subject(None, "Hi") == "Auto: Hi"
    assert vacation.reply_subject("Mine", "Hi") == "Mine"
    assert vacation.reply_subject(None, "") == "Auto:"


def test_vacation_suppression_on_a_list_header():
    """Any List-* header marks a mailing list (RFC 2369, 2919)."""
    message = SieveMessage(b"List-Unsubscribe: <mailto:x@y>\r\nTo: bob@example.com\r\n\r\n")
    assert vacation.suppression_reason(message, "a@b.c", "bob@example.com") == "mailing-list"
    message = SieveMessage(b"To: bob@example.com\r\n\r\n")
    assert vacation.suppression_reason(message, "a@b.c", "bob@example.com") is None


REJECT_CASES = [
    ('reject "no"; reject "again";', ["error: runtime", "keep"]),
    ('reject "no"; vacation "away";', ["error: runtime", "keep"]),
    ('vacation "away"; reject "no";', ["error: runtime", "keep"]),
    ('keep; reject "no";', ["error: runtime", "keep"]),
    ('fileinto "A"; reject "no";', ["error: runtime", "keep"]),
    ('reject "no"; fileinto "A";', ["error: runtime", "keep"]),
    ('redirect "c@example.net"; reject "no";', ["error: runtime", "keep"]),
    ('redirect :copy "c@example.net"; reject "no";', ['redirect "c@example.net"', 'reject "no"']),
    ('discard; reject "no";', ["discard", 'reject "no"']),
]


@pytest.mark.parametrize("script, expected", REJECT_CASES)
def test_reject_conflicts(script, expected):
    """reject/ereject (RFC 5429 2.1) cannot be combined with vacation, another reject or a
    delivery: a run-time error, and the message is kept."""
    assert sieve(script) == expected


NOTIFY_CASES = [
    ('notify "mailto:carol@example.net";', ['notify method="mailto" to="carol@example.net"',
                                             "keep"]),
    ('notify :from "bob@example.com" :importance "1" :message "New mail" '
     '"mailto:carol@example.net,dave@example.net?cc=erin@example.net";',
     ['notify method="mailto" from="bob@example.com" importance=1 message="New mail" '
      'to="carol@example.net,dave@example.net" cc="erin@example.net"', "keep"]),
    ('notify "mailto:?to=carol%40example.net&subject=hi";',
     ['notify method="mailto" to="carol@example.net"', "keep"]),
    ('notify "mailto:carol@example.net"; notify "mailto:carol@example.net";',
     ['notify method="mailto" to="carol@example.net"', "keep"]),
    ('set "m" "xmpp"; notify "${m}:carol@example.net";', ["error: runtime", "keep"]),
    ('set "u" "mailto:"; notify "${u}";', ["error: runtime", "keep"]),
    ('if valid_notify_method "mailto:carol@example.net" { fileinto "valid"; }',
     ['fileinto "valid"']),
    ('if valid_notify_method ["mailto:carol@example.net", "xmpp:a@b"] { fileinto "valid"; }',
     ["keep"]),
    ('if valid_notify_method "mailto:not an address" { fileinto "valid"; }', ["keep"]),
    ('if notify_method_capability "mailto:carol@example.net" "online" "maybe" '
     '{ fileinto "maybe"; }', ['fileinto "maybe"']),
    ('if notify_method_capability "mailto:carol@example.net" "online" "yes" '
     '{ fileinto "yes"; }', ["keep"]),
    ('if notify_method_capability "xmpp:c@x" "online" "maybe" { fileinto "maybe"; }', ["keep"]),
]


@pytest.mark.parametrize("script, expected", NOTIFY_CASES)
def test_enotify(script, expected):
    """enotify with mailto (RFC 5435, 5436): the action's fields; duplicates once; other
    methods fail the run; the capability tests."""
    assert sieve(script) == expected


def loader(scripts: dict[tuple[str, str], str]):
    from cloudmail.sieve.checker import compile_script as compile_

    def load(name: str, location: str) -> Script:
        if (name, location) not in scripts:
            raise LookupError(name)
        return compile_(scripts[(name, location)])
    return load


INCLUDE_SCRIPTS = {
    ("lists", "personal"): 'require "fileinto"; fileinto "lists";',
    ("spam", "global"): 'require "fileinto"; fileinto "spam"; stop;',
    ("ret", "personal"): 'require ["fileinto", "include"]; fileinto "r1"; return; fileinto "r2";',
    ("loop", "personal"): 'require "include"; include "loop";',
    ("setg", "personal"): 'require ["include", "variables"]; global "who"; set "who" "inner"; '
                          'set "local" "x";',
    ("useg", "personal"): 'require ["include", "variables", "fileinto"]; '
                          'fileinto "g-${global.who}-${local}";',
    ("count", "personal"): 'require ["include", "variables"]; global "n"; set "n" "${n}x";',
    ("bad", "personal"): 'require ["fileinto", "variables"]; fileinto "${x}";',
    ("deep", "personal"): 'require "include"; include "deeper";',
    ("deeper", "personal"): 'require "include"; include "deepest";',
    ("deepest", "personal"): 'require "fileinto"; fileinto "deepest";',
}

INCLUDE_CASES = [
    ('include "lists";', ['fileinto "lists"']),
    ('include :personal "lists"; keep;', ['fileinto "lists"', "keep"]),
    ('include :global "spam"; fileinto "after";', ['fileinto "spam"']),
    ('include "ret"; fileinto "after";', ['fileinto "r1"', 'fileinto "after"']),
    ('include "missing";', ["error: runtime", "keep"]),
    ('include :optional "missing"; fileinto "after";', ['fileinto "after"']),
    ('include :global "lists";', ["error: runtime", "keep"]),
    ('include "loop";', ["error: runtime", "keep"]),
    ('include "setg"; fileinto "${who}-${local}";', ['fileinto "-"']),
    ('global "who"; include "setg"; fileinto "${who}";', ['fileinto "inner"']),
    ('include "setg"; include "useg";', ['fileinto "g-inner-"']),
    ('global "n"; include "count"; include "count"; include :once "count"; fileinto "${n}";',
     ['fileinto "xx"']),
    ('global "n"; include :once "count"; include :once "count"; fileinto "${n}";',
     ['fileinto "x"']),
    ('include "bad";', ["error: runtime", "keep"]),
    ('include "deep";', ['fileinto "deepest"']),
    ('return; fileinto "no";', ["keep"]),
]


@pytest.mark.parametrize("script, expected", INCLUDE_CASES)
def test_include(script, expected):
    """include (RFC 6609): personal and global scripts from the loader, :once, :optional,
    return, global variables, recursion refused."""
    assert sieve(script, load_script=loader(INCLUDE_SCRIPTS)) == expected


def test_include_depth_is_limited():
    """Nesting deeper than the limit fails the run."""
    assert sieve('include "deep";', load_script=loader(INCLUDE_SCRIPTS),
                 max_include_depth=2) == ["error: runtime", "keep"]


def test_include_without_a_loader_fails():
    """No loader: the include cannot be found."""
    assert sieve('include "lists";') == ["error: runtime", "keep"]


LIMIT_CASES = [
    ("".join(f'redirect "u{i}@example.net";' for i in range(11)), {},
     ["error: runtime", "keep"]),
    ("".join(f'redirect "u{i}@example.net";' for i in range(3)), {"max_redirects": 2},
     ["error: runtime", "keep"]),
    ("".join(f'redirect "u{i}@example.net";' for i in range(10)), {},
     [f'redirect "u{i}@example.net"' for i in range(10)]),
    ("".join(f'fileinto "f{i}";' for i in range(101)), {}, ["error: runtime", "keep"]),
    ("".join(f'fileinto "f{i}";' for i in range(5)), {"max_actions": 4},
     ["error: runtime", "keep"]),
    ('if header :contains "Subject" "x" { keep; }', {"max_cpu_seconds": -1},
     ["error: runtime", "keep"]),
]


@pytest.mark.parametrize("script, limits, expected", LIMIT_CASES)
def test_limits(script, limits, expected):
    """Caps on redirects, actions and CPU time: past them the run fails and the mail is kept."""
    assert sieve(script, **limits) == expected


def test_cpu_limit_stops_a_long_script():
    """A script that loops over many parts with heavy tests is stopped by the CPU cap."""
    script = 'foreverypart { if body :matches "*a*b*c*" { keep; } }' * 200
    result = run_script(ALL + script, max_cpu_seconds=0.0)
    assert result.lines() == ["error: runtime", "keep"]
    assert "CPU" in result.error


RUNTIME_ERROR_CASES = [
    'fileinto "${nothing}";',
    'redirect "${nothing}";',
    'redirect "not an address";',
    'set "m" "bad\x01box"; fileinto "${m}";',
    'addheader "${nothing}" "v";',
    'set "n" "Bad Name"; addheader "${n}" "v";',
    'error "custom failure";',
    'fileinto "A"; error "after an action";',
    'if header :contains :comparator "i;ascii-numeric" "Subject" "1" { keep; }',
    'set "r" "(("; if string :regex "x" "${r}" { keep; }',
    'set "z" "bad"; if date :zone "${z}" :is "Date" "year" "2026" { keep; }',
]


@pytest.mark.parametrize("script", RUNTIME_ERROR_CASES)
def test_runtime_errors_keep_the_message(script):
    """Any run-time failure drops the script's actions and keeps the message (RFC 5228
    2.10.6), reporting the error."""
    result = run_script(ALL + script)
    assert result.lines() == ["error: runtime", "keep"]
    assert result.error
    assert isinstance(result.actions[0], RunFailure)


def test_error_command_message_is_reported():
    """The `error` command's text is in the error."""
    assert "custom failure" in run_script(ALL + 'error "custom failure";').error


def test_handmade_ast_unknown_command_fails_safely():
    """An AST the checker would refuse still cannot lose mail."""
    script = Script((Command("frobnicate", (StringList(("x",), P, True),), (), None, P),))
    assert run(script, MESSAGE, SieveEnvelope("a@b.c", "bob@example.com")).lines() == [
        "error: runtime", "keep"]


def test_result_message_and_no_error():
    """A clean run has no error and the message unchanged."""
    result = run_script(ALL + 'fileinto "A";')
    assert result.error is None
    assert result.message == MESSAGE


def test_default_context():
    """run works without a context (INBOX exists, now is the wall clock)."""
    from cloudmail.sieve.checker import compile_script as compile_
    script = compile_('require "mailbox"; if mailboxexists "INBOX" { discard; }')
    assert run(script, MESSAGE, SieveEnvelope("a@b.c", "bob@example.com")).lines() == ["discard"]


@pytest.mark.parametrize("action, line", [
    (Keep(), "keep"),
    (Keep(("\\Seen", "$x")), 'keep flags="\\\\Seen $x"'),
    (FileInto("A"), 'fileinto "A"'),
    (FileInto("A\\B", ("x",), create=True), 'fileinto "A\\\\B" create flags="x"'),
    (Redirect("a@b"), 'redirect "a@b"'),
    (Redirect("a@b", suppressed="mail-loop"), 'redirect "a@b" suppressed="mail-loop"'),
    (Discard(), "discard"),
    (Reject('a "b"\n\tc'), 'reject "a \\"b\\"\\n\\tc"'),
    (Vacation("t@x", "f@x", "S", 60, "R", "k", handle="H"),
     'vacation to="t@x" from="f@x" subject="S" seconds=60 handle="H" reason="R"'),
    (VacationSuppressed("precedence"), 'vacation suppressed="precedence"'),
    (Notify("mailto", "mailto:a@b"), 'notify method="mailto"'),
    (Notify("mailto", "mailto:a@b", "f@x", 3, "m", ("a@b", "c@d"), ("e@f",)),
     'notify method="mailto" from="f@x" importance=3 message="m" to="a@b,c@d" cc="e@f"'),
    (RunFailure("x"), "error: runtime"),
])
def test_format_actions(action, line):
    """The dry-run line of each action, values quoted with \\\\ \\" \\n \\t escapes."""
    assert format_actions([action]) == [line]


def test_sorted_flags():
    """System flags first in their order, canonical case, then keywords once."""
    assert sorted_flags(["b", "\\draft", "\\SEEN", "a", "B"]) == ("\\Seen", "\\Draft", "b", "a")
