"""Local delivery: one received message into the Maildirs of its recipients, durably.

The pipeline for each final mailbox is: trace headers (`Return-Path:`, `Delivered-To:`,
`Received:`) → the recipient's Sieve script (issue 6 fills in `decide`; until then every message
is kept in INBOX) → the mail store, which fsyncs file and directory before it returns. The whole
pipeline for all mailboxes of one message is one job in the `io` thread pool (one hand-off per
message, not per mailbox). The SMTP front end answers `250` only when `deliver` has fired; any
failure fires an error and the front end answers `451`, so the sender tries again and nothing
acknowledged is lost (copies already written before the failure are kept: a retry may then
duplicate them, never lose them).

One message is written once per mailbox, from memory or straight from the spooled file: several
recipients that end at the same mailbox (an alias and the mailbox itself, a group and one of its
members) get one copy, as in Postfix.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import BinaryIO, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cloudmail.address import Address
from cloudmail.mailstore.maildir import INBOX, MaildirStore
from cloudmail.routing import Resolution
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
class Decision:
    """What to do with a message for one mailbox: keep it in `folder` with `flags`."""

    folder: str = INBOX
    flags: str = ""


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


class LocalDelivery:
    """Delivers spooled messages to local mailboxes through the `io` thread pool."""

    def __init__(self, store: MaildirStore, pools: ThreadPools, hostname: str) -> None:
        self._store = store
        self._pools = pools
        self._hostname = hostname
        #: Called on the reactor with the copies of every delivered message (IMAP IDLE).
        self.observers: list[Callable[[list[Delivered]], None]] = []

    def decide(self, mailbox: Address, resolution: Resolution, junk: bool) -> Decision:
        """Where the copy for `mailbox` goes. The recipient's Sieve script runs here (issue 6)."""
        return Decision(folder=JUNK_FOLDER if junk else INBOX)

    def deliver(self, envelope: Envelope, recipients: list[Resolution], message: bytes | Path,
                *, headers: bytes = b"", junk: bool = False) -> Deferred[list[Delivered]]:
        """Write one copy per distinct mailbox in the `io` pool; fire when all are durable, or
        with the first error.

        `message` is the message itself or the path of its spool file. `headers` (e.g. our
        Authentication-Results) go after the trace headers; `junk` files the message in the
        Spam folder.
        """
        return self._pools.run("io", self.deliver_now, envelope, recipients, message,
                               headers=headers, junk=junk).addCallback(self._tell)

    def _tell(self, delivered: list[Delivered]) -> list[Delivered]:
        for observer in self.observers:
            try:
                observer(delivered)
            except Exception:  # noqa: BLE001 -- the mail is delivered whatever an observer does
                log.failure("a delivery observer failed")
        return delivered

    def deliver_now(self, envelope: Envelope, recipients: list[Resolution],
                    message: bytes | Path, *, headers: bytes = b"",
                    junk: bool = False) -> list[Delivered]:
        """`deliver`, blocking the calling thread (never the reactor)."""
        when = datetime.now(timezone.utc)
        with contextlib.ExitStack() as stack:
            source: bytes | BinaryIO = (message if isinstance(message, bytes)
                                        else stack.enter_context(open(message, "rb")))
            delivered: list[Delivered] = []
            seen: set[Address] = set()
            for resolution in recipients:
                for mailbox in resolution.mailboxes:
                    if mailbox in seen:
                        continue
                    seen.add(mailbox)
                    decision = self.decide(mailbox, resolution, junk)
                    prepend = trace_headers(envelope, self._hostname, mailbox,
                                            resolution.address, when) + headers
                    copy = self._store.deliver(mailbox, source, prepend=prepend,
                                               folder=decision.folder, flags=decision.flags)
                    delivered.append(Delivered(mailbox, decision.folder, str(copy.path),
                                               copy.size))
        return delivered
