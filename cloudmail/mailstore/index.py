"""The index of one mailbox's Maildir tree: folders, UIDs, flags and cached message structure.

IMAP needs what a Maildir does not keep: a UID per message that never changes and is never used
again in the folder (RFC 3501 2.3.1.1), the folder's UIDVALIDITY, keywords, a modification
sequence per change (RFC 7162 CONDSTORE), and — so that a big folder can be opened and listed
without reading every file — each message's size, internal date and, once computed, its ENVELOPE
and BODYSTRUCTURE. They live in one SQLite file per mailbox, `cloudmail-index.sqlite` at the top
of its Maildir (Dovecot keeps its `dovecot-uidlist` and indexes in the same place).

The Maildir stays the truth for what messages exist and for the system flags, which are in the
file names (`:2,FRS`): a rescan (`folder.scan`) reconciles the index with what other programs did.
Every method here is blocking and thread-safe (one lock around the connection): call it from
the io pool, never from the reactor.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

INDEX_FILE = "cloudmail-index.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (
    name TEXT PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highestmodseq INTEGER NOT NULL,
    subscribed INTEGER NOT NULL DEFAULT 0,
    new_mtime INTEGER NOT NULL DEFAULT 0,
    cur_mtime INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    folder TEXT NOT NULL,
    uid INTEGER NOT NULL,
    base TEXT NOT NULL,
    name TEXT NOT NULL,
    keywords TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    internal_date REAL NOT NULL,
    modseq INTEGER NOT NULL,
    envelope BLOB,
    structure BLOB,
    PRIMARY KEY (folder, uid)
);
CREATE TABLE IF NOT EXISTS pending_keywords (
    folder TEXT NOT NULL,
    base TEXT NOT NULL,
    keywords TEXT NOT NULL,
    PRIMARY KEY (folder, base)
);
"""


@dataclass(frozen=True)
class FolderRow:
    """A folder's counters as stored, and the directory mtimes (ns) seen at its last scan."""

    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool
    new_mtime: int
    cur_mtime: int


@dataclass(frozen=True)
class MessageRow:
    """One message as stored: `base` is the Maildir unique name (before `:2,`), `name` the file
    name in `cur/` as last seen (its info part holds the system flags)."""

    uid: int
    base: str
    name: str
    keywords: tuple[str, ...]
    size: int
    internal_date: float
    modseq: int


class MailIndex:
    """The SQLite index of one mailbox (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, statements: Iterable[tuple[str, tuple]]) -> None:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._conn.execute(sql, args)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def folders(self) -> list[FolderRow]:
        """Every folder the index knows, by name."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM folders ORDER BY name").fetchall()
        return [_folder(r) for r in rows]

    def folder(self, name: str) -> FolderRow | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM folders WHERE name = ?", (name,)).fetchone()
        return _folder(row) if row else None

    def add_folder(self, name: str, subscribed: bool = False) -> FolderRow:
        """Record a folder with a fresh UIDVALIDITY: later than any this mailbox ever used (kept
        in `counters`, so it survives the folder's deletion), so a folder deleted and made
        again never looks like the old one (RFC 3501 2.3.1.1)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM counters WHERE name = 'uidvalidity'").fetchone()
        uidvalidity = max(int(time.time()), (row[0] if row else 0) + 1)
        self._write([
            ("INSERT OR REPLACE INTO counters (name, value) VALUES ('uidvalidity', ?)",
             (uidvalidity,)),
            ("INSERT OR REPLACE INTO folders (name, uidvalidity, uidnext, highestmodseq, "
             "subscribed) VALUES (?, ?, 1, 1, ?)", (name, uidvalidity, int(subscribed)))])
        return FolderRow(name, uidvalidity, 1, 1, subscribed, 0, 0)

    def remove_folder(self, name: str) -> None:
        self._write([("DELETE FROM messages WHERE folder = ?", (name,)),
                     ("DELETE FROM folders WHERE name = ?", (name,))])

    def rename_folder(self, old: str, new: str) -> None:
        """Rename a folder and every folder under it (`old/…` → `new/…`), messages included."""
        statements = []
        for row in self.folders():
            if row.name == old or row.name.startswith(old + "/"):
                target = new + row.name[len(old):]
                statements += [("UPDATE folders SET name = ? WHERE name = ?", (target, row.name)),
                               ("UPDATE messages SET folder = ? WHERE folder = ?",
                                (target, row.name))]
        self._write(statements)

    def set_subscribed(self, name: str, subscribed: bool) -> None:
        self._write([("UPDATE folders SET subscribed = ? WHERE name = ?",
                      (int(subscribed), name))])

    def messages(self, folder: str) -> list[MessageRow]:
        """The folder's messages in UID order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT uid, base, name, keywords, size, internal_date, modseq FROM messages "
                "WHERE folder = ? ORDER BY uid", (folder,)).fetchall()
        return [MessageRow(r[0], r[1], r[2], tuple(r[3].split()) if r[3] else (), r[4], r[5],
                           r[6]) for r in rows]

    def pending_keywords(self, folder: str) -> dict[str, tuple[str, ...]]:
        """Keywords given to delivered messages (by file base name) not yet taken by a scan."""
        with self._lock:
            return {base: tuple(keywords.split()) for base, keywords in self._conn.execute(
                "SELECT base, keywords FROM pending_keywords WHERE folder = ?", (folder,))}

    def save_changes(self, folder: str, *, uidnext: int, highestmodseq: int,
                     added: Iterable[MessageRow] = (), updated: Iterable[MessageRow] = (),
                     removed: Iterable[int] = (), mtimes: tuple[int, int] | None = None,
                     taken: Iterable[str] = ()) -> None:
        """Record one batch of changes to a folder in one transaction (`taken`: the pending
        keywords now applied, by base name)."""
        statements: list[tuple[str, tuple]] = [
            ("UPDATE folders SET uidnext = ?, highestmodseq = ? WHERE name = ?",
             (uidnext, highestmodseq, folder))]
        if mtimes is not None:
            statements.append(("UPDATE folders SET new_mtime = ?, cur_mtime = ? WHERE name = ?",
                               (mtimes[0], mtimes[1], folder)))
        for row in added:
            statements.append((
                "INSERT INTO messages (folder, uid, base, name, keywords, size, internal_date, "
                "modseq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (folder, row.uid, row.base, row.name, " ".join(row.keywords), row.size,
                 row.internal_date, row.modseq)))
        for row in updated:
            statements.append((
                "UPDATE messages SET name = ?, keywords = ?, modseq = ? WHERE folder = ? AND "
                "uid = ?", (row.name, " ".join(row.keywords), row.modseq, folder, row.uid)))
        for uid in removed:
            statements.append(("DELETE FROM messages WHERE folder = ? AND uid = ?", (folder, uid)))
        for base in taken:
            statements.append(("DELETE FROM pending_keywords WHERE folder = ? AND base = ?",
                               (folder, base)))
        self._write(statements)

    def cached_structure(self, folder: str, uids: list[int]) -> dict[int, tuple[bytes, bytes]]:
        """The ENVELOPE and BODYSTRUCTURE already computed for these messages, by UID."""
        found: dict[int, tuple[bytes, bytes]] = {}
        with self._lock:
            for start in range(0, len(uids), 500):
                chunk = uids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for uid, envelope, structure in self._conn.execute(
                        f"SELECT uid, envelope, structure FROM messages WHERE folder = ? AND "
                        f"uid IN ({marks}) AND envelope IS NOT NULL", (folder, *chunk)):
                    found[uid] = (envelope, structure)
        return found

    def cache_structure(self, folder: str, computed: dict[int, tuple[bytes, bytes]]) -> None:
        """Keep computed ENVELOPE and BODYSTRUCTURE for later FETCHes."""
        self._write([("UPDATE messages SET envelope = ?, structure = ? WHERE folder = ? AND "
                      "uid = ?", (envelope, structure, folder, uid))
                     for uid, (envelope, structure) in computed.items()])


def _folder(row: tuple) -> FolderRow:
    return FolderRow(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])


def add_pending_keywords(mailbox_dir: Path, folder: str, base: str,
                         keywords: Iterable[str]) -> None:
    """Give IMAP keywords (which have no letter in a Maildir file name) to a message delivery
    has just stored as `base` in `folder`: the folder's next scan applies them (blocking)."""
    connection = sqlite3.connect(str(mailbox_dir / INDEX_FILE), isolation_level=None,
                                 timeout=30)
    try:
        connection.executescript(_SCHEMA)
        connection.execute("INSERT OR REPLACE INTO pending_keywords VALUES (?, ?, ?)",
                           (folder, base, " ".join(keywords)))
    finally:
        connection.close()
