"""The hardened ESMTP server (`cloudmail.smtp.protocol`) on a real loopback socket.

The server listens on 127.0.0.1:0 with a fake backend that accepts recipients `@example.com`,
refuses the rest with `550 5.1.1` and records what reaches it. Clients run in threads: `smtplib`
for ordinary sessions, and a raw socket for the attack bytes (SMTP smuggling, STARTTLS injection,
long lines), so every reply is checked with its exact code and enhanced code.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory

from cloudmail.config import TlsConfig
from cloudmail.smtp import replies
from cloudmail.smtp.protocol import Envelope, Limits, MailParams, Session, SmtpFactory, SmtpServer
from cloudmail.smtp.replies import Reply
from cloudmail.smtp.spool import SpooledMessage
from cloudmail.tls import CertStore
from tests.pki import Pki

HOSTNAME = "mail.example.test"


# --- the fake backend ----------------------------------------------------------------------------

@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    session: Session
    params: MailParams


class FakeBackend:
    """Accepts any sender and `@example.com` recipients; records every call."""

    def __init__(self, delay: Callable[[str], float] = lambda address: 0.0,
                 refuse: Reply | None = None, fail_mail: bool = False) -> None:
        self.delay = delay
        self.refuse = refuse
        self.fail_mail = fail_mail
        self.senders: list[str] = []
        self.rcpts: list[str] = []
        self.messages: list[Received] = []

    def connection(self, session: Session) -> Reply | None:
        return self.refuse

    async def _pause(self, address: str) -> None:
        seconds = self.delay(address)
        if seconds:
            await task.deferLater(reactor, seconds, lambda: None)

    async def mail_from(self, session: Session, address: str, params: MailParams) -> Reply:
        await self._pause(address)
        if self.fail_mail:
            raise RuntimeError("backend broke")
        self.senders.append(address)
        return replies.SENDER_OK

    async def rcpt_to(self, session: Session, address: str) -> Reply:
        assert session.envelope is not None
        await self._pause(address)
        self.rcpts.append(address)
        if address.lower().endswith("@example.com"):
            return replies.RECIPIENT_OK
        return replies.NO_SUCH_USER

    def message(self, session: Session, envelope: Envelope,
                spooled: SpooledMessage) -> defer.Deferred[Reply]:
        assert spooled.size == len(spooled.read_bytes())
        self.messages.append(Received(envelope.sender, list(envelope.recipients),
                                      spooled.read_bytes(), session, envelope.params))
        return defer.succeed(replies.MESSAGE_ACCEPTED)


@dataclass
class Server:
    port: int
    backend: FakeBackend
    factory: SmtpFactory
    spool: Path


@pytest.fixture
def serve(tmp_path):
    """serve(backend=None, **factory_options) → a running Server; closed after the test."""
    ports: list[Any] = []

    def start(backend: FakeBackend | None = None, **options: Any) -> Server:
        backend = backend or FakeBackend()
        spool = tmp_path / "spool"
        spool.mkdir(exist_ok=True)
        factory = SmtpFactory(HOSTNAME, backend, spool, **options)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        return Server(port.getHost().port, backend, factory, spool)

    yield start
    for port in ports:
        port.stopListening()


@pytest.fixture(scope="module")
def pki():
    return Pki()


# --- the raw client (runs in a thread) -----------------------------------------------------------

class RawClient:
    """A socket speaking bytes; `reply()` reads one whole (possibly multi-line) reply."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout)
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        lines = []
        while True:
            while b"\r\n" not in self.pending:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return b"".join(lines) + self.pending
                self.pending += chunk
            line, _, self.pending = self.pending.partition(b"\r\n")
            lines.append(line + b"\r\n")
            if len(line) < 4 or line[3:4] == b" ":
                return b"".join(lines)

    def command(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()

    def at_eof(self) -> bool:
        return not self.pending and self.sock.recv(1) == b""

    def start_tls(self, cadata: str) -> None:
        context = ssl.create_default_context(cadata=cadata)
        self.sock = context.wrap_socket(self.sock, server_hostname=HOSTNAME)

    def close(self) -> None:
        self.sock.close()


def run_raw(port: int, script: Callable[[RawClient], Any], **options: Any) -> defer.Deferred:
    """Run `script(client)` in a thread on a fresh connection whose greeting was read."""
    def body():
        client = RawClient(port, **options)
        try:
            greeting = client.reply()
            assert greeting.startswith(b"220 " + HOSTNAME.encode()), greeting
            return script(client)
        finally:
            client.close()
    return deferToThread(body)


def code(reply: bytes) -> bytes:
    """`250 2.1.0` from a reply: the last line's code and enhanced code."""
    last = reply.rstrip(b"\r\n").split(b"\r\n")[-1]
    return b" ".join(last.split(b" ")[:2])


ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<alice@sender.test>\r\nRCPT TO:<bob@example.com>\r\n"


def open_transaction(client: RawClient) -> None:
    """EHLO, MAIL, RCPT and DATA, asserting each reply."""
    assert client.command(b"EHLO client.test\r\n").startswith(b"250-")
    assert code(client.command(b"MAIL FROM:<alice@sender.test>\r\n")) == b"250 2.1.0"
    assert code(client.command(b"RCPT TO:<bob@example.com>\r\n")) == b"250 2.1.5"
    assert client.command(b"DATA\r\n").startswith(b"354 ")


def smtp_client(port: int) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=5)


# --- EHLO and ordinary mail ----------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_ehlo_lists_the_extensions(serve):
    """EHLO answers with the hostname and SIZE (with the limit), 8BITMIME, PIPELINING,
    ENHANCEDSTATUSCODES and SMTPUTF8; without a TLS creator, no STARTTLS."""
    server = serve(limits=Limits(max_message_size=1234567))

    def script():
        with smtp_client(server.port) as client:
            code_, text = client.ehlo()
            return code_, text, client.esmtp_features

    code_, text, features = await deferToThread(script)
    assert code_ == 250
    assert text.startswith(HOSTNAME.encode())
    assert features["size"] == "1234567"
    for keyword in ("8bitmime", "pipelining", "enhancedstatuscodes", "smtputf8"):
        assert keyword in features
    assert "starttls" not in features


@pytest_twisted.ensureDeferred
async def test_message_is_received_byte_exact(serve):
    """A message sent with smtplib reaches the backend byte for byte (CRLF line ends, 8-bit
    text), with the envelope holding only the accepted recipients."""
    server = serve()
    message = ("From: alice@sender.test\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\n"
               "Grüße\r\nline two\r\n").encode()

    def script():
        with smtp_client(server.port) as client:
            return client.sendmail("alice@sender.test",
                                   ["bob@example.com", "nobody@elsewhere.test"], message,
                                   mail_options=["BODY=8BITMIME"])

    refused = await deferToThread(script)
    assert refused == {"nobody@elsewhere.test": (550, b"5.1.1 No such user here")}
    [received] = server.backend.messages
    assert received.data == message
    assert received.sender == "alice@sender.test"
    assert received.recipients == ["bob@example.com"]
    assert received.params.body == "8BITMIME"
    assert received.session.helo == "client.test"
    assert received.session.peer_ip == "127.0.0.1"
    assert list(server.spool.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_dot_stuffing_is_undone(serve):
    """RFC 5321 4.5.2: a leading dot of a data line is removed; a lone `.` inside a longer line
    or a dot later in a line stays."""
    server = serve()

    def script(client):
        open_transaction(client)
        return client.command(b"..one\r\n...two\r\n.x\r\na.b\r\n.\r\n")

    assert code(await run_raw(server.port, script)) == b"250 2.0.0"
    assert server.backend.messages[0].data == b".one\r\n..two\r\nx\r\na.b\r\n"


@pytest_twisted.ensureDeferred
async def test_null_sender_and_empty_message(serve):
    """`MAIL FROM:<>` is the null sender (address ""), and `.` right after 354 is an empty
    message."""
    server = serve()

    def script(client):
        client.command(b"EHLO c\r\n")
        assert code(client.command(b"MAIL FROM:<>\r\n")) == b"250 2.1.0"
        assert code(client.command(b"RCPT TO:<bob@example.com>\r\n")) == b"250 2.1.5"
        assert client.command(b"DATA\r\n").startswith(b"354")
        return client.command(b".\r\n")

    assert code(await run_raw(server.port, script)) == b"250 2.0.0"
    assert server.backend.messages[0].sender == ""
    assert server.backend.messages[0].data == b""


# --- SIZE ----------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_declared_size_over_the_limit_is_refused_at_mail(serve):
    """RFC 1870 6: MAIL FROM with SIZE= over the limit gets `552 5.3.4`; at the limit, 250."""
    server = serve(limits=Limits(max_message_size=1000))

    def script(client):
        client.command(b"EHLO c\r\n")
        over = client.command(b"MAIL FROM:<a@sender.test> SIZE=1001\r\n")
        at = client.command(b"MAIL FROM:<a@sender.test> SIZE=1000\r\n")
        return over, at

    over, at = await run_raw(server.port, script)
    assert code(over) == b"552 5.3.4"
    assert code(at) == b"250 2.1.0"


@pytest_twisted.ensureDeferred
async def test_actual_size_over_the_limit_is_refused_after_data(serve):
    """A message bigger than the limit is read to its end, refused with `552 5.3.4`, leaves no
    spool file, and the session goes on: the next message is accepted."""
    server = serve(limits=Limits(max_message_size=1000))

    def script(client):
        open_transaction(client)
        big = client.command((b"y" * 98 + b"\r\n") * 20 + b".\r\n")
        client.command(b"MAIL FROM:<a@sender.test>\r\n")
        client.command(b"RCPT TO:<bob@example.com>\r\n")
        client.command(b"DATA\r\n")
        small = client.command(b"small\r\n.\r\n")
        return big, small

    big, small = await run_raw(server.port, script)
    assert code(big) == b"552 5.3.4"
    assert code(small) == b"250 2.0.0"
    assert [m.data for m in server.backend.messages] == [b"small\r\n"]
    assert list(server.spool.iterdir()) == []


# --- SMTP smuggling and bare line ends -----------------------------------------------------------

SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nsend money\r\n")


@pytest.mark.parametrize("ending", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r.\n",
                                    b"\n\r.\r\n", b"\r\n\r.\r\n", b"\r\n.\r"],
                         ids=repr)
@pytest_twisted.ensureDeferred
async def test_smuggling_sequence_does_not_end_the_message(serve, ending):
    """A fake end of data (`\\n.\\n`, `\\n.\\r\\n`, `\\r.\\r\\n`, `\\r\\n.\\n`, …) followed by a
    second envelope ends nothing: everything up to the real CRLF.CRLF is one message, refused for
    its bare line ends with `554 5.6.0`; the backend never sees the smuggled envelope or any
    message, and the next reply is the one to QUIT."""
    server = serve()

    def script(client):
        open_transaction(client)
        client.send(b"Subject: one\r\n\r\nbody" + ending + SMUGGLED + b".\r\nQUIT\r\n")
        return client.reply(), client.reply()

    end, bye = await run_raw(server.port, script)
    assert code(end) == b"554 5.6.0"
    assert code(bye) == b"221 2.0.0"
    assert server.backend.messages == []
    assert server.backend.senders == ["alice@sender.test"]
    assert server.backend.rcpts == ["bob@example.com"]


@pytest.mark.parametrize("data", [b"one\ntwo\r\n.\r\n", b"one\rtwo\r\n.\r\n",
                                  b"end with bare cr\r\r\n.\r\n", b"\n.\r\n.\r\n"], ids=repr)
@pytest_twisted.ensureDeferred
async def test_bare_lf_or_cr_is_refused(serve, data):
    """RFC 5321 2.3.8: a bare LF or CR anywhere in the data refuses the message with
    `554 5.6.0` (never normalised silently); the session stays usable."""
    server = serve()

    def script(client):
        open_transaction(client)
        refused = client.command(data)
        return refused, client.command(b"NOOP\r\n")

    refused, noop = await run_raw(server.port, script)
    assert code(refused) == b"554 5.6.0"
    assert code(noop) == b"250 2.0.0"
    assert server.backend.messages == []
    assert list(server.spool.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_long_line_in_data_does_not_return_to_command_mode(serve):
    """A 20 KiB line inside DATA (Twisted's ESMTP falls back to command mode after 16 KiB) is
    data: the `RSET` and `MAIL FROM` after it are not executed; the message is refused at its
    real end with `500 5.5.2`, and that is the only reply."""
    server = serve()

    def script(client):
        open_transaction(client)
        client.send(b"x" * 20480 + b"\r\nRSET\r\nMAIL FROM:<evil@attacker.test>\r\n.\r\n")
        refused = client.reply()
        return refused, client.command(b"NOOP\r\n")

    refused, noop = await run_raw(server.port, script)
    assert code(refused) == b"500 5.5.2"
    assert code(noop) == b"250 2.0.0"
    assert server.backend.senders == ["alice@sender.test"]
    assert server.backend.messages == []


@pytest_twisted.ensureDeferred
async def test_long_lines_are_data_when_the_limit_allows_them(serve):
    """With a higher data line limit a 20 KiB line is accepted, and the command-looking lines
    after it are stored as message text, byte for byte."""
    server = serve(limits=Limits(max_data_line=100_000))
    body = b"x" * 20480 + b"\r\nRSET\r\nMAIL FROM:<evil@attacker.test>\r\n"

    def script(client):
        open_transaction(client)
        return client.command(body + b".\r\n")

    assert code(await run_raw(server.port, script)) == b"250 2.0.0"
    assert server.backend.messages[0].data == body
    assert server.backend.senders == ["alice@sender.test"]


@pytest_twisted.ensureDeferred
async def test_data_sent_byte_by_byte_ends_only_at_crlf_dot_crlf(serve):
    """Data arriving in one-byte writes is parsed the same: `\\r\\n.\\r\\n` split across reads
    ends the message, and the stored bytes are exact."""
    server = serve()
    message = b"Subject: slow\r\n\r\n.dot\r\nend\r\n"

    def script(client):
        open_transaction(client)
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in message + b".\r\n":
            client.send(bytes([byte]))
            time.sleep(0.001)
        return client.reply()

    assert code(await run_raw(server.port, script)) == b"250 2.0.0"
    assert server.backend.messages[0].data == b"Subject: slow\r\n\r\ndot\r\nend\r\n"


# --- pipelining ----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_pipelined_commands_with_a_slow_backend_are_answered_in_order(serve):
    """RFC 2920: MAIL, NOOP, RCPT ×3 and DATA sent in one write, with a backend that answers the
    first commands after a delay (Twisted #8126 breaks this), get their replies in order; only
    accepted recipients are in the envelope."""
    delays = {"alice@sender.test": 0.2, "bob@example.com": 0.15, "nobody@elsewhere.test": 0.05}
    server = serve(FakeBackend(delay=lambda address: delays.get(address, 0.0)))

    def script(client):
        client.command(b"EHLO client.test\r\n")
        client.send(b"MAIL FROM:<alice@sender.test>\r\nNOOP\r\nRCPT TO:<bob@example.com>\r\n"
                    b"RCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n")
        answers = [code(client.reply()) for _ in range(6)]
        answers.append(code(client.command(b"pipelined\r\n.\r\n")))
        return answers

    answers = await run_raw(server.port, script)
    assert answers == [b"250 2.1.0", b"250 2.0.0", b"250 2.1.5", b"550 5.1.1", b"250 2.1.5",
                       b"354 Start", b"250 2.0.0"]
    assert server.backend.messages[0].recipients == ["bob@example.com", "carol@example.com"]


@pytest_twisted.ensureDeferred
async def test_pipelined_data_after_only_refused_recipients_gets_554(serve):
    """RFC 2920 3.1: when every RCPT was refused, a pipelined DATA gets `554 5.5.1`, not 354."""
    server = serve()

    def script(client):
        client.command(b"EHLO c\r\n")
        client.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n")
        return [code(client.reply()) for _ in range(3)]

    assert await run_raw(server.port, script) == [b"250 2.1.0", b"550 5.1.1", b"554 5.5.1"]


@pytest_twisted.ensureDeferred
async def test_a_whole_session_in_one_write(serve):
    """A client that sends its whole session at once (EHLO to QUIT, message included) gets one
    reply per command, in order, and the message is stored."""
    server = serve(FakeBackend(delay=lambda address: 0.05))

    def script(client):
        client.send(ENVELOPE + b"DATA\r\nhello\r\n.\r\nQUIT\r\n")
        answers = [code(client.reply()) for _ in range(6)]
        return answers, client.at_eof()

    answers, eof = await run_raw(server.port, script)
    assert answers == [b"250 HELP", b"250 2.1.0", b"250 2.1.5", b"354 Start", b"250 2.0.0",
                       b"221 2.0.0"]
    assert eof
    assert server.backend.messages[0].data == b"hello\r\n"


# --- STARTTLS ------------------------------------------------------------------------------------

def cert_store(pki: Pki, tmp_path: Path) -> CertStore:
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = CertStore(TlsConfig(cert=files.cert, key=files.key), HOSTNAME, tmp_path / "data")
    store.load()
    return store


@pytest_twisted.ensureDeferred
async def test_starttls_with_smtplib(serve, pki, tmp_path):
    """STARTTLS is offered, smtplib upgrades (verifying the chain up to the test PKI root), the
    second EHLO no longer offers it, and the message arrives with the TLS version and cipher in the
    session."""
    server = serve(tls_creator=cert_store(pki, tmp_path).server_creator())

    def script():
        with smtp_client(server.port) as client:
            client.ehlo()
            offered = client.has_extn("starttls")
            context = ssl.create_default_context(cadata=pki.root_pem)
            context.check_hostname = False  # smtplib checks 127.0.0.1; the chain is verified
            client.starttls(context=context)
            client.ehlo()
            again = client.has_extn("starttls")
            client.sendmail("alice@sender.test", ["bob@example.com"], b"Subject: tls\r\n\r\nx\r\n")
            return offered, again

    offered, again = await deferToThread(script)
    assert (offered, again) == (True, False)
    [received] = server.backend.messages
    assert received.session.tls is True
    assert received.session.tls_version in ("TLSv1.2", "TLSv1.3")
    assert received.session.tls_cipher
    assert received.data == b"Subject: tls\r\n\r\nx\r\n"


@pytest_twisted.ensureDeferred
async def test_a_closed_tls_session_frees_its_connection_slot_at_once(serve, pki, tmp_path):
    """With one connection allowed per IP, a client that QUITs a STARTTLS session and connects
    again at once is never told 421 (the slot is freed when we close, not when TLS winds down)."""
    server = serve(tls_creator=cert_store(pki, tmp_path).server_creator(),
                   limits=Limits(max_connections_per_ip=1))

    def sessions() -> list[int]:
        greetings = []
        for _ in range(15):
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                greetings.append(client.ehlo()[0])
                context = ssl.create_default_context(cadata=pki.root_pem)
                context.check_hostname = False
                client.starttls(context=context)
                client.ehlo()
        return greetings

    assert await deferToThread(sessions) == [250] * 15


@pytest_twisted.ensureDeferred
async def test_plaintext_pipelined_after_starttls_is_discarded(serve, pki, tmp_path):
    """RFC 3207 6 (STARTTLS injection): commands sent in plaintext in the same write as
    STARTTLS are thrown away, not answered inside TLS; after the handshake the session is back
    before EHLO (MAIL gets 503) and the injected MAIL never reached the backend."""
    server = serve(tls_creator=cert_store(pki, tmp_path).server_creator())

    def script(client):
        client.command(b"EHLO client.test\r\n")
        ready = client.command(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<evil@attacker.test>\r\n")
        client.start_tls(pki.root_pem)
        no_helo = client.command(b"MAIL FROM:<alice@sender.test>\r\n")
        ehlo = client.command(b"EHLO client.test\r\n")
        noop = client.command(b"NOOP\r\n")
        return ready, no_helo, ehlo, noop

    ready, no_helo, ehlo, noop = await run_raw(server.port, script)
    assert code(ready) == b"220 2.0.0"
    assert code(no_helo) == b"503 5.5.1"
    assert ehlo.startswith(b"250-" + HOSTNAME.encode()) and b"STARTTLS" not in ehlo
    assert code(noop) == b"250 2.0.0"
    assert server.backend.senders == []


@pytest_twisted.ensureDeferred
async def test_starttls_without_certificates_or_twice(serve, pki, tmp_path):
    """STARTTLS is `502 5.5.1` where no TLS is configured; inside TLS a second STARTTLS is
    `503 5.5.1`."""
    plain = serve()
    tls = serve(tls_creator=cert_store(pki, tmp_path).server_creator())

    def not_offered(client):
        client.command(b"EHLO c\r\n")
        return client.command(b"STARTTLS\r\n")

    def twice(client):
        client.command(b"EHLO c\r\n")
        client.command(b"STARTTLS\r\n")
        client.start_tls(pki.root_pem)
        client.command(b"EHLO c\r\n")
        return client.command(b"STARTTLS\r\n")

    assert code(await run_raw(plain.port, not_offered)) == b"502 5.5.1"
    assert code(await run_raw(tls.port, twice)) == b"503 5.5.1"


@pytest_twisted.ensureDeferred
async def test_require_tls_refuses_mail_before_starttls(serve, pki, tmp_path):
    """With require_tls (submission), MAIL before STARTTLS gets `530 5.7.0`."""
    server = serve(tls_creator=cert_store(pki, tmp_path).server_creator(), require_tls=True)

    def script(client):
        client.command(b"EHLO c\r\n")
        return client.command(b"MAIL FROM:<a@sender.test>\r\n")

    assert code(await run_raw(server.port, script)) == b"530 5.7.0"


@pytest_twisted.ensureDeferred
async def test_implicit_tls_listener(serve, pki, tmp_path):
    """Wrapped in `TLSMemoryBIOFactory` (port 465), the session knows it is in TLS from the
    start: STARTTLS is not offered and the message carries the TLS version."""
    backend = FakeBackend()
    (tmp_path / "spool").mkdir()
    factory = SmtpFactory(HOSTNAME, backend, tmp_path / "spool")
    wrapped = TLSMemoryBIOFactory(cert_store(pki, tmp_path).server_creator(), False, factory)
    port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")

    def script():
        context = ssl.create_default_context(cadata=pki.root_pem)
        context.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", port.getHost().port, local_hostname="client.test",
                              context=context, timeout=5) as client:
            client.ehlo()
            offered = client.has_extn("starttls")
            client.sendmail("alice@sender.test", ["bob@example.com"], b"x\r\n")
            return offered

    try:
        assert await deferToThread(script) is False
    finally:
        await port.stopListening()
    assert backend.messages[0].session.tls_version in ("TLSv1.2", "TLSv1.3")


# --- the small commands --------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_noop_vrfy_help_rset_quit(serve):
    """NOOP is 250; VRFY is 252 2.5.0 whatever the address (no enumeration); HELP is 214; RSET
    clears the transaction (RCPT then needs MAIL); QUIT is 221 and closes."""
    server = serve()

    def script(client):
        answers = {"ehlo": client.command(b"EHLO c\r\n"),
                   "noop": client.command(b"NOOP\r\n"),
                   "vrfy known": client.command(b"VRFY bob@example.com\r\n"),
                   "vrfy unknown": client.command(b"VRFY nobody@example.com\r\n"),
                   "help": client.command(b"HELP\r\n"),
                   "mail": client.command(b"MAIL FROM:<a@sender.test>\r\n"),
                   "rset": client.command(b"RSET\r\n"),
                   "rcpt": client.command(b"RCPT TO:<bob@example.com>\r\n"),
                   "quit": client.command(b"QUIT\r\n")}
        return answers, client.at_eof()

    answers, eof = await run_raw(server.port, script)
    assert code(answers["noop"]) == b"250 2.0.0"
    assert code(answers["vrfy known"]) == code(answers["vrfy unknown"]) == b"252 2.5.0"
    assert answers["help"].startswith(b"214-2.0.0 ")
    assert code(answers["rset"]) == b"250 2.0.0"
    assert code(answers["rcpt"]) == b"503 5.5.1"
    assert code(answers["quit"]) == b"221 2.0.0"
    assert eof


@pytest_twisted.ensureDeferred
async def test_commands_out_of_sequence(serve):
    """MAIL before EHLO, RCPT before MAIL, DATA before RCPT and a second MAIL are all
    `503 5.5.1`; HELO works as a plain greeting."""
    server = serve()

    def script(client):
        return [code(client.command(line)) for line in (
            b"MAIL FROM:<a@sender.test>\r\n", b"HELO client.test\r\n",
            b"RCPT TO:<b@example.com>\r\n",
            b"DATA\r\n", b"MAIL FROM:<a@sender.test>\r\n", b"DATA\r\n",
            b"MAIL FROM:<a@sender.test>\r\n")]

    assert await run_raw(server.port, script) == [
        b"503 5.5.1", b"250 mail.example.test", b"503 5.5.1", b"503 5.5.1", b"250 2.1.0",
        b"503 5.5.1", b"503 5.5.1"]


@pytest.mark.parametrize("line, expected", [
    (b"MAIL FROM:alice@sender.test", b"501 5.1.7"),
    (b"MAIL FROM:<alice@@sender.test>", b"501 5.1.7"),
    (b"MAIL FROM:<alice@sender.test> FOO=bar", b"555 5.5.4"),
    (b"MAIL FROM:<alice@sender.test> SIZE=big", b"501 5.5.4"),
    (b"MAIL FROM:<alice@sender.test> BODY=BINARYMIME", b"504 5.5.4"),
    (b"MAIL FROM:<j\xc3\xb6rg@sender.test>", b"553 5.6.7"),
    (b"MAIL FROM:<j\xc3\xb6rg@sender.test> SMTPUTF8", b"250 2.1.0"),
    (b"MAIL FROM: <alice@sender.test>", b"250 2.1.0"),
    (b"MAIL FROM:<@relay.test:alice@sender.test>", b"250 2.1.0"),
    (b"MAIL FROM:<alice\xff@sender.test>", b"500 5.5.2"),
], ids=repr)
@pytest_twisted.ensureDeferred
async def test_mail_from_syntax(serve, line, expected):
    """MAIL FROM paths and parameters are checked before the backend sees them: bad syntax is
    501 (5.1.7 for the path), unknown parameters 555, a UTF-8 path needs SMTPUTF8 (553 5.6.7,
    RFC 6531 3.5), invalid UTF-8 is 500; a source route is accepted and dropped."""
    server = serve()

    def script(client):
        client.command(b"EHLO c\r\n")
        return client.command(line + b"\r\n")

    assert code(await run_raw(server.port, script)) == expected
    if expected.startswith(b"250"):
        assert server.backend.senders[0].endswith("@sender.test")
        assert not server.backend.senders[0].startswith("@")


@pytest_twisted.ensureDeferred
async def test_rcpt_syntax_and_postmaster(serve):
    """A bad forward path is `501 5.1.3`, a RCPT parameter `555 5.5.4`, and `<Postmaster>`
    reaches the backend as `Postmaster`."""
    server = serve()

    def script(client):
        client.command(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\n")
        client.reply()
        return [code(client.command(line)) for line in (
            b"RCPT TO:<bob>\r\n", b"RCPT TO:<bob@example.com> NOTIFY=NEVER\r\n",
            b"RCPT TO:<Postmaster>\r\n")]

    assert await run_raw(server.port, script) == [b"501 5.1.3", b"555 5.5.4", b"550 5.1.1"]
    assert server.backend.rcpts == ["Postmaster"]


@pytest_twisted.ensureDeferred
async def test_esmtp_parameters_need_ehlo(serve):
    """After a plain HELO, MAIL parameters are `555 5.5.4` (extensions need EHLO)."""
    server = serve()

    def script(client):
        client.command(b"HELO c\r\n")
        return client.command(b"MAIL FROM:<a@sender.test> SIZE=10\r\n")

    assert code(await run_raw(server.port, script)) == b"555 5.5.4"


@pytest_twisted.ensureDeferred
async def test_connection_lost_during_data_leaves_nothing(serve):
    """A client that disconnects in the middle of DATA leaves no message and no spool file."""
    server = serve()

    def script(client):
        open_transaction(client)
        client.send(b"Subject: half\r\n\r\nhalf a mess")

    await run_raw(server.port, script)
    for _ in range(100):
        if not server.factory.connections:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert server.factory.connections == {}
    assert server.backend.messages == []
    assert list(server.spool.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_early_talker_is_flagged_and_still_served_in_order(serve):
    """A client that talks before the greeting (RFC 5321 4.3.1) is marked `early_talker` for
    the policy, and its commands are answered after the greeting, in order."""
    sessions: list[Session] = []

    def connection(session):
        sessions.append(session)
        return task.deferLater(reactor, 0.2, lambda: None)

    slow = FakeBackend()
    slow.connection = connection
    server = serve(slow)

    def script():
        client = RawClient(server.port)
        try:
            client.send(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\n")
            return client.reply(), client.reply(), client.reply()
        finally:
            client.close()

    greeting, ehlo, mail = await deferToThread(script)
    assert greeting.startswith(b"220 ") and ehlo.startswith(b"250-")
    assert code(mail) == b"250 2.1.0"
    assert sessions[0].early_talker is True


# --- limits --------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_too_many_recipients(serve):
    """RFC 5321 4.5.3.1.10: beyond the recipient limit RCPT gets `452 4.5.3`; the message goes
    to the recipients accepted before."""
    server = serve(limits=Limits(max_recipients=2))

    def script(client):
        client.command(b"EHLO c\r\n")
        client.command(b"MAIL FROM:<a@sender.test>\r\n")
        answers = [code(client.command(b"RCPT TO:<r%d@example.com>\r\n" % i)) for i in range(3)]
        client.command(b"DATA\r\n")
        answers.append(code(client.command(b"x\r\n.\r\n")))
        return answers

    assert await run_raw(server.port, script) == [b"250 2.1.5", b"250 2.1.5", b"452 4.5.3",
                                                  b"250 2.0.0"]
    assert server.backend.messages[0].recipients == ["r0@example.com", "r1@example.com"]


@pytest_twisted.ensureDeferred
async def test_idle_timeout_closes_with_421(serve):
    """RFC 5321 4.5.3.2: a client silent past the idle timeout gets `421 4.4.2` and the
    connection is closed."""
    server = serve(limits=Limits(idle_timeout=0.3))

    def script(client):
        client.command(b"EHLO c\r\n")
        started = time.monotonic()
        reply = client.reply()
        return reply, time.monotonic() - started, client.at_eof()

    reply, waited, eof = await run_raw(server.port, script)
    assert code(reply) == b"421 4.4.2"
    assert 0.2 < waited < 3
    assert eof


@pytest_twisted.ensureDeferred
async def test_long_command_line_is_refused_without_dropping_the_session(serve):
    """A command line over the limit (RFC 5321 4.5.3.1.4) is `500 5.5.2`, whether it comes in
    one write or trickles in without a line end for a while; the session carries on."""
    server = serve()

    def script(client):
        client.command(b"EHLO c\r\n")
        one = client.command(b"NOOP " + b"x" * 2000 + b"\r\n")
        for _ in range(10):
            client.send(b"y" * 1000)
            time.sleep(0.01)
        two = client.command(b"\r\n")
        return one, two, client.command(b"NOOP\r\n")

    one, two, noop = await run_raw(server.port, script)
    assert code(one) == code(two) == b"500 5.5.2"
    assert code(noop) == b"250 2.0.0"


@pytest_twisted.ensureDeferred
async def test_unknown_and_unimplemented_commands(serve):
    """An unknown verb is `500 5.5.1`; RFC 5321 verbs we do not offer (EXPN, TURN) are
    `502 5.5.1`; a control character in a command is `500 5.5.2`; a non-ASCII verb that
    upper-cases to a real one (`ſTARTTLS`) is unknown."""
    server = serve()

    def script(client):
        return [code(client.command(line)) for line in (
            b"FROB\r\n", b"EXPN staff\r\n", b"TURN\r\n", b"NO\x00OP\r\n", b"\r\n",
            "\u017fTARTTLS\r\n".encode())]

    assert await run_raw(server.port, script) == [b"500 5.5.1", b"502 5.5.1", b"502 5.5.1",
                                                  b"500 5.5.2", b"500 5.5.1", b"500 5.5.1"]


@pytest_twisted.ensureDeferred
async def test_too_many_errors_disconnects(serve):
    """After more than `max_errors` error replies the server answers `421 4.7.0` and closes."""
    server = serve(limits=Limits(max_errors=3))

    def script(client):
        answers = [code(client.command(b"FROB\r\n")) for _ in range(4)]
        return answers, client.reply(), client.at_eof()

    answers, last, eof = await run_raw(server.port, script)
    assert answers == [b"500 5.5.1"] * 4
    assert code(last) == b"421 4.7.0"
    assert eof


@pytest_twisted.ensureDeferred
async def test_backend_failure_is_a_temporary_error(serve):
    """A backend that raises gets the client `451 4.3.0`, and the session stays usable."""
    server = serve(FakeBackend(fail_mail=True))

    def script(client):
        client.command(b"EHLO c\r\n")
        return (client.command(b"MAIL FROM:<a@sender.test>\r\n"),
                client.command(b"NOOP\r\n"))

    failed, noop = await run_raw(server.port, script)
    assert code(failed) == b"451 4.3.0"
    assert code(noop) == b"250 2.0.0"


@pytest_twisted.ensureDeferred
async def test_refused_connection_answers_503_until_quit(serve):
    """RFC 5321 3.1: a backend refusing the client with 554 gets it that greeting, 503 to every
    command, and 221 to QUIT."""
    server = serve(FakeBackend(refuse=Reply(554, None, "go away")))

    def script():
        client = RawClient(server.port)
        try:
            return (client.reply(), client.command(b"EHLO c\r\n"),
                    client.command(b"QUIT\r\n"))
        finally:
            client.close()

    greeting, ehlo, bye = await deferToThread(script)
    assert greeting == b"554 go away\r\n"
    assert code(ehlo) == b"503 5.5.1"
    assert code(bye) == b"221 2.0.0"


@pytest_twisted.ensureDeferred
async def test_connections_per_ip_are_limited(serve):
    """A connection beyond the per-IP limit is greeted with `421 4.7.0` and closed; once the
    others leave, a new one is served."""
    server = serve(limits=Limits(max_connections_per_ip=1))

    def script():
        first = RawClient(server.port)
        try:
            first.reply()
            second = RawClient(server.port)
            refused = second.reply()
            second.close()
        finally:
            first.close()
        time.sleep(0.1)
        third = RawClient(server.port)
        try:
            return refused, third.reply()
        finally:
            third.close()

    refused, served = await deferToThread(script)
    assert code(refused) == b"421 4.7.0"
    assert served.startswith(b"220 ")


@pytest_twisted.ensureDeferred
async def test_replies_are_not_held_back_by_nagle(tmp_path):
    """TCP_NODELAY is set, so a pipelined RCPT reply is not delayed behind a delayed ACK."""
    import socket as socket_module
    (tmp_path / "spool").mkdir()
    seen = []

    class Recording(SmtpServer):
        def connectionMade(self):
            super().connectionMade()
            seen.append(self.transport.getHandle().getsockopt(socket_module.IPPROTO_TCP,
                                                              socket_module.TCP_NODELAY))
    factory = SmtpFactory(HOSTNAME, FakeBackend(), tmp_path / "spool")
    factory.protocol = Recording
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        def connect() -> None:
            with socket_module.create_connection(("127.0.0.1", port.getHost().port)) as s:
                s.recv(1024)
        await deferToThread(connect)
        assert seen == [1]
    finally:
        await port.stopListening()
