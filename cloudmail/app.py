"""The composition root: every component built once, lazily, from the config.

`makeService` and `cloudmail-admin` build a `Container` and ask it for what they need; tests build
the same container with a test config. Nothing else constructs components, so how a part is made
is written in one place.
"""

from __future__ import annotations

import os
import secrets
from functools import cached_property
from pathlib import Path

from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from cloudmail.accounts.store import AccountStore
from cloudmail.admin.service import AdminService
from cloudmail.config import Config
from cloudmail.database import Database
from cloudmail.delivery import Delivered, LocalDelivery
from cloudmail.directory.throttle import LoginThrottle
from cloudmail.imap.server import ImapFactory
from cloudmail.mailstore.account import MailAccounts
from cloudmail.directory.builtin import BuiltinDirectory
from cloudmail.directory.cred import Authenticator, MailboxChecker
from cloudmail.dns import Resolver
from cloudmail.address import AddressError, normalize_domain
from cloudmail.errors import NotFound
from cloudmail.interfaces import IDirectory
from cloudmail.mailer import Mailer
from cloudmail.mailstore.maildir import MaildirStore
from cloudmail.policy.blocklist import Blocklist, SenderBlocklist
from cloudmail.srs import Srs
from cloudmail.queue.relay import Relay
from cloudmail.queue.scheduler import OutboundQueue
from cloudmail.queue.store import QueueStore
from cloudmail.queue.transport import Transport, TransportSettings
from cloudmail.routing import Router
from cloudmail.sieve.filter import SieveFilter
from cloudmail.sieve.followups import FollowUpSender
from cloudmail.smtp.inbound import InboundBackend
from cloudmail.smtp.protocol import Limits, SmtpFactory
from cloudmail.smtp.sending import SubmissionBackend
from cloudmail.smtp.submission import SubmissionFactory
from cloudmail.threads import ThreadPools


class Container:
    """Holds the config and the components built from it (each one built on first use)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @cached_property
    def pools(self) -> ThreadPools:
        """Pools for blocking work: one db thread, auth per core, ldap per its pool size, io (disk)."""
        return ThreadPools({"db": 1, "auth": max(2, os.cpu_count() or 2),
                            "ldap": self.config.ldap.pool_size, "io": 4})

    @cached_property
    def database(self) -> Database:
        return Database(self.config.database.path, self.pools)

    @cached_property
    def accounts(self) -> AccountStore:
        return AccountStore(self.database)

    @cached_property
    def directory(self) -> IDirectory:
        if self.config.directory.backend == "ldap":
            from cloudmail.directory.ldap import LdapDirectory
            return LdapDirectory(self.config.ldap, self.pools)
        return BuiltinDirectory(self.database, self.pools)

    @cached_property
    def authenticator(self) -> Authenticator:
        return Authenticator(self.accounts, self.directory, self.pools,
                             generation=lambda: self.database.generation)

    @cached_property
    def checker(self) -> MailboxChecker:
        """The twisted.cred checker every login of every protocol goes through."""
        return MailboxChecker(self.authenticator)

    @cached_property
    def admin_service(self) -> AdminService:
        return AdminService(self.accounts, self.directory, self.pools)

    @cached_property
    def router(self) -> Router:
        """Who gets a message sent to an address (decided at RCPT time)."""
        return Router(self.accounts, self.directory)

    @cached_property
    def mailstore(self) -> MaildirStore:
        """The Maildirs, one per mailbox, under `data_dir/mail`."""
        return MaildirStore(self.config.server.data_dir / "mail", self.config.server.hostname)

    @cached_property
    def delivery(self) -> LocalDelivery:
        """Local delivery with each mailbox's Sieve script; what scripts send goes out through
        the mailer (which needs the delivery: wired here, after both exist)."""
        sieve = self.config.sieve
        scripts = SieveFilter(self.mailstore,
                              sieve.global_scripts or self.config.server.data_dir / "sieve-global",
                              max_redirects=sieve.max_redirects, max_actions=sieve.max_actions)
        delivery = LocalDelivery(self.mailstore, self.pools, self.config.server.hostname,
                                 sieve=scripts)
        delivery.observers.append(self._delivered)
        delivery.send_followups = lambda followups: self.followups.send(followups)
        return delivery

    @cached_property
    def followups(self) -> FollowUpSender:
        """Sends Sieve redirects (with SRS), vacation replies, notifications and bounces."""
        return FollowUpSender(self.mailer, self.srs, self.accounts, self.mailstore,
                              lambda f, *a: self.pools.run("io", f, *a),
                              self.config.server.hostname)

    @cached_property
    def srs(self) -> Srs:
        """Sender rewriting for forwarded mail, with a secret made on first use (mode 0600)."""
        path = self.config.server.data_dir / "srs.secret"
        return Srs(lambda: ensure_token(path).encode("ascii"), self.config.server.hostname)

    def _delivered(self, copies: list[Delivered]) -> None:
        """Open IMAP sessions see a new message at once (IDLE), not at their next poll."""
        for copy in copies:
            self.mail_accounts.delivered(copy.mailbox, copy.folder)

    @cached_property
    def mail_accounts(self) -> MailAccounts:
        """The mailboxes IMAP sessions have open, shared by all sessions of each."""
        return MailAccounts(self.mailstore, self.pools)

    @cached_property
    def login_throttle(self) -> LoginThrottle:
        """Failed-login delays, shared by every protocol with a login."""
        return LoginThrottle()

    def imap_factory(self, implicit_tls: bool = False) -> Factory:
        """The `imap` listener's factory (STARTTLS), or with `implicit_tls` the `imaps` one."""
        factory = ImapFactory(self.config.server.hostname, self.authenticator,
                              self.mail_accounts, self.login_throttle, self.spool_dir,
                              tls_creator=None if implicit_tls else self.certs.server_creator(),
                              max_literal=self.config.imap.max_append_size)
        if implicit_tls:
            return TLSMemoryBIOFactory(self.certs.server_creator(), False, factory)
        return factory

    def managesieve_factory(self) -> Factory:
        """The `managesieve` listener's factory (4190, STARTTLS): each mailbox's Sieve scripts."""
        from cloudmail.sieve.managesieve import ManageSieveFactory
        sieve = self.config.sieve
        return ManageSieveFactory(self.config.server.hostname, self.authenticator,
                                  self.login_throttle, self.mailstore,
                                  run_blocking=lambda f, *a: self.pools.run("io", f, *a),
                                  tls_creator=self.certs.server_creator(),
                                  max_scripts=sieve.max_scripts,
                                  max_script_size=sieve.max_script_size)

    @cached_property
    def resolver(self) -> Resolver:
        """DNS for the checks on mail (DNSBL, iprev, SPF, DKIM, DMARC) and for outbound MX."""
        dns = self.config.dns
        return Resolver(list(dns.nameservers), timeout=dns.timeout)

    @cached_property
    def ip_blocklist(self) -> Blocklist | None:
        """`[smtp] ip_blocklist`, re-read when it changes or on SIGHUP; None when not set."""
        path = self.config.smtp.ip_blocklist
        return Blocklist(path) if path is not None else None

    @cached_property
    def sender_blocklist(self) -> SenderBlocklist | None:
        """`[smtp] sender_blocklist`, re-read when it changes or on SIGHUP; None when not set."""
        path = self.config.smtp.sender_blocklist
        return SenderBlocklist(path) if path is not None else None

    @property
    def smtp_limits(self) -> Limits:
        """The MX listener's limits from `[smtp]`."""
        smtp = self.config.smtp
        return Limits(max_message_size=smtp.max_message_size, max_recipients=smtp.max_recipients,
                      max_connections_per_ip=smtp.max_connections_per_ip,
                      idle_timeout=smtp.idle_timeout)

    def inbound_backend(self) -> InboundBackend:
        """The MX policy: blocklists, DNSBL and iprev at connect, routing, SPF/DKIM/DMARC,
        local delivery."""
        smtp = self.config.smtp
        needs_dns = bool(smtp.dnsbl_zones) or smtp.iprev or smtp.authenticate
        return InboundBackend(self.router, self.delivery,
                              resolver=self.resolver if needs_dns else None,
                              dnsbl_zones=smtp.dnsbl_zones, iprev=smtp.iprev,
                              ip_blocklist=self.ip_blocklist,
                              sender_blocklist=self.sender_blocklist,
                              max_received_headers=smtp.max_received_headers,
                              authenticate=smtp.authenticate,
                              hostname=self.config.server.hostname,
                              run_in_thread=lambda f, *a: self.pools.run("io", f, *a),
                              srs=self.srs, mailer=self.mailer)

    def smtp_factory(self) -> SmtpFactory:
        """The MX listener's factory: routing at RCPT, local delivery after DATA, STARTTLS."""
        return SmtpFactory(self.config.server.hostname, self.inbound_backend(), self.spool_dir,
                           limits=self.smtp_limits, tls_creator=self.certs.server_creator(),
                           run_blocking=lambda f: self.pools.run("io", f))

    @cached_property
    def queue_store(self) -> QueueStore:
        """The outbound queue on disk, under `data_dir/queue`."""
        return QueueStore(self.config.server.data_dir / "queue")

    @cached_property
    def transport(self) -> Transport:
        """SMTP to other domains' MX, or to a relay, as `[queue]` and `[relay]` say."""
        queue, relay = self.config.queue, self.config.relay
        return Transport(self.resolver, TransportSettings(
            helo=self.config.server.hostname, mx_port=queue.mx_port, tls=queue.tls,
            timeout=queue.timeout, connect_timeout=queue.connect_timeout,
            verify_relay=relay.verify_certificate, relay_ca_file=relay.ca_file),
            run_blocking=lambda f: self.pools.run("io", f))

    @cached_property
    def outbound_queue(self) -> OutboundQueue:
        """The outbound queue's scheduler (a service: it loads the queue when started)."""
        return OutboundQueue(self.queue_store, self.transport, self.config.queue,
                             run_io=lambda f, *a, **k: self.pools.run("io", f, *a, **k),
                             relay_for=self.relay_for, notify=self._notify,
                             hostname=self.config.server.hostname)

    async def relay_for(self, sender: str) -> Relay | None:
        """The relay for mail from `sender`: its domain's own, else `[relay]`, else None (MX)."""
        try:
            domain = await self.accounts.get_domain(normalize_domain(sender.rpartition("@")[2]))
        except (NotFound, AddressError):
            pass
        else:
            own = Relay.of_domain(domain.relay)
            if own is not None:
                return own
        relay = self.config.relay
        if not relay.enabled:
            return None
        return Relay(relay.host, relay.port, relay.tls, relay.username or None,
                     relay.password or None)

    async def _notify(self, recipient: str, message: bytes) -> None:
        """Send a DSN (from `<>`) to a sender, here or elsewhere."""
        await self.mailer.send("", [recipient], message)

    @cached_property
    def mailer(self) -> Mailer:
        """Local delivery for our addresses, the outbound queue for the rest."""
        return Mailer(self.router, self.delivery, self.outbound_queue,
                      self.config.server.hostname)

    def submission_factory(self, implicit_tls: bool = False) -> Factory:
        """The `submission` listener's factory (STARTTLS, 587), or with `implicit_tls` the
        `submissions` one (465): AUTH after TLS, then the user's own mail only."""
        backend = SubmissionBackend(self.router, self.mailer, self.accounts,
                                    self.config.server.hostname,
                                    run_in_thread=lambda f, *a: self.pools.run("io", f, *a),
                                    hide_client_ip=self.config.submission.hide_client_ip)
        factory = SubmissionFactory(
            self.config.server.hostname, backend, self.spool_dir, limits=self.smtp_limits,
            tls_creator=None if implicit_tls else self.certs.server_creator(),
            run_blocking=lambda f: self.pools.run("io", f),
            authenticator=self.authenticator, throttle=self.login_throttle)
        if implicit_tls:
            return TLSMemoryBIOFactory(self.certs.server_creator(), False, factory)
        return factory

    @cached_property
    def certs(self):
        from cloudmail.tls import CertStore
        return CertStore(self.config.tls, self.config.server.hostname, self.config.server.data_dir)

    @property
    def spool_dir(self) -> Path:
        """Where SMTP DATA too big to keep in memory is written while it is being received."""
        return self.config.server.data_dir / "spool"

    async def close_mail_accounts(self) -> None:
        """Close the IMAP side's open mailboxes (their indexes) at shutdown, if any."""
        if "mail_accounts" in self.__dict__:
            await self.mail_accounts.close_all()

    def close_resolver(self) -> None:
        """Close the DNS resolver at shutdown, if one was made."""
        if "resolver" in self.__dict__:
            self.resolver.close()

    def prepare_data_dir(self) -> None:
        """Make the data folder and spool (mode 0700) and open the database, before serving."""
        data_dir = self.config.server.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool_dir.mkdir(exist_ok=True, mode=0o700)
        self.database.open()

    def admin_token(self) -> str:
        """The admin API's bearer token, made (mode 0600) on first start."""
        return ensure_token(self.config.admin.token_file)


def ensure_token(path: Path) -> str:
    """Read the token in `path`, or write a new random one there, readable by its owner only."""
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    return token
