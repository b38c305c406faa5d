"""Each mailbox's Sieve scripts on disk, laid out as Dovecot Pigeonhole lays them out.

- The scripts: `<mailbox Maildir>/sieve/<name>.sieve`, UTF-8 text, mode 0600.
- The active script: the symlink `<mailbox Maildir>/.dovecot.sieve -> sieve/<name>.sieve`
  (absent: no script is active). A symlink, as Dovecot makes it, so that Pigeonhole and tools
  written for it read our layout unchanged. A plain file left at `.dovecot.sieve` (a hand-written
  script) is not touched until SETACTIVE, which first moves it to `sieve/dovecot.orig.sieve` (as
  Pigeonhole does) so it is never lost.

Script names (RFC 5804 1.6 allows most Unicode) are NFC-normalized and used as the file name
as they are; names that could leave the folder or hide are refused: empty, `/`, NUL and other
control characters (C0, DEL, C1, U+2028/9), a leading `.`, `..` anywhere, over `MAX_NAME_LENGTH`
characters, or too long for one file name in UTF-8. Every write is atomic: a temporary file in
`sieve/` is written and fsynced, renamed into place, and the directory fsynced (the same for the
active link).

Every function here blocks (file system): run them in the io thread pool. The quotas are module
defaults of `[sieve] max_scripts` and `max_script_size`: `MAX_SCRIPTS` per mailbox and
`MAX_SCRIPT_SIZE` bytes per script.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
import unicodedata
from pathlib import Path

from cloudmail.mailstore.maildir import fsync_dir

#: Scripts one mailbox may have.
MAX_SCRIPTS = 32
#: The biggest script, in bytes (UTF-8).
MAX_SCRIPT_SIZE = 64 * 1024
#: The longest script name, in characters.
MAX_NAME_LENGTH = 128
SIEVE_DIR = "sieve"
ACTIVE_LINK = ".dovecot.sieve"
SUFFIX = ".sieve"
#: Where SETACTIVE keeps a plain `.dovecot.sieve` file it finds (Pigeonhole's name for it).
ORIGINAL_NAME = "dovecot.orig"
DIR_MODE = 0o700
FILE_MODE = 0o600
_MAX_FILE_NAME = 255
_FORBIDDEN = frozenset(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029])
#: One lock for every mailbox's changes: quota checks and renames must not interleave between
#: two sessions, and each change takes a few milliseconds.
_lock = threading.Lock()


class ScriptError(Exception):
    """A request the store refuses: `code` is the RFC 5804 response code (or None)."""

    code: str | None = None

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        if code is not None:
            self.code = code


class BadScriptName(ScriptError):
    """The name cannot be a script name (see the module docstring)."""


class NoSuchScript(ScriptError):
    code = "NONEXISTENT"


class ScriptExists(ScriptError):
    code = "ALREADYEXISTS"


class ScriptActive(ScriptError):
    code = "ACTIVE"


class QuotaExceeded(ScriptError):
    """`code` says which quota: `QUOTA/MAXSCRIPTS` or `QUOTA/MAXSIZE`."""


def check_name(name: str) -> str:
    """The name NFC-normalized; BadScriptName if it cannot name a script."""
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise BadScriptName("a script name is required")
    if len(name) > MAX_NAME_LENGTH:
        raise BadScriptName(f"script names are at most {MAX_NAME_LENGTH} characters")
    if "/" in name or ".." in name or name.startswith("."):
        raise BadScriptName("a script name cannot hold '/' or '..' or start with '.'")
    if any(ch in _FORBIDDEN for ch in name):
        raise BadScriptName("a script name cannot hold control characters")
    if any(0xD800 <= ord(ch) <= 0xDFFF for ch in name):
        raise BadScriptName("a script name must be valid Unicode")
    if len(name.encode("utf-8")) + len(SUFFIX) > _MAX_FILE_NAME:
        raise BadScriptName("the script name is too long")
    return name


class ScriptStore:
    """The scripts of the mailbox whose Maildir is `maildir` (blocking methods)."""

    def __init__(self, maildir: Path, *, max_scripts: int = MAX_SCRIPTS,
                 max_size: int = MAX_SCRIPT_SIZE) -> None:
        self.maildir = Path(maildir)
        self.folder = self.maildir / SIEVE_DIR
        self.link = self.maildir / ACTIVE_LINK
        self.max_scripts = max_scripts
        self.max_size = max_size

    def path(self, name: str) -> Path:
        """The file of script `name` (checked): always directly inside `sieve/`."""
        path = self.folder / (check_name(name) + SUFFIX)
        if path.parent != self.folder:  # cannot happen after check_name; kept as a guard
            raise BadScriptName("the script name would leave the script folder")
        return path

    # --- reading ---------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The script names, sorted."""
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        names = []
        for entry in entries:
            if not entry.endswith(SUFFIX) or entry.startswith("."):
                continue
            name = entry[:-len(SUFFIX)]
            try:
                if check_name(name) == name and (self.folder / entry).is_file():
                    names.append(name)
            except BadScriptName:
                continue
        return sorted(names)

    def active(self) -> str | None:
        """The active script's name, or None (no link, a plain file, or a dangling link)."""
        try:
            target = os.readlink(self.link)
        except (FileNotFoundError, OSError):
            return None
        head, _, entry = target.rpartition("/")
        if head.rstrip("/") not in (SIEVE_DIR, str(self.folder)) or not entry.endswith(SUFFIX):
            return None
        name = entry[:-len(SUFFIX)]
        try:
            if check_name(name) != name:
                return None
        except BadScriptName:
            return None
        return name if (self.folder / entry).is_file() else None

    def listing(self) -> list[tuple[str, bool]]:
        """(name, is active) for every script (LISTSCRIPTS)."""
        active = self.active()
        return [(name, name == active) for name in self.names()]

    def get(self, name: str) -> str:
        """The text of script `name`; NoSuchScript if there is none."""
        try:
            return self.path(name).read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            raise NoSuchScript(f"there is no script {name!r}") from None

    def check_space(self, name: str, size: int) -> None:
        """QuotaExceeded unless a script `name` of `size` bytes fits (HAVESPACE, PUTSCRIPT)."""
        if size > self.max_size:
            raise QuotaExceeded(f"a script can be at most {self.max_size} bytes",
                                "QUOTA/MAXSIZE")
        name = check_name(name)
        names = self.names()
        if name not in names and len(names) >= self.max_scripts:
            raise QuotaExceeded(f"a mailbox can have at most {self.max_scripts} scripts",
                                "QUOTA/MAXSCRIPTS")

    # --- changing --------------------------------------------------------------------------------

    def put(self, name: str, text: str) -> None:
        """Store (or replace) script `name`, atomically, within the quotas."""
        data = text.encode("utf-8")
        with _lock:
            self.check_space(name, len(data))
            self._ensure_folder()
            self._write_atomic(self.path(name), data)

    def delete(self, name: str) -> None:
        """Remove script `name`: NoSuchScript, or ScriptActive if it is the active one."""
        with _lock:
            path = self.path(name)
            if not path.is_file():
                raise NoSuchScript(f"there is no script {name!r}")
            if self.active() == check_name(name):
                raise ScriptActive("the active script cannot be deleted; deactivate it first")
            os.unlink(path)
            fsync_dir(self.folder)

    def rename(self, old: str, new: str) -> None:
        """Rename a script (the active one stays active under its new name)."""
        with _lock:
            source, target = self.path(old), self.path(new)
            if not source.is_file():
                raise NoSuchScript(f"there is no script {old!r}")
            was_active = self.active() == check_name(old)
            try:
                os.link(source, target)  # never replaces an existing script
            except FileExistsError:
                raise ScriptExists(f"a script {new!r} exists already") from None
            if was_active:
                self._point_link(target.name)
            os.unlink(source)
            fsync_dir(self.folder)

    def set_active(self, name: str) -> None:
        """Make script `name` the active one; `""` deactivates the active script (if any)."""
        with _lock:
            if name == "":
                self._keep_plain_file()
                try:
                    os.unlink(self.link)
                except FileNotFoundError:
                    return
                fsync_dir(self.maildir)
                return
            path = self.path(name)
            if not path.is_file():
                raise NoSuchScript(f"there is no script {name!r}")
            self._keep_plain_file()
            self._point_link(path.name)

    # --- helpers ---------------------------------------------------------------------------------

    def _ensure_folder(self) -> None:
        made = []
        for directory in (self.maildir, self.folder):
            try:
                os.mkdir(directory, DIR_MODE)
                made.append(directory)
            except FileExistsError:
                pass
            except FileNotFoundError:
                os.makedirs(directory, DIR_MODE, exist_ok=True)
                made.append(directory)
        for directory in made:
            fsync_dir(directory.parent)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        temporary = path.parent / f".{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            raise
        fsync_dir(path.parent)

    def _point_link(self, entry: str) -> None:
        """Make `.dovecot.sieve` point at `sieve/<entry>`, atomically."""
        temporary = self.maildir / f".dovecot.sieve.{secrets.token_hex(8)}.tmp"
        os.symlink(f"{SIEVE_DIR}/{entry}", temporary)
        try:
            os.replace(temporary, self.link)
        except BaseException:
            os.unlink(temporary)
            raise
        fsync_dir(self.maildir)

    def _keep_plain_file(self) -> None:
        """A plain file at `.dovecot.sieve` becomes the script `dovecot.orig` (never lost)."""
        if not self.link.is_file() or self.link.is_symlink():
            return
        self._ensure_folder()
        target = self.folder / (ORIGINAL_NAME + SUFFIX)
        try:
            os.link(self.link, target)
        except FileExistsError:
            raise ScriptError(f"{ACTIVE_LINK} is a plain file and {ORIGINAL_NAME} exists: "
                              "cannot keep both") from None
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            self._write_atomic(target, self.link.read_bytes())
        os.unlink(self.link)
        fsync_dir(self.folder)
        fsync_dir(self.maildir)


def active_script_text(maildir: Path) -> str | None:
    """The text of the mailbox's active script (for delivery), or None when none is active.

    Only our layout counts: a `.dovecot.sieve` symlink to a script in `sieve/`."""
    store = ScriptStore(maildir)
    name = store.active()
    if name is None:
        return None
    try:
        return store.get(name)
    except NoSuchScript:
        return None
