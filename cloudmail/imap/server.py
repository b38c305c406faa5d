"""Our IMAP4rev1 server (RFC 3501) on a Twisted `Protocol`, and its factory.

Why not `twisted.mail.imap4.IMAP4Server`: the fixes our clients need touch most of it (SELECT
without PERMANENTFLAGS/UIDNEXT/UNSEEN, `BAD` instead of `NO [TRYCREATE]`, header SEARCH broken on
Python 3, header FETCH rebuilt from a dict, unbounded APPEND literals, STARTTLS injection, no
CONDSTORE, UIDPLUS, MOVE, ENABLE, LITERAL+, SPECIAL-USE — see DESIGN.md), so, as for SMTP, the
protocol is ours and small: bytes go through `wire.CommandReader` (literals, limits), commands run
one at a time in order, and each handler is a coroutine returning the tagged result. The commands
live in two mixins by state: `mailboxes.py` (authenticated) and `messages.py` (selected).

- Before TLS, LOGIN and AUTHENTICATE are refused and `LOGINDISABLED` is advertised (RFC 3501
  6.2.3, RFC 8314); STARTTLS drops whatever the client pipelined after it in plaintext.
- A failed login is answered after a delay that grows with the failures of the client IP and of
  the account (`directory.throttle`); the session ends after `MAX_LOGIN_FAILURES`. (The session
  plumbing shared with ManageSieve, login throttling included, is `cloudmail.session`.)
- A handler that fails unexpectedly answers `NO [SERVERBUG]` and the session goes on.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, ITCPTransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from cloudmail.address import AddressError, parse_address
from cloudmail.directory.cred import Authenticator
from cloudmail.directory.throttle import LoginThrottle
from cloudmail.errors import AuthenticationFailed, DirectoryUnavailable
from cloudmail.imap.mailboxes import MailboxCommands
from cloudmail.imap.messages import MessageCommands
from cloudmail.imap.results import Bad, Done, No
from cloudmail.imap.selected import SelectedFolder
from cloudmail.imap.tokens import LiteralFile
from cloudmail.imap.wire import (CommandError, CommandReader, ContinuationNeeded, RawCommand,
                                 Refused, parse_command)
from cloudmail.mailstore.account import MailAccount, MailAccounts
from cloudmail.session import AUTHENTICATED, LOGOUT, NOT_AUTHENTICATED, CommandSession

log = Logger()

SELECTED = "selected"
BASE_CAPABILITIES = ("IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE",
                     "UIDPLUS", "MOVE", "SPECIAL-USE", "CHILDREN", "UNSELECT", "CONDSTORE",
                     "LIST-EXTENDED", "LIST-STATUS", "UTF8=ACCEPT")


#: The states each command may run in (RFC 3501 6).
ANY = (NOT_AUTHENTICATED, AUTHENTICATED, SELECTED)
AUTHED = (AUTHENTICATED, SELECTED)
STATES: dict[str, tuple[str, ...]] = {
    "CAPABILITY": ANY, "NOOP": ANY, "LOGOUT": ANY, "ID": ANY,
    "STARTTLS": (NOT_AUTHENTICATED,), "LOGIN": (NOT_AUTHENTICATED,),
    "AUTHENTICATE": (NOT_AUTHENTICATED,),
    "ENABLE": AUTHED, "SELECT": AUTHED, "EXAMINE": AUTHED, "CREATE": AUTHED, "DELETE": AUTHED,
    "RENAME": AUTHED, "SUBSCRIBE": AUTHED, "UNSUBSCRIBE": AUTHED, "LIST": AUTHED,
    "LSUB": AUTHED, "STATUS": AUTHED, "APPEND": AUTHED, "NAMESPACE": AUTHED, "IDLE": AUTHED,
    "CHECK": (SELECTED,), "CLOSE": (SELECTED,), "UNSELECT": (SELECTED,),
    "EXPUNGE": (SELECTED,), "SEARCH": (SELECTED,), "FETCH": (SELECTED,), "STORE": (SELECTED,),
    "COPY": (SELECTED,), "MOVE": (SELECTED,), "UID": (SELECTED,),
}
#: RFC 3501 7.4.1: no EXPUNGE response while these run (sequence numbers must hold still).
NO_EXPUNGE_DURING = frozenset({"FETCH", "STORE", "SEARCH"})


class ImapServer(MailboxCommands, MessageCommands, CommandSession):
    """One IMAP session."""

    PROTOCOL = "IMAP"
    #: RFC 3501 5.4: the autologout timer.
    IDLE_BYE = b"* BYE Autologout; idle for too long"
    TOO_MANY_FAILURES = b"* BYE Too many failed logins"
    factory: ImapFactory

    def __init__(self) -> None:
        super().__init__()
        self.account: MailAccount | None = None
        self.selected: SelectedFolder | None = None
        self.enabled: set[str] = set()
        self.reader: CommandReader | None = None

    # --- connection ------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        # A response written in two parts must not wait for the client's delayed ACK (under
        # implicit TLS the TCP transport is the TLS layer's own).
        tcp = getattr(self.transport, "transport", self.transport)
        if ITCPTransport.providedBy(tcp):
            tcp.setTcpNoDelay(True)
        super().connectionMade()
        self.send(b"* OK [CAPABILITY %s] %s IMAP4rev1 ready"
                  % (self.capabilities(), self.factory.hostname.encode()))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.deselect()
        if self.account is not None:
            account, self.account = self.account, None
            defer.ensureDeferred(self.factory.accounts.release(account)).addErrback(
                lambda failure: log.failure("closing the mail account failed", failure))

    def _drop_input(self) -> None:
        """Forget the commands received and not run yet, and the literal being received."""
        if self.reader is not None:
            self.reader.close()
        for event in self._pending:
            _discard_literals(event)
        self._pending.clear()

    def send_lines(self, lines: list[bytes]) -> None:
        if lines and not self._closing:
            self.transport.writeSequence([line + b"\r\n" for line in lines])

    # --- input -----------------------------------------------------------------------------------

    def events(self, data: bytes) -> Iterator[RawCommand | Refused]:
        assert self.reader is not None
        for event in self.reader.feed(data):
            if isinstance(event, ContinuationNeeded):
                self.send(b"+ Ready for literal data")
            else:
                yield event

    def command(self, event: RawCommand | Refused) -> Any:
        if isinstance(event, Refused):
            code = f"[{event.code}] " if event.code else ""
            self.send(f"{event.tag or '*'} BAD {code}{event.text}".encode())
            return None
        try:
            return parse_command(event)
        except CommandError as e:
            _discard_literals(event)
            self.send(f"{e.tag or '*'} BAD {e.text}".encode())
            return None

    async def _run(self, command: Any) -> None:
        name, tag = command.name, command.tag
        try:
            try:
                allowed = STATES.get(name)
                handler = getattr(self, f"cmd_{name}", None)
                if allowed is None or handler is None:
                    raise Bad(f"unknown command {name}")
                if self.state not in allowed:
                    raise Bad(f"{name} is not allowed {self._state_text()}")
                done = await handler(command)
            finally:
                for value in command.args:
                    _discard_literals(value)
        except Bad as e:
            self._complete(tag, "BAD", e.text, e.code, name)
        except No as e:
            self._complete(tag, "NO", e.text, e.code, name)
        except ConnectionError:
            return
        except Exception:  # noqa: BLE001 -- a bug in one command must not end the session
            log.failure("IMAP {command} failed in session {session_id}", command=name,
                        session_id=self.session_id)
            self._complete(tag, "NO", "internal error, try again", "SERVERBUG", name)
        else:
            if done is not None:
                self._complete(tag, "OK", done.text, done.code, name)

    def _complete(self, tag: str, status: str, text: str, code: str | None, name: str) -> None:
        if self.selected is not None and name != "LOGOUT":
            self.send_lines(self.selected.updates(allow_expunge=name not in NO_EXPUNGE_DURING))
        self.send(f"{tag} {status} {f'[{code}] ' if code else ''}{text}".encode("utf-8"))

    def _state_text(self) -> str:
        return {NOT_AUTHENTICATED: "before login", AUTHENTICATED: "without a selected folder",
                SELECTED: "with a folder selected"}.get(self.state, "now")

    # --- any state ---------------------------------------------------------------------------------

    def capabilities(self) -> bytes:
        words = list(BASE_CAPABILITIES)
        if self.state == NOT_AUTHENTICATED:
            if self.tls:
                words.append("AUTH=PLAIN")
            else:
                words += ["STARTTLS", "LOGINDISABLED"] if self.factory.tls_creator else []
        words.append(f"APPENDLIMIT={self.factory.max_literal}")
        return " ".join(words).encode()

    async def cmd_CAPABILITY(self, command: Any) -> Done:
        self.send(b"* CAPABILITY " + self.capabilities())
        return Done("CAPABILITY completed")

    async def cmd_NOOP(self, command: Any) -> Done:
        """RFC 3501 6.1.2: also the way clients poll for new mail."""
        if self.selected is not None:
            await self.account.sync(self.selected.folder)
        return Done("NOOP completed")

    async def cmd_LOGOUT(self, command: Any) -> None:
        self.send(b"* BYE Logging out")
        self.send(f"{command.tag} OK LOGOUT completed".encode())
        self.state = LOGOUT
        self.close()

    async def cmd_ID(self, command: Any) -> Done:
        """RFC 2971: say who we are; the client's list is only logged."""
        self.send(b'* ID ("name" "cloudmail")')
        return Done("ID completed")

    # --- not authenticated -------------------------------------------------------------------------

    async def cmd_STARTTLS(self, command: Any) -> Done | None:
        """RFC 3501 6.2.1 / RFC 2595: anything pipelined after STARTTLS is dropped, unread."""
        if self.tls or self.factory.tls_creator is None:
            raise Bad("TLS is active already" if self.tls else "STARTTLS is not available")
        self.send(f"{command.tag} OK Begin TLS negotiation now".encode())
        self.start_tls()
        return None

    async def cmd_LOGIN(self, command: Any) -> Done:
        """RFC 3501 6.2.3: the full mailbox address and its password, only inside TLS."""
        if not self.tls:
            raise No("LOGIN is disabled before STARTTLS", "PRIVACYREQUIRED")
        if len(command.args) != 2:
            raise Bad("LOGIN needs a user name and a password")
        username, password = (_text(a) for a in command.args)
        return await self._authenticate(username, password)

    async def cmd_AUTHENTICATE(self, command: Any) -> Done:
        """RFC 3501 6.2.2 with SASL PLAIN (RFC 4616) and an initial response (RFC 4959)."""
        if not self.tls:
            raise No("AUTHENTICATE is disabled before STARTTLS", "PRIVACYREQUIRED")
        if not command.args or _text(command.args[0]).upper() != "PLAIN":
            raise No("only AUTHENTICATE PLAIN is supported", "CANNOT")
        if len(command.args) > 2:
            raise Bad("AUTHENTICATE takes a mechanism and an optional initial response")
        if len(command.args) == 2:
            response = _text(command.args[1])
            if response == "=":
                response = ""
        else:
            self.send(b"+ ")
            line = await self.next_line()
            response = b"".join(line.texts).decode("ascii", "replace").strip()
        if response == "*":
            raise Bad("authentication cancelled")
        try:
            decoded = base64.b64decode(response, validate=True).decode("utf-8")
            _authzid, username, password = decoded.split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise Bad("malformed PLAIN response") from None
        if _authzid and _authzid != username:
            raise No("acting as another user is not allowed", "AUTHORIZATIONFAILED")
        return await self._authenticate(username, password)

    async def _authenticate(self, username: str, password: str) -> Done:
        try:
            login = await self.check_password(username, password)
            address = parse_address(login.mailbox, app=None)
        except (AuthenticationFailed, AddressError):
            raise No("Authentication failed", "AUTHENTICATIONFAILED") from None
        except DirectoryUnavailable:
            raise No("the directory is unavailable, try again later", "UNAVAILABLE") from None
        self.account = await self.factory.accounts.open(address)
        self.logged_in(login.mailbox)
        return Done("Logged in", f"CAPABILITY {self.capabilities().decode()}")

    def enter_selected(self, view: SelectedFolder) -> None:
        self.selected = view
        self.state = SELECTED

    def deselect(self) -> None:
        """Leave the selected folder (CLOSE, UNSELECT, a new SELECT, logout)."""
        if self.selected is not None:
            self.selected = None
            if self.state == SELECTED:
                self.state = AUTHENTICATED


def _text(value: object) -> str:
    """An astring argument as text (quoted strings and literals are UTF-8 bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, LiteralFile):
        raise Bad("this argument is too big")
    if isinstance(value, list):
        raise Bad("a string was expected, not a list")
    return str(value)


def _discard_literals(value: object) -> None:
    """Remove the spool files of big literals nobody took."""
    if isinstance(value, LiteralFile):
        value.discard()
    elif isinstance(value, RawCommand):
        for literal in value.literals:
            _discard_literals(literal)
    elif isinstance(value, list):
        for item in value:
            _discard_literals(item)


class ImapFactory(Factory):
    """Builds `ImapServer`s for one listener (`imap` with STARTTLS, or `imaps` wrapped in TLS)."""

    protocol = ImapServer

    def __init__(self, hostname: str, authenticator: Authenticator, accounts: MailAccounts,
                 throttle: LoginThrottle, spool_dir: Path,
                 tls_creator: IOpenSSLServerConnectionCreator | None = None,
                 max_literal: int = 64 * 1024 * 1024) -> None:
        self.hostname = hostname
        self.authenticator = authenticator
        self.accounts = accounts
        self.throttle = throttle
        self.spool_dir = spool_dir
        self.tls_creator = tls_creator
        self.max_literal = max_literal

    def new_reader(self) -> CommandReader:
        return CommandReader(spool_dir=self.spool_dir, max_literal=self.max_literal)


Handler = Callable[[Any], Any]
