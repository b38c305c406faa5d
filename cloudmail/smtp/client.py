"""Our outbound SMTP client (RFC 5321): one message to one host, with per-recipient results.

Why not `twisted.mail.smtp.SMTPClient`: it does not dot-stuff a `.` at the start of the message
or at the start of a chunk it reads from a file, so a message can carry its own end of data and a
second, smuggled message past us (outbound SMTP smuggling, see DESIGN.md). Here the connection
(`SmtpConnection`, a `LineReceiver`) only frames replies, bounds every wait with a timeout and
passes on the transport's flow control; `deliver()` is the dialogue, written as a coroutine:

- the greeting, EHLO (HELO when EHLO is refused with 5xx, RFC 5321 4.1.1.1), STARTTLS
  (RFC 3207) and EHLO again, AUTH PLAIN (RFC 4616) or LOGIN, only ever inside TLS (RFC 4954);
- MAIL FROM with SIZE (RFC 1870), BODY=8BITMIME (RFC 6152) and SMTPUTF8 (RFC 6531) as the
  message needs and the server offers, RCPT TO per recipient, all sent with DATA in one group
  when the server offers PIPELINING (RFC 2920);
- the data with CRLF line ends (RFC 5321 2.3.8) and every line starting with `.` dot-stuffed
  (RFC 5321 4.5.2), streamed in `CHUNK_SIZE` pieces behind the transport's flow control;
- every reply awaited with a timeout (RFC 5321 4.5.3.2), twice as long after the final dot.

What concerns the whole connection (greeting, EHLO, MAIL, TLS, AUTH, a lost connection, a
timeout) raises `SmtpClientError`; the replies to RCPT and to the message are results.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Literal, TypeVar

from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from cloudmail.smtp.replies import Reply

T = TypeVar("T")

#: Files are read and sent in pieces of this size; files up to SMALL_FILE are read at once.
CHUNK_SIZE = 64 * 1024
SMALL_FILE = 4 * CHUNK_SIZE
#: RFC 5321 4.5.3.1.5 allows 512 octets per reply line; be generous, not unbounded.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200
#: Seconds to wait for the reply to QUIT (in the background: the result is known by then).
QUIT_TIMEOUT = 30.0

TlsMode = Literal["none", "opportunistic", "required", "implicit"]
TlsContext = IOpenSSLClientConnectionCreator | Callable[[str], IOpenSSLClientConnectionCreator]
RunBlocking = Callable[[Callable[[], T]], "defer.Deferred[T]"]

_ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?= |$)")
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class RecipientResult:
    """The server's reply about one recipient (to RCPT) or about the message (after DATA)."""

    address: str
    code: int
    enhanced: str | None
    text: str

    @classmethod
    def from_reply(cls, address: str, reply: Reply) -> RecipientResult:
        return cls(address, reply.code, reply.enhanced, " ".join(reply.lines))

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one delivery: every recipient's RCPT reply, the reply after DATA (None if
    DATA was not reached: no recipient was accepted) and the TLS version and cipher used."""

    host: str
    recipients: list[RecipientResult]
    message: RecipientResult | None
    tls: str | None

    @property
    def outcomes(self) -> list[RecipientResult]:
        """Per recipient, what became of the message: its RCPT reply if refused, else the
        reply after DATA."""
        return [r if not r.accepted or self.message is None
                else RecipientResult(r.address, self.message.code, self.message.enhanced,
                                     self.message.text)
                for r in self.recipients]


class SmtpClientError(Exception):
    """The delivery failed as a whole. `code`/`enhanced` are the server's reply if there was one
    (None after a lost connection or a timeout); `command` says in reply to what."""

    def __init__(self, text: str, *, code: int | None = None, enhanced: str | None = None,
                 transient: bool | None = None, command: str = "") -> None:
        self.text = text
        self.code = code
        self.enhanced = enhanced
        self.transient = code is None or code < 500 if transient is None else transient
        self.command = command
        parts = (f"{command}:" if command else "", str(code or ""), enhanced or "", text)
        super().__init__(" ".join(part for part in parts if part))

    @classmethod
    def from_reply(cls, command: str, reply: Reply, transient: bool | None = None
                   ) -> SmtpClientError:
        return cls(" ".join(reply.lines), code=reply.code, enhanced=reply.enhanced,
                   transient=transient, command=command)


def parse_reply(lines: list[bytes]) -> Reply:
    """One reply from its lines (RFC 5321 4.2.1); the enhanced code (RFC 2034) is taken from the
    text when its class matches the reply's."""
    codes = {line[:3] for line in lines}
    code = lines[-1][:3]
    if len(codes) != 1 or len(code) != 3 or not code.isdigit() or code[:1] not in b"2345":
        raise ValueError(f"malformed reply {lines[-1][:80]!r}")
    texts = [line[4:].decode("utf-8", "replace") for line in lines]
    found = _ENHANCED.match(texts[0])
    enhanced = found.group(0) if found and found.group(1) == chr(code[0]) else None
    if enhanced:
        texts = [t.removeprefix(enhanced).lstrip(" ") for t in texts]
    return Reply(int(code), enhanced, tuple(texts))


class DataEncoder:
    """Message bytes, fed in pieces of any size, as DATA text (RFC 5321 4.5.2): every line end
    CRLF (a bare LF or CR becomes one, RFC 5321 2.3.8), and a `.` doubled at the start of every
    line — the message's first line and a line that starts exactly at a piece boundary included.
    `finish()` ends an unfinished last line and adds the terminating `.`."""

    def __init__(self) -> None:
        self._line_start = True
        self._held_cr = False

    def feed(self, data: bytes) -> bytes:
        if self._held_cr:
            data, self._held_cr = b"\r" + data, False
        if data.endswith(b"\r"):
            data, self._held_cr = data[:-1], True
        if not data:
            return b""
        if b"\r" not in data:
            text = data.replace(b"\n", b"\r\n")
        elif data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"):
            text = data
        else:
            text = _LINE_END.sub(b"\r\n", data)
        if self._line_start and text.startswith(b"."):
            text = b"." + text
        text = text.replace(b"\n.", b"\n..")
        self._line_start = text.endswith(b"\n")
        return text

    def finish(self) -> bytes:
        ending = b"\r\n" if self._held_cr or not self._line_start else b""
        self._line_start, self._held_cr = True, False
        return ending + b".\r\n"


@implementer(IHandshakeListener, IPushProducer)
class SmtpConnection(LineReceiver):
    """The client side of one connection: replies framed and queued in order, one waiter at a
    time, every wait bounded by `timeout`; the first failure (lost connection, timeout, garbage)
    is kept and raised to every later wait."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REPLY_LINE

    def __init__(self, clock: Any, timeout: float) -> None:
        self._clock = clock
        self.timeout = timeout
        self._lines: list[bytes] = []
        self._replies: deque[Reply] = deque()
        self._waiter: defer.Deferred[None] | None = None
        self._paused = False
        self._tls_started = False
        self._gone = False
        self.error: SmtpClientError | None = None
        self.tls: str | None = None

    def connectionMade(self) -> None:
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)  # a pipelined group or the final dot goes out at once

    def lineReceived(self, line: bytes) -> None:
        self._lines.append(line.removesuffix(b"\r"))
        if line[3:4] == b"-" and len(self._lines) < MAX_REPLY_LINES:
            return
        lines, self._lines = self._lines, []
        try:
            reply = parse_reply(lines)
        except ValueError as e:
            self._fail(SmtpClientError(str(e)))
            return
        self._replies.append(reply)
        self._wake()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(SmtpClientError(f"reply line longer than {self.MAX_LENGTH} octets"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self._gone = True
        if self.error is None:
            what = ("TLS handshake failed" if self._tls_started and self.tls is None
                    else "connection lost")
            self.error = SmtpClientError(f"{what}: {reason.getErrorMessage()}")
        self._wake()

    def handshakeCompleted(self) -> None:
        handle = self.transport.getHandle()
        self.tls = f"{handle.get_protocol_version_name()} {handle.get_cipher_name()}"
        self._wake()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._paused = False

    @property
    def lost(self) -> bool:
        return self.error is not None

    def send(self, *commands: str) -> None:
        """Write command lines, all in one write (a pipelined group, RFC 2920 3.1)."""
        self.transport.write(b"".join(c.encode("utf-8") + b"\r\n" for c in commands))

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    async def reply(self, command: str, timeout: float | None = None) -> Reply:
        """The next reply (a reply that came before the connection was lost still counts)."""
        await self._until(lambda: bool(self._replies), f"the reply to {command}", timeout)
        return self._replies.popleft()

    async def drained(self) -> None:
        """Return once the transport takes more data, or the connection is gone."""
        if not self.lost:
            await self._until(lambda: not self._paused or self.lost, "the server to read data")

    async def start_tls(self, creator: IOpenSSLClientConnectionCreator | None = None) -> None:
        """Start TLS (with `creator`; None when the endpoint already wraps the connection in
        it) and wait for the handshake. Bytes the server sent in plaintext after its `220` are
        dropped, never read as replies inside TLS (RFC 3207 6)."""
        self._tls_started = True
        if creator is not None:
            self._replies.clear()
            self._lines = []
            self.clearLineBuffer()
            self.transport.startTLS(creator)
        await self._until(lambda: self.tls is not None, "the TLS handshake")

    def register_producer(self) -> None:
        self.transport.registerProducer(self, True)

    def unregister_producer(self) -> None:
        if not self.lost:
            self.transport.unregisterProducer()
        self._paused = False

    def abandon(self) -> None:
        """Say QUIT without waiting for the answer and close (after an error)."""
        if not self.lost:
            self.send("QUIT")
            self.transport.loseConnection()

    def close(self) -> None:
        if not self.lost:
            self.transport.loseConnection()

    async def _until(self, ready: Callable[[], bool], what: str,
                     timeout: float | None = None) -> None:
        while not ready():
            if self.error is not None:
                raise self.error
            self._waiter = defer.Deferred()
            timer: IDelayedCall = self._clock.callLater(
                timeout or self.timeout, self._fail,
                SmtpClientError(f"timed out waiting for {what}"))
            try:
                await self._waiter
            finally:
                if timer.active():
                    timer.cancel()

    def _fail(self, error: SmtpClientError) -> None:
        if self.error is None:
            self.error = error
        if not self._gone:
            self.transport.abortConnection()
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)


@implementer(IOpenSSLClientConnectionCreator)
class OpportunisticTls:
    """TLS that encrypts without authenticating the server (RFC 7435; RFC 3207 4.1 leaves the
    decision to the client): an MX's certificate is often self-signed or for another name, and
    refusing it would only push the message into plaintext. TLS 1.2 at least; SNI when the host
    is a name."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_verify(SSL.VERIFY_NONE)
        connection = SSL.Connection(context, None)
        if not (isIPAddress(self.hostname) or isIPv6Address(self.hostname)):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection


def tls_creator(tls_context: TlsContext | None, host: str,
                verify: bool) -> IOpenSSLClientConnectionCreator:
    """The creator for `host`: the caller's (a creator, or a function of the host name), else
    one verifying against the system's roots (`verify`) or an opportunistic one."""
    if tls_context is None:
        return optionsForClientTLS(host) if verify else OpportunisticTls(host)
    if IOpenSSLClientConnectionCreator.providedBy(tls_context):
        return tls_context  # type: ignore[return-value]
    return tls_context(host)  # type: ignore[operator]


@dataclass(frozen=True)
class _Source:
    """The message to send: its size, whether it has 8-bit octets, and its bytes in chunks."""

    size: int
    eight_bit: bool
    chunks: Callable[[], AsyncIterator[bytes]]


async def _source(message: Path | bytes, run_blocking: RunBlocking[Any]) -> _Source:
    """The message as chunks: from memory, or from its file, which is read whole in one
    thread hop when it is small (most mail) and streamed in `CHUNK_SIZE` pieces otherwise."""
    if isinstance(message, Path):
        scanned = await run_blocking(partial(_scan_file, message))
        if isinstance(scanned, bytes):
            message = scanned
        else:
            size, eight_bit = scanned
            return _Source(size, eight_bit, partial(_from_file, message, run_blocking))
    data = message

    async def from_memory() -> AsyncIterator[bytes]:
        for start in range(0, len(data), CHUNK_SIZE):
            yield data[start:start + CHUNK_SIZE]
    return _Source(len(data), not data.isascii(), from_memory)


async def _from_file(path: Path, run_blocking: RunBlocking[Any]) -> AsyncIterator[bytes]:
    file: BinaryIO = await run_blocking(partial(open, path, "rb"))
    try:
        while chunk := await run_blocking(partial(file.read, CHUNK_SIZE)):
            yield chunk
    finally:
        file.close()


def _scan_file(path: Path) -> bytes | tuple[int, bool]:
    """A small file's bytes; for a bigger one, its size and whether it holds 8-bit octets
    (runs in a thread)."""
    size, eight_bit = 0, False
    with open(path, "rb") as file:
        first = file.read(SMALL_FILE + 1)
        if len(first) <= SMALL_FILE:
            return first
        size, eight_bit = len(first), not first.isascii()
        while chunk := file.read(CHUNK_SIZE):
            size += len(chunk)
            eight_bit = eight_bit or not chunk.isascii()
    return size, eight_bit


def _check_text(what: str, value: str) -> None:
    """Refuse what would break a command line: control characters, and `<>` in a path."""
    if any(c < " " or c == "\x7f" for c in value) or (what != "helo" and ("<" in value
                                                                           or ">" in value)):
        raise ValueError(f"{what} {value!r} cannot be sent in an SMTP command")


class SmtpSession:
    """One connection, greeted, secured and logged in as asked: ready for transactions, one
    after another (RFC 5321 3.3), so that a queue of mail to one host pays for the connection,
    TLS and AUTH once. `opened` counts the transactions begun; `data_sent` says whether the
    last one got as far as the message (a broken connection before that has delivered
    nothing, so the message can go through another connection at once)."""

    def __init__(self, connection: SmtpConnection, host: str, helo: str, tls: TlsMode,
                 creator: Callable[[bool], IOpenSSLClientConnectionCreator],
                 auth: tuple[str, str] | None,
                 run_blocking: RunBlocking[Any]) -> None:
        self.connection = connection
        self.host = host
        self.helo = helo
        self.tls = tls
        self.creator = creator
        self.auth = auth
        self.run_blocking = run_blocking
        self.extensions: dict[str, str] = {}
        self.transactions = 0
        self.data_sent = False

    @property
    def usable(self) -> bool:
        """True while the connection is open."""
        return not self.connection.lost

    async def open(self) -> None:
        """The greeting, EHLO, STARTTLS and AUTH as configured."""
        if self.tls == "implicit":
            await self.connection.start_tls()
        reply = await self.connection.reply("greeting")
        if reply.code != 220:
            raise SmtpClientError.from_reply("greeting", reply)
        await self.hello()
        await self.secure()
        if self.auth is not None:
            await self.authenticate(*self.auth)

    async def send(self, sender: str, recipients: list[str],
                   message: Path | bytes) -> DeliveryResult:
        """One transaction: `message` from `sender` to `recipients`. Raises SmtpClientError
        when the connection fails or MAIL is refused, ValueError for an address that cannot go
        into a command."""
        if not recipients:
            raise ValueError("no recipients")
        for address in (sender, *recipients):
            _check_text("address", address)
        source = await _source(message, self.run_blocking)
        self.transactions += 1
        self.data_sent = False
        results, reply = await self.transaction(sender, recipients, source)
        return DeliveryResult(self.host, results, reply, self.connection.tls)

    async def hello(self) -> None:
        """RFC 5321 4.1.1.1: EHLO and its keywords; HELO (no extensions) if EHLO gets 5xx."""
        self.connection.send(f"EHLO {self.helo}")
        reply = await self.connection.reply("EHLO")
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params
            return
        if not reply.is_permanent:
            raise SmtpClientError.from_reply("EHLO", reply)
        self.connection.send(f"HELO {self.helo}")
        reply = await self.connection.reply("HELO")
        if reply.code != 250:
            raise SmtpClientError.from_reply("HELO", reply)
        self.extensions = {}

    async def secure(self) -> None:
        """RFC 3207: STARTTLS when offered (opportunistic) or required, then EHLO again."""
        if self.tls not in ("opportunistic", "required"):
            return
        if "STARTTLS" not in self.extensions:
            if self.tls == "required":
                raise SmtpClientError("TLS is required but STARTTLS is not offered",
                                      transient=True, command="EHLO")
            return
        self.connection.send("STARTTLS")
        reply = await self.connection.reply("STARTTLS")
        if reply.code != 220:
            if self.tls == "required":
                raise SmtpClientError.from_reply("STARTTLS", reply, transient=True)
            return
        await self.connection.start_tls(self.creator(self.tls == "required"))
        await self.hello()

    async def authenticate(self, user: str, password: str) -> None:
        """RFC 4954: AUTH PLAIN (RFC 4616), or LOGIN when PLAIN is not offered or not
        implemented (504); never outside TLS. A failure is transient: it is our configuration,
        not the message, that is wrong."""
        if self.connection.tls is None:
            raise SmtpClientError("refusing to send credentials without TLS", transient=True,
                                  command="AUTH")
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" not in mechanisms and "LOGIN" not in mechanisms:
            raise SmtpClientError("the server offers neither AUTH PLAIN nor AUTH LOGIN",
                                  transient=True, command="AUTH")
        reply = None
        if "PLAIN" in mechanisms:
            token = _b64(f"\0{user}\0{password}")
            self.connection.send(f"AUTH PLAIN {token}")
            reply = await self.connection.reply("AUTH")
        if "LOGIN" in mechanisms and (reply is None or reply.code == 504):
            reply = await self._login(user, password)
        assert reply is not None
        if reply.code != 235:
            raise SmtpClientError.from_reply("AUTH", reply, transient=True)

    async def _login(self, user: str, password: str) -> Reply:
        self.connection.send("AUTH LOGIN")
        reply = await self.connection.reply("AUTH")
        for answer in (user, password):
            if reply.code != 334:
                break
            self.connection.send(_b64(answer))
            reply = await self.connection.reply("AUTH")
        return reply

    def mail_command(self, sender: str, recipients: list[str], source: _Source) -> str:
        """MAIL FROM with the parameters the message needs and the server offers."""
        params = []
        if "SIZE" in self.extensions:
            limit = self.extensions["SIZE"].strip()
            if limit.isdigit() and 0 < int(limit) < source.size:
                raise SmtpClientError(
                    f"the message ({source.size} octets) is over the server's limit "
                    f"({limit})", enhanced="5.3.4", transient=False, command="MAIL")
            params.append(f"SIZE={source.size}")
        if source.eight_bit and "8BITMIME" in self.extensions:
            params.append("BODY=8BITMIME")
        if not (sender.isascii() and all(r.isascii() for r in recipients)):
            if "SMTPUTF8" not in self.extensions:
                raise SmtpClientError("non-ASCII address but the server offers no SMTPUTF8",
                                      enhanced="5.6.7", transient=False, command="MAIL")
            params.append("SMTPUTF8")
        return " ".join([f"MAIL FROM:<{sender}>", *params])

    async def transaction(self, sender: str, recipients: list[str], source: _Source
                          ) -> tuple[list[RecipientResult], RecipientResult | None]:
        """MAIL, RCPT per recipient and DATA: in one group with PIPELINING (RFC 2920 3.1), else
        one by one; the data only when a recipient was accepted. A transaction that ends
        without the data is reset (RSET), so the session can take the next one."""
        mail = self.mail_command(sender, recipients, source)
        rcpts = [f"RCPT TO:<{r}>" for r in recipients]
        reply = self.connection.reply
        data_reply: Reply | None = None
        if "PIPELINING" in self.extensions:
            self.connection.send(mail, *rcpts, "DATA")
            mail_reply = await reply("MAIL")
            rcpt_replies = [await reply("RCPT") for _ in rcpts]
            data_reply = await reply("DATA")
        else:
            self.connection.send(mail)
            mail_reply = await reply("MAIL")
            rcpt_replies = []
            if _positive(mail_reply):
                for command in rcpts:
                    self.connection.send(command)
                    rcpt_replies.append(await reply("RCPT"))
            if any(_positive(r) for r in rcpt_replies):
                self.connection.send("DATA")
                data_reply = await reply("DATA")
        results = [RecipientResult.from_reply(address, r)
                   for address, r in zip(recipients, rcpt_replies)]
        if not _positive(mail_reply) or not any(r.accepted for r in results):
            if data_reply is not None and data_reply.code == 354:
                await self._empty_data()  # RFC 2920 3.1: a 354 must be answered
            await self.reset()
            if not _positive(mail_reply):
                raise SmtpClientError.from_reply("MAIL", mail_reply)
            return results, None
        assert data_reply is not None
        if data_reply.code != 354:
            await self.reset()
            return results, RecipientResult.from_reply("", data_reply)
        self.data_sent = True
        final = await self.send_data(source)
        return results, RecipientResult.from_reply("", final)

    async def reset(self) -> None:
        """RSET (RFC 5321 4.1.1.5) after a transaction that did not complete; a failure only
        makes the session unusable."""
        if self.connection.lost:
            return
        self.connection.send("RSET")
        try:
            reply = await self.connection.reply("RSET")
        except SmtpClientError:
            return
        if reply.code != 250:
            self.connection.close()

    async def _empty_data(self) -> None:
        self.connection.write(b".\r\n")
        await self.connection.reply("DATA")

    async def send_data(self, source: _Source) -> Reply:
        """Stream the message dot-stuffed, waiting whenever the transport is full; the final
        reply may take long (RFC 5321 4.5.3.2.6: twice the timeout, to avoid duplicates)."""
        encoder = DataEncoder()
        self.connection.register_producer()
        try:
            async with aclosing(source.chunks()) as chunks:
                async for chunk in chunks:
                    if self.connection.lost:
                        break
                    self.connection.write(encoder.feed(chunk))
                    await self.connection.drained()
            self.connection.write(encoder.finish())
        finally:
            self.connection.unregister_producer()
        return await self.connection.reply("end of data", 2 * self.connection.timeout)

    async def quit(self) -> None:
        """RFC 5321 4.1.1.10, after the result is returned (the delivery is decided already:
        a slow or failed QUIT must not hold back or change it); then close."""
        try:
            if not self.connection.lost:
                self.connection.send("QUIT")
                await self.connection.reply("QUIT", min(self.connection.timeout, QUIT_TIMEOUT))
        except SmtpClientError:
            pass
        finally:
            self.connection.close()


def _positive(reply: Reply) -> bool:
    return 200 <= reply.code < 300


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


async def open_session(host: str, port: int, *, helo: str, tls: TlsMode = "opportunistic",
                       tls_context: TlsContext | None = None,
                       auth: tuple[str, str] | None = None, timeout: float = 300.0,
                       connect_timeout: float = 30.0, reactor: Any = None,
                       run_blocking: RunBlocking[Any] | None = None) -> SmtpSession:
    """Connect to `host`:`port` and get a session ready for `SmtpSession.send`.

    `tls`: "none"; "opportunistic" (STARTTLS when offered, not verified unless `tls_context`
    says so); "required" (STARTTLS or fail, verified against the system's roots unless
    `tls_context` says otherwise); "implicit" (TLS from the start, port 465, verified likewise).
    `tls_context` is a client connection creator, or a function of the host name returning one.
    `auth` is (user, password), sent only inside TLS. `run_blocking` runs file reads off the
    reactor (default: the reactor's thread pool). End a session with `quit()`.

    Raises `SmtpClientError` when the connection fails, `ValueError` for a HELO name that
    cannot go into a command.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor
        reactor = default_reactor
    _check_text("helo", helo)
    if run_blocking is None:
        run_blocking = partial(deferToThreadPool, reactor, reactor.getThreadPool())
    connection = await _connect(reactor, host, port, tls, tls_context, timeout, connect_timeout)
    session = SmtpSession(connection, host, helo, tls, partial(tls_creator, tls_context, host),
                          auth, run_blocking)
    try:
        await session.open()
    except BaseException:
        connection.abandon()
        connection.close()
        raise
    return session


async def deliver(host: str, port: int, *, helo: str, sender: str, recipients: list[str],
                  message: Path | bytes, **options: Any) -> DeliveryResult:
    """Deliver `message` (bytes, or a file streamed in chunks) from `sender` ("" for `<>`) to
    `recipients` at `host`:`port` over a session of its own (`options` as for
    `open_session`); QUIT is sent after the result is known."""
    if not recipients:
        raise ValueError("no recipients")
    for address in (sender, *recipients):
        _check_text("address", address)
    session = await open_session(host, port, helo=helo, **options)
    try:
        result = await session.send(sender, recipients, message)
    except BaseException:
        session.connection.abandon()
        session.connection.close()
        raise
    defer.ensureDeferred(session.quit())
    return result


class _OneConnection(Factory):
    """Builds the one protocol of a connection, without a log line per connection (Twisted's
    `connectProtocol` logs two: one queue delivery is one log line, not three)."""

    noisy = False

    def __init__(self, protocol: SmtpConnection) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> SmtpConnection:
        return self._protocol


async def _connect(reactor: Any, host: str, port: int, tls: TlsMode,
                   tls_context: TlsContext | None, timeout: float,
                   connect_timeout: float) -> SmtpConnection:
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if tls == "implicit":
        endpoint = wrapClientTLS(tls_creator(tls_context, host, verify=True), endpoint)
    connection = SmtpConnection(reactor, timeout)
    attempt = endpoint.connect(_OneConnection(connection))
    attempt.addTimeout(connect_timeout, reactor)
    try:
        await attempt
    except Exception as e:  # noqa: BLE001 -- refused, unreachable, DNS, timeout: all transient
        raise SmtpClientError(f"cannot connect to {host} port {port}: {e}", transient=True,
                              command="connect") from e
    return connection
