"""Our hardened ESMTP server (RFC 5321) on Twisted's `LineReceiver`, and its backend seam.

Why not `twisted.mail.smtp.ESMTP`: it lets bare LF/CR into messages, drops back to command mode
after a 16 KiB line inside DATA, answers plaintext pipelined after STARTTLS inside TLS, breaks
pipelined clients when validation returns a Deferred (Twisted #8126) and lacks most extensions
(see DESIGN.md). This server reads bytes itself:

- Commands are CRLF- (or LF-) terminated lines of at most `max_command_line` octets (RFC 5321
  4.5.3.1.4 allows 512; extensions such as SIZE and SMTPUTF8 make 1000 a safe default); a longer
  one is swallowed to its end and answered `500 5.5.2`.
- Commands are handled strictly one at a time and in order (RFC 2920 3.1): while the backend's
  Deferred for one is pending, later bytes wait in the buffer — no reply can overtake another.
- After `354` the bytes go to `spool.DataSink`, which alone decides where the data ends (only
  CRLF.CRLF) and whether the message is refused (bare CR/LF, RFC 5321 2.3.8; long lines; size).
- STARTTLS (RFC 3207 4.2) throws away whatever the client sent after the command in plaintext and
  resets the session to its state before EHLO.

Policy lives behind `ISmtpBackend`; the server knows only the protocol and its limits.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, Union

from twisted.internet import defer
from twisted.internet.interfaces import ITCPTransport, IOpenSSLServerConnectionCreator, ISSLTransport
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from cloudmail.smtp import replies
from cloudmail.smtp.paths import PathError, parse_mail_argument, parse_rcpt_argument
from cloudmail.smtp.replies import Reply
from cloudmail.smtp.spool import MAX_LINE_LENGTH, DataSink, SpooledMessage

log = Logger()
#: Session ids only tell sessions apart in the logs; they are not secrets.
_session_ids = random.Random()

T = TypeVar("T")
#: What a backend method may return: a value, a Deferred of it, or an awaitable (coroutine).
Result = Union[T, "defer.Deferred[T]", Awaitable[T]]


@dataclass
class Session:
    """What is known about one SMTP connection, handed to every backend call."""

    id: str
    peer_ip: str
    peer_port: int = 0
    local_ip: str = ""
    local_port: int = 0
    #: The EHLO/HELO argument, None before it (and again after STARTTLS).
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    #: The client sent bytes before the greeting (RFC 5321 4.3.1 says it must wait): a spam sign.
    early_talker: bool = False
    #: The transaction in progress (after a successful MAIL), None between transactions.
    envelope: Envelope | None = None
    #: The mailbox address the client logged in as (submission's AUTH), None before.
    authenticated: str | None = None


@dataclass(frozen=True)
class MailParams:
    """The MAIL FROM parameters this server knows: SIZE (RFC 1870), BODY (RFC 6152) and
    SMTPUTF8 (RFC 6531)."""

    size: int | None = None
    body: str | None = None
    smtputf8: bool = False


@dataclass
class Envelope:
    """One mail transaction: the sender ("" for `<>`), the recipients the backend accepted, the
    declared parameters and, after DATA, the size of the message received. `notes` is the
    backend's: what it found at MAIL and RCPT and needs again at DATA (a recipient's route)."""

    sender: str
    params: MailParams = field(default_factory=MailParams)
    recipients: list[str] = field(default_factory=list)
    size: int = 0
    rcpt_attempts: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


class ISmtpBackend(Protocol):
    """The policy behind an SMTP listener. Every method may return a value, a Deferred or an
    awaitable; a failure becomes `451 4.3.0` (and is logged), never a dropped connection."""

    def connection(self, session: Session) -> Result[Reply | None]:
        """A client connected: None to greet it, or a reply to refuse it (a 421 closes the
        connection; a 554 keeps it open answering 503 to all but QUIT, RFC 5321 3.1)."""

    def mail_from(self, session: Session, address: str, params: MailParams) -> Result[Reply]:
        """MAIL FROM with a syntactically valid reverse path ("" for the null sender)."""

    def rcpt_to(self, session: Session, address: str) -> Result[Reply]:
        """RCPT TO with a valid forward path (`Postmaster` for `<Postmaster>`), during the
        transaction `session.envelope`; a 2xx reply adds it to the envelope's recipients."""

    def message(self, session: Session, envelope: Envelope,
                spooled: SpooledMessage) -> Result[Reply]:
        """The message was received whole; answer with the final reply (250 only once it is
        durably taken care of: the spooled copy is not). It is discarded after this fires."""


@dataclass(frozen=True)
class Limits:
    """The server's limits; the defaults follow RFC 5321 4.5.3."""

    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_command_line: int = 1000
    max_data_line: int = MAX_LINE_LENGTH
    idle_timeout: float = 300.0
    max_errors: int = 20
    max_connections_per_ip: int = 20
    #: Pause reading when this much pipelined input waits behind a pending command.
    max_buffered: int = 256 * 1024


#: Commands RFC 5321 names that this server does not offer: 502, not 500 (RFC 5321 4.2.4).
NOT_IMPLEMENTED = frozenset({"EXPN", "TURN", "ETRN", "SEND", "SOML", "SAML", "BDAT", "AUTH",
                             "ATRN"})


def call_backend(function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    """Call a backend method and always get a Deferred, whatever it returned or raised."""
    try:
        result = function(*args)
    except Exception:  # noqa: BLE001 -- any backend error becomes a failed Deferred (451)
        return defer.fail(Failure())
    if isinstance(result, defer.Deferred):
        return result
    if inspect.isawaitable(result):
        return defer.ensureDeferred(result)
    return defer.succeed(result)


class SmtpServer(LineReceiver, TimeoutMixin):
    """One SMTP session (RFC 5321 4.1, 4.3.2), with STARTTLS (RFC 3207), SIZE (RFC 1870),
    PIPELINING (RFC 2920), 8BITMIME (RFC 6152), ENHANCEDSTATUSCODES (RFC 2034/3463) and
    SMTPUTF8 (RFC 6531).

    `LineReceiver`'s own line splitting is replaced (`dataReceived`) because the DATA phase and
    STARTTLS need exact control of every byte; `MAX_LENGTH` is kept in step with the limit.
    """

    factory: SmtpFactory

    def __init__(self) -> None:
        self._buffer = b""
        self._pending = False
        self._processing = False
        self._closing = False
        self._released = False
        self._skipping_long_line = False
        self._paused_reading = False
        self._sink: DataSink | None = None
        self._refused: Reply | None = None
        self._errors = 0
        self._greeted = False
        self.session: Session | None = None

    @property
    def envelope(self) -> Envelope | None:
        """The transaction in progress (kept on the session, where the backend sees it)."""
        return self.session.envelope if self.session is not None else None

    @envelope.setter
    def envelope(self, value: Envelope | None) -> None:
        if self.session is not None:
            self.session.envelope = value

    # --- connection ------------------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return self.factory.limits

    def connectionMade(self) -> None:
        self.MAX_LENGTH = self.limits.max_command_line
        if ITCPTransport.providedBy(self.transport):
            # Pipelined replies go out at once, not behind the client's delayed ACK (~40 ms).
            self.transport.setTcpNoDelay(True)
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.session = Session(
            id=f"{_session_ids.getrandbits(64):016x}", peer_ip=getattr(peer, "host", ""),
            peer_port=getattr(peer, "port", 0), local_ip=getattr(host, "host", ""),
            local_port=getattr(host, "port", 0))
        if ISSLTransport.providedBy(self.transport):
            self.session.tls = True
        if not self.factory.connection_opened(self.session.peer_ip):
            self._reply_and_close(replies.TOO_MANY_CONNECTIONS)
            return
        self.setTimeout(self.limits.idle_timeout)
        self._start_command(call_backend(self.factory.backend.connection, self.session),
                            self._greet)

    def _greet(self, refusal: Reply | None) -> Reply | None:
        self._greeted = True
        if refusal is None:
            return replies.GREETING.with_text(f"{self.factory.hostname} ESMTP ready")
        if refusal.code == 421:
            self._reply_and_close(refusal)
            return None
        self._refused = refusal
        return refusal

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self.setTimeout(None)
        self._closing = True
        if self._sink is not None:
            self._sink.abort()
            self._sink = None
        self._release()

    def _release(self) -> None:
        """Stop counting this connection against its IP's limit (once), as soon as we close it:
        a TLS connection is only lost after its close_notify exchange, which can come late."""
        if self.session is not None and not self._released:
            self._released = True
            self.factory.connection_closed(self.session.peer_ip)

    def timeoutConnection(self) -> None:
        """RFC 5321 4.5.3.2: an idle client gets `421` and is disconnected."""
        log.info("SMTP session {session_id} timed out", session_id=self.session.id)
        self._reply_and_close(replies.TIMEOUT)

    def _reply_and_close(self, reply: Reply) -> None:
        self._send(reply)
        self._closing = True
        self._buffer = b""
        self.setTimeout(None)
        self._release()
        self.transport.loseConnection()

    def _send(self, reply: Reply) -> None:
        if self._closing:
            return
        self.transport.write(reply.to_bytes())
        if reply.code >= 500:
            self._errors += 1
            if self._errors > self.limits.max_errors:
                self._reply_and_close(replies.TOO_MANY_ERRORS)

    # --- input -----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Buffer the bytes and handle what can be handled now, strictly in order."""
        if self._closing:
            return
        self.resetTimeout()
        if not self._greeted and self.session is not None:
            self.session.early_talker = True
        self._buffer += data
        self._process()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while self._buffer and not self._pending and not self._closing:
                if self._sink is not None:
                    self._feed_data()
                elif not self._next_command():
                    break
        finally:
            self._processing = False
        self._flow_control()

    def _flow_control(self) -> None:
        """Stop reading while a pending command has much unread input queued behind it."""
        waiting = self._pending and len(self._buffer) > self.limits.max_buffered
        if waiting and not self._paused_reading:
            self._paused_reading = True
            self.transport.pauseProducing()
        elif not waiting and self._paused_reading:
            self._paused_reading = False
            self.transport.resumeProducing()

    def _feed_data(self) -> None:
        assert self._sink is not None
        data, self._buffer = self._buffer, b""
        end = self._sink.feed(data)
        if end is not None:
            self._buffer = data[end:]
            self._end_of_data()

    def _next_command(self) -> bool:
        """Take one command line from the buffer and start it; False if no whole line is there."""
        newline = self._buffer.find(b"\n")
        if self._skipping_long_line:
            if newline == -1:
                self._buffer = b""
                return False
            self._buffer = self._buffer[newline + 1:]
            self._skipping_long_line = False
            self._send(replies.LINE_TOO_LONG)
            return True
        if newline == -1:
            if len(self._buffer) > self.limits.max_command_line:
                self._skipping_long_line = True
                self._buffer = b""
            return False
        line, self._buffer = self._buffer[:newline + 1], self._buffer[newline + 1:]
        if len(line) > self.limits.max_command_line:
            self._send(replies.LINE_TOO_LONG)
            return True
        self._command(line.rstrip(b"\n").removesuffix(b"\r"))
        return True

    # --- commands --------------------------------------------------------------------------------

    def _command(self, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._send(replies.BAD_UTF8)
            return
        if any(c < " " and c != "\t" or c == "\x7f" for c in line):
            self._send(replies.SYNTAX_ERROR)
            return
        written, _, argument = line.partition(" ")
        verb = written.upper()
        if self._refused is not None and verb != "QUIT":
            self._send(replies.NO_SERVICE)
            return
        known = written.isascii() and written.isalpha()  # "ſ".upper() == "S": ASCII only
        handler = getattr(self, f"do_{verb}", None) if known else None
        if handler is None:
            self._send(replies.NOT_IMPLEMENTED if verb in NOT_IMPLEMENTED
                       else replies.UNKNOWN_COMMAND)
            return
        result = handler(argument)
        if isinstance(result, Reply):
            self._send(result)

    def _start_command(self, deferred: defer.Deferred[Any],
                       then: Callable[[Any], Reply | None]) -> None:
        """Run a backend call; hold every later command until its reply has been sent."""
        self._pending = True
        self.setTimeout(None)

        def done(result: Any) -> None:
            reply = then(result)
            if reply is not None:
                self._send(reply)

        def failed(failure: Failure) -> None:
            log.failure("SMTP backend failed in session {session_id}", failure,
                        session_id=self.session.id if self.session else None)
            self._send(replies.LOCAL_ERROR)

        def resume(_: object) -> None:
            self._pending = False
            if not self._closing:
                self.setTimeout(self.limits.idle_timeout)
                self._process()

        deferred.addCallback(done).addErrback(failed).addErrback(
            lambda failure: log.failure("SMTP reply", failure))
        deferred.addBoth(resume)

    def extensions(self) -> list[str]:
        """The EHLO keywords (RFC 5321 4.1.1.1); subclasses add theirs (AUTH on submission)."""
        keywords = [f"SIZE {self.limits.max_message_size}", "8BITMIME", "PIPELINING",
                    "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self.factory.tls_creator is not None and not self.session.tls:
            keywords.append("STARTTLS")
        keywords.append("HELP")
        return keywords

    def do_EHLO(self, argument: str) -> Reply:
        """RFC 5321 4.1.1.1: greet, list the extensions, and reset any transaction."""
        if not argument.strip():
            return replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("EHLO needs a domain or address")
        self._hello(argument.strip(), esmtp=True)
        greeting = f"{self.factory.hostname} Hello {self.session.helo} [{self.session.peer_ip}]"
        return Reply(250, None, (greeting, *self.extensions()))

    def do_HELO(self, argument: str) -> Reply:
        """RFC 5321 4.1.1.1: plain SMTP greeting, no extensions."""
        if not argument.strip():
            return replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("HELO needs a domain")
        self._hello(argument.strip(), esmtp=False)
        return Reply(250, None, self.factory.hostname)

    def _hello(self, name: str, esmtp: bool) -> None:
        self.session.helo = name[:255]
        self.session.esmtp = esmtp
        self.envelope = None
        self._update_tls_info()

    def _update_tls_info(self) -> None:
        if not self.session.tls or self.session.tls_version:
            return
        try:
            connection = self.transport.getHandle()
            self.session.tls_version = connection.get_protocol_version_name()
            self.session.tls_cipher = connection.get_cipher_name()
        except Exception:  # noqa: BLE001,S110 -- not a pyOpenSSL connection (fake transports)
            pass

    def do_MAIL(self, argument: str) -> Reply | None:
        """RFC 5321 4.1.1.2, with SIZE (RFC 1870 6), BODY (RFC 6152) and SMTPUTF8 (RFC 6531)."""
        if self.session.helo is None:
            return replies.HELO_FIRST
        if self.factory.require_tls and not self.session.tls:
            return replies.MUST_STARTTLS
        if self.envelope is not None:
            return replies.NESTED_MAIL
        try:
            parsed = parse_mail_argument(argument)
        except PathError:
            return replies.BAD_SENDER_SYNTAX
        if parsed.params and not self.session.esmtp:
            return replies.UNKNOWN_PARAMETER.with_text("Parameters need EHLO")
        try:
            params = self._mail_params(parsed.params)
        except _ParamError as e:
            return e.reply
        if not parsed.path.is_ascii and not params.smtputf8:
            return replies.UTF8_NOT_ALLOWED
        if params.size is not None and params.size > self.limits.max_message_size:
            return replies.MESSAGE_TOO_BIG
        address = parsed.path.address
        self._update_tls_info()

        def decided(reply: Reply) -> Reply:
            if reply.is_positive:
                self.envelope = Envelope(sender=address, params=params)
            return reply

        self._start_command(
            call_backend(self.factory.backend.mail_from, self.session, address, params), decided)
        return None

    def _mail_params(self, raw: dict[str, str | None]) -> MailParams:
        size: int | None = None
        body: str | None = None
        smtputf8 = False
        for key, value in raw.items():
            if key == "SIZE":
                if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
                    raise _ParamError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("Bad SIZE"))
                size = int(value)
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise _ParamError(replies.PARAMETER_NOT_IMPLEMENTED.with_text(
                        "BODY must be 7BIT or 8BITMIME"))
                body = value.upper()
            elif key == "SMTPUTF8":
                if value is not None:
                    raise _ParamError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text(
                        "SMTPUTF8 takes no value"))
                smtputf8 = True
            else:
                raise _ParamError(replies.UNKNOWN_PARAMETER)
        return MailParams(size=size, body=body, smtputf8=smtputf8)

    def do_RCPT(self, argument: str) -> Reply | None:
        """RFC 5321 4.1.1.3; at most `max_recipients` accepted (RFC 5321 4.5.3.1.10)."""
        if self.envelope is None:
            return replies.NEED_MAIL
        envelope = self.envelope
        envelope.rcpt_attempts += 1
        try:
            parsed = parse_rcpt_argument(argument)
        except PathError:
            return replies.BAD_RECIPIENT_SYNTAX
        if parsed.params:
            return replies.UNKNOWN_PARAMETER
        if not parsed.path.is_ascii and not envelope.params.smtputf8:
            return replies.UTF8_NOT_ALLOWED
        if len(envelope.recipients) >= self.limits.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        address = parsed.path.address

        def decided(reply: Reply) -> Reply:
            if reply.is_positive and self.envelope is envelope:
                envelope.recipients.append(address)
            return reply

        self._start_command(
            call_backend(self.factory.backend.rcpt_to, self.session, address), decided)
        return None

    def do_DATA(self, argument: str) -> Reply:
        """RFC 5321 4.1.1.4: 354, then the bytes belong to the DataSink until CRLF.CRLF."""
        if argument.strip():
            return replies.SYNTAX_ERROR_IN_PARAMETERS
        if self.envelope is None:
            return replies.NEED_MAIL
        if not self.envelope.recipients:
            # RFC 2920 3.1: a pipelined DATA after only failed RCPTs gets 554, not 354.
            return replies.NO_VALID_RECIPIENTS if self.envelope.rcpt_attempts else replies.NEED_RCPT
        self._sink = DataSink(self.factory.spool_dir, self.limits.max_message_size,
                              self.limits.max_data_line)
        return replies.START_DATA

    def _end_of_data(self) -> None:
        sink, self._sink = self._sink, None
        envelope, self.envelope = self.envelope, None
        assert sink is not None and envelope is not None
        envelope.size = sink.size
        rejection = sink.rejection
        if rejection is not None:
            sink.abort()
            log.info("SMTP session {session_id} from [{client_ip}]: message from <{sender}> "
                     "refused at end of data: {reply}", session_id=self.session.id,
                     client_ip=self.session.peer_ip, sender=envelope.sender,
                     reply=str(rejection))
            self._send(rejection)
            return

        async def deliver() -> Reply:
            if sink.in_memory:
                spooled = sink.finish()
            else:
                try:
                    spooled = await self.factory.run_blocking(sink.finish)
                except BaseException:
                    sink.abort()
                    raise
            try:
                return await call_backend(self.factory.backend.message, self.session, envelope,
                                          spooled)
            finally:
                await self._discard(spooled)

        self._start_command(defer.ensureDeferred(deliver()), lambda reply: reply)

    async def _discard(self, spooled: SpooledMessage) -> None:
        """Drop a message the backend is done with (removing a spool file is disk work, done
        before the reply so that nothing of an answered message is left behind)."""
        if spooled.in_memory:
            spooled.discard()
            return
        try:
            await self.factory.run_blocking(spooled.discard)
        except Exception:  # noqa: BLE001 -- a leftover file is garbage, not a failed message
            log.failure("cannot remove the spool file {path}", path=spooled.path)

    def do_RSET(self, argument: str) -> Reply:
        """RFC 5321 4.1.1.5."""
        self.envelope = None
        return replies.RESET_OK

    def do_NOOP(self, argument: str) -> Reply:
        """RFC 5321 4.1.1.9."""
        return replies.NOOP_OK

    def do_VRFY(self, argument: str) -> Reply:
        """RFC 5321 3.5.3: 252, neither confirming nor denying (no address harvesting)."""
        if not argument.strip():
            return replies.SYNTAX_ERROR_IN_PARAMETERS
        return replies.CANNOT_VRFY

    def do_HELP(self, argument: str) -> Reply:
        """RFC 5321 4.1.1.8."""
        return replies.HELP

    def do_QUIT(self, argument: str) -> None:
        """RFC 5321 4.1.1.10: 221, close, and ignore anything pipelined after."""
        self._reply_and_close(replies.BYE)

    def do_STARTTLS(self, argument: str) -> Reply | None:
        """RFC 3207 4: 220, then TLS. Bytes the client sent after the command in plaintext are
        discarded, never executed (RFC 3207 6, the STARTTLS injection); the session forgets
        EHLO and any transaction (RFC 3207 4.2)."""
        if argument.strip():
            return replies.SYNTAX_ERROR_IN_PARAMETERS
        if self.session.tls:
            return replies.ALREADY_TLS
        if self.factory.tls_creator is None:
            return replies.NOT_IMPLEMENTED
        self._send(replies.READY_FOR_TLS)
        if self._buffer:
            log.warn(  # noqa: G010 -- twisted.logger has no warning()
                "SMTP session {session_id}: {count} plaintext bytes after STARTTLS dropped",
                session_id=self.session.id, count=len(self._buffer))
        self._buffer = b""
        self.transport.startTLS(self.factory.tls_creator)
        self.session.tls = True
        self.session.helo = None
        self.session.esmtp = False
        self.envelope = None
        return None


class _ParamError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _default_run_blocking(function: Callable[[], T]) -> defer.Deferred[T]:
    return deferToThread(function)


class SmtpFactory(Factory):
    """Builds `SmtpServer`s for one listener: its hostname, backend, spool folder, limits and
    (optionally) the TLS creator for STARTTLS (`CertStore.server_creator()`).

    `require_tls` answers MAIL with `530 5.7.0` until STARTTLS (for submission, RFC 3207 4).
    `run_blocking` runs spool-file work off the reactor (a named thread pool in production).
    `spool_dir` must exist: it is made with the data folder, after privileges are dropped.
    """

    protocol = SmtpServer

    def __init__(self, hostname: str, backend: ISmtpBackend, spool_dir: Path | str,
                 limits: Limits | None = None,
                 tls_creator: IOpenSSLServerConnectionCreator | None = None,
                 require_tls: bool = False,
                 run_blocking: Callable[[Callable[[], Any]], defer.Deferred[Any]] | None = None,
                 ) -> None:
        self.hostname = hostname
        self.backend = backend
        self.spool_dir = Path(spool_dir)
        self.limits = limits or Limits()
        self.tls_creator = tls_creator
        self.require_tls = require_tls
        self.run_blocking = run_blocking or _default_run_blocking
        self.connections: dict[str, int] = {}

    def connection_opened(self, ip: str) -> bool:
        """Count a connection from `ip`; False if that is one too many."""
        count = self.connections.get(ip, 0) + 1
        self.connections[ip] = count
        return count <= self.limits.max_connections_per_ip

    def connection_closed(self, ip: str) -> None:
        count = self.connections.get(ip, 0) - 1
        if count > 0:
            self.connections[ip] = count
        else:
            self.connections.pop(ip, None)
