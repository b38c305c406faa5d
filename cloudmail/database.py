"""The SQLite database behind the store, reached only from its own thread.

Every read and write runs in the `db` thread pool (one thread), as one transaction: the function
given to `transact` gets a connection inside `BEGIN IMMEDIATE` and its changes commit when it
returns, or roll back when it raises. The reactor never waits on the disk. WAL mode and a busy
timeout let `cloudmail-admin` use the same file while the server runs.

Another database can be put behind the store later by giving the store functions another
connection of the DB-API kind; nothing outside `cloudmail/accounts` and `cloudmail/directory`
writes SQL.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred

from cloudmail.schema import MIGRATIONS
from cloudmail.threads import ThreadPools

#: The database file's mode: it holds secrets (see `Database._connect`).
FILE_MODE = 0o600

T = TypeVar("T")


def now() -> str:
    """The current time as stored in the database (UTC, ISO 8601, seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class SchemaTooNew(Exception):
    """The database was written by a newer cloudmail than this one."""


class Database:
    """One SQLite file, its schema kept current, used from the `db` thread only."""

    def __init__(self, path: Path, pools: ThreadPools) -> None:
        self.path = path
        self._pools = pools
        self._conn: sqlite3.Connection | None = None
        #: Goes up after every transaction that changed the file, ours or another process's
        #: (`cloudmail-admin`); read caches keyed on it never serve data older than a change.
        self.generation = 0
        self._version: tuple[int, int] | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Password hashes, DKIM private keys and relay passwords: owner only. SQLite gives
            # its -wal and -shm files the main file's mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE))
            os.chmod(self.path, FILE_MODE)
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                   timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            migrate(conn)
            self._conn = conn
        return self._conn

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._note_changes(conn)
        return result

    def _note_changes(self, conn: sqlite3.Connection) -> None:
        """Bump `generation` if the file changed since last seen: our own writes show in
        `total_changes`, other connections' commits in `PRAGMA data_version`."""
        version = (conn.total_changes, conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self._version:
            self._version = version
            self.generation += 1

    def check_for_changes(self) -> Deferred[None]:
        """Notice commits by other processes (run every second or so by the service)."""
        return self.transact(lambda conn: None)

    def transact(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run `fn(connection, *args)` as one transaction in the db thread; fire with its result."""
        return self._pools.run("db", self._run, fn, args)

    def open(self) -> None:
        """Open the file and bring its schema up to date, at start-up, before serving anyone."""
        self._connect()

    def close(self) -> Deferred[None]:
        """Close the connection (in its thread)."""
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        return self._pools.run("db", close)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations the file has not seen yet, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise SchemaTooNew(f"database schema version {version} is newer than this cloudmail "
                           f"({len(MIGRATIONS)})")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
