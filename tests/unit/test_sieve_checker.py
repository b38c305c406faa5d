"""The Sieve checker: commands, tests, tags and arguments per RFC, gated by `require`."""

from __future__ import annotations

import pytest

from cloudmail.sieve.ast import Number, Position, SieveError, StringList
from cloudmail.sieve.checker import (COMMANDS, SUPPORTED_EXTENSIONS, TESTS, address_part,
                                     comparator, compile_script, match_type,
                                     relational_operator, split_arguments)

# Valid scripts in the spirit of the RFC examples (written for these tests).
VALID = [
    # RFC 5228
    'keep;',
    '',
    'discard;',
    'stop;',
    'redirect "a@example.com";',
    'if true { keep; } elsif false { discard; } else { stop; }',
    'if size :over 100K { discard; }',
    'if size :under 1M { keep; }',
    'if not size :over 10 { keep; }',
    'if anyof (not exists ["From", "Date"], header :contains "from" "spam") { discard; }',
    'if allof (true, true, false) { stop; }',
    'if exists "x-list" { keep; }',
    'if header :is "subject" "hi" { keep; }',
    'if header :matches "subject" ["*money*", "?free"] { discard; }',
    'if header :contains :comparator "i;octet" "Subject" "MAKE MONEY" { discard; }',
    'if header :comparator "i;ascii-casemap" :is "x" "y" { keep; }',
    'if address :all :is "from" "a@b.c" { keep; }',
    'if address :domain :is ["from", "to"] "example.com" { keep; }',
    'if address :localpart :contains "from" "boss" { keep; }',
    'if address :is :all :comparator "i;octet" "from" "x" { keep; }',
    'require "comparator-i;octet"; keep;',
    'require ["comparator-i;ascii-casemap"]; keep;',
    'require "envelope"; if envelope :all :is "from" "a@b" { keep; }',
    'require "envelope"; if envelope :domain :is ["From", "TO"] "b" { discard; }',
    'require "fileinto"; if header :contains "subject" "x" { fileinto "INBOX.x"; }',
    'require ["fileinto"]; fileinto "a"; keep;',
    'if true { if false { keep; } else { discard; } }',
    'if header :is "x" "y" { } elsif header :is "a" "b" { } elsif true { } else { }',
    'if true { stop; } stop; keep;',
    # RFC 3894
    'require ["copy", "fileinto"]; fileinto :copy "x"; redirect :copy "a@b";',
    # RFC 5429
    'require "reject"; reject "no thanks";',
    'require "ereject"; ereject text:\nGo away.\n.\n;',
    # RFC 5230 / 6131
    'require "vacation"; vacation "I am away";',
    'require "vacation"; vacation :days 7 :subject "Away" :from "me@x" '
    ':addresses ["me@x", "me@y"] :handle "h1" "Gone fishing";',
    'require "vacation"; vacation :mime text:\nContent-Type: text/plain\n\nAway\n.\n;',
    'require "vacation"; vacation :days 0 "x";',
    'require ["vacation", "vacation-seconds"]; vacation :seconds 3600 "x";',
    'require ["vacation", "vacation-seconds"]; vacation :seconds 0 "x";',
    # RFC 5232
    'require "imap4flags"; setflag "\\\\Seen"; addflag ["\\\\Flagged", "x"]; removeflag "x";',
    'require "imap4flags"; if hasflag :contains "junk" { discard; }',
    'require "imap4flags"; keep :flags ["\\\\Seen"];',
    'require ["imap4flags", "fileinto"]; fileinto :flags "\\\\Deleted" "Trash";',
    'require ["imap4flags", "variables"]; setflag "myflags" "a"; addflag "myflags" "b";'
    'removeflag "myflags" "a"; if hasflag "myflags" "b" { keep :flags "${myflags}"; }',
    'require "imap4flags"; if hasflag :is :comparator "i;octet" ["a", "b"] { keep; }',
    # RFC 5233
    'require ["subaddress", "envelope"]; if envelope :detail "to" "list" { keep; }',
    'require "subaddress"; if address :user :is "to" "me" { keep; }',
    # RFC 5173
    'require "body"; if body :text :contains "viagra" { discard; }',
    'require "body"; if body :raw :contains "MAKE MONEY" { discard; }',
    'require "body"; if body :content "text" :contains "x" { discard; }',
    'require "body"; if body :content ["text/plain", "image"] :matches "*" { keep; }',
    'require "body"; if body "x" { keep; }',
    # RFC 5229
    'require "variables"; set "a" "1"; set "b_2" "${a}";',
    'require "variables"; set :lower :upperfirst "name" "${1}";',
    'require "variables"; set :length "n" "abc"; set :quotewildcard "q" "*";',
    'require "variables"; if string :is "${a}" "" { keep; }',
    'require "variables"; if string :matches ["${a}", "b"] "*" { keep; }',
    'require "variables"; if header :matches "subject" "*: *" { set "x" "${2}"; }',
    'require ["variables", "regex"]; set :quoteregex "r" ".*";',
    'require ["variables", "enotify"]; set :encodeurl "u" "a b";',
    'require "variables"; set :upper :lowerfirst :quotewildcard :length "x" "y";',
    # RFC 5231
    'require "relational"; if header :count "ge" "received" "3" { discard; }',
    'require ["relational", "comparator-i;ascii-numeric"]; '
    'if header :value "gt" :comparator "i;ascii-numeric" "x-spam-score" "5" { discard; }',
    'require "relational"; if address :count "EQ" "to" "1" { keep; }',
    'require ["relational", "variables"]; if header :value "${op}" "x" "1" { keep; }',
    # RFC 5490
    'require ["mailbox", "fileinto"]; fileinto :create "new"; '
    'if mailboxexists ["a", "b"] { keep; }',
    # RFC 5260
    'require "date"; if date :is "date" "year" "2024" { keep; }',
    'require "date"; if date :zone "+0100" :value "ge" "date" "hour" "09" { keep; }'
    .replace('require "date";', 'require ["date", "relational"];'),
    'require "date"; if date :originalzone :is "received" "weekday" "0" { keep; }',
    'require "date"; if currentdate :is "month" "12" { keep; }',
    'require "date"; if currentdate :zone "-0800" :matches "iso8601" "2024-*" { keep; }',
    'require ["date", "index"]; if date :index 1 :last :is "received" "year" "2024" { }',
    'require "index"; if header :index 2 :contains "received" "x" { keep; }',
    'require "index"; if address :index 1 :last :is "from" "x" { keep; }',
    # RFC 5293
    'require "editheader"; addheader "X-Note" "hi"; addheader :last "X-Tail" "bye";',
    'require "editheader"; deleteheader "X-Spam";',
    'require "editheader"; deleteheader :index 1 :last "X-A";',
    'require "editheader"; deleteheader :contains "X-A" ["a", "b"];',
    'require "editheader"; deleteheader :comparator "i;octet" :matches "X-A" "*x";',
    # regex draft
    'require "regex"; if header :regex "subject" "^[a-z]+$" { discard; }',
    'require ["regex", "comparator-i;octet"]; if address :regex :comparator "i;octet" '
    '"from" "x.*" { keep; }',
    # RFC 6609
    'require "include"; include "common";',
    'require "include"; include :global :once :optional "spam";',
    'require "include"; include :personal "mine"; return;',
    'require ["include", "variables"]; global ["a", "b"]; global "c";',
    # RFC 5435
    'require "enotify"; notify "mailto:a@b.example";',
    'require "enotify"; notify :from "me@x" :importance "1" :options ["o"] '
    ':message "hi" "MAILTO:a@b";',
    'require "enotify"; if valid_notify_method "mailto:a@b" { keep; }',
    'require "enotify"; if notify_method_capability :is "mailto:a@b" "online" "yes" { }',
    'require ["enotify", "variables"]; notify :importance "${i}" "${method}";',
    # RFC 5703
    'require "mime"; if header :mime :type "content-type" "text" { keep; }',
    'require "mime"; if header :mime :anychild :subtype "content-type" "html" { keep; }',
    'require "mime"; if header :mime :param ["name"] :contains "content-type" "x" { }',
    'require "mime"; if header :mime :contenttype "content-type" "text/plain" { }',
    'require "mime"; if address :mime :anychild :is "from" "x" { }',
    'require "mime"; if exists :mime :anychild "content-id" { }',
    'require "foreverypart"; foreverypart { break; }',
    'require "foreverypart"; foreverypart :name "outer" { foreverypart { '
    'if true { break :name "outer"; } break; } }',
    'require ["foreverypart", "mime", "fileinto"]; foreverypart { '
    'if header :mime :type "content-type" "image" { fileinto "images"; break; } }',
    # RFC 5463
    'require "ihave"; if ihave "fileinto" { fileinto "x"; }',
    'require "ihave"; if ihave ["vacation", "copy"] { vacation "x"; redirect :copy "a@b"; }',
    'require "ihave"; if ihave "no-such-extension" { frobnicate :x 1; }',
    'require "ihave"; if ihave "fileinto" { } else { error "no fileinto"; }',
    'require "ihave"; if allof (ihave "body", true) { if body "x" { } }',
    'require "ihave"; error "stop here";',
    'require "ihave"; if not ihave "fileinto" { keep; }',
    # RFC 5228 2.4.2.4
    'require ["encoded-character", "fileinto"]; fileinto "${hex:41}";',
]


@pytest.mark.parametrize("text", VALID)
def test_valid_scripts(text):
    script = compile_script(text)
    assert script.commands is not None


ERRORS = [
    # require
    ('require "foo";', 1, 9, 'unsupported extension "foo"'),
    ('require ["fileinto", "foo"];', 1, 9, 'unsupported extension "foo"'),
    ('require "FILEINTO";', 1, 9, 'unsupported extension "FILEINTO"'),
    ('require "comparator-i;foo";', 1, 9, 'unsupported extension'),
    # unknown names
    ('frobnicate;', 1, 1, 'unknown command "frobnicate"'),
    ('if frob { }', 1, 4, 'unknown test "frob"'),
    ('keep :frob;', 1, 6, 'unknown tag ":frob" for command "keep"'),
    ('if header :frob "a" "b" { }', 1, 11, 'unknown tag ":frob" for test "header"'),
    # extension gating: commands
    ('fileinto "x";', 1, 1, 'command "fileinto" requires the "fileinto" extension'),
    ('keep;\nreject "x";', 2, 1, 'command "reject" requires the "reject" extension'),
    ('ereject "x";', 1, 1, 'command "ereject" requires the "ereject"'),
    ('require "reject"; ereject "x";', 1, 19, '"ereject" requires the "ereject"'),
    ('vacation "x";', 1, 1, '"vacation" requires the "vacation"'),
    ('setflag "x";', 1, 1, '"setflag" requires the "imap4flags"'),
    ('addflag "x";', 1, 1, '"addflag" requires the "imap4flags"'),
    ('removeflag "x";', 1, 1, '"removeflag" requires the "imap4flags"'),
    ('set "a" "b";', 1, 1, '"set" requires the "variables"'),
    ('addheader "a" "b";', 1, 1, '"addheader" requires the "editheader"'),
    ('deleteheader "a";', 1, 1, '"deleteheader" requires the "editheader"'),
    ('include "a";', 1, 1, '"include" requires the "include"'),
    ('return;', 1, 1, '"return" requires the "include"'),
    ('require "include"; global "a";', 1, 20, '"global" requires the "variables"'),
    ('notify "mailto:a@b";', 1, 1, '"notify" requires the "enotify"'),
    ('foreverypart { }', 1, 1, '"foreverypart" requires the "foreverypart"'),
    ('break;', 1, 1, '"break" requires the "foreverypart"'),
    ('error "x";', 1, 1, '"error" requires the "ihave"'),
    # extension gating: tests
    ('if envelope "from" "x" { }', 1, 4, 'test "envelope" requires the "envelope"'),
    ('if body "x" { }', 1, 4, 'test "body" requires the "body"'),
    ('if string "a" "b" { }', 1, 4, 'test "string" requires the "variables"'),
    ('if hasflag "x" { }', 1, 4, 'test "hasflag" requires the "imap4flags"'),
    ('if mailboxexists "x" { }', 1, 4, 'test "mailboxexists" requires the "mailbox"'),
    ('if date "date" "year" "1" { }', 1, 4, 'test "date" requires the "date"'),
    ('if currentdate "year" "1" { }', 1, 4, 'test "currentdate" requires the "date"'),
    ('if valid_notify_method "x" { }', 1, 4, 'requires the "enotify"'),
    ('if notify_method_capability "a" "b" "c" { }', 1, 4, 'requires the "enotify"'),
    ('if ihave "x" { }', 1, 4, 'test "ihave" requires the "ihave"'),
    # extension gating: tags and comparators
    ('require "fileinto"; fileinto :copy "x";', 1, 30, 'tag ":copy" requires the "copy"'),
    ('redirect :copy "a@b";', 1, 10, 'tag ":copy" requires the "copy"'),
    ('keep :flags "x";', 1, 6, 'tag ":flags" requires the "imap4flags"'),
    ('require "fileinto"; fileinto :flags "x" "y";', 1, 30, '":flags" requires the "imap4'),
    ('require "fileinto"; fileinto :create "x";', 1, 30, '":create" requires the "mailbox"'),
    ('if header :regex "a" "b" { }', 1, 11, 'tag ":regex" requires the "regex"'),
    ('if header :count "eq" "a" "1" { }', 1, 11, 'tag ":count" requires the "relational"'),
    ('if header :value "eq" "a" "1" { }', 1, 11, 'tag ":value" requires the "relational"'),
    ('if address :user "to" "x" { }', 1, 12, 'tag ":user" requires the "subaddress"'),
    ('if address :detail "to" "x" { }', 1, 12, 'tag ":detail" requires the "subaddress"'),
    ('if header :index 1 "a" "b" { }', 1, 11, 'tag ":index" requires the "index"'),
    ('require "date"; if date :index 1 "d" "year" "1" { }', 1, 25, '"index" extension'),
    ('if header :mime "a" "b" { }', 1, 11, 'tag ":mime" requires the "mime"'),
    ('if exists :mime "a" { }', 1, 11, 'tag ":mime" requires the "mime"'),
    ('require "vacation"; vacation :seconds 3 "x";', 1, 30,
     'tag ":seconds" requires the "vacation-seconds"'),
    ('require "variables"; set :quoteregex "a" "b";', 1, 26, '":quoteregex" requires the "regex'),
    ('require "variables"; set :encodeurl "a" "b";', 1, 26, '":encodeurl" requires the "enot'),
    ('if header :comparator "i;ascii-numeric" "a" "b" { }', 1, 23,
     'comparator "i;ascii-numeric" requires the "comparator-i;ascii-numeric" extension'),
    ('if header :comparator "i;frob" "a" "b" { }', 1, 23, 'unsupported comparator "i;frob"'),
    ('require ["imap4flags"]; setflag "v" "x";', 1, 33, 'requires the "variables"'),
    ('require ["imap4flags"]; if hasflag "v" "x" { }', 1, 36, 'requires the "variables"'),
    # ihave guards only its own block
    ('require "ihave"; if ihave "fileinto" { } fileinto "x";', 1, 42,
     '"fileinto" requires the "fileinto"'),
    ('require "ihave"; if ihave "fileinto" { } else { fileinto "x"; }', 1, 49,
     '"fileinto" requires'),
    ('require "ihave"; if anyof (ihave "fileinto", true) { fileinto "x"; }', 1, 54,
     '"fileinto" requires'),
    ('require "ihave"; if ihave "fileinto" { frob; }', 1, 40, 'unknown command "frob"'),
    # control structure
    ('else { }', 1, 1, '"else" must follow "if" or "elsif"'),
    ('elsif true { }', 1, 1, '"elsif" must follow "if" or "elsif"'),
    ('if true { } keep; else { }', 1, 19, '"else" must follow'),
    ('if true { } else { } else { }', 1, 22, '"else" must follow'),
    ('if true { } else { } elsif true { }', 1, 22, '"elsif" must follow'),
    ('if true { else { } }', 1, 11, '"else" must follow'),
    ('if true;', 1, 1, '"if" needs a block'),
    ('if { }', 1, 1, '"if" takes exactly one test'),
    ('if (true, false) { }', 1, 11, '"if" takes exactly one test'),
    ('else true { }', 1, 1, '"else" must follow'),
    ('if true { } else true { }', 1, 18, 'expected ";" after the arguments of "else"'),
    ('keep { }', 1, 1, '"keep" does not take a block'),
    ('stop { }', 1, 1, '"stop" does not take a block'),
    ('require "fileinto";\nif true {\n  fileinto "x"\n  keep;\n}', 4, 3,
     'expected ";" after the arguments of "fileinto", found "keep"'),
    ('keep true;', 1, 6, 'expected ";" after the arguments of "keep", found "true"'),
    ('require "foreverypart"; break;', 1, 25, '"break" must be inside "foreverypart"'),
    ('require "foreverypart"; foreverypart :name "a" { break :name "b"; }', 1, 62,
     'no enclosing "foreverypart" is named "b"'),
    ('require "foreverypart"; foreverypart;', 1, 25, '"foreverypart" needs a block'),
    # tests
    ('if not { }', 1, 4, '"not" takes exactly one test'),
    ('if not (true, false) { }', 1, 15, '"not" takes exactly one test'),
    ('if allof { }', 1, 4, '"allof" needs a list of tests'),
    ('if anyof "x" { }', 1, 10, 'too many arguments for "anyof"'),
    ('if true false { }', 1, 9, 'test "true" does not take a test'),
    ('if true "x" { }', 1, 9, 'too many arguments for "true"'),
    ('if exists { }', 1, 4, '"exists" is missing its header names argument'),
    ('if exists 1 { }', 1, 11, 'the header names of "exists" must be a string list, not a number'),
    ('if size 1 { }', 1, 4, '"size" needs ":over" or ":under"'),
    ('if size :over :under 1 { }', 1, 15, 'tags ":over" and ":under" cannot be used together'),
    ('if size :over "1" { }', 1, 15, 'the limit of "size" must be a number, not a string'),
    ('if size :over { }', 1, 4, '"size" is missing its limit argument'),
    ('if size :over 1 2 { }', 1, 17, 'too many arguments for "size"'),
    ('if header "a" { }', 1, 4, '"header" is missing its key list argument'),
    ('if header { }', 1, 4, '"header" is missing its header names argument'),
    ('if header "a" "b" "c" { }', 1, 19, 'too many arguments for "header"'),
    ('if header "a" 5 { }', 1, 15, 'the key list of "header" must be a string list'),
    ('if header :is :contains "a" "b" { }', 1, 15, 'tags ":is" and ":contains" cannot be'),
    ('if header :matches :is "a" "b" { }', 1, 20, 'tags ":matches" and ":is"'),
    ('require "regex"; if header :regex :is "a" "b" { }', 1, 35, 'cannot be used together'),
    ('if header :is :is "a" "b" { }', 1, 15, 'tag ":is" given twice'),
    ('if header :comparator "i;octet" :comparator "i;octet" "a" "b" { }', 1, 33, 'given twice'),
    ('if header "a" :is "b" { }', 1, 15, 'tag ":is" must come before the other arguments'),
    ('if header :comparator "a" "b" { }', 1, 4, '"header" is missing its key list'),
    ('if header :comparator ["i;octet"] "a" "b" { }', 1, 23,
     'tag ":comparator" must be followed by a string'),
    ('if header :comparator { }', 1, 11, 'tag ":comparator" must be followed by a string'),
    ('if header :comparator 1 "a" "b" { }', 1, 23, 'must be followed by a string'),
    ('if address :all :domain "a" "b" { }', 1, 17, 'tags ":all" and ":domain"'),
    ('if address :localpart :localpart "a" "b" { }', 1, 23, 'given twice'),
    ('require "envelope"; if envelope :is "frob" "x" { }', 1, 37,
     'unsupported envelope part "frob"'),
    ('require "relational"; if header :count "gx" "a" "1" { }', 1, 40,
     'unknown relational operator "gx"'),
    ('require "relational"; if header :count "a" "1" { }', 1, 26, 'missing its key list'),
    ('require "relational"; if header :value :count "eq" "a" "1" { }', 1, 40,
     'must be followed by a string'),
    ('require "relational"; if header :count "eq" :value "eq" "a" "1" { }', 1, 45,
     'tags ":count" and ":value"'),
    ('require "index"; if header :index 0 "a" "b" { }', 1, 35, '":index" counts from 1'),
    ('require "index"; if header :last "a" "b" { }', 1, 28, 'tag ":last" needs ":index"'),
    ('require "index"; if header :index "1" "a" "b" { }', 1, 35, 'must be followed by a number'),
    ('require "mime"; if header :anychild "a" "b" { }', 1, 27, '":anychild" needs ":mime"'),
    ('require "mime"; if header :type "a" "b" { }', 1, 27, 'tag ":type" needs ":mime"'),
    ('require "mime"; if header :mime :type :subtype "a" "b" { }', 1, 39,
     'tags ":type" and ":subtype"'),
    ('require "mime"; if address :mime :type "a" "b" { }', 1, 34, 'unknown tag ":type"'),
    ('require "mime"; if header :mime :param "a" "b" { }', 1, 20, 'missing its key list'),
    ('require "body"; if body :raw :text "x" { }', 1, 30, 'tags ":raw" and ":text"'),
    ('require "body"; if body :content "x" { }', 1, 20, 'missing its key list'),
    ('require "body"; if body :content 1 "x" { }', 1, 34, 'must be followed by a string list'),
    ('require "body"; if body :all "x" { }', 1, 25, 'unknown tag ":all" for test "body"'),
    ('require "variables"; if string "a" { }', 1, 25, '"string" is missing its key list'),
    ('require "date"; if date "d" "year" { }', 1, 20, 'missing its key list'),
    ('require "date"; if date "d" "frob" "1" { }', 1, 29, 'unknown date part "frob"'),
    ('require "date"; if currentdate "frob" "1" { }', 1, 32, 'unknown date part "frob"'),
    ('require "date"; if date :zone "+0100" :originalzone "d" "year" "1" { }', 1, 39,
     'tags ":zone" and ":originalzone"'),
    ('require "date"; if date :zone "CET" "d" "year" "1" { }', 1, 31, 'invalid time zone'),
    ('require "date"; if currentdate :zone "+2500" "year" "1" { }', 1, 38, 'invalid time zone'),
    ('require "date"; if currentdate :originalzone "year" "1" { }', 1, 32, 'unknown tag'),
    ('require "mailbox"; if mailboxexists { }', 1, 23, 'missing its mailbox names'),
    ('require "imap4flags"; if hasflag { }', 1, 26, '"hasflag" is missing its flags'),
    ('require "imap4flags"; if hasflag "a" "b" "c" { }', 1, 42, 'too many arguments'),
    ('require "enotify"; if valid_notify_method { }', 1, 23, 'missing its notification URIs'),
    ('require "enotify"; if notify_method_capability "a" "b" { }', 1, 23, 'missing its key list'),
    ('require "ihave"; if ihave { }', 1, 21, '"ihave" is missing its capabilities'),
    # commands' arguments
    ('keep "x";', 1, 6, 'too many arguments for "keep"'),
    ('discard 1;', 1, 9, 'too many arguments for "discard"'),
    ('stop :x;', 1, 6, 'unknown tag ":x" for command "stop"'),
    ('redirect;', 1, 1, '"redirect" is missing its address argument'),
    ('redirect ["a@b", "c@d"];', 1, 10, 'the address of "redirect" must be a string, not a '
     'string list'),
    ('redirect 1;', 1, 10, 'the address of "redirect" must be a string, not a number'),
    ('require "fileinto"; fileinto;', 1, 21, '"fileinto" is missing its mailbox argument'),
    ('require "fileinto"; fileinto ["a"];', 1, 30, 'must be a string, not a string list'),
    ('require "fileinto"; fileinto "a" "b";', 1, 34, 'too many arguments for "fileinto"'),
    ('require "fileinto"; fileinto "a" :copy;', 1, 34, 'tag ":copy" must come before'),
    ('require ["fileinto", "copy"]; fileinto "a" :copy;', 1, 44,
     'tag ":copy" must come before the other arguments of "fileinto"'),
    ('require ["fileinto", "copy"]; fileinto :copy :copy "a";', 1, 46, 'given twice'),
    ('require "imap4flags"; keep :flags;', 1, 28, 'tag ":flags" must be followed by a string'),
    ('require "reject"; reject;', 1, 19, '"reject" is missing its reason'),
    ('require "reject"; reject ["a", "b"];', 1, 26, 'must be a string'),
    ('require "vacation"; vacation;', 1, 21, '"vacation" is missing its reason'),
    ('require "vacation"; vacation :days "7" "x";', 1, 36, ':days" must be followed by a num'),
    ('require "vacation"; vacation :days "x";', 1, 36, ':days" must be followed by a number'),
    ('require "vacation"; vacation :subject ["a"] "x";', 1, 39, 'must be followed by a string'),
    ('require "vacation"; vacation :addresses 1 "x";', 1, 41, 'followed by a string list'),
    ('require ["vacation", "vacation-seconds"]; vacation :days 1 :seconds 5 "x";', 1, 60,
     'tags ":days" and ":seconds" cannot be used together'),
    ('require "vacation"; vacation :frob "x";', 1, 30, 'unknown tag ":frob"'),
    ('require "vacation"; vacation "a" "b";', 1, 34, 'too many arguments'),
    ('require "imap4flags"; setflag;', 1, 23, '"setflag" is missing its flags argument'),
    ('require ["imap4flags", "variables"]; setflag "a" "b" "c";', 1, 54, 'too many'),
    ('require ["imap4flags", "variables"]; setflag ["a"] "b";', 1, 46, 'variable name of '
     '"setflag" must be a string'),
    ('require ["imap4flags", "variables"]; addflag "bad name" "b";', 1, 46,
     'invalid variable name "bad name"'),
    ('require ["imap4flags", "variables"]; if hasflag ["ok", "1bad"] "b" { }', 1, 49,
     'invalid variable name "1bad"'),
    ('require "variables"; set "a";', 1, 22, '"set" is missing its value argument'),
    ('require "variables"; set "a" ["b"];', 1, 30, 'the value of "set" must be a string'),
    ('require "variables"; set "a.b" "c";', 1, 26, 'invalid variable name "a.b"'),
    ('require "variables"; set "${a}" "c";', 1, 26, 'invalid variable name'),
    ('require "variables"; set "" "c";', 1, 26, 'invalid variable name ""'),
    ('require "variables"; set :lower :upper "a" "b";', 1, 33, 'tags ":lower" and ":upper"'),
    ('require "variables"; set :lowerfirst :upperfirst "a" "b";', 1, 38, 'cannot be used'),
    ('require ["variables", "regex"]; set :quotewildcard :quoteregex "a" "b";', 1, 52,
     'tags ":quotewildcard" and ":quoteregex"'),
    ('require "variables"; set :length :length "a" "b";', 1, 34, 'given twice'),
    ('require ["include", "variables"]; global "1x";', 1, 42, 'invalid variable name'),
    ('require ["include", "variables"]; global;', 1, 35, 'missing its variable names'),
    ('require "include"; include;', 1, 20, '"include" is missing its script name'),
    ('require "include"; include :global :personal "a";', 1, 36,
     'tags ":global" and ":personal"'),
    ('require "include"; include "";', 1, 28, 'empty script name'),
    ('require "include"; include ["a"];', 1, 28, 'must be a string'),
    ('require "include"; return "x";', 1, 27, 'too many arguments'),
    ('require "editheader"; addheader "X-A";', 1, 23, 'missing its value argument'),
    ('require "editheader"; addheader "X A" "v";', 1, 33, 'invalid header field name "X A"'),
    ('require "editheader"; addheader "X:A" "v";', 1, 33, 'invalid header field name'),
    ('require "editheader"; addheader "" "v";', 1, 33, 'invalid header field name ""'),
    ('require "editheader"; deleteheader "X:Y";', 1, 36, 'invalid header field name'),
    ('require "editheader"; deleteheader;', 1, 23, 'missing its field name'),
    ('require "editheader"; deleteheader :last "X";', 1, 36, '":last" needs ":index"'),
    ('require "editheader"; addheader :index 1 "X" "v";', 1, 33, 'unknown tag ":index"'),
    ('require "enotify"; notify;', 1, 20, '"notify" is missing its method'),
    ('require "enotify"; notify "xmpp:a@b";', 1, 27, 'unsupported notification method'),
    ('require "enotify"; notify :importance "4" "mailto:a@b";', 1, 39,
     '":importance" must be "1", "2" or "3"'),
    ('require "enotify"; notify :options "x" :options "y" "mailto:a@b";', 1, 40, 'twice'),
    ('require "ihave"; error;', 1, 18, '"error" is missing its message'),
    ('require "ihave"; error ["a"];', 1, 24, 'must be a string'),
    ('require "foreverypart"; foreverypart :name ["a"] { }', 1, 44,
     'must be followed by a string'),
    ('require "foreverypart"; foreverypart "a" { }', 1, 38, 'too many arguments'),
]


@pytest.mark.parametrize("text, line, column, message", ERRORS)
def test_errors(text, line, column, message):
    with pytest.raises(SieveError) as info:
        compile_script(text)
    assert message in info.value.message, info.value.message
    assert info.value.position == Position(line, column), str(info.value)


@pytest.mark.parametrize("text", [
    'require "relational"; if header :count "${op}" "a" "1" { }',
    'require "date"; if date "d" "${part}" "1" { }',
    'require "enotify"; notify "${m}";',
])
def test_literal_checks_apply_without_variables(text):
    """Without "variables", "${...}" is plain text and checked as such."""
    with pytest.raises(SieveError):
        compile_script(text)
    compile_script(text.replace('require "', 'require ["variables", "', 1).replace(
        '";', '"];', 1))


@pytest.mark.parametrize("extension", SUPPORTED_EXTENSIONS)
def test_every_supported_extension_can_be_required(extension):
    assert compile_script(f'require "{extension}";').requires == (extension,)


@pytest.mark.parametrize("extension", SUPPORTED_EXTENSIONS)
def test_extensions_can_be_withdrawn(extension):
    offered = [name for name in SUPPORTED_EXTENSIONS if name != extension]
    with pytest.raises(SieveError, match=f'unsupported extension "{extension}"'):
        compile_script(f'require "{extension}";', extensions=offered)


@pytest.mark.parametrize("extension", sorted(
    {spec.extension for spec in [*COMMANDS.values(), *TESTS.values()] if spec.extension}))
def test_every_gated_name_is_a_supported_extension(extension):
    assert extension in SUPPORTED_EXTENSIONS


def test_ihave_block_uses_offered_extensions_only():
    """An `ihave` block for an extension not offered is not checked (RFC 5463)."""
    text = 'require "ihave"; if ihave "fileinto" { fileinto "x"; }'
    compile_script(text)
    compile_script(text.replace('fileinto "x"', 'fileinto 1 2 3'),
                   extensions=["ihave"])
    with pytest.raises(SieveError, match="must be a string"):
        compile_script(text.replace('fileinto "x"', 'fileinto 1'))


def test_checker_returns_the_parsed_script():
    text = 'require ["fileinto", "copy"];\nif true { fileinto :copy "x"; }'
    script = compile_script(text)
    assert script.requires == ("fileinto", "copy")
    assert script.commands[1].block[0].name == "fileinto"


def test_split_arguments():
    script = compile_script('require ["vacation", "relational", "comparator-i;ascii-numeric"];'
                            'vacation :days 3 :addresses ["a", "b"] :mime "bye";\n'
                            'if header :count "GE" :comparator "i;ascii-numeric" "to" "2" { }')
    vacation = script.commands[1]
    tags, positional = split_arguments(vacation)
    assert tags["mime"] is True
    assert tags["days"] == Number(3, Position(1, 81))
    assert tags["addresses"].values == ("a", "b")
    assert [p.values for p in positional] == [("bye",)]
    assert isinstance(positional[0], StringList) and positional[0].single
    header = script.commands[2].tests[0]
    tags, positional = split_arguments(header, TESTS["header"])
    assert match_type(tags) == "count"
    assert relational_operator(tags) == "ge"
    assert comparator(tags) == "i;ascii-numeric"
    assert [p.values for p in positional] == [("to",), ("2",)]


def test_split_arguments_defaults():
    script = compile_script('if address "from" "x" { }')
    tags, positional = split_arguments(script.commands[0].tests[0])
    assert tags == {}
    assert (match_type(tags), comparator(tags), address_part(tags)) == \
        ("is", "i;ascii-casemap", "all")
    assert relational_operator(tags) is None
    script = compile_script('if address :domain :contains "from" "x" { }')
    tags, _ = split_arguments(script.commands[0].tests[0])
    assert (match_type(tags), address_part(tags)) == ("contains", "domain")


def test_split_arguments_refuses_unknown_names():
    script = compile_script('require "ihave"; if ihave "frob" { frob :x; }')
    with pytest.raises(SieveError, match='unknown command "frob"'):
        split_arguments(script.commands[1].block[0])


def test_encoded_character_gating():
    assert compile_script('require "encoded-character"; redirect "${hex:41}@b";'
                          ).commands[1].arguments[0].values == ("A@b",)
    assert compile_script('redirect "${hex:41}@b";'
                          ).commands[0].arguments[0].values == ("${hex:41}@b",)
