"""The outbound SMTP client (`cloudmail.smtp.client.deliver`) over real sockets: against the
Twisted test sink (tests/smtpsink.py) for every part of the dialogue, against our own MX server
and against Postfix's `smtp-sink` for the bytes of tricky messages.

The key regression: every line that starts with `.` is dot-stuffed — the first line, lines right
after a fake end of data, and lines that start exactly at a `CHUNK_SIZE` boundary of a streamed
file — so a message can never end early and smuggle a second one (outbound SMTP smuggling)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from cloudmail.smtp.client import CHUNK_SIZE, DeliveryResult, SmtpClientError, deliver
from tests.integration.test_smtp_inbound import book, inbox
from tests.smtpsink import SmtpSink
from tests.unit.test_smtp_client_encoder import crlf, stuffed


SENDER = "sender@remote.test"
MESSAGE = b"From: sender@remote.test\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
#: A second envelope and message, as a smuggler would put them after a fake end of data.
SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nsend money\r\n")


async def send(sink: SmtpSink, message: bytes | Path = MESSAGE,
               recipients: tuple[str, ...] = ("bob@example.com",), **options) -> DeliveryResult:
    """`deliver()` to the sink, no TLS and a 5 s timeout unless `options` say otherwise."""
    options.setdefault("tls", "none")
    options.setdefault("timeout", 5.0)
    return await deliver("127.0.0.1", sink.port, helo="client.test", sender=SENDER,
                         recipients=list(recipients), message=message, **options)


async def fails(sink: SmtpSink, **options) -> SmtpClientError:
    """The SmtpClientError that sending to the sink raises."""
    with pytest.raises(SmtpClientError) as caught:
        await send(sink, **options)
    return caught.value


async def said_quit(sink: SmtpSink) -> bool:
    """Whether the client ends with QUIT (sent after `deliver()` returned: wait a moment)."""
    for _ in range(100):
        if sink.transcript and sink.transcript[-1] == "QUIT":
            return True
        await deferLater(reactor, 0.02, lambda: None)
    return False


def filler(length: int) -> bytes:
    """`length` bytes of text that continue the current line and end with CRLF lines."""
    line = b"x" * 76 + b"\r\n"
    return b"x" * (length % len(line)) + line * (length // len(line))


def boundary_message() -> bytes:
    """A message of five `CHUNK_SIZE` pieces whose every piece starts a line with `.`: the first
    line; a fake end of data and a smuggled envelope; a CRLF cut between two pieces before a
    lone `.`; a bare LF before a piece starting with `.`; a `..` line; and the last line a lone
    `.` without a line end."""
    at_boundaries = [
        (b"", b".first line\r\n"),
        (b"end of a line\r\n", b".\r\n" + SMUGGLED),
        (b"cut CRLF\r", b"\n.\r\n" + SMUGGLED),
        (b"bare LF\n", b".\n" + SMUGGLED.replace(b"\r\n", b"\n")),
        (b"end\r\n", b"..already doubled\r\n"),
    ]
    out = bytearray()
    for index, (before, after) in enumerate(at_boundaries):
        boundary = index * CHUNK_SIZE
        out += filler(boundary - len(before) - len(out)) + before
        assert len(out) == boundary
        out += after
    return bytes(out + filler(1000) + b"\r\n.")


#: Messages that only arrive intact if every leading `.` is stuffed and every line end is CRLF.
SMUGGLING = {
    "first line dot": b".first line\r\nSubject: x\r\n\r\nbody\r\n",
    "lone dot lines": b"Subject: x\r\n\r\none\r\n.\r\ntwo\r\n.\r\n",
    "CRLF.CRLF and envelope": b"Subject: x\r\n\r\nbody\r\n.\r\n" + SMUGGLED,
    "bare LF.LF and envelope": b"Subject: x\n\nbody\n.\n" + SMUGGLED.replace(b"\r\n", b"\n"),
    "bare CR.CR and envelope": b"Subject: x\r\rbody\r.\r" + SMUGGLED.replace(b"\r\n", b"\r"),
    "mixed fake ends": b"Subject: x\r\n\r\na\n.\r\nb\r.\nc\r\n.\n" + SMUGGLED + b".",
    "only a dot": b".",
    "dots at chunk boundaries": boundary_message(),
}


# --- the dialogue -------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_plain_delivery(smtp_sink):
    """One message, one recipient, no TLS: the sink gets the envelope, the HELO name, SIZE (the
    server offers it without a limit), and exactly the bytes; the result says 250 for the
    recipient and for the message."""
    sink = smtp_sink(size=0)
    result = await send(sink)
    [message] = sink.messages
    assert (message.sender, message.recipients, message.helo) == \
        (SENDER, ["bob@example.com"], "client.test")
    assert message.data == MESSAGE and message.raw == MESSAGE + b".\r\n"
    assert message.mail_params == [f"SIZE={len(MESSAGE)}"]
    assert message.tls is False and message.auth_user is None
    assert result.host == "127.0.0.1" and result.tls is None
    assert [(r.address, r.code, r.enhanced) for r in result.recipients] == \
        [("bob@example.com", 250, "2.1.5")]
    assert result.message.code == 250 and result.message.enhanced == "2.0.0"
    assert await said_quit(sink)


@pytest_twisted.ensureDeferred
async def test_per_recipient_results(smtp_sink):
    """A 550, a 250 and a 450 to RCPT are three results with their codes; the message goes to
    the accepted recipient only, and `outcomes` gives it the reply after DATA."""
    replies = {"gone@example.com": (550, "5.1.1 no such user"),
               "bob@example.com": (250, "2.1.5 OK"),
               "busy@example.com": (450, "4.2.1 mailbox busy")}
    sink = smtp_sink(rcpt_reply=replies.get, data_reply=lambda m: (250, "2.0.0 queued as X1"))
    result = await send(sink, recipients=tuple(replies))
    assert [(r.address, r.code, r.enhanced, r.text) for r in result.recipients] == [
        ("gone@example.com", 550, "5.1.1", "no such user"),
        ("bob@example.com", 250, "2.1.5", "OK"),
        ("busy@example.com", 450, "4.2.1", "mailbox busy")]
    assert [(r.permanent, r.accepted, r.transient) for r in result.recipients] == [
        (True, False, False), (False, True, False), (False, False, True)]
    assert sink.messages[0].recipients == ["bob@example.com"]
    assert [(o.code, o.text) for o in result.outcomes] == [
        (550, "no such user"), (250, "queued as X1"), (450, "mailbox busy")]


@pytest_twisted.ensureDeferred
async def test_pipelining_sends_the_envelope_in_one_group(smtp_sink):
    """With PIPELINING (RFC 2920) MAIL, every RCPT and DATA go out together without waiting for
    replies: the sink reads them in one network read, in order, before answering any."""
    sink = smtp_sink()
    await send(sink, recipients=("a@example.com", "b@example.com"))
    assert [f"MAIL FROM:<{SENDER}>", "RCPT TO:<a@example.com>",
            "RCPT TO:<b@example.com>", "DATA"] in sink.batches
    assert sink.messages[0].recipients == ["a@example.com", "b@example.com"]


@pytest_twisted.ensureDeferred
async def test_without_pipelining_each_command_waits_for_its_reply(smtp_sink):
    """Without PIPELINING every command goes alone, after the reply to the one before."""
    sink = smtp_sink(pipelining=False)
    await send(sink, recipients=("a@example.com", "b@example.com"))
    envelope = [batch for batch in sink.batches if batch[0].split(" ")[0] in ("MAIL", "RCPT",
                                                                             "DATA")]
    assert envelope == [[f"MAIL FROM:<{SENDER}>"],
                        ["RCPT TO:<a@example.com>"], ["RCPT TO:<b@example.com>"], ["DATA"]]
    assert len(sink.messages) == 1


@pytest.mark.parametrize("pipelining", [True, False])
@pytest_twisted.ensureDeferred
async def test_no_recipient_accepted_sends_no_data(smtp_sink, pipelining):
    """When every RCPT is refused no message is sent and the result has no message reply;
    without PIPELINING DATA is not even sent (with it, DATA is part of the group and gets
    554)."""
    sink = smtp_sink(pipelining=pipelining, rcpt_reply=lambda rcpt: (550, "5.1.1 unknown"))
    result = await send(sink, recipients=("a@example.com", "b@example.com"))
    assert result.message is None and [r.code for r in result.recipients] == [550, 550]
    assert ("DATA" in sink.transcript) is pipelining
    assert sink.messages == [] and await said_quit(sink)


@pytest_twisted.ensureDeferred
async def test_helo_when_ehlo_is_refused(smtp_sink):
    """EHLO answered 502 → HELO (RFC 5321 4.1.1.1), and then no extension is used (no SIZE
    though the sink would offer it to EHLO)."""
    sink = smtp_sink(ehlo=False, size=0)
    result = await send(sink)
    assert sink.transcript[:2] == ["EHLO client.test", "HELO client.test"]
    assert sink.messages[0].mail_params == [] and sink.messages[0].data == MESSAGE
    assert result.message.code == 250


@pytest.mark.parametrize("code, transient", [(451, True), (554, False)])
@pytest_twisted.ensureDeferred
async def test_reply_after_data_is_the_message_result(smtp_sink, code, transient):
    """A 451 or 554 after the final dot is the message's result (not an exception), and the
    outcome of every accepted recipient."""
    sink = smtp_sink(data_reply=lambda message: (code, f"{code // 100}.3.0 not now"))
    result = await send(sink, recipients=("a@example.com", "b@example.com"))
    assert (result.message.code, result.message.enhanced) == (code, f"{code // 100}.3.0")
    assert result.message.transient is transient
    assert [o.code for o in result.outcomes] == [code, code]
    assert len(sink.messages) == 1


# --- TLS and AUTH -------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_opportunistic_starttls(smtp_sink):
    """Opportunistic TLS takes STARTTLS when offered without checking the certificate, says EHLO
    again inside TLS, and reports the TLS version and cipher."""
    sink = smtp_sink(starttls=True)
    result = await send(sink, tls="opportunistic")
    assert result.tls is not None and result.tls.startswith("TLSv1.")
    assert sink.messages[0].tls is True and sink.messages[0].data == MESSAGE
    assert sink.transcript[:3] == ["EHLO client.test", "STARTTLS", "EHLO client.test"]


@pytest_twisted.ensureDeferred
async def test_opportunistic_without_starttls_stays_plain(smtp_sink):
    """Opportunistic TLS, but the server offers no STARTTLS: the message goes in plaintext."""
    sink = smtp_sink()
    result = await send(sink, tls="opportunistic")
    assert result.tls is None and sink.messages[0].tls is False


@pytest_twisted.ensureDeferred
async def test_required_tls_verifies_the_certificate(smtp_sink):
    """Required TLS with a context trusting the test CA delivers inside TLS; with the default
    context (the system's roots) the test certificate is refused: a transient error, and no
    MAIL is ever sent."""
    sink = smtp_sink(starttls=True)
    result = await send(sink, tls="required", tls_context=sink.client_tls())
    assert result.tls is not None and sink.messages[0].tls is True
    error = await fails(sink, tls="required")
    assert error.transient and "TLS" in str(error)
    assert len(sink.messages) == 1 and sink.transcript.count("STARTTLS") == 2


@pytest_twisted.ensureDeferred
async def test_required_tls_not_offered(smtp_sink):
    """Required TLS and no STARTTLS offered: SmtpClientError, transient, before any MAIL."""
    sink = smtp_sink()
    error = await fails(sink, tls="required")
    assert error.transient and error.command == "EHLO" and "STARTTLS" in error.text
    assert not any(line.startswith("MAIL") for line in sink.transcript)


@pytest_twisted.ensureDeferred
async def test_implicit_tls(smtp_sink):
    """Implicit TLS (port 465 style): TLS from the first byte, certificate verified."""
    sink = smtp_sink(implicit_tls=True)
    result = await send(sink, tls="implicit", tls_context=sink.client_tls())
    assert result.tls is not None and result.tls.startswith("TLSv1.")
    assert sink.messages[0].tls is True and sink.transcript[0] == "EHLO client.test"


@pytest.mark.parametrize("mechanisms, first", [(("PLAIN", "LOGIN"), "AUTH PLAIN "),
                                               (("LOGIN",), "AUTH LOGIN")])
@pytest_twisted.ensureDeferred
async def test_auth(smtp_sink, mechanisms, first):
    """AUTH inside STARTTLS: PLAIN with an initial response when offered, else LOGIN; the
    message is sent as the authenticated user."""
    sink = smtp_sink(starttls=True, users={"alice": "s3cret"}, auth_mechanisms=mechanisms)
    result = await send(sink, tls="opportunistic", auth=("alice", "s3cret"))
    assert result.message.code == 250 and sink.messages[0].auth_user == "alice"
    assert [line for line in sink.transcript if line.startswith("AUTH")] == \
        [first + ("AGFsaWNlAHMzY3JldA==" if first == "AUTH PLAIN " else "")]


@pytest.mark.parametrize("mechanisms", [("PLAIN",), ("LOGIN",)])
@pytest_twisted.ensureDeferred
async def test_auth_wrong_password(smtp_sink, mechanisms):
    """A wrong password (535) is a transient SmtpClientError: our configuration, not the
    message, is wrong; nothing is sent."""
    sink = smtp_sink(starttls=True, users={"alice": "s3cret"}, auth_mechanisms=mechanisms)
    error = await fails(sink, tls="opportunistic", auth=("alice", "wrong"))
    assert (error.code, error.enhanced, error.transient, error.command) == \
        (535, "5.7.8", True, "AUTH")
    assert sink.messages == []


@pytest_twisted.ensureDeferred
async def test_no_credentials_without_tls(smtp_sink):
    """A server offering AUTH in plaintext does not get the credentials: a transient error, and
    the sink never sees an AUTH command."""
    sink = smtp_sink(users={"alice": "s3cret"}, auth_without_tls=True)
    error = await fails(sink, auth=("alice", "s3cret"))
    assert error.transient and error.command == "AUTH"
    assert not any(line.startswith("AUTH") for line in sink.transcript)


# --- MAIL parameters ----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_size_over_the_servers_limit(smtp_sink):
    """A message bigger than the server's SIZE is a permanent 5.3.4 error before MAIL; one
    within it is sent with SIZE= (RFC 1870); without SIZE offered, no SIZE= is sent."""
    sink = smtp_sink(size=len(MESSAGE))
    await send(sink)
    assert sink.messages[0].mail_params == [f"SIZE={len(MESSAGE)}"]
    with pytest.raises(SmtpClientError) as caught:
        await send(sink, message=MESSAGE + b"x")
    error = caught.value
    assert (error.enhanced, error.transient, error.command) == ("5.3.4", False, "MAIL")
    assert sum(line.startswith("MAIL") for line in sink.transcript) == 1
    sink = smtp_sink()
    await send(sink, message=MESSAGE * 100)
    assert sink.messages[0].mail_params == []


@pytest.mark.parametrize("body, offered, params", [
    (b"plain ASCII\r\n", True, []),
    (b"caf\xc3\xa9\r\n", True, ["BODY=8BITMIME"]),
    (b"caf\xc3\xa9\r\n", False, []),
])
@pytest_twisted.ensureDeferred
async def test_8bitmime(smtp_sink, body, offered, params):
    """BODY=8BITMIME (RFC 6152) goes with 8-bit data when the server offers it, never with
    ASCII data; the bytes arrive unchanged either way."""
    sink = smtp_sink(eightbitmime=offered)
    await send(sink, message=body)
    assert sink.messages[0].mail_params == params
    assert sink.messages[0].data == body


@pytest_twisted.ensureDeferred
async def test_smtputf8(smtp_sink):
    """A non-ASCII address needs SMTPUTF8 (RFC 6531): sent with the parameter when offered; a
    permanent 5.6.7 error, before any MAIL, when not."""
    sink = smtp_sink()
    await send(sink, recipients=("jörg@example.com",))
    assert "SMTPUTF8" in sink.messages[0].mail_params
    assert sink.messages[0].recipients == ["jörg@example.com"]
    sink = smtp_sink(smtputf8=False)
    error = await fails(sink, recipients=("jörg@example.com",))
    assert (error.enhanced, error.transient) == ("5.6.7", False)
    assert not any(line.startswith("MAIL") for line in sink.transcript)


@pytest_twisted.ensureDeferred
async def test_address_that_would_break_a_command(smtp_sink):
    """An address with `>` or a line end is a ValueError before connecting."""
    sink = smtp_sink()
    for recipient in ("a>b@example.com", "a@example.com\r\nRCPT TO:<x@y>"):
        with pytest.raises(ValueError):
            await send(sink, recipients=(recipient,))
    assert sink.connections == 0


# --- failures of the connection -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_greeting_421(smtp_sink):
    """A 421 greeting is a transient error; the next connection is greeted and delivers."""
    sink = smtp_sink(refuse_connections=1)
    error = await fails(sink)
    assert (error.code, error.transient, error.command) == (421, True, "greeting")
    await send(sink)
    assert sink.connections == 2 and len(sink.messages) == 1


@pytest_twisted.ensureDeferred
async def test_greeting_554_is_permanent(smtp_sink):
    """A 554 greeting (RFC 5321 3.1: no service) is a permanent error."""
    sink = smtp_sink(greeting_reply=(554, "no SMTP service here"))
    error = await fails(sink)
    assert (error.code, error.transient) == (554, False)


@pytest_twisted.ensureDeferred
async def test_connection_refused():
    """Nothing listening on the port: a transient error from connecting."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SmtpClientError) as caught:
        await deliver("127.0.0.1", port, helo="client.test", sender=SENDER,
                      recipients=["bob@example.com"], message=MESSAGE, tls="none", timeout=5)
    assert caught.value.transient and caught.value.command == "connect"


@pytest_twisted.ensureDeferred
async def test_server_that_never_answers(smtp_sink):
    """No greeting: after `timeout` the client gives up with a transient timeout error."""
    sink = smtp_sink(greeting_reply=None)
    started = time.monotonic()
    error = await fails(sink, timeout=0.5)
    assert error.transient and error.code is None and "timed out" in error.text
    assert 0.4 < time.monotonic() - started < 3


@pytest_twisted.ensureDeferred
async def test_no_reply_after_data_waits_twice_the_timeout(smtp_sink):
    """No reply after the final dot: a timeout error, but only after twice the timeout (RFC 5321
    4.5.3.2.6), the message having arrived."""
    sink = smtp_sink(data_reply=lambda message: None)
    started = time.monotonic()
    error = await fails(sink, timeout=0.5)
    assert error.transient and "end of data" in error.text
    assert 0.9 < time.monotonic() - started < 4
    assert len(sink.messages) == 1


@pytest_twisted.ensureDeferred
async def test_result_does_not_wait_for_the_quit_reply(smtp_sink, monkeypatch):
    """Regression: the result came only after QUIT's reply, so a server silent after its 250
    held the outcome back for the whole timeout, and a queue stopped meanwhile recorded a
    delivered message as deferred (and sent it again). The 250 after the data is the result."""
    from tests import smtpsink
    monkeypatch.setattr(smtpsink._SinkProtocol, "smtp_QUIT", lambda self, argument: None)
    sink = smtp_sink()
    started = time.monotonic()
    result = await send(sink, timeout=3)
    assert result.message.code == 250 and time.monotonic() - started < 1.5


@pytest_twisted.ensureDeferred
async def test_writes_wait_for_a_slow_server(smtp_sink, tmp_path):
    """A server that stops reading after 354: the client streams behind TCP flow control, so it
    times out waiting for the server to read (not for the reply after the whole message was
    buffered); a server that resumes in time gets the whole message intact."""
    path = tmp_path / "big.eml"
    with path.open("wb") as file:
        for _ in range(256):
            file.write(filler(CHUNK_SIZE))
    sink = smtp_sink(data_delay=2.0)
    error = await fails(sink, message=path, timeout=0.3)
    assert "timed out waiting for the server to read data" in error.text
    assert sink.messages == []
    sink = smtp_sink(data_delay=0.3)
    await send(sink, message=path, timeout=5)
    assert sink.messages[0].data == path.read_bytes()


# --- the bytes of the message -------------------------------------------------------------------

@pytest.mark.parametrize("source", ["bytes", "file"])
@pytest_twisted.ensureDeferred
async def test_big_message_streamed(smtp_sink, tmp_path, source):
    """A message over several `CHUNK_SIZE` pieces with a line starting with `.` at every piece
    boundary, from bytes or streamed from a file: the wire bytes are exactly the reference
    encoding, the received message exactly the original with CRLF line ends, SIZE its size."""
    original = boundary_message()
    assert len(original) > 4 * CHUNK_SIZE
    message: bytes | Path = original
    if source == "file":
        message = tmp_path / "message.eml"
        message.write_bytes(original)
    sink = smtp_sink(size=0)
    result = await send(sink, message=message)
    [received] = sink.messages
    assert received.raw == stuffed(original)
    assert received.data == crlf(original)
    assert received.mail_params == [f"SIZE={len(original)}"]
    assert result.message.code == 250


@pytest.mark.parametrize("payload", list(SMUGGLING.values()), ids=list(SMUGGLING))
@pytest_twisted.ensureDeferred
async def test_no_smuggling_through_the_sink(smtp_sink, tmp_path, payload):
    """THE REGRESSION TEST (outbound SMTP smuggling): messages with a leading `.`, lone `.`
    lines, fake ends of data (CRLF, bare LF, bare CR) followed by a second envelope, and `.` at
    chunk boundaries, sent from bytes and from a file, arrive as exactly one message each whose
    bytes equal the original with CRLF line ends; the smuggled envelope is never a command."""
    path = tmp_path / "message.eml"
    path.write_bytes(payload)
    sink = smtp_sink()
    for message in (payload, path):
        await send(sink, message=message)
    assert [m.data for m in sink.messages] == [crlf(payload)] * 2
    assert [m.raw for m in sink.messages] == [stuffed(payload)] * 2
    assert not any("evil@attacker.test" in line for line in sink.transcript)


@pytest.mark.parametrize("payload", list(SMUGGLING.values()), ids=list(SMUGGLING))
@pytest_twisted.ensureDeferred
async def test_no_smuggling_through_our_mx(start_mx, payload):
    """The same messages through our own MX server (`SmtpServer`) into a Maildir: bob gets
    exactly one message ending with the original bytes (CRLF line ends), and alice, the
    smuggled envelope's recipient, gets nothing."""
    container, port = start_mx()
    await book(container)
    result = await deliver("127.0.0.1", port, helo="client.remote.test", sender=SENDER,
                           recipients=["bob@example.com"], message=payload, tls="none",
                           timeout=10)
    assert result.message.code == 250, result
    [stored] = inbox(container, "bob")
    assert stored.endswith(b"\r\n" + crlf(payload))
    assert inbox(container, "alice") == []


@pytest_twisted.ensureDeferred
async def test_sink_wait_for(smtp_sink):
    """The sink's own `wait_for`, as the queue tests use it: it returns once the delivery running
    alongside has arrived, and raises TimeoutError when no more messages come."""
    sink = smtp_sink()
    delivery = defer.ensureDeferred(send(sink))
    [message] = await sink.wait_for(1)
    assert message.data == MESSAGE and message.reply[0] == 250
    await delivery
    with pytest.raises(TimeoutError):
        await sink.wait_for(2, timeout=0.2)


# --- Postfix's smtp-sink ------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_postfix_smtp_sink_gets_the_exact_bytes(postfix_sink):
    """Postfix's smtp-sink (its dump has LF line ends and an empty line at the end) gets exactly
    one message per delivery with the original's lines, the `.`-at-chunk-boundaries and
    smuggling message included, and the envelope."""
    port, folder = postfix_sink
    for name in ("CRLF.CRLF and envelope", "dots at chunk boundaries"):
        payload = SMUGGLING[name]
        for old in folder.iterdir():
            old.unlink()
        result = await deliver("127.0.0.1", port, helo="client.test", sender=SENDER,
                               recipients=["bob@example.com"], message=payload, tls="none",
                               timeout=10)
        assert result.message.code == 250, result
        for _ in range(100):  # the dump is closed as the reply goes out: allow for a delay
            dumps = list(folder.iterdir())
            if dumps and dumps[0].read_bytes().endswith(b"\n\n"):
                break
            await deferLater(reactor, 0.05)
        [dump] = dumps
        text = dump.read_bytes()
        assert f"X-Mail-Args: <{SENDER}>\n".encode() in text
        assert b"X-Rcpt-Args: <bob@example.com>\n" in text
        received = text.split(b"\nReceived: ", 1)[1].split(b"\n", 3)  # a 3-line header
        assert received[3] == crlf(payload).replace(b"\r\n", b"\n") + b"\n"
