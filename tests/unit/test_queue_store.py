"""The on-disk outbound queue (`cloudmail.queue.store`): what `enqueue` makes durable, what
`load` finds after a crash, and the retry schedule."""

from __future__ import annotations

import json
import os
import time

import pytest

from cloudmail.queue.store import (
    DEFAULT_LIFETIME,
    DEFAULT_SCHEDULE,
    QueuedMessage,
    QueueStore,
    RecipientState,
    UnknownQueueId,
    expired,
    new_queue_id,
    next_delay,
)

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def queue(tmp_path):
    """A store in a queue folder that does not exist yet."""
    return QueueStore(tmp_path / "queue")


def test_enqueue_load_round_trip(queue):
    """An enqueued message comes back from `load` with its envelope, and its bytes on disk."""
    entry = queue.enqueue("a@example.org", ["b@example.net", "c@example.com"], MESSAGE,
                          received_from="client.example.org [192.0.2.1]", auth_user="alice",
                          now=1_700_000_000.0)
    assert entry.size == len(MESSAGE)
    assert [r.address for r in entry.pending] == ["b@example.net", "c@example.com"]
    assert all(r.status == "queued" and r.next_attempt == 1_700_000_000.0 for r in entry.recipients)
    [loaded] = QueueStore(queue.root).load()
    assert loaded == entry
    assert queue.get(entry.queue_id) == entry
    assert queue.message_path(entry.queue_id).read_bytes() == MESSAGE
    assert sorted(os.listdir(queue.root)) == [f"{entry.queue_id}.eml", f"{entry.queue_id}.json"]
    assert oct(os.stat(queue.root).st_mode & 0o777) == "0o700"


def test_message_from_path_is_copied(queue, tmp_path):
    """A spool file given as a Path is copied (it stays where it was) and its size recorded."""
    spooled = tmp_path / "data-1.eml"
    big = MESSAGE + b"x" * 200_000 + b"\r\n"
    spooled.write_bytes(big)
    entry = queue.enqueue("a@example.org", ["b@example.net"], spooled)
    assert queue.message_path(entry.queue_id).read_bytes() == big
    assert entry.size == len(big)
    assert spooled.read_bytes() == big


def test_update_persists_recipient_state(queue):
    """`update` stores per-recipient progress; a new store reads the same state back."""
    entry = queue.enqueue("a@example.org", ["b@example.net", "c@example.com"], MESSAGE, now=100.0)
    first, second = entry.recipients
    first.status = "delivered"
    first.attempts = 1
    second.status = "deferred"
    second.attempts = 1
    second.last_code = 451
    second.last_status = "4.7.1"
    second.last_error = "451 4.7.1 Greylisted, try again"
    second.remote_mta = "mx.example.com"
    second.next_attempt = 400.0
    queue.update(entry)
    [loaded] = QueueStore(queue.root).load()
    assert loaded.recipients == [first, second]
    assert [r.address for r in loaded.pending] == ["c@example.com"]
    assert loaded.next_attempt == 400.0 and not loaded.done
    second.status = "failed"
    queue.update(entry)
    assert queue.get(entry.queue_id).done
    assert not [n for n in os.listdir(queue.root) if n.startswith(".tmp-")]


def test_remove(queue):
    """`remove` deletes both files; a second remove, `get` and `update` then know nothing of it."""
    entry = queue.enqueue("a@example.org", ["b@example.net"], MESSAGE)
    assert queue.remove(entry.queue_id) is True
    assert os.listdir(queue.root) == []
    assert queue.remove(entry.queue_id) is False
    with pytest.raises(UnknownQueueId):
        queue.get(entry.queue_id)
    with pytest.raises(UnknownQueueId):
        queue.update(entry)
    assert os.listdir(queue.root) == []


def test_malformed_ids_are_refused(queue):
    """Ids that are not 16 upper-case hex digits never become paths (no `../` from the admin API)."""
    for bad in ["../../etc/passwd", "", "0123456789abcdef", "0123456789ABCDEF0"]:
        with pytest.raises(UnknownQueueId):
            queue.message_path(bad)
        with pytest.raises(UnknownQueueId):
            queue.get(bad)


def test_crash_leftovers_removed_at_load(queue):
    """A message without envelope and tmp files (a crash mid-enqueue) are removed; complete
    entries and unrelated files stay."""
    kept = queue.enqueue("a@example.org", ["b@example.net"], MESSAGE)
    orphan = new_queue_id()
    (queue.root / f"{orphan}.eml").write_bytes(MESSAGE)
    (queue.root / ".tmp-abc123").write_bytes(b'{"version": 1, "queue_id"')
    (queue.root / ".tmp-def456").write_bytes(MESSAGE[:10])
    (queue.root / "README").write_text("not ours")
    loaded = queue.load()
    assert [e.queue_id for e in loaded] == [kept.queue_id]
    assert sorted(os.listdir(queue.root)) == sorted(["README", f"{kept.queue_id}.eml",
                                                     f"{kept.queue_id}.json"])


def test_damaged_envelope_set_aside(queue):
    """An unreadable envelope or one without its message is moved to `damaged/`, not loaded and
    not deleted."""
    good = queue.enqueue("a@example.org", ["b@example.net"], MESSAGE)
    broken = queue.enqueue("a@example.org", ["b@example.net"], MESSAGE)
    queue.envelope_path(broken.queue_id).write_text("{not json")
    lonely = new_queue_id()
    queue.envelope_path(lonely).write_text(json.dumps(good.to_json() | {"queue_id": lonely}))
    assert [e.queue_id for e in queue.load()] == [good.queue_id]
    assert sorted(os.listdir(queue.root / "damaged")) == sorted([
        f"{broken.queue_id}.eml", f"{broken.queue_id}.json", f"{lonely}.json"])


def test_crash_between_message_and_envelope(queue, monkeypatch):
    """When writing the envelope fails, `enqueue` raises and leaves nothing visible."""
    def fail(entry):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(queue, "_write_envelope", fail)
    with pytest.raises(OSError):
        queue.enqueue("a@example.org", ["b@example.net"], MESSAGE)
    assert os.listdir(queue.root) == []


def test_ids_unique_and_time_ordered(queue):
    """Ids are 16 upper-case hex characters, never repeat and sort in enqueue order, even when
    many are made within one clock tick or the clock steps back."""
    ids = [new_queue_id(1_000.0) for _ in range(1000)] + [new_queue_id(999.0)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 16 and i == i.upper() and int(i, 16) >= 0 for i in ids)
    later = new_queue_id(time.time() + 3600)
    entries = [queue.enqueue("a@example.org", ["b@example.net"], MESSAGE) for _ in range(5)]
    assert [e.queue_id for e in entries] == sorted(e.queue_id for e in entries)
    assert later < entries[0].queue_id
    assert [e.queue_id for e in queue.load()] == [e.queue_id for e in entries]


def test_enqueue_needs_recipients(queue):
    """A message with no recipient is refused before anything is written."""
    with pytest.raises(ValueError):
        queue.enqueue("a@example.org", [], MESSAGE)


def test_schedule_grows_then_repeats_until_expiry():
    """The default schedule grows from 5 minutes to 4 hours, and its last delay repeats: 36
    attempts fit in the 5 days after which `expired` says the message is returned."""
    assert DEFAULT_SCHEDULE[0] == 300 and DEFAULT_SCHEDULE[-1] == 4 * 3600
    assert list(DEFAULT_SCHEDULE) == sorted(DEFAULT_SCHEDULE)
    assert next_delay(0) == 0
    assert next_delay(1) == 300
    assert next_delay(7) == next_delay(8) == next_delay(100) == 4 * 3600
    elapsed, attempts = 0.0, 0
    while not expired(0.0, elapsed):
        attempts += 1
        elapsed += next_delay(attempts)
    assert attempts + 1 == 36  # the first try and 35 retries
    assert next_delay(2, (60.0, 120.0)) == 120.0 == next_delay(3, (60.0, 120.0))
    with pytest.raises(ValueError):
        next_delay(-1)
    assert not expired(0.0, DEFAULT_LIFETIME - 1)
    assert expired(0.0, DEFAULT_LIFETIME)
    assert expired(0.0, 61.0, lifetime=60.0)


def test_envelope_refuses_unknown_status():
    """An envelope with a status outside queued/delivered/failed/deferred is not accepted."""
    entry = QueuedMessage("0" * 16, "a@b", [RecipientState("c@d")], 0.0)
    data = entry.to_json()
    data["recipients"][0]["status"] = "lost"
    with pytest.raises(ValueError):
        QueuedMessage.from_json(data)
    assert QueuedMessage.from_json(entry.to_json()) == entry

