"""`SmtpServer` driven in memory (`StringTransport`) with fuzzed byte streams: whatever a client
sends, the server never raises, every byte it writes is a well-formed reply line, and messages
only ever come from a real CRLF.CRLF."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from cloudmail.smtp import replies
from cloudmail.smtp.protocol import Limits, SmtpFactory

REPLY_LINE = re.compile(rb"\A[2-5][0-9]{2}[ -][\x20-\x7e]*\Z")


class SyncBackend:
    """Answers at once; accepts everything; counts messages."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def connection(self, session):
        return None

    def mail_from(self, session, address, params):
        return replies.SENDER_OK

    def rcpt_to(self, session, address):
        return replies.RECIPIENT_OK

    def message(self, session, envelope, spooled):
        self.messages.append(spooled.read_bytes())
        return replies.MESSAGE_ACCEPTED


def connect(tmp_path, **limits):
    backend = SyncBackend()
    (tmp_path / "spool").mkdir(exist_ok=True)
    factory = SmtpFactory("mx.test", backend, tmp_path / "spool", limits=Limits(**limits),
                          run_blocking=lambda f: defer.maybeDeferred(f))
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, backend


tokens = st.sampled_from([
    b"EHLO x\r\n", b"HELO x\r\n", b"MAIL FROM:<a@b.c>\r\n", b"MAIL FROM:<>\r\n",
    b"RCPT TO:<d@e.f>\r\n", b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n", b"HELP\r\n",
    b"STARTTLS\r\n", b".\r\n", b"\r\n.\r\n", b"\n.\n", b"\r.\r\n", b"\r", b"\n", b".", b"..",
    b"\xff\xfe", b"MAIL FROM:<\xc3\xa9@b.c> SMTPUTF8\r\n", b"x" * 600, b"SIZE=99999999999",
])
streams = st.lists(st.one_of(tokens, st.binary(max_size=40)), max_size=40)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(streams, st.integers(min_value=1, max_value=50))
def test_fuzzed_input_never_crashes_and_replies_are_well_formed(tmp_path, chunks, split):
    """Any byte stream, cut into reads of any size, gives only well-formed reply lines (the
    greeting first), never an exception, and no spool file is left behind."""
    protocol, transport, _ = connect(tmp_path, max_command_line=512, max_errors=1000)
    data = b"".join(chunks)
    for start in range(0, len(data), split):
        protocol.dataReceived(data[start:start + split])
    output = transport.value()
    assert output.startswith(b"220 mx.test")
    assert output.endswith(b"\r\n")
    for line in output[:-2].split(b"\r\n"):
        assert REPLY_LINE.match(line), line
    protocol.connectionLost(None)
    assert list((tmp_path / "spool").iterdir()) == []


def test_message_needs_crlf_dot_crlf(tmp_path):
    """In memory as on the wire: one message per real end of data, none for a fake one."""
    protocol, transport, backend = connect(tmp_path)
    protocol.dataReceived(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
                          b"one\n.\nMAIL FROM:<evil@x.y>\r\n.\r\n")
    assert backend.messages == []
    assert transport.value().endswith(b"554 5.6.0 Message contains a bare CR or LF "
                                      b"(RFC 5321 2.3.8)\r\n")
