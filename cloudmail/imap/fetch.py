"""FETCH (RFC 3501 6.4.5, RFC 9051 6.4.5): what the client asked for, and each message's answer.

`parse_fetch` turns the attribute list (a macro, one attribute or a parenthesized list, then an
optional RFC 7162 `(CHANGEDSINCE n)` modifier) into a `FetchRequest` that says what the answer
needs: only index data (FLAGS, UID, sizes, dates: no file is opened, so `FETCH 1:* (FLAGS UID)`
on a big folder stays fast), the cached ENVELOPE/BODYSTRUCTURE, or the message bytes. Sections
are served from the stored bytes exactly (`mime.fetch_section`), never rebuilt from parsed
headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from cloudmail.imap import mime
from cloudmail.imap.format import format_internaldate, plist
from cloudmail.imap.tokens import Atom, ParseError
from cloudmail.mailstore.folder import Message

MACROS = {
    "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
    "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"],
}
INDEX_ITEMS = {"FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"}
STRUCTURE_ITEMS = {"ENVELOPE", "BODYSTRUCTURE"}
CONTENT_ITEMS = {"RFC822", "RFC822.HEADER", "RFC822.TEXT", "BODY"}
#: RFC 3501 6.4.5: RFC822.HEADER and RFC822.TEXT are BODY.PEEK[HEADER] and BODY[TEXT].
HEADER = mime.FetchAtt(specifier="HEADER", peek=True)
TEXT = mime.FetchAtt(specifier="TEXT")


@dataclass
class FetchRequest:
    """The parsed attributes: plain item names, or `mime.FetchAtt` for sections."""

    items: list[str | mime.FetchAtt] = field(default_factory=list)
    changed_since: int | None = None

    @property
    def needs_content(self) -> bool:
        return any(not isinstance(i, str) or i in CONTENT_ITEMS for i in self.items)

    @property
    def needs_structure(self) -> bool:
        return any(i in STRUCTURE_ITEMS for i in self.items if isinstance(i, str))

    @property
    def sets_seen(self) -> bool:
        """RFC 3501 6.4.5: BODY[…] (not PEEK), RFC822 and RFC822.TEXT set \\Seen."""
        return any(i in ("RFC822", "RFC822.TEXT") if isinstance(i, str) else not i.peek
                   for i in self.items)


def parse_fetch(args: list, *, uid: bool, condstore: bool) -> FetchRequest:
    """The attributes after the sequence set; ParseError for anything malformed. UID FETCH
    always answers with the UID, and CONDSTORE sessions with MODSEQ (RFC 7162 3.2)."""
    if not args:
        raise ParseError("FETCH needs attributes")
    wanted = args[0]
    request = FetchRequest()
    if isinstance(wanted, list):
        atoms = wanted
    elif isinstance(wanted, Atom) and wanted.upper() in MACROS:
        atoms = [Atom(a) for a in MACROS[wanted.upper()]]
    else:
        atoms = [wanted]
    if not atoms:
        raise ParseError("empty FETCH attribute list")
    for atom in atoms:
        request.items.append(_item(atom))
    for modifier in args[1:]:
        _modifier(request, modifier)
    if request.changed_since is not None:
        condstore = True
    names = {i for i in request.items if isinstance(i, str)}
    if uid and "UID" not in names:
        request.items.insert(0, "UID")
    if condstore and "MODSEQ" not in names:
        request.items.append("MODSEQ")
    return request


def _item(atom: object) -> str | mime.FetchAtt:
    """One attribute; BINARY (RFC 3516) is not advertised, so it is refused here rather than
    failing on a part it cannot decode."""
    if not isinstance(atom, Atom):
        raise ParseError("FETCH attributes are atoms")
    name = atom.upper()
    if "[" in name:
        if name.startswith("BINARY"):
            raise ParseError(f"BINARY is not offered: {atom}")
        try:
            return mime.parse_fetch_att(str(atom))
        except ValueError as e:
            raise ParseError(f"bad FETCH attribute {atom}: {e}") from None
    if name in INDEX_ITEMS or name in STRUCTURE_ITEMS or name in CONTENT_ITEMS:
        return name
    raise ParseError(f"unknown FETCH attribute {atom}")


def _modifier(request: FetchRequest, modifier: object) -> None:
    """RFC 7162 3.1.4: `(CHANGEDSINCE <mod-sequence>)`."""
    if (not isinstance(modifier, list) or len(modifier) != 2
            or not isinstance(modifier[0], Atom) or modifier[0].upper() != "CHANGEDSINCE"
            or not isinstance(modifier[1], Atom) or not modifier[1].isdigit()):
        raise ParseError("unknown FETCH modifier")
    request.changed_since = int(modifier[1])


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def internal_date(message: Message) -> bytes:
    return format_internaldate(datetime.fromtimestamp(message.internal_date, timezone.utc))


def render(seq: int, message: Message, flags: frozenset[str], request: FetchRequest, *,
           content: bytes | None = None,
           structure: tuple[bytes, bytes] | None = None) -> bytes:
    """`* seq FETCH (…)` for one message (without CRLF); `content` and `structure` must be
    given when the request needs them."""
    parts: list[bytes] = []
    for item in request.items:
        if isinstance(item, mime.FetchAtt):
            data = mime.fetch_section(content or b"", item)
            parts.append(item.response_name() + b" " + (literal(data) if data is not None
                                                        else b"NIL"))
        elif item == "FLAGS":
            parts.append(b"FLAGS " + plist(f.encode() for f in sorted(flags)))
        elif item == "UID":
            parts.append(b"UID %d" % message.uid)
        elif item == "MODSEQ":
            parts.append(b"MODSEQ (%d)" % message.modseq)
        elif item == "INTERNALDATE":
            parts.append(b"INTERNALDATE " + internal_date(message))
        elif item == "RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % message.size)
        elif item == "ENVELOPE":
            parts.append(b"ENVELOPE " + structure[0])
        elif item == "BODYSTRUCTURE":
            parts.append(b"BODYSTRUCTURE " + structure[1])
        elif item == "BODY":
            parts.append(b"BODY " + mime.body_structure(content or b"", extensible=False))
        elif item == "RFC822":
            parts.append(b"RFC822 " + literal(content or b""))
        elif item == "RFC822.HEADER":
            parts.append(b"RFC822.HEADER " + literal(mime.fetch_section(content or b"", HEADER)))
        elif item == "RFC822.TEXT":
            parts.append(b"RFC822.TEXT " + literal(mime.fetch_section(content or b"", TEXT)))
    return b"* %d FETCH (%s)" % (seq, b" ".join(parts))


def compute_structure(content: bytes) -> tuple[bytes, bytes]:
    """ENVELOPE and BODYSTRUCTURE of a message, to cache in the index."""
    return mime.envelope(content), mime.body_structure(content, extensible=True)
