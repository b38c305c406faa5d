"""Logging in: the full address of a mailbox and its owner's password.

`alice@example.com` and `alice@example.org` are both Alice, with her one directory password; an
alias is never a login name (as in the model); an app mailbox (`name.app@domain`) logs in with its
own generated password; a group mailbox cannot log in. Every protocol front end (SMTP AUTH, IMAP,
ManageSieve) uses `MailboxChecker`, a twisted.cred checker, so the rule lives here once.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Login:
    """Who logged in: the mailbox address used, and the directory user (None for an app)."""

    mailbox: str
    username: str | None


class Authenticator:
    """Checks a mailbox address and password against the address book and the directory."""

    def __init__(self, accounts: IAccounts, directory: IDirectory, pools: ThreadPools) -> None:
        self._accounts = accounts
        self._directory = directory
        self._pools = pools

    async def _refuse(self, password: str) -> Login:
        await self._pools.run("auth", passwords.burn_time, password)
        raise AuthenticationFailed()

    async def authenticate(self, login: str, password: str) -> Login:
        """Fire with the `Login`; AuthenticationFailed or DirectoryUnavailable otherwise."""
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
