"""Maildir++ delivery: the layout Dovecot and Courier read, safe folder names, and durability."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudmail.address import Address
from cloudmail.mailstore import maildir
from cloudmail.mailstore.maildir import (BadFlags, BadFolderName, MaildirStore,
                                         imap_folder_name, maildir_folder_name)

BOB = Address("bob", "example.com")
MESSAGE = b"Subject: hi\r\n\r\n8-bit \xe9\xff\x00 body\r\nbare\nlf kept\r\n.\r\n"
NAME = re.compile(r"^(\d+)\.M(\d{1,6})P(\d+)Q(\d+)\.([^/:,]+),S=(\d+)(:2,[DFPRST]*)?$")


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    """A store whose mail root is `<tmp>/data/mail`, not created yet."""
    return MaildirStore(tmp_path / "data" / "mail", hostname="mx.example.test")


def files(directory: Path) -> list[Path]:
    """The entries of `directory`, sorted."""
    return sorted(directory.iterdir())


def mode(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


def test_first_delivery_creates_the_maildir_private(store):
    """The first delivery makes <root>/<domain>/<local>/{cur,new,tmp}, all 0700, file 0600."""
    delivered = store.deliver(BOB, MESSAGE)
    top = store.root / "example.com" / "bob"
    assert delivered.path.parent == top / "new"
    for d in (store.root, top.parent, top, top / "cur", top / "new", top / "tmp"):
        assert d.is_dir() and mode(d) == 0o700, d
    assert mode(delivered.path) == 0o600
    assert not (top / "maildirfolder").exists()
    assert files(top / "tmp") == [] and files(top / "cur") == []
    assert delivered.mailbox == BOB and delivered.folder == "INBOX"


@pytest.mark.parametrize("folder, dirname", [("Spam", ".Spam"), ("Archive/2024", ".Archive.2024"),
                                             ("Sent", ".Sent")])
def test_folders_are_maildirplusplus_subfolders(store, folder, dirname):
    """A folder is a `.Name` Maildir inside the mailbox with a `maildirfolder` file; INBOX exists too."""
    delivered = store.deliver(BOB, MESSAGE, folder=folder)
    top = store.root / "example.com" / "bob"
    sub = top / dirname
    assert delivered.path.parent == sub / "new"
    assert (sub / "maildirfolder").is_file() and (sub / "maildirfolder").stat().st_size == 0
    for d in (top / "new", sub, sub / "cur", sub / "new", sub / "tmp"):
        assert d.is_dir() and mode(d) == 0o700
    assert files(top / "new") == []


def test_inbox_is_case_insensitive_and_the_top_maildir(store):
    """`inbox`, `Inbox` and `INBOX` all name the top Maildir (RFC 3501 §5.1)."""
    for name in ("inbox", "Inbox", "INBOX"):
        assert store.deliver(BOB, MESSAGE, folder=name).path.parent == store.root / "example.com/bob/new"


def test_file_name_follows_the_maildir_spec(store):
    """`<time>.M<usec>P<pid>Q<counter>.<host>,S=<size>` with the size of prepend + message."""
    delivered = store.deliver(BOB, MESSAGE, prepend=b"Return-Path: <a@b>\r\n")
    m = NAME.match(delivered.name)
    assert m, delivered.name
    assert int(m.group(3)) == os.getpid()
    assert m.group(5) == "mx.example.test"
    assert int(m.group(6)) == delivered.size == len(MESSAGE) + 20 == delivered.path.stat().st_size


def test_hostname_separators_are_escaped(tmp_path):
    """`/` and `:` in the host name become \\057 and \\072 (and `,` \\054) so names stay parseable."""
    store = MaildirStore(tmp_path, hostname="a/b:c,d")
    assert store.deliver(BOB, b"x").name.split(",S=")[0].endswith(r".a\057b\072c\054d")


def test_content_is_exactly_prepend_and_message(store):
    """Bytes are stored as given: 8-bit, NUL, CRLF and bare LF untouched, prepend first."""
    delivered = store.deliver(BOB, MESSAGE, prepend=b"Delivered-To: bob@example.com\r\n")
    assert delivered.path.read_bytes() == b"Delivered-To: bob@example.com\r\n" + MESSAGE


def test_big_file_source_is_copied_whole_from_its_start(store):
    """A file source is read from position 0 in chunks, so a 1 MB message arrives whole."""
    body = os.urandom(1024 * 1024 + 17)
    source = io.BytesIO(body)
    source.seek(5000)
    delivered = store.deliver(BOB, source, prepend=b"H: v\r\n")
    assert delivered.path.read_bytes() == b"H: v\r\n" + body
    assert delivered.size == len(body) + 6


def test_one_spooled_file_to_three_mailboxes(store, tmp_path):
    """One spool file delivered to 3 mailboxes gives 3 identical files, no re-reading needed."""
    spool = tmp_path / "spool"
    spool.write_bytes(MESSAGE)
    rcpts = [Address("a", "example.com"), Address("b", "example.com"), Address("c", "other.example")]
    with spool.open("rb") as source:
        paths = [store.deliver(r, source).path for r in rcpts]
    assert len({p.parent for p in paths}) == 3
    assert [p.read_bytes() for p in paths] == [MESSAGE] * 3


def test_flags_put_the_message_in_cur(store):
    """Flags are sorted and deduplicated into `:2,<flags>` and the message goes to cur/."""
    delivered = store.deliver(BOB, MESSAGE, flags="SFS", folder="Sent")
    assert delivered.path.parent.name == "cur"
    assert delivered.name.endswith(f",S={len(MESSAGE)}:2,FS")
    assert NAME.match(delivered.name)
    assert files(delivered.path.parent.parent / "new") == []


@pytest.mark.parametrize("flags", ["x", "s", "S ", "a", ":"])
def test_unknown_flags_are_refused_before_anything_is_written(store, flags):
    """Only D F P R S T are Maildir flags; anything else raises BadFlags and creates nothing."""
    with pytest.raises(BadFlags):
        store.deliver(BOB, MESSAGE, flags=flags)
    assert not store.root.exists()


def tree(root: Path) -> list[str]:
    """Every path under `root`, relative and sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("folder", ["../x", "a/../../b", ".hidden", "a//b", "/abs", "", "a/",
                                    "..", ".", "a/.b", "a\0b", "a.b", "new\n", "x" * 300])
def test_bad_folder_names_are_refused(store, tmp_path, folder):
    """Dots, empty parts, absolute names, NUL and control characters: BadFolderName, nothing made."""
    store.deliver(BOB, MESSAGE)
    before = tree(tmp_path)
    with pytest.raises(BadFolderName):
        store.deliver(BOB, MESSAGE, folder=folder)
    with pytest.raises(BadFolderName):
        store.ensure_folder(BOB, folder)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("mailbox", [Address("..", "example.com"), Address("a/b", "example.com"),
                                     Address("bob", ".."), Address("", "example.com"),
                                     Address("bob", "a/../.."), Address("b\0b", "example.com")])
def test_mailbox_paths_stay_under_the_mail_root(store, mailbox):
    """Even an Address built by hand without validation cannot leave the mail root."""
    with pytest.raises(ValueError):
        store.deliver(mailbox, MESSAGE)
    assert not store.root.exists()


@pytest.mark.parametrize("name, dirname", [
    ("Spam", ".Spam"), ("Archive/2024", ".Archive.2024"), ("Entwürfe", ".Entw&APw-rfe"),
    ("A&B", ".A&-B"), ("日本語/x y", ".&ZeVnLIqe-.x y"), ("INBOX", ""), ("inbox/sub", ".inbox.sub"),
])
def test_folder_names_are_stored_in_modified_utf7(name, dirname):
    """Non-ASCII parts are IMAP modified UTF-7 on disk, as Courier and Dovecot keep them."""
    assert maildir_folder_name(name) == dirname
    assert imap_folder_name(dirname) == ("INBOX" if name == "inbox" else name)


@given(st.text(st.sampled_from("/.&a\0\x7fé") | st.characters(exclude_categories=()), max_size=80))
def test_any_folder_name_stays_inside_the_mailbox(name):
    """Any text maps to a directory directly inside the mailbox, or raises BadFolderName."""
    store = MaildirStore(Path("/srv/mail"))
    top = store.mailbox_path(BOB)
    try:
        path = store.folder_path(BOB, name)
    except BadFolderName:
        return
    real = Path(os.path.normpath(path))
    assert real == path
    assert real == top or (real.parent == top and real.name.startswith(".")
                           and real.name not in (".", "..") and len(real.name.encode()) <= 255)
    if real != top:
        assert imap_folder_name(real.name) == name


def test_unique_names_under_concurrency(store, monkeypatch):
    """2,000 deliveries from 4 threads in the same frozen microsecond never share a name."""
    monkeypatch.setattr(maildir, "_clock", lambda: 1_700_000_000_123_456_000)
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    errors: list[BaseException] = []
    names: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        try:
            got = [store.deliver(BOB, b"message %d\r\n" % i).name for i in range(n)]
            with lock:
                names.extend(got)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(500,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    new = store.root / "example.com" / "bob" / "new"
    assert len(set(names)) == 2000 == len(files(new))
    assert all(n.startswith("1700000000.M123456P") for n in names)
    assert files(new.parent / "tmp") == []


def test_file_and_directory_are_fsynced_in_order(store, monkeypatch):
    """The file is fsynced while in tmp/, then new/ after the link; new dirs' parents are fsynced."""
    real_fsync = os.fsync
    synced: list[tuple[str, list[str]]] = []

    def recording_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, sorted(os.listdir(path)) if os.path.isdir(path) else []))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    top = store.root / "example.com" / "bob"
    delivered = store.deliver(BOB, MESSAGE)
    paths = [p for p, _ in synced]
    tmp_file = str(top / "tmp" / delivered.name.split(",S=")[0])
    assert tmp_file in paths
    assert paths[-1] == str(top / "new") and synced[-1][1] == [delivered.name]
    for parent in (store.root.parent, store.root, top.parent, top):
        assert str(parent) in paths[:paths.index(tmp_file)], parent

    synced.clear()
    again = store.deliver(BOB, MESSAGE, flags="S")
    assert [p for p, _ in synced] == [str(top / "tmp" / again.name.split(",S=")[0]), str(top / "cur")]


def test_new_folder_fsyncs_the_mailbox_directory(store, monkeypatch):
    """Creating `.Spam` later fsyncs the mailbox directory that now lists it."""
    store.deliver(BOB, MESSAGE)
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.deliver(BOB, MESSAGE, folder="Spam")
    top = store.root / "example.com" / "bob"
    assert str(top) in synced and str(top / ".Spam") in synced and synced[-1] == str(top / ".Spam/new")


class BrokenSource(io.RawIOBase):
    """A source whose second read fails, like a spool file on a dying disk."""

    def __init__(self) -> None:
        self.reads = 0

    def readable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 1:
            raise OSError(5, "Input/output error")
        return b"x" * 70000


def test_failure_mid_write_leaves_nothing_behind(store):
    """A read error mid-copy is raised and leaves tmp/ and new/ empty."""
    with pytest.raises(OSError, match="Input/output"):
        store.deliver(BOB, BrokenSource(), prepend=b"H: v\r\n")
    top = store.root / "example.com" / "bob"
    assert files(top / "tmp") == [] and files(top / "new") == []


def test_failed_fsync_leaves_nothing_behind(store, monkeypatch):
    """When the file's fsync fails the error is raised and nothing is left in tmp/ or new/."""
    store.deliver(BOB, b"warm up")
    top = store.root / "example.com" / "bob"
    for f in files(top / "new"):
        f.unlink()

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError):
        store.deliver(BOB, MESSAGE)
    assert files(top / "tmp") == [] and files(top / "new") == []


def test_failed_directory_fsync_removes_the_linked_file(store, monkeypatch):
    """If new/ cannot be fsynced the message is not durable: it is unlinked and the error raised."""
    store.deliver(BOB, b"warm up")
    top = store.root / "example.com" / "bob"
    for f in files(top / "new"):
        f.unlink()
    real_fsync = os.fsync

    def failing_on_dirs(fd: int) -> None:
        if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_on_dirs)
    with pytest.raises(OSError):
        store.deliver(BOB, MESSAGE)
    assert files(top / "tmp") == [] and files(top / "new") == []


def test_a_maildir_removed_behind_our_back_is_made_again(store):
    """If the Maildir disappears, one delivery fails (the caller answers 451) and the next remakes it."""
    store.deliver(BOB, MESSAGE)
    shutil.rmtree(store.root / "example.com")
    with pytest.raises(FileNotFoundError):
        store.deliver(BOB, MESSAGE)
    assert store.deliver(BOB, MESSAGE).path.read_bytes() == MESSAGE


def test_clean_tmp_removes_only_old_leftovers(store):
    """Files in any folder's tmp/ older than 36 hours go; newer ones and delivered mail stay."""
    alice = Address("alice", "example.com")
    delivered = store.deliver(alice, MESSAGE)
    spam = store.ensure_folder(alice, "Spam")
    inbox = store.folder_path(alice)
    old_inbox, old_spam, fresh = inbox / "tmp" / "old1", spam / "tmp" / "old2", inbox / "tmp" / "new1"
    for path in (old_inbox, old_spam, fresh):
        path.write_bytes(b"partial")
    two_days_ago = os.path.getmtime(fresh) - 48 * 3600
    for path in (old_inbox, old_spam):
        os.utime(path, (two_days_ago, two_days_ago))
    os.utime(delivered.path, (two_days_ago, two_days_ago))
    assert store.clean_tmp() == 2
    assert not old_inbox.exists() and not old_spam.exists()
    assert fresh.exists() and delivered.path.exists()
