"""The submission listeners (`submission` 587 with STARTTLS, `submissions` 465 with implicit TLS):
our ESMTP server plus AUTH (RFC 4954), for users and apps sending mail.

AUTH PLAIN (RFC 4616, with or without an initial response) and AUTH LOGIN are offered only inside
TLS (RFC 8314 4: never a password in the clear), and MAIL is refused until the client has logged
in (`530 5.7.0`): these ports never take anonymous mail. Logging in is the same as for IMAP — the
full mailbox address and the directory password, or an app mailbox's own password — and failures
are answered after the same growing delay per IP and account (`directory.throttle`). What happens
to an authenticated message is the backend's business (`smtp.sending`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from twisted.internet import defer, reactor, task
from twisted.logger import Logger

from cloudmail.directory.cred import Authenticator
from cloudmail.directory.throttle import LoginThrottle
from cloudmail.errors import AuthenticationFailed, DirectoryUnavailable
from cloudmail.smtp import replies
from cloudmail.smtp.protocol import MailParams, SmtpFactory, SmtpServer, _ParamError
from cloudmail.smtp.replies import Reply

log = Logger()

AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure, try again later")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_MALFORMED = Reply(501, "5.5.2", "Malformed authentication response")
AUTH_UNKNOWN = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_TWICE = Reply(503, "5.5.1", "Already authenticated")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
MECHANISMS = ("PLAIN", "LOGIN")


class SubmissionServer(SmtpServer):
    """One submission session: the ESMTP server with AUTH after TLS and MAIL only after AUTH."""

    factory: SubmissionFactory

    def __init__(self) -> None:
        super().__init__()
        #: Set while an AUTH exchange waits for the client's next line.
        self._auth_step: Callable[[str], None] | None = None

    def extensions(self) -> list[str]:
        keywords = super().extensions()
        if self.session.tls:
            keywords.append("AUTH " + " ".join(MECHANISMS))
        return keywords

    def _command(self, raw: bytes) -> None:
        if self._auth_step is not None:
            step, self._auth_step = self._auth_step, None
            step(raw.decode("ascii", "replace").strip())
            return
        super()._command(raw)

    def do_MAIL(self, argument: str) -> Reply | None:
        """RFC 4954 6: MAIL only from an authenticated client."""
        if self.session.helo is not None and self.session.authenticated is None:
            return replies.MUST_STARTTLS if not self.session.tls else AUTH_REQUIRED
        return super().do_MAIL(argument)

    def _mail_params(self, raw: dict[str, str | None]) -> MailParams:
        """The base parameters, and AUTH=<…> (RFC 4954 5), which is accepted and ignored: the
        identity that counts is the session's own login."""
        if "AUTH" in raw and raw["AUTH"] is None:
            raise _ParamError(replies.SYNTAX_ERROR_IN_PARAMETERS.with_text("AUTH needs a value"))
        return super()._mail_params({k: v for k, v in raw.items() if k != "AUTH"})

    def do_AUTH(self, argument: str) -> Reply | None:
        """RFC 4954 4: `AUTH PLAIN [initial-response]` or `AUTH LOGIN`, inside TLS only."""
        if not self.session.tls:
            return AUTH_NEEDS_TLS
        if self.session.helo is None or not self.session.esmtp:
            return replies.HELO_FIRST
        if self.session.authenticated is not None:
            return AUTH_TWICE
        if self.envelope is not None:
            return replies.BAD_SEQUENCE.with_text("No AUTH during a mail transaction")
        mechanism, _, initial = argument.strip().partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            if initial:
                return self._plain(initial.strip())
            self._ask("", self._plain)
            return None
        if mechanism == "LOGIN":
            self._ask("Username:", self._login_user)
            return None
        return AUTH_UNKNOWN

    def _ask(self, prompt: str, step: Callable[[str], Reply | None]) -> None:
        """Send `334 <base64 prompt>` and give the client's next line to `step`."""
        def answered(line: str) -> None:
            if line == "*":
                self._send(AUTH_CANCELLED)
                return
            reply = step(line)
            if reply is not None:
                self._send(reply)
        self._auth_step = answered
        self.transport.write(b"334 " + base64.b64encode(prompt.encode()) + b"\r\n")

    def _plain(self, response: str) -> Reply | None:
        try:
            decoded = base64.b64decode(response if response != "=" else "", validate=True)
            authzid, username, password = decoded.decode("utf-8").split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return AUTH_MALFORMED
        if authzid and authzid != username:
            return AUTH_FAILED
        return self._check(username, password)

    def _login_user(self, response: str) -> Reply | None:
        try:
            username = base64.b64decode(response, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return AUTH_MALFORMED
        self._ask("Password:", lambda answer: self._login_password(username, answer))
        return None

    def _login_password(self, username: str, response: str) -> Reply | None:
        try:
            password = base64.b64decode(response, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return AUTH_MALFORMED
        return self._check(username, password)

    def _check(self, username: str, password: str) -> None:
        """Ask the authenticator; the reply (235, or 535 after the throttle's delay) comes
        when it is known, and later commands wait for it (RFC 2920 ordering)."""
        self._start_command(defer.ensureDeferred(self._authenticate(username, password)),
                            lambda reply: reply)

    async def _authenticate(self, username: str, password: str) -> Reply:
        throttle = self.factory.throttle
        try:
            login = await self.factory.authenticator.authenticate(username, password)
        except AuthenticationFailed:
            delay = throttle.failed(self.session.peer_ip, username)
            log.info("submission login failed for {username} from [{client_ip}]; answering in "
                     "{delay:.0f} s", username=username, client_ip=self.session.peer_ip,
                     delay=delay)
            if delay:
                await task.deferLater(reactor, delay, lambda: None)
            return AUTH_FAILED
        except DirectoryUnavailable:
            return AUTH_TEMPORARY
        throttle.succeeded(username)
        self.session.authenticated = login.mailbox
        log.info("submission login {mailbox} from [{client_ip}] session {session_id}",
                 mailbox=login.mailbox, client_ip=self.session.peer_ip,
                 session_id=self.session.id)
        return AUTH_OK


class SubmissionFactory(SmtpFactory):
    """Builds `SubmissionServer`s: an `SmtpFactory` with the login's authenticator and throttle."""

    protocol = SubmissionServer

    def __init__(self, *args: object, authenticator: Authenticator, throttle: LoginThrottle,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.authenticator = authenticator
        self.throttle = throttle
