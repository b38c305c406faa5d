"""The Sieve grammar (RFC 5228 section 8): text in, `cloudmail.sieve.ast.Script` out.

`parse(text)` reads the generic grammar only: commands, tests, tags, numbers, strings and
string lists, blocks and test lists. What each command accepts is checked afterwards by
`cloudmail.sieve.checker`. Every error is a `SieveError` with the line and column (both from 1,
columns count characters) of the offending token.

Lexical rules (RFC 5228 section 2 and 8.1):

- identifiers are case-insensitive (stored lower case), tags are `:identifier`;
- numbers may end with K, M or G (powers of 1024);
- in quoted strings `\\"` and `\\\\` are the escapes, any other backslash is dropped;
- `text:` starts a multi-line string: optional spaces and a hash comment on the same line, then
  lines up to a line holding only "."; a leading "." of any other line is removed. CRLF and
  bare LF line ends are both accepted; the value keeps the line ends as written;
- comments: `#` to the end of the line, and `/* ... */` (an unterminated one is an error);
- `require` commands come first, at the top level; their strings are collected in
  `Script.requires` (each once, in order) and the commands stay in `Script.commands`;
- encoded characters (RFC 5228 2.4.2.4, `${hex:..}` and `${unicode:..}`) are decoded in the
  strings that follow a `require` naming "encoded-character".

Limits: `MAX_SCRIPT_SIZE` (UTF-8 bytes) and `MAX_NESTING` (blocks and tests within each other).
"""

from __future__ import annotations

import re
from bisect import bisect_right

from cloudmail.sieve.ast import (Argument, Command, Number, Position, Script, SieveError,
                                 StringList, Tag, Test)

__all__ = ["MAX_NESTING", "MAX_NUMBER", "MAX_SCRIPT_SIZE", "decode_encoded_characters",
           "parse"]

MAX_SCRIPT_SIZE = 1024 * 1024
MAX_NESTING = 64
MAX_NUMBER = 2 ** 63 - 1

_QUANTIFIERS = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}

# Token kinds.
_IDENT, _TAG, _NUMBER, _STRING, _SPECIAL, _EOF = "identifier", "tag", "number", "string", \
    "special", "end"

_TOKEN = re.compile(r"""
    (?P<skip>[ \t\r\n]+|\#[^\n]*)
  | (?P<text>[Tt][Ee][Xx][Tt]:)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+[KkMmGg]?)
  | (?P<quote>")
  | (?P<special>[\[\](){},;])
  | (?P<comment>/\*)
""", re.X)
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)
_TEXT_HEAD = re.compile(r"[ \t]*(?:\#[^\n]*)?\n|[ \t]*\r\n")
_TEXT_END = re.compile(r"^\.(?:\r?\n|\Z)", re.M)
_UNSTUFF = re.compile(r"^\.", re.M)
_ENCODED = re.compile(
    r"\$\{(?:(?P<hex>hex):(?P<hexseq>[ \t\r\n]*[0-9a-f]{1,2}(?:[ \t\r\n]+[0-9a-f]{1,2})*"
    r"[ \t\r\n]*)|(?P<uni>unicode):(?P<uniseq>[ \t\r\n]*[0-9a-f]+(?:[ \t\r\n]+[0-9a-f]+)*"
    r"[ \t\r\n]*))\}", re.I)


class _Token:
    __slots__ = ("kind", "value", "offset")

    def __init__(self, kind: str, value: object, offset: int) -> None:
        self.kind = kind
        self.value = value
        self.offset = offset

    def describe(self) -> str:
        if self.kind == _EOF:
            return "the end of the script"
        if self.kind == _SPECIAL:
            return f'"{self.value}"'
        if self.kind == _IDENT:
            return f'identifier "{self.value}"'
        if self.kind == _TAG:
            return f'tag ":{self.value}"'
        if self.kind == _NUMBER:
            return "a number"
        return "a string"


def decode_encoded_characters(value: str, position: Position) -> str:
    """Decode `${hex:...}` and `${unicode:...}` in `value` (RFC 5228 2.4.2.4); a sequence
    that does not follow the syntax stays as it is. Adjacent `${hex:}` sequences are decoded
    together (a UTF-8 character may be split across them)."""
    if "${" not in value:
        return value
    out: list[str] = []
    pending = bytearray()
    last = 0
    for match in _ENCODED.finditer(value):
        if match.start() != last and pending:
            out.append(_utf8(pending, position))
            pending = bytearray()
        out.append(value[last:match.start()])
        last = match.end()
        if match.group("hex"):
            pending.extend(int(pair, 16) for pair in match.group("hexseq").split())
        else:
            if pending:
                out.append(_utf8(pending, position))
                pending = bytearray()
            for code in match.group("uniseq").split():
                point = int(code, 16)
                if len(code) > 8 or not (point <= 0xD7FF or 0xE000 <= point <= 0x10FFFF):
                    raise SieveError(position, f'invalid Unicode character "{code}" in '
                                               f'"${{unicode:...}}"')
                out.append(chr(point))
    if pending:
        out.append(_utf8(pending, position))
    out.append(value[last:])
    return "".join(out)


def _utf8(octets: bytearray, position: Position) -> str:
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveError(position, '"${hex:...}" encodes octets that are not UTF-8') from None


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.tokens = self._tokenize()
        self.index = 0
        self.requires: list[str] = []
        self.encoded = False
        self.depth = 0

    # -- positions and errors

    def position(self, offset: int) -> Position:
        line = bisect_right(self.line_starts, offset)
        return Position(line, offset - self.line_starts[line - 1] + 1)

    def error(self, offset: int, message: str) -> SieveError:
        return SieveError(self.position(offset), message)

    # -- lexer

    def _tokenize(self) -> list[_Token]:
        text = self.text
        tokens: list[_Token] = []
        append = tokens.append
        match_token = _TOKEN.match
        pos, end = 0, len(text)
        while pos < end:
            m = match_token(text, pos)
            if m is None:
                raise self.error(pos, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup
            if kind == "skip":
                pos = m.end()
            elif kind == "ident":
                append(_Token(_IDENT, m.group().lower(), pos))
                pos = m.end()
            elif kind == "tag":
                append(_Token(_TAG, m.group()[1:].lower(), pos))
                pos = m.end()
            elif kind == "special":
                append(_Token(_SPECIAL, m.group(), pos))
                pos = m.end()
            elif kind == "number":
                digits = m.group()
                factor = _QUANTIFIERS.get(digits[-1].lower(), 1)
                if factor != 1:
                    digits = digits[:-1]
                value = int(digits) * factor if len(digits) < 30 else MAX_NUMBER + 1
                if value > MAX_NUMBER:
                    raise self.error(pos, "number too large")
                append(_Token(_NUMBER, value, pos))
                pos = m.end()
            elif kind == "quote":
                q = _QUOTED.match(text, pos)
                if q is None:
                    raise self.error(pos, "unterminated string: missing closing '\"'")
                raw = q.group(1)
                append(_Token(_STRING, _UNESCAPE.sub(r"\1", raw) if "\\" in raw else raw, pos))
                pos = q.end()
            elif kind == "text":
                head = _TEXT_HEAD.match(text, m.end())
                if head is None:
                    junk = len(text) - len(text[m.end():].lstrip(" \t"))
                    raise self.error(junk, 'expected the end of the line after "text:"')
                body_start = head.end()
                tail = _TEXT_END.search(text, body_start)
                if tail is None:
                    raise self.error(pos, 'unterminated multi-line string: missing a line '
                                          'with only "." after "text:"')
                body = text[body_start:tail.start()]
                if body.startswith(".") or "\n." in body:
                    body = _UNSTUFF.sub("", body)
                append(_Token(_STRING, body, pos))
                pos = tail.end()
            else:  # bracket comment
                close = text.find("*/", pos + 2)
                if close < 0:
                    raise self.error(pos, 'unterminated comment: missing "*/"')
                pos = close + 2
        append(_Token(_EOF, None, end))
        return tokens

    # -- grammar

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def is_special(self, token: _Token, char: str) -> bool:
        return token.kind == _SPECIAL and token.value == char

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(token.offset, f"blocks and tests nested more than {MAX_NESTING} "
                                           f"deep")

    def parse_script(self) -> Script:
        commands = self.parse_commands(top=True)
        token = self.peek()
        if token.kind != _EOF:  # a "}" without its "{"
            raise self.error(token.offset, 'unexpected "}" without a matching "{"')
        return Script(tuple(commands), tuple(self.requires))

    def parse_commands(self, top: bool) -> list[Command]:
        commands: list[Command] = []
        others = False
        while True:
            token = self.peek()
            if token.kind == _EOF or self.is_special(token, "}"):
                return commands
            if token.kind != _IDENT:
                raise self.error(token.offset, f"expected a command, found {token.describe()}")
            command = self.parse_command()
            if command.name == "require":
                if not top or others:
                    raise SieveError(command.position, '"require" must come before any other '
                                                       'command, at the top of the script')
                self.add_requires(command)
            else:
                others = True
            commands.append(command)

    def add_requires(self, command: Command) -> None:
        if (len(command.arguments) != 1 or not isinstance(command.arguments[0], StringList)
                or command.tests or command.block is not None):
            raise SieveError(command.position, '"require" takes one string or string list '
                                               'and ends with ";"')
        for name in command.arguments[0].values:
            if name not in self.requires:
                self.requires.append(name)
            if name == "encoded-character":
                self.encoded = True

    def parse_command(self) -> Command:
        token = self.tokens[self.index]
        self.index += 1
        name = token.value
        arguments, tests = self.parse_arguments()
        end = self.peek()
        if self.is_special(end, ";"):
            self.index += 1
            block = None
        elif self.is_special(end, "{"):
            self.index += 1
            self.enter(end)
            block = tuple(self.parse_commands(top=False))
            self.depth -= 1
            close = self.peek()
            if not self.is_special(close, "}"):
                raise self.error(close.offset, f'expected "}}" to close the block of "{name}" '
                                               f'opened at {self.position(end.offset)}')
            self.index += 1
        else:
            raise self.error(end.offset, f'expected ";" or "{{" after the arguments of '
                                         f'"{name}"')
        return Command(name, arguments, tests, block, self.position(token.offset))

    def parse_arguments(self) -> tuple[tuple[Argument, ...], tuple[Test, ...]]:
        arguments: list[Argument] = []
        tokens = self.tokens
        while True:
            token = tokens[self.index]
            kind = token.kind
            if kind == _STRING:
                self.index += 1
                arguments.append(StringList((self.string(token),), self.position(token.offset),
                                            True))
            elif kind == _TAG:
                self.index += 1
                arguments.append(Tag(token.value, self.position(token.offset)))
            elif kind == _NUMBER:
                self.index += 1
                arguments.append(Number(token.value, self.position(token.offset)))
            elif kind == _SPECIAL and token.value == "[":
                arguments.append(self.parse_string_list())
            else:
                break
        token = tokens[self.index]
        if token.kind == _IDENT:
            self.enter(token)
            tests: tuple[Test, ...] = (self.parse_test(),)
            self.depth -= 1
        elif self.is_special(token, "("):
            tests = self.parse_test_list()
        else:
            tests = ()
        return tuple(arguments), tests

    def string(self, token: _Token) -> str:
        value = token.value
        if self.encoded:
            return decode_encoded_characters(value, self.position(token.offset))
        return value

    def parse_string_list(self) -> StringList:
        opening = self.tokens[self.index]
        self.index += 1
        values: list[str] = []
        while True:
            token = self.peek()
            if token.kind != _STRING:
                raise self.error(token.offset, f"expected a string in the string list, found "
                                               f"{token.describe()}")
            self.index += 1
            values.append(self.string(token))
            token = self.peek()
            self.index += 1
            if self.is_special(token, "]"):
                return StringList(tuple(values), self.position(opening.offset), False)
            if not self.is_special(token, ","):
                raise self.error(token.offset, f'expected "," or "]" in the string list, found '
                                               f'{token.describe()}')

    def parse_test(self) -> Test:
        token = self.peek()
        if token.kind != _IDENT:
            raise self.error(token.offset, f"expected a test, found {token.describe()}")
        self.index += 1
        arguments, tests = self.parse_arguments()
        return Test(token.value, arguments, tests, self.position(token.offset))

    def parse_test_list(self) -> tuple[Test, ...]:
        opening = self.tokens[self.index]
        self.index += 1
        self.enter(opening)
        tests: list[Test] = []
        while True:
            tests.append(self.parse_test())
            token = self.peek()
            self.index += 1
            if self.is_special(token, ")"):
                self.depth -= 1
                return tuple(tests)
            if not self.is_special(token, ","):
                raise self.error(token.offset, f'expected "," or ")" in the test list, found '
                                               f'{token.describe()}')


def parse(text: str) -> Script:
    """Parse a Sieve script (RFC 5228 section 8) into a `Script`; raise `SieveError` with the
    line and column of the first error. Only the grammar is checked here: see
    `cloudmail.sieve.checker.compile_script` for the commands, tests and extensions."""
    if len(text) > MAX_SCRIPT_SIZE // 4 and len(text.encode("utf-8", "surrogatepass")) \
            > MAX_SCRIPT_SIZE:
        raise SieveError(Position(1, 1), f"script larger than {MAX_SCRIPT_SIZE} bytes")
    return _Parser(text).parse_script()
