"""What Sieve scripts send, sent: redirects, vacation replies, notifications and the bounce of a
reject that could not be given at SMTP time. All of it goes through `Mailer` (local delivery or
the durable outbound queue) before the delivery that caused it completes.

- A redirect (RFC 5228 4.2) keeps the message as stored (our `Received:` and `Delivered-To:`
  included, for loop detection) without its `Return-Path:`, gets a DKIM signature of the
  mailbox's domain, and the envelope sender rewritten with SRS so that the receiver's SPF check
  passes. Failing to queue it fails the delivery (451): a forward is never lost.
- A vacation reply (RFC 5230) is sent at most once per sender and handle in its period
  (`vacation_log`), from the null sender (RFC 3834 3.3), signed as its From: address.
- A notification (RFC 5435, mailto: RFC 5436) is a short message from the null sender to the
  URI's addresses, `Auto-Submitted: auto-notified`.
- A reject with several recipients becomes a DSN to the sender (RFC 5429 2.1), never to `<>`.

Replies and notifications that fail are logged; they never fail the delivery.
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cloudmail.delivery import FollowUp
from cloudmail.interfaces import IAccounts
from cloudmail.mailer import Mailer
from cloudmail.mailstore.maildir import MaildirStore
from cloudmail.queue.dsn import FailedRecipient, build_dsn, should_bounce
from cloudmail.sieve import actions
from cloudmail.sieve.vacation import build_reply
from cloudmail.sieve.vacation_log import claim_reply
from cloudmail.smtp.inbound import new_queue_id
from cloudmail.smtp.sending import sign_as_author
from cloudmail.srs import Srs

log = Logger()
RunIo = Callable[..., Deferred[Any]]


class FollowUpSender:
    """Sends the follow-ups of a delivery (see the module docstring)."""

    def __init__(self, mailer: Mailer, srs: Srs, accounts: IAccounts, store: MaildirStore,
                 run_io: RunIo, hostname: str) -> None:
        self._mailer = mailer
        self._srs = srs
        self._accounts = accounts
        self._store = store
        self._run_io = run_io
        self._hostname = hostname

    async def send(self, followups: list[FollowUp]) -> None:
        """Send them all; raises only when a redirect could not be queued."""
        for followup in followups:
            if isinstance(followup.action, actions.Redirect):
                await self._redirect(followup, followup.action)
                continue
            try:
                if isinstance(followup.action, actions.Vacation):
                    await self._vacation(followup, followup.action)
                elif isinstance(followup.action, actions.Notify):
                    await self._notify(followup, followup.action)
                elif followup.reject is not None:
                    await self._bounce_reject(followup, followup.reject)
            except Exception:  # noqa: BLE001 -- an auto-reply lost is no mail lost
                log.failure("cannot send the Sieve follow-up of {mailbox}",
                            mailbox=str(followup.mailbox))

    async def _redirect(self, followup: FollowUp, action: actions.Redirect) -> None:
        message = await sign_as_author(self._accounts, self._run_io,
                                       _without_return_path(followup.message),
                                       str(followup.mailbox))
        sender = self._srs.forward(followup.sender) if followup.sender else ""
        sent = await self._mailer.send(sender, [action.address], message)
        log.info("redirected mail for {mailbox} to <{address}> from <{sender}>{queued}",
                 mailbox=str(followup.mailbox), address=action.address, sender=sender,
                 queued=f" (queued as {sent.queued.queue_id})" if sent.queued else "")

    async def _vacation(self, followup: FollowUp, action: actions.Vacation) -> None:
        now = time.time()
        maildir = self._store.mailbox_path(followup.mailbox)
        if not await self._run_io(claim_reply, maildir, action.history_key, action.to,
                                  float(action.seconds), now):
            log.info("no vacation reply to <{to}> for {mailbox}: one was sent within "
                     "{seconds} s", to=action.to, mailbox=str(followup.mailbox),
                     seconds=action.seconds)
            return
        reply = build_reply(action, message_id=self._message_id(), date=now)
        reply = await sign_as_author(self._accounts, self._run_io, reply, action.sender)
        await self._mailer.send("", [action.to], reply)
        log.info("vacation reply from {mailbox} to <{to}>", mailbox=str(followup.mailbox),
                 to=action.to)

    async def _notify(self, followup: FollowUp, action: actions.Notify) -> None:
        recipients = list(dict.fromkeys([*action.to, *action.cc]))
        if not recipients:
            return
        notice = EmailMessage()
        notice["From"] = action.sender or str(followup.mailbox)
        if action.to:
            notice["To"] = ", ".join(action.to)
        if action.cc:
            notice["Cc"] = ", ".join(action.cc)
        notice["Subject"] = action.message or f"New mail for {followup.mailbox}"
        notice["Date"] = formatdate(time.time(), localtime=False)
        notice["Message-ID"] = self._message_id()
        notice["Auto-Submitted"] = "auto-notified"
        if action.importance is not None:
            notice["X-Priority"] = str(action.importance)
        notice.set_content(f"{action.message or 'New mail arrived'} in {followup.mailbox}.\n")
        data = notice.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        await self._mailer.send("", recipients, data)
        log.info("Sieve notification for {mailbox} to {recipients}",
                 mailbox=str(followup.mailbox), recipients=", ".join(recipients))

    async def _bounce_reject(self, followup: FollowUp, reason: str) -> None:
        if not should_bounce(followup.sender):
            return
        now = datetime.now(timezone.utc)
        dsn = build_dsn(
            reporting_mta=self._hostname, original_sender=followup.sender,
            queue_id=new_queue_id(),
            failures=[FailedRecipient(followup.recipient, "5.7.1",
                                      f"smtp; 550 5.7.1 {' '.join(reason.split())}")],
            original_headers=followup.message, arrival_date=now, now=now,
            postmaster=f"postmaster@{self._hostname}")
        await self._mailer.send("", [followup.sender], dsn)
        log.info("Sieve reject of {mailbox} returned to <{sender}>",
                 mailbox=str(followup.mailbox), sender=followup.sender)

    def _message_id(self) -> str:
        return f"<{secrets.token_hex(12)}@{self._hostname}>"


def _without_return_path(message: bytes) -> bytes:
    """The message without a leading `Return-Path:` field (it belongs to the final delivery,
    RFC 5321 4.4, not to a message passed on)."""
    if message[:12].lower() == b"return-path:":
        end = message.find(b"\r\n")
        return message[end + 2:] if end >= 0 else message
    return message
