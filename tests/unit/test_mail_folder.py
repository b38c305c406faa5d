"""The Maildir index and the folder disk jobs (`cloudmail.mailstore.index`, `.folder`): UIDs
given once and kept, flags in file names, other programs' changes taken in by a rescan."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cloudmail.address import Address
from cloudmail.mailstore import folder as jobs
from cloudmail.mailstore.folder import Folder, split_name, system_flags, with_flags
from cloudmail.mailstore.index import INDEX_FILE, MailIndex
from cloudmail.mailstore.maildir import MaildirStore

ALICE = Address("alice", "example.com")


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail", "host.test")


@pytest.fixture
def index(store: MaildirStore) -> MailIndex:
    store.ensure_folder(ALICE)
    index = MailIndex(store.mailbox_path(ALICE) / INDEX_FILE)
    yield index
    index.close()


def load(store: MaildirStore, index: MailIndex, name: str = "INBOX") -> Folder:
    row = index.folder(name) or index.add_folder(name)
    return Folder(name, store.folder_path(ALICE, name), row, index.messages(name))


def rescan(folder: Folder, index: MailIndex, force: bool = True) -> jobs.Changes:
    changes = jobs.scan(folder, index, force=force)
    folder.apply(changes)
    return changes


def test_flags_live_in_the_file_name():
    """System flags are the Maildir info letters; unknown letters (P, keyword letters) stay."""
    assert system_flags("1.M2.h,S=5:2,FRS") == {"\\Flagged", "\\Answered", "\\Seen"}
    assert with_flags("1.M2.h,S=5:2,Pa", frozenset({"\\Seen", "\\Deleted", "$Label"})) == \
        "1.M2.h,S=5:2,PSTa"
    assert split_name("1.M2.h,S=5") == ("1.M2.h,S=5", "")


def test_new_mail_gets_uids_in_arrival_order_and_moves_to_cur(store, index):
    """Delivered files in new/ move to cur/ and get UIDs 1, 2, 3 in the order they arrived."""
    paths = []
    for n in range(3):
        paths.append(store.deliver(ALICE, b"Subject: %d\r\n\r\nx\r\n" % n).path)
        os.utime(paths[-1], (1000 + n, 1000 + n))
    folder = load(store, index)
    changes = rescan(folder, index)
    assert [m.uid for m in changes.added] == [1, 2, 3]
    assert [m.base for m in changes.added] == [split_name(p.name)[0] for p in paths]
    assert os.listdir(folder.path / "new") == []
    assert folder.uidnext == 4 and len(folder.messages) == 3


def test_uids_are_kept_in_the_index_across_a_reopen(store, index):
    """A new Folder over the same index has the same UIDs, UIDVALIDITY and counters, and an
    unchanged Maildir needs no directory listing."""
    store.deliver(ALICE, b"a\r\n")
    folder = load(store, index)
    rescan(folder, index)
    again = load(store, index)
    assert again.uidvalidity == folder.uidvalidity and again.uidnext == folder.uidnext
    assert {u: m.base for u, m in again.messages.items()} == \
        {u: m.base for u, m in folder.messages.items()}
    assert jobs.scan(again, index).empty


def test_other_programs_changes_are_taken_in(store, index):
    """A file put into cur/ gets the next UID; one renamed with other flags changes its flags
    and modseq; one removed is expunged. UIDs of the others never change."""
    for n in range(3):
        store.deliver(ALICE, b"m%d\r\n" % n)
    folder = load(store, index)
    rescan(folder, index)
    cur = folder.path / "cur"
    first, second, third = (folder.messages[u] for u in (1, 2, 3))
    os.rename(cur / first.name, cur / (first.base + ":2,S"))
    os.unlink(cur / second.name)
    (cur / "999.M1P1.other,S=3:2,F").write_bytes(b"new")
    modseq = folder.highestmodseq
    changes = rescan(folder, index)
    assert changes.removed == [2]
    assert [m.uid for m in changes.added] == [4]
    assert folder.messages[1].flags == {"\\Seen"} and folder.messages[1].modseq > modseq
    assert folder.messages[4].flags == {"\\Flagged"}
    assert folder.messages[3].base == third.base
    assert sorted(folder.messages) == [1, 3, 4]


def test_set_flags_renames_and_keeps_keywords_in_the_index(store, index):
    """STORE renames the file for system flags and keeps keywords in the index; a conditional
    STORE leaves a message changed since then alone."""
    store.deliver(ALICE, b"m\r\n")
    folder = load(store, index)
    rescan(folder, index)
    changes = jobs.set_flags(folder, index, [1], "+", frozenset({"\\Seen", "$Work"}))
    folder.apply(changes)
    message = folder.messages[1]
    assert message.name.endswith(":2,S") and (folder.path / "cur" / message.name).exists()
    assert message.flags == {"\\Seen", "$Work"}
    assert load(store, index).messages[1].flags == {"\\Seen", "$Work"}
    stale = jobs.set_flags(folder, index, [1], "-", frozenset({"\\Seen"}),
                           unchanged_since=message.modseq - 1)
    assert stale.conflicts == [1] and stale.empty


def test_expunge_and_add_files(store, index):
    """Expunge removes the files and the rows; files we link into cur/ get the next UIDs."""
    store.deliver(ALICE, b"m\r\n")
    folder = load(store, index)
    rescan(folder, index)
    folder.apply(jobs.expunge(folder, index, [1]))
    assert folder.messages == {} and os.listdir(folder.path / "cur") == []
    before = jobs.dir_mtimes(folder.path)
    stored = store.deliver(ALICE, b"appended\r\n", seen_by_reader=True, received=time.time())
    folder.apply(jobs.add_files(folder, index, before,
                                [(stored.name, frozenset(), stored.size, time.time())]))
    assert sorted(folder.messages) == [2]
    assert jobs.scan(folder, index).empty


def test_a_folder_made_again_gets_a_new_uidvalidity(index):
    """RFC 3501 2.3.1.1: UIDs of a deleted folder are never valid for its successor."""
    first = index.add_folder("Old")
    index.remove_folder("Old")
    assert index.add_folder("Old").uidvalidity > first.uidvalidity


def test_a_read_finds_a_file_renamed_by_a_store_not_yet_applied(store, index):
    """A STORE in another thread may have renamed the file before the folder knows the new
    name: the read finds it by its base name instead of losing the message."""
    from cloudmail.mailstore.account import read_message
    store.deliver(ALICE, b"Subject: kept\r\n\r\nbody\r\n")
    folder = load(store, index)
    rescan(folder, index)
    message = folder.messages[1]
    cur = folder.path / "cur"
    os.rename(cur / message.name, cur / with_flags(message.name, frozenset({"\\Seen"})))
    assert read_message(folder, 1) == b"Subject: kept\r\n\r\nbody\r\n"
    assert read_message(folder, 2) is None
