"""One IMAP folder of a Maildir: its messages by UID, and the disk work that changes them.

`Folder` is the in-memory state every IMAP session of the process shares. It belongs to the
reactor: only the reactor reads or changes it, so sessions never see it half-changed. Work that
touches the disk runs in the io pool as the blocking functions below (`scan`, `set_flags`,
`expunge`, `add_files`); each reads the folder, does its file and index work and returns a
`Changes`, which the reactor then applies with `Folder.apply`. The caller holds `Folder.lock`
(a DeferredLock) around the pair, so no other change can slip in between: that is what keeps
UIDs and modification sequences (RFC 7162) in order.

System flags are the Maildir info letters in the file name (`:2,DFRST`, as Dovecot and Courier
write them); keywords live in the index. A rename sets flags, so other Maildir programs see them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.defer import DeferredLock

from cloudmail.mailstore.index import FolderRow, MailIndex, MessageRow
from cloudmail.mailstore.maildir import fsync_dir

#: Maildir info letters and the IMAP system flags they stand for (P, "passed", has none).
LETTER_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen",
                "T": "\\Deleted"}
FLAG_LETTERS = {flag.upper(): letter for letter, flag in LETTER_FLAGS.items()}
SYSTEM_FLAGS = tuple(LETTER_FLAGS[letter] for letter in "RFDST")
ALL_SYSTEM_FLAGS = frozenset(SYSTEM_FLAGS)
INFO = ":2,"
#: Flag changes and expunges kept for sessions to catch up with (see `Folder.changes_since`).
CHANGELOG_KEEP = 10_000


def split_name(name: str) -> tuple[str, str]:
    """(base, info letters) of a Maildir file name: `123.M1P2.host,S=9:2,RS` → (…S=9, "RS")."""
    base, separator, info = name.partition(INFO)
    return base, info if separator else ""


def system_flags(name: str) -> frozenset[str]:
    """The IMAP system flags a file name carries."""
    return frozenset(LETTER_FLAGS[c] for c in split_name(name)[1] if c in LETTER_FLAGS)


def with_flags(name: str, flags: frozenset[str]) -> str:
    """`name` with its info letters set to `flags`' system flags; letters we do not map (P,
    Dovecot's lower-case keyword letters) are kept."""
    base, info = split_name(name)
    kept = [c for c in info if c not in LETTER_FLAGS]
    letters = kept + [FLAG_LETTERS[f.upper()] for f in flags if f.upper() in FLAG_LETTERS]
    return base + INFO + "".join(sorted(set(letters)))


def is_system_flag(flag: str) -> bool:
    return flag.upper() in FLAG_LETTERS


@dataclass(slots=True)
class Message:
    """One message of a folder: UID, file, flags (system flags and keywords), size, internal
    date (epoch seconds) and the modification sequence of its last change."""

    uid: int
    base: str
    name: str
    flags: frozenset[str]
    size: int
    internal_date: float
    modseq: int

    def __post_init__(self) -> None:
        self.flags = _interned(self.flags)

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(sorted(f for f in self.flags if not is_system_flag(f)))

    def row(self) -> MessageRow:
        return MessageRow(self.uid, self.base, self.name, self.keywords, self.size,
                          self.internal_date, self.modseq)


_FLAG_SETS: dict[frozenset[str], frozenset[str]] = {}
#: Distinct flag sets kept for sharing; a folder has a handful, a hostile one is not kept.
_MAX_FLAG_SETS = 10_000


def _interned(flags: frozenset[str]) -> frozenset[str]:
    """One shared object per distinct flag set: a folder of 100,000 messages has only a few
    sets, so its messages need not hold 100,000 copies (about 200 bytes each)."""
    shared = _FLAG_SETS.get(flags)
    if shared is not None:
        return shared
    if len(_FLAG_SETS) < _MAX_FLAG_SETS:
        _FLAG_SETS[flags] = flags
    return flags


def message_from_row(row: MessageRow) -> Message:
    return Message(row.uid, row.base, row.name, system_flags(row.name) | frozenset(row.keywords),
                   row.size, row.internal_date, row.modseq)


@dataclass
class Changes:
    """What a disk job did, for `Folder.apply`: messages added (new UIDs) and changed (new name,
    flags, modseq), UIDs removed, the new counters and the directory mtimes after the job."""

    added: list[Message] = field(default_factory=list)
    changed: list[Message] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    #: UIDs a conditional STORE left alone (changed since its UNCHANGEDSINCE).
    conflicts: list[int] = field(default_factory=list)
    uidnext: int = 0
    highestmodseq: int = 0
    mtimes: tuple[int, int] | None = None

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


class Folder:
    """The shared state of one folder (see the module docstring)."""

    def __init__(self, name: str, path: Path, row: FolderRow, rows: list[MessageRow]) -> None:
        self.name = name
        self.path = path
        self.uidvalidity = row.uidvalidity
        self.uidnext = row.uidnext
        self.highestmodseq = row.highestmodseq
        self.mtimes = (row.new_mtime, row.cur_mtime)
        self.messages: dict[int, Message] = {r.uid: message_from_row(r) for r in rows}
        self.uids: list[int] = sorted(self.messages)
        self.lock = DeferredLock()
        #: (modseq, uid) of the flag changes and expunges applied lately, in order; entry i of
        #: the list is change number `changelog_start + i` (see `changes_since`).
        self.changelog: list[tuple[int, int]] = []
        self.changelog_start = 0
        #: Messages above this UID are \Recent for the next session that learns of them.
        self.recent_claimed = self.uidnext - 1
        self.listeners: set = set()
        self._keywords: list[str] | None = None

    def apply(self, changes: Changes) -> None:
        """Take a disk job's result into the shared state and tell the listening sessions."""
        if changes.added:
            for message in changes.added:
                self.messages[message.uid] = message
            # A new list, never a change in place: sessions share the old one until they are
            # told of the change (see imap/selected.py).
            self.uids = self.uids + [m.uid for m in changes.added]
        for message in changes.changed:
            if message.uid in self.messages:
                self.messages[message.uid] = message
                self.changelog.append((message.modseq, message.uid))
        if changes.removed:
            gone = set(changes.removed)
            for uid in gone:
                self.messages.pop(uid, None)
            self.uids = [uid for uid in self.uids if uid not in gone]
            self.changelog.extend((changes.highestmodseq, uid) for uid in sorted(gone))
        self.uidnext = max(self.uidnext, changes.uidnext)
        self.highestmodseq = max(self.highestmodseq, changes.highestmodseq)
        if changes.mtimes is not None:
            self.mtimes = changes.mtimes
        self._trim_changelog()
        if not changes.empty:
            self._keywords = None
            for listener in list(self.listeners):
                listener()

    def keywords(self) -> list[str]:
        """Every keyword in use in the folder, for SELECT's FLAGS (kept until a change)."""
        if self._keywords is None:
            found: set[str] = set()
            for message in self.messages.values():
                if len(message.flags) > len(message.flags & ALL_SYSTEM_FLAGS):
                    found.update(message.flags - ALL_SYSTEM_FLAGS)
            self._keywords = sorted(found)
        return self._keywords

    @property
    def changelog_end(self) -> int:
        """The number the next change will have: a session keeps it as its position."""
        return self.changelog_start + len(self.changelog)

    def changes_since(self, position: int) -> list[tuple[int, int]] | None:
        """The changes from `position` on, or None when they are no longer kept (the caller
        then compares every message's modseq instead)."""
        if position < self.changelog_start:
            return None
        return self.changelog[position - self.changelog_start:]

    def _trim_changelog(self) -> None:
        """Keep at most `CHANGELOG_KEEP` changes: a session further behind rescans."""
        excess = len(self.changelog) - CHANGELOG_KEEP
        if excess > 0:
            del self.changelog[:excess]
            self.changelog_start += excess

    def claim_recent(self) -> int:
        """The lowest UID that is \\Recent for the caller (RFC 3501 2.3.2: only one session
        sees a message as recent); later callers get none of the same messages."""
        first = self.recent_claimed + 1
        self.recent_claimed = self.uidnext - 1
        return first


def _mtime(path: Path) -> int:
    return os.stat(path).st_mtime_ns


def dir_mtimes(path: Path) -> tuple[int, int]:
    return _mtime(path / "new"), _mtime(path / "cur")


def scan(folder: Folder, index: MailIndex, *, force: bool = False) -> Changes:
    """Reconcile the folder with its Maildir (blocking): files in `new/` move to `cur/`; files
    new in `cur/` (delivered, or put there by another program) get the next UIDs in the order
    they arrived; missing files are expunged; renamed ones (flags changed elsewhere) update.
    Nothing is read when neither directory changed since the last scan, unless `force`."""
    changes = Changes(uidnext=folder.uidnext, highestmodseq=folder.highestmodseq)
    try:
        mtimes = dir_mtimes(folder.path)
    except FileNotFoundError:
        return changes
    if mtimes == folder.mtimes and not force:
        return changes
    new_dir, cur_dir = folder.path / "new", folder.path / "cur"
    for entry in os.scandir(new_dir):
        if entry.is_file() and not entry.name.startswith("."):
            base = split_name(entry.name)[0]
            try:
                os.rename(entry.path, cur_dir / (base + INFO))
            except FileNotFoundError:
                pass
    on_disk: dict[str, os.DirEntry] = {}
    for entry in os.scandir(cur_dir):
        if not entry.name.startswith("."):
            on_disk[split_name(entry.name)[0]] = entry
    known = {m.base: m for m in folder.messages.values()}
    pending = index.pending_keywords(folder.name)
    modseq = folder.highestmodseq
    for base, message in known.items():
        entry = on_disk.get(base)
        if entry is None:
            changes.removed.append(message.uid)
        elif entry.name != message.name or base in pending:
            modseq += 1
            keywords = frozenset(message.keywords) | frozenset(pending.get(base, ()))
            changes.changed.append(Message(message.uid, base, entry.name,
                                           system_flags(entry.name) | keywords, message.size,
                                           message.internal_date, modseq))
    arrivals = []
    for base, entry in on_disk.items():
        if base not in known:
            try:
                info = entry.stat()
            except FileNotFoundError:
                continue
            arrivals.append((info.st_mtime, base, entry.name, info.st_size))
    uid = folder.uidnext
    for mtime, base, name, size in sorted(arrivals):
        modseq += 1
        changes.added.append(Message(uid, base, name,
                                     system_flags(name) | frozenset(pending.get(base, ())),
                                     size, mtime, modseq))
        uid += 1
    if changes.removed:
        modseq += 1
    changes.uidnext, changes.highestmodseq = uid, modseq
    # The mtimes from before the listing: a file arriving while it ran changes them again, so
    # the next scan looks (our own moves from new/ cost one more listing, never a lost file).
    changes.mtimes = mtimes
    index.save_changes(folder.name, uidnext=uid, highestmodseq=modseq,
                       added=[m.row() for m in changes.added],
                       updated=[m.row() for m in changes.changed],
                       removed=changes.removed, mtimes=changes.mtimes,
                       taken=[base for base in pending if base in on_disk])
    return changes


def set_flags(folder: Folder, index: MailIndex, uids: list[int], mode: str,
              flags: frozenset[str], unchanged_since: int | None = None) -> Changes:
    """STORE (RFC 3501 6.4.6) on these messages, blocking: `mode` "+" adds the flags, "-"
    removes them, "" replaces the set. Files whose system flags change are renamed, keywords go
    to the index, and each changed message gets the next modseq. With `unchanged_since`
    (RFC 7162 3.1.3) a message changed after that modseq is left alone and listed in
    `Changes.conflicts`. Messages gone meanwhile are skipped. Computed here, under the folder
    lock, so two sessions storing at once never lose each other's flags."""
    changes, cur_dir, before = _start(folder)
    modseq = folder.highestmodseq
    for uid in uids:
        message = folder.messages.get(uid)
        if message is None:
            continue
        if unchanged_since is not None and message.modseq > unchanged_since:
            changes.conflicts.append(uid)
            continue
        if mode == "+":
            wanted = message.flags | flags
        elif mode == "-":
            wanted = message.flags - flags
        else:
            wanted = flags
        if wanted == message.flags:
            continue
        name = with_flags(message.name, wanted)
        if name != message.name:
            try:
                os.rename(cur_dir / message.name, cur_dir / name)
            except FileNotFoundError:
                continue
        modseq += 1
        changes.changed.append(Message(uid, message.base, name, wanted, message.size,
                                       message.internal_date, modseq))
    if not changes.changed:
        return changes
    changes.highestmodseq = modseq
    changes.mtimes = _own_mtimes(folder, before)
    index.save_changes(folder.name, uidnext=folder.uidnext, highestmodseq=modseq,
                       updated=[m.row() for m in changes.changed], mtimes=changes.mtimes)
    return changes


def expunge(folder: Folder, index: MailIndex, uids: list[int]) -> Changes:
    """Remove these messages' files (blocking), then the folder entry is fsynced."""
    changes, cur_dir, before = _start(folder)
    changes.highestmodseq += 1
    for uid in uids:
        message = folder.messages.get(uid)
        if message is None:
            continue
        try:
            os.unlink(cur_dir / message.name)
        except FileNotFoundError:
            pass
        changes.removed.append(uid)
    if not changes.removed:
        changes.highestmodseq = folder.highestmodseq
        return changes
    fsync_dir(cur_dir)
    changes.mtimes = _own_mtimes(folder, before)
    index.save_changes(folder.name, uidnext=folder.uidnext, highestmodseq=changes.highestmodseq,
                       removed=changes.removed, mtimes=changes.mtimes)
    return changes


def add_files(folder: Folder, index: MailIndex, before: tuple[int, int],
              files: list[tuple[str, frozenset[str], int, float]]) -> Changes:
    """Give UIDs to files just made durable in `cur/` by us (APPEND, COPY, MOVE): each entry is
    (file name, flags incl. keywords, size, internal date); `before` are the directory mtimes
    from just before the files were linked in. Blocking."""
    changes = Changes(uidnext=folder.uidnext, highestmodseq=folder.highestmodseq)
    uid, modseq = folder.uidnext, folder.highestmodseq
    for name, flags, size, internal_date in files:
        modseq += 1
        changes.added.append(Message(uid, split_name(name)[0], name, flags, size, internal_date,
                                     modseq))
        uid += 1
    changes.uidnext, changes.highestmodseq = uid, modseq
    changes.mtimes = _own_mtimes(folder, before)
    index.save_changes(folder.name, uidnext=uid, highestmodseq=modseq,
                       added=[m.row() for m in changes.added], mtimes=changes.mtimes)
    return changes


def _start(folder: Folder) -> tuple[Changes, Path, tuple[int, int]]:
    """What every change job begins with: empty changes at the folder's counters, its `cur/`,
    and the directory mtimes before the job touches anything."""
    return (Changes(uidnext=folder.uidnext, highestmodseq=folder.highestmodseq),
            folder.path / "cur", dir_mtimes(folder.path))


def _own_mtimes(folder: Folder, before: tuple[int, int]) -> tuple[int, int] | None:
    """The directory mtimes after our own change, when nothing else had changed them since the
    last scan (`before` is what they were as the job began); else None, so that the next scan
    looks at the directories again."""
    if before != folder.mtimes:
        return None
    return dir_mtimes(folder.path)
