"""One mailbox's Maildir tree as IMAP sees it: its folders, and every change to their messages.

`MailAccount` is shared by all the sessions of one mailbox in the process, so two clients see
the same UIDs and each other's changes at once; `MailAccounts` hands them out and closes an
account when its last session has gone. Every method is a coroutine for the reactor: disk work
runs in the io pool, and changes to a folder hold its lock (see `folder.py`).

Folders made on first use (RFC 6154 SPECIAL-USE): Sent, Drafts, Trash, Spam (`\\Junk`, the
folder delivery files junk into) and Archive.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cloudmail.address import Address
from cloudmail.mailstore import folder as folders
from cloudmail.mailstore.folder import Changes, Folder, split_name, with_flags
from cloudmail.mailstore.index import INDEX_FILE, MailIndex
from cloudmail.mailstore.maildir import (INBOX, BadFolderName, MaildirStore, fsync_dir,
                                         imap_folder_name)
from cloudmail.threads import ThreadPools

log = Logger()

SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Spam": "\\Junk",
               "Archive": "\\Archive"}
#: How often folders with a session in IDLE are checked for changes made by other programs.
POLL_INTERVAL = 1.0
#: Seconds an account stays open after its last session (its folders stay in memory).
LINGER = 60.0


class FolderError(Exception):
    """A folder operation that cannot be done; `code` is the IMAP response code if any
    (NONEXISTENT, ALREADYEXISTS, CANNOT, TRYCREATE — RFC 5530)."""

    def __init__(self, code: str | None, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True)
class FolderInfo:
    """A folder for LIST: its name, whether it exists (a parent of one that does may not),
    special use, subscription and whether it has children."""

    name: str
    exists: bool
    special_use: str | None
    subscribed: bool
    has_children: bool


def canonical(name: str) -> str:
    """INBOX in any case is INBOX (RFC 3501 5.1); other names are case-sensitive."""
    if name.upper() == INBOX:
        return INBOX
    if name.upper().startswith(INBOX + "/"):
        return INBOX + name[len(INBOX):]
    return name


class MailAccount:
    """The folders of one mailbox (see the module docstring)."""

    def __init__(self, address: Address, store: MaildirStore, pools: ThreadPools) -> None:
        self.address = address
        self._store = store
        self._pools = pools
        self.root = store.mailbox_path(address)
        self._index: MailIndex | None = None
        self._folders: dict[str, Folder] = {}
        self.sessions = 0
        #: Fires when `open` is done (sessions logging in at the same moment wait for it).
        self.opened: Deferred[None] = succeed(None)
        #: The pending close once the last session has gone (see `MailAccounts.release`).
        self.closing: IDelayedCall | None = None

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work for this account in the io pool."""
        return self._pools.run("io", fn, *args)

    @property
    def index(self) -> MailIndex:
        assert self._index is not None, "the account is not open"
        return self._index

    async def open(self) -> None:
        """Make the Maildir and the special folders if missing, and open the index."""
        self._index = await self.run(self._open)

    def _open(self) -> MailIndex:
        for name in (INBOX, *SPECIAL_USE):
            self._store.ensure_folder(self.address, name)
        index = MailIndex(self.root / INDEX_FILE)
        known = {row.name for row in index.folders()}
        for name in self._folders_on_disk():
            if name not in known:
                index.add_folder(name, subscribed=True)
        return index

    def _folders_on_disk(self) -> list[str]:
        names = [INBOX]
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") and entry.is_dir() and entry.name not in (".", ".."):
                try:
                    names.append(imap_folder_name(entry.name))
                except BadFolderName:
                    continue
        return names

    async def close(self) -> None:
        """Forget the folders and close the index (the last session has gone)."""
        index, self._index = self._index, None
        self._folders.clear()
        if index is not None:
            await self.run(index.close)

    # --- folders -------------------------------------------------------------------------------

    async def list_folders(self) -> list[FolderInfo]:
        """Every folder, and the parents of nested ones even where they do not exist."""
        rows = {row.name: row for row in await self.run(self.index.folders)}
        on_disk = set(await self.run(self._folders_on_disk))
        names = set(on_disk)
        for name in on_disk:
            parts = name.split("/")
            names.update("/".join(parts[:i]) for i in range(1, len(parts)))
        found = []
        for name in sorted(names, key=lambda n: (n != INBOX, n)):
            row = rows.get(name)
            found.append(FolderInfo(
                name, name in on_disk, SPECIAL_USE.get(name), bool(row and row.subscribed),
                any(other.startswith(name + "/") for other in names)))
        return found

    async def create(self, name: str) -> None:
        """CREATE (RFC 3501 6.3.3); parents are made as needed (Maildir++ keeps them apart)."""
        name = canonical(name)
        if name == INBOX:
            raise FolderError("ALREADYEXISTS", "INBOX always exists")
        path = self._folder_path(name)
        if path.is_dir():
            raise FolderError("ALREADYEXISTS", f"folder {name} exists already")
        await self.run(self._create, name)

    def _create(self, name: str) -> None:
        """Make the folder and, as RFC 3501 6.3.3 asks, any missing parent (`A` for `A/B`)."""
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if not self._store.folder_path(self.address, folder).is_dir():
                self._store.ensure_folder(self.address, folder)
                self.index.add_folder(folder, subscribed=True)

    async def delete(self, name: str) -> None:
        """DELETE (RFC 3501 6.3.4): the folder and its messages; INBOX cannot be deleted."""
        name = canonical(name)
        if name == INBOX:
            raise FolderError("CANNOT", "INBOX cannot be deleted")
        path = self._folder_path(name)
        if not path.is_dir():
            raise FolderError("NONEXISTENT", f"no folder {name}")
        self._folders.pop(name, None)
        await self.run(self._delete, name, path)

    def _delete(self, name: str, path: Path) -> None:
        trash = self.root / f".deleting-{time.time_ns()}"
        os.rename(path, trash)
        fsync_dir(self.root)
        self.index.remove_folder(name)
        self._store.forget(path)
        for directory, subdirs, files in os.walk(trash, topdown=False):
            for file in files:
                os.unlink(os.path.join(directory, file))
            for sub in subdirs:
                os.rmdir(os.path.join(directory, sub))
        os.rmdir(trash)

    async def rename(self, old: str, new: str) -> None:
        """RENAME (RFC 3501 6.3.5) with its children; INBOX's messages move to a new folder."""
        old, new = canonical(old), canonical(new)
        source, target = self._folder_path(old), self._folder_path(new)
        if new == INBOX or target.is_dir():
            raise FolderError("ALREADYEXISTS", f"folder {new} exists already")
        if not source.is_dir():
            raise FolderError("NONEXISTENT", f"no folder {old}")
        if old == INBOX:
            await self._rename_inbox(new)
            return
        for name in [n for n in self._folders if n == old or n.startswith(old + "/")]:
            del self._folders[name]
        await self.run(self._rename, old, new)

    def _rename(self, old: str, new: str) -> None:
        moves = []
        for name in self._folders_on_disk():
            if name == old or name.startswith(old + "/"):
                moves.append((self._folder_path(name), self._folder_path(new + name[len(old):])))
        for source, target in moves:
            os.rename(source, target)
            self._store.forget(source)
        fsync_dir(self.root)
        self.index.rename_folder(old, new)

    async def _rename_inbox(self, new: str) -> None:
        """RFC 3501 6.3.5: renaming INBOX moves all its messages to the new folder."""
        await self.create(new)
        inbox = await self.folder(INBOX)
        uids = list(inbox.uids)
        if uids:
            await self.move(inbox, uids, new)

    async def subscribe(self, name: str, subscribed: bool) -> None:
        """SUBSCRIBE / UNSUBSCRIBE (RFC 3501 6.3.6, 6.3.7)."""
        name = canonical(name)
        if subscribed and not self._folder_path(name).is_dir():
            raise FolderError("NONEXISTENT", f"no folder {name}")
        await self.run(self.index.set_subscribed, name, subscribed)

    def _folder_path(self, name: str) -> Path:
        try:
            return self._store.folder_path(self.address, name)
        except BadFolderName as e:
            raise FolderError("CANNOT", str(e)) from None

    # --- one folder's messages -----------------------------------------------------------------

    async def folder(self, name: str) -> Folder:
        """The shared state of an existing folder, brought up to date with the disk."""
        name = canonical(name)
        path = self._folder_path(name)
        state = self._folders.get(name)
        if state is None:
            state = await self.run(self._load, name, path)
            state = self._folders.setdefault(name, state)
        await self.sync(state)
        return state

    def _load(self, name: str, path: Path) -> Folder:
        if not (path / "cur").is_dir():
            raise FolderError("NONEXISTENT", f"no folder {name}")
        row = self.index.folder(name) or self.index.add_folder(name)
        return Folder(name, path, row, self.index.messages(name))

    def open_folder(self, name: str) -> Folder | None:
        """The state of a folder some session has open, or None."""
        return self._folders.get(canonical(name))

    def open_folders(self) -> list[Folder]:
        return list(self._folders.values())

    async def _change(self, state: Folder, job: Callable[..., Changes], *args: Any) -> Changes:
        """Run one disk job on a folder under its lock and apply what it did."""
        await state.lock.acquire()
        try:
            changes = await self.run(job, state, self.index, *args)
            state.apply(changes)
            return changes
        finally:
            state.lock.release()

    async def sync(self, state: Folder) -> Changes:
        """Take in what changed on disk (new deliveries, other programs' work)."""
        return await self._change(state, folders.scan)

    async def set_flags(self, state: Folder, uids: list[int], mode: str, flags: frozenset[str],
                        unchanged_since: int | None = None) -> Changes:
        """STORE: see `folder.set_flags`."""
        return await self._change(state, folders.set_flags, uids, mode, flags, unchanged_since)

    async def expunge(self, state: Folder, uids: list[int]) -> Changes:
        return await self._change(state, folders.expunge, uids)

    async def append(self, name: str, source: BinaryIO | bytes, flags: frozenset[str],
                     received: float | None) -> tuple[int, int]:
        """APPEND (RFC 3501 6.3.11): store durably, then give it a UID; (UIDVALIDITY, UID)."""
        name = canonical(name)
        if not self._folder_path(name).is_dir():
            raise FolderError("TRYCREATE", f"no folder {name}")
        state = await self.folder(name)
        await state.lock.acquire()
        try:
            changes = await self.run(self._append, state, source, flags, received)
            state.apply(changes)
        finally:
            state.lock.release()
        return state.uidvalidity, changes.added[0].uid

    def _append(self, state: Folder, source: BinaryIO | bytes, flags: frozenset[str],
                received: float | None) -> Changes:
        before = folders.dir_mtimes(state.path)
        stored = self._store.deliver(self.address, source, folder=state.name,
                                     seen_by_reader=True, received=received or time.time())
        name = with_flags(stored.name, flags)
        if name != stored.name:
            os.rename(stored.path, stored.path.with_name(name))
        internal_date = os.stat(stored.path.with_name(name)).st_mtime
        return folders.add_files(state, self.index, before,
                                 [(name, flags, stored.size, internal_date)])

    async def copy(self, source: Folder, uids: list[int], target_name: str) -> list[tuple[int, int]]:
        """COPY (RFC 3501 6.4.7) with UIDPLUS's answer: [(source UID, new UID)], flags and
        internal dates kept. The files are hard links, so a copy costs no disk space."""
        target_name = canonical(target_name)
        if not self._folder_path(target_name).is_dir():
            raise FolderError("TRYCREATE", f"no folder {target_name}")
        target = await self.folder(target_name)
        messages = [source.messages[uid] for uid in uids if uid in source.messages]
        await target.lock.acquire()
        try:
            changes = await self.run(self._copy, source, target, messages)
            target.apply(changes)
        finally:
            target.lock.release()
        return [(m.uid, added.uid) for m, added in zip(messages, changes.added)]

    def _copy(self, source: Folder, target: Folder, messages: list) -> Changes:
        before = folders.dir_mtimes(target.path)
        files = []
        for message in messages:
            base = self._store.unique_name() + f",S={message.size}"
            name = with_flags(base, message.flags)
            origin, copy = source.path / "cur" / message.name, target.path / "cur" / name
            try:
                os.link(origin, copy)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                with open(origin, "rb") as f:
                    stored = self._store.deliver(self.address, f, folder=target.name,
                                                 seen_by_reader=True,
                                                 received=message.internal_date)
                os.rename(stored.path, copy)
            files.append((name, message.flags, message.size, message.internal_date))
        fsync_dir(target.path / "cur")
        return folders.add_files(target, self.index, before, files)

    async def move(self, source: Folder, uids: list[int], target_name: str) -> list[tuple[int, int]]:
        """MOVE (RFC 6851): copy, then expunge the originals."""
        copied = await self.copy(source, uids, target_name)
        await self.expunge(source, [old for old, _ in copied])
        return copied

    async def structures(self, state: Folder, uids: list[int],
                         compute: Callable[[bytes], tuple[bytes, bytes]]
                         ) -> dict[int, tuple[bytes, bytes]]:
        """ENVELOPE and BODYSTRUCTURE of these messages, by UID: from the index, or computed
        from the file by `compute` once and then kept there."""
        return await self.run(self._structures, state, [u for u in uids if u in state.messages],
                              compute)

    def _structures(self, state: Folder, uids: list[int],
                    compute: Callable[[bytes], tuple[bytes, bytes]]
                    ) -> dict[int, tuple[bytes, bytes]]:
        found = self.index.cached_structure(state.name, uids)
        missing = [uid for uid in uids if uid not in found]
        computed = {uid: compute(content)
                    for uid, content in read_messages(state, missing).items()}
        if computed:
            self.index.cache_structure(state.name, computed)
        return found | computed

    async def read(self, state: Folder, uids: list[int]) -> dict[int, bytes]:
        """The stored bytes of these messages, by UID (see `read_messages`)."""
        return await self.run(read_messages, state, uids)


def read_message(state: Folder, uid: int) -> bytes | None:
    """The stored bytes of one message (blocking), or None once it is gone. Reading takes no
    lock: when a STORE in another thread has just renamed the file (new flags) and the folder
    does not know the new name yet, the file is found by its unique base name instead."""
    message = state.messages.get(uid)
    if message is None:
        return None
    cur = state.path / "cur"
    try:
        with open(cur / message.name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        pass
    for entry in os.scandir(cur):
        if split_name(entry.name)[0] == message.base:
            try:
                with open(entry.path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None
    return None


def read_messages(state: Folder, uids: list[int]) -> dict[int, bytes]:
    """The stored bytes of these messages, by UID (blocking). A message whose file is gone is
    left out: another program removed it, and the next sync expunges it."""
    found = {}
    for uid in uids:
        content = read_message(state, uid)
        if content is not None:
            found[uid] = content
    return found


def _shared(deferred: Deferred[None]) -> Deferred[None]:
    """A Deferred that fires like `deferred` without taking its result away from others."""
    mirror: Deferred[None] = Deferred()

    def relay(result: object) -> object:
        if isinstance(result, Failure):
            mirror.errback(result)
        else:
            mirror.callback(None)
        return result
    deferred.addBoth(relay)
    return mirror


class MailAccounts:
    """The open `MailAccount`s of the process, shared by the sessions of each mailbox."""

    def __init__(self, store: MaildirStore, pools: ThreadPools, linger: float = LINGER) -> None:
        self._store = store
        self._pools = pools
        self.linger = linger
        self._accounts: dict[Address, MailAccount] = {}
        self._poll = LoopingCall(lambda: ensureDeferred(self._poll_listened()))

    async def open(self, address: Address) -> MailAccount:
        """The account of `address`, opened for one more session (pair with `release`)."""
        account = self._accounts.get(address)
        if account is None:
            account = MailAccount(address, self._store, self._pools)
            self._accounts[address] = account
            account.opened = ensureDeferred(account.open())
            try:
                await account.opened
            except BaseException:
                del self._accounts[address]
                raise
        else:
            # Another session is opening it right now: share the outcome (asking its
            # Deferred through a new one, so that each waiter gets the result).
            await _shared(account.opened)
            if account._index is None:
                raise FolderError("UNAVAILABLE", "the mailbox could not be opened")
        account.sessions += 1
        if account.closing is not None:
            if account.closing.active():
                account.closing.cancel()
            account.closing = None
        if not self._poll.running:
            self._poll.start(POLL_INTERVAL, now=False)
        return account

    @property
    def sessions(self) -> int:
        """The sessions open on all accounts."""
        return sum(account.sessions for account in self._accounts.values())

    async def release(self, account: MailAccount) -> None:
        """One session of the account has ended. The account stays open `linger` seconds more,
        so a client that reconnects (many do, for every check) finds its folders in memory."""
        account.sessions -= 1
        if account.sessions > 0:
            return
        if self.linger > 0:
            account.closing = reactor.callLater(self.linger, self._close_unused, account)
        else:
            await self._close(account)

    def _close_unused(self, account: MailAccount) -> None:
        account.closing = None
        if account.sessions <= 0:
            ensureDeferred(self._close(account)).addErrback(
                lambda failure: log.failure("closing {address} failed", failure,
                                            address=str(account.address)))

    async def _close(self, account: MailAccount) -> None:
        if self._accounts.get(account.address) is account:
            del self._accounts[account.address]
            await account.close()
        if not self._accounts and self._poll.running:
            self._poll.stop()

    async def close_all(self) -> None:
        """Close every account (the service stops)."""
        for account in list(self._accounts.values()):
            if account.closing is not None and account.closing.active():
                account.closing.cancel()
            await self._close(account)

    def delivered(self, mailbox: Address, folder: str) -> None:
        """A message was delivered here: open sessions see it now (IDLE), not at the next poll."""
        account = self._accounts.get(mailbox)
        state = account.open_folder(folder) if account is not None else None
        if state is not None:
            ensureDeferred(account.sync(state)).addErrback(
                lambda failure: log.failure("sync of {folder} failed", failure, folder=folder))

    async def _poll_listened(self) -> None:
        """Sync every folder a session is waiting on (IDLE), to see other programs' changes."""
        for account in list(self._accounts.values()):
            for state in account.open_folders():
                if state.listeners and not state.lock.locked:
                    try:
                        await account.sync(state)
                    except Exception:  # noqa: BLE001 -- one broken folder must not stop the poll
                        log.failure("polling {folder} failed", folder=state.name)
