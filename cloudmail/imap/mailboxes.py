"""The IMAP commands of the authenticated state (RFC 3501 6.3): folders, APPEND and IDLE.

A mixin of `ImapServer`. Folder names on the wire are modified UTF-7 (RFC 3501 5.1.3) with `/`
as the hierarchy separator, or UTF-8 once the client has sent `ENABLE UTF8=ACCEPT` (RFC 6855);
inside they are plain text (`Archive/2024`). LIST follows LIST-EXTENDED (RFC 5258) in its common
forms, with CHILDREN (RFC 3348), SPECIAL-USE (RFC 6154) and LIST-STATUS (RFC 5819).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cloudmail.imap.format import astring, parse_internaldate, plist
from cloudmail.imap.results import Bad, Done, No
from cloudmail.imap.selected import SelectedFolder
from cloudmail.imap.tokens import Atom, LiteralFile
from cloudmail.mailstore.account import FolderError, FolderInfo, canonical
from cloudmail.mailstore.folder import Folder, is_system_flag
from cloudmail.mailstore.maildir import INBOX, decode_mutf7, encode_mutf7

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ",
                "SIZE")
PERMANENT_FLAGS = b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)"
ENABLEABLE = ("CONDSTORE", "UTF8=ACCEPT")
#: RFC 5258 3.1 and RFC 6154 3: the LIST selection options we know; any other is BAD.
SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})


class MailboxCommands:
    """CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS, SELECT, EXAMINE,
    APPEND, NAMESPACE, ENABLE, IDLE."""

    # --- names -----------------------------------------------------------------------------------

    def folder_name(self, value: object) -> str:
        """A folder name argument as text; BAD for what cannot be a name. Before ENABLE
        UTF8=ACCEPT a name must be modified UTF-7 in its one canonical form (RFC 3501 5.1.3: a
        bare `&`, 8-bit text or an encoded printable character is not)."""
        if isinstance(value, (list, LiteralFile)):
            raise Bad("a folder name was expected")
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Bad("folder names are UTF-8 or modified UTF-7") from None
        if "UTF8=ACCEPT" not in self.enabled:
            try:
                decoded = decode_mutf7(text)
            except ValueError:
                decoded = None
            if decoded is None or encode_mutf7(decoded) != text:
                raise Bad("malformed modified UTF-7 in a folder name")
            text = decoded
        return canonical(text.rstrip("/") if text != "/" else text)

    def wire_name(self, name: str) -> bytes:
        """A folder name for a response."""
        if "UTF8=ACCEPT" in self.enabled:
            return astring(name)
        return astring("/".join(encode_mutf7(part) for part in name.split("/")))

    def _failed(self, error: FolderError) -> Exception:
        return No(error.text, error.code)

    # --- folders ---------------------------------------------------------------------------------

    async def cmd_CREATE(self, command: Any) -> Done:
        if len(command.args) != 1:
            raise Bad("CREATE needs one folder name")
        try:
            await self.account.create(self.folder_name(command.args[0]))
        except FolderError as e:
            raise self._failed(e) from None
        return Done("CREATE completed")

    async def cmd_DELETE(self, command: Any) -> Done:
        if len(command.args) != 1:
            raise Bad("DELETE needs one folder name")
        name = self.folder_name(command.args[0])
        if self.selected is not None and self.selected.folder.name == name:
            self.deselect()
        try:
            await self.account.delete(name)
        except FolderError as e:
            raise self._failed(e) from None
        return Done("DELETE completed")

    async def cmd_RENAME(self, command: Any) -> Done:
        if len(command.args) != 2:
            raise Bad("RENAME needs two folder names")
        old, new = (self.folder_name(a) for a in command.args)
        try:
            await self.account.rename(old, new)
        except FolderError as e:
            raise self._failed(e) from None
        return Done("RENAME completed")

    async def cmd_SUBSCRIBE(self, command: Any) -> Done:
        return await self._subscribe(command, True)

    async def cmd_UNSUBSCRIBE(self, command: Any) -> Done:
        return await self._subscribe(command, False)

    async def _subscribe(self, command: Any, subscribed: bool) -> Done:
        if len(command.args) != 1:
            raise Bad(f"{command.name} needs one folder name")
        try:
            await self.account.subscribe(self.folder_name(command.args[0]), subscribed)
        except FolderError as e:
            raise self._failed(e) from None
        return Done(f"{command.name} completed")

    async def cmd_NAMESPACE(self, command: Any) -> Done:
        """RFC 2342: one personal namespace, no prefix, `/` as separator."""
        self.send(b'* NAMESPACE (("" "/")) NIL NIL')
        return Done("NAMESPACE completed")

    async def cmd_ENABLE(self, command: Any) -> Done:
        """RFC 5161: CONDSTORE (RFC 7162) and UTF8=ACCEPT (RFC 6855)."""
        if not command.args:
            raise Bad("ENABLE needs capability names")
        enabled = []
        for value in command.args:
            name = str(value).upper()
            if name in ENABLEABLE and name not in self.enabled:
                self.enabled.add(name)
                enabled.append(name)
                if name == "CONDSTORE" and self.selected is not None:
                    self.selected.condstore = True
        self.send(b"* ENABLED" + b"".join(b" " + n.encode() for n in enabled))
        return Done("ENABLE completed")

    # --- LIST, LSUB, STATUS --------------------------------------------------------------------

    async def cmd_LIST(self, command: Any) -> Done:
        """RFC 3501 6.3.8 and RFC 5258: `LIST [(selection)] reference pattern(s) [RETURN (…)]`."""
        args = list(command.args)
        selection: set[str] = set()
        if args and isinstance(args[0], list):
            selection = {str(a).upper() for a in args.pop(0)}
            unknown = selection - SELECTION_OPTIONS
            if unknown:
                raise Bad(f"unknown LIST selection option {' '.join(sorted(unknown))}")
        returns: set[str] = set()
        status_items: list[str] = []
        if len(args) >= 4 and str(args[-2]).upper() == "RETURN" and isinstance(args[-1], list):
            options = args[-1]
            args = args[:-2]
            index = 0
            while index < len(options):
                option = str(options[index]).upper()
                if option == "STATUS" and index + 1 < len(options):
                    status_items = _status_items(options[index + 1])
                    index += 1
                returns.add(option)
                index += 1
        if len(args) != 2:
            raise Bad("LIST needs a reference and a pattern")
        reference = self.folder_name(args[0]) if args[0] not in (b"", Atom("")) else ""
        patterns = args[1] if isinstance(args[1], list) else [args[1]]
        texts = [_pattern_text(p, "UTF8=ACCEPT" in self.enabled) for p in patterns]
        if texts == [""] and not selection:
            self.send(b'* LIST (\\Noselect) "/" ""')
            return Done("LIST completed")
        folders = await self.account.list_folders()
        subscribed_only = "SUBSCRIBED" in selection
        show_subscribed = subscribed_only or "SUBSCRIBED" in returns
        special_only = "SPECIAL-USE" in selection
        for info in folders:
            if not any(_matches(_full(reference, t), info.name) for t in texts):
                continue
            if subscribed_only and not info.subscribed:
                continue
            if special_only and not info.special_use:
                continue
            attributes = _attributes(info, show_subscribed)
            self.send(b"* LIST " + plist(attributes) + b' "/" ' + self.wire_name(info.name))
            if status_items and info.exists:
                await self._status_line(info.name, status_items)
        return Done("LIST completed")

    async def cmd_LSUB(self, command: Any) -> Done:
        """RFC 3501 6.3.9: the subscribed folders matching the pattern."""
        if len(command.args) != 2:
            raise Bad("LSUB needs a reference and a pattern")
        reference = self.folder_name(command.args[0]) if command.args[0] not in (b"", Atom("")) \
            else ""
        pattern = _full(reference, _pattern_text(command.args[1], "UTF8=ACCEPT" in self.enabled))
        for info in await self.account.list_folders():
            if info.subscribed and _matches(pattern, info.name):
                attributes = [] if info.exists else [b"\\Noselect"]
                self.send(b"* LSUB " + plist(attributes) + b' "/" ' + self.wire_name(info.name))
        return Done("LSUB completed")

    async def cmd_STATUS(self, command: Any) -> Done:
        """RFC 3501 6.3.10 (+ HIGHESTMODSEQ, RFC 7162; SIZE, RFC 8438)."""
        if len(command.args) != 2 or not isinstance(command.args[1], list):
            raise Bad("STATUS needs a folder name and a list of items")
        items = _status_items(command.args[1])
        await self._status_line(self.folder_name(command.args[0]), items)
        return Done("STATUS completed")

    async def _status_line(self, name: str, items: list[str]) -> None:
        folder = await self._open_folder(name)
        values = []
        for item in items:
            values.append(f"{item} {_status_value(folder, item)}".encode())
        self.send(b"* STATUS " + self.wire_name(name) + b" " + plist(values))

    async def _open_folder(self, name: str) -> Folder:
        try:
            return await self.account.folder(name)
        except FolderError as e:
            raise self._failed(e) from None

    # --- SELECT, EXAMINE -----------------------------------------------------------------------

    async def cmd_SELECT(self, command: Any) -> Done:
        return await self._select(command, readonly=False)

    async def cmd_EXAMINE(self, command: Any) -> Done:
        return await self._select(command, readonly=True)

    async def _select(self, command: Any, readonly: bool) -> Done:
        """RFC 3501 6.3.1/6.3.2 with the responses clients rely on (FLAGS, PERMANENTFLAGS,
        EXISTS, RECENT, UNSEEN, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ)."""
        if not command.args or len(command.args) > 2:
            raise Bad(f"{command.name} needs a folder name")
        condstore = "CONDSTORE" in self.enabled
        if len(command.args) == 2:
            parameters = command.args[1]
            if not isinstance(parameters, list) or [str(p).upper() for p in parameters] \
                    != ["CONDSTORE"]:
                raise Bad("the only SELECT parameter is CONDSTORE")
            condstore = True
        name = self.folder_name(command.args[0])
        if self.selected is not None:
            self.deselect()
            self.send(b"* OK [CLOSED] Previous folder closed")
        folder = await self._open_folder(name)
        view = SelectedFolder(folder, readonly=readonly, condstore=condstore)
        keywords = sorted({f for m in folder.messages.values() for f in m.flags
                           if not is_system_flag(f)})
        flags = [b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen", b"\\Draft",
                 *(k.encode() for k in keywords)]
        lines = [b"* FLAGS " + plist(flags),
                 b"* OK [PERMANENTFLAGS " + (b"()" if readonly else PERMANENT_FLAGS)
                 + b"] Flags permitted",
                 b"* %d EXISTS" % view.exists, b"* %d RECENT" % len(view.recent)]
        first_unseen = next((seq for seq, uid in enumerate(view.uids, 1)
                             if "\\Seen" not in folder.messages[uid].flags), None)
        if first_unseen is not None:
            lines.append(b"* OK [UNSEEN %d] First unseen" % first_unseen)
        lines += [b"* OK [UIDVALIDITY %d] UIDs valid" % folder.uidvalidity,
                  b"* OK [UIDNEXT %d] Predicted next UID" % folder.uidnext,
                  b"* OK [HIGHESTMODSEQ %d] Highest" % folder.highestmodseq]
        self.send_lines(lines)
        self.enter_selected(view)
        return Done(f"{command.name} completed",
                    "READ-ONLY" if readonly else "READ-WRITE")

    # --- APPEND, IDLE --------------------------------------------------------------------------

    async def cmd_APPEND(self, command: Any) -> Done:
        """RFC 3501 6.3.11 with UIDPLUS's APPENDUID (RFC 4315): `APPEND name [(flags)]
        [date-time] message`; a missing folder is `NO [TRYCREATE]`."""
        args = list(command.args)
        if len(args) < 2:
            raise Bad("APPEND needs a folder name and a message")
        name = self.folder_name(args.pop(0))
        message = args.pop()
        flags: frozenset[str] = frozenset()
        received: float | None = None
        if args and isinstance(args[0], list):
            flags = parse_flags(args.pop(0))
        if args:
            try:
                received = parse_internaldate(_plain(args.pop(0))).timestamp()
            except ValueError:
                raise Bad("bad date-time in APPEND") from None
        if args:
            raise Bad("APPEND takes a folder name, flags, a date-time and a message")
        if isinstance(message, LiteralFile):
            source: bytes | Path = message.path
        elif isinstance(message, bytes):
            source = message
        else:
            raise Bad("the message must be a literal")
        if (message.size if isinstance(message, LiteralFile) else len(message)) == 0:
            raise No("an empty message cannot be stored")
        try:
            uidvalidity, uid = await self.account.append(name, source, flags, received)
        except FolderError as e:
            raise self._failed(e) from None
        return Done("APPEND completed", f"APPENDUID {uidvalidity} {uid}")

    async def cmd_IDLE(self, command: Any) -> Done:
        """RFC 2177: report changes as they happen (deliveries are seen at once, other
        programs' changes within `account.POLL_INTERVAL`) until the client sends DONE."""
        view = self.selected

        def changed() -> None:
            if self.selected is view and view is not None:
                self.send_lines(view.updates(allow_expunge=True))
        if view is not None:
            view.listen(changed)
        try:
            self.send(b"+ idling")
            if view is not None:
                self.send_lines(view.updates(allow_expunge=True))
            line = await self.next_line()
        finally:
            if view is not None:
                view.unlisten(changed)
        if b"".join(getattr(line, "texts", [b""])).strip().upper() != b"DONE":
            raise Bad("IDLE ends with DONE")
        return Done("IDLE terminated")


def parse_flags(values: list) -> frozenset[str]:
    """A list of flags for APPEND and STORE: system flags by their canonical spelling, keywords
    as atoms; `\\Recent` cannot be set and other backslashed words are refused."""
    flags = set()
    canonical_flags = {f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen",
                                              "\\Draft")}
    for value in values:
        if not isinstance(value, Atom):
            raise Bad("flags are atoms")
        flag = str(value)
        if flag.startswith("\\"):
            if flag.upper() == "\\RECENT":
                continue
            if flag.upper() not in canonical_flags:
                raise Bad(f"unknown system flag {flag}")
            flag = canonical_flags[flag.upper()]
        elif not flag or "*" in flag or "%" in flag or "[" in flag:
            raise Bad(f"invalid keyword {flag}")
        flags.add(flag)
    return frozenset(flags)


def _plain(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def _pattern_text(value: object, utf8: bool) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if utf8 else decode_mutf7(text)


def _full(reference: str, pattern: str) -> str:
    """RFC 3501 6.3.8: the reference is a prefix for the pattern."""
    if not reference or pattern.startswith("/"):
        return pattern
    return reference.rstrip("/") + "/" + pattern


def _matches(pattern: str, name: str) -> bool:
    """`*` matches anything, `%` anything but the separator; INBOX in any case (RFC 3501 6.3.8)."""
    if pattern[:5].upper() == INBOX:
        pattern = INBOX + pattern[5:]
    regex = "".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name) is not None


def _attributes(info: FolderInfo, subscribed: bool) -> list[bytes]:
    attributes = [b"\\HasChildren" if info.has_children else b"\\HasNoChildren"]
    if not info.exists:
        attributes.insert(0, b"\\NonExistent")
        attributes.insert(0, b"\\Noselect")
    if info.special_use:
        attributes.append(info.special_use.encode())
    if subscribed and info.subscribed:
        attributes.append(b"\\Subscribed")
    return attributes


def _status_items(values: object) -> list[str]:
    """The item names of STATUS, or of LIST's RETURN (STATUS (…)) (RFC 5819); BAD for an
    unknown one or an empty list."""
    items = [str(i).upper() for i in values] if isinstance(values, list) else []
    if not items or any(i not in STATUS_ITEMS for i in items):
        raise Bad(f"STATUS items are {' '.join(STATUS_ITEMS)}")
    return items


def _status_value(folder: Folder, item: str) -> int:
    messages = folder.messages.values()
    if item == "MESSAGES":
        return len(folder.messages)
    if item == "RECENT":
        return sum(1 for uid in folder.uids if uid > folder.recent_claimed)
    if item == "UIDNEXT":
        return folder.uidnext
    if item == "UIDVALIDITY":
        return folder.uidvalidity
    if item == "UNSEEN":
        return sum(1 for m in messages if "\\Seen" not in m.flags)
    if item == "HIGHESTMODSEQ":
        return folder.highestmodseq
    return sum(m.size for m in messages)
