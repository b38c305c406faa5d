"""Message structure from stored bytes (`cloudmail.imap.mime`): ENVELOPE, BODYSTRUCTURE and
BODY[section] as RFC 3501 defines them, every section an exact slice of the stored message,
search text decoded, and no input that makes any of it raise."""

from __future__ import annotations

import re
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imapclient.response_parser import parse_fetch_response

from cloudmail.imap.mime import (
    MAX_DEPTH,
    FetchAtt,
    UnknownEncoding,
    all_headers_text,
    body_structure,
    body_text,
    envelope,
    fetch_section,
    header_values,
    parse,
    parse_fetch_att,
    sent_date,
)

LITERAL = re.compile(rb"\{([0-9]+)\}\r\n")


def crlf(text: str) -> bytes:
    """`text` with LF line ends turned into CRLF, as messages are stored."""
    return text.replace("\n", "\r\n").encode("utf-8")


def section(raw: bytes, atom: str) -> bytes | None:
    return fetch_section(raw, parse_fetch_att(atom))


def client_view(item: bytes, data: bytes):
    """What a real IMAP client (imapclient's parser) reads from `* 1 FETCH (item data)`."""
    text = b"1 (" + item + b" " + data + b")"
    pieces: list = []
    position = 0
    while literal := LITERAL.search(text, position):
        end = literal.end() + int(literal.group(1))
        head = text[position:literal.start()] + literal.group()[:-2]
        pieces.append((head, text[literal.end():end]))
        position = end
    pieces.append(text[position:])
    return parse_fetch_response(pieces)[1][item]


def addresses(found) -> list[tuple]:
    """imapclient's addresses as (name, adl, mailbox, host) tuples."""
    return [(a.name, a.route, a.mailbox, a.host) for a in found]


PLAIN = crlf(
    "Date: Tue, 1 Jul 2003 10:52:37 +0200\n"
    "From: Terry Gray <gray@cac.washington.edu>\n"
    "Subject: IMAP4rev1 WG mtg summary and minutes\n"
    "To: imap@cac.washington.edu\n"
    "Cc: minutes@CNRI.Reston.VA.US, \"John Klensin\" <KLENSIN@MIT.EDU>\n"
    "Message-Id: <B27397-0100000@cac.washington.edu>\n"
    "\n"
    "Hello,\n"
    "the minutes.\n"
)

ALTERNATIVE = crlf(
    "From: a@example.org\n"
    "Content-Type: multipart/alternative; boundary=\"alt\"\n"
    "\n"
    "This is a preamble.\n"
    "--alt\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "Gr=C3=BC=C3=9Fe\n"
    "--alt\n"
    "Content-Type: text/html; charset=\"utf-8\"\n"
    "\n"
    "<p>Gr\u00fc\u00dfe</p>\n"
    "--alt--\n"
    "epilogue\n"
)

MIXED = crlf(
    "From: a@example.org\n"
    "Content-Type: multipart/mixed;\n"
    " boundary=\"=_mixed\"\n"
    "\n"
    "--=_mixed\n"
    "\n"
    "See the report.\n"
    "--=_mixed\n"
    "Content-Type: application/pdf; name=\"report.pdf\"\n"
    "Content-Disposition: attachment; filename=\"report.pdf\"; size=4\n"
    "Content-Transfer-Encoding: base64\n"
    "Content-Id: <r1@example.org>\n"
    "Content-Description: the report\n"
    "Content-Language: en, de\n"
    "Content-Location: http://example.org/report.pdf\n"
    "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\n"
    "\n"
    "JVBERg==\n"
    "--=_mixed\n"
    "Content-Type: text/plain; name*0*=utf-8''%E2%82%AC; name*1=\".txt\"\n"
    "Content-Disposition: inline; filename*=utf-8''%E2%82%AC.txt\n"
    "Content-Transfer-Encoding: base64\n"
    "\n"
    "4oKsIG5vdGU=\n"
    "--=_mixed--\n"
)

FORWARD = crlf(
    "From: b@example.org\n"
    "Subject: Fwd: hello\n"
    "Content-Type: multipart/mixed; boundary=b1\n"
    "\n"
    "--b1\n"
    "Content-Type: text/plain\n"
    "\n"
    "forwarded below\n"
    "--b1\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "From: c@example.org\n"
    "Subject: hello\n"
    "\n"
    "inner text\n"
    "--b1--\n"
)


def rfc3501_example() -> bytes:
    """The part layout of the example in RFC 3501 6.4.5, each leaf body naming its number."""

    def leaf(number: str, media: str = "text/plain") -> str:
        return f"Content-Type: {media}\n\npart {number}"

    def multipart(boundary: str, *parts: str, media: str = "mixed") -> str:
        inner = "".join(f"\n--{boundary}\n{part}" for part in parts)
        return f"Content-Type: multipart/{media}; boundary={boundary}\n\n{inner}\n--{boundary}--"

    def message(subject: str, body: str) -> str:
        return f"Content-Type: message/rfc822\n\nSubject: {subject}\n{body}"

    alternative = multipart("alt", leaf("4.2.2.1"), leaf("4.2.2.2", "text/richtext"),
                            media="alternative")
    four = multipart(
        "four",
        leaf("4.1", "image/gif"),
        message("4.2", multipart("fourtwo", leaf("4.2.1"), alternative)),
    )
    return crlf("Subject: top\n" + multipart(
        "top",
        leaf("1"),
        leaf("2", "application/octet-stream"),
        message("3", multipart("three", leaf("3.1"), leaf("3.2", "application/octet-stream"))),
        four,
    ) + "\n")


# ENVELOPE ---------------------------------------------------------------------------------------


def test_envelope_of_a_normal_message():
    """Fields in RFC 3501 order; sender and reply-to copy from; absent fields are NIL."""
    assert envelope(PLAIN) == (
        b'("Tue, 1 Jul 2003 10:52:37 +0200" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US") ("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )


def test_envelope_with_missing_headers():
    """No header at all gives ten NILs; Sender and Reply-To present but empty copy From."""
    assert envelope(b"just a body\r\n") == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    assert envelope(b"") == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    raw = crlf("From: a@b.c\nSender:\nReply-To: r@b.c\nIn-Reply-To: <x@y>\n\nbody\n")
    assert envelope(raw) == (
        b'(NIL NIL ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "r" "b.c")) '
        b'NIL NIL NIL "<x@y>" NIL)'
    )


def test_envelope_groups():
    """A group is `(NIL NIL name NIL)`, its members, then `(NIL NIL NIL NIL)`; an empty group
    is just the two markers (RFC 3501 7.4.2)."""
    raw = crlf(
        "To: Team: ann@x.org, \"Bob B.\" <bob@x.org>;, carol@y.org\n"
        "Cc: undisclosed-recipients:;\n\n"
    )
    fields = client_view(b"ENVELOPE", envelope(raw))
    assert addresses(fields.to) == [
        (None, None, b"Team", None),
        (None, None, b"ann", b"x.org"),
        (b"Bob B.", None, b"bob", b"x.org"),
        (None, None, None, None),
        (None, None, b"carol", b"y.org"),
    ]
    assert addresses(fields.cc) == [
        (None, None, b"undisclosed-recipients", None),
        (None, None, None, None),
    ]


def test_envelope_passes_encoded_words_and_8bit_through():
    """Encoded words are not decoded; 8-bit text goes out as a literal with the stored bytes."""
    raw = (
        b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus\r\n"
        b"From: =?iso-8859-1?q?J=F6rg?= <j@x.de>\r\n"
        b"To: \xc3\x9cber <u@x.de>\r\n\r\n"
    )
    result = envelope(raw)
    assert b'"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus"' in result
    assert b'(("=?iso-8859-1?q?J=F6rg?=" NIL "j" "x.de"))' in result
    assert b"(({5}\r\n\xc3\x9cber NIL \"u\" \"x.de\"))" in result


def test_envelope_address_forms():
    """Source routes go in adl, comments are dropped, quoted names are unquoted, a folded
    field is unfolded, `<>` and a word without `@` still give an address."""
    raw = crlf(
        'From: "Doe, \\"J\\"" (the boss) <@relay.x,@r2.y:john@example.org>\n'
        "To: John Q. Public\n <jqp@example.org>, <>, postmaster\n\n"
    )
    fields = client_view(b"ENVELOPE", envelope(raw))
    assert addresses(fields.from_)[0] == (b'Doe, "J"', b"@relay.x,@r2.y", b"john", b"example.org")
    assert addresses(fields.to) == [
        (b"John Q. Public", None, b"jqp", b"example.org"),
        (None, None, b"", b""),
        (None, None, b"postmaster", b""),
    ]


# BODYSTRUCTURE ----------------------------------------------------------------------------------


def test_bodystructure_text_plain():
    """A message without Content-Type is text/plain; charset=us-ascii, 7BIT, with lines."""
    assert body_structure(PLAIN) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 22 2 NIL NIL NIL NIL)'
    )
    assert body_structure(PLAIN, extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 22 2)'
    )


def test_bodystructure_multipart_alternative():
    """Parts between delimiters, preamble and epilogue left out, the CRLF before a delimiter
    not counted; the multipart's extension data carries its parameters."""
    assert body_structure(ALTERNATIVE) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 15 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 14 1 NIL NIL NIL NIL) '
        b'"ALTERNATIVE" ("BOUNDARY" "alt") NIL NIL NIL)'
    )
    assert body_structure(ALTERNATIVE, extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "QUOTED-PRINTABLE" 15 1)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 14 1) "ALTERNATIVE")'
    )


def test_bodystructure_mixed_with_attachment():
    """Id, description, encoding, MD5, disposition with its parameters, languages and location
    are all reported; RFC 2231 parameters are sent as written and decoded in `Part`."""
    assert body_structure(MIXED) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 15 1 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") "<r1@example.org>" "the report" "BASE64" 8 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("ATTACHMENT" ("FILENAME" "report.pdf" "SIZE" "4")) '
        b'("en" "de") "http://example.org/report.pdf")'
        b'("TEXT" "PLAIN" ("NAME*0*" "utf-8\'\'%E2%82%AC" "NAME*1" ".txt") NIL NIL "BASE64" 12 1 '
        b'NIL ("INLINE" ("FILENAME*" "utf-8\'\'%E2%82%AC.txt")) NIL NIL) '
        b'"MIXED" ("BOUNDARY" "=_mixed") NIL NIL NIL)'
    )
    third = parse(MIXED).children[2]
    assert third.params == {"name": "\u20ac.txt"}
    assert third.disposition_params == {"filename": "\u20ac.txt"}


def test_bodystructure_nested_message():
    """message/rfc822 carries the envelope, structure and line count of the inner message."""
    assert body_structure(FORWARD, extensible=False) == (
        b'(("TEXT" "PLAIN" NIL NIL NIL "7BIT" 15 1)'
        b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 49 '
        b'(NIL "hello" ((NIL NIL "c" "example.org")) ((NIL NIL "c" "example.org")) '
        b'((NIL NIL "c" "example.org")) NIL NIL NIL NIL NIL) '
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 1) 4) "MIXED")'
    )


def test_bodystructure_without_closing_boundary():
    """A multipart cut short: the last part runs to the end of the message."""
    raw = crlf("Content-Type: multipart/mixed; boundary=x\n\n--x\n\none\n--x\n\ntwo\nmore\n")
    assert body_structure(raw, extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 3 1)'
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 11 2) "MIXED")'
    )


def test_bodystructure_without_header_block():
    """A message that does not start with a header field is all body, text/plain."""
    raw = b"no header here\r\nsecond line\r\n"
    assert body_structure(raw, extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 29 2)'
    )
    assert parse(raw).body_start == 0
    assert body_structure(b"\r\nbody") == (
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 4 1 NIL NIL NIL NIL)'
    )


@pytest.mark.parametrize(
    "raw",
    [
        crlf("Content-Type: multipart/mixed\n\n--x\n\none\n--x--\n"),
        crlf("Content-Type: multipart/mixed; boundary=y\n\n--x\n\none\n--x--\n"),
        crlf("Content-Type: text\n\nbody\n"),
    ],
)
def test_unusable_mime_is_one_text_plain_part(raw):
    """No boundary, no delimiter found, or a Content-Type without subtype: one text part."""
    assert body_structure(raw, extensible=False).startswith(b'("TEXT" "PLAIN" ("CHARSET"')


def test_digest_parts_default_to_message():
    """In multipart/digest a part without Content-Type is message/rfc822 (RFC 2046 5.1.5)."""
    raw = crlf("Content-Type: multipart/digest; boundary=d\n\n--d\n\nSubject: s\n\nx\n--d--\n")
    part = parse(raw).children[0]
    assert (part.type, part.subtype, part.children[0].fields[0].name) == (
        "message", "rfc822", "subject"
    )


def test_nesting_is_limited():
    """Past MAX_DEPTH a multipart is read as text/plain (no unbounded recursion)."""
    depth = MAX_DEPTH + 20
    opening = b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n"
    raw = b"".join(opening % (i, i) for i in range(depth)) + b"\r\ndeep\r\n"
    tree = parse(raw)
    for _ in range(MAX_DEPTH):
        tree = tree.children[0]
    assert (tree.type, tree.children) == ("text", [])
    assert body_structure(raw).count(b'"MIXED"') == MAX_DEPTH


def test_bare_lf_messages_are_understood():
    """Bare LF line ends are taken as line ends for header and boundaries."""
    raw = b"Subject: lf\nContent-Type: multipart/mixed; boundary=z\n\n--z\n\nA\n--z--\n"
    assert fetch_section(raw, parse_fetch_att("BODY[1]")) == b"A"
    assert header_values(raw, "subject") == ["lf"]


@pytest.mark.parametrize("raw", [PLAIN, ALTERNATIVE, MIXED, FORWARD, rfc3501_example()])
def test_structures_are_read_by_a_real_client(raw):
    """imapclient parses every BODYSTRUCTURE, BODY and ENVELOPE we produce."""
    assert client_view(b"BODYSTRUCTURE", body_structure(raw))
    assert client_view(b"BODY", body_structure(raw, extensible=False))
    assert client_view(b"ENVELOPE", envelope(raw))


# Sections ---------------------------------------------------------------------------------------


def test_whole_header_and_text():
    """BODY[] is the message; HEADER ends with its blank line; HEADER + TEXT is the message."""
    assert section(MIXED, "BODY[]") == MIXED
    header, text = section(MIXED, "BODY[HEADER]"), section(MIXED, "BODY[TEXT]")
    assert header.endswith(b"\r\n\r\n") and header.startswith(b"From:")
    assert header + text == MIXED


def test_header_fields_are_exact():
    """HEADER.FIELDS keeps the listed fields as stored (folds, duplicates, order, case of
    the request ignored) and ends with a blank line; .NOT keeps the others."""
    raw = (
        b"Received: from a\r\n\tby b; Mon, 1 Jan 2024\r\n"
        b"Subject: hi\r\n"
        b"Received: from c\r\n  by d\r\n"
        b"X-Odd :  spaced\r\n"
        b"\r\nbody\r\n"
    )
    assert section(raw, "BODY[HEADER.FIELDS (received x-odd)]") == (
        b"Received: from a\r\n\tby b; Mon, 1 Jan 2024\r\n"
        b"Received: from c\r\n  by d\r\n"
        b"X-Odd :  spaced\r\n\r\n"
    )
    assert section(raw, "BODY[HEADER.FIELDS.NOT (Received X-Odd)]") == b"Subject: hi\r\n\r\n"
    assert section(raw, "BODY[HEADER.FIELDS (Cc)]") == b"\r\n"


def test_header_fields_of_an_unterminated_header():
    """A header that is the whole message still gives CRLF-terminated fields."""
    assert section(b"Subject: cut", "BODY[HEADER.FIELDS (SUBJECT)]") == b"Subject: cut\r\n\r\n"


def test_partials():
    """<origin.length> cuts the section; an origin past the end gives empty bytes."""
    assert section(PLAIN, "BODY.PEEK[]<0.4>") == b"Date"
    assert section(PLAIN, "BODY[TEXT]<8.100>") == b"the minutes.\r\n"
    assert section(PLAIN, "BODY[TEXT]<1000.10>") == b""


@pytest.mark.parametrize(
    "number",
    ["1", "2", "3.1", "3.2", "4.1", "4.2.1", "4.2.2.1", "4.2.2.2"],
)
def test_part_numbers_follow_rfc3501(number):
    """Part numbers index multiparts and go through message/rfc822 as in RFC 3501 6.4.5."""
    assert section(rfc3501_example(), f"BODY[{number}]") == f"part {number}".encode()


def test_message_part_sections():
    """For a message/rfc822 part, HEADER/TEXT are the inner message's, the bare part number is
    the inner message whole, MIME is the part's own header."""
    raw = rfc3501_example()
    assert section(raw, "BODY[3.HEADER]") == (
        b"Subject: 3\r\nContent-Type: multipart/mixed; boundary=three\r\n\r\n"
    )
    assert section(raw, "BODY[4.2.HEADER.FIELDS (SUBJECT)]") == b"Subject: 4.2\r\n\r\n"
    assert section(raw, "BODY[4.2.TEXT]").startswith(b"\r\n--fourtwo\r\n")
    assert section(raw, "BODY[3]").startswith(b"Subject: 3\r\n")
    assert section(raw, "BODY[4.1.MIME]") == b"Content-Type: image/gif\r\n\r\n"
    assert section(raw, "BODY[4.2.MIME]") == b"Content-Type: message/rfc822\r\n\r\n"


def test_missing_parts_are_none():
    """A part that does not exist, or HEADER/TEXT of a part that is not a message, is None."""
    raw = rfc3501_example()
    for atom in ("BODY[5]", "BODY[1.1]", "BODY[4.3]", "BODY[1.HEADER]", "BODY[4.TEXT]"):
        assert section(raw, atom) is None, atom


def test_single_part_message_has_part_one():
    """A non-multipart message's part 1 is its body, 1.MIME its header; there is no part 2."""
    assert section(PLAIN, "BODY[1]") == section(PLAIN, "BODY[TEXT]")
    assert section(PLAIN, "BODY[1.MIME]") == section(PLAIN, "BODY[HEADER]")
    assert section(PLAIN, "BODY[2]") is None


def test_nested_message_header_of_top_level_message_rfc822():
    """A message whose own type is message/rfc822: 1 is the inner message, 1.HEADER its header."""
    raw = crlf("Content-Type: message/rfc822\n\nSubject: in\n\ntext\n")
    assert section(raw, "BODY[1]") == b"Subject: in\r\n\r\ntext\r\n"
    assert section(raw, "BODY[1.HEADER]") == b"Subject: in\r\n\r\n"
    assert section(raw, "BODY[1.1]") == b"text\r\n"


def test_binary_decodes_content():
    """BINARY gives the decoded content (RFC 3516); an unknown encoding raises UnknownEncoding."""
    assert section(MIXED, "BINARY[2]") == b"%PDF"
    assert section(ALTERNATIVE, "BINARY.PEEK[1]<0.4>") == "Grü".encode()
    assert section(MIXED, "BINARY.SIZE[3]") == "€ note".encode()
    raw = crlf("Content-Transfer-Encoding: x-uuencode\n\nbegin\n")
    with pytest.raises(UnknownEncoding):
        section(raw, "BINARY[1]")


@pytest.mark.parametrize(
    ("atom", "expected"),
    [
        ("BODY[]", FetchAtt()),
        ("body.peek[1.2.header]<0.100>",
         FetchAtt(peek=True, part=(1, 2), specifier="HEADER", partial=(0, 100))),
        ("BODY[HEADER.FIELDS (From To)]",
         FetchAtt(specifier="HEADER.FIELDS", fields=("FROM", "TO"))),
        ('BODY[HEADER.FIELDS.NOT ("Received")]',
         FetchAtt(specifier="HEADER.FIELDS.NOT", fields=("RECEIVED",))),
        ("BODY[TEXT]", FetchAtt(specifier="TEXT")),
        ("BODY[2.MIME]", FetchAtt(part=(2,), specifier="MIME")),
        ("BINARY[1]", FetchAtt(name="BINARY", part=(1,))),
        ("BINARY.PEEK[]<5.5>", FetchAtt(name="BINARY", peek=True, partial=(5, 5))),
        ("BINARY.SIZE[3.1]", FetchAtt(name="BINARY.SIZE", part=(3, 1))),
    ],
)
def test_parse_fetch_att(atom, expected):
    """Section attributes parse into name, peek, part numbers, specifier, fields, partial."""
    assert parse_fetch_att(atom) == expected


@pytest.mark.parametrize(
    ("atom", "name"),
    [
        ("BODY.PEEK[HEADER.FIELDS (From To)]<0.100>", b"BODY[HEADER.FIELDS (FROM TO)]<0>"),
        ("BODY[1.2.TEXT]", b"BODY[1.2.TEXT]"),
        ("body[]<10.5>", b"BODY[]<10>"),
        ("BINARY.PEEK[1]", b"BINARY[1]"),
        ("BINARY.SIZE[2]", b"BINARY.SIZE[2]"),
    ],
)
def test_response_name(atom, name):
    """The response names the section without .PEEK and with only the partial's origin."""
    assert parse_fetch_att(atom).response_name() == name


@pytest.mark.parametrize(
    "atom",
    [
        "BODY", "BODY[", "BODY[FOO]", "BODY[0]", "BODY[01]", "BODY[1.]", "BODY[.TEXT]",
        "BODY[MIME]", "BODY[HEADER.FIELDS]", "BODY[HEADER.FIELDS ()]", "BODY[TEXT (From)]",
        "BODY[HEADER.FIELDS (From]", "BODY[]<1>", "BODY[]<0.0>", "BODY[]<a.1>",
        "BINARY[TEXT]", "BINARY.SIZE[1]<0.10>", "BODYX[]", "BODY[4294967296]",
    ],
)
def test_parse_fetch_att_rejects(atom):
    """Malformed attributes raise ValueError (the server answers BAD)."""
    with pytest.raises(ValueError):
        parse_fetch_att(atom)


# SEARCH -----------------------------------------------------------------------------------------


def test_header_values_are_decoded():
    """Every occurrence, unfolded, RFC 2047 decoded (space between encoded words dropped)."""
    raw = (
        b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n =?iso-8859-1?B?/GJlcg==?= alles\r\n"
        b"X-Tag: one\r\nX-Tag: two\r\n\r\n"
    )
    assert header_values(raw, "Subject") == ["Grü\u00dfe\u00fcber alles"]
    assert header_values(raw, "x-tag") == ["one", "two"]
    assert header_values(raw, "cc") == []
    assert "x-tag: two" in all_headers_text(raw).splitlines()


def test_body_text_decodes_text_parts_only():
    """Text parts are decoded from their transfer encoding and charset; others are skipped."""
    text = body_text(MIXED)
    assert "See the report." in text and "\u20ac note" in text and "JVBER" not in text
    assert "Grüße" in body_text(ALTERNATIVE)
    latin = b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\n\xe9t\xe9"
    assert body_text(latin) == "été"
    assert body_text(crlf("Content-Type: text/plain; charset=no-such\n\nok\n")) == "ok\r\n"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (PLAIN, date(2003, 7, 1)),
        (b"Date: Sun, 31 Dec 2023 23:30:00 -0800\r\n\r\n", date(2023, 12, 31)),
        (b"Date: not a date\r\n\r\n", None),
        (b"Subject: none\r\n\r\n", None),
    ],
)
def test_sent_date(raw, expected):
    """The Date: field's own calendar date (its zone ignored), None if absent or unreadable."""
    assert sent_date(raw) == expected


# Robustness -------------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/digest; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset=utf-7\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Disposition: attachment; filename*0*=x'y'%ZZ; filename*1=\"\r\n",
    b"From: a <b@c>, g: ;\r\n",
    b"To: \"unterminated <x@\r\n",
    b"Subject: =?x?q?=ZZ?= =?utf-8?b?!!?=\r\n",
    b"Date: 99 Foo 9\r\n",
    b"Content-Type: text/plain; n*" + b"9" * 5000 + b"*=x\r\n",
    b"--b\r\n", b"--b--\r\n", b"\r\n", b"\n", b"\r", b" folded\r\n",
    b"(((", b"<<@>>", b"=\r\n", b"\xff\xfe", b"X-Empty:\r\n", b":\r\n",
])
MESSAGES = st.one_of(
    st.binary(max_size=400), st.lists(FRAGMENTS | st.binary(max_size=8)).map(b"".join)
)
ATOMS = st.sampled_from([
    "BODY[]", "BODY[HEADER]", "BODY[TEXT]", "BODY[1]", "BODY[1.MIME]", "BODY[1.HEADER]",
    "BODY[2.1.TEXT]", "BODY[1.1.1]", "BODY[HEADER.FIELDS (FROM SUBJECT)]<2.9>",
    "BODY[1.HEADER.FIELDS.NOT (TO)]", "BINARY[1]", "BINARY[2.1]<0.5>",
])


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(MESSAGES, ATOMS)
def test_nothing_raises_on_arbitrary_bytes(raw, atom):
    """Whatever the bytes, parsing, ENVELOPE, BODYSTRUCTURE, sections and search text work,
    the structure stays readable by a client, and HEADER + TEXT is always the message."""
    tree = parse(raw)
    assert client_view(b"BODYSTRUCTURE", body_structure(raw, tree=tree)) is not None
    assert client_view(b"ENVELOPE", envelope(raw)) is not None
    try:
        fetch_section(raw, parse_fetch_att(atom), tree=tree)
    except UnknownEncoding:
        pass
    assert section(raw, "BODY[HEADER]") + section(raw, "BODY[TEXT]") == raw
    header_values(raw, "from")
    all_headers_text(raw)
    body_text(raw)
    sent_date(raw)


@given(st.text(alphabet=st.sampled_from('BODY.PEEK[]<>0123456789 ()"HEADER.FIELDS.NOT\\MIXT'))
       | st.text())
def test_fetch_att_parsing_only_raises_value_error(atom):
    """Any text parses into a FetchAtt or raises ValueError, and a parsed one names itself."""
    try:
        att = parse_fetch_att(atom)
    except ValueError:
        return
    assert att.response_name().startswith(att.name.encode())
