"""One session's view of its selected folder: its own message sequence numbers, and the untagged
responses that bring it up to date with what everyone else did.

A session's sequence numbers (RFC 3501 2.3.1.2) change only when it is told of an expunge, and
it may only be told at certain moments (RFC 3501 7.4.1: never during FETCH, STORE or SEARCH, so
that the numbers in those commands keep their meaning). So the view keeps its own list of UIDs;
the shared `Folder` may already have lost some of them. `updates` compares the two and the
folder's change log, and gives the `EXPUNGE`, `EXISTS`, `RECENT` and `FETCH (FLAGS …)` lines to
send.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from cloudmail.imap.format import plist
from cloudmail.mailstore.folder import Folder, Message


class SelectedFolder:
    """The selected folder of one session: read-only (EXAMINE) or not, CONDSTORE or not."""

    def __init__(self, folder: Folder, *, readonly: bool, condstore: bool) -> None:
        self.folder = folder
        self.readonly = readonly
        self.condstore = condstore
        #: This view's UIDs by sequence number. It is the folder's own list (which the folder
        #: replaces, never changes in place) for as long as the two agree, so a thousand
        #: sessions on one big folder hold one list, and an idle session costs no scan.
        self.uids: list[int] = folder.uids
        self.known_modseq = folder.highestmodseq
        self._changelog_position = folder.changelog_end
        first_recent = self._first_recent()
        self.recent: set[int] = set(self.uids[bisect_left(self.uids, first_recent):])
        #: (uid, modseq) this session has already reported itself (its own STORE answers).
        self._reported: set[tuple[int, int]] = set()

    def _first_recent(self) -> int:
        """The lowest UID that is \\Recent in this view. A read-only view shows \\Recent but
        does not take it away from the next session (RFC 3501 6.3.2: EXAMINE MUST NOT cause
        messages to lose the \\Recent flag)."""
        if self.readonly:
            return self.folder.recent_claimed + 1
        return self.folder.claim_recent()

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq(self, uid: int) -> int | None:
        """The sequence number of `uid` in this view, or None."""
        i = bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def uid_of(self, seq: int) -> int:
        return self.uids[seq - 1]

    def message(self, uid: int) -> Message | None:
        """The message as the folder has it now (None once expunged by anyone)."""
        return self.folder.messages.get(uid)

    def flags(self, uid: int) -> frozenset[str]:
        message = self.folder.messages.get(uid)
        flags = message.flags if message is not None else frozenset()
        return flags | {"\\Recent"} if uid in self.recent else flags

    def reported(self, uid: int, modseq: int) -> None:
        """This session answered with this change itself: no untagged repeat later."""
        self._reported.add((uid, modseq))

    def updates(self, allow_expunge: bool = True) -> list[bytes]:
        """The untagged responses (without CRLF) that bring the view up to date."""
        lines: list[bytes] = []
        folder = self.folder
        if self.uids is not folder.uids:
            lines += self._catch_up(allow_expunge)
        changed: dict[int, Message] = {}
        entries = folder.changes_since(self._changelog_position)
        if entries is None:
            uids = [m.uid for m in folder.messages.values() if m.modseq > self.known_modseq]
        else:
            uids = [uid for _, uid in entries]
        for uid in uids:
            message = folder.messages.get(uid)
            if message is not None and (uid, message.modseq) not in self._reported:
                changed[uid] = message
        self._changelog_position = folder.changelog_end
        self._reported.clear()
        for uid, message in sorted(changed.items()):
            seq = self.seq(uid)
            if seq is not None:
                lines.append(self.flags_line(seq, message))
        self.known_modseq = folder.highestmodseq
        return lines

    def _catch_up(self, allow_expunge: bool) -> list[bytes]:
        """EXPUNGE (when allowed), EXISTS and RECENT for the folder's new list of UIDs."""
        lines: list[bytes] = []
        folder, uids = self.folder, self.uids
        last = uids[-1] if uids else 0
        arrived = folder.uids[bisect_left(folder.uids, last + 1):]
        expunged = len(uids) + len(arrived) != len(folder.uids)
        if allow_expunge and expunged:
            gone = [uid for uid in uids if uid not in folder.messages]
            for uid in reversed(gone):  # highest first: each number is right as it is sent
                lines.append(b"* %d EXPUNGE" % (bisect_left(uids, uid) + 1))
                self.recent.discard(uid)
            dropped = set(gone)
            uids = [uid for uid in uids if uid not in dropped]
            expunged = False
        if arrived:
            first_recent = self._first_recent()
            uids = uids + arrived
            self.recent.update(uid for uid in arrived if uid >= first_recent)
            lines.append(b"* %d EXISTS" % len(uids))
            lines.append(b"* %d RECENT" % len(self.recent))
        self.uids = uids if expunged else folder.uids
        return lines

    def flags_line(self, seq: int, message: Message, *, with_uid: bool = True) -> bytes:
        """`* n FETCH (UID u FLAGS (…) [MODSEQ (m)])` for a flag change."""
        items = []
        if with_uid:
            items.append(b"UID %d" % message.uid)
        items.append(b"FLAGS " + plist(f.encode() for f in sorted(self.flags(message.uid))))
        if self.condstore:
            items.append(b"MODSEQ (%d)" % message.modseq)
        return b"* %d FETCH (%s)" % (seq, b" ".join(items))

    def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever the folder changes (IDLE)."""
        self.folder.listeners.add(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        self.folder.listeners.discard(callback)
