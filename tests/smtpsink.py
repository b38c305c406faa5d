"""A scriptable ESMTP sink for tests: a real server on a loopback port in the test's reactor that
records everything an SMTP client does and answers as the test says.

Use it through the `smtp_sink` fixture (a factory of started sinks, stopped at teardown). It is
available wherever a conftest.py imports it (`from tests.smtpsink import smtp_sink  # noqa: F401`);
in a single test module, `smtp_sink = smtpsink.smtp_sink` after `from tests import smtpsink`
(importing the name directly makes ruff report F811 at every test using it)::

    @pytest_twisted.ensureDeferred
    async def test_something(smtp_sink):
        sink = smtp_sink(pipelining=False, rcpt_reply=lambda rcpt: (550, "5.1.1 no such user"))
        ...deliver to ("127.0.0.1", sink.port)...
        [message] = await sink.wait_for(1)
        assert message.data == b"Subject: hi\\r\\n\\r\\nHello\\r\\n"

or by hand: `sink = SmtpSink(...)`, `port = sink.start()`, ..., `await sink.stop()`.

What it offers (all optional): PIPELINING, 8BITMIME, SMTPUTF8, SIZE, STARTTLS and implicit TLS
with a certificate for `localhost` signed by a test CA (`sink.ca_pem`, `sink.client_tls()`), AUTH
PLAIN/LOGIN (required, and offered only inside TLS, when `users` is set). What it records:
`messages` (every message whose data ended, with the exact bytes before and after un-stuffing),
`transcript` (every line received outside DATA, in order), `batches` (the same lines grouped by the
network read they came in, to see what a client pipelined), `connections`.

It is strict where a strict server would be: data ends only at CRLF.CRLF and only CRLF separates
lines, so a client that does not dot-stuff or that sends bare line ends shows up as a second
(smuggled) message or as data that differs from what was sent.
"""

from __future__ import annotations

import base64
import binascii
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from cloudmail.config import TlsCertificate
from tests.pki import Pki

Reply = tuple[int, str]

_MAIL = re.compile(r"(?i)FROM:<([^<>]*)>(.*)\Z")
_RCPT = re.compile(r"(?i)TO:<([^<>]*)>(.*)\Z")


@dataclass
class SinkMessage:
    """One message whose data ended (CRLF.CRLF), whatever the sink answered to it."""

    sender: str
    #: The recipients the sink accepted (2xx to RCPT), in order.
    recipients: list[str]
    #: The message as received: un-dot-stuffed, CRLF line ends kept, without the final `.`.
    data: bytes
    #: The DATA bytes exactly as on the wire, dot-stuffing and the final `.\r\n` included.
    raw: bytes
    #: The EHLO/HELO argument in force (None if the client sent neither).
    helo: str | None
    #: Whether the session was inside TLS (STARTTLS or implicit).
    tls: bool
    auth_user: str | None
    #: The MAIL FROM parameters, e.g. ["SIZE=123", "BODY=8BITMIME"].
    mail_params: list[str]
    #: The reply the sink gave after the data (None: it gave none, `data_reply` said so).
    reply: Reply | None = None


class SmtpSink:
    """An ESMTP server listening on 127.0.0.1, port 0 (see `port` after `start()`).

    - `starttls`: offer STARTTLS; `implicit_tls`: TLS from the first byte (port 465 style). Both
      use `cert` (a `TlsCertificate`), else a certificate for `localhost` from a fresh test CA
      whose PEM is at `ca_pem` (`client_tls()` makes a client creator that verifies it).
    - `users`: {user: password}; when set, AUTH (`auth_mechanisms`) is offered only inside TLS
      (also outside it with `auth_without_tls`) and MAIL needs it (530 5.7.0).
    - `pipelining`, `eightbitmime`, `smtputf8`: offer these extensions; `size`: offer SIZE and
      refuse a larger message (552 5.3.4); 0 offers SIZE without a limit (RFC 1870), None (the
      default) does not offer it. MAIL parameters not offered get 555 5.5.4.
    - `ehlo=False`: answer EHLO with 502, so a client must fall back to HELO.
    - `greeting_reply`: the greeting; a non-220 greeting closes the connection; None: say
      nothing at all (a server that never answers). `refuse_connections`: greet the first N
      connections with 421 and close them.
    - `rcpt_reply(address)` and `data_reply(message)` choose the replies to RCPT and to the end
      of data (default 250); returning None gives no reply at all (for timeout tests).
    - `data_delay`: after the 354 to DATA, stop reading for that many seconds (a slow server:
      the client's writes must wait behind TCP flow control).
    - `directory`: where the TLS files go (default: a temporary folder removed by `stop()`).
    """

    def __init__(self, *, starttls: bool = False, implicit_tls: bool = False,
                 cert: TlsCertificate | None = None, users: dict[str, str] | None = None,
                 auth_mechanisms: Sequence[str] = ("PLAIN", "LOGIN"),
                 auth_without_tls: bool = False, pipelining: bool = True,
                 eightbitmime: bool = True, smtputf8: bool = True, size: int | None = None,
                 ehlo: bool = True, rcpt_reply: Callable[[str], Reply | None] | None = None,
                 data_reply: Callable[[SinkMessage], Reply | None] | None = None,
                 greeting_reply: Reply | None = (220, "sink.test ESMTP test sink"),
                 refuse_connections: int = 0, data_delay: float = 0.0,
                 hostname: str = "sink.test",
                 directory: Path | None = None) -> None:
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.users = users
        self.auth_mechanisms = [m.upper() for m in auth_mechanisms]
        self.auth_without_tls = auth_without_tls
        self.pipelining = pipelining
        self.eightbitmime = eightbitmime
        self.smtputf8 = smtputf8
        self.size = size
        self.ehlo = ehlo
        self.rcpt_reply = rcpt_reply
        self.data_reply = data_reply
        self.greeting_reply = greeting_reply
        self.refuse_connections = refuse_connections
        self.data_delay = data_delay
        self.hostname = hostname
        #: Every message whose data ended, in order (see `SinkMessage.reply` for the answer).
        self.messages: list[SinkMessage] = []
        #: Every line received outside DATA (commands and AUTH exchanges), in order.
        self.transcript: list[str] = []
        #: `transcript` grouped by the network read each line came in: a pipelined group sent
        #: in one write shows up as one batch.
        self.batches: list[list[str]] = []
        #: How many connections were accepted so far.
        self.connections = 0
        self.port: int | None = None
        self.ca_pem: Path | None = None
        self._own_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="smtpsink-")) if directory is None \
            else directory
        self.cert = cert
        if cert is None and (starttls or implicit_tls):
            pki = Pki()
            self.cert = pki.write(self.directory / "tls", "localhost")
            self.ca_pem = self.directory / "tls" / "ca.pem"
            self.ca_pem.write_text(pki.root_pem, encoding="ascii")
        self._listener: Any = None
        self._protocols: set[_SinkProtocol] = set()
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    def start(self) -> int:
        """Listen on 127.0.0.1 on a free port; returns it (also kept in `port`)."""
        from twisted.internet import reactor
        factory = Factory.forProtocol(lambda: _SinkProtocol(self))
        if self.implicit_tls:
            self._listener = reactor.listenSSL(0, factory, self.server_tls(),
                                               interface="127.0.0.1")
        else:
            self._listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self._listener.getHost().port
        return self.port

    def stop(self) -> defer.Deferred[None]:
        """Stop listening and drop open connections; fires when all is closed (await it)."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._listener is not None:
            await self._listener.stopListening()
            self._listener = None
        closing = [p.closed for p in self._protocols]
        for protocol in list(self._protocols):
            protocol.transport.abortConnection()
        await defer.DeferredList(closing)
        for _, waiter in self._waiters:
            waiter.cancel()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[SinkMessage]:
        """Wait until `count` messages have arrived; returns `messages`. Raises TimeoutError
        (with the transcript) after `timeout` seconds."""
        if len(self.messages) < count:
            from twisted.internet import reactor
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append((count, waiter))
            waiter.addTimeout(timeout, reactor)
            try:
                await waiter
            except defer.TimeoutError:
                raise TimeoutError(f"{len(self.messages)} of {count} messages after {timeout} s;"
                                   f" transcript: {self.transcript}") from None
            finally:
                self._waiters = [(n, w) for n, w in self._waiters if w is not waiter]
        return self.messages

    def server_tls(self) -> _ServerTls:
        """The server side of TLS with `cert` (an IOpenSSLServerConnectionCreator)."""
        if self.cert is None:
            raise ValueError("this sink has no certificate (starttls/implicit_tls are off)")
        return _ServerTls(self.cert)

    def client_tls(self, hostname: str = "localhost") -> Any:
        """A client connection creator that verifies the sink's certificate against the test CA
        (for `tls_context=`; the name checked is `hostname`, not the address connected to)."""
        if self.ca_pem is None:
            raise ValueError("no test CA: the sink was given its own certificate")
        return optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(self.ca_pem.read_bytes()))

    def _arrived(self, message: SinkMessage) -> None:
        self.messages.append(message)
        ready = [(n, w) for n, w in self._waiters if n <= len(self.messages)]
        self._waiters = [(n, w) for n, w in self._waiters if n > len(self.messages)]
        for _, waiter in ready:
            waiter.callback(None)


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTls:
    """The server side of TLS, for `listenSSL` and `startTLS`."""

    def __init__(self, cert: TlsCertificate) -> None:
        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.use_certificate_chain_file(str(cert.cert))
        self._context.use_privatekey_file(str(cert.key))

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._context, None)


class _SinkProtocol(LineReceiver):
    """One connection to the sink: commands line by line, the data in raw mode."""

    delimiter = b"\r\n"
    MAX_LENGTH = 65536

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.tls = sink.implicit_tls
        self.helo: str | None = None
        self.auth_user: str | None = None
        self.sender: str | None = None
        self.params: list[str] = []
        self.recipients: list[str] = []
        self._continuation: Callable[[str], None] | None = None
        self._data: bytearray | None = None
        self._reads = 0
        self._batch_read = -1
        self._batch: list[str] = []
        self._resume: Any = None

    # --- connection ---------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.sink.connections += 1
        self.sink._protocols.add(self)
        if self.sink.connections <= self.sink.refuse_connections:
            self.reply(421, "4.3.2 too busy, try again later")
            self.transport.loseConnection()
        elif self.sink.greeting_reply is not None:
            self.reply(*self.sink.greeting_reply)
            if self.sink.greeting_reply[0] != 220:
                self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self.sink._protocols.discard(self)
        self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self._reads += 1
        super().dataReceived(data)

    def reply(self, code: int, text: str) -> None:
        """Send a reply; `text` with newlines becomes a multi-line reply."""
        lines = text.split("\n")
        self.transport.write(b"".join(
            f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode()
            for i, line in enumerate(lines)))

    # --- commands -----------------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "surrogateescape")
        self.sink.transcript.append(text)
        if self._batch_read != self._reads:
            self._batch_read, self._batch = self._reads, []
            self.sink.batches.append(self._batch)
        self._batch.append(text)
        if self._continuation is not None:
            continuation, self._continuation = self._continuation, None
            continuation(text)
            return
        verb, _, argument = text.partition(" ")
        handler = getattr(self, f"smtp_{verb.upper()}", None)
        if handler is None:
            self.reply(500, "5.5.2 command not recognized")
        else:
            handler(argument)

    def extensions(self) -> list[str]:
        sink = self.sink
        offered = ["PIPELINING" if sink.pipelining else "",
                   "8BITMIME" if sink.eightbitmime else "",
                   "SMTPUTF8" if sink.smtputf8 else "",
                   f"SIZE {sink.size}" if sink.size is not None else "",
                   "STARTTLS" if sink.starttls and not self.tls else "",
                   f"AUTH {' '.join(sink.auth_mechanisms)}" if self.auth_offered() else "",
                   "ENHANCEDSTATUSCODES"]
        return [keyword for keyword in offered if keyword]

    def auth_offered(self) -> bool:
        return self.sink.users is not None and (self.tls or self.sink.auth_without_tls)

    def reset(self) -> None:
        self.sender, self.params, self.recipients = None, [], []

    def smtp_EHLO(self, argument: str) -> None:
        if not self.sink.ehlo:
            self.reply(502, "5.5.1 EHLO not implemented, try HELO")
            return
        self.helo = argument
        self.reset()
        self.reply(250, "\n".join([f"{self.sink.hostname} hello {argument}",
                                   *self.extensions()]))

    def smtp_HELO(self, argument: str) -> None:
        self.helo = argument
        self.reset()
        self.reply(250, f"{self.sink.hostname} hello {argument}")

    def smtp_STARTTLS(self, argument: str) -> None:
        if not self.sink.starttls or self.tls:
            self.reply(503, "5.5.1 STARTTLS not available")
            return
        self.reply(220, "2.0.0 ready to start TLS")
        self.clearLineBuffer()  # RFC 3207 6: nothing sent in plaintext counts inside TLS
        self.transport.startTLS(self.sink.server_tls())
        self.tls = True
        self.helo, self.auth_user = None, None
        self.reset()

    def smtp_AUTH(self, argument: str) -> None:
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if not self.auth_offered() or mechanism not in self.sink.auth_mechanisms:
            self.reply(504, "5.5.4 mechanism not available")
        elif self.auth_user is not None or self.sender is not None:
            self.reply(503, "5.5.1 AUTH not allowed now")
        elif mechanism == "PLAIN":
            if initial:
                self._plain(initial)
            else:
                self.ask("", self._plain)
        elif initial:
            self._login_user(initial)
        else:
            self.ask("VXNlcm5hbWU6", self._login_user)  # "Username:"

    def ask(self, challenge: str, then: Callable[[str], None]) -> None:
        self._continuation = then
        self.reply(334, challenge)

    def _plain(self, response: str) -> None:
        parts = _decode(response).split("\0")
        if len(parts) != 3:
            self.reply(501, "5.5.2 malformed AUTH PLAIN response")
            return
        self._check(parts[1], parts[2])

    def _login_user(self, response: str) -> None:
        user = _decode(response)
        self.ask("UGFzc3dvcmQ6", lambda answer: self._check(user, _decode(answer)))  # "Password:"

    def _check(self, user: str, password: str) -> None:
        assert self.sink.users is not None
        if self.sink.users.get(user) == password and password:
            self.auth_user = user
            self.reply(235, "2.7.0 authentication succeeded")
        else:
            self.reply(535, "5.7.8 authentication credentials invalid")

    def smtp_MAIL(self, argument: str) -> None:
        found = _MAIL.match(argument)
        if self.helo is None or self.sender is not None:
            self.reply(503, "5.5.1 bad sequence of commands")
        elif found is None:
            self.reply(501, "5.5.4 syntax: MAIL FROM:<address>")
        elif self.sink.users is not None and self.auth_user is None:
            self.reply(530, "5.7.0 authentication required")
        else:
            params = found.group(2).split()
            error = self.check_params(params)
            if error is None and not found.group(1).isascii() and "SMTPUTF8" not in params:
                error = (553, "5.6.7 non-ASCII address without SMTPUTF8")
            if error is not None:
                self.reply(*error)
                return
            self.sender, self.params = found.group(1), params
            self.reply(250, "2.1.0 sender OK")

    def check_params(self, params: list[str]) -> Reply | None:
        """The error reply for MAIL's parameters, or None when they are all offered and fine."""
        sink = self.sink
        for param in params:
            keyword, _, value = param.upper().partition("=")
            allowed = ((keyword == "SIZE" and sink.size is not None and value.isdigit())
                       or (keyword == "BODY" and value in ("7BIT", "8BITMIME")
                           and sink.eightbitmime)
                       or (keyword == "SMTPUTF8" and not value and sink.smtputf8))
            if not allowed:
                return 555, f"5.5.4 parameter {param} not supported"
            if keyword == "SIZE" and sink.size and int(value) > sink.size:
                return 552, "5.3.4 message size exceeds fixed limit"
        return None

    def smtp_RCPT(self, argument: str) -> None:
        found = _RCPT.match(argument)
        if self.sender is None:
            self.reply(503, "5.5.1 need MAIL first")
        elif found is None:
            self.reply(501, "5.5.4 syntax: RCPT TO:<address>")
        elif not found.group(1).isascii() and "SMTPUTF8" not in self.params:
            self.reply(553, "5.6.7 non-ASCII address without SMTPUTF8")
        else:
            answer = (self.sink.rcpt_reply(found.group(1)) if self.sink.rcpt_reply
                      else (250, "2.1.5 recipient OK"))
            if answer is None:
                return
            if 200 <= answer[0] < 300:
                self.recipients.append(found.group(1))
            self.reply(*answer)

    def smtp_DATA(self, argument: str) -> None:
        if self.sender is None:
            self.reply(503, "5.5.1 need MAIL first")
        elif not self.recipients:
            self.reply(554, "5.5.1 no valid recipients")
        else:
            self.reply(354, "end data with <CR><LF>.<CR><LF>")
            self._data = bytearray()
            self.setRawMode()
            if self.sink.data_delay:
                from twisted.internet import reactor
                self.transport.pauseProducing()
                self._resume = reactor.callLater(self.sink.data_delay,
                                                 self.transport.resumeProducing)

    def smtp_RSET(self, argument: str) -> None:
        self.reset()
        self.reply(250, "2.0.0 OK")

    def smtp_NOOP(self, argument: str) -> None:
        self.reply(250, "2.0.0 OK")

    def smtp_QUIT(self, argument: str) -> None:
        self.reply(221, "2.0.0 bye")
        self.transport.loseConnection()

    # --- data ---------------------------------------------------------------------------------

    def rawDataReceived(self, data: bytes) -> None:
        assert self._data is not None
        searched = max(0, len(self._data) - 4)
        self._data += data
        if self._data.startswith(b".\r\n"):
            end = 3
        else:
            found = self._data.find(b"\r\n.\r\n", searched)
            if found < 0:
                return
            end = found + 5
        raw, rest = bytes(self._data[:end]), bytes(self._data[end:])
        self._data = None
        lines = raw[:-3].split(b"\r\n")
        message = SinkMessage(
            sender=self.sender or "", recipients=self.recipients,
            data=b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines),
            raw=raw, helo=self.helo, tls=self.tls, auth_user=self.auth_user,
            mail_params=self.params)
        message.reply = (self.sink.data_reply(message) if self.sink.data_reply
                         else (250, f"2.0.0 OK queued as {len(self.sink.messages) + 1}"))
        self.reset()
        self.sink._arrived(message)
        if message.reply is not None:
            self.reply(*message.reply)
        self.line_mode = 1
        if rest:  # pipelined commands after the final dot: same network read, same batch
            LineReceiver.dataReceived(self, rest)


def _decode(response: str) -> str:
    try:
        return base64.b64decode(response, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


@pytest.fixture
def smtp_sink(tmp_path):
    """A factory: `smtp_sink(**options)` makes an `SmtpSink(**options)`, starts it and returns
    it (its port in `sink.port`); every sink is stopped at teardown."""
    sinks: list[SmtpSink] = []

    def start(**options: Any) -> SmtpSink:
        options.setdefault("directory", tmp_path / f"smtpsink{len(sinks)}")
        options["directory"].mkdir(parents=True, exist_ok=True)
        sink = SmtpSink(**options)
        sink.start()
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        pytest_twisted.blockon(sink.stop())


#: Postfix's sink (Debian package postfix), a second, independent SMTP server to deliver to.
SMTP_SINK = "/usr/sbin/smtp-sink"


@pytest.fixture
def postfix_sink(tmp_path):
    """Postfix's `smtp-sink` on a free loopback port, dumping each message to a file in a
    folder; yields (port, folder). The process is killed afterwards."""
    if not os.access(SMTP_SINK, os.X_OK):
        pytest.skip(f"{SMTP_SINK} is missing: install the Debian package postfix "
                    "(`make test-packages`) to run the smtp-sink test")
    folder = tmp_path / "dumps"
    folder.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = ["-u", pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [SMTP_SINK, *user, "-h", "postfix-sink.test", "-d", f"{folder}/%M.",
         f"127.0.0.1:{port}", "10"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"smtp-sink did not start: {process.stdout.read()!r}")
                time.sleep(0.05)
        yield port, folder
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()
