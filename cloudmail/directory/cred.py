"""Logging in: the full address of a mailbox and its owner's password.

`alice@example.com` and `alice@example.org` are both Alice, with her one directory password; an
alias is never a login name (as in the model); an app mailbox (`name.app@domain`) logs in with its
own generated password; a group mailbox cannot log in. Every protocol front end (SMTP AUTH, IMAP,
ManageSieve) uses `MailboxChecker`, a twisted.cred checker, so the rule lives here once.

A successful login is remembered for `CACHE_SECONDS` (as Dovecot's auth cache does), keyed on
the address and an HMAC of the password under a key that lives only in this process, so an
application that connects once per message pays for one argon2 check a minute, not one each
time. Any change to the address book (the database's generation) forgets everything, so a
changed password or a removed mailbox counts at once; a password changed in LDAP counts after
at most `CACHE_SECONDS`. Failures are never remembered.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from cloudmail.address import AddressError, parse_address
from cloudmail.directory import passwords
from cloudmail.errors import AuthenticationFailed
from cloudmail.interfaces import IAccounts, IDirectory
from cloudmail.threads import ThreadPools

log = Logger()

#: How long a successful login is remembered, and for how many logins at most.
CACHE_SECONDS = 60.0
CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Login:
    """Who logged in: the mailbox address used, and the directory user (None for an app)."""

    mailbox: str
    username: str | None


class Authenticator:
    """Checks a mailbox address and password against the address book and the directory."""

    def __init__(self, accounts: IAccounts, directory: IDirectory, pools: ThreadPools, *,
                 generation: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._accounts = accounts
        self._directory = directory
        self._pools = pools
        self._generation = generation
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._cache: dict[tuple[str, bytes], tuple[float, int, Login]] = {}

    def _remembered(self, login: str, password: str) -> tuple[tuple[str, bytes], Login | None]:
        key = (login.lower(), hmac.new(self._key, password.encode("utf-8", "surrogatepass"),
                                       hashlib.sha256).digest())
        found = self._cache.get(key)
        if found is not None:
            expires, generation, result = found
            if expires > self._clock() and generation == self._generation():
                return key, result
            del self._cache[key]
        return key, None

    async def authenticate(self, login: str, password: str) -> Login:
        """Fire with the `Login`; AuthenticationFailed or DirectoryUnavailable otherwise."""
        key, result = self._remembered(login, password)
        if result is not None:
            return result
        generation = self._generation()
        result = await self._check(login, password)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = (self._clock() + CACHE_SECONDS, generation, result)
        return result

    async def _refuse(self, password: str) -> Login:
        await self._pools.run("auth", passwords.burn_time, password)
        raise AuthenticationFailed()

    async def _check(self, login: str, password: str) -> Login:
        try:
            address = parse_address(login, app=None)
        except AddressError:
            return await self._refuse(password)
        mailbox = await self._accounts.find_mailbox(address)
        if mailbox is None or mailbox.owner_type == "group" or not password:
            return await self._refuse(password)
        if mailbox.owner_type == "app":
            stored = await self._accounts.app_password_hash(address)
            if not stored or not await self._pools.run("auth", passwords.verify_password, stored,
                                                       password):
                raise AuthenticationFailed()
            return Login(str(address), None)
        user = await self._directory.authenticate(mailbox.owner, password)
        return Login(str(address), user.username)


@implementer(ICredentialsChecker)
class MailboxChecker:
    """A twisted.cred checker: the avatar id is the mailbox address that logged in.

    A wrong login fails with UnauthorizedLogin; DirectoryUnavailable passes through so that the
    protocol answers with a temporary failure instead of "wrong password".
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:
        username = credentials.username
        password = credentials.password
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")

        async def check() -> str:
            try:
                login = await self._authenticator.authenticate(username, password)
            except AuthenticationFailed:
                log.info("login failed for {login}", login=username)
                raise UnauthorizedLogin()
            return login.mailbox
        return ensureDeferred(check())
