"""The outbound queue and the test message, for the admin API (and so for `cloudmail-admin`).

The queue lives in the running server (`OutboundQueue`, in memory and on disk), so unlike the
address book it is only reachable through the server's admin API; the command line calls that
API over loopback HTTP. Entries are shown as JSON with ISO 8601 UTC times; a queue id that is
unknown or malformed is a 404 naming `id`.

The test message is a small text message from `postmaster@` one of our domains (or the given
address of one of them) to any address, DKIM-signed like submitted mail and sent through the
`Mailer`, so it takes the same way as users' mail: local delivery or the queue.
"""

from __future__ import annotations

import email.policy
import secrets
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any


from cloudmail.errors import BadRequest, Invalid, NotFound
from cloudmail.queue.store import QueuedMessage, RecipientState, UnknownQueueId
from cloudmail.routing import INVALID, LOCAL, NOT_OURS
from cloudmail.smtp.sending import sign_as_author

TEST_SUBJECT = "cloudmail test message"


def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC to the second (as `created` elsewhere in the API), or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).replace(microsecond=0).isoformat()


def recipient_json(r: RecipientState) -> dict[str, Any]:
    """Where delivery to one recipient of a queued message stands."""
    return {"address": r.address, "status": r.status, "attempts": r.attempts,
            "next_attempt": iso(r.next_attempt) if r.pending else None,
            "last_attempt": iso(r.last_attempt), "last_code": r.last_code,
            "last_status": r.last_status, "last_error": r.last_error or None,
            "remote_mta": r.remote_mta}


def entry_json(e: QueuedMessage) -> dict[str, Any]:
    """A queued message as the API shows it."""
    return {"id": e.queue_id, "sender": e.sender, "created": iso(e.created), "size": e.size,
            "auth_user": e.auth_user, "next_attempt": iso(e.next_attempt),
            "recipients": [recipient_json(r) for r in e.recipients]}


def test_message(sender: str, recipient: str, hostname: str, now: datetime) -> bytes:
    """The admin's test message: who sent it, from which server, when (CRLF line ends)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = TEST_SUBJECT
    message["Date"] = format_datetime(now)
    message["Message-ID"] = f"<{secrets.token_hex(12)}@{hostname}>"
    message.set_content(
        f"This is a test message sent by the administrator of the cloudmail server "
        f"{hostname}\nat {now.isoformat(timespec='seconds')}, from <{sender}> to <{recipient}>.\n\n"
        f"If you can read it, mail from {hostname} reaches this mailbox. No need to reply.\n")
    return message.as_bytes(policy=email.policy.SMTP)


test_message.__test__ = False  # not a pytest test, despite the name


class QueueAdmin:
    """The queue and test-message operations of the admin API, over one container."""

    def __init__(self, container: Any) -> None:
        self.container = container

    @property
    def queue(self):
        return self.container.outbound_queue

    @staticmethod
    def _unknown(queue_id: str) -> NotFound:
        return NotFound("id", f"no queued message {queue_id!r}")

    def list(self) -> list[dict[str, Any]]:
        return [entry_json(e) for e in self.queue.entries()]

    def get(self, queue_id: str) -> dict[str, Any]:
        try:
            return entry_json(self.queue.get(queue_id))
        except UnknownQueueId:
            raise self._unknown(queue_id) from None

    async def retry(self, queue_id: str) -> dict[str, Any]:
        """Make every pending recipient of `queue_id` due now; the entry as it is then."""
        try:
            return entry_json(await self.queue.retry(queue_id))
        except UnknownQueueId:
            raise self._unknown(queue_id) from None

    async def retry_all(self) -> list[dict[str, Any]]:
        """Make every queued message due now (one that finished meanwhile is left out)."""
        retried = []
        for entry in self.queue.entries():
            try:
                retried.append(entry_json(await self.queue.retry(entry.queue_id)))
            except UnknownQueueId:
                continue
        return retried

    async def delete(self, queue_id: str, bounce: bool = False) -> None:
        try:
            await self.queue.delete(queue_id, bounce=bounce)
        except UnknownQueueId:
            raise self._unknown(queue_id) from None

    async def _default_sender(self) -> str:
        domains = await self.container.accounts.list_domains()
        return f"postmaster@{domains[0].name if domains else self.container.config.server.hostname}"

    async def _sender(self, value: Any) -> str:
        """The `from` address: one of our domains' (or the host name's); default postmaster@."""
        if value is None:
            return await self._default_sender()
        if not isinstance(value, str):
            raise BadRequest("from", "must be a string")
        resolution = await self.container.router.resolve(value)
        hostname = self.container.config.server.hostname.lower()
        if resolution.kind == INVALID:
            raise Invalid("from", f"{value!r} is not an address: {resolution.reason}")
        if resolution.kind == NOT_OURS and resolution.address.rpartition("@")[2] != hostname:
            raise Invalid("from", f"{resolution.address} is not an address of our domains")
        return resolution.address

    async def send_test(self, to: Any, sender: Any = None) -> dict[str, Any]:
        """Build, sign and send the test message; where it went (local copies, queue id)."""
        if not isinstance(to, str):
            raise BadRequest("to", "must be a string")
        route = await self.container.router.resolve(to)
        if route.kind == INVALID:
            raise Invalid("to", f"{to!r} is not an address: {route.reason}")
        if route.kind not in (LOCAL, NOT_OURS):
            raise Invalid("to", f"{route.address} does not exist here: {route.reason}")
        author = await self._sender(sender)
        hostname = self.container.config.server.hostname
        message = test_message(author, route.address, hostname, datetime.now(timezone.utc))
        message = await sign_as_author(
            self.container.accounts, lambda f, *a: self.container.pools.run("io", f, *a),
            message, author)
        sent = await self.container.mailer.send(author, [route.address], message,
                                                routes={route.address: route})
        return {"to": route.address, "from": author,
                "queue_id": sent.queued.queue_id if sent.queued else None,
                "delivered": [str(d.mailbox) for d in sent.delivered]}
