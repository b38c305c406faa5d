"""`DataEncoder`, the outbound client's DATA framing: every line end becomes CRLF, every line that
starts with `.` is dot-stuffed (the first line and a line starting exactly at a piece boundary
included), and the output never depends on how the message was cut into pieces.

`crlf()` and `stuffed()` are the reference the integration tests (tests/integration/
test_smtp_client.py) compare received bytes with. At the end, `parse_reply`, the client's other
piece of framing."""

from __future__ import annotations

import random
import re

import pytest

from cloudmail.smtp.client import DataEncoder, parse_reply

_LINE_END = re.compile(rb"\r\n|\r|\n")


def crlf(message: bytes) -> bytes:
    """The message as it must arrive: every line end (CRLF, bare LF, bare CR) a CRLF, and a
    last line without one ended by one."""
    text = _LINE_END.sub(b"\r\n", message)
    return text if not text or text.endswith(b"\r\n") else text + b"\r\n"


def stuffed(message: bytes) -> bytes:
    """The DATA bytes that must go on the wire for `message`: `crlf()`, a `.` added to every
    line starting with `.`, and the terminating `.` line (RFC 5321 4.5.2)."""
    lines = crlf(message).split(b"\r\n")[:-1]
    return b"".join((b"." if line.startswith(b".") else b"") + line + b"\r\n"
                    for line in lines) + b".\r\n"


def encode(*pieces: bytes) -> bytes:
    encoder = DataEncoder()
    return b"".join(encoder.feed(piece) for piece in pieces) + encoder.finish()


#: Everything at once: a first line starting with `.`, lone-dot lines, a smuggled second
#: envelope after CRLF.CRLF, bare LF and bare CR ends around dots, a CR LF pair, `..` lines,
#: an empty line and a last line that is a lone `.` without a line end.
TRICKY = (b".first line\r\nSubject: x\r\n\r\none\r\n.\r\ntwo\r\n.\r\n"
          b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
          b"smuggled\r\n.\r\nbare lf\n.\nbare cr\r.\r..double\r\n\r\n\r\r\n\n\r..\r\n"
          b"end\r\n.")


@pytest.mark.parametrize("message, wire", [
    (b"", b".\r\n"),
    (b".", b"..\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b".a\r\nb\r\n", b"..a\r\nb\r\n.\r\n"),
    (b"a\r\n.\r\nMAIL FROM:<x@y>\r\n", b"a\r\n..\r\nMAIL FROM:<x@y>\r\n.\r\n"),
    (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\r.\rb\r", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a\n\r.\r\n", b"a\r\n\r\n..\r\n.\r\n"),
    (b"..\r\n...\r\n", b"...\r\n....\r\n.\r\n"),
    (b"a.b\r\n x.\r\n", b"a.b\r\n x.\r\n.\r\n"),
    (b"\r\n", b"\r\n.\r\n"),
    (b"\r", b"\r\n.\r\n"),
    (b"8 bit \xc3\xa9\x00\xff\r\n", b"8 bit \xc3\xa9\x00\xff\r\n.\r\n"),
], ids=repr)
def test_known_encodings(message, wire):
    """Each case gives exactly the expected wire bytes, and agrees with the reference
    `stuffed()`: CRLF line ends, leading dots doubled, a missing last line end added, and the
    terminating `.` line; 8-bit and NUL octets pass unchanged."""
    assert encode(message) == wire
    assert stuffed(message) == wire


def test_tricky_message_matches_the_reference():
    """The tricky message, fed at once, is exactly the reference encoding; un-stuffing it gives
    back the message with CRLF line ends, and the only lone `.` line is the last one."""
    wire = encode(TRICKY)
    assert wire == stuffed(TRICKY)
    lines = wire.split(b"\r\n")
    assert lines[-2:] == [b".", b""] and b"." not in lines[:-2]
    assert b"\r\n".join(line[1:] if line.startswith(b".") else line
                        for line in lines[:-2]) + b"\r\n" == crlf(TRICKY)


def test_every_split_point_gives_the_same_bytes():
    """Cut in two at every offset (so every CR/LF pair and every line-starting `.` falls on a
    piece boundary once), and cut into single bytes, the output equals the all-at-once one."""
    whole = encode(TRICKY)
    for cut in range(len(TRICKY) + 1):
        assert encode(TRICKY[:cut], TRICKY[cut:]) == whole, cut
    assert encode(*(TRICKY[i:i + 1] for i in range(len(TRICKY)))) == whole


def test_random_splits_give_the_same_bytes():
    """Random cuts (fixed seed, so reproducible), empty pieces included, over the tricky message
    and over random messages made of line ends, dots and letters: always the same output as
    feeding everything at once, which is always the reference encoding."""
    rng = random.Random(20240521)
    alphabet = [b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n."]
    messages = [TRICKY] + [b"".join(rng.choices(alphabet, k=rng.randrange(0, 60)))
                           for _ in range(300)]
    for message in messages:
        whole = encode(message)
        assert whole == stuffed(message), message
        for _ in range(20):
            cuts = sorted(rng.randrange(0, len(message) + 1) for _ in range(rng.randrange(1, 8)))
            pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)])]
            assert encode(*pieces) == whole, (message, pieces)


@pytest.mark.parametrize("pieces, wire", [
    ((b"a\r", b"\nb"), b"a\r\nb\r\n.\r\n"),
    ((b"a\r", b"\n.b"), b"a\r\n..b\r\n.\r\n"),
    ((b"a\r", b".b"), b"a\r\n..b\r\n.\r\n"),
    ((b"a\r", b"", b"\n", b"."), b"a\r\n..\r\n.\r\n"),
    ((b"a\r\n", b"."), b"a\r\n..\r\n.\r\n"),
    ((b"a\n", b".\n"), b"a\r\n..\r\n.\r\n"),
    ((b"a\r", b"\r", b"\n"), b"a\r\n\r\n.\r\n"),
    ((b"a\r",), b"a\r\n.\r\n"),
    ((b".", b".", b"\r\n"), b"...\r\n.\r\n"),
], ids=repr)
def test_line_ends_and_dots_across_pieces(pieces, wire):
    """A CR at the end of one piece and its LF (or not) at the start of the next make one CRLF
    (or a bare CR turned into CRLF), and a `.` that starts a piece after a line end is stuffed;
    a held CR is ended by `finish()`."""
    assert encode(*pieces) == wire


def test_encoder_is_reusable_after_finish():
    """`finish()` resets the state: the next message starts at a line start again."""
    encoder = DataEncoder()
    assert encoder.feed(b"a\r") + encoder.finish() == b"a\r\n.\r\n"
    assert encoder.feed(b".b") + encoder.finish() == b"..b\r\n.\r\n"


@pytest.mark.parametrize("lines, code, enhanced, text", [
    ([b"250 2.0.0 OK"], 250, "2.0.0", ("OK",)),
    ([b"250-mx.test hello", b"250-PIPELINING", b"250 SIZE 100"], 250, None,
     ("mx.test hello", "PIPELINING", "SIZE 100")),
    ([b"550 5.1.1 no such user"], 550, "5.1.1", ("no such user",)),
    ([b"451 5.1.1 class differs"], 451, None, ("5.1.1 class differs",)),
    ([b"220"], 220, None, ("",)),
])
def test_parse_reply(lines, code, enhanced, text):
    """A reply's code, its enhanced code (only when its class matches, RFC 2034) and its lines."""
    reply = parse_reply(lines)
    assert (reply.code, reply.enhanced, reply.lines) == (code, enhanced, text)


@pytest.mark.parametrize("lines", [[b"2"], [b"25"], [b"25 OK"], [b"", b"250 OK"], [b"abc"],
                                   [b"650 no"], [b"250-a", b"251 b"]], ids=repr)
def test_malformed_replies_are_refused(lines):
    """Not three digits of class 2-5, or different codes in one reply: ValueError (the
    connection fails), never a reply with a code such as 2 or 25 that is neither success nor
    failure (regression: `2` and `25` were taken for codes 2 and 25)."""
    with pytest.raises(ValueError):
        parse_reply(lines)
