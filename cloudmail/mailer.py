"""Sending a message to any address: local recipients get it at once, the others through the
outbound queue.

Everything that sends mail goes through here: the submission listeners (the user's message),
the queue's own bounces and delay notices, the admin's test message, and later Sieve's redirects
and vacation replies. So "is this address ours?" is decided in one place, by the same router as
inbound mail (aliases, groups, catch-all, sub-addresses), and a local recipient never takes a
detour through SMTP. `send` returns when every copy is durable: delivered into Maildir, or
fsynced in the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from twisted.logger import Logger

from cloudmail.delivery import Delivered, Envelope, LocalDelivery, received_header
from cloudmail.queue.scheduler import OutboundQueue
from cloudmail.queue.store import QueuedMessage
from cloudmail.routing import LOCAL, NOT_OURS, Resolution, Router
from cloudmail.smtp.inbound import new_queue_id

log = Logger()


@dataclass
class Sent:
    """What `send` did: the local copies, the queue entry for the rest, and the recipients
    nobody has (an unknown address of ours, or one that is not an address)."""

    delivered: list[Delivered] = field(default_factory=list)
    queued: QueuedMessage | None = None
    refused: list[Resolution] = field(default_factory=list)


class Mailer:
    """Local delivery or the outbound queue, per recipient (see the module docstring)."""

    def __init__(self, router: Router, delivery: LocalDelivery, queue: OutboundQueue,
                 hostname: str) -> None:
        self._router = router
        self._delivery = delivery
        self._queue = queue
        self._hostname = hostname

    async def send(self, sender: str, recipients: list[str], message: bytes | Path, *,
                   envelope: Envelope | None = None,
                   routes: dict[str, Resolution] | None = None,
                   auth_user: str | None = None) -> Sent:
        """Send `message` from `sender` ("" for `<>`) to `recipients`.

        `routes` are resolutions made already (at RCPT time); the others are resolved here.
        `envelope` describes where the message came from for the `Received:` header of local
        copies (default: made here, by us). Raises what delivery or the queue raise; the
        caller answers 451 then.
        """
        ours = envelope is None  # made here: log what is queued (front ends log their own)
        routes = dict(routes or {})
        for recipient in dict.fromkeys(recipients):
            if recipient not in routes:
                routes[recipient] = await self._router.resolve(recipient)
        sent = Sent()
        local = [r for r in routes.values() if r.kind == LOCAL]
        remote = [a for a, r in routes.items() if r.kind == NOT_OURS]
        sent.refused = [r for r in routes.values() if r.kind not in (LOCAL, NOT_OURS)]
        if local:
            if envelope is None:
                envelope = Envelope(queue_id=new_queue_id(), sender=sender,
                                    client_ip="127.0.0.1", client_name="localhost",
                                    helo=self._hostname, protocol="local")
            sent.delivered = await self._delivery.deliver(envelope, local, message)
        if remote:
            # RFC 5321 4.4: what we received and pass on carries our trace header.
            trace = b"" if ours else received_header(
                envelope, self._hostname, remote[0] if len(remote) == 1 else None,
                datetime.now(timezone.utc))
            sent.queued = await self._queue.enqueue(
                sender, remote, message, prepend=trace,
                received_from=envelope.client_ip if envelope else "", auth_user=auth_user)
            if ours:
                log.info("queued {queue_id} from <{sender}> {size} bytes for {recipients}",
                         queue_id=sent.queued.queue_id, sender=sender, size=sent.queued.size,
                         recipients=", ".join(f"<{r}>" for r in remote))
        for refusal in sent.refused:
            log.info("not sent to <{recipient}> from <{sender}>: {reason}",
                     recipient=refusal.address, sender=sender, reason=refusal.reason)
        return sent
