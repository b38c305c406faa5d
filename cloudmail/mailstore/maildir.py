"""Durable delivery into Maildir++ mailboxes, laid out as Dovecot and Courier lay them out.

One Maildir per mailbox at `<root>/<domain>/<local>/` (`root` is `<data_dir>/mail`): INBOX is the
top Maildir (`cur/`, `new/`, `tmp/`) and every other folder is a Maildir++ subfolder `.Name`
inside it, with its own `cur/new/tmp` and an empty `maildirfolder` file. IMAP names use `/` as the
hierarchy separator and map to `.`-joined directory names (`Archive/2024` → `.Archive.2024`),
each part in IMAP modified UTF-7 (RFC 3501 §5.1.3), as Courier and Dovecot store them on disk.

Delivery follows the Maildir spec (https://cr.yp.to/proto/maildir.html): write the message to
`tmp/<unique>`, fsync it, link it into `new/` (or `cur/` with an `:2,<flags>` info when flags are
given), unlink the tmp name, and fsync the directory — and the parents of any directory it had to
create — so that when `deliver` returns, the message survives a crash and the caller may answer
`250`. Any failure removes what was written and raises, and the caller answers `451`.
"""

from __future__ import annotations

import base64
import errno
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cloudmail.address import Address

CHUNK = 64 * 1024
INBOX = "INBOX"
FLAGS = "DFPRST"  # Maildir info flags: Draft, Flagged, Passed, Replied, Seen, Trashed
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_DIRNAME = 255  # one path component on Linux file systems
_ATTEMPTS = 3
#: Files in `tmp/` older than this are left-overs of a crash (cr.yp.to/proto/maildir.html).
TMP_MAX_AGE = 36 * 3600
_MUTF7_RUN = re.compile(r"&([A-Za-z0-9+,]*)-")

_clock = time.time_ns  # replaced in tests that freeze time
_counter_lock = threading.Lock()
_counter = 0  # process-wide, so two stores in one process never share a Q number


class BadFolderName(ValueError):
    """The folder name cannot be stored: empty parts, dots, control characters or too long."""


class BadFlags(ValueError):
    """Maildir flags other than D, F, P, R, S and T were asked for."""


@dataclass(frozen=True)
class DeliveredMessage:
    """A message durably in a Maildir: where it went and how many bytes it holds."""

    mailbox: Address
    folder: str
    path: Path
    size: int

    @property
    def name(self) -> str:
        """The file name in `new/` or `cur/` (unique name, `,S=` size and any `:2,` info)."""
        return self.path.name


def encode_mutf7(part: str) -> str:
    """Encode one folder-name part in IMAP modified UTF-7 (RFC 3501 §5.1.3)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in part:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Decode IMAP modified UTF-7 back to text."""
    def run(m: re.Match[str]) -> str:
        b64 = m.group(1)
        if not b64:
            return "&"
        b64 = b64.replace(",", "/") + "=" * (-len(b64) % 4)
        return base64.b64decode(b64).decode("utf-16-be")
    return _MUTF7_RUN.sub(run, text)


def maildir_folder_name(name: str) -> str:
    """Map an IMAP folder name to its Maildir++ directory name: `""` for INBOX, else `.A.B`.

    INBOX is case-insensitive (RFC 3501 §5.1). `.` is the Maildir++ hierarchy separator, so a
    dot inside a part would change the hierarchy and is refused, as are empty parts (`a//b`, a
    leading or trailing `/`), control characters (NUL included) and names over 255 bytes. The
    result never holds `/`, so it always names a directory directly inside the mailbox.
    """
    if name.upper() == INBOX:
        return ""
    if not name:
        raise BadFolderName("a folder name is required")
    encoded = []
    for part in name.split("/"):
        if not part:
            raise BadFolderName(f"{name!r}: empty part (leading, trailing or doubled '/')")
        if "." in part:
            raise BadFolderName(f"{name!r}: '.' is not allowed in a folder name (Maildir++ separator)")
        if any(ch < " " or ch == "\x7f" for ch in part):
            raise BadFolderName(f"{name!r}: control characters are not allowed")
        try:
            encoded.append(encode_mutf7(part))
        except UnicodeEncodeError:
            raise BadFolderName(f"{name!r}: not valid Unicode text") from None
    dirname = "." + ".".join(encoded)
    if len(dirname) > MAX_DIRNAME:
        raise BadFolderName(f"{name!r}: longer than {MAX_DIRNAME} bytes on disk")
    return dirname


def imap_folder_name(dirname: str) -> str:
    """The inverse of `maildir_folder_name`: `""` → INBOX, `.A.B` → `A/B` (decoding UTF-7)."""
    if not dirname:
        return INBOX
    if not dirname.startswith(".") or dirname in (".", ".."):
        raise BadFolderName(f"{dirname!r} is not a Maildir++ folder directory")
    try:
        return "/".join(decode_mutf7(part) for part in dirname[1:].split("."))
    except ValueError:  # bad base64 or UTF-16 written by another tool
        raise BadFolderName(f"{dirname!r} is not valid modified UTF-7") from None


def _info(flags: str) -> str:
    """The `:2,<flags>` info suffix with flags sorted and once each; `""` when there are none."""
    if not flags:
        return ""
    bad = set(flags) - set(FLAGS)
    if bad:
        raise BadFlags(f"unknown Maildir flags {''.join(sorted(bad))!r} (allowed: {FLAGS})")
    return ":2," + "".join(sorted(set(flags)))


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove_older(folder: Path, cutoff: float) -> int:
    """Remove the plain files in `folder` last modified before `cutoff`; how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            pass
    return removed


class MaildirStore:
    """The Maildir++ mailboxes under one mail root; `deliver` is blocking (run it in the io pool)."""

    def __init__(self, root: Path, hostname: str | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        host = hostname or socket.gethostname()
        # cr.yp.to/proto/maildir.html: "/" and ":" in the host name become \057 and \072; "," is
        # escaped too so the ",S=" size Dovecot reads stays unambiguous.
        self._hostname = host.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")
        self._ready: set[Path] = set()
        self._create_lock = threading.Lock()

    def mailbox_path(self, mailbox: Address) -> Path:
        """The top Maildir (INBOX) of `mailbox`; refuses anything that would leave the mail root."""
        path = Path(os.path.normpath(self.root / mailbox.domain / mailbox.local))
        if "\0" in str(path) or path.parent.parent != self.root:
            raise ValueError(f"{mailbox!r} does not map to a mailbox folder under {self.root}")
        return path

    def folder_path(self, mailbox: Address, folder: str = INBOX) -> Path:
        """The Maildir holding `folder` of `mailbox`; raises BadFolderName for unsafe names."""
        top = self.mailbox_path(mailbox)
        dirname = maildir_folder_name(folder)
        if not dirname:
            return top
        path = Path(os.path.normpath(top / dirname))
        if path.parent != top or not path.name.startswith("."):
            raise BadFolderName(f"{folder!r} would leave the mailbox folder")
        return path

    def ensure_folder(self, mailbox: Address, folder: str = INBOX) -> Path:
        """Create the mailbox's Maildir and the folder (mode 0700) if missing; return its path."""
        top = self.mailbox_path(mailbox)
        path = self.folder_path(mailbox, folder)
        if path in self._ready:
            return path
        with self._create_lock:
            if path not in self._ready:
                self._create(top, path)
                self._ready.add(path)
        return path

    def forget(self, path: Path) -> None:
        """The folder at `path` was removed or renamed: the next delivery there makes it anew."""
        with self._create_lock:
            self._ready = {p for p in self._ready if p != path and path not in p.parents}

    def _create(self, top: Path, path: Path) -> None:
        """mkdir what is missing, then fsync the parent of every entry it made."""
        if not self.root.is_dir():
            os.makedirs(self.root, DIR_MODE, exist_ok=True)
            fsync_dir(self.root.parent)
        wanted = [top.parent, top, *(top / sub for sub in ("cur", "new", "tmp"))]
        if path != top:
            wanted += [path, *(path / sub for sub in ("cur", "new", "tmp"))]
        made: list[Path] = []
        for directory in wanted:
            try:
                os.mkdir(directory, DIR_MODE)
                made.append(directory)
            except FileExistsError:
                pass
        if path != top:
            marker = path / "maildirfolder"
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 FILE_MODE))
                made.append(marker)
            except FileExistsError:
                pass
        for parent in dict.fromkeys(entry.parent for entry in made):
            fsync_dir(parent)

    def clean_tmp(self, max_age: float = TMP_MAX_AGE) -> int:
        """Remove files older than `max_age` seconds from every folder's `tmp/` (what a crash
        mid-delivery leaves; the Maildir spec says 36 hours); return how many. Blocking: a
        walk over every mailbox, for the io pool."""
        cutoff = time.time() - max_age
        removed = 0
        for tmp in self.root.glob("*/*/tmp"):
            removed += _remove_older(tmp, cutoff)
        for tmp in self.root.glob("*/*/.*/tmp"):
            removed += _remove_older(tmp, cutoff)
        return removed

    def unique_name(self) -> str:
        """A new Maildir unique name: `<time>.M<usec>P<pid>Q<counter>.<hostname>`."""
        global _counter
        seconds, usec = divmod(_clock() // 1000, 1_000_000)
        with _counter_lock:
            _counter += 1
            count = _counter
        return f"{seconds}.M{usec}P{os.getpid()}Q{count}.{self._hostname}"

    def deliver(self, mailbox: Address, source: BinaryIO | bytes, *, prepend: bytes = b"",
                folder: str = INBOX, flags: str = "", seen_by_reader: bool = False,
                received: float | None = None) -> DeliveredMessage:
        """Write `prepend` + the message durably into `folder` of `mailbox`; return where it went.

        `source` is bytes or a readable binary file, read from its start in 64 KiB chunks, so one
        spooled message can be delivered to many mailboxes (one at a time: a file object's position
        is shared, so concurrent deliveries each need their own). Without `flags` the message lands in
        `new/`; with flags (any of D F P R S T) it lands in `cur/` as `<name>,S=<size>:2,<flags>`.
        `seen_by_reader` puts it in `cur/` even without flags (an IMAP APPEND: the reader that
        wrote it knows of it already), and `received` sets its internal date (the file's mtime,
        as Dovecot reads it). Raises BadFolderName or BadFlags for bad arguments and OSError (after
        removing anything it wrote) when the disk fails; only a normal return means the message is
        durable.
        """
        info = _info(flags) or (":2," if seen_by_reader else "")
        path = self.ensure_folder(mailbox, folder)
        unique, tmp, fd = self._create_tmp(path)
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as f:
                size = self._write(f, prepend, source)
                f.flush()
                if received is not None:
                    os.utime(f.fileno(), (received, received))
                os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        subdir = path / ("cur" if info else "new")
        final = None
        try:
            final = self._link(tmp, subdir, unique, f",S={size}{info}")
            _unlink_quietly(tmp)
            fsync_dir(subdir)
        except BaseException:
            _unlink_quietly(tmp)
            if final is not None:
                _unlink_quietly(final)
            raise
        return DeliveredMessage(mailbox=mailbox, folder=folder, path=final, size=size)

    def _create_tmp(self, path: Path) -> tuple[str, Path, int]:
        """Create `tmp/<unique>` exclusively; a taken name gets a fresh one (the spec's "try again").

        When the folder was removed behind our back, it is forgotten, so the next delivery makes it
        again, and the error raised.
        """
        for _ in range(_ATTEMPTS):
            unique = self.unique_name()
            tmp = path / "tmp" / unique
            try:
                return unique, tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                            FILE_MODE)
            except FileExistsError:
                continue
            except FileNotFoundError:
                self._ready.discard(path)
                raise
        raise FileExistsError(errno.EEXIST, "no unique name after retries", str(path / "tmp"))

    @staticmethod
    def _write(f: BinaryIO, prepend: bytes, source: BinaryIO | bytes) -> int:
        """Copy `prepend` and the source into `f`; return the number of bytes written."""
        size = f.write(prepend)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return size + f.write(source)
        source.seek(0)
        while chunk := source.read(CHUNK):
            size += f.write(chunk)
        return size

    def _link(self, tmp: Path, subdir: Path, unique: str, suffix: str) -> Path:
        """Link `tmp` into `subdir`; a taken name gets a fresh one (the spec's "try again").

        Linking, not renaming, means an existing file is never overwritten.
        """
        for _ in range(_ATTEMPTS):
            final = subdir / (unique + suffix)
            try:
                os.link(tmp, final)
                return final
            except FileExistsError:
                unique = self.unique_name()
        raise FileExistsError(errno.EEXIST, "no unique name after retries", str(subdir))
