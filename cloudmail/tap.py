"""`twistd cloudmail`: the options and the service tree on one reactor.

Listeners bind in `privilegedStartService` (as root, for ports under 1024); everything that writes
to the data folder happens in `startService`, after twistd's `--uid/--gid` have dropped
privileges, so the files belong to the user the server runs as. A broken config, a port in use or
an unusable data folder stops the start with one line saying what is wrong.
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from cloudmail.app import Container
from cloudmail.config import load_config
from cloudmail.database import SchemaTooNew
from cloudmail.errors import ConfigError, DirectoryUnavailable
from cloudmail.smtp.spool import clear_spool

log = Logger()
#: Seconds between checks for address-book changes by other processes (`cloudmail-admin`).
DATABASE_CHECK_INTERVAL = 1.0


class Options(usage.Options):
    """twistd cloudmail [--config FILE] [--check-config]"""

    optParameters = [["config", "c", None, "The TOML config file (default: the embedded defaults)."]]
    optFlags = [["check-config", None, "Check the config, print the result and exit."]]


class Listener(strports.StreamServerEndpointService):
    """A listener that, when its port cannot be bound, says which one in one line."""

    def __init__(self, name: str, description: str, factory: Any) -> None:
        service = strports.service(description, factory)
        super().__init__(service.endpoint, factory)
        self._raiseSynchronously = True
        self.setName(name)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = e.socketError.strerror if hasattr(e.socketError, "strerror") else e.socketError
            raise SystemExit(f"cloudmail: cannot listen for {self.name} on {self.description!r}: "
                             f"{reason}")


class CloudmailService(MultiService):
    """The whole mail server: its listeners, TLS reloading and the thread pools."""

    def __init__(self, container: Container) -> None:
        super().__init__()
        self.container = container
        from cloudmail.admin.api import AdminApi
        self.admin_api = AdminApi(container)
        # Before the listeners, so that it stops after them (MultiService stops in reverse).
        container.outbound_queue.setServiceParent(self)
        for name, description in container.config.listen.enabled().items():
            if name == "admin":
                Listener(name, description, self.admin_api.site()).setServiceParent(self)
            elif name == "smtp":
                Listener(name, description, container.smtp_factory()).setServiceParent(self)
            elif name in ("submission", "submissions"):
                Listener(name, description, container.submission_factory(
                    implicit_tls=name == "submissions")).setServiceParent(self)
            elif name in ("imap", "imaps"):
                Listener(name, description,
                         container.imap_factory(implicit_tls=name == "imaps")).setServiceParent(self)
            elif name == "managesieve":
                Listener(name, description,
                         container.managesieve_factory()).setServiceParent(self)

    def _load_certs(self) -> None:
        try:
            self.container.certs.load()
        except ConfigError as e:
            raise SystemExit(f"cloudmail: {e}")

    def privilegedStartService(self) -> None:
        if self.container.config.tls.cert:
            self._load_certs()
        super().privilegedStartService()

    def startService(self) -> None:
        try:
            self.container.prepare_data_dir()
            self._clear_spool()
            self.admin_api.token = self.container.admin_token()
        except OSError as e:
            raise SystemExit(f"cloudmail: data folder {self.container.config.server.data_dir}: "
                             f"{e.strerror or e}")
        except (sqlite3.Error, SchemaTooNew) as e:
            raise SystemExit(f"cloudmail: database {self.container.config.database.path}: {e}")
        if not self.container.config.tls.cert:
            self._load_certs()
        from cloudmail.tls import CertReloadService
        CertReloadService(self.container.certs,
                          self.container.config.tls.reload_interval).setServiceParent(self)
        TimerService(DATABASE_CHECK_INTERVAL, self._check_database).setServiceParent(self)
        super().startService()
        ensureDeferred(self._check_directory())
        self._clean_maildir_tmp()
        log.info("cloudmail started as {hostname}, data in {data_dir}",
                 hostname=self.container.config.server.hostname,
                 data_dir=str(self.container.config.server.data_dir))

    def _clear_spool(self) -> None:
        """Remove the spool files a crash left (before any listener runs, so none is in use)."""
        removed = clear_spool(self.container.spool_dir)
        if removed:
            log.info("removed {count} unfinished message(s) a crash left in {spool}; none had "
                     "been acknowledged", count=removed, spool=str(self.container.spool_dir))

    def _clean_maildir_tmp(self) -> None:
        """Remove old crash left-overs from every Maildir's tmp/, in the background."""
        def done(removed: int) -> None:
            if removed:
                log.info("removed {count} stale file(s) from Maildir tmp/ folders", count=removed)
        self.container.pools.run("io", self.container.mailstore.clean_tmp).addCallbacks(
            done, lambda failure: log.failure("cannot clean Maildir tmp/ folders", failure))

    def _check_database(self) -> Deferred[None]:
        """Let look-up caches notice address-book changes made by `cloudmail-admin`."""
        return self.container.database.check_for_changes().addErrback(
            lambda failure: log.failure("cannot check the database for changes", failure))

    def stopService(self) -> Deferred[None]:
        """Stop listening, then let the directory and the store close, then the thread pools."""
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        await super().stopService()
        await self.container.close_mail_accounts()
        await self.container.directory.close()
        self.container.close_resolver()
        await self.container.database.close()
        self.container.pools.stopService()

    async def _check_directory(self) -> None:
        try:
            await self.container.directory.check()
        except DirectoryUnavailable as e:
            log.warn("the directory is unavailable ({reason}); logins fail temporarily until it "
                     "answers", reason=str(e))


def makeService(options: Options) -> IService:
    """Build the service tree from `--config`; a bad config ends the start with one clear line."""
    try:
        config = load_config(options["config"])
    except ConfigError as e:
        raise SystemExit(f"cloudmail: {e}")
    if options["check-config"]:
        print(f"cloudmail: {config.source or '<defaults>'}: config OK")
        sys.exit(0)
    return CloudmailService(Container(config))
