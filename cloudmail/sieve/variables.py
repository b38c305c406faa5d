"""Sieve variables (RFC 5229): `${name}` and `${N}` substitution, the `set` modifiers, and the
global variables shared with included scripts (RFC 6609 3.3)."""

from __future__ import annotations

import re
from urllib.parse import quote as url_quote

from cloudmail.sieve.matching import quote_regex, quote_wildcards

MAX_VALUE_LENGTH = 64 * 1024
MAX_VARIABLES = 1000
_REFERENCE = re.compile(r"\$\{([0-9]+|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?")

# RFC 5229 4.1: higher precedence is applied first.
MODIFIER_PRECEDENCE = {
    "lower": 40, "upper": 40, "lowerfirst": 30, "upperfirst": 30,
    "quotewildcard": 20, "quoteregex": 20, "encodeurl": 15, "length": 10,
}


class VariableError(Exception):
    """A bad variable name or too many variables."""


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


class Scope:
    """The variables one script sees: its own, the shared globals it declared (`global`) and
    the `global.` namespace, and the match variables of the last successful match."""

    def __init__(self, globals_: dict[str, str]) -> None:
        self.local: dict[str, str] = {}
        self.globals = globals_
        self.declared: set[str] = set()
        self.matches: list[str] = []

    def _where(self, name: str) -> tuple[dict[str, str], str]:
        lowered = name.lower()
        if lowered.startswith("global."):
            return self.globals, lowered[len("global."):]
        if lowered in self.declared:
            return self.globals, lowered
        return self.local, lowered

    def get(self, name: str) -> str:
        if name.isdigit():
            index = int(name)
            return self.matches[index] if index < len(self.matches) else ""
        table, key = self._where(name)
        return table.get(key, "")

    def set(self, name: str, value: str) -> None:
        if not valid_name(name):
            raise VariableError(f"bad variable name {name!r}")
        table, key = self._where(name)
        if key not in table and len(table) >= MAX_VARIABLES:
            raise VariableError("too many variables")
        table[key] = value[:MAX_VALUE_LENGTH]

    def expand(self, text: str) -> str:
        """Every `${name}` replaced by its value (unknown ones by ""); anything else that
        looks like a reference but is not one stays as written (RFC 5229 3)."""
        if "${" not in text:
            return text
        return _REFERENCE.sub(lambda m: self.get(m.group(1)), text)[:MAX_VALUE_LENGTH]


def apply_modifiers(value: str, modifiers) -> str:
    """The `set` modifiers, highest precedence first (RFC 5229 4.1)."""
    for modifier in sorted(modifiers, key=lambda m: -MODIFIER_PRECEDENCE[m]):
        if modifier == "lower":
            value = value.lower()
        elif modifier == "upper":
            value = value.upper()
        elif modifier == "lowerfirst":
            value = value[:1].lower() + value[1:]
        elif modifier == "upperfirst":
            value = value[:1].upper() + value[1:]
        elif modifier == "quotewildcard":
            value = quote_wildcards(value)
        elif modifier == "quoteregex":
            value = quote_regex(value)
        elif modifier == "encodeurl":
            value = url_quote(value, safe="-._~")
        elif modifier == "length":
            value = str(len(value))
    return value
