"""Who got a vacation reply from a mailbox, and when: RFC 5230 4.1 allows one reply per sender
(and per vacation `:handle`) within the `:days`/`:seconds` period.

One small SQLite file per mailbox, `cloudmail-vacation.sqlite` at the top of its Maildir (next
to the IMAP index, out of the folders' way). Addresses are compared case-insensitively. Rows
older than `KEEP_SECONDS` are dropped as new ones come. Blocking: run in the io thread pool.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

FILE_NAME = "cloudmail-vacation.sqlite"
#: Replies are remembered at most this long (RFC 5230 caps :days at an implementation maximum).
KEEP_SECONDS = 365 * 86400.0


def claim_reply(maildir: Path, handle: str, sender: str, period: float, now: float) -> bool:
    """True (and the reply recorded) when `sender` got no reply for `handle` in the last
    `period` seconds; False when it did, so no reply is to be sent now."""
    connection = sqlite3.connect(maildir / FILE_NAME, isolation_level=None, timeout=30)
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS replies (handle TEXT NOT NULL, "
                           "sender TEXT NOT NULL, sent REAL NOT NULL, "
                           "PRIMARY KEY (handle, sender))")
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute("SELECT sent FROM replies WHERE handle = ? AND sender = ?",
                                     (handle, sender.lower())).fetchone()
            if row is not None and now - row[0] < period:
                connection.execute("ROLLBACK")
                return False
            connection.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)",
                               (handle, sender.lower(), now))
            connection.execute("DELETE FROM replies WHERE sent < ?", (now - KEEP_SECONDS,))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return True
    finally:
        connection.close()
