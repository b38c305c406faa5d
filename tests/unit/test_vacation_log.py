"""The vacation reply log: one reply per sender and handle per period, per mailbox."""

from __future__ import annotations

from cloudmail.sieve.vacation_log import KEEP_SECONDS, claim_reply

DAY = 86400.0


def test_one_reply_per_sender_and_handle_per_period(tmp_path):
    """The first claim wins; within the period the same sender (any case) gets none, another
    sender or another handle does; after the period the sender gets one again."""
    assert claim_reply(tmp_path, "h1", "bob@remote.test", 7 * DAY, 0.0)
    assert not claim_reply(tmp_path, "h1", "BOB@remote.test", 7 * DAY, 6 * DAY)
    assert claim_reply(tmp_path, "h1", "carol@remote.test", 7 * DAY, 6 * DAY)
    assert claim_reply(tmp_path, "h2", "bob@remote.test", 7 * DAY, 6 * DAY)
    assert claim_reply(tmp_path, "h1", "bob@remote.test", 7 * DAY, 7 * DAY)
    assert not claim_reply(tmp_path, "h1", "bob@remote.test", 7 * DAY, 8 * DAY)


def test_old_rows_are_forgotten(tmp_path):
    """Rows older than KEEP_SECONDS are pruned when new replies are recorded."""
    import sqlite3
    claim_reply(tmp_path, "h", "old@remote.test", DAY, 0.0)
    claim_reply(tmp_path, "h", "new@remote.test", DAY, KEEP_SECONDS + 1)
    rows = sqlite3.connect(tmp_path / "cloudmail-vacation.sqlite").execute(
        "SELECT sender FROM replies").fetchall()
    assert rows == [("new@remote.test",)]
