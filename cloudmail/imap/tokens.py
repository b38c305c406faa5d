"""The values an IMAP command is made of once read off the wire, and sequence sets.

A parsed command argument is one of:

- `Atom` — a `str` subclass for atoms as the client wrote them (case kept): command names, flags
  (`\\Seen`), search keys, numbers, sequence sets, and fetch attributes, which may carry a section
  in brackets with spaces inside (`BODY.PEEK[HEADER.FIELDS (From To)]<0.100>` is one atom);
- `bytes` — a quoted string or a literal held in memory, its content exactly;
- `LiteralFile` — a literal too big to hold in memory, spooled to a file (APPEND);
- `list` — a parenthesized list of these.

`NIL` arrives as `Atom("NIL")`: only the command knows whether it means nothing or a name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: RFC 3501 9: nz-number is 1..4294967295 (UIDs, sequence numbers, sizes).
MAX_NUMBER = 4294967295


class Atom(str):
    """An IMAP atom exactly as written (compare with `.upper()` where the RFC says
    case-insensitive)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


@dataclass(eq=False)
class LiteralFile:
    """A literal spooled to `path` (`size` bytes); whoever takes it removes the file."""

    path: Path
    size: int

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()

    def discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ParseError(ValueError):
    """A command that cannot be understood; the text goes after `BAD` in the tagged reply."""


_RANGE = re.compile(r"^(\d+|\*)(?::(\d+|\*))?$")


@dataclass(frozen=True)
class SequenceSet:
    """RFC 3501 sequence-set: ranges of numbers where `*` (None here) is the largest number in
    use. The same type serves message sequence numbers and UIDs."""

    ranges: tuple[tuple[int | None, int | None], ...]

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        """Parse `1,3:5,7:*`; ParseError for anything else (0, empty parts, numbers too big)."""
        ranges = []
        for part in text.split(","):
            match = _RANGE.match(part)
            if not match:
                raise ParseError(f"invalid sequence set {text!r}")
            first = _number(match.group(1))
            last = _number(match.group(2)) if match.group(2) is not None else first
            ranges.append((first, last))
        return cls(tuple(ranges))

    def bounds(self, largest: int) -> Iterator[tuple[int, int]]:
        """The ranges as inclusive (low, high) pairs, `*` being `largest` (RFC 3501 6.4.8: `n:*`
        with n above the largest still means the largest)."""
        for first, last in self.ranges:
            low = largest if first is None else first
            high = largest if last is None else last
            if low > high:
                low, high = high, low
            yield low, high

    def contains(self, number: int, largest: int) -> bool:
        """True if `number` is in the set, `*` standing for `largest`."""
        return any(low <= number <= high for low, high in self.bounds(largest))

    def numbers(self, largest: int) -> list[int]:
        """The distinct numbers of the set that are ≤ `largest`, in ascending order."""
        found: set[int] = set()
        for low, high in self.bounds(largest):
            found.update(range(max(low, 1), min(high, largest) + 1))
        return sorted(found)

    def __str__(self) -> str:
        def one(value: int | None) -> str:
            return "*" if value is None else str(value)
        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


def _number(text: str) -> int | None:
    if text == "*":
        return None
    value = int(text)
    if not 1 <= value <= MAX_NUMBER:
        raise ParseError(f"number out of range: {text}")
    return value
