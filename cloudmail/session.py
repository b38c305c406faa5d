"""What our IMAP and ManageSieve servers share: a session of commands read from one connection.

`CommandSession` is the part of `Protocol` both use:

- The client's bytes go through the server's reader (`factory.new_reader()`); the commands it
  completes wait in `_pending` and run one at a time, in order (`_run`); a command in a dialogue
  (AUTHENTICATE, IDLE) takes the client's next line with `next_line`. Reading pauses while more
  than `MAX_QUEUED` commands wait.
- `LOGIN_TIMEOUT` before login, `IDLE_TIMEOUT` after it; then `IDLE_BYE` and the session ends.
- STARTTLS (`start_tls`) drops whatever the client pipelined after it in plaintext.
- A failed login is answered after the shared `LoginThrottle`'s delay; after
  `MAX_LOGIN_FAILURES` the session ends with `TOO_MANY_FAILURES`.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from cloudmail.directory.cred import Login
from cloudmail.errors import AuthenticationFailed

log = Logger()

NOT_AUTHENTICATED, AUTHENTICATED, LOGOUT = "not authenticated", "authenticated", "logout"
MAX_LOGIN_FAILURES = 5
#: RFC 3501 5.4: at least 30 minutes for an authenticated client; less before login.
IDLE_TIMEOUT = 30 * 60
LOGIN_TIMEOUT = 60
#: Pause reading when this many commands wait behind the one running.
MAX_QUEUED = 64


class CommandSession(Protocol, TimeoutMixin):
    """One session of a line protocol with a login (see the module docstring).

    A server sets `PROTOCOL` (for the log), `IDLE_BYE` and `TOO_MANY_FAILURES` (the lines that
    end a session), and defines `command` (an event of its reader to run, or None once answered)
    and `_run` (run one command)."""

    PROTOCOL: str
    IDLE_BYE: bytes
    TOO_MANY_FAILURES: bytes
    factory: Any
    reader: Any

    def __init__(self) -> None:
        self.state = NOT_AUTHENTICATED
        self.tls = False
        self.login: str | None = None
        self.session_id = f"{secrets.randbits(48):012x}"
        self.peer_ip = ""
        self._pending: deque[Any] = deque()
        self._busy = False
        self._closing = False
        self._paused = False
        self._line_waiter: defer.Deferred[Any] | None = None
        self._failures = 0

    # --- connection ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer_ip = getattr(self.transport.getPeer(), "host", "")
        self.tls = ISSLTransport.providedBy(self.transport)
        self.reader = self.factory.new_reader()
        self.setTimeout(LOGIN_TIMEOUT)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self.setTimeout(None)
        self._closing = True
        self._drop_input()
        if self._line_waiter is not None:
            waiter, self._line_waiter = self._line_waiter, None
            waiter.errback(ConnectionError("connection lost"))

    def timeoutConnection(self) -> None:
        self.send(self.IDLE_BYE)
        self.close()

    def close(self) -> None:
        self._closing = True
        self.transport.loseConnection()

    def send(self, line: bytes) -> None:
        """Write one response line (CRLF added)."""
        if not self._closing:
            self.transport.write(line + b"\r\n")

    def start_tls(self) -> None:
        """STARTTLS, once its OK is sent: what the client pipelined after it is dropped, unread."""
        self._drop_input()
        self.reader = self.factory.new_reader()
        self.transport.startTLS(self.factory.tls_creator)
        self.tls = True

    def _drop_input(self) -> None:
        """Forget the commands received and not run yet."""
        self._pending.clear()

    # --- input -----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.resetTimeout()
        self._pending.extend(self.events(data))
        self._drain()

    def events(self, data: bytes) -> Iterable[Any]:
        """The events of the reader that `data` completes."""
        return self.reader.feed(data)

    def command(self, event: Any) -> Any:
        raise NotImplementedError

    async def _run(self, command: Any) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        while self._pending and not self._closing and (self._line_waiter or not self._busy):
            event = self._pending.popleft()
            if self._line_waiter is not None:
                waiter, self._line_waiter = self._line_waiter, None
                waiter.callback(event)
                continue
            command = self.command(event)
            if command is None:
                continue
            self._busy = True
            defer.ensureDeferred(self._run(command)).addBoth(self._finished)
        waiting = len(self._pending) > MAX_QUEUED
        if waiting != self._paused:
            self._paused = waiting
            (self.transport.pauseProducing if waiting else self.transport.resumeProducing)()

    def _finished(self, _: object) -> None:
        self._busy = False
        self._drain()

    async def next_line(self) -> Any:
        """The client's next line, for a command in a dialogue (AUTHENTICATE, IDLE)."""
        self._line_waiter = defer.Deferred()
        result = self._line_waiter
        self._drain()
        return await result

    # --- login -----------------------------------------------------------------------------------

    async def check_password(self, username: str, password: str) -> Login:
        """The directory's login for `username` and `password`. `AuthenticationFailed` comes
        after the throttle's delay, and after `MAX_LOGIN_FAILURES` the session ends with
        `TOO_MANY_FAILURES`; `DirectoryUnavailable` goes through."""
        throttle = self.factory.throttle
        try:
            login = await self.factory.authenticator.authenticate(username, password)
        except AuthenticationFailed:
            self._failures += 1
            delay = throttle.failed(self.peer_ip, username)
            log.info("{protocol} login failed for {username} from [{client_ip}] (failure "
                     "{count}); answering in {delay:.0f} s", protocol=self.PROTOCOL,
                     username=username, client_ip=self.peer_ip, count=self._failures,
                     delay=delay)
            if delay:
                await task.deferLater(reactor, delay, lambda: None)
            if self._failures >= MAX_LOGIN_FAILURES:
                self.send(self.TOO_MANY_FAILURES)
                self.close()
            raise
        throttle.succeeded(username)
        return login

    def logged_in(self, mailbox: str) -> None:
        self.login = mailbox
        self.state = AUTHENTICATED
        self.setTimeout(IDLE_TIMEOUT)
        log.info("{protocol} login {mailbox} from [{client_ip}] session {session_id}",
                 protocol=self.PROTOCOL, mailbox=mailbox, client_ip=self.peer_ip,
                 session_id=self.session_id)
