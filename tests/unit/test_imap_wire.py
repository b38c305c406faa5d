"""IMAP commands off the wire (`cloudmail.imap.wire`): where a command ends, when a literal needs
a continuation, what is refused and how the reader stays in step, and how a command line parses
into tag, name and values — the same however the bytes are split across reads."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudmail.imap.tokens import Atom, LiteralFile, ParseError
from cloudmail.imap.wire import (
    Command,
    CommandError,
    CommandReader,
    ContinuationNeeded,
    RawCommand,
    Refused,
    parse_command,
)


def reader(tmp_path, **limits) -> CommandReader:
    return CommandReader(spool_dir=tmp_path, **limits)


def feed(tmp_path, data: bytes, **limits) -> list:
    return reader(tmp_path, **limits).feed(data)


def parse(line: bytes, *literals) -> Command:
    """Parse a command given as its text pieces joined by the literal markers already in them."""
    texts = line.split(b"\x00")
    return parse_command(RawCommand(texts, list(literals)))


# The reader: lines and literals


def test_plain_line_is_one_raw_command(tmp_path):
    """A line without literal markers comes out whole, without its CRLF, in one text piece."""
    assert feed(tmp_path, b"a1 NOOP\r\n") == [RawCommand([b"a1 NOOP"], [])]


def test_bare_lf_ends_a_line(tmp_path):
    """A bare LF is taken as a line end too; a CR elsewhere in the line is kept as text."""
    events = feed(tmp_path, b"a1 NOOP\na2 NO\rOP\r\n")
    assert events == [RawCommand([b"a1 NOOP"], []), RawCommand([b"a2 NO\rOP"], [])]


def test_done_and_base64_lines_are_raw_commands(tmp_path):
    """IDLE's DONE, an AUTHENTICATE response and a lone `*` come out as one-piece commands."""
    events = feed(tmp_path, b"DONE\r\ndXNlcgB1c2VyAHBhc3M=\r\n*\r\n\r\n")
    assert events == [RawCommand([b"DONE"], []), RawCommand([b"dXNlcgB1c2VyAHBhc3M="], []),
                      RawCommand([b"*"], []), RawCommand([b""], [])]


def test_synchronizing_literal_asks_for_continuation(tmp_path):
    """`{5}` gives ContinuationNeeded at its line end; the command ends after the literal's line."""
    r = reader(tmp_path)
    assert r.feed(b"a1 LOGIN {5}\r\n") == [ContinuationNeeded()]
    assert r.feed(b"alic") == []
    assert r.feed(b"e {6+}\r\nsecret\r\n") == [
        RawCommand([b"a1 LOGIN {5}", b" {6+}", b""], [b"alice", b"secret"])]


def test_literal_plus_needs_no_continuation(tmp_path):
    """A LITERAL+ `{n+}` is taken at once, and its content is exactly n bytes of anything."""
    events = feed(tmp_path, b"a1 APPEND INBOX {8+}\r\nx\r\n{1}\n\x00 y\r\n")
    assert events == [RawCommand([b"a1 APPEND INBOX {8+}", b" y"], [b"x\r\n{1}\n\x00"])]


def test_empty_and_literal8_literals(tmp_path):
    """`{0}` still asks for a continuation and gives b''; literal8 `~{n}` is read like a
    literal."""
    events = feed(tmp_path, b"a1 X {0}\r\n ~{2+}\r\n\x00\x01\r\n")
    assert events == [ContinuationNeeded(),
                      RawCommand([b"a1 X {0}", b" ~{2+}", b""], [b"", b"\x00\x01"])]


def test_big_literal_goes_to_a_spool_file(tmp_path):
    """A literal over the memory limit is written to a `literal-` file in the spool folder."""
    content = bytes(range(256)) * 8
    events = feed(tmp_path, b"a1 APPEND INBOX {2048+}\r\n" + content + b"\r\n", memory_limit=1000)
    [command] = events
    [literal] = command.literals
    assert isinstance(literal, LiteralFile)
    assert literal.path.parent == tmp_path and literal.path.name.startswith("literal-")
    assert (literal.size, literal.read_bytes()) == (2048, content)
    literal.discard()
    assert os.listdir(tmp_path) == []


def test_literals_share_the_memory_limit(tmp_path):
    """Several literals of one command share the memory limit: once it is used, they spool."""
    [command] = feed(tmp_path, b"a1 X {6+}\r\naaaaaa {6+}\r\nbbbbbb\r\n", memory_limit=10)
    first, second = command.literals
    assert first == b"aaaaaa"
    assert isinstance(second, LiteralFile) and second.read_bytes() == b"bbbbbb"
    second.discard()


def test_spool_failure_refuses_and_skips_the_literal(tmp_path):
    """When the spool file cannot be made, a LITERAL+ and its line are skipped and refused; a
    synchronizing literal is refused at once (no continuation, so the client sends nothing)."""
    r = reader(tmp_path / "missing", memory_limit=3)
    assert r.feed(b"a1 APPEND INBOX {5+}\r\nhello more\r\na2 NOOP\r\n") == [
        Refused("a1", "cannot store the literal", None), RawCommand([b"a2 NOOP"], [])]
    assert r.feed(b"a3 APPEND INBOX {5}\r\na4 NOOP\r\n") == [
        Refused("a3", "cannot store the literal", None), RawCommand([b"a4 NOOP"], [])]


class BrokenSpoolFile:
    """A spool file on a disk that fails at `broken` ("write" or "close")."""

    def __init__(self, fd: int, broken: str) -> None:
        self.fd, self.broken = fd, broken

    def write(self, data: bytes) -> int:
        if self.broken == "write":
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)

    def close(self) -> None:
        os.close(self.fd)
        if self.broken == "close":
            raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize("broken", ["write", "close"])
def test_spool_file_failing_midway_refuses(tmp_path, monkeypatch, broken):
    """A spool file that fails while the literal arrives (disk full, I/O error) is removed, the
    rest of the literal and its line are skipped, and the command is refused."""
    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: BrokenSpoolFile(fd, broken))
    r = reader(tmp_path, memory_limit=2)
    assert r.feed(b"a1 APPEND INBOX {10}\r\n") == [ContinuationNeeded()]
    assert r.feed(b"01234") == []
    assert r.feed(b"56789 (x {3+}\r\nabc)\r\na2 NOOP\r\n") == [
        Refused("a1", "cannot store the literal", None), RawCommand([b"a2 NOOP"], [])]
    assert os.listdir(tmp_path) == []


def test_close_removes_a_partial_spool_file(tmp_path):
    """Losing the connection mid-command removes its spool files, finished or partial."""
    r = reader(tmp_path, memory_limit=2)
    r.feed(b"a1 X {4+}\r\nabcd {10+}\r\nxyz")
    assert len(os.listdir(tmp_path)) == 2
    r.close()
    assert os.listdir(tmp_path) == []


# The reader: limits


def test_synchronizing_literal_too_big_is_refused_at_once(tmp_path):
    """A `{n}` over max_literal gets BAD [TOOBIG] and no continuation; the next line is a new
    command."""
    r = reader(tmp_path, max_literal=100)
    assert r.feed(b"a1 APPEND INBOX {101}\r\n") == [Refused("a1", "literal too big", "TOOBIG")]
    assert r.feed(b"a2 NOOP\r\n") == [RawCommand([b"a2 NOOP"], [])]


def test_literal_plus_too_big_is_skipped_then_refused(tmp_path):
    """A `{n+}` over max_literal is skipped unread with the rest of its line (and the LITERAL+
    literals announced there), then refused with TOOBIG; the next command parses."""
    data = (b"a1 APPEND INBOX {200+}\r\n" + b"\n" * 200 + b" {3+}\r\n{9}\r\n"
            + b"a2 NOOP\r\n")
    assert feed(tmp_path, data, max_literal=100) == [
        Refused("a1", "literal too big", "TOOBIG"), RawCommand([b"a2 NOOP"], [])]
    assert os.listdir(tmp_path) == []


def test_too_big_after_a_spooled_literal_removes_its_file(tmp_path):
    """A command refused at its second literal leaves no spool file from its first."""
    events = feed(tmp_path, b"a1 X {50+}\r\n" + b"x" * 50 + b" {999}\r\n",
                  memory_limit=10, max_literal=100)
    assert events == [Refused("a1", "literal too big", "TOOBIG")]
    assert os.listdir(tmp_path) == []


def test_long_line_is_discarded_to_its_end(tmp_path):
    """A line over max_line is refused once its end arrives, with its tag; nothing of it is
    kept and the next line is a new command."""
    r = reader(tmp_path, max_line=20)
    assert r.feed(b"a1 SEARCH " + b"x" * 30) == []
    assert r._piece == bytearray()
    assert r.feed(b"y" * 1000 + b"\r\na2 NOOP\r\n") == [
        Refused("a1", "command line too long", None), RawCommand([b"a2 NOOP"], [])]


def test_line_limit_counts_the_whole_command(tmp_path):
    """The text limit covers all the pieces of a command, not each piece between literals."""
    events = feed(tmp_path, b"a1 X {1+}\r\na" + b" {1+}\r\na" * 5 + b"\r\n", max_line=20)
    assert events == [Refused("a1", "command line too long", None)]


def test_line_of_exactly_max_line_is_taken(tmp_path):
    """max_line counts the text without its CRLF: a line of exactly that length is accepted."""
    line = b"a1 NOOP " + b"x" * 12
    assert feed(tmp_path, line + b"\r\n", max_line=20) == [RawCommand([line], [])]
    assert feed(tmp_path, line + b"y\r\n", max_line=20)[0].text == "command line too long"


@pytest.mark.parametrize("line, tag", [
    (b"a1 APPEND {999}", "a1"),
    (b"{999}", None),
    (b"+x APPEND {999}", None),
    (b"a(1 APPEND {999}", None),
    (b"A.b-7]~ APPEND {999}", "A.b-7]~"),
])
def test_refusal_tag_is_the_first_word_when_valid(tmp_path, line, tag):
    """A refusal carries the line's first word as tag only when it is a valid RFC 3501 tag."""
    assert feed(tmp_path, line + b"\r\n", max_literal=10) == [
        Refused(tag, "literal too big", "TOOBIG")]


# The reader: splitting does not matter

pieces = st.sampled_from([
    b"a1 NOOP\r\n", b"a2 LOGIN {5}\r\nalice {3+}\r\npw!\r\n", b"DONE\n", b"\r\n",
    b"a3 APPEND INBOX {40+}\r\n" + b"z\r\n" * 13 + b"z\r\n",
    b"a4 X {300+}\r\n" + b"q" * 300 + b"\r\n",
    b"a5 X {301}\r\n", b"a6 SEARCH " + b"s" * 70 + b" {2+}\r\nab\r\n", b"a7 X {0}\r\n\r\n",
    b"a8 Y {2}\r\n{}\r\n", b"a0 NOOP " + b"k" * 56 + b"\r\n", b"a9 Z " + b"w" * 66 + b"\r", b"\n",
])


def normalised(events: list) -> list:
    """Events with spool files replaced by their content (paths differ between runs)."""
    def literal(value):
        if isinstance(value, LiteralFile):
            content = value.read_bytes()
            value.discard()
            return ("file", content)
        return value
    return [(type(e).__name__, e.texts, [literal(v) for v in e.literals])
            if isinstance(e, RawCommand) else e for e in events]


@settings(max_examples=200, deadline=None)
@given(st.lists(pieces, max_size=8).map(b"".join),
       st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=10),
       st.sampled_from([0, 30, 1000]))
def test_splitting_does_not_change_the_events(tmp_path_factory, data, sizes, memory_limit):
    """The same bytes fed one at a time, in arbitrary reads or all at once give the same events:
    commands, literals (in memory or spooled), continuations and refusals."""
    spool = tmp_path_factory.mktemp("spool")
    limits = {"max_line": 64, "max_literal": 300, "memory_limit": memory_limit}
    whole = normalised(CommandReader(spool_dir=spool, **limits).feed(data))

    one_by_one = CommandReader(spool_dir=spool, **limits)
    single = normalised([e for i in range(len(data)) for e in one_by_one.feed(data[i:i + 1])])

    chunked_reader = CommandReader(spool_dir=spool, **limits)
    chunked, position, index = [], 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        chunked += chunked_reader.feed(data[position:position + size])
        position, index = position + size, index + 1
    assert single == whole == normalised(chunked)
    one_by_one.close()
    chunked_reader.close()
    CommandReader(spool_dir=spool, **limits).close()
    assert [name for name in os.listdir(spool) if name.startswith("literal-")] == []


# The parser


def test_tag_name_and_atoms():
    """The tag is kept as written, the name upper-cased, and atoms keep their case."""
    assert parse(b"A001 login alice Secret") == Command("A001", "LOGIN",
                                                        [Atom("alice"), Atom("Secret")])


def test_uid_prefix_is_generic():
    """`UID FETCH` is the command UID with FETCH as its first argument."""
    command = parse(b"a1 uid fetch 1:* (FLAGS)")
    assert (command.name, command.args) == ("UID", [Atom("fetch"), Atom("1:*"), [Atom("FLAGS")]])


def test_flags_wildcards_and_nil():
    """Flags with a leading backslash, `\\*`, list wildcards inside atoms, and NIL as an atom."""
    command = parse(b'a1 X (\\Seen \\*) INBOX.% foo*bar NIL')
    assert command.args == [[Atom("\\Seen"), Atom("\\*")], Atom("INBOX.%"), Atom("foo*bar"),
                            Atom("NIL")]


def test_quoted_strings_and_escapes():
    """Quoted strings are bytes; `\\"` and `\\\\` are unescaped; 8-bit bytes are kept."""
    command = parse(b'a1 LOGIN "al\\"ice" "p\\\\w d" "" "caf\xc3\xa9"')
    assert command.args == [b'al"ice', b"p\\w d", b"", "café".encode()]


@pytest.mark.parametrize("line, text", [
    (b'a1 LOGIN "a\\b" x', "invalid escape in quoted string"),
    (b'a1 LOGIN "abc', "unterminated quoted string"),
    (b'a1 LOGIN "a\rb"', "invalid character in quoted string"),
    (b'a1 LOGIN "a\\', "invalid escape in quoted string"),
])
def test_bad_quoting(line, text):
    """A quoted string with another escape, no end or a CR is an error with the tag."""
    with pytest.raises(CommandError) as caught:
        parse(line)
    assert (caught.value.tag, caught.value.text) == ("a1", text)


def test_literals_take_their_place():
    """Literals appear where their markers were, in memory or as spool files, inside lists too."""
    spooled = LiteralFile(path=None, size=3)
    command = parse(b"a1 APPEND INBOX (\\Seen) {3+}\x00 {4}\x00 (x {2}\x00)",
                    spooled, b"ab\r\n", b"zz")
    assert command.args == [Atom("INBOX"), [Atom("\\Seen")], spooled, b"ab\r\n", [Atom("x"), b"zz"]]


def test_nested_lists_without_spaces_around_parentheses():
    """Parentheses need no space inside them; lists nest; extra and trailing spaces are fine."""
    command = parse(b"a1  X ((a) b)  (FLAGS UID) () ")
    assert command.args == [[[Atom("a")], Atom("b")], [Atom("FLAGS"), Atom("UID")], []]


def test_sections_with_spaces_are_one_atom():
    """A fetch attribute's section, spaces and parentheses included, and its partial are one
    atom."""
    command = parse(b"a1 FETCH 1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.100> BODY[] "
                    b"BINARY[1.2] BODY[1.MIME])")
    assert command.args == [Atom("1"), [Atom("BODY.PEEK[HEADER.FIELDS (From To)]<0.100>"),
                                        Atom("BODY[]"), Atom("BINARY[1.2]"), Atom("BODY[1.MIME]")]]


def test_utf8_atoms():
    """8-bit UTF-8 in an atom is decoded; invalid UTF-8 is an error."""
    assert parse("a1 SELECT Entwürfe".encode()).args == [Atom("Entwürfe")]
    with pytest.raises(CommandError, match="UTF-8"):
        parse(b"a1 SELECT Entw\xfcrfe")


@pytest.mark.parametrize("line, tag, text", [
    (b"", None, "missing tag"),
    (b" a1 NOOP", None, "missing tag"),
    (b"a+1 NOOP", None, "invalid tag"),
    (b"* NOOP", None, "invalid tag"),
    (b'"a1" NOOP', None, "invalid tag"),
    (b"a1", "a1", "missing command name"),
    (b"a1 ", "a1", "missing command name"),
    (b"a1 (NOOP)", "a1", "missing command name"),
    (b'a1 "NOOP"', "a1", "missing command name"),
    (b"a1 X (a (b)", "a1", "unbalanced parentheses"),
    (b"a1 X a)", "a1", "unbalanced parentheses"),
    (b"a1 X BODY[HEADER", "a1", "unbalanced brackets"),
    (b"a1 X BODY[1\r]", "a1", "invalid character in section"),
    (b"a1 X a]", "a1", "expected a space before ']'"),
    (b'a1 X abc"def"', "a1", "expected a space before '\"def\"'"),
    (b"a1 X (a)(b)", "a1", "expected a space before '(b)'"),
    (b"a1 X a{5}", "a1", "expected a space before '{5}'"),
    (b"a1 X {5}", "a1", "unexpected '{5}'"),
    (b"a1 X \\ a", "a1", "unexpected '\\\\ a'"),
    (b"a1 X a\\b", "a1", "expected a space before '\\\\b'"),
    (b"a1 X a\x01b", "a1", "expected a space before '\\x01b'"),
])
def test_malformed_commands(line, tag, text):
    """Every malformed command raises CommandError (a ParseError) with the tag when it is
    known."""
    with pytest.raises(ParseError) as caught:
        parse(line)
    assert isinstance(caught.value, CommandError)
    assert (caught.value.tag, caught.value.text) == (tag, text)


def test_reader_output_parses():
    """What the reader gives for a LOGIN with two literals parses to the strings."""
    raw = RawCommand([b"a1 LOGIN {5}", b" {6+}", b""], [b"alice", b"secret"])
    assert parse_command(raw) == Command("a1", "LOGIN", [b"alice", b"secret"])
