"""How an IMAP command ends (RFC 3501 7.1): `Done` for a tagged OK, `No` and `Bad` raised for a
tagged NO or BAD, each with an optional response code (RFC 5530)."""

from __future__ import annotations

from dataclasses import dataclass


class Bad(Exception):
    """The command is malformed or not allowed now: tagged `BAD`."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text, self.code = text, code


class No(Exception):
    """The command failed: tagged `NO`."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text, self.code = text, code


@dataclass(frozen=True)
class Done:
    """A completed command: tagged `OK`, with an optional response code."""

    text: str
    code: str | None = None
