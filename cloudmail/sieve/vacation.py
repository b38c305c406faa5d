"""Vacation (RFC 5230) decisions, pure: whether a message may be answered at all (RFC 5230 4.5
and RFC 3834 2), the handle that keys the reply history (RFC 5230 4.2), and the reply itself
(RFC 5230 5, RFC 3834 3). Remembering who was answered when is delivery's job."""

from __future__ import annotations

import hashlib
from email.header import Header
from email.utils import formatdate

from cloudmail.sieve.message import SieveMessage

DEFAULT_SECONDS = 7 * 86400
MIN_DAYS = 1
MAX_SECONDS = 365 * 86400
LIST_HEADERS = (
    "List-Id", "List-Help", "List-Unsubscribe", "List-Subscribe", "List-Post", "List-Owner",
    "List-Archive", "Mailing-List",
)
_SYSTEM_LOCALPARTS = frozenset({
    "mailer-daemon", "postmaster", "listserv", "majordomo", "mailman", "root", "daemon",
    "noreply", "no-reply", "do-not-reply", "donotreply", "bounce", "bounces",
})
ADDRESS_HEADERS = ("To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")


def _normal(address: str) -> str:
    return address.strip().strip("<>").lower()


def _without_detail(address: str) -> str:
    local, at, domain = _normal(address).rpartition("@")
    if not at:
        return _normal(address)
    for separator in "+-":
        if separator in local:
            local = local[: local.index(separator)]
    return f"{local}@{domain}"


def is_system_address(address: str) -> bool:
    """MAILER-DAEMON, postmaster, list robots (owner-*, *-request) and no-reply addresses:
    never answered (RFC 5230 4.6, RFC 3834 2)."""
    local = _normal(address).rpartition("@")[0] or _normal(address)
    return (
        local in _SYSTEM_LOCALPARTS
        or local.startswith("owner-")
        or local.endswith(("-request", "-owner", "-bounces"))
    )


def suppression_reason(
    message: SieveMessage,
    sender: str,
    recipient: str,
    own_addresses=(),
    addresses=(),
) -> str | None:
    """Why no vacation reply may be sent for this message, or None when one may:
    "system-address" (null or robot sender), "own-address", "auto-submitted", "mailing-list",
    "precedence", "auto-response-suppress" or "not-addressed" (none of the user's addresses in
    To/Cc/Bcc, RFC 5230 4.5)."""
    if not sender or is_system_address(sender):
        return "system-address"
    mine = {_normal(a) for a in (recipient, *own_addresses, *addresses) if a}
    mine |= {_without_detail(a) for a in mine}
    if _normal(sender) in mine or _without_detail(sender) in mine:
        return "own-address"
    for value in message.headers("Auto-Submitted"):
        if value.split(";")[0].strip().lower() != "no":
            return "auto-submitted"
    if any(message.raw_headers(name) for name in LIST_HEADERS):
        return "mailing-list"
    for value in message.headers("Precedence"):
        if value.strip().lower() in ("bulk", "list", "junk"):
            return "precedence"
    for value in message.headers("X-Auto-Response-Suppress"):
        words = {w.strip().lower() for w in value.replace(";", ",").split(",")}
        if words & {"all", "oof", "autoreply"}:
            return "auto-response-suppress"
    written = set()
    for name in ADDRESS_HEADERS:
        for address in message.addresses(name):
            written.add(_normal(address))
            written.add(_without_detail(address))
    if not written & mine:
        return "not-addressed"
    return None


def vacation_seconds(days: int | None = None, seconds: int | None = None) -> int:
    """The reply interval: `:seconds` as given (0 allowed, RFC 6131), `:days` at least one
    day, 7 days without either; at most a year."""
    if seconds is not None:
        return max(0, min(seconds, MAX_SECONDS))
    if days is not None:
        return max(MIN_DAYS, min(days, 365)) * 86400
    return DEFAULT_SECONDS


def default_handle(reason: str, subject: str | None, sender: str | None, mime: bool) -> str:
    """RFC 5230 4.2: without `:handle`, replies with the same reason, `:subject`, `:from` and
    `:mime` share one history."""
    text = "\0".join((reason, subject or "", sender or "", "mime" if mime else ""))
    return "auto:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def reply_subject(subject: str | None, original: str) -> str:
    """`:subject`, or "Auto: " and the original subject (RFC 5230 5.4)."""
    if subject is not None:
        return subject
    return f"Auto: {original}" if original else "Auto:"


def thread_headers(message: SieveMessage) -> tuple[str, str]:
    """In-Reply-To and References for the reply (RFC 5230 5.8)."""
    message_id = (message.raw_headers("Message-ID") or [""])[0].strip()
    references = " ".join((message.raw_headers("References") or [""])[0].split())
    if message_id:
        references = f"{references} {message_id}".strip()
    return message_id, references


def build_reply(action, *, message_id: str, date: float | None = None) -> bytes:
    """The reply message for a `Vacation` action, marked Auto-Submitted: auto-replied
    (RFC 3834 5)."""
    lines = [
        ("From", action.sender),
        ("To", action.to),
        ("Subject", Header(action.subject, "utf-8").encode() if not action.subject.isascii() else action.subject),
        ("Date", formatdate(date, localtime=False)),
        ("Message-ID", message_id),
        ("Auto-Submitted", "auto-replied (vacation)"),
        ("Precedence", "bulk"),
    ]
    if action.in_reply_to:
        lines.append(("In-Reply-To", action.in_reply_to))
    if action.references:
        lines.append(("References", action.references))
    lines.append(("MIME-Version", "1.0"))
    if action.mime:
        head = "".join(f"{n}: {v}\r\n" for n, v in lines)
        body = action.reason.replace("\r\n", "\n").replace("\n", "\r\n")
        return (head + body).encode("utf-8")
    lines.append(("Content-Type", "text/plain; charset=utf-8"))
    lines.append(("Content-Transfer-Encoding", "8bit"))
    head = "".join(f"{n}: {v}\r\n" for n, v in lines)
    body = action.reason.replace("\r\n", "\n").replace("\n", "\r\n")
    return (head + "\r\n" + body).encode("utf-8")
