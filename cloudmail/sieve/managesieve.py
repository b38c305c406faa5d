"""Our ManageSieve server (RFC 5804) on a Twisted `Protocol`, and its factory.

Users upload, check, list, fetch, rename, delete and activate the Sieve scripts of their mailbox
(stored by `cloudmail.sieve.scripts`, as Dovecot stores them). Like our IMAP server (the session
plumbing both share is `cloudmail.session`):

- Before TLS, `SASL` is advertised empty and AUTHENTICATE is refused (`NO (ENCRYPT-NEEDED)`);
  STARTTLS drops whatever the client pipelined after it, and the capabilities are sent again
  once TLS is on (RFC 5804 2.2). Only SASL PLAIN (RFC 4616), with or without an initial response.
- A failed login is answered after the shared `LoginThrottle`'s delay; the session ends with
  `BYE` after `MAX_LOGIN_FAILURES`.
- Commands run one at a time, in order; a bad or unknown command gets `NO` and the session goes
  on; a handler that fails unexpectedly answers `NO` and the session goes on.

The wire (RFC 5804 4): a command is a line of atoms and strings; a string is quoted (`"…"` with
`\\"` and `\\\\`) or a literal `{n+}` CRLF n octets (`{n}` is taken the same way: ManageSieve has
no continuation response, so a client sends the octets at once). A literal over the size limit is
refused as soon as its `{n}` arrives, before its octets are read; they are skipped, unread, with
the rest of the command. Scripts must be UTF-8 and are checked with
`cloudmail.sieve.checker.compile_script`; an error answers `NO "line L, column C: …"`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from cloudmail.address import AddressError, parse_address
from cloudmail.directory.cred import Authenticator
from cloudmail.directory.throttle import LoginThrottle
from cloudmail.errors import AuthenticationFailed, DirectoryUnavailable
from cloudmail.mailstore.maildir import MaildirStore
from cloudmail.sieve import scripts
from cloudmail.sieve.checker import SUPPORTED_EXTENSIONS, compile_script
from cloudmail.sieve.scripts import ScriptError, ScriptStore
from cloudmail.session import (AUTHENTICATED, LOGIN_TIMEOUT, LOGOUT, NOT_AUTHENTICATED,
                               CommandSession)

log = Logger()

IMPLEMENTATION = "cloudmail"
#: The longest command text (without its literals).
MAX_LINE = 8 * 1024
#: RFC 5804 4: a quoted string holds at most 1024 octets; longer text goes as a literal.
MAX_QUOTED = 1024
_MARKER = re.compile(rb"\{(\d{1,20})(\+?)\}\Z")
_TAIL = 32
ANY = (NOT_AUTHENTICATED, AUTHENTICATED)
STATES: dict[str, tuple[str, ...]] = {
    "CAPABILITY": ANY, "LOGOUT": ANY, "NOOP": ANY,
    "STARTTLS": (NOT_AUTHENTICATED,), "AUTHENTICATE": (NOT_AUTHENTICATED,),
    "UNAUTHENTICATE": (AUTHENTICATED,), "HAVESPACE": (AUTHENTICATED,),
    "PUTSCRIPT": (AUTHENTICATED,), "LISTSCRIPTS": (AUTHENTICATED,),
    "SETACTIVE": (AUTHENTICATED,), "GETSCRIPT": (AUTHENTICATED,),
    "DELETESCRIPT": (AUTHENTICATED,), "RENAMESCRIPT": (AUTHENTICATED,),
    "CHECKSCRIPT": (AUTHENTICATED,),
}


# --- the wire --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    """One command: `texts[i]` is followed by `literals[i]` (the markers removed)."""

    texts: list[bytes]
    literals: list[bytes]


@dataclass(frozen=True)
class Refused:
    """A command dropped by the reader (too long); answered `NO (<code>) "<text>"`."""

    text: str
    code: str | None


class Atom(str):
    """A bare word of a command (its name, a number)."""


class SyntaxProblem(Exception):
    pass


class LineReader:
    """Splits the client's bytes into commands; `feed` returns the events they complete."""

    def __init__(self, max_line: int = MAX_LINE, max_literal: int = scripts.MAX_SCRIPT_SIZE) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self._piece = bytearray()
        self._texts: list[bytes] = []
        self._literals: list[bytes] = []
        self._length = 0
        self._left: int | None = None
        self._literal = bytearray()
        self._skip = 0
        self._discarding = False
        self._tail = b""

    def feed(self, data: bytes) -> list[Line | Refused]:
        events: list[Line | Refused] = []
        position, end = 0, len(data)
        while position < end:
            if self._skip:
                taken = min(self._skip, end - position)
                self._skip -= taken
                position += taken
            elif self._left is not None:
                taken = min(self._left, end - position)
                self._literal += data[position:position + taken]
                self._left -= taken
                position += taken
                if self._left == 0:
                    self._finish_literal()
            else:
                newline = data.find(b"\n", position)
                stop = end if newline == -1 else newline
                chunk = data[position:stop]
                position = stop + 1
                if self._discarding:
                    self._tail = (self._tail + chunk)[-_TAIL:]
                    if newline != -1:
                        self._discarded_line_end()
                    continue
                self._piece += chunk
                if newline != -1:
                    self._line_end(events)
                elif self._length + len(self._piece) > self.max_line + 1:
                    events.append(Refused("command line too long", None))
                    self._tail = bytes(self._piece[-_TAIL:])
                    self._drop()
                    self._discarding = True
        return events

    def _line_end(self, events: list[Line | Refused]) -> None:
        piece = bytes(self._piece)
        self._piece.clear()
        text = piece[:-1] if piece.endswith(b"\r") else piece
        if self._length + len(text) > self.max_line:
            events.append(Refused("command line too long", None))
            self._tail = text[-_TAIL:]
            self._drop()
            self._discarded_line_end()
            return
        marker = _MARKER.search(text)
        if marker is None:
            self._texts.append(text)
            events.append(Line(self._texts, self._literals))
            self._texts, self._literals = [], []
            self._length = 0
            return
        size = int(marker.group(1))
        if size > self.max_literal or sum(map(len, self._literals)) + size > 2 * self.max_literal:
            events.append(Refused(f"a string can be at most {self.max_literal} octets",
                                  "QUOTA/MAXSIZE"))
            self._drop()
            self._skip, self._discarding, self._tail = size, True, b""
            return
        self._texts.append(text[:marker.start()])
        self._length += len(text)
        self._left = size
        if size == 0:
            self._finish_literal()

    def _discarded_line_end(self) -> None:
        """A line of a dropped command ended: skip the literal it announces, or stop dropping."""
        tail, self._tail = self._tail, b""
        tail = tail[:-1] if tail.endswith(b"\r") else tail
        marker = _MARKER.search(tail)
        if marker is not None:
            self._skip, self._discarding = int(marker.group(1)), True
        else:
            self._discarding = False

    def _finish_literal(self) -> None:
        self._literals.append(bytes(self._literal))
        self._literal = bytearray()
        self._left = None

    def _drop(self) -> None:
        self._texts, self._literals = [], []
        self._piece.clear()
        self._literal = bytearray()
        self._left = None
        self._length = 0


def parse_line(line: Line) -> list[Atom | bytes]:
    """The words of a command: atoms, and strings (quoted or literal) as bytes."""
    words: list[Atom | bytes] = []
    for index, text in enumerate(line.texts):
        position = 0
        while position < len(text):
            char = text[position:position + 1]
            if char in (b" ", b"\t"):
                position += 1
            elif char == b'"':
                value = bytearray()
                position += 1
                while True:
                    if position >= len(text):
                        raise SyntaxProblem("unterminated quoted string")
                    char = text[position:position + 1]
                    if char == b"\\":
                        escaped = text[position + 1:position + 2]
                        if escaped not in (b'"', b"\\"):
                            raise SyntaxProblem("only \\\" and \\\\ may be escaped in a quoted "
                                                "string")
                        value += escaped
                        position += 2
                    elif char == b'"':
                        position += 1
                        break
                    else:
                        value += char
                        position += 1
                if len(value) > MAX_QUOTED:
                    raise SyntaxProblem(f"a quoted string holds at most {MAX_QUOTED} octets")
                words.append(bytes(value))
            else:
                stop = position
                while stop < len(text) and text[stop:stop + 1] not in (b" ", b"\t", b'"'):
                    stop += 1
                word = text[position:stop]
                if not re.fullmatch(rb"[A-Za-z0-9]+", word):
                    raise SyntaxProblem(f"unexpected {word[:40].decode('ascii', 'replace')!r}")
                words.append(Atom(word.decode("ascii")))
                position = stop
        if index < len(line.literals):
            words.append(line.literals[index])
    return words


def quote(text: str) -> bytes:
    """`text` as an RFC 5804 string: quoted when it can be, else a literal."""
    data = text.encode("utf-8")
    if len(data) <= MAX_QUOTED and not any(c in data for c in b"\r\n\0"):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n%s" % (len(data), data)


class No(Exception):
    """Answer the command with `NO [(code)] "text"`."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def _string(value: Atom | bytes, what: str) -> str:
    if isinstance(value, Atom):
        raise No(f"{what} must be a string (quoted or literal)")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise No(f"{what} must be UTF-8") from None


# --- the session -----------------------------------------------------------------------------------

class ManageSieveServer(CommandSession):
    """One ManageSieve session."""

    PROTOCOL = "ManageSieve"
    IDLE_BYE = b'BYE (TRYLATER) "idle for too long"'
    TOO_MANY_FAILURES = b'BYE "Too many failed logins"'
    factory: ManageSieveFactory

    def __init__(self) -> None:
        super().__init__()
        self.store: ScriptStore | None = None
        self.reader = LineReader()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.send_capabilities()
        self.send(b'OK "' + self.factory.hostname.encode() + b' ManageSieve ready"')

    def respond(self, status: str, text: str, code: str | None = None) -> None:
        code_part = f"({code}) ".encode() if code else b""
        self.send(status.encode() + b" " + code_part + quote(text))

    # --- input -------------------------------------------------------------------------------

    def command(self, event: Line | Refused) -> Line | None:
        if isinstance(event, Refused):
            self.respond("NO", event.text, event.code)
            return None
        return event

    async def _run(self, line: Line) -> None:
        name = "?"
        try:
            try:
                words = parse_line(line)
            except SyntaxProblem as e:
                raise No(f"syntax error: {e}") from None
            if not words:
                raise No("empty command")
            if not isinstance(words[0], Atom):
                raise No("a command starts with its name")
            name = words[0].upper()
            allowed = STATES.get(name)
            if allowed is None:
                raise No(f"unknown command {name[:40]}")
            if self.state not in allowed:
                raise No(f"{name} is not allowed "
                         + ("before logging in" if self.state == NOT_AUTHENTICATED
                            else "after logging in"))
            done = await getattr(self, f"cmd_{name}")(words[1:])
        except No as e:
            self.respond("NO", e.text, e.code)
        except ScriptError as e:
            self.respond("NO", e.text, e.code)
        except ConnectionError:
            return
        except Exception:  # noqa: BLE001 -- a bug in one command must not end the session
            log.failure("ManageSieve {command} failed in session {session_id}", command=name,
                        session_id=self.session_id)
            self.respond("NO", "internal error, try again", "TRYLATER")
        else:
            if done is not None:
                if isinstance(done, tuple):
                    self.respond("OK", done[0], done[1])
                else:
                    self.respond("OK", done)

    def _blocking(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return self.factory.run_blocking(f, *args)

    @staticmethod
    def _arguments(words: list, count: int | tuple[int, int], usage: str) -> list:
        low, high = (count, count) if isinstance(count, int) else count
        if not low <= len(words) <= high:
            raise No(f"usage: {usage}")
        return words

    # --- any state ---------------------------------------------------------------------------

    def capability_lines(self) -> list[bytes]:
        sasl = "PLAIN" if self.tls and self.state == NOT_AUTHENTICATED else ""
        lines = [(b'"IMPLEMENTATION" ' + quote(IMPLEMENTATION)),
                 b'"SIEVE" ' + quote(" ".join(SUPPORTED_EXTENSIONS)),
                 b'"SASL" ' + quote(sasl)]
        if not self.tls and self.factory.tls_creator is not None:
            lines.append(b'"STARTTLS"')
        if self.state == AUTHENTICATED and self.login:
            lines.append(b'"OWNER" ' + quote(self.login))
        lines += [b'"UNAUTHENTICATE"', b'"VERSION" "1.0"']
        return lines

    def send_capabilities(self) -> None:
        for line in self.capability_lines():
            self.send(line)

    async def cmd_CAPABILITY(self, words: list) -> str:
        self._arguments(words, 0, "CAPABILITY")
        self.send_capabilities()
        return "Capability completed"

    async def cmd_NOOP(self, words: list) -> str | tuple[str, str]:
        """RFC 5804 2.14: an optional string comes back in a TAG response code."""
        self._arguments(words, (0, 1), 'NOOP ["tag"]')
        if words:
            tag = _string(words[0], "the tag")
            return "Done", "TAG " + quote(tag).decode("utf-8")
        return "Done"

    async def cmd_LOGOUT(self, words: list) -> None:
        self.respond("OK", "Logout completed")
        self.state = LOGOUT
        self.close()

    # --- not authenticated -------------------------------------------------------------------

    async def cmd_STARTTLS(self, words: list) -> None:
        self._arguments(words, 0, "STARTTLS")
        if self.tls or self.factory.tls_creator is None:
            raise No("TLS is active already" if self.tls else "STARTTLS is not available")
        self.respond("OK", "Begin TLS negotiation now")
        self.start_tls()
        # RFC 5804 2.2: after a successful TLS negotiation, the capabilities again.
        self.send_capabilities()
        self.respond("OK", "TLS negotiation successful")

    async def cmd_AUTHENTICATE(self, words: list) -> str:
        """RFC 5804 2.1 with SASL PLAIN (RFC 4616), the initial response optional."""
        self._arguments(words, (1, 2), 'AUTHENTICATE "PLAIN" ["initial response"]')
        mechanism = _string(words[0], "the mechanism")
        if not self.tls:
            raise No("authentication needs TLS: use STARTTLS first", "ENCRYPT-NEEDED")
        if mechanism.upper() != "PLAIN":
            raise No("only the PLAIN mechanism is supported")
        if len(words) == 2:
            response = _string(words[1], "the initial response")
        else:
            self.send(b'""')
            line = await self.next_line()
            if isinstance(line, Refused):
                raise No("authentication response too long")
            try:
                reply = parse_line(line)
            except SyntaxProblem:
                raise No("malformed authentication response") from None
            if len(reply) != 1:
                raise No("malformed authentication response")
            response = _string(reply[0], "the authentication response")
        if response.strip() == "*":
            raise No("authentication cancelled")
        try:
            decoded = base64.b64decode(response.strip(), validate=True).decode("utf-8")
            authzid, username, password = decoded.split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise No("malformed PLAIN response") from None
        if authzid and authzid != username:
            raise No("acting as another user is not allowed")
        return await self._authenticate(username, password)

    async def _authenticate(self, username: str, password: str) -> str:
        try:
            login = await self.check_password(username, password)
            address = parse_address(login.mailbox, app=None)
        except (AuthenticationFailed, AddressError):
            raise No("Authentication failed") from None
        except DirectoryUnavailable:
            raise No("the directory is unavailable, try again later", "TRYLATER") from None
        maildir = await self._blocking(self.factory.mailstore.ensure_folder, address)
        self.store = ScriptStore(maildir, max_scripts=self.factory.max_scripts,
                                 max_size=self.factory.max_script_size)
        self.logged_in(login.mailbox)
        return "Logged in"

    # --- authenticated -----------------------------------------------------------------------

    async def cmd_UNAUTHENTICATE(self, words: list) -> str:
        """RFC 5804 2.14.1: back to the non-authenticated state (TLS stays)."""
        self._arguments(words, 0, "UNAUTHENTICATE")
        self.state = NOT_AUTHENTICATED
        self.store = None
        self.login = None
        self.setTimeout(LOGIN_TIMEOUT)
        return "Unauthenticate completed"

    async def cmd_HAVESPACE(self, words: list) -> str:
        self._arguments(words, 2, 'HAVESPACE "name" size')
        name = _string(words[0], "the script name")
        if not isinstance(words[1], Atom) or not words[1].isdigit() or len(words[1]) > 20:
            raise No("the size must be a number")
        await self._blocking(self.store.check_space, name, int(words[1]))
        return "Putscript would succeed"

    async def cmd_PUTSCRIPT(self, words: list) -> str:
        self._arguments(words, 2, 'PUTSCRIPT "name" {size+} script')
        name = _string(words[0], "the script name")
        scripts.check_name(name)
        text = _string(words[1], "the script")
        await self._check(text)
        await self._blocking(self.store.put, name, text)
        return "Putscript completed"

    async def cmd_CHECKSCRIPT(self, words: list) -> str:
        self._arguments(words, 1, "CHECKSCRIPT {size+} script")
        await self._check(_string(words[0], "the script"))
        return "Script is valid"

    async def _check(self, text: str) -> None:
        """NO with the line and column of the first error, if the script is not valid."""
        from cloudmail.sieve.ast import SieveError
        try:
            await self._blocking(compile_script, text)
        except SieveError as e:
            raise No(f"line {e.position.line}, column {e.position.column}: {e.message}") \
                from None

    async def cmd_LISTSCRIPTS(self, words: list) -> str:
        self._arguments(words, 0, "LISTSCRIPTS")
        for name, active in await self._blocking(self.store.listing):
            self.send(quote(name) + (b" ACTIVE" if active else b""))
        return "Listscripts completed"

    async def cmd_SETACTIVE(self, words: list) -> str:
        self._arguments(words, 1, 'SETACTIVE "name"')
        await self._blocking(self.store.set_active, _string(words[0], "the script name"))
        return "Setactive completed"

    async def cmd_GETSCRIPT(self, words: list) -> str:
        self._arguments(words, 1, 'GETSCRIPT "name"')
        text = await self._blocking(self.store.get, _string(words[0], "the script name"))
        data = text.encode("utf-8")
        self.send(b"{%d}\r\n%s" % (len(data), data))
        return "Getscript completed"

    async def cmd_DELETESCRIPT(self, words: list) -> str:
        self._arguments(words, 1, 'DELETESCRIPT "name"')
        await self._blocking(self.store.delete, _string(words[0], "the script name"))
        return "Deletescript completed"

    async def cmd_RENAMESCRIPT(self, words: list) -> str:
        self._arguments(words, 2, 'RENAMESCRIPT "old name" "new name"')
        old = _string(words[0], "the script name")
        new = _string(words[1], "the new script name")
        await self._blocking(self.store.rename, old, new)
        return "Renamescript completed"


class ManageSieveFactory(Factory):
    """Builds `ManageSieveServer`s for the `managesieve` listener (4190, STARTTLS)."""

    protocol = ManageSieveServer

    def __init__(self, hostname: str, authenticator: Authenticator, throttle: LoginThrottle,
                 mailstore: MaildirStore, run_blocking: Callable[..., defer.Deferred[Any]],
                 tls_creator: IOpenSSLServerConnectionCreator | None = None, *,
                 max_scripts: int = scripts.MAX_SCRIPTS,
                 max_script_size: int = scripts.MAX_SCRIPT_SIZE) -> None:
        self.hostname = hostname
        self.authenticator = authenticator
        self.throttle = throttle
        self.mailstore = mailstore
        self.run_blocking = run_blocking
        self.tls_creator = tls_creator
        self.max_scripts = max_scripts
        self.max_script_size = max_script_size

    def new_reader(self) -> LineReader:
        return LineReader(max_literal=self.max_script_size)
