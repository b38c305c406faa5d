"""The message as a Sieve script sees it: header fields (unfolded, RFC 2047 decoded), the
addresses in them, the body and its MIME parts, and the changes `addheader`/`deleteheader`
(RFC 5293) make, which later tests and the delivered message both see."""

from __future__ import annotations

import email
import email.policy
import functools
from dataclasses import dataclass, field
from email.header import Header, decode_header, make_header
from email.message import Message
from email.utils import getaddresses

_BODY_LIMIT = 4 << 20


def unfold(value: str) -> str:
    """A header value without its folding (RFC 5322 2.2.3) and surrounding white space."""
    return value.replace("\r\n", "").replace("\n", "").replace("\r", "").strip()


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; a value that cannot be decoded is left as it is."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError, AssertionError):
        return value


def encode_words(value: str) -> str:
    """A header value for the wire: RFC 2047 encoded words when it is not ASCII."""
    return value if value.isascii() else Header(value, "utf-8").encode()


def parse_addresses(values: list[str]) -> list[str]:
    """The addr-specs in address header values, groups flattened, empty ones dropped."""
    return list(_addresses(tuple(values)))


@functools.lru_cache(maxsize=1024)
def _addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    """`parse_addresses`, remembered: a script's address tests ask about the same few fields
    of one message again and again, and the email package's parser is slow."""
    return tuple(address.strip() for _, address in getaddresses(list(values))
                 if address and address != "<>")


@dataclass
class MimePart:
    """One MIME part: its header fields, its content type and the decoded content. `children`
    are its sub-parts (multipart, or the message inside a message/rfc822)."""

    node: Message
    children: list[MimePart] = field(default_factory=list)
    parent: MimePart | None = None

    def headers(self, name: str) -> list[str]:
        return [decode_words(unfold(str(v))) for v in (self.node.get_all(name) or [])]

    def raw_headers(self, name: str) -> list[str]:
        return [unfold(str(v)) for v in (self.node.get_all(name) or [])]

    @property
    def content_type(self) -> str:
        return self.node.get_content_type().lower()

    def params(self, header: str) -> dict[str, str]:
        """The parameters of Content-Type or Content-Disposition, names in lower case."""
        found: dict[str, str] = {}
        for name, value in self.node.get_params([], header=header)[1:]:
            if isinstance(value, tuple):
                value = email.utils.collapse_rfc2231_value(value)
            found[name.lower()] = str(value)
        return found

    def is_multipart(self) -> bool:
        return self.node.is_multipart()

    def text(self) -> str:
        """The content with its transfer encoding undone and, for text, its charset decoded."""
        if self.node.is_multipart():
            return ""
        payload = self.node.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return ""
        payload = payload[:_BODY_LIMIT]
        charset = self.node.get_content_charset() or ("utf-8" if self.content_type.startswith("text/") else "latin-1")
        try:
            return payload.decode(charset, "replace")
        except LookupError:
            return payload.decode("utf-8", "replace")

    def descendants(self) -> list[MimePart]:
        """All the parts below this one, depth first, in message order."""
        found = []
        for child in self.children:
            found.append(child)
            found.extend(child.descendants())
        return found


def _tree(node: Message, parent: MimePart | None = None) -> MimePart:
    part = MimePart(node, parent=parent)
    if node.is_multipart():
        payload = node.get_payload()
        for child in payload if isinstance(payload, list) else []:
            part.children.append(_tree(child, part))
    return part


class SieveMessage:
    """A message under filtering. Header fields are kept as written (name, value after the
    colon) so that the edited message is the original with only the edited fields changed."""

    def __init__(self, raw: bytes) -> None:
        head, separator, body = _split(raw)
        self.newline = b"\r\n" if b"\r\n" in head + separator or not head else b"\n"
        self.fields: list[tuple[str, str]] = _fields(head)
        self.body = body
        self._has_separator = bool(separator)
        self._tree: MimePart | None = None

    def headers(self, name: str) -> list[str]:
        """Every value of header `name` in order, unfolded and RFC 2047 decoded."""
        return [decode_words(unfold(v)) for n, v in self.fields if n.lower() == name.lower()]

    def raw_headers(self, name: str) -> list[str]:
        return [unfold(v) for n, v in self.fields if n.lower() == name.lower()]

    def addresses(self, name: str) -> list[str]:
        return parse_addresses(self.raw_headers(name))

    def add_header(self, name: str, value: str, *, last: bool = False) -> None:
        """RFC 5293 4: added at the top unless `:last`; a value with line breaks is folded."""
        folded = " " + value.replace("\r\n", "\n").replace("\n", "\r\n ")
        if last:
            self.fields.append((name, folded))
        else:
            self.fields.insert(0, (name, folded))
        self._tree = None

    def delete_header(self, name: str, keep=None, *, index: int | None = None, last: bool = False) -> int:
        """Delete the fields named `name`; with `index` (from 1, or from the end when `last`)
        only that occurrence; `keep(value)` returning True spares a field. Returns the count."""
        positions = [i for i, (n, _) in enumerate(self.fields) if n.lower() == name.lower()]
        if index is not None:
            if index < 1 or index > len(positions):
                return 0
            positions = [positions[-index] if last else positions[index - 1]]
        doomed = [i for i in positions if keep is None or not keep(decode_words(unfold(self.fields[i][1])))]
        for i in reversed(doomed):
            del self.fields[i]
        if doomed:
            self._tree = None
        return len(doomed)

    def to_bytes(self) -> bytes:
        nl = self.newline
        head = b"".join(
            f"{name}:{value}".replace("\r\n", "\n").replace("\n", nl.decode()).encode("utf-8", "surrogateescape") + nl
            for name, value in self.fields
        )
        return head + (nl if self._has_separator or self.body else b"") + self.body

    @property
    def size(self) -> int:
        return len(self.to_bytes())

    def raw_body(self) -> str:
        return self.body[:_BODY_LIMIT].decode("utf-8", "replace")

    @property
    def tree(self) -> MimePart:
        """The MIME structure, the top-level part being the whole message."""
        if self._tree is None:
            node = email.message_from_bytes(self.to_bytes(), policy=email.policy.compat32)
            self._tree = _tree(node)
        return self._tree


def _split(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """Header block, the empty line, body. A message without an empty line is all header."""
    if raw.startswith((b"\r\n", b"\n")):
        sep = b"\r\n" if raw.startswith(b"\r\n") else b"\n"
        return b"", sep, raw[len(sep):]
    candidates = [(raw.find(s), s) for s in (b"\r\n\r\n", b"\n\n") if raw.find(s) >= 0]
    if not candidates:
        return raw, b"", b""
    at, sep = min(candidates)
    half = len(sep) // 2
    return raw[: at + half], sep[half:], raw[at + len(sep):]


def _fields(head: bytes) -> list[tuple[str, str]]:
    text = head.decode("utf-8", "surrogateescape")
    fields: list[tuple[str, str]] = []
    for line in text.splitlines(keepends=True):
        if line[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        fields.append((name.strip(), value))
    return [(name, value.rstrip("\r\n")) for name, value in fields]
