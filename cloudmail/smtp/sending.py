"""What happens to mail a logged-in user submits (the backend of the submission listeners).

- Sender rules: the envelope sender and the `From:` address must be the mailbox the client
  logged in as, one of its aliases, or a `+tag`/`-tag` form of those — unless the address's
  domain has masquerading on (any address of that domain then). Anything else is refused with
  `553 5.7.1` and the reason, at MAIL for the envelope and at the end of DATA for `From:`.
- `Message-ID:` and `Date:` are added when missing (RFC 5322 3.6.1 and 3.6.4; RFC 6409 8), and
  with `hide_client_ip` the `Received:` header leaves out the client's name and address (a
  user's home IP is nobody else's business).
- A message from one of our domains is DKIM-signed (RFC 6376) with the domain's key, in a
  thread, before anything else happens to it.
- Local recipients get it at once through the same routing and delivery as inbound mail, and
  recipients elsewhere go into the outbound queue (`cloudmail.mailer`); the `250` comes only once
  every copy is durable and the queue entry fsynced.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from email.utils import formatdate, getaddresses
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from cloudmail.address import AddressError, normalize_domain, parse_address
from cloudmail.delivery import Envelope as DeliveryEnvelope
from cloudmail.delivery import Rejected
from cloudmail.errors import DirectoryUnavailable, NotFound
from cloudmail.interfaces import IAccounts
from cloudmail.mailer import Mailer
from cloudmail.routing import INVALID, LOCAL, NOT_OURS, Resolution, Router, split_tag
from cloudmail.smtp import dkimsign, replies
from cloudmail.smtp.inbound import DIRECTORY_DOWN, ROUTES, new_queue_id, parse_headers
from cloudmail.smtp.protocol import Envelope, MailParams, Session
from cloudmail.smtp.replies import Reply
from cloudmail.smtp.spool import SpooledMessage

log = Logger()

NOT_YOURS = Reply(553, "5.7.1", "Sender address not owned by the logged-in user")
MAX_HEADER_BYTES = 256 * 1024
#: Header fields covered by our DKIM signatures (RFC 6376 5.4.1's recommendations).
SIGNED_HEADERS = [b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
                  b"in-reply-to", b"references", b"mime-version", b"content-type",
                  b"content-transfer-encoding"]


class SubmissionBackend:
    """`ISmtpBackend` for `submission`/`submissions` (see the module docstring)."""

    def __init__(self, router: Router, mailer: Mailer, accounts: IAccounts,
                 hostname: str, run_in_thread: Callable[..., Deferred[Any]],
                 hide_client_ip: bool = False) -> None:
        self._hide_client = hide_client_ip
        self._router = router
        self._mailer = mailer
        self._accounts = accounts
        self._hostname = hostname
        self._run_in_thread = run_in_thread

    def connection(self, session: Session) -> None:
        return None

    async def sender_refusal(self, login: str, address: str) -> str | None:
        """Why `login` may not send as `address`, or None when it may."""
        local, _, domain_part = address.rpartition("@")
        try:
            base = parse_address(f"{split_tag(local)[0]}@{domain_part}", app=None)
            mailbox = parse_address(login, app=None)
        except AddressError:
            return "not a valid address"
        if base == mailbox:
            return None
        try:
            domain = await self._accounts.get_domain(base.domain)
        except NotFound:
            return f"{base.domain} is not one of our domains"
        if domain.masquerade:
            return None
        if await self._accounts.find_alias(base) == mailbox:
            return None
        return f"<{address}> is neither {login} nor one of its aliases"

    async def mail_from(self, session: Session, address: str, params: MailParams) -> Reply:
        """RFC 6409 6.1: the envelope sender must be the user's own."""
        assert session.authenticated is not None
        if not address:
            return NOT_YOURS.with_text("The null sender is not allowed for submission")
        reason = await self.sender_refusal(session.authenticated, address)
        if reason is not None:
            log.info("refused MAIL <{sender}> from {login} [{client_ip}]: {reason}",
                     sender=address, login=session.authenticated, client_ip=session.peer_ip,
                     reason=reason)
            return NOT_YOURS.with_text(f"Sender address rejected: {reason}")
        return replies.SENDER_OK

    async def rcpt_to(self, session: Session, address: str) -> Reply:
        """Local addresses are routed now; other domains' go to the outbound queue."""
        try:
            resolution = await self._router.resolve(address)
        except DirectoryUnavailable:
            return DIRECTORY_DOWN
        if resolution.kind in (LOCAL, NOT_OURS):
            if session.envelope is not None:
                session.envelope.notes.setdefault(ROUTES, {})[address] = resolution
            return replies.RECIPIENT_OK
        if resolution.kind == INVALID:
            return replies.BAD_RECIPIENT_SYNTAX
        return replies.NO_SUCH_USER

    async def message(self, session: Session, envelope: Envelope,
                      spooled: SpooledMessage) -> Reply:
        """Check `From:`, complete the header, sign, deliver or queue; 250 once every copy is
        durable."""
        queue_id = new_queue_id()
        login = session.authenticated
        assert login is not None
        raw = spooled.read_bytes() if spooled.in_memory else \
            await self._run_in_thread(spooled.read_bytes)
        headers = parse_headers(raw[:MAX_HEADER_BYTES])
        authors = [address for _, address in getaddresses(
            [value.decode("utf-8", "replace") for name, value in headers
             if name.lower() == b"from"])]
        if len(authors) != 1 or not authors[0]:
            return NOT_YOURS.with_text("The message needs exactly one From: address")
        reason = await self.sender_refusal(login, authors[0])
        if reason is not None:
            log.info("refused {queue_id} from {login} [{client_ip}]: From: {reason}",
                     queue_id=queue_id, login=login, client_ip=session.peer_ip, reason=reason)
            return NOT_YOURS.with_text(f"From: address rejected: {reason}")
        message = complete_header(raw, headers, self._hostname)
        message = await sign_as_author(self._accounts, self._run_in_thread, message, authors[0])
        routes: dict[str, Resolution] = envelope.notes.get(ROUTES, {})
        tls = f"{session.tls_version} {session.tls_cipher}" if session.tls else None
        try:
            sent = await self._mailer.send(
                envelope.sender, [r for r in envelope.recipients if r in routes], message,
                envelope=DeliveryEnvelope(
                    queue_id=queue_id, sender=envelope.sender, client_ip=session.peer_ip,
                    client_name="unknown",
                    helo="client" if self._hide_client else session.helo or "unknown",
                    tls=tls, authenticated=True, hide_client=self._hide_client),
                routes=routes, auth_user=login)
        except Rejected as e:  # a local recipient's Sieve script said no (RFC 5429 2.1)
            log.info("rejected {queue_id} by {login}: Sieve reject: {reason}",
                     queue_id=queue_id, login=login, reason=e.reason)
            return replies.sieve_rejected(e.reason)
        queued = sent.queued.queue_id if sent.queued else None
        log.info("submitted {queue_id} by {login} [{client_ip}] from <{sender}> {size} bytes to "
                 "{mailboxes}{remote}", queue_id=queue_id, login=login,
                 client_ip=session.peer_ip, sender=envelope.sender, size=len(message),
                 mailboxes=", ".join(f"{d.mailbox} ({d.folder})" for d in sent.delivered) or "-",
                 remote=(f"; queued as {queued} for "
                         + ", ".join(f"<{r.address}>" for r in sent.queued.recipients)
                         if sent.queued else ""))
        return replace(replies.MESSAGE_ACCEPTED,
                       text=f"Message accepted as {queue_id}")

async def sign_as_author(accounts: IAccounts, run_in_thread: Callable[..., Deferred[Any]],
                         message: bytes, author: str) -> bytes:
    """`message` with a DKIM-Signature per signing key of the author's domain, when that domain
    is ours (else unchanged); the signing runs in `run_in_thread`."""
    try:
        domain = await accounts.get_domain(normalize_domain(author.rpartition("@")[2]))
    except (NotFound, AddressError):
        return message
    if not domain.signing_keys:
        return message
    return await run_in_thread(sign, message, domain.name, domain.signing_keys)


def complete_header(message: bytes, headers: list[tuple[bytes, bytes]], hostname: str) -> bytes:
    """The message with `Date:` and `Message-ID:` added in front when it has none."""
    names = {name.lower() for name, _ in headers}
    added = b""
    if b"date" not in names:
        added += f"Date: {formatdate(time.time(), localtime=False)}\r\n".encode()
    if b"message-id" not in names:
        added += f"Message-ID: <{secrets.token_hex(12)}@{hostname}>\r\n".encode()
    return added + message


def sign(message: bytes, domain: str, keys: list[tuple[str, str]]) -> bytes:
    """`message` with one DKIM-Signature per (selector, private key PEM) over the usual header
    fields (see `cloudmail.smtp.dkimsign`). Each signature covers the message as given, so a
    receiver that does not know Ed25519 still verifies the RSA one. Blocking (CPU)."""
    return b"".join(dkimsign.sign(message, domain, selector, pem, SIGNED_HEADERS)
                    for selector, pem in keys) + message
