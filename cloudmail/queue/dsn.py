"""Delivery status notifications: the message that tells a sender a delivery failed or is late.

A DSN is a `multipart/report; report-type=delivery-status` message (RFC 3462, now RFC 6522) of
three parts: a human-readable `text/plain` explanation, a machine-readable
`message/delivery-status` part (RFC 3464 §2: per-message fields, then one block of per-recipient
fields per recipient) and the original header section as `text/rfc822-headers`. Status codes are
RFC 3463 enhanced codes; `Action` is `failed` or `delayed` (RFC 3464 §2.3.3).

When an address, reply text or original header holds UTF-8 (an SMTPUTF8 message, RFC 6531), the
report uses the RFC 6533 forms instead: `global-delivery-status`, `utf-8;` address types and
`message/global-headers`.

A DSN is itself sent with the null reverse-path and is never sent *to* it (RFC 3464 §2,
RFC 5321 §4.5.5), so bounces cannot loop: `should_bounce` says whether a sender may get one, and
`build_dsn` refuses the null sender. It carries `Auto-Submitted: auto-replied` (RFC 3834 §5).
"""

from __future__ import annotations

import re
import secrets
import textwrap
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Literal

CRLF = "\r\n"
#: RFC 5322 §2.1.1: lines SHOULD stay within 78 characters and MUST within 998.
_FOLD_AT = 78
_MAX_FIELD = 900
_TYPED = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*;")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")

FAILED_SUBJECT = "Undelivered Mail Returned to Sender"
DELAYED_SUBJECT = "Delivery Status Notification (Delay)"


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient to report on.

    `status` is the RFC 3463 code ("5.1.1"), `diagnostic` the typed reply
    ("smtp; 550 5.1.1 No such user"; untyped text is taken as `smtp;`), `remote_mta` the host
    name that answered, if one did. `last_attempt` defaults to the report's time, and
    `will_retry_until` (delayed only) says when the message will expire.
    """

    address: str
    status: str
    diagnostic: str
    remote_mta: str | None = None
    action: Literal["failed", "delayed"] = "failed"
    original_recipient: str | None = None
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


def should_bounce(sender: str) -> bool:
    """True when `sender` may receive a DSN: anyone but the null reverse-path `<>`."""
    return sender.strip().strip("<>").strip() != ""


def build_dsn(*, reporting_mta: str, original_sender: str, queue_id: str,
              failures: list[FailedRecipient], original_headers: bytes,
              arrival_date: datetime, now: datetime, postmaster: str,
              envelope_id: str | None = None) -> bytes:
    """The complete DSN message (CRLF line ends) to send from `<>` to `original_sender`.

    `original_headers` may be the whole message or its start: only the header section is kept.
    `postmaster` is named in the text as the person to ask. Dates should be timezone-aware.
    Raises ValueError for the null sender or an empty list of failures.
    """
    if not should_bounce(original_sender):
        raise ValueError("a DSN is never sent to the null reverse-path (RFC 3464 §2)")
    if not failures:
        raise ValueError("a DSN needs at least one recipient to report on")
    if any(f.action not in ("failed", "delayed") for f in failures):
        raise ValueError("action must be 'failed' or 'delayed'")
    sender = _clean(original_sender.strip().strip("<>"))
    headers = _header_section(original_headers)
    status_text = _status_fields(reporting_mta, queue_id, envelope_id, arrival_date, now, failures)
    is_global = not status_text.isascii() or not headers.isascii()
    failed = any(f.action == "failed" for f in failures)
    subject = FAILED_SUBJECT if failed else DELAYED_SUBJECT
    human = _human_text(reporting_mta, failures, failed, postmaster)
    boundary = _boundary(human.encode() + status_text.encode() + headers)
    kind = "global-delivery-status" if is_global else "delivery-status"

    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{int(now.timestamp())}.{queue_id}.{secrets.token_hex(4)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={kind};",
        f'\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if is_global or not human.isascii() else '7bit'}",
        "",
        "This is a MIME-encapsulated message.",
        "",
    ]
    parts = [
        _part(boundary, f"text/plain; charset={'us-ascii' if human.isascii() else 'utf-8'}",
              human.encode("utf-8"), "Notification"),
        _part(boundary, f"message/{kind}", status_text.encode("utf-8"), "Delivery report"),
        _part(boundary, "message/global-headers" if not headers.isascii() else "text/rfc822-headers",
              headers, "Undelivered message headers"),
    ]
    closing = f"--{boundary}--{CRLF}".encode("ascii")
    return (CRLF.join(top) + CRLF).encode("utf-8") + b"".join(parts) + closing


def _part(boundary: str, content_type: str, body: bytes, description: str) -> bytes:
    """One body part with its delimiter line; `body` already ends with CRLF."""
    encoding = "7bit" if body.isascii() else "8bit"
    head = (f"--{boundary}{CRLF}Content-Description: {description}{CRLF}"
            f"Content-Type: {content_type}{CRLF}Content-Transfer-Encoding: {encoding}{CRLF}{CRLF}")
    return head.encode("ascii") + body + CRLF.encode("ascii")


def _status_fields(reporting_mta: str, queue_id: str, envelope_id: str | None,
                   arrival_date: datetime, now: datetime,
                   failures: list[FailedRecipient]) -> str:
    """The `message/delivery-status` body: per-message fields, then a block per recipient."""
    blocks = [[f"Reporting-MTA: dns; {reporting_mta}", f"X-Queue-ID: {queue_id}"]]
    if envelope_id:
        blocks[0].append(_field("Original-Envelope-Id", envelope_id))
    blocks[0].append(f"Arrival-Date: {format_datetime(arrival_date)}")
    for failure in failures:
        block = []
        if failure.original_recipient:
            block.append(_field("Original-Recipient", _typed_address(failure.original_recipient)))
        block += [
            _field("Final-Recipient", _typed_address(failure.address)),
            f"Action: {failure.action}",
            f"Status: {_clean(failure.status)}",
        ]
        if failure.remote_mta:
            block.append(_field("Remote-MTA", f"dns; {failure.remote_mta}"))
        diagnostic = _clean(failure.diagnostic)
        if diagnostic:
            if not _TYPED.match(diagnostic):
                diagnostic = f"smtp; {diagnostic}"
            block.append(_field("Diagnostic-Code", diagnostic))
        block.append(f"Last-Attempt-Date: {format_datetime(failure.last_attempt or now)}")
        if failure.action == "delayed" and failure.will_retry_until is not None:
            block.append(f"Will-Retry-Until: {format_datetime(failure.will_retry_until)}")
        blocks.append(block)
    return (CRLF + CRLF).join(CRLF.join(block) for block in blocks) + CRLF


def _typed_address(address: str) -> str:
    """`rfc822; a@b`, or RFC 6533's `utf-8; …` for an internationalised address."""
    address = _clean(address.strip().strip("<>"))
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {address}"


def _human_text(reporting_mta: str, failures: list[FailedRecipient], failed: bool,
                postmaster: str) -> str:
    """The explanation for people, wrapped at 76 columns with CRLF line ends."""
    if failed:
        intro = (f"This is the mail system at host {reporting_mta}. Your message could not be "
                 "delivered to one or more recipients. Its headers are attached below.")
    else:
        intro = (f"This is the mail system at host {reporting_mta}. Your message has not been "
                 "delivered yet to one or more recipients. No action is required on your part: "
                 "delivery will be tried again, and you will be told if it finally fails.")
    lines = textwrap.wrap(intro, 76) + [""]
    lines += textwrap.wrap(f"For further assistance, please contact <{_clean(postmaster)}>. "
                           "If you do so, please include this notification.", 76) + [""]
    for failure in failures:
        what = "failed" if failure.action == "failed" else "delayed"
        lines.append(f"<{_clean(failure.address.strip().strip('<>'))}>: delivery {what}")
        reason = _clean(failure.diagnostic) or f"status {_clean(failure.status)}"
        if failure.remote_mta:
            reason = f"host {_clean(failure.remote_mta)} said: {reason}"
        lines += textwrap.wrap(reason, 76, initial_indent="    ", subsequent_indent="    ",
                               break_long_words=True)
        lines.append("")
    return CRLF.join(lines[:-1]) + CRLF


def _header_section(message: bytes) -> bytes:
    """The header section of `message` with CRLF line ends and without the blank line after it;
    a cut-off start of a message is trimmed back to its last complete line."""
    end = _HEADER_END.search(message)
    if end is not None:
        section = message[:end.start()]
    else:
        section = message[:message.rfind(b"\n") + 1]
    lines = section.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join(line + b"\r\n" for line in lines if line)


def _field(name: str, value: str) -> str:
    """A header field folded at spaces near 78 columns (RFC 5322 §2.2.3)."""
    words = value[:_MAX_FIELD].split(" ")
    lines = [f"{name}: {words[0]}"]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > _FOLD_AT and lines[-1].strip():
            lines.append(f" {word}")
        else:
            lines[-1] += f" {word}"
    return CRLF.join(lines)


def _clean(text: str) -> str:
    """`text` on one line: runs of control characters (CR, LF, tabs, NUL) become one space."""
    return _CONTROL.sub(" ", text).strip()


def _boundary(content: bytes) -> str:
    """A multipart boundary that does not occur in `content`."""
    while True:
        boundary = f"=_cloudmail_{secrets.token_hex(12)}"
        if boundary.encode("ascii") not in content:
            return boundary
