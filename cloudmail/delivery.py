"""Local delivery: one received message into the Maildirs of its recipients, durably.

The pipeline for each final mailbox is: trace headers (`Return-Path:`, `Delivered-To:`,
`Received:`) → the mailbox's active Sieve script, if any (`cloudmail.sieve.filter`: which
folders, which flags, or discard) → the mail store, which fsyncs file and directory before it
returns. The whole pipeline for all mailboxes of one message is one job in the `io` thread pool
(one hand-off per message, not per mailbox). What the scripts send (redirects, vacation replies,
notifications, bounces for rejects) goes out through `send_followups` — queued durably — before
`deliver` fires. The SMTP front end answers `250` only when `deliver` has fired; any
failure fires an error and the front end answers `451`, so the sender tries again and nothing
acknowledged is lost (copies already written before the failure are kept: a retry may then
duplicate them, never lose them).

One message is written once per mailbox, from memory or straight from the spooled file: several
recipients that end at the same mailbox (an alias and the mailbox itself, a group and one of its
members) get one copy, as in Postfix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import BinaryIO, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from cloudmail.address import Address
from cloudmail.mailstore.folder import split_name
from cloudmail.mailstore.index import add_pending_keywords
from cloudmail.mailstore.maildir import INBOX, MaildirStore
from cloudmail.routing import Resolution
from cloudmail.sieve.actions import Action
from cloudmail.sieve.filter import SieveFilter
from cloudmail.threads import ThreadPools

log = Logger()
JUNK_FOLDER = "Spam"


@dataclass(frozen=True)
class Envelope:
    """What the SMTP session knows of a message: who sent it, from where, and how."""

    queue_id: str
    sender: str
    client_ip: str
    client_name: str
    helo: str
    protocol: str = "ESMTP"
    tls: str | None = None
    #: The client logged in (submission): the protocol is then ESMTPA or ESMTPSA (RFC 3848).
    authenticated: bool = False
    #: Leave the client's name and IP out of `Received:` (`[submission] hide_client_ip`).
    hide_client: bool = False


@dataclass(frozen=True)
class Delivered:
    """One copy on disk: the mailbox, the folder and the file."""

    mailbox: Address
    folder: str
    path: str
    size: int


def received_header(envelope: Envelope, hostname: str, recipient: str | None,
                    when: datetime) -> bytes:
    """The `Received:` trace header of RFC 5321 4.4, with the TLS version and cipher when used
    and the protocol named as RFC 3848 says (ESMTPS, ESMTPA, ESMTPSA); `for <recipient>` when
    the copy is for one recipient."""
    protocol = (envelope.protocol + ("S" if envelope.tls else "")
                + ("A" if envelope.authenticated else ""))
    tls = f"\r\n\t(using {envelope.tls})" if envelope.tls else ""
    client = ("(client hidden)" if envelope.hide_client
              else f"({envelope.client_name} [{envelope.client_ip}])")
    return (f"Received: from {envelope.helo} {client}{tls}"
            f"\r\n\tby {hostname} (cloudmail) with {protocol} id {envelope.queue_id}"
            + (f"\r\n\tfor <{recipient}>" if recipient else "")
            + f"; {format_datetime(when)}\r\n").encode("utf-8")


def trace_headers(envelope: Envelope, hostname: str, mailbox: Address, recipient: str,
                  when: datetime) -> bytes:
    """The headers prepended to a delivered copy: Return-Path, Delivered-To, Received."""
    return (f"Return-Path: <{envelope.sender}>\r\nDelivered-To: {mailbox}\r\n".encode("utf-8")
            + received_header(envelope, hostname, recipient, when))


@dataclass(frozen=True)
class FollowUp:
    """Something a Sieve script asked for that goes out after the copies are stored: a
    redirect, vacation reply or notification (`action`), or a reject that could not be given
    at SMTP time (`reject`), for `mailbox` (reached as `recipient`), about `message` (as
    stored, our trace headers included)."""

    mailbox: Address
    recipient: str
    sender: str
    message: bytes
    action: Action | None = None
    reject: str | None = None


@dataclass
class Outcome:
    """What one delivery did: the copies stored and the follow-ups to send."""

    delivered: list[Delivered] = field(default_factory=list)
    followups: list[FollowUp] = field(default_factory=list)


class Rejected(Exception):
    """The recipient's Sieve script rejected the message (RFC 5429) and nothing was stored: the
    front end answers `550 5.7.1` with the reason (an SMTP-time reject, not a bounce)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LocalDelivery:
    """Delivers spooled messages to local mailboxes through the `io` thread pool."""

    def __init__(self, store: MaildirStore, pools: ThreadPools, hostname: str,
                 sieve: SieveFilter | None = None) -> None:
        self._store = store
        self._pools = pools
        self._hostname = hostname
        self._sieve = sieve
        #: Called on the reactor with the copies of every delivered message (IMAP IDLE).
        self.observers: list[Callable[[list[Delivered]], None]] = []
        #: Sends a delivery's follow-ups (redirects, vacation replies…) before it completes.
        self.send_followups: Callable[[list[FollowUp]], Awaitable[None]] | None = None

    def deliver(self, envelope: Envelope, recipients: list[Resolution], message: bytes | Path,
                *, headers: bytes = b"", junk: bool = False) -> Deferred[list[Delivered]]:
        """Write the copies of every distinct mailbox in the `io` pool (each mailbox's Sieve
        script decides where), then send the scripts' follow-ups; fire when all is durable,
        or with the first error (`Rejected` when the only mailbox's script rejected it).

        `message` is the message itself or the path of its spool file. `headers` (e.g. our
        Authentication-Results) go after the trace headers; `junk` files the message in the
        Spam folder unless a script says otherwise.
        """
        return ensureDeferred(self._deliver(envelope, recipients, message, headers, junk))

    async def _deliver(self, envelope: Envelope, recipients: list[Resolution],
                       message: bytes | Path, headers: bytes, junk: bool) -> list[Delivered]:
        outcome: Outcome = await self._pools.run("io", self.deliver_now, envelope, recipients,
                                                 message, headers=headers, junk=junk)
        rejects = [f for f in outcome.followups if f.reject is not None]
        if rejects and not outcome.delivered and len(outcome.followups) == len(rejects) == 1:
            raise Rejected(rejects[0].reject or "")
        if outcome.followups and self.send_followups is not None:
            await self.send_followups(outcome.followups)
        self._tell(outcome.delivered)
        return outcome.delivered

    def _tell(self, delivered: list[Delivered]) -> None:
        for observer in self.observers:
            try:
                observer(delivered)
            except Exception:  # noqa: BLE001 -- the mail is delivered whatever an observer does
                log.failure("a delivery observer failed")

    def deliver_now(self, envelope: Envelope, recipients: list[Resolution],
                    message: bytes | Path, *, headers: bytes = b"",
                    junk: bool = False) -> Outcome:
        """Store the copies, blocking the calling thread (never the reactor); the follow-ups
        are returned, not sent."""
        when = datetime.now(timezone.utc)
        default = JUNK_FOLDER if junk else INBOX
        outcome = Outcome()
        body = message if isinstance(message, bytes) else None
        with contextlib.ExitStack() as stack:
            source: bytes | BinaryIO = (message if isinstance(message, bytes)
                                        else stack.enter_context(open(message, "rb")))
            seen: set[Address] = set()
            for resolution in recipients:
                for mailbox in resolution.mailboxes:
                    if mailbox in seen:
                        continue
                    seen.add(mailbox)
                    prepend = trace_headers(envelope, self._hostname, mailbox,
                                            resolution.address, when) + headers
                    verdict = None
                    if self._sieve is not None and self._sieve.has_script(mailbox):
                        if body is None:
                            body = Path(message).read_bytes()  # type: ignore[arg-type]
                        verdict = self._sieve.verdict(mailbox, resolution.address,
                                                      envelope.sender, prepend + body, default)
                    if verdict is None:
                        self._store_copy(outcome, mailbox, source, prepend, default, "")
                        continue
                    for folder, flags, keywords in verdict.copies:
                        self._store_copy(outcome, mailbox, verdict.message, b"", folder, flags,
                                         keywords)
                    outcome.followups.extend(
                        FollowUp(mailbox, resolution.address, envelope.sender,
                                 verdict.message, action=action)
                        for action in verdict.followups)
                    if verdict.reject is not None:
                        outcome.followups.append(FollowUp(
                            mailbox, resolution.address, envelope.sender, verdict.message,
                            reject=verdict.reject))
        return outcome

    def _store_copy(self, outcome: Outcome, mailbox: Address, source: bytes | BinaryIO,
                    prepend: bytes, folder: str, flags: str,
                    keywords: tuple[str, ...] = ()) -> None:
        copy = self._store.deliver(mailbox, source, prepend=prepend, folder=folder, flags=flags)
        if keywords:
            add_pending_keywords(self._store.mailbox_path(mailbox), folder,
                                 split_name(copy.name)[0], keywords)
        outcome.delivered.append(Delivered(mailbox, folder, str(copy.path), copy.size))
