"""A mailbox's active Sieve script applied to one delivery: what to store where, and what to
send afterwards.

`SieveFilter.verdict` runs in the io thread (it reads the script and asks the disk whether a
folder exists): the interpreter is pure, and this module turns its actions into the store's
terms. Local actions (keep, fileinto with IMAP system flags, discard, editheader's changes) are
done by the delivery at once; redirect, vacation, notify and a reject that cannot be given at
SMTP time are `followups`, sent through the outbound path after the copies are durable.

A script that fails at run time keeps the message (RFC 5228 2.10.6, the interpreter's
fallback keep), and a script that does not compile any more (edited on disk by hand) is
ignored with a log line: mail is never lost to a filter.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from twisted.logger import Logger

from cloudmail.address import Address
from cloudmail.mailstore.maildir import INBOX, BadFolderName, MaildirStore, maildir_folder_name
from cloudmail.sieve import actions
from cloudmail.sieve.ast import Script, SieveError
from cloudmail.sieve.checker import compile_script
from cloudmail.sieve.interpreter import SieveContext, SieveEnvelope, run
from cloudmail.sieve.scripts import ACTIVE_LINK, ScriptError, ScriptStore, active_script_text

log = Logger()

#: IMAP system flags (RFC 3501 2.3.2) as Maildir info letters; keywords have no letter.
FLAG_LETTERS = {"\\seen": "S", "\\answered": "R", "\\flagged": "F", "\\deleted": "T",
                "\\draft": "D"}
#: Compiled scripts kept in memory, by their text.
SCRIPT_CACHE = 256


@dataclass
class Verdict:
    """What the script decided for one mailbox: the copies to store as (folder, Maildir flag
    letters, IMAP keywords), the message to store (edited by editheader), the actions to carry
    out after the copies are stored (Redirect, Vacation, Notify), a reject reason, and the
    action lines for the log."""

    copies: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    message: bytes = b""
    followups: list[actions.Action] = field(default_factory=list)
    reject: str | None = None
    lines: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=SCRIPT_CACHE)
def _compiled(text: str) -> Script:
    return compile_script(text)


def split_flags(flags: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """IMAP flags as the Maildir info letters of the system flags, and the keywords (kept in
    the IMAP index: they have no letter)."""
    letters = "".join(sorted({FLAG_LETTERS[f.lower()] for f in flags
                              if f.lower() in FLAG_LETTERS}))
    keywords = tuple(f for f in flags
                     if f.lower() not in FLAG_LETTERS and not f.startswith("\\"))
    return letters, keywords


class SieveFilter:
    """Runs the active script of a mailbox (see the module docstring)."""

    def __init__(self, store: MaildirStore, global_dir: Path | None = None, *,
                 max_redirects: int = 10, max_actions: int = 100) -> None:
        self._store = store
        self._global_dir = global_dir
        self._limits = {"max_redirects": max_redirects, "max_actions": max_actions}

    def has_script(self, mailbox: Address) -> bool:
        """Whether the mailbox has an active script (a cheap look at the disk). Blocking."""
        return os.path.lexists(self._store.mailbox_path(mailbox) / ACTIVE_LINK)

    def verdict(self, mailbox: Address, recipient: str, sender: str, message: bytes,
                default_folder: str = INBOX) -> Verdict | None:
        """The script's decision, or None when the mailbox has no (usable) active script.
        `default_folder` is where a keep goes (INBOX, or Spam for junk). Blocking."""
        maildir = self._store.mailbox_path(mailbox)
        text = active_script_text(maildir)
        if text is None:
            return None
        try:
            script = _compiled(text)
        except SieveError as e:
            log.warn("the active Sieve script of {mailbox} does not compile ({error}); "
                     "keeping the message", mailbox=str(mailbox), error=str(e))
            return None
        context = SieveContext(
            mailbox_exists=functools.partial(self._exists, mailbox),
            load_script=functools.partial(self._load, maildir),
            now=datetime.now(timezone.utc), own_addresses=(str(mailbox),), **self._limits)
        result = run(script, message, SieveEnvelope(sender, recipient), context=context)
        if result.error:
            log.warn("the Sieve script of {mailbox} failed: {error}; keeping the message",
                     mailbox=str(mailbox), error=result.error)
        verdict = Verdict(message=result.message, lines=result.lines())
        for action in result.actions:
            self._apply(mailbox, action, verdict, default_folder)
        return verdict

    def _apply(self, mailbox: Address, action: actions.Action, verdict: Verdict,
               default_folder: str) -> None:
        if isinstance(action, actions.Keep):
            verdict.copies.append((default_folder, *split_flags(action.flags)))
        elif isinstance(action, actions.FileInto):
            folder = action.mailbox
            if not (action.create or self._exists(mailbox, folder)) or not _valid(folder):
                folder = INBOX
            verdict.copies.append((folder, *split_flags(action.flags)))
        elif isinstance(action, actions.Reject):
            verdict.reject = action.reason
        elif isinstance(action, actions.Redirect) and action.suppressed is None:
            verdict.followups.append(action)
        elif isinstance(action, (actions.Vacation, actions.Notify)):
            verdict.followups.append(action)

    def _exists(self, mailbox: Address, name: str) -> bool:
        try:
            return self._store.folder_path(mailbox, name).is_dir()
        except (BadFolderName, ValueError):
            return False

    def _load(self, maildir: Path, name: str, location: str) -> Script:
        """An included script (RFC 6609): personal from the mailbox's own scripts, global from
        the server's folder; LookupError when there is none."""
        if location == "global":
            if self._global_dir is None or "/" in name or name.startswith("."):
                raise LookupError(name)
            path = self._global_dir / f"{name}.sieve"
            try:
                return _compiled(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                raise LookupError(name) from None
        try:
            text = ScriptStore(maildir).get(name)
        except (ScriptError, OSError) as e:
            raise LookupError(name) from e
        return _compiled(text)


def _valid(folder: str) -> bool:
    try:
        maildir_folder_name(folder)
    except BadFolderName:
        return False
    return True
