"""IMAP commands off the wire: where a command ends (`CommandReader`) and what it says
(`parse_command`).

RFC 3501 2.2 and 4.3 define a command as CRLF-terminated text in which a string may be sent as a
literal: `{n}` CRLF, then exactly n octets of any kind, after which the line goes on. A
synchronizing literal `{n}` waits for the server's `+` continuation (RFC 3501 7.5); a
non-synchronizing one `{n+}` (RFC 7888 LITERAL+) is sent at once; `~{n}` is a literal8 (RFC 3516)
and is taken like a literal here. So a command is a list of text pieces with a literal after every
piece but the last, and only the text can be scanned for line ends.

`CommandReader` is a pure state machine fed with whatever bytes arrive; it finds the pieces,
asks for continuations, keeps small literals in memory and writes big ones (APPEND) to a spool
file as they arrive. Limits keep a client from making the server hold unbounded data: a command
whose text exceeds `max_line`, or with a literal over `max_literal`, is refused with `BAD` (code
`TOOBIG`, RFC 4469 and RFC 7888 4), and the reader skips what the client will still send of it
so the next command is read from its real start.

`parse_command` turns one command into its tag, name and arguments (the values described in
`cloudmail.imap.tokens`), following the RFC 3501 9 grammar with the usual tolerance: several
spaces, a trailing space, `%` and `*` inside atoms, 8-bit UTF-8 (RFC 6855), and fetch attributes
whose bracketed section holds spaces (`BODY.PEEK[HEADER.FIELDS (From To)]<0.100>`).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cloudmail.imap.tokens import Atom, LiteralFile, ParseError

#: A literal marker ending a text piece: `{5}`, `{5+}` or literal8 `~{5}`.
_MARKER = re.compile(rb"~?\{(\d+)(\+?)\}\Z")
#: RFC 3501 9: tag = 1*<any ASTRING-CHAR except "+">.
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]+")
#: RFC 3501 9 ATOM-CHAR, plus the list wildcards `%` and `*` and 8-bit bytes.
_ATOM_CHARS = (frozenset(range(0x21, 0x7F)) - frozenset(b'(){"\\]')) | frozenset(range(0x80, 0x100))
#: Enough of the end of a discarded line to see a LITERAL+ marker there.
_TAIL = 32
#: More digits than this in a literal size is more than any limit allows.
_MAX_DIGITS = 20
_WRITE_BUFFER = 64 * 1024
_SP, _CR, _LF, _LPAREN, _RPAREN, _QUOTE, _BACKSLASH = 0x20, 0x0D, 0x0A, 0x28, 0x29, 0x22, 0x5C
_LBRACKET, _RBRACKET = 0x5B, 0x5D


@dataclass(frozen=True)
class RawCommand:
    """One complete command: `texts[i]` ends with the marker of `literals[i]`; the last text has
    no marker and no line end."""

    texts: list[bytes]
    literals: list[bytes | LiteralFile]


@dataclass(frozen=True)
class ContinuationNeeded:
    """A synchronizing literal was announced: the protocol sends `+ Ready for literal data`."""


@dataclass(frozen=True)
class Refused:
    """The command was dropped; the protocol answers `<tag> BAD [<code>] <text>` (`*` if no
    tag)."""

    tag: str | None
    text: str
    code: str | None


Event = RawCommand | ContinuationNeeded | Refused


class CommandReader:
    """Splits the client's bytes into commands (RFC 3501 2.2, 4.3); `feed` returns the events the
    bytes complete, the same however the bytes are split."""

    def __init__(self, *, spool_dir: Path, max_line: int = 64 * 1024,
                 max_literal: int = 64 * 1024 * 1024, memory_limit: int = 256 * 1024) -> None:
        self.spool_dir = Path(spool_dir)
        self.max_line = max_line
        self.max_literal = max_literal
        self.memory_limit = memory_limit
        self._piece = bytearray()
        self._texts: list[bytes] = []
        self._literals: list[bytes | LiteralFile] = []
        #: Text bytes of the command's finished pieces (the line limit is for the whole command).
        self._text_length = 0
        #: What is left of `memory_limit` for this command's literals; bigger ones go to files.
        self._memory_left = memory_limit
        #: Octets of the literal being received still to come (None: reading text).
        self._left: int | None = None
        self._literal_size = 0
        self._memory: bytearray | None = None
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        #: Octets the client sends that are thrown away (a literal of a refused command).
        self._skip = 0
        #: Set while the rest of a refused command is thrown away; sent once it has ended.
        self._refusal: Refused | None = None
        self._tail = b""

    def feed(self, data: bytes) -> list[Event]:
        """Take more bytes from the client; return the events they complete, in order."""
        events: list[Event] = []
        position, end = 0, len(data)
        while position < end:
            if self._skip:
                taken = min(self._skip, end - position)
                self._skip -= taken
                position += taken
            elif self._left is not None:
                taken = min(self._left, end - position)
                self._left -= taken
                self._store(data[position:position + taken])
                position += taken
                if self._left == 0:
                    self._finish_literal()
            else:
                newline = data.find(b"\n", position)
                stop = end if newline == -1 else newline
                chunk = data[position:stop]
                position = stop + 1
                if self._refusal is not None:
                    self._tail = (self._tail + chunk)[-_TAIL:]
                    if newline != -1:
                        self._discarded_line_end(events)
                    continue
                self._piece += chunk
                if newline != -1:
                    self._piece_end(events)
                elif self._text_length + len(self._piece) > self.max_line + 1:
                    self._refusal = Refused(self._tag(bytes(self._piece)), "command line too long",
                                            None)
                    self._tail = bytes(self._piece[-_TAIL:])
                    self._drop()
        return events

    def close(self) -> None:
        """The connection is gone: remove the spool files of the unfinished command."""
        self._drop()
        self._refusal = None
        self._skip = 0

    def _piece_end(self, events: list[Event]) -> None:
        """A line end arrived: the command ends here or goes on after a literal."""
        piece = bytes(self._piece)
        self._piece.clear()
        text = piece[:-1] if piece.endswith(b"\r") else piece
        tag = self._tag(text)
        if self._text_length + len(text) > self.max_line:
            self._refusal = Refused(tag, "command line too long", None)
            self._tail = piece[-_TAIL:]
            self._drop()
            self._discarded_line_end(events)
            return
        self._texts.append(text)
        marker = _MARKER.search(text)
        if marker is None:
            events.append(RawCommand(self._texts, self._literals))
            self._texts, self._literals = [], []
            self._reset()
            return
        self._text_length += len(text)
        digits, plus = marker.groups()
        size = int(digits) if len(digits) <= _MAX_DIGITS else None
        if size is None or size > self.max_literal:
            self._refuse(events, Refused(tag, "literal too big", "TOOBIG"), size, not plus)
        elif size > self._memory_left and not self._open_file():
            self._refuse(events, Refused(tag, "cannot store the literal", None), size, not plus)
        else:
            if self._file is None:
                self._memory = bytearray()
                self._memory_left -= size
            if not plus:
                events.append(ContinuationNeeded())
            self._left = self._literal_size = size
            if size == 0:
                self._finish_literal()

    def _refuse(self, events: list[Event], refusal: Refused, size: int | None,
                sync: bool) -> None:
        """Drop the command at a literal it cannot take. A client denied a continuation sends
        nothing more of the command; a LITERAL+ client sends the literal and the rest of the line
        regardless, so those are skipped before the refusal is given."""
        self._drop()
        if sync or size is None:
            events.append(refusal)
        else:
            self._refusal, self._skip, self._tail = refusal, size, b""

    def _discarded_line_end(self, events: list[Event]) -> None:
        """A line of a refused command ended: skip the LITERAL+ literal it announces, if any, or
        give the refusal (the client waits for a continuation it will not get, or is done)."""
        tail = self._tail[:-1] if self._tail.endswith(b"\r") else self._tail
        self._tail = b""
        marker = _MARKER.search(tail)
        if marker is not None and marker.group(2) and len(marker.group(1)) <= _MAX_DIGITS:
            self._skip = int(marker.group(1))
            return
        assert self._refusal is not None
        events.append(self._refusal)
        self._refusal = None

    def _tag(self, text: bytes) -> str | None:
        """The command's tag for a refusal: its first word, if that is a valid tag."""
        first = self._texts[0] if self._texts else text
        word, space, _ = first[:self.max_line].partition(b" ")
        return word.decode("ascii") if space and _TAG.fullmatch(word) else None

    def _open_file(self) -> bool:
        try:
            fd, name = tempfile.mkstemp(prefix="literal-", dir=self.spool_dir)
        except OSError:
            return False
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        return True

    def _store(self, data: bytes) -> None:
        if self._memory is not None:
            self._memory += data
        elif self._file is not None:
            try:
                self._file.write(data)
            except OSError:
                self._storage_failed()

    def _finish_literal(self) -> None:
        self._left = None
        if self._memory is not None:
            self._literals.append(bytes(self._memory))
            self._memory = None
            return
        file, self._file = self._file, None
        path, self._path = self._path, None
        assert file is not None and path is not None
        try:
            file.close()
        except OSError:
            self._path = path
            self._storage_failed()
            return
        self._literals.append(LiteralFile(path, self._literal_size))

    def _storage_failed(self) -> None:
        """The spool file broke mid-literal: skip the rest of it and of its command."""
        tag = self._tag(b"")
        left = self._left or 0
        self._drop()
        self._refusal = Refused(tag, "cannot store the literal", None)
        self._skip, self._tail = left, b""

    def _drop(self) -> None:
        """Forget the current command and remove its spool files."""
        for literal in self._literals:
            if isinstance(literal, LiteralFile):
                literal.discard()
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass
        if self._path is not None:
            LiteralFile(self._path, 0).discard()
        self._texts, self._literals = [], []
        self._piece.clear()
        self._reset()

    def _reset(self) -> None:
        self._text_length = 0
        self._memory_left = self.memory_limit
        self._left = None
        self._memory = None
        self._path = None


class CommandError(ParseError):
    """A malformed command; the protocol answers `<tag> BAD <text>` (`*` if `tag` is None)."""

    def __init__(self, tag: str | None, text: str) -> None:
        super().__init__(text)
        self.tag = tag
        self.text = text


@dataclass(frozen=True)
class Command:
    """A parsed command: `name` upper-cased, `args` the values of `cloudmail.imap.tokens`."""

    tag: str
    name: str
    args: list


def parse_command(raw: RawCommand) -> Command:
    """Parse one command (RFC 3501 9: tag SP command); CommandError if it is malformed."""
    word, _, rest = raw.texts[0].partition(b" ")
    if not word:
        raise CommandError(None, "missing tag")
    if not _TAG.fullmatch(word):
        raise CommandError(None, "invalid tag")
    tag = word.decode("ascii")
    values = _Parser(tag, [rest, *raw.texts[1:]], raw.literals).values()
    if not values or not isinstance(values[0], Atom):
        raise CommandError(tag, "missing command name")
    return Command(tag, values[0].upper(), values[1:])


class _Parser:
    """The values of a command after its tag: atoms, strings, literals and nested lists."""

    def __init__(self, tag: str, texts: list[bytes], literals: list[bytes | LiteralFile]) -> None:
        self.tag = tag
        self.texts = texts
        self.literals = literals

    def error(self, text: str) -> CommandError:
        return CommandError(self.tag, text)

    def values(self) -> list:
        stack: list[list] = [[]]
        spaced = True
        for index, text in enumerate(self.texts):
            position = 0
            while position < len(text):
                byte = text[position]
                if byte == _SP:
                    position += 1
                    spaced = True
                    continue
                if byte == _RPAREN:
                    if len(stack) == 1:
                        raise self.error("unbalanced parentheses")
                    inner = stack.pop()
                    stack[-1].append(inner)
                    position += 1
                    spaced = False
                    continue
                if not spaced:
                    raise self.error(f"expected a space before {_show(text[position:])}")
                if byte == _LPAREN:
                    stack.append([])
                    position += 1
                    continue
                if byte == _QUOTE:
                    value, position = self.quoted(text, position)
                elif index < len(self.literals) and _MARKER.match(text, position):
                    value, position = self.literals[index], len(text)
                else:
                    value, position = self.atom(text, position)
                stack[-1].append(value)
                spaced = False
        if len(stack) > 1:
            raise self.error("unbalanced parentheses")
        return stack[0]

    def quoted(self, text: bytes, position: int) -> tuple[bytes, int]:
        """RFC 3501 9 quoted: `\\"` and `\\\\` are the only escapes; no NUL, CR or LF."""
        value = bytearray()
        position += 1
        while position < len(text):
            byte = text[position]
            if byte == _QUOTE:
                return bytes(value), position + 1
            if byte == _BACKSLASH:
                escaped = text[position + 1:position + 2]
                if escaped not in (b'"', b"\\"):
                    raise self.error("invalid escape in quoted string")
                value += escaped
                position += 2
                continue
            if byte in (0, _CR, _LF):
                raise self.error("invalid character in quoted string")
            value.append(byte)
            position += 1
        raise self.error("unterminated quoted string")

    def atom(self, text: bytes, position: int) -> tuple[Atom, int]:
        """An atom, with a leading `\\` for flags and any `[section]` in it, spaces included."""
        start = position
        if text[position] == _BACKSLASH:
            position += 1
        while position < len(text):
            byte = text[position]
            if byte == _LBRACKET:
                position = self.section_end(text, position)
            elif byte in _ATOM_CHARS:
                position += 1
            else:
                break
        if position == start or text[start:position] == b"\\":
            raise self.error(f"unexpected {_show(text[start:])}")
        try:
            return Atom(text[start:position].decode("utf-8")), position
        except UnicodeDecodeError:
            raise self.error("invalid UTF-8 in atom") from None

    def section_end(self, text: bytes, position: int) -> int:
        """The index just past the `]` matching the `[` at `position`."""
        depth = 0
        for index in range(position, len(text)):
            byte = text[index]
            if byte == _LBRACKET:
                depth += 1
            elif byte == _RBRACKET:
                depth -= 1
                if depth == 0:
                    return index + 1
            elif byte < 0x20 or byte == 0x7F:
                raise self.error("invalid character in section")
        raise self.error("unbalanced brackets")


def _show(text: bytes) -> str:
    """The start of some unexpected text, quoted for an error message."""
    return repr(text[:10].decode("ascii", "replace"))
