"""Message structure read straight from the stored bytes: the MIME tree with byte offsets, and
what IMAP FETCH and SEARCH derive from it (ENVELOPE, BODYSTRUCTURE, BODY[section], decoded text).

FETCH must serve the stored bytes exactly, so nothing here re-serializes a message: a `Part`
holds offsets into `raw` (its header block, blank line included, and its body), and every
section is a slice of `raw`. The header block is split by hand (RFC 5322 2.2: fields end at a
line end, a line starting with SP or HTAB continues the field; a bare LF is taken as a line end)
because `email.message_from_bytes` is slow and rewrites what it parses.

The tree follows RFC 2045 and RFC 2046: a missing or unusable Content-Type is
`text/plain; charset=us-ascii` (`message/rfc822` inside a multipart/digest); a multipart is split
on its boundary delimiter lines (RFC 2046 5.1.1: the line end before a delimiter belongs to it;
preamble and epilogue are not parts; a missing close delimiter ends the last part at the end of
the body); a message/rfc822 part has the encapsulated message as its only child. A message whose
first line is not a header field has an empty header block and is all body. A multipart without
a boundary or without any part, and anything nested deeper than `MAX_DEPTH`, is one text/plain
part. Nothing here raises on malformed input.

BODYSTRUCTURE follows RFC 3501 7.4.2 (RFC 9051 7.5.2). Names that compare case-insensitively
(type, subtype, parameter names, transfer encoding, disposition type) are sent upper-cased, as
in the examples of RFC 3501; values are sent as written, parameters in their RFC 2231 form.
ENVELOPE fields are unfolded but not decoded (RFC 2047 words pass through). Header text is held
as UTF-8 decoded with `surrogateescape`, so 8-bit bytes go back out exactly as stored.
"""

from __future__ import annotations

import binascii
import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

from cloudmail.imap.format import NIL, astring, plist, string
from cloudmail.imap.tokens import MAX_NUMBER

#: Multiparts and message/rfc822 parts nested deeper than this are read as text/plain.
MAX_DEPTH = 50

_ENVELOPE_ADDRESSES = ("from", "sender", "reply-to", "to", "cc", "bcc")
_TEXT_PLAIN = ("text", "plain", (("charset", "us-ascii"),))
_MESSAGE_RFC822 = ("message", "rfc822", ())
_CONTENT_FIELDS = {
    "content-type", "content-transfer-encoding", "content-disposition", "content-language",
    "content-id", "content-description", "content-location", "content-md5",
}

_BLANK_LINE = re.compile(rb"\n\r?\n")
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*\n?")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=(?:[ \t\r\n]+(?==\?))?")
_VALUE_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|\((?:[^()\\]|\\.)*\)?|;|[^";(]+', re.DOTALL)
_CONTINUATION = re.compile(r"(.+)\*([0-9]{1,9})(\*?)")
_ADDRESS_TOKEN = re.compile(
    r'\s+|"(?:[^"\\]|\\.)*"?|\[[^\]]*\]?|[()<>@,;:.]|[^\s"()<>@,;:.\[]+', re.DOTALL
)


class HeaderField(NamedTuple):
    """One header field: `raw[start:end]` is the field as stored (continuation lines and line
    end included), its value starts at `value_start`; `name` is lower-cased."""

    name: str
    start: int
    value_start: int
    end: int


@dataclass(eq=False)
class Part:
    """One MIME entity of a message: `raw[header_start:body_start]` is its header block (blank
    line included, may be empty), `raw[body_start:body_end]` its body. `children` are the parts
    of a multipart, or the encapsulated message of a message/rfc822 part."""

    header_start: int
    body_start: int
    body_end: int
    fields: list[HeaderField]
    lines: int
    type: str = "text"
    subtype: str = "plain"
    param_list: tuple[tuple[str, str], ...] = ()
    id: str | None = None
    description: str | None = None
    encoding: str | None = None
    disposition: str | None = None
    disposition_param_list: tuple[tuple[str, str], ...] = ()
    language: tuple[str, ...] | None = None
    location: str | None = None
    md5: str | None = None
    children: list[Part] = field(default_factory=list)

    @property
    def size(self) -> int:
        """The body size in octets, as stored."""
        return self.body_end - self.body_start

    @property
    def params(self) -> dict[str, str]:
        """Content-Type parameters, lower-cased names, RFC 2231 values decoded."""
        return _decode_params(self.param_list)

    @property
    def disposition_params(self) -> dict[str, str]:
        """Content-Disposition parameters, lower-cased names, RFC 2231 values decoded."""
        return _decode_params(self.disposition_param_list)

    @property
    def is_multipart(self) -> bool:
        return self.type == "multipart"

    @property
    def is_message(self) -> bool:
        """True for a message/rfc822 part (its only child is the encapsulated message)."""
        return self.type == "message" and self.subtype == "rfc822"


def parse(raw: bytes) -> Part:
    """The MIME tree of the message `raw`."""
    return _parse_entity(raw, 0, len(raw), 0, _TEXT_PLAIN)


def _parse_entity(raw: bytes, start: int, end: int, depth: int, default: tuple) -> Part:
    body_start = _header_end(raw, start, end)
    fields = _fields(raw, start, body_start)
    values = _first_values(raw, fields, _CONTENT_FIELDS)
    disposition, disposition_params = _split_value(values.get("content-disposition", ""))
    languages = _split_value(values.get("content-language", ""))[0].split(",")
    part = Part(
        start, body_start, end, fields, _count_lines(raw, body_start, end),
        *_media_type(values.get("content-type"), default),
        id=values.get("content-id"),
        description=values.get("content-description"),
        encoding=_split_value(values.get("content-transfer-encoding", ""))[0].lower() or None,
        disposition=disposition or None,
        disposition_param_list=tuple(disposition_params) if disposition else (),
        language=tuple(tag.strip() for tag in languages if tag.strip()) or None,
        location=values.get("content-location"),
        md5=values.get("content-md5"),
    )
    boundary = part.params.get("boundary") if part.is_multipart else None
    if depth < MAX_DEPTH and boundary:
        spans = _split_multipart(raw, body_start, end, boundary)
        child_default = _MESSAGE_RFC822 if part.subtype == "digest" else _TEXT_PLAIN
        part.children = [_parse_entity(raw, a, b, depth + 1, child_default) for a, b in spans]
    elif depth < MAX_DEPTH and part.is_message:
        part.children = [_parse_entity(raw, body_start, end, depth + 1, _TEXT_PLAIN)]
    if (part.is_multipart or part.is_message) and not part.children:
        part.type, part.subtype, part.param_list = _TEXT_PLAIN
    return part


def _media_type(value: str | None, default: tuple) -> tuple:
    """(type, subtype, parameters) of a Content-Type value; `default` when absent or invalid."""
    media, params = _split_value(value or "")
    kind, _, subtype = media.partition("/")
    kind, subtype = kind.strip(), subtype.strip()
    if _TOKEN.fullmatch(kind) and _TOKEN.fullmatch(subtype):
        return kind.lower(), subtype.lower(), tuple(params)
    return default


def _header_end(raw: bytes, start: int, end: int) -> int:
    """Where the header block starting at `start` ends (after its blank line)."""
    if raw.startswith(b"\r\n", start, end):
        return start + 2
    if raw.startswith(b"\n", start, end):
        return start + 1
    if not _FIELD.match(raw, start, end):
        return start
    blank = _BLANK_LINE.search(raw, start, end)
    return blank.end() if blank else end


def _fields(raw: bytes, start: int, end: int) -> list[HeaderField]:
    """The header fields in `raw[start:end]`; lines that are not fields are skipped."""
    fields = []
    pos = start
    while pos < end:
        match = _FIELD.match(raw, pos, end)
        if match:
            name = match.group(1).decode("ascii").lower()
            fields.append(HeaderField(name, pos, raw.index(b":", match.end(1)) + 1, match.end()))
            pos = match.end()
        else:
            newline = raw.find(b"\n", pos, end)
            pos = end if newline < 0 else newline + 1
    return fields


def _unfolded(raw: bytes, f: HeaderField) -> bytes:
    """The field value unfolded (RFC 5322 2.2.3) and stripped."""
    value = raw[f.value_start:f.end].strip(b" \t\r\n")
    return _FOLD.sub(b"", value) if b"\n" in value else value


def _value(raw: bytes, f: HeaderField) -> str:
    """The field value, decoded so that it encodes back exactly."""
    return _unfolded(raw, f).decode("utf-8", "surrogateescape")


def _first_values(raw: bytes, fields: list[HeaderField], names: set[str]) -> dict[str, str]:
    """The value of the first field of each of `names` that is present."""
    found: dict[str, str] = {}
    for f in fields:
        if f.name in names and f.name not in found:
            found[f.name] = _value(raw, f)
    return found


def _count_lines(raw: bytes, start: int, end: int) -> int:
    """Lines in `raw[start:end]`, an unterminated last line counted too."""
    lines = raw.count(b"\n", start, end)
    if end > start and raw[end - 1] != 0x0A:
        lines += 1
    return lines


def _split_multipart(raw: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """The (start, end) spans of the body parts between the delimiter lines (RFC 2046 5.1.1)."""
    delimiter = re.compile(
        rb"^--" + re.escape(boundary.encode("utf-8", "surrogateescape")) + rb"(--)?[ \t]*\r?$",
        re.MULTILINE,
    )
    spans = []
    part_start = None
    for match in delimiter.finditer(raw, start, end):
        if part_start is not None:
            part_end = match.start()
            if raw.startswith(b"\r\n", part_end - 2, part_end) and part_end - 2 >= part_start:
                part_end -= 2
            elif part_end > part_start and raw[part_end - 1] == 0x0A:
                part_end -= 1
            spans.append((part_start, part_end))
        if match.group(1):
            return spans
        part_start = min(match.end() + 1, end)
    if part_start is not None:
        spans.append((part_start, end))
    return spans


def _split_value(value: str) -> tuple[str, list[tuple[str, str]]]:
    """A `value; name=value; ...` field (RFC 2045 5.1) with comments dropped: the leading value
    and the parameters as written, names lower-cased, quoted values unquoted."""
    segments = [""]
    for token in _VALUE_TOKEN.findall(value):
        if token == ";":
            segments.append("")
        elif not token.startswith("("):
            segments[-1] += token
    params = []
    for segment in segments[1:]:
        name, equals, text = segment.partition("=")
        name, text = name.strip().lower(), text.strip()
        if equals and name:
            params.append((name, _unquote(text) if text.startswith('"') else text))
    return segments[0].strip(), params


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1] if text.endswith('"') and len(text) > 1 else text[1:])


def _decode_params(params: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Parameters with RFC 2231 continuations joined and `charset'lang'%xx` values decoded."""
    plain: dict[str, str] = {}
    pieces: dict[str, list[tuple[int, str, bool]]] = {}
    for name, value in params:
        match = _CONTINUATION.fullmatch(name)
        if match:
            pieces.setdefault(match.group(1), []).append(
                (int(match.group(2)), value, bool(match.group(3)))
            )
        elif name.endswith("*"):
            pieces.setdefault(name[:-1], []).append((0, value, True))
        else:
            plain.setdefault(name, value)
    for name, parts in pieces.items():
        parts.sort(key=lambda piece: piece[0])
        charset = "us-ascii"
        data = b""
        for index, (_, value, encoded) in enumerate(parts):
            if encoded and index == 0 and value.count("'") >= 2:
                charset, _, value = value.split("'", 2)
            chunk = value.encode("utf-8", "surrogateescape")
            data += unquote_to_bytes(chunk) if encoded else chunk
        plain[name] = _decode_text(data, charset)
    return plain


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _nstring(text: str | None) -> bytes:
    return NIL if text is None else string(_bytes(text))


def envelope(raw: bytes) -> bytes:
    """The ENVELOPE of the message `raw` (RFC 3501 7.4.2)."""
    return _envelope(raw, _top_fields(raw))


def _envelope(raw: bytes, fields: list[HeaderField]) -> bytes:
    names = {"date", "subject", "in-reply-to", "message-id", *_ENVELOPE_ADDRESSES}
    values = _first_values(raw, fields, names)
    addresses = {name: _addresses(values[name]) for name in _ENVELOPE_ADDRESSES if name in values}
    for name in ("sender", "reply-to"):
        if not addresses.get(name):
            addresses[name] = addresses.get("from", [])
    items = [_nstring(values.get("date")), _nstring(values.get("subject"))]
    for name in _ENVELOPE_ADDRESSES:
        found = addresses.get(name)
        items.append(plist(plist(_nstring(v) for v in a) for a in found) if found else NIL)
    items += [_nstring(values.get("in-reply-to")), _nstring(values.get("message-id"))]
    return plist(items)


_Address = tuple[str | None, str | None, str | None, str | None]
_GROUP_END: _Address = (None, None, None, None)


def _addresses(text: str) -> list[_Address]:
    """An RFC 5322 address-list as IMAP addresses (name, adl, mailbox, host), groups marked by
    `(NIL NIL group NIL)` ... `(NIL NIL NIL NIL)` (RFC 3501 7.4.2). Liberal: what is not an
    address is skipped, a word without `@` is a mailbox with an empty host."""
    tokens = _address_tokens(text)
    found: list[_Address] = []
    in_group = False
    index = 0
    while index < len(tokens):
        phrase = []
        while index < len(tokens) and tokens[index][0] not in ",;:<":
            phrase.append(tokens[index])
            index += 1
        stop = tokens[index][0] if index < len(tokens) else ""
        index += 1
        if stop == ":" and not in_group:
            found.append((None, None, _phrase(phrase), None))
            in_group = True
            continue
        if stop == "<":
            closing = index
            while closing < len(tokens) and tokens[closing][0] != ">":
                closing += 1
            found.append((_phrase(phrase) or None, *_angle_address(tokens[index:closing])))
            index = closing + 1
            while index < len(tokens) and tokens[index][0] not in ",;":
                index += 1
        elif phrase:
            found.append((None, None, *_addr_spec(phrase)))
        if stop == ";" and in_group:
            found.append(_GROUP_END)
            in_group = False
    if in_group:
        found.append(_GROUP_END)
    return found


def _address_tokens(text: str) -> list[tuple[str, str, bool]]:
    """(kind, text, space before) for each token; kind is the special character itself, `"` for
    a quoted string (unquoted), or `a` for an atom or domain literal. Comments are dropped."""
    tokens = []
    space = False
    depth = 0
    for match in _ADDRESS_TOKEN.finditer(text):
        token = match.group()
        if depth or token == "(":
            depth = max(depth + {"(": 1, ")": -1}.get(token, 0), 0)
            space = True
        elif token.isspace() or token == ")":
            space = True
        elif token.startswith('"'):
            tokens.append(('"', _unquote(token), space))
            space = False
        else:
            tokens.append((token if token in "<>@,;:." else "a", token, space))
            space = False
    return tokens


def _phrase(tokens: list[tuple[str, str, bool]]) -> str:
    text = ""
    for _, token, space in tokens:
        text += (" " if space and text else "") + token
    return text


def _addr_spec(tokens: list[tuple[str, str, bool]]) -> tuple[str, str]:
    at = max((i for i, token in enumerate(tokens) if token[0] == "@"), default=-1)
    if at < 0:
        return "".join(t[1] for t in tokens), ""
    return "".join(t[1] for t in tokens[:at]), "".join(t[1] for t in tokens[at + 1:])


def _angle_address(tokens: list[tuple[str, str, bool]]) -> tuple[str | None, str, str]:
    """(adl, mailbox, host) of what is inside `<...>`, source route included."""
    colon = next((i for i, token in enumerate(tokens) if token[0] == ":"), -1)
    route = "".join(t[1] for t in tokens[:colon]) if colon >= 0 else None
    return (route or None, *_addr_spec(tokens[colon + 1:]))


def body_structure(raw: bytes, extensible: bool = True, *, tree: Part | None = None) -> bytes:
    """BODYSTRUCTURE of `raw` (RFC 3501 7.4.2), or BODY when not `extensible` (no extension
    data). `tree` is `parse(raw)` when the caller already has it."""
    return _structure(raw, tree or parse(raw), extensible)


def _structure(raw: bytes, part: Part, extensible: bool) -> bytes:
    if part.is_multipart:
        children = b"".join(_structure(raw, child, extensible) for child in part.children)
        items = [children, string(part.subtype.upper())]
        if extensible:
            items += [_params(part.param_list), *_extension(part)]
        return plist(items)
    items = [string(part.type.upper()), string(part.subtype.upper()), _params(part.param_list),
             _nstring(part.id), _nstring(part.description),
             string(_bytes((part.encoding or "7bit").upper())), b"%d" % part.size]
    if part.is_message:
        message = part.children[0]
        items += [_envelope(raw, message.fields), _structure(raw, message, extensible)]
    if part.is_message or part.type == "text":
        items.append(b"%d" % part.lines)
    if extensible:
        items += [_nstring(part.md5), *_extension(part)]
    return plist(items)


def _params(params: tuple[tuple[str, str], ...]) -> bytes:
    if not params:
        return NIL
    return plist(string(_bytes(text)) for name, value in params for text in (name.upper(), value))


def _extension(part: Part) -> list[bytes]:
    """body-fld-dsp, body-fld-lang and body-fld-loc."""
    disposition = NIL
    if part.disposition is not None:
        disposition = plist(
            [string(_bytes(part.disposition.upper())), _params(part.disposition_param_list)]
        )
    language = NIL if part.language is None else plist(string(_bytes(t)) for t in part.language)
    return [disposition, language, _nstring(part.location)]


class UnknownEncoding(Exception):
    """BINARY asked for a part whose Content-Transfer-Encoding is unknown (RFC 3516: the
    server answers NO [UNKNOWN-CTE])."""


_SPECIFIERS = ("", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")
_FETCH_ATT = re.compile(
    r"(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[(.*)\](?:<([0-9]+)\.([0-9]+)>)?",
    re.IGNORECASE | re.DOTALL,
)
_PART_NUMBER = re.compile(r"[1-9][0-9]*")
_HEADER_NAME = re.compile(r'"((?:[^"\\]|\\.)+)"|([^\s()"]+)')
_HEADER_LIST = re.compile(
    rf"\(\s*(?:{_HEADER_NAME.pattern})(?:\s+(?:{_HEADER_NAME.pattern}))*\s*\)"
)


@dataclass(frozen=True)
class Section:
    """RFC 3501 section-spec: part numbers, then a specifier (`HEADER.FIELDS` with its
    upper-cased field names)."""

    part: tuple[int, ...] = ()
    specifier: str = ""
    fields: tuple[str, ...] = ()

    def text(self) -> bytes:
        """The section as written between the brackets of a FETCH response."""
        spec = ".".join([*(str(number) for number in self.part), self.specifier]).strip(".")
        if self.fields:
            return spec.encode("ascii") + b" " + plist(astring(name) for name in self.fields)
        return spec.encode("ascii")


@dataclass(frozen=True, kw_only=True)
class FetchAtt(Section):
    """A FETCH attribute with a section: `name` is BODY, BINARY or BINARY.SIZE (RFC 3516),
    `peek` tells .PEEK (the \\Seen flag is left alone), `partial` is (origin, length)."""

    name: str = "BODY"
    peek: bool = False
    partial: tuple[int, int] | None = None

    def response_name(self) -> bytes:
        """The item name in the FETCH response: no .PEEK, only the origin of a partial."""
        name = self.name.encode("ascii") + b"[" + self.text() + b"]"
        return name if self.partial is None else name + b"<%d>" % self.partial[0]


def parse_fetch_att(atom: str) -> FetchAtt:
    """Parse `BODY[...]`, `BODY.PEEK[...]<o.l>`, `BINARY[...]`, `BINARY.PEEK[...]<o.l>` or
    `BINARY.SIZE[...]`; ValueError when malformed."""
    match = _FETCH_ATT.fullmatch(atom)
    if not match:
        raise ValueError(f"invalid fetch attribute {atom!r}")
    name = match.group(1).upper()
    peek = name.endswith(".PEEK")
    name = name.removesuffix(".PEEK")
    spec, _, names = match.group(2).partition(" ")
    tokens = spec.split(".") if spec else []
    part = []
    while tokens and tokens[0].isascii() and tokens[0].isdigit():
        number = tokens.pop(0)
        if not _PART_NUMBER.fullmatch(number) or int(number) > MAX_NUMBER:
            raise ValueError(f"invalid part number in {atom!r}")
        part.append(int(number))
    specifier = ".".join(tokens).upper()
    if specifier not in _SPECIFIERS or (tokens and not specifier):
        raise ValueError(f"invalid section in {atom!r}")
    if (specifier == "MIME" and not part) or (name != "BODY" and specifier):
        raise ValueError(f"invalid section in {atom!r}")
    fields = _header_names(names, atom) if specifier.startswith("HEADER.FIELDS") else ()
    if names and not fields:
        raise ValueError(f"invalid section in {atom!r}")
    partial = None
    if match.group(3) is not None:
        origin, length = int(match.group(3)), int(match.group(4))
        if name == "BINARY.SIZE" or not 0 < length <= MAX_NUMBER or origin > MAX_NUMBER:
            raise ValueError(f"invalid partial in {atom!r}")
        partial = (origin, length)
    return FetchAtt(
        name=name, peek=peek, part=tuple(part), specifier=specifier, fields=fields, partial=partial
    )


def _header_names(text: str, atom: str) -> tuple[str, ...]:
    """The names of a header-list `(From To)`, upper-cased; ValueError when malformed."""
    if not _HEADER_LIST.fullmatch(text):
        raise ValueError(f"invalid header list in {atom!r}")
    return tuple(
        (_unquote(f'"{quoted}"') if quoted else bare).upper()
        for quoted, bare in _HEADER_NAME.findall(text)
    )


def fetch_section(raw: bytes, att: FetchAtt, *, tree: Part | None = None) -> bytes | None:
    """The bytes of `att`'s section of `raw` (RFC 3501 6.4.5), its partial applied; None when
    the part does not exist or is not a message/rfc822 for HEADER/TEXT (the server answers
    NIL). BINARY gives the part's content decoded (RFC 3516), or raises UnknownEncoding."""
    data = _section(raw, tree or parse(raw), att)
    if data is None or att.partial is None:
        return data
    origin, length = att.partial
    return data[origin:origin + length]


def _section(raw: bytes, root: Part, att: FetchAtt) -> bytes | None:
    part = _find_part(root, att.part)
    if part is None:
        return None
    if att.name != "BODY":
        return _decoded_body(raw, part, strict=True) if att.part else raw
    if not att.specifier:
        return raw[part.body_start:part.body_end] if att.part else raw
    if att.specifier == "MIME":
        return raw[part.header_start:part.body_start]
    if not att.part:
        message = root
    elif part.is_message:
        message = part.children[0]
    else:
        return None
    if att.specifier == "TEXT":
        return raw[message.body_start:message.body_end]
    if att.specifier == "HEADER":
        return raw[message.header_start:message.body_start]
    wanted = {name.lower() for name in att.fields}
    keep = att.specifier == "HEADER.FIELDS"
    kept = [raw[f.start:f.end] for f in message.fields if (f.name in wanted) == keep]
    return b"".join(line if line.endswith(b"\n") else line + b"\r\n" for line in kept) + b"\r\n"


def _find_part(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part `numbers` names (RFC 3501 6.4.5): numbers index a multipart's parts, go into the
    message of a message/rfc822 part, and a message that is not multipart has only part 1."""
    part = root
    for index, number in enumerate(numbers):
        if index and not part.is_multipart:
            if not part.is_message:
                return None
            part = part.children[0]
        if part.is_multipart:
            if number > len(part.children):
                return None
            part = part.children[number - 1]
        elif number != 1:
            return None
    return part


def _decoded_body(raw: bytes, part: Part, strict: bool) -> bytes:
    """The body with its transfer encoding undone; an unknown encoding raises UnknownEncoding
    when `strict`, else the body is taken as it is."""
    body = raw[part.body_start:part.body_end]
    if part.is_multipart or part.is_message:
        return body
    if part.encoding == "base64":
        return _decode_base64(body)
    if part.encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    if strict and part.encoding not in (None, "7bit", "8bit", "binary"):
        raise UnknownEncoding(part.encoding)
    return body


def _decode_base64(data: bytes) -> bytes:
    """Liberal base64: characters outside the alphabet are skipped, padding is repaired."""
    data = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    if len(data) % 4 == 1:
        data = data[:-1]
    return binascii.a2b_base64(data + b"=" * (-len(data) % 4))


def _decode_text(data: bytes, charset: str) -> str:
    """`data` in `charset`, errors replaced; US-ASCII and unknown charsets read as UTF-8."""
    charset = charset.strip().lower()
    try:
        if charset not in ("", "us-ascii", "ascii"):
            return data.decode(charset, "replace")
    except (LookupError, ValueError):
        pass
    return data.decode("utf-8", "replace")


def _decode_words(text: str) -> str:
    """`text` with RFC 2047 encoded words decoded (6.2: space between two words dropped)."""

    def decode(word: re.Match) -> str:
        data = word.group(3).encode("utf-8", "surrogateescape")
        if word.group(2).upper() == "Q":
            decoded = binascii.a2b_qp(data, header=True)
        else:
            decoded = _decode_base64(data)
        return _decode_text(decoded, word.group(1).partition("*")[0])

    return _ENCODED_WORD.sub(decode, text)


def _top_fields(raw: bytes) -> list[HeaderField]:
    return _fields(raw, 0, _header_end(raw, 0, len(raw)))


def _decoded_value(raw: bytes, f: HeaderField) -> str:
    return _decode_words(_unfolded(raw, f).decode("utf-8", "replace"))


def header_values(raw: bytes, name: str) -> list[str]:
    """Every value of the header field `name` of the message, unfolded and RFC 2047 decoded."""
    name = name.lower()
    return [_decoded_value(raw, f) for f in _top_fields(raw) if f.name == name]


def all_headers_text(raw: bytes) -> str:
    """The message header as decoded text, one `name: value` line per field (SEARCH TEXT)."""
    return "\n".join(f"{f.name}: {_decoded_value(raw, f)}" for f in _top_fields(raw))


def body_text(raw: bytes) -> str:
    """The text of every text/* part, transfer encoding and charset decoded (SEARCH BODY)."""
    return "\n".join(
        _decode_text(_decoded_body(raw, part, strict=False), part.params.get("charset", ""))
        for part in _leaves(parse(raw))
        if part.type == "text"
    )


def _leaves(part: Part) -> Iterator[Part]:
    if not part.children:
        yield part
    for child in part.children:
        yield from _leaves(child)


def sent_date(raw: bytes) -> date | None:
    """The date of the Date: field as written (RFC 3501 SENTON etc. ignore time and zone),
    None when absent or unreadable."""
    value = _first_values(raw, _top_fields(raw), {"date"}).get("date")
    if value is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).date()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
