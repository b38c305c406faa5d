"""The MX policy behind port 25: accept mail for our addresses only, and deliver it durably.

Recipients are decided at RCPT time by the router (550 5.1.1 for unknown addresses in our domains,
554 5.7.1 for everything else: never a relay). After DATA the recipients are routed again (the
address book may have changed meanwhile; it is a few SQLite look-ups), looping messages are
refused, and the message goes through local delivery; `250` only once every copy is fsynced,
`451` if anything failed, so the sender retries and nothing acknowledged is lost.

The checks on the client (DNSBL, iprev, SPF, DKIM, DMARC, blocklists) plug in at `connection`,
`mail_from` and `message`; they come with the rest of issue 3.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from twisted.logger import Logger

from cloudmail.delivery import Envelope as DeliveryEnvelope
from cloudmail.delivery import LocalDelivery
from cloudmail.errors import DirectoryUnavailable
from cloudmail.routing import INVALID, LOCAL, NOT_OURS, Router, is_loop
from cloudmail.smtp import replies
from cloudmail.smtp.protocol import Envelope, MailParams, Session
from cloudmail.smtp.replies import Reply
from cloudmail.smtp.spool import SpooledMessage

log = Logger()

MAX_HEADER_BYTES = 256 * 1024
LOOP = Reply(554, "5.4.6", "Mail loop detected")
DIRECTORY_DOWN = Reply(451, "4.4.3", "Directory unavailable, try again later")


def read_headers(spooled: SpooledMessage) -> list[tuple[bytes, bytes]]:
    """The header fields of a spooled message (name, raw value), unfolded enough for look-ups."""
    fields: list[tuple[bytes, bytes]] = []
    with spooled.open() as f:
        head = f.read(MAX_HEADER_BYTES).split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name.strip(), value.strip()))
    return fields


def new_queue_id() -> str:
    """A short random id naming one received message in every log line about it."""
    return secrets.token_hex(6).upper()


class InboundBackend:
    """`ISmtpBackend` for the `smtp` listener: routing at RCPT, local delivery after DATA."""

    def __init__(self, router: Router, delivery: LocalDelivery) -> None:
        self._router = router
        self._delivery = delivery

    def connection(self, session: Session) -> None:
        return None

    def mail_from(self, session: Session, address: str, params: MailParams) -> Reply:
        return replies.SENDER_OK

    async def rcpt_to(self, session: Session, address: str) -> Reply:
        """Accept only addresses that route to local mailboxes (RFC 5321 3.6.1: no relaying)."""
        try:
            resolution = await self._router.resolve(address)
        except DirectoryUnavailable:
            return DIRECTORY_DOWN
        if resolution.kind == LOCAL:
            return replies.RECIPIENT_OK
        log.info("rejected RCPT <{address}> from [{client_ip}]: {reason}", address=address,
                 client_ip=session.peer_ip, reason=resolution.reason)
        if resolution.kind == NOT_OURS:
            return replies.RELAY_DENIED
        if resolution.kind == INVALID:
            return replies.BAD_RECIPIENT_SYNTAX
        return replies.NO_SUCH_USER

    async def message(self, session: Session, envelope: Envelope,
                      spooled: SpooledMessage) -> Reply:
        """Deliver to every routed mailbox; 250 only when all copies are durable."""
        queue_id = new_queue_id()
        headers = read_headers(spooled)
        try:
            routed = [await self._router.resolve(r) for r in envelope.recipients]
        except DirectoryUnavailable:
            return self._refuse(queue_id, session, envelope, DIRECTORY_DOWN, "directory down")
        local = [r for r in routed if r.kind == LOCAL]
        for resolution in local:
            for mailbox in resolution.mailboxes:
                reason = is_loop(headers, mailbox)
                if reason:
                    return self._refuse(queue_id, session, envelope, LOOP, reason)
        if not local:
            return self._refuse(queue_id, session, envelope, replies.NO_VALID_RECIPIENTS,
                                "no recipient routes anywhere any more")
        tls = f"{session.tls_version} {session.tls_cipher}" if session.tls else None
        delivery_envelope = DeliveryEnvelope(queue_id=queue_id, sender=envelope.sender,
                                             client_ip=session.peer_ip,
                                             client_name=session.peer_ip,
                                             helo=session.helo or session.peer_ip,
                                             protocol="ESMTP" if session.esmtp else "SMTP",
                                             tls=tls)
        try:
            with spooled.open() as message:
                await self._delivery.deliver(delivery_envelope, local, message)
        except Exception as e:  # noqa: BLE001 -- any failure to store means "try again"
            log.failure("delivery of {queue_id} failed; answered 451", queue_id=queue_id)
            return self._refuse(queue_id, session, envelope, replies.LOCAL_ERROR, str(e))
        log.info("accepted {queue_id} from <{sender}> [{client_ip}] for {recipients}, "
                 "{size} bytes", queue_id=queue_id, sender=envelope.sender,
                 client_ip=session.peer_ip, recipients=", ".join(envelope.recipients),
                 size=spooled.size)
        return replace(replies.MESSAGE_ACCEPTED, text=f"Message accepted as {queue_id}")

    @staticmethod
    def _refuse(queue_id: str, session: Session, envelope: Envelope, reply: Reply,
                reason: str) -> Reply:
        log.info("rejected {queue_id} from <{sender}> [{client_ip}] for {recipients}: "
                 "{code} {reason}", queue_id=queue_id, sender=envelope.sender,
                 client_ip=session.peer_ip, recipients=", ".join(envelope.recipients),
                 code=reply.code, reason=reason)
        return reply

