"""A small pure parser for the arguments of MAIL and RCPT (RFC 5321 4.1.2, RFC 6531 3.3).

`parse_mail_argument("FROM:<a@b> SIZE=10")` and `parse_rcpt_argument(...)` split a command's
argument into the path and its ESMTP parameters. The grammar is RFC 5321's:

    Reverse-path = Path / "<>"              Forward-path = Path / "<Postmaster>"
    Path         = "<" [ A-d-l ":" ] Mailbox ">"      (the source route is parsed and dropped,
                                                       RFC 5321 4.1.1.3 and appendix C)
    Mailbox      = Local-part "@" ( Domain / address-literal )
    Local-part   = Dot-string / Quoted-string
    esmtp-param  = esmtp-keyword [ "=" esmtp-value ]

With `utf8` (the SMTPUTF8 parameter was given, RFC 6531 3.3) atext, qtext, domain labels and
parameter values may also hold non-ASCII characters. Lengths follow RFC 5321 4.5.3.1 (local part
64 octets, domain 255, path 256). Everything that does not fit raises `PathError` — and nothing
else is ever raised, whatever the input (the unit tests fuzz this), so the protocol answers 501.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"A-Za-z0-9!#$%&'*+\-/=?^_`{|}~"
_ASCII_ATOM = re.compile(rf"[{_ATEXT}]+\Z")
_UTF8_ATOM = re.compile(rf"(?:[{_ATEXT}]|[^\x00-\x7f])+\Z")
_ASCII_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_UTF8_LABEL = re.compile(r"(?:[A-Za-z0-9]|[^\x00-\x7f])(?:(?:[A-Za-z0-9-]|[^\x00-\x7f])*"
                         r"(?:[A-Za-z0-9]|[^\x00-\x7f]))?\Z")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ASCII_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_UTF8_VALUE = re.compile(r"(?:[\x21-\x3c\x3e-\x7e]|[^\x00-\x7f])+\Z")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?:[\x21-\x5a\x5e-\x7e]+\Z")


class PathError(ValueError):
    """The path or its parameters do not follow RFC 5321; the message says what is wrong."""


@dataclass(frozen=True)
class MailPath:
    """A parsed path. `address` is `local@domain` as written (quotes kept), or "" for `<>`."""

    local: str = ""
    domain: str = ""
    quoted: bool = False
    source_route: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}" if self.domain else self.local

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def is_ascii(self) -> bool:
        return self.address.isascii()


@dataclass(frozen=True)
class CommandArgument:
    """A MAIL or RCPT argument: the path and its parameters (keyword upper-cased → value or
    None), in the order given."""

    path: MailPath
    params: dict[str, str | None]


def parse_mail_argument(text: str, *, utf8: bool = True) -> CommandArgument:
    """Parse what follows `MAIL ` (RFC 5321 4.1.1.2): `FROM:<reverse-path> [params]`.

    `utf8` allows non-ASCII in the path; the protocol passes True and then checks that a
    non-ASCII path came with the SMTPUTF8 parameter (RFC 6531 3.4)."""
    rest = _after_keyword(text, "FROM:")
    path, params = _split_path(rest)
    if path == "<>":
        return CommandArgument(MailPath(), parse_params(params, utf8=utf8))
    return CommandArgument(parse_path(path, utf8=utf8), parse_params(params, utf8=utf8))


def parse_rcpt_argument(text: str, *, utf8: bool = True) -> CommandArgument:
    """Parse what follows `RCPT ` (RFC 5321 4.1.1.3): `TO:<forward-path> [params]`;
    `<Postmaster>` (any case) is the local postmaster, address `Postmaster`."""
    rest = _after_keyword(text, "TO:")
    path, params = _split_path(rest)
    if path.lower() == "<postmaster>":
        return CommandArgument(MailPath(local="Postmaster"), parse_params(params, utf8=utf8))
    return CommandArgument(parse_path(path, utf8=utf8), parse_params(params, utf8=utf8))


def _after_keyword(text: str, keyword: str) -> str:
    if text[:len(keyword)].upper() != keyword:
        raise PathError(f"expected {keyword}")
    # RFC 5321 has no space after the colon; so many clients send one that we allow it.
    return text[len(keyword):].lstrip(" ")


def _split_path(text: str) -> tuple[str, str]:
    """Split `<path> params` at the `>` that closes the path (one inside quotes does not)."""
    if not text.startswith("<"):
        raise PathError("the path must be in angle brackets")
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            path, rest = text[:index + 1], text[index + 1:]
            if rest and not rest.startswith(" "):
                raise PathError("parameters must follow the path after a space")
            return path, rest.strip(" ")
    raise PathError("the path has no closing '>'")


def parse_path(text: str, *, utf8: bool = False) -> MailPath:
    """Parse `<[route:]local@domain>` into a MailPath, or raise PathError."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise PathError("the path is too long")
    if len(text) < 2 or text[0] != "<" or text[-1] != ">":
        raise PathError("the path must be in angle brackets")
    inner = text[1:-1]
    route: tuple[str, ...] = ()
    if inner.startswith("@"):
        route_text, colon, inner = inner.partition(":")
        if not colon:
            raise PathError("a source route must end with ':'")
        route = tuple(_route(route_text, utf8))
    local, domain, quoted = _mailbox(inner, utf8)
    return MailPath(local, domain, quoted, route)


def _route(text: str, utf8: bool) -> list[str]:
    """A-d-l = At-domain *( "," At-domain ); At-domain = "@" Domain."""
    hops = []
    for hop in text.split(","):
        if not hop.startswith("@"):
            raise PathError("each source route hop must start with '@'")
        hops.append(_domain(hop[1:], utf8))
    return hops


def _mailbox(text: str, utf8: bool) -> tuple[str, str, bool]:
    if text.startswith('"'):
        end = _quoted_end(text)
        local, rest = text[:end], text[end:]
        quoted = True
        _quoted_string(local, utf8)
        if not rest.startswith("@"):
            raise PathError("a quoted local part must be followed by '@domain'")
        domain_text = rest[1:]
    else:
        local, at, domain_text = text.rpartition("@")
        if not at:
            raise PathError("the address has no '@domain'")
        quoted = False
        _dot_string(local, utf8)
    if len(local.encode("utf-8", "surrogatepass")) > MAX_LOCAL_PART:
        raise PathError("the local part is longer than 64 octets")
    if domain_text.startswith("["):
        domain = _address_literal(domain_text)
    else:
        domain = _domain(domain_text, utf8)
    return local, domain, quoted


def _quoted_end(text: str) -> int:
    """The index just past the closing quote of the quoted string at the start of `text`."""
    escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return index + 1
    raise PathError("the quoted local part is not closed")


def _quoted_string(text: str, utf8: bool) -> None:
    """Quoted-string = DQUOTE *QcontentSMTP DQUOTE (RFC 5321 4.1.2, RFC 6531 3.3)."""
    body = text[1:-1]
    index = 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            if index + 1 >= len(body) or not " " <= body[index + 1] <= "~":
                raise PathError("bad quoted pair in the local part")
            index += 2
            continue
        if not (" " <= char <= "~" and char not in '"\\') and not (utf8 and _is_utf8(char)):
            raise PathError("bad character in the quoted local part")
        index += 1


def _dot_string(text: str, utf8: bool) -> None:
    """Dot-string = Atom *("." Atom)."""
    atom = _UTF8_ATOM if utf8 else _ASCII_ATOM
    if not text:
        raise PathError("the local part is empty")
    for part in text.split("."):
        if not atom.match(part) or (utf8 and not all(_is_utf8(c) or c.isascii() for c in part)):
            raise PathError("bad character or dot in the local part")


def _domain(text: str, utf8: bool) -> str:
    """Domain = sub-domain *("." sub-domain); U-labels allowed with SMTPUTF8 (RFC 6531 3.3)."""
    if not text or len(text.encode("utf-8", "surrogatepass")) > MAX_DOMAIN:
        raise PathError("the domain is empty or too long")
    label = _UTF8_LABEL if utf8 else _ASCII_LABEL
    for part in text.split("."):
        if not label.match(part) or (utf8 and not all(_is_utf8(c) or c.isascii() for c in part)):
            raise PathError("bad domain name")
    return text


def _address_literal(text: str) -> str:
    """address-literal = "[" ( IPv4 / IPv6 / General-address-literal ) "]" (RFC 5321 4.1.3)."""
    if not text.endswith("]"):
        raise PathError("the address literal is not closed")
    inner = text[1:-1]
    if inner[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            raise PathError("bad IPv6 address literal") from None
    elif re.fullmatch(r"[0-9.]+", inner):
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            raise PathError("bad IPv4 address literal") from None
    elif not _GENERAL_LITERAL.match(inner):
        raise PathError("bad address literal")
    return text


def _is_utf8(char: str) -> bool:
    """A non-ASCII character that can be UTF-8 encoded (RFC 6531 UTF8-non-ascii); no
    surrogates and no C1 controls."""
    code = ord(char)
    return code >= 0xa0 and not 0xd800 <= code <= 0xdfff


def parse_params(text: str, *, utf8: bool = False) -> dict[str, str | None]:
    """Mail-parameters = esmtp-param *(SP esmtp-param) (RFC 5321 4.1.2); a keyword given twice
    is an error."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    value_pattern = _UTF8_VALUE if utf8 else _ASCII_VALUE
    for item in text.split(" "):
        if not item:
            continue
        keyword, equals, value = item.partition("=")
        if not _KEYWORD.match(keyword):
            raise PathError(f"bad parameter keyword {keyword[:20]!r}")
        if equals and not value_pattern.match(value):
            raise PathError(f"bad value for parameter {keyword[:20]}")
        key = keyword.upper()
        if key in params:
            raise PathError(f"parameter {key} given twice")
        params[key] = value if equals else None
    return params
