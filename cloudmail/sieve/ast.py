"""The parsed form of a Sieve script (RFC 5228 section 8), shared by the parser, the checker,
the interpreter and ManageSieve.

The grammar is generic: a script is a list of commands; a command is an identifier, its
arguments, then either `;` or a block; a test is an identifier with arguments; tests may be
nested (`allof`, `anyof`, `not`). What each command and test accepts is not part of the
grammar: `cloudmail.sieve.checker` checks it against the required extensions.

Every node carries the line and column (both from 1) where it starts, so that an error can say
where it is, and ManageSieve can return it to the user.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Position:
    """Where something starts in the script text: line and column, both counted from 1."""

    line: int
    column: int

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}"


@dataclass(frozen=True)
class Tag:
    """A tagged argument such as `:contains` (`name` without the colon, lower case)."""

    name: str
    position: Position


@dataclass(frozen=True)
class Number:
    """A number argument, its K/M/G quantifier applied (RFC 5228 2.4.1)."""

    value: int
    position: Position


@dataclass(frozen=True)
class StringList:
    """A string or a string list. `single` is True when it was written as one string (not in
    brackets): some arguments must be a single string. Escapes are already removed; multi-line
    `text:` strings have their dot-stuffing undone. Encoded characters (RFC 5228 2.4.2.4) are
    decoded by the parser only when the script requires "encoded-character"."""

    values: tuple[str, ...]
    position: Position
    single: bool = False


Argument = Tag | Number | StringList


@dataclass(frozen=True)
class Test:
    """A test: `name` (lower case), its arguments in order, and nested tests (`allof`,
    `anyof`: several; `not`: one)."""

    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    position: Position


@dataclass(frozen=True)
class Command:
    """A command: `name` (lower case), its arguments in order, its test(s) (`if`/`elsif`: one),
    and its block (`if`/`elsif`/`else`, `foreverypart`), None when it ended with `;`."""

    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple[Command, ...] | None
    position: Position


@dataclass(frozen=True)
class Script:
    """A whole script: its commands and the extensions it requires (from its `require`
    commands, in order, each once)."""

    commands: tuple[Command, ...]
    requires: tuple[str, ...] = field(default=())


class SieveError(Exception):
    """A script that cannot be used, with where and why: the parser's and the checker's errors
    (ManageSieve answers them with `NO`, `cloudmail-admin sieve test` prints them)."""

    def __init__(self, position: Position, message: str) -> None:
        super().__init__(f"{position}: {message}")
        self.position = position
        self.message = message
