"""The durable on-disk outbound queue: one message file and one JSON envelope per queued message.

RFC 5321 §4.5.4.1 requires a sender to keep a message it has accepted until every recipient is
delivered or has failed for good, and §6.1 makes a `250` reply a promise not to lose it. So
`enqueue` returns only when the entry is on disk: as in `cloudmail.mailstore.maildir`, every file
is written under a temporary name, fsynced, given its final name and the folder fsynced. The
message is made durable first and its envelope last, and the envelope is what makes an entry
exist: a crash at any moment leaves either a complete entry or leftovers (`.tmp-*` files, a
message without envelope) that `load` removes at the next start. `update` rewrites an envelope by
renaming a fresh copy over it, so a reader always sees the old or the new state, never a mix;
`remove` drops the envelope first for the same reason.

Layout, all in one folder so each step needs one directory fsync:
`<root>/<id>.eml` (the message, CRLF line ends), `<root>/<id>.json` (the envelope) and, during a
write, `<root>/.tmp-*`. Envelopes that cannot be read are moved to `<root>/damaged/` rather than
deleted, for the postmaster to look at.

Retry timing follows Postfix's model (`minimal_backoff_time`, `maximal_queue_lifetime` = 5 days):
`next_delay` gives the wait after each failed attempt, growing from minutes to hours, and a message
still undelivered after `DEFAULT_LIFETIME` is returned to its sender (RFC 5321 §4.5.4.1 suggests
giving up after 4–5 days). Everything here is blocking disk work for the io thread pool.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from twisted.logger import Logger

from cloudmail.mailstore.maildir import fsync_dir

log = Logger()

Status = Literal["queued", "delivered", "failed", "deferred"]
STATUSES: frozenset[str] = frozenset({"queued", "delivered", "failed", "deferred"})
PENDING: frozenset[str] = frozenset({"queued", "deferred"})

_MINUTE = 60.0
_HOUR = 3600.0
#: Seconds to wait after the 1st, 2nd, … failed attempt: 5 min growing to 4 h; the last entry
#: repeats until the message expires (36 tries in all over 5 days).
DEFAULT_SCHEDULE: tuple[float, ...] = (
    5 * _MINUTE, 10 * _MINUTE, 15 * _MINUTE, 30 * _MINUTE, _HOUR, 2 * _HOUR, 4 * _HOUR)
#: How long a message may stay queued, as Postfix's `maximal_queue_lifetime` (5 days).
DEFAULT_LIFETIME = 5 * 24 * _HOUR

ENVELOPE_VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600
CHUNK = 64 * 1024
_MESSAGE_SUFFIX = ".eml"
_ENVELOPE_SUFFIX = ".json"
_TMP_PREFIX = ".tmp-"
_DAMAGED = "damaged"
_ID_LENGTH = 16
_QUEUE_ID = re.compile(r"[0-9A-F]{16}")
_ATTEMPTS = 3

_id_lock = threading.Lock()
_last_stamp = 0  # process-wide, so ids from two stores in one process still never repeat


class UnknownQueueId(KeyError):
    """No entry with this queue id (or the text is not a queue id at all)."""


@dataclass
class RecipientState:
    """Where delivery to one recipient stands.

    `last_code` is the basic SMTP reply code of the last attempt (e.g. 451), `last_status` its
    enhanced status code (RFC 3463, e.g. "4.2.2"), `last_error` the reply text or local reason,
    `remote_mta` the host that answered; `next_attempt` is a Unix time, None when not pending.
    """

    address: str
    status: Status = "queued"
    attempts: int = 0
    last_error: str = ""
    last_code: int | None = None
    last_status: str | None = None
    remote_mta: str | None = None
    last_attempt: float | None = None
    next_attempt: float | None = None

    @property
    def pending(self) -> bool:
        """True while delivery to this recipient is still to be tried."""
        return self.status in PENDING


@dataclass
class QueuedMessage:
    """One queue entry: the envelope of a message whose bytes are at `QueueStore.message_path`."""

    queue_id: str
    sender: str
    recipients: list[RecipientState]
    created: float
    received_from: str = ""
    auth_user: str | None = None
    size: int = 0
    #: The sender was told the message is delayed (sent at most once).
    warned: bool = False

    @property
    def pending(self) -> list[RecipientState]:
        """The recipients still to be tried (queued or deferred)."""
        return [r for r in self.recipients if r.pending]

    @property
    def done(self) -> bool:
        """True when no recipient is pending: the entry can be removed (after any DSN)."""
        return not self.pending

    @property
    def next_attempt(self) -> float | None:
        """The earliest time a pending recipient is due, or None when none is pending."""
        due = [r.next_attempt if r.next_attempt is not None else self.created for r in self.pending]
        return min(due, default=None)

    def to_json(self) -> dict[str, Any]:
        """The envelope as stored on disk."""
        return {"version": ENVELOPE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueuedMessage:
        """Read an envelope written by `to_json`; raises ValueError when it is not one."""
        try:
            if data.get("version") != ENVELOPE_VERSION:
                raise ValueError(f"unknown envelope version {data.get('version')!r}")
            recipients = [RecipientState(**r) for r in data["recipients"]]
            entry = cls(queue_id=data["queue_id"], sender=data["sender"], recipients=recipients,
                        created=float(data["created"]), received_from=data["received_from"],
                        auth_user=data["auth_user"], size=int(data["size"]),
                        warned=bool(data.get("warned", False)))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed envelope: {e}") from None
        if not _QUEUE_ID.fullmatch(entry.queue_id) or not recipients:
            raise ValueError("malformed envelope: bad queue id or no recipients")
        if any(r.status not in STATUSES for r in recipients):
            raise ValueError("malformed envelope: unknown recipient status")
        return entry


def next_delay(attempts: int, schedule: tuple[float, ...] = DEFAULT_SCHEDULE) -> float:
    """Seconds to wait before the next try after `attempts` failed ones (the schedule's last
    entry repeats). Zero attempts means "try now". When to give up is `expired`'s business, on
    the message's age, so that attempts delayed by an outage never stretch its lifetime."""
    if attempts < 0:
        raise ValueError("attempts cannot be negative")
    if attempts == 0:
        return 0.0
    return schedule[min(attempts, len(schedule)) - 1]


def expired(created: float, now: float, lifetime: float = DEFAULT_LIFETIME) -> bool:
    """True when a message queued at `created` has been in the queue `lifetime` seconds or more."""
    return now - created >= lifetime


def new_queue_id(now: float | None = None) -> str:
    """A 16-character upper-case hex id: 13 for the time in microseconds (kept increasing within
    the process, so ids sort by enqueue order) and 3 random ones."""
    global _last_stamp
    stamp = int((time.time() if now is None else now) * 1_000_000)
    with _id_lock:
        stamp = max(stamp, _last_stamp + 1)
        _last_stamp = stamp
    return f"{stamp:013X}{secrets.randbelow(16 ** 3):03X}"


def _unlink_quietly(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


class QueueStore:
    """The queue folder at `root`; every method is blocking (run them in the io thread pool)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self._ready = False

    def message_path(self, queue_id: str) -> Path:
        """Where the message bytes of `queue_id` are; raises UnknownQueueId for a malformed id."""
        return self.root / (self._checked(queue_id) + _MESSAGE_SUFFIX)

    def envelope_path(self, queue_id: str) -> Path:
        """Where the envelope of `queue_id` is; raises UnknownQueueId for a malformed id."""
        return self.root / (self._checked(queue_id) + _ENVELOPE_SUFFIX)

    def enqueue(self, sender: str, recipients: list[str], message: bytes | Path, *,
                prepend: bytes = b"", received_from: str = "", auth_user: str | None = None,
                now: float | None = None) -> QueuedMessage:
        """Store a message for `recipients` (all due at once) and return its entry.

        `message` is the bytes or a file to copy (a spool file; it is left in place), stored
        after `prepend` (our trace header). Returns only
        when message and envelope are durable, so the caller may answer `250`; on any error what
        was written is removed and the OSError raised (the caller answers `451`).
        """
        if not recipients:
            raise ValueError("a queued message needs at least one recipient")
        created = time.time() if now is None else now
        self._ensure_root()
        tmp = self._write_tmp(lambda f: (f.write(prepend), self._copy(f, message)))
        try:
            size = tmp.stat().st_size
            queue_id, final = self._link_message(tmp, created)
        finally:
            _unlink_quietly(tmp)
        entry = QueuedMessage(
            queue_id=queue_id, sender=sender,
            recipients=[RecipientState(address=r, next_attempt=created) for r in recipients],
            created=created, received_from=received_from, auth_user=auth_user, size=size)
        try:
            fsync_dir(self.root)
            self._write_envelope(entry)
        except BaseException:
            _unlink_quietly(final)
            raise
        return entry

    def update(self, entry: QueuedMessage) -> None:
        """Replace the stored envelope of `entry` atomically; raises UnknownQueueId when the entry
        was removed meanwhile (it is not brought back)."""
        if not self.message_path(entry.queue_id).exists():
            raise UnknownQueueId(entry.queue_id)
        self._write_envelope(entry)

    def get(self, queue_id: str) -> QueuedMessage:
        """The stored entry `queue_id`; raises UnknownQueueId when there is none."""
        path = self.envelope_path(queue_id)
        try:
            return self._read_envelope(path)
        except FileNotFoundError:
            raise UnknownQueueId(queue_id) from None

    def remove(self, queue_id: str) -> bool:
        """Remove an entry, envelope first (a crash then leaves a leftover message for `load` to
        clear, never an envelope without message); False when there was nothing to remove."""
        removed = _unlink_quietly(self.envelope_path(queue_id))
        if removed:
            fsync_dir(self.root)
        removed = _unlink_quietly(self.message_path(queue_id)) or removed
        return removed

    def load(self) -> list[QueuedMessage]:
        """Every complete entry, oldest first, after removing what a crash left behind.

        Only for start-up, before any `enqueue`: a write in progress looks like a leftover.
        """
        self._ensure_root()
        names = {entry.name for entry in os.scandir(self.root) if entry.is_file(follow_symlinks=False)}
        changed = False
        entries: list[QueuedMessage] = []
        for name in sorted(names):
            path = self.root / name
            stem, suffix = os.path.splitext(name)
            if name.startswith(_TMP_PREFIX):
                changed |= _unlink_quietly(path)
            elif not _QUEUE_ID.fullmatch(stem):
                continue
            elif suffix == _MESSAGE_SUFFIX and stem + _ENVELOPE_SUFFIX not in names:
                log.info("removing queue leftover {name} (no envelope)", name=name)
                changed |= _unlink_quietly(path)
            elif suffix == _ENVELOPE_SUFFIX:
                entry = self._load_one(stem, path, names)
                if entry is None:
                    changed = True
                else:
                    entries.append(entry)
        if changed:
            fsync_dir(self.root)
        return entries

    def _load_one(self, queue_id: str, path: Path, names: set[str]) -> QueuedMessage | None:
        """Read one envelope at start; a damaged one (or one without message) is set aside."""
        entry: QueuedMessage | None = None
        problem: str | None = None
        if queue_id + _MESSAGE_SUFFIX not in names:
            problem = "its message file is missing"
        else:
            try:
                entry = self._read_envelope(path)
                if entry.queue_id != queue_id:
                    problem = f"it names queue id {entry.queue_id}"
            except (OSError, ValueError) as e:
                problem = str(e)
        if entry is not None and problem is None:
            return entry
        log.error("queue entry {queue_id} set aside in {folder}: {problem}",
                  queue_id=queue_id, folder=self.root / _DAMAGED, problem=problem)
        damaged = self.root / _DAMAGED
        os.makedirs(damaged, DIR_MODE, exist_ok=True)
        for name in (queue_id + _ENVELOPE_SUFFIX, queue_id + _MESSAGE_SUFFIX):
            if name in names:
                os.replace(self.root / name, damaged / name)
        fsync_dir(damaged)
        return None

    @staticmethod
    def _checked(queue_id: str) -> str:
        if not isinstance(queue_id, str) or not _QUEUE_ID.fullmatch(queue_id):
            raise UnknownQueueId(queue_id)
        return queue_id

    @staticmethod
    def _read_envelope(path: Path) -> QueuedMessage:
        try:
            data = json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable envelope: {e}") from None
        return QueuedMessage.from_json(data)

    def _ensure_root(self) -> None:
        """Create the queue folder (mode 0700) if missing, durably."""
        if self._ready:
            return
        if not self.root.is_dir():
            os.makedirs(self.root, DIR_MODE, exist_ok=True)
            fsync_dir(self.root.parent)
        self._ready = True

    def _write_tmp(self, write: Callable[[BinaryIO], object]) -> Path:
        """A new fsynced `.tmp-*` file holding what `write(file)` wrote."""
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp

    @staticmethod
    def _copy(f: BinaryIO, message: bytes | Path) -> None:
        if isinstance(message, (bytes, bytearray, memoryview)):
            f.write(message)
            return
        with open(message, "rb") as source:
            while chunk := source.read(CHUNK):
                f.write(chunk)

    def _link_message(self, tmp: Path, created: float) -> tuple[str, Path]:
        """Link `tmp` to `<id>.eml` under a fresh id; linking never overwrites an existing entry."""
        for _ in range(_ATTEMPTS):
            queue_id = new_queue_id(created)
            final = self.message_path(queue_id)
            try:
                os.link(tmp, final)
                return queue_id, final
            except FileExistsError:
                continue
        raise FileExistsError(f"no unused queue id after {_ATTEMPTS} tries in {self.root}")

    def _write_envelope(self, entry: QueuedMessage) -> None:
        """Write the envelope to a tmp file, fsync, rename over the old one and fsync the folder."""
        data = json.dumps(entry.to_json(), ensure_ascii=False, indent=1).encode("utf-8")
        tmp = self._write_tmp(lambda f: f.write(data))
        try:
            os.replace(tmp, self.envelope_path(entry.queue_id))
        except BaseException:
            _unlink_quietly(tmp)
            raise
        fsync_dir(self.root)
