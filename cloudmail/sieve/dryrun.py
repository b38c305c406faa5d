"""The Sieve dry run: what delivery would do with one message, without delivering it.

`cloudmail-admin sieve test` and `POST /api/v1/sieve/test` both call `dry_run`. The script runs
as it would for a fresh mailbox: its folders are INBOX, Junk and Archive (so `mailboxexists`
and `fileinto` without `:create` see those only), no vacation reply has been sent yet, and its
own address is the envelope recipient. `include` reads `<DIR>/<name>.sieve` from the personal
or global folder given (none given: every include finds nothing, so only `:optional` ones
succeed).

The answer is one line per action (`cloudmail.sieve.actions.format_action`), the implicit keep
last when it happens; a script that does not compile gives the single line `error: compile`,
one that fails while running `error: runtime` followed by the fallback `keep`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cloudmail.sieve.ast import Script, SieveError
from cloudmail.sieve.checker import compile_script
from cloudmail.sieve.interpreter import (SieveContext, SieveEnvelope, SieveRuntimeError,
                                         run)
from cloudmail.sieve.scripts import SUFFIX, ScriptError, check_name

__all__ = ["COMPILE_ERROR", "DryRun", "FRESH_MAILBOXES", "dry_run", "envelope_address"]

#: The folders of the fresh mailbox a dry run pretends to deliver to.
FRESH_MAILBOXES = ("INBOX", "Junk", "Archive")
COMPILE_ERROR = "error: compile"


@dataclass(frozen=True)
class DryRun:
    """The action lines, the compile error (None when the script compiled) and the reason of
    a run-time failure (None when the run did not fail)."""

    lines: list[str]
    error: SieveError | None
    runtime_error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """`{"actions": [...], "error": null | {"line", "column", "message"}}`."""
        error = None
        if self.error is not None:
            error = {"line": self.error.position.line, "column": self.error.position.column,
                     "message": self.error.message}
        return {"actions": list(self.lines), "error": error}


def envelope_address(value: str) -> str:
    """An envelope address as given on the command line or in the API: surrounding space and
    angle brackets removed, so that `<>` (and "") is the null sender."""
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def mailbox_exists(name: str) -> bool:
    """True for the fresh mailbox's folders (INBOX in any case)."""
    return name.upper() == "INBOX" or name in FRESH_MAILBOXES


def script_loader(personal: Path | None, global_: Path | None):
    """`SieveContext.load_script` reading `<DIR>/<name>.sieve` from the two folders: a missing
    folder, file or an impossible name raise LookupError (so `:optional` skips it), a script
    that does not compile SieveError, an unreadable file SieveRuntimeError."""
    folders = {"personal": personal, "global": global_}

    def load(name: str, location: str) -> Script:
        folder = folders.get(location)
        if folder is None:
            raise LookupError(f"no {location} script folder")
        try:
            name = check_name(name)
        except ScriptError as e:
            raise LookupError(f"no script {name!r}: {e.text}") from None
        path = Path(folder) / (name + SUFFIX)
        try:
            text = path.read_bytes().decode("utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raise LookupError(f"no {location} script {name!r}") from None
        except OSError as e:
            raise SieveRuntimeError(f"cannot read {path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise SieveRuntimeError(f"{path} is not UTF-8 text") from None
        return compile_script(text.removeprefix("\ufeff"))
    return load


def dry_run(script_text: str, message: bytes, sender: str, recipient: str, *,
            personal: Path | None = None, global_: Path | None = None,
            now: datetime | None = None) -> DryRun:
    """Run `script_text` on `message` with the envelope MAIL FROM `sender` ("" or "<>" for the
    null sender), RCPT TO `recipient`, as delivery to a fresh mailbox would (see the module
    docstring), and return what it would do."""
    try:
        script = compile_script(script_text)
    except SieveError as e:
        return DryRun([COMPILE_ERROR], e)
    sender, recipient = envelope_address(sender), envelope_address(recipient)
    context = SieveContext(
        mailbox_exists=mailbox_exists,
        load_script=script_loader(personal, global_),
        now=now if now is not None else datetime.now(timezone.utc),
        own_addresses=(recipient,) if recipient else (),
    )
    result = run(script, message, SieveEnvelope(sender, recipient), context=context)
    return DryRun(result.lines(), None, result.error)
