"""How Sieve compares strings: comparators (RFC 5228 2.7.3, RFC 4790), match types (`:is`,
`:contains`, `:matches`: RFC 5228 2.7.1; `:value`, `:count`: RFC 5231; `:regex`:
draft-ietf-sieve-regex), address parts (RFC 5228 2.7.4, `:user`/`:detail`: RFC 5233) and date
parts (RFC 5260 4.2).

Everything here is pure; the work a `:matches` or `:regex` comparison may do is bounded by a
`MatchBudget` so that a hostile script cannot spin on one message.
"""

from __future__ import annotations

import re
import string
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

COMPARATORS = ("i;octet", "i;ascii-casemap", "i;ascii-numeric")
MATCH_TYPES = ("is", "contains", "matches", "regex", "value", "count")
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")
ADDRESS_PARTS = ("all", "localpart", "domain", "user", "detail")
DATE_PARTS = (
    "year", "month", "day", "date", "julian", "hour", "minute", "second", "time",
    "iso8601", "std11", "zone", "weekday",
)

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_MAX_REGEX_LENGTH = 1024
_MAX_VALUE_LENGTH = 1 << 20
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[+*}|][^()]*\)\s*[+*{]")


class MatchError(Exception):
    """A comparison that cannot be made at run time: unknown comparator, a match type the
    comparator does not support, a bad regular expression, or the work budget spent."""


class MatchBudget:
    """The work that `:matches` and `:regex` may still do for one run, in character steps
    (`:matches` counts its real steps; `:regex`, whose worst cases are refused up front, is
    charged the length of the value)."""

    def __init__(self, limit: int) -> None:
        self.remaining = limit

    def spend(self, amount: int) -> None:
        self.remaining -= max(amount, 1)
        if self.remaining < 0:
            raise MatchError("match work limit exceeded")


def casemap(text: str) -> str:
    """i;ascii-casemap: only ASCII letters are folded (RFC 4790 9.2)."""
    return text.translate(_ASCII_LOWER)


def numeric_value(text: str) -> int | None:
    """i;ascii-numeric (RFC 4790 9.1): the leading digits; None (positive infinity) when the
    string does not start with a digit."""
    end = 0
    while end < len(text) and text[end] in string.digits:
        end += 1
    return int(text[:end]) if end else None


def compare(comparator: str, value: str, key: str) -> int:
    """Order `value` against `key` with `comparator`: -1, 0 or 1."""
    if comparator == "i;ascii-numeric":
        a, b = numeric_value(value), numeric_value(key)
        if a is None and b is None:
            return 0
        if a is None:
            return 1
        if b is None:
            return -1
        return (a > b) - (a < b)
    if comparator == "i;ascii-casemap":
        value, key = casemap(value), casemap(key)
    elif comparator != "i;octet":
        raise MatchError(f"unsupported comparator {comparator!r}")
    x, y = value.encode("utf-8", "surrogatepass"), key.encode("utf-8", "surrogatepass")
    return (x > y) - (x < y)


def relation_holds(relation: str, order: int) -> bool:
    """RFC 5231 4: whether `order` (from `compare`) satisfies the relation."""
    if relation == "gt":
        return order > 0
    if relation == "ge":
        return order >= 0
    if relation == "lt":
        return order < 0
    if relation == "le":
        return order <= 0
    if relation == "eq":
        return order == 0
    if relation == "ne":
        return order != 0
    raise MatchError(f"unknown relation {relation!r}")


def _glob_tokens(pattern: str) -> list[str | None]:
    """The `:matches` pattern as tokens: a literal character, "*" for the star, None for "?"
    (`\\` escapes the next character, RFC 5228 2.7.1)."""
    tokens: list[str | None] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            tokens.append("\\" + pattern[i + 1])
            i += 2
            continue
        tokens.append(None if char == "?" else char)
        i += 1
    return tokens


def glob_match(pattern: str, value: str, fold: bool, budget: MatchBudget | None = None,
               ) -> list[str] | None:
    """Match `value` against a `:matches` pattern in O(len × len) steps (no exponential
    backtracking): on a mismatch only the last star grows, which finds a match whenever one
    exists. Each star takes as little as possible, leftmost first (RFC 5229 3.2: "[*] *" on
    "[a] [b] c" gives "a" and "[b] c"). Returns the match variables, or None."""
    tokens = _glob_tokens(pattern)
    if fold:
        value_cmp = casemap(value)
        tokens = [t if t is None or t == "*" else casemap(t) for t in tokens]
    else:
        value_cmp = value
    starts: list[int] = [0] * len(tokens)
    ends: list[int] = [0] * len(tokens)
    t = v = 0
    last_star = -1
    star_value = 0
    steps = 0
    while True:
        steps += 1
        if steps >= 4096 and budget is not None:
            budget.spend(steps)
            steps = 0
        if t < len(tokens) and tokens[t] == "*":
            last_star, star_value = t, v
            starts[t] = ends[t] = v
            t += 1
            continue
        if t == len(tokens) and v == len(value):
            break
        if t < len(tokens) and v < len(value):
            token = tokens[t]
            if token is None or token[-1] == value_cmp[v]:
                starts[t], ends[t] = v, v + 1
                t += 1
                v += 1
                continue
        if last_star < 0 or star_value >= len(value):
            if budget is not None:
                budget.spend(steps)
            return None
        star_value += 1
        ends[last_star] = star_value
        t, v = last_star + 1, star_value
    if budget is not None:
        budget.spend(steps)
    return [value] + [value[starts[i]:ends[i]] for i, tok in enumerate(tokens) if tok is None or tok == "*"]


_regex_cache: dict[tuple[str, bool], re.Pattern[str]] = {}


def _compiled_regex(pattern: str, fold: bool) -> re.Pattern[str]:
    found = _regex_cache.get((pattern, fold))
    if found is None:
        if len(pattern) > _MAX_REGEX_LENGTH:
            raise MatchError("regular expression too long")
        if _NESTED_QUANTIFIER.search(pattern) or re.search(r"\\[1-9]", pattern):
            raise MatchError("regular expression too costly (nested quantifier or backreference)")
        try:
            compiled = re.compile(pattern, re.IGNORECASE | re.ASCII if fold else 0)
        except re.error as e:
            raise MatchError(f"bad regular expression: {e}") from None
        if len(_regex_cache) > 512:
            _regex_cache.clear()
        found = _regex_cache[(pattern, fold)] = compiled
    return found


def quote_wildcards(text: str) -> str:
    """The `:quotewildcard` modifier (RFC 5229 4.1.2)."""
    return re.sub(r"([*?\\])", r"\\\1", text)


def quote_regex(text: str) -> str:
    """The `:quoteregex` modifier (draft-ietf-sieve-regex 3.1)."""
    return re.sub(r"([\\^$.\[\]|()?*+{}])", r"\\\1", text)


def match(
    match_type: str,
    comparator: str,
    value: str,
    key: str,
    *,
    relation: str | None = None,
    budget: MatchBudget | None = None,
) -> tuple[bool, list[str] | None]:
    """Whether `value` matches `key`; for `:matches` and `:regex` also the match variables
    (`${0}` the whole match, then one per wildcard or group). `:count` is the caller's (it
    counts values, it does not compare one)."""
    if comparator not in COMPARATORS:
        raise MatchError(f"unsupported comparator {comparator!r}")
    if match_type == "is":
        return compare(comparator, value, key) == 0, None
    if match_type == "value":
        return relation_holds(relation or "eq", compare(comparator, value, key)), None
    if comparator == "i;ascii-numeric":
        raise MatchError(f"comparator i;ascii-numeric does not support :{match_type}")
    fold = comparator == "i;ascii-casemap"
    if match_type == "contains":
        if fold:
            return casemap(key) in casemap(value), None
        return key in value, None
    if len(value) > _MAX_VALUE_LENGTH:
        value = value[:_MAX_VALUE_LENGTH]
    if match_type == "matches":
        captures = glob_match(key, value, fold, budget)
        return captures is not None, captures
    if match_type == "regex":
        if budget is not None:
            budget.spend(len(value))
        found = _compiled_regex(key, fold).search(value)
        if found is None:
            return False, None
        return True, [found.group(0), *(group or "" for group in found.groups())]
    raise MatchError(f"unknown match type :{match_type}")


def split_address(address: str) -> tuple[str, str]:
    """Local part and domain, split at the last "@" (the domain is "" without one)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


def address_part(address: str, part: str, separators: str = "+-") -> str | None:
    """The `:all`, `:localpart`, `:domain`, `:user` or `:detail` of an address; None when
    there is nothing to compare (`:detail` of an address without a separator, RFC 5233 4)."""
    if part == "all":
        return address
    local, domain = split_address(address)
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    cut = min((local.find(s) for s in separators if s in local), default=-1)
    if part == "user":
        return local if cut < 0 else local[:cut]
    if part == "detail":
        return None if cut < 0 else local[cut + 1:]
    raise MatchError(f"unknown address part :{part}")


def parse_zone(zone: str) -> timezone:
    """A `:zone` argument, "+hhmm" or "-hhmm" (RFC 5260 4.1)."""
    found = re.fullmatch(r"([+-])(\d\d)(\d\d)", zone.strip())
    if found is None:
        raise MatchError(f"bad time zone {zone!r}")
    offset = timedelta(hours=int(found.group(2)), minutes=int(found.group(3)))
    return timezone(-offset if found.group(1) == "-" else offset)


def _zone_text(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def date_part(moment: datetime, part: str) -> str:
    """One date part of RFC 5260 4.2, as the text the date test compares."""
    if part == "year":
        return f"{moment.year:04d}"
    if part == "month":
        return f"{moment.month:02d}"
    if part == "day":
        return f"{moment.day:02d}"
    if part == "date":
        return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    if part == "julian":
        return str((moment.date() - datetime(1858, 11, 17).date()).days)
    if part == "hour":
        return f"{moment.hour:02d}"
    if part == "minute":
        return f"{moment.minute:02d}"
    if part == "second":
        return f"{moment.second:02d}"
    if part == "time":
        return f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    if part == "iso8601":
        return moment.replace(microsecond=0).isoformat()
    if part == "std11":
        return format_datetime(moment.replace(microsecond=0))
    if part == "zone":
        return _zone_text(moment)
    if part == "weekday":
        return str((moment.weekday() + 1) % 7)
    raise MatchError(f"unknown date part {part!r}")
