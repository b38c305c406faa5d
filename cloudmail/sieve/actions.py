"""What a Sieve run decided, in order, for the delivery pipeline to carry out, and the one-line
text of each (`cloudmail-admin sieve test` prints it; the tests assert it)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


def sorted_flags(flags) -> tuple[str, ...]:
    """System flags first in their usual order, then keywords in the order given; each once,
    system flags in their canonical case (RFC 5232 2)."""
    canonical = {flag.lower(): flag for flag in SYSTEM_FLAGS}
    system, keywords, seen = set(), [], set()
    for flag in flags:
        lowered = flag.lower()
        if lowered in canonical:
            system.add(canonical[lowered])
        elif lowered not in seen:
            seen.add(lowered)
            keywords.append(flag)
    return tuple(f for f in SYSTEM_FLAGS if f in system) + tuple(keywords)


def split_flags(values) -> list[str]:
    """Flag strings split at spaces, each flag once (case-insensitively), order kept."""
    seen, flags = set(), []
    for value in values:
        for flag in value.split():
            if flag.lower() not in seen:
                seen.add(flag.lower())
                flags.append(flag)
    return flags


@dataclass(frozen=True)
class Keep:
    """Deliver to INBOX (explicit `keep`, or the implicit keep), with these IMAP flags."""

    flags: tuple[str, ...] = ()
    implicit: bool = False


@dataclass(frozen=True)
class FileInto:
    """Deliver to `mailbox`; `create` it if missing (RFC 5490 3.2)."""

    mailbox: str
    flags: tuple[str, ...] = ()
    create: bool = False
    copy: bool = False


@dataclass(frozen=True)
class Redirect:
    """Send the message on to `address`; `suppressed` says why not (e.g. "mail-loop")."""

    address: str
    copy: bool = False
    suppressed: str | None = None


@dataclass(frozen=True)
class Discard:
    """Drop the message silently (cancels the implicit keep only)."""


@dataclass(frozen=True)
class Reject:
    """Refuse the message with `reason` (RFC 5429); `extended` for `ereject` (refuse in the
    SMTP transaction when still possible)."""

    reason: str
    extended: bool = False


@dataclass(frozen=True)
class Vacation:
    """Send the auto-reply (RFC 5230) unless delivery saw `history_key` within `seconds`.
    `handle` is the script's `:handle`, None when it gave none; `history_key` is the handle in
    effect (RFC 5230 4.2). `mime`: `reason` is a whole MIME entity."""

    to: str
    sender: str
    subject: str
    seconds: int
    reason: str
    history_key: str
    handle: str | None = None
    mime: bool = False
    in_reply_to: str = ""
    references: str = ""


@dataclass(frozen=True)
class VacationSuppressed:
    """A vacation the RFC 5230/3834 rules forbid for this message, and why."""

    reason: str


@dataclass(frozen=True)
class Notify:
    """An RFC 5435 notification; `to`/`cc` come from the mailto URI (RFC 5436)."""

    method: str
    uri: str
    sender: str | None = None
    importance: int | None = None
    message: str | None = None
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunFailure:
    """The script failed at run time: what it did is dropped and the message is kept."""

    reason: str


Action = Keep | FileInto | Redirect | Discard | Reject | Vacation | VacationSuppressed | Notify | RunFailure


def quote(value: str) -> str:
    """A value in double quotes with `\\`, `"`, newline, carriage return and tab escaped."""
    escaped = (
        value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        .replace("\r", "\\r").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def format_action(action: Action) -> str:
    """The dry-run line for one action."""
    if isinstance(action, Keep):
        return "keep" + (f" flags={quote(' '.join(action.flags))}" if action.flags else "")
    if isinstance(action, FileInto):
        line = f"fileinto {quote(action.mailbox)}"
        if action.create:
            line += " create"
        if action.flags:
            line += f" flags={quote(' '.join(action.flags))}"
        return line
    if isinstance(action, Redirect):
        line = f"redirect {quote(action.address)}"
        if action.suppressed:
            line += f" suppressed={quote(action.suppressed)}"
        return line
    if isinstance(action, Discard):
        return "discard"
    if isinstance(action, Reject):
        return f"reject {quote(action.reason)}"
    if isinstance(action, Vacation):
        line = (
            f"vacation to={quote(action.to)} from={quote(action.sender)} "
            f"subject={quote(action.subject)} seconds={action.seconds}"
        )
        if action.handle is not None:
            line += f" handle={quote(action.handle)}"
        return line + f" reason={quote(action.reason)}"
    if isinstance(action, VacationSuppressed):
        return f"vacation suppressed={quote(action.reason)}"
    if isinstance(action, Notify):
        line = f"notify method={quote(action.method)}"
        if action.sender is not None:
            line += f" from={quote(action.sender)}"
        if action.importance is not None:
            line += f" importance={action.importance}"
        if action.message is not None:
            line += f" message={quote(action.message)}"
        if action.to:
            line += f" to={quote(','.join(action.to))}"
        if action.cc:
            line += f" cc={quote(','.join(action.cc))}"
        return line
    if isinstance(action, RunFailure):
        return "error: runtime"
    raise TypeError(f"not a Sieve action: {action!r}")


def format_actions(actions) -> list[str]:
    """The dry-run lines, one per action, in order."""
    return [format_action(action) for action in actions]


class NotifyMethodError(Exception):
    """A notification URI this server cannot use (RFC 5435 3.1)."""


def parse_notify_uri(uri: str) -> tuple[str, list[str], list[str]]:
    """The method and the To and Cc recipients of a notification URI; only `mailto:`
    (RFC 5436, with RFC 6068 `to=`/`cc=` header fields) is supported."""
    scheme, colon, rest = uri.strip().partition(":")
    if not colon or scheme.lower() != "mailto":
        raise NotifyMethodError(f"unsupported notification method {uri!r}")
    path, _, query = rest.partition("?")
    to = [unquote(a).strip() for a in path.split(",") if a.strip()]
    cc: list[str] = []
    for pair in query.split("&") if query else ():
        name, _, value = pair.partition("=")
        name = unquote(name).lower()
        addresses = [a.strip() for a in unquote(value).split(",") if a.strip()]
        if name == "to":
            to.extend(addresses)
        elif name == "cc":
            cc.extend(addresses)
    if not to:
        raise NotifyMethodError(f"no recipient in {uri!r}")
    for address in (*to, *cc):
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or any(c.isspace() or c in "<>,;" for c in address):
            raise NotifyMethodError(f"bad address {address!r} in {uri!r}")
    return "mailto", to, cc
