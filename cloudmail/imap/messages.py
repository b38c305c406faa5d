"""The IMAP commands of the selected state (RFC 3501 6.4): reading, flagging, searching, copying
and removing messages, with their UID forms and the extensions that change them: UIDPLUS
(RFC 4315: COPYUID, UID EXPUNGE), MOVE (RFC 6851), CONDSTORE (RFC 7162: MODSEQ, CHANGEDSINCE,
UNCHANGEDSINCE) and UNSELECT (RFC 3691).

A mixin of `ImapServer`. Message sets are resolved against the session's own view
(`SelectedFolder`), so sequence numbers mean what the client was last told. Work that reads
message files (FETCH of bodies, SEARCH on text) runs in the io pool in batches, so a big FETCH
holds at most `BATCH` messages in memory.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from datetime import date, datetime, timezone
from typing import Any

from cloudmail.imap import mime
from cloudmail.imap.fetch import compute_structure, parse_fetch, render
from cloudmail.imap.mailboxes import parse_flags
from cloudmail.imap.results import Bad, Done, No
from cloudmail.imap.search import SearchContext, SearchError, SearchSyntaxError, parse_search
from cloudmail.imap.selected import SelectedFolder
from cloudmail.imap.tokens import Atom, ParseError, SequenceSet
from cloudmail.mailstore.account import FolderError, read_message
from cloudmail.mailstore.folder import Folder, Message

BATCH = 200


class MessageCommands:
    """CHECK, CLOSE, UNSELECT, EXPUNGE, SEARCH, FETCH, STORE, COPY, MOVE and UID."""

    selected: SelectedFolder | None

    # --- message sets ----------------------------------------------------------------------------

    def resolve(self, value: object, uid: bool) -> list[int]:
        """The UIDs a sequence set (or with `uid` a UID set) names in this session's view, in
        ascending order; UIDs not in the view are left out (RFC 3501 6.4.8)."""
        view = self.selected
        if not isinstance(value, Atom):
            raise Bad("a message set was expected")
        try:
            numbers = SequenceSet.parse(str(value))
        except ParseError as e:
            raise Bad(str(e)) from None
        if uid:
            return _uids_in(view.uids, numbers)
        if not view.uids:
            if str(value) in ("*", "1:*"):
                return []
            raise Bad("no messages in the folder")
        for low, high in numbers.bounds(view.exists):
            if low < 1 or high > view.exists:
                raise Bad("message sequence number out of range")
        return [view.uid_of(seq) for seq in numbers.numbers(view.exists)]

    def writable(self) -> SelectedFolder:
        view = self.selected
        if view.readonly:
            raise No("the folder is read-only (EXAMINE)", "READ-ONLY")
        return view

    # --- CHECK, CLOSE, UNSELECT, EXPUNGE ---------------------------------------------------------

    async def cmd_CHECK(self, command: Any) -> Done:
        await self.account.sync(self.selected.folder)
        return Done("CHECK completed")

    async def cmd_CLOSE(self, command: Any) -> Done:
        """RFC 3501 6.4.2: expunge silently (unless read-only), then leave the folder."""
        view = self.selected
        if not view.readonly:
            deleted = [m.uid for m in view.folder.messages.values() if "\\Deleted" in m.flags]
            if deleted:
                await self.account.expunge(view.folder, deleted)
        self.deselect()
        return Done("CLOSE completed")

    async def cmd_UNSELECT(self, command: Any) -> Done:
        self.deselect()
        return Done("UNSELECT completed")

    async def cmd_EXPUNGE(self, command: Any, uid: bool = False) -> Done:
        """RFC 3501 6.4.3; UID EXPUNGE (RFC 4315 2.1) only within the given UIDs. The EXPUNGE
        responses come with the session's updates as the command completes."""
        if len(command.args) != (1 if uid else 0):
            raise Bad("UID EXPUNGE needs a UID set" if uid else "EXPUNGE takes no arguments")
        view = self.writable()
        wanted = set(self.resolve(command.args[0], True)) if uid else None
        deleted = [m.uid for m in view.folder.messages.values() if "\\Deleted" in m.flags
                   and (wanted is None or m.uid in wanted)]
        if deleted:
            await self.account.expunge(view.folder, sorted(deleted))
        return Done("EXPUNGE completed")

    # --- SEARCH ------------------------------------------------------------------------------------

    async def cmd_SEARCH(self, command: Any, uid: bool = False) -> Done:
        """RFC 3501 6.4.4: queries on flags and numbers run here; those on headers or text
        read the files in the io pool. A MODSEQ key turns CONDSTORE on (RFC 7162 3.1)."""
        view = self.selected
        try:
            query = parse_search(command.args)
        except SearchSyntaxError as e:
            raise Bad(e.text) from None
        except SearchError as e:
            raise No(e.text, e.code) from None
        if query.uses_modseq:
            view.condstore = True
        context = SearchContext(max_seq=view.exists, max_uid=view.uids[-1] if view.uids else 0)
        candidates = [_Target(seq, m, view.flags(u), view.folder)
                      for seq, u in enumerate(view.uids, 1) if (m := view.message(u)) is not None]
        if query.needs_headers or query.needs_body:
            found = await self.account.run(_search, query, candidates, context)
        else:
            found = [c for c in candidates if query.matches(c, context)]
        numbers = b" ".join(b"%d" % (c.uid if uid else c.seq) for c in found)
        line = b"* SEARCH" + (b" " + numbers if numbers else b"")
        if query.uses_modseq and found:
            line += b" (MODSEQ %d)" % max(c.modseq for c in found)
        self.send(line)
        return Done("SEARCH completed")

    # --- FETCH -------------------------------------------------------------------------------------

    async def cmd_FETCH(self, command: Any, uid: bool = False) -> Done:
        """RFC 3501 6.4.5 (see `fetch.py`); a non-PEEK body fetch sets \\Seen first and the
        answer then carries the new FLAGS. CHANGEDSINCE or MODSEQ turn CONDSTORE on (RFC 7162
        3.1)."""
        view = self.selected
        if len(command.args) < 2:
            raise Bad("FETCH needs a message set and attributes")
        uids = self.resolve(command.args[0], uid)
        try:
            request = parse_fetch(command.args[1:], uid=uid, condstore=view.condstore)
        except ParseError as e:
            raise Bad(str(e)) from None
        if request.changed_since is not None or "MODSEQ" in request.items:
            view.condstore = True
        if request.changed_since is not None:
            uids = [u for u in uids if (m := view.message(u)) and m.modseq > request.changed_since]
        if request.sets_seen and not view.readonly:
            unseen = [u for u in uids if (m := view.message(u)) and "\\Seen" not in m.flags]
            if unseen:
                await self.account.set_flags(view.folder, unseen, "+", frozenset({"\\Seen"}))
                if "FLAGS" not in request.items:
                    request.items.append("FLAGS")
                for u in unseen:
                    if (m := view.message(u)) is not None:
                        view.reported(u, m.modseq)
        for start in range(0, len(uids), BATCH):
            await self._fetch_batch(view, uids[start:start + BATCH], request)
        return Done("FETCH completed")

    async def _fetch_batch(self, view: SelectedFolder, uids: list[int], request: Any) -> None:
        contents: dict[int, bytes] = {}
        structures: dict[int, tuple[bytes, bytes]] = {}
        if request.needs_content:
            contents = await self.account.read(view.folder, uids)
        if request.needs_structure:
            structures = await self.account.structures(view.folder, uids, compute_structure)
        lines = []
        for u in uids:
            message, seq = view.message(u), view.seq(u)
            if message is None or seq is None:
                continue
            if (request.needs_content and u not in contents) or \
                    (request.needs_structure and u not in structures):
                continue
            lines.append(render(seq, message, view.flags(u), request, content=contents.get(u),
                                structure=structures.get(u)))
        self.send_lines(lines)

    # --- STORE -------------------------------------------------------------------------------------

    async def cmd_STORE(self, command: Any, uid: bool = False) -> Done:
        """RFC 3501 6.4.6, with UNCHANGEDSINCE (RFC 7162 3.1.3): messages changed since are
        left alone and named in `[MODIFIED …]`. \\Recent is the server's alone (RFC 3501
        2.3.2): STORE naming it is BAD rather than silently dropping it from the set."""
        view = self.writable()
        args = list(command.args)
        if len(args) < 3:
            raise Bad("STORE needs a message set, an item and flags")
        uids = self.resolve(args.pop(0), uid)
        unchanged_since = None
        if isinstance(args[0], list):
            modifier = args.pop(0)
            if (len(modifier) != 2 or str(modifier[0]).upper() != "UNCHANGEDSINCE"
                    or not str(modifier[1]).isdigit()):
                raise Bad("the only STORE modifier is UNCHANGEDSINCE")
            unchanged_since = int(str(modifier[1]))
            view.condstore = True
        if len(args) != 2:
            raise Bad("STORE needs an item and flags")
        item = str(args[0]).upper()
        silent = item.endswith(".SILENT")
        operation = item.removesuffix(".SILENT")
        if operation not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise Bad("STORE items are FLAGS, +FLAGS and -FLAGS (.SILENT)")
        values = args[1] if isinstance(args[1], list) else [args[1]]
        if any(isinstance(v, str) and v.upper() == "\\RECENT" for v in values):
            raise Bad("\\Recent cannot be changed by STORE (RFC 3501 2.3.2)")
        flags = parse_flags(values)
        mode = {"FLAGS": "", "+FLAGS": "+", "-FLAGS": "-"}[operation]
        changes = await self.account.set_flags(view.folder, uids, mode, flags, unchanged_since)
        changed = {m.uid for m in changes.changed}
        lines = []
        for u in uids:
            message, seq = view.message(u), view.seq(u)
            if message is None or seq is None or u in changes.conflicts:
                continue
            if u in changed:
                view.reported(u, message.modseq)
            if not silent or (view.condstore and u in changed):
                lines.append(view.flags_line(seq, message, with_uid=uid))
        self.send_lines(lines)
        if changes.conflicts:
            numbers = changes.conflicts if uid else [view.seq(u) for u in changes.conflicts]
            return Done("STORE completed; some messages changed meanwhile",
                        f"MODIFIED {_set_text(numbers)}")
        return Done("STORE completed")

    # --- COPY, MOVE --------------------------------------------------------------------------------

    async def cmd_COPY(self, command: Any, uid: bool = False) -> Done:
        """RFC 3501 6.4.7 with COPYUID (RFC 4315); a missing target is `NO [TRYCREATE]`."""
        copied = await self._copy(command, uid, move=False)
        return Done("COPY completed", copied)

    async def cmd_MOVE(self, command: Any, uid: bool = False) -> Done:
        """RFC 6851: COPYUID comes untagged before the EXPUNGEs."""
        self.writable()
        copied = await self._copy(command, uid, move=True)
        if copied:
            self.send(b"* OK [" + copied.encode() + b"] Moved")
        return Done("MOVE completed")

    async def _copy(self, command: Any, uid: bool, move: bool) -> str | None:
        view = self.selected
        if len(command.args) != 2:
            raise Bad(f"{command.name} needs a message set and a folder name")
        uids = self.resolve(command.args[0], uid)
        target = self.folder_name(command.args[1])
        if not uids:
            return None
        try:
            if move:
                pairs = await self.account.move(view.folder, uids, target)
            else:
                pairs = await self.account.copy(view.folder, uids, target)
            state = await self.account.folder(target)
        except FolderError as e:
            raise No(e.text, e.code) from None
        if not pairs:
            return None
        return (f"COPYUID {state.uidvalidity} {_set_text([a for a, _ in pairs])} "
                f"{_set_text([b for _, b in pairs])}")

    # --- UID ---------------------------------------------------------------------------------------

    async def cmd_UID(self, command: Any) -> Done:
        """RFC 3501 6.4.8: UID COPY, MOVE, FETCH, SEARCH, STORE and EXPUNGE."""
        if not command.args or not isinstance(command.args[0], Atom):
            raise Bad("UID needs a command")
        name = command.args[0].upper()
        if name not in ("COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"):
            raise Bad(f"UID {name} is not a command")
        inner = type(command)(command.tag, name, command.args[1:])
        return await getattr(self, f"cmd_{name}")(inner, uid=True)


def _uids_in(uids: list[int], numbers: SequenceSet) -> list[int]:
    """The UIDs of the sorted `uids` that a UID set names, ascending, each once: found by
    bisection per range, not by testing every message (`UID FETCH 1:*` on 100,000 messages)."""
    if not uids:
        return []
    ranges = sorted(numbers.bounds(uids[-1]))
    found: list[int] = []
    for low, high in ranges:
        start = bisect_left(uids, max(low, found[-1] + 1 if found else low))
        found.extend(uids[start:bisect_right(uids, high)])
    return found


def _set_text(numbers: list[int]) -> str:
    """Numbers as a compact sequence set: `1:3,7`."""
    ranges: list[list[int]] = []
    for n in sorted(numbers):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}:{b}" for a, b in ranges)


class _Target:
    """A message as SEARCH sees it; the file is read (once) only if a key needs it, and the
    internal date is made only if a date key asks (most searches are on flags)."""

    __slots__ = ("seq", "uid", "flags", "size", "modseq", "_message", "_folder", "_raw")

    def __init__(self, seq: int, message: Message, flags: frozenset[str], folder: Folder) -> None:
        self.seq, self.uid, self.flags = seq, message.uid, flags
        self.size, self.modseq = message.size, message.modseq
        self._message, self._folder = message, folder
        self._raw: bytes | None = None

    @property
    def internal_date(self) -> datetime:
        return datetime.fromtimestamp(self._message.internal_date, timezone.utc)

    def _content(self) -> bytes:
        if self._raw is None:
            self._raw = read_message(self._folder, self.uid) or b""
        return self._raw

    def header_values(self, name: str) -> list[str]:
        return mime.header_values(self._content(), name)

    def all_headers_text(self) -> str:
        return mime.all_headers_text(self._content())

    def body_text(self) -> str:
        return mime.body_text(self._content())

    def sent_date(self) -> date | None:
        return mime.sent_date(self._content())


def _search(query: Any, candidates: list[_Target], context: SearchContext) -> list[_Target]:
    """Run a search that reads files (in the io pool); each file's bytes are dropped after its
    message is decided."""
    found = []
    for candidate in candidates:
        if query.matches(candidate, context):
            found.append(candidate)
        candidate._raw = None
    return found
