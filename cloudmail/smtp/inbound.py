"""The MX policy behind port 25: accept mail for our addresses only, and deliver it durably.

Recipients are decided at RCPT time by the router (550 5.1.1 for unknown addresses in our domains,
554 5.7.1 for everything else: never a relay), and the route found then is the one used after
DATA (as Postfix does: the address book changing between RCPT and the end of DATA is the same
race as it changing just before RCPT). Looping messages are refused, and the message goes through
local delivery; `250` only once every copy is fsynced, `451` if anything failed, so the sender
retries and nothing acknowledged is lost. One log line tells the outcome of every message.

At connection time the client is checked: the local IP blocklist, then DNSBL zones and
forward-confirmed reverse DNS (iprev) at once through the resolver. A listed IP gets `554 5.7.1`
(the protocol then answers 503 to everything but QUIT); a DNS timeout or SERVFAIL never rejects.
The iprev name (or "unknown") goes into the `Received:` header. At MAIL FROM the sender
blocklist gives `550 5.7.1`. SPF, DKIM and DMARC plug in at `message`.

What was found at connection time is kept per session id and dropped when the `Session` object
goes away: the protocol has no end-of-session call to the backend, so a `weakref.finalize` on the
session (which lives exactly as long as its connection's protocol object) removes the entry.
"""

from __future__ import annotations

import random
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from cloudmail.delivery import Envelope as DeliveryEnvelope
from cloudmail.delivery import LocalDelivery, Rejected
from cloudmail.srs import Srs, SrsError
from cloudmail.dns import AsyncResolver
from cloudmail.errors import DirectoryUnavailable
from cloudmail.policy.blocklist import Blocklist, SenderBlocklist
from cloudmail.policy.authresults import build_authentication_results, strip_our_results
from cloudmail.policy.dnsbl import DnsblResult, check_dnsbl
from cloudmail.policy.engine import analyze, gather_message_evidence
from cloudmail.policy.iprev import IprevResult, check_iprev
from cloudmail.routing import INVALID, LOCAL, NOT_OURS, Resolution, Router, is_loop
from cloudmail.smtp import replies
from cloudmail.smtp.protocol import Envelope, MailParams, Session
from cloudmail.smtp.replies import Reply
from cloudmail.smtp.spool import SpooledMessage

if TYPE_CHECKING:
    from cloudmail.mailer import Mailer

log = Logger()
_ids = random.Random()

MAX_HEADER_BYTES = 256 * 1024
LOOP = Reply(554, "5.4.6", "Mail loop detected")
DIRECTORY_DOWN = Reply(451, "4.4.3", "Directory unavailable, try again later")
IP_BLOCKED = Reply(554, "5.7.1", "Your IP is blocked here")
DNSBL_LISTED = Reply(554, "5.7.1", "Service unavailable; client host blocked by a DNSBL")
SENDER_BLOCKED = Reply(550, "5.7.1", "Sender address rejected: blocked here")
DMARC_REJECTED = Reply(550, "5.7.1", "Rejected by the sender domain's DMARC policy")
ROUTES = "routes"
#: Notes key: our SRS addresses in RCPT and the original senders they stand for.
RETURNS = "srs-returns"
#: An SRS address takes bounces only: anything else to it would make us an open relay.
SRS_BOUNCES_ONLY = Reply(550, "5.7.1", "This address only takes delivery status "
                                       "notifications (null sender)")
"""The envelope note holding each accepted recipient's `Resolution`, found at RCPT."""
MAX_REASON = 200
"""Characters of a DNSBL's TXT reason quoted in the reply (it is the zone's text, not ours)."""


@dataclass(frozen=True)
class ClientChecks:
    """What was found out about the client when it connected (None: the check is off)."""

    dnsbl: DnsblResult | None = None
    iprev: IprevResult | None = None

    @property
    def client_name(self) -> str:
        """The name for the `Received:` header: the forward-confirmed PTR name, or "unknown"
        (RFC 5321 4.4 TCP-info; never an unconfirmed PTR name, which the client controls)."""
        if self.iprev is not None and self.iprev.confirmed and self.iprev.name:
            return self.iprev.name
        return "unknown"


def parse_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields at the start of a message (name, raw value), unfolded enough for
    look-ups."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name.strip(), value.strip()))
    return fields


def without_our_results(message: bytes, hostname: str) -> bytes:
    """The message without incoming Authentication-Results fields that claim to be ours
    (RFC 8601 section 5: a forged one could make a client trust a failed check)."""
    head, separator, body = message.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept = strip_our_results(lines, hostname)
    if len(kept) == len(lines):
        return message
    return b"\r\n".join(kept) + separator + body


def new_queue_id() -> str:
    """A short id naming one received message in every log line about it: unique, not secret
    (so not worth a system call for random bytes)."""
    return f"{_ids.getrandbits(48):012X}"


class InboundBackend:
    """`ISmtpBackend` for the `smtp` listener: routing at RCPT, local delivery after DATA."""

    def __init__(self, router: Router, delivery: LocalDelivery, *,
                 resolver: AsyncResolver | None = None, dnsbl_zones: tuple[str, ...] = (),
                 iprev: bool = False, ip_blocklist: Blocklist | None = None,
                 sender_blocklist: SenderBlocklist | None = None,
                 max_received_headers: int = 50, authenticate: bool = False,
                 hostname: str = "localhost",
                 run_in_thread: Callable[..., Deferred[Any]] = deferToThread,
                 srs: Srs | None = None, mailer: Mailer | None = None) -> None:
        if resolver is None and (dnsbl_zones or iprev or authenticate):
            raise ValueError("DNSBL, iprev and SPF/DKIM/DMARC checks need a resolver")
        self._authenticate = authenticate
        self._hostname = hostname
        self._run_in_thread = run_in_thread
        self._router = router
        self._delivery = delivery
        self._resolver = resolver
        self._dnsbl_zones = list(dnsbl_zones)
        self._iprev = iprev
        self._ip_blocklist = ip_blocklist
        self._sender_blocklist = sender_blocklist
        self._max_received = max_received_headers
        self._srs = srs
        self._mailer = mailer
        #: Connection-time findings by session id; entries leave with their session.
        self.checks: dict[str, ClientChecks] = {}

    async def connection(self, session: Session) -> Reply | None:
        """IP blocklist, then DNSBL and iprev together; 554 5.7.1 when the client is listed."""
        ip = session.peer_ip
        if self._ip_blocklist is not None:
            network = self._ip_blocklist.matches(ip)
            if network is not None:
                return self._reject_client(session, IP_BLOCKED.with_text(
                    f"Your IP {ip} is blocked here"), f"in the IP blocklist as {network}")
        dnsbl: DnsblResult | None = None
        iprev: IprevResult | None = None
        lookups = []
        if self._dnsbl_zones:
            lookups.append(defer.ensureDeferred(check_dnsbl(self._resolver, ip, self._dnsbl_zones)))
        if self._iprev:
            lookups.append(defer.ensureDeferred(check_iprev(self._resolver, ip)))
        if lookups:
            try:
                results = await defer.gatherResults(lookups, consumeErrors=True)
            except defer.FirstError as e:  # not an IP address (a UNIX socket in tests)
                log.info("no DNS checks for client {client_ip}: {reason}", client_ip=ip,
                         reason=str(e.subFailure.value))
                results = []
            for result in results:
                if isinstance(result, DnsblResult):
                    dnsbl = result
                else:
                    iprev = result
        self._remember(session, ClientChecks(dnsbl=dnsbl, iprev=iprev))
        if dnsbl is not None:
            for zone in dnsbl.temperrors:
                log.info("DNSBL {zone} could not be asked about [{client_ip}]: {detail}; "
                         "not counted", zone=zone.zone, client_ip=ip, detail=zone.detail)
            if dnsbl.is_listed:
                listed = dnsbl.listed[0]
                text = f"Service unavailable; client host [{ip}] blocked using {listed.zone}"
                if listed.reason:
                    text += f"; {listed.reason[:MAX_REASON]}"
                return self._reject_client(session, DNSBL_LISTED.with_text(text),
                                           f"listed in {listed.zone} ({', '.join(listed.codes)})")
        return None

    def client_checks(self, session: Session) -> ClientChecks:
        """What `connection` found out about this session's client (empty if nothing)."""
        return self.checks.get(session.id, ClientChecks())

    def _remember(self, session: Session, checks: ClientChecks) -> None:
        self.checks[session.id] = checks
        weakref.finalize(session, self.checks.pop, session.id, None)

    @staticmethod
    def _reject_client(session: Session, reply: Reply, reason: str) -> Reply:
        log.info("rejected client [{client_ip}] at connect: {code} {enhanced} {reason}",
                 client_ip=session.peer_ip, code=reply.code, enhanced=reply.enhanced,
                 reason=reason)
        return reply

    def mail_from(self, session: Session, address: str, params: MailParams) -> Reply:
        """The sender blocklist: a listed address or domain gets 550 5.7.1."""
        if self._sender_blocklist is not None:
            entry = self._sender_blocklist.matches(address)
            if entry is not None:
                log.info("rejected MAIL <{sender}> from [{client_ip}]: 550 5.7.1 sender "
                         "blocklist entry {entry}", sender=address, client_ip=session.peer_ip,
                         entry=entry)
                return SENDER_BLOCKED.with_text(f"Sender address <{address}> rejected: "
                                                "blocked here")
        return replies.SENDER_OK

    async def rcpt_to(self, session: Session, address: str) -> Reply:
        """Accept only addresses that route to local mailboxes (RFC 5321 3.6.1: no relaying),
        and bounces to our SRS addresses; the route is kept in the transaction's notes."""
        if self._srs is not None and self._mailer is not None:
            original = self._srs_original(address)
            if original is not None:
                if session.envelope is None or session.envelope.sender:
                    return SRS_BOUNCES_ONLY
                session.envelope.notes.setdefault(RETURNS, {})[address] = original
                return replies.RECIPIENT_OK
        try:
            resolution = await self._router.resolve(address)
        except DirectoryUnavailable:
            return DIRECTORY_DOWN
        if resolution.kind == LOCAL:
            if session.envelope is not None:
                session.envelope.notes.setdefault(ROUTES, {})[address] = resolution
            return replies.RECIPIENT_OK
        log.info("rejected RCPT <{address}> from [{client_ip}]: {reason}", address=address,
                 client_ip=session.peer_ip, reason=resolution.reason)
        if resolution.kind == NOT_OURS:
            return replies.RELAY_DENIED
        if resolution.kind == INVALID:
            return replies.BAD_RECIPIENT_SYNTAX
        return replies.NO_SUCH_USER

    def _srs_original(self, address: str) -> str | None:
        """The original sender behind one of our valid SRS addresses (a bounce of a message a
        Sieve redirect forwarded), else None."""
        assert self._srs is not None
        if address.rpartition("@")[2].lower() != self._srs.domain:
            return None
        try:
            return self._srs.reverse(address)
        except SrsError:
            return None

    async def _routes(self, envelope: Envelope) -> list[Resolution]:
        """The local route of each distinct recipient: the one found at RCPT, else found now."""
        known: dict[str, Resolution] = envelope.notes.get(ROUTES, {})
        routes = []
        for address in dict.fromkeys(envelope.recipients):
            resolution = known.get(address) or await self._router.resolve(address)
            if resolution.kind == LOCAL:
                routes.append(resolution)
        return routes

    async def message(self, session: Session, envelope: Envelope,
                      spooled: SpooledMessage) -> Reply:
        """Deliver to every routed mailbox; 250 only when all copies are durable."""
        queue_id = new_queue_id()
        started = time.monotonic()
        if spooled.in_memory:
            head = spooled.head(MAX_HEADER_BYTES)
        else:
            head = await self._run_in_thread(spooled.head, MAX_HEADER_BYTES)
        headers = parse_headers(head)
        try:
            local = await self._routes(envelope)
        except DirectoryUnavailable:
            return self._refuse(queue_id, session, envelope, DIRECTORY_DOWN, "directory down")
        returns: dict[str, str] = envelope.notes.get(RETURNS, {})
        if not local and not returns:
            return self._refuse(queue_id, session, envelope, replies.NO_VALID_RECIPIENTS,
                                "no recipient routes anywhere any more")
        for resolution in local:
            for mailbox in resolution.mailboxes:
                reason = is_loop(headers, mailbox, self._max_received)
                if reason:
                    return self._refuse(queue_id, session, envelope, LOOP, reason)
        junk, results, checks = False, b"", ""
        content: bytes | Path | None = spooled.data if spooled.in_memory else spooled.path
        if self._authenticate:
            raw = (spooled.read_bytes() if spooled.in_memory
                   else await self._run_in_thread(spooled.read_bytes))
            evidence = await gather_message_evidence(
                self._resolver, session.peer_ip, session.helo or "", envelope.sender, headers,
                raw, self._run_in_thread)
            checks = " " + evidence.summary()
            verdict = analyze(evidence)
            if verdict.action == "reject":
                return self._refuse(queue_id, session, envelope, DMARC_REJECTED.with_text(
                    f"Rejected: {verdict.reason}"), verdict.reason + checks)
            junk = verdict.action == "junk"
            results = build_authentication_results(
                self._hostname, iprev=self.client_checks(session).iprev, spf=evidence.spf,
                dkim=evidence.dkim, dmarc=evidence.dmarc)
            content = without_our_results(raw, self._hostname)
        assert content is not None
        tls = f"{session.tls_version} {session.tls_cipher}" if session.tls else None
        client_name = self.client_checks(session).client_name
        delivery_envelope = DeliveryEnvelope(queue_id=queue_id, sender=envelope.sender,
                                             client_ip=session.peer_ip,
                                             client_name=client_name,
                                             helo=session.helo or session.peer_ip,
                                             protocol="ESMTP" if session.esmtp else "SMTP",
                                             tls=tls)
        try:
            delivered = await self._delivery.deliver(
                delivery_envelope, local, content, headers=results, junk=junk) if local else []
            if returns:
                assert self._mailer is not None
                sent = await self._mailer.send("", list(dict.fromkeys(returns.values())),
                                               content, envelope=delivery_envelope)
                log.info("returned bounce {queue_id} to {senders} (queued as {queued})",
                         queue_id=queue_id, senders=", ".join(returns.values()),
                         queued=sent.queued.queue_id if sent.queued else "-")
        except Rejected as e:  # the recipient's Sieve script (RFC 5429 2.1: at SMTP time)
            return self._refuse(queue_id, session, envelope,
                                replies.sieve_rejected(e.reason),
                                f"Sieve reject: {e.reason}")
        except Exception as e:  # noqa: BLE001 -- any failure to store means "try again"
            log.failure("delivery of {queue_id} failed; answered 451", queue_id=queue_id)
            return self._refuse(queue_id, session, envelope, replies.LOCAL_ERROR, str(e))
        log.info("delivered {queue_id} from <{sender}> [{client_ip}] {size} bytes to "
                 "{mailboxes}{checks} in {ms:.1f} ms", queue_id=queue_id,
                 sender=envelope.sender, client_ip=session.peer_ip, size=spooled.size,
                 recipients=envelope.recipients,
                 mailboxes=", ".join(f"{d.mailbox} ({d.folder})" for d in delivered),
                 checks=checks, ms=(time.monotonic() - started) * 1000)
        return replace(replies.MESSAGE_ACCEPTED, text=f"Message accepted as {queue_id}")

    @staticmethod
    def _refuse(queue_id: str, session: Session, envelope: Envelope, reply: Reply,
                reason: str) -> Reply:
        log.info("rejected {queue_id} from <{sender}> [{client_ip}] for {recipients}: "
                 "{code} {reason}", queue_id=queue_id, sender=envelope.sender,
                 client_ip=session.peer_ip, recipients=", ".join(envelope.recipients),
                 code=reply.code, reason=reason)
        return reply
