"""The outbound queue at work: when each queued message is tried, how many at once, and what
happens after each attempt.

The entries live on disk in `QueueStore` (the truth, fsynced) and in memory here (a copy to
schedule from). A heap of due times says which entry to look at next; at its due time an
entry's pending recipients are grouped by domain, a batch of at most `max_recipients` per
domain becoming one job, i.e. one SMTP transaction (RFC 5321 4.5.3.1.8 asks for at least 100
recipients per transaction to be taken). Jobs wait for a slot: at most `concurrency` in progress
in all and `domain_concurrency` per destination domain, so one slow or large domain cannot take
every connection.

After an attempt each recipient is delivered, failed (5xx, or a 4xx after `lifetime`) or
deferred to `now + retry_delays[attempts - 1]` (never past the expiry, so the last try is made at
it), and the envelope is rewritten before anything else is done. A crash therefore repeats at
most the attempts whose result was not yet recorded: the receiver may get a duplicate, nobody
loses mail (RFC 5321 6.1). When no recipient is pending, failures are reported to the sender in
one DSN (never to the null sender) and the entry is removed. With `delay_warning`, a sender is
told once that a message is late.

Every attempt logs one line per recipient with the queue id: sent, deferred, or failed.
"""

from __future__ import annotations

import copy
import heapq
import itertools
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredLock,
    ensureDeferred,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cloudmail.config import QueueConfig
from cloudmail.queue.dsn import FailedRecipient, build_dsn, should_bounce
from cloudmail.queue.relay import Relay
from cloudmail.queue.store import (
    QueuedMessage,
    QueueStore,
    RecipientState,
    UnknownQueueId,
    expired,
    next_delay,
)
from cloudmail.queue.transport import Outcome, Transport

log = Logger()

#: Seconds before finishing an entry is tried again when its DSN could not be sent.
FINISH_RETRY = 300.0
#: Seconds `stopService` waits for deliveries in progress before leaving them to the next start.
STOP_GRACE = 10.0
#: Bytes read from a message to find its header section for a DSN.
HEADER_READ = 256 * 1024

RelayFor = Callable[[str], Awaitable[Relay | None]]
Notify = Callable[[str, bytes], Awaitable[Any]]
RunIo = Callable[..., "Deferred[Any]"]


class QueueNotReady(Exception):
    """The queue is stopping: nothing new can be queued (the client should try again)."""


@dataclass
class Job:
    """One SMTP transaction to make: some pending recipients of one entry, all at `domain`."""

    entry: QueuedMessage
    domain: str
    recipients: list[RecipientState]


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class OutboundQueue(Service):
    """The outbound queue: `enqueue` to send, and the admin's `entries`/`retry`/`delete`."""

    name = "queue"

    def __init__(self, store: QueueStore, transport: Transport, settings: QueueConfig, *,
                 run_io: RunIo, relay_for: RelayFor, notify: Notify, hostname: str,
                 clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._store = store
        self._transport = transport
        self._settings = settings
        self._run_io = run_io
        self._relay_for = relay_for
        self._notify = notify
        self._hostname = hostname
        self._clock = clock
        self._entries: dict[str, QueuedMessage] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._busy: set[tuple[str, str]] = set()
        self._finishing: set[str] = set()
        self._waiting: dict[str, deque[Job]] = {}
        self._active = 0
        self._per_domain: Counter[str] = Counter()
        self._running: set[Deferred[None]] = set()
        self._locks: dict[str, DeferredLock] = {}
        self._timer: IDelayedCall | None = None
        self._ready = False
        self._ready_waiters: list[Deferred[None]] = []
        self._stopping = False

    # Service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        ensureDeferred(self._load()).addErrback(
            lambda failure: log.failure("cannot load the outbound queue", failure))

    async def _load(self) -> None:
        entries = await self._run_io(self._store.load)
        for entry in entries:
            self._entries[entry.queue_id] = entry
            self._schedule(entry, entry.next_attempt or self._clock.seconds())
        if entries:
            log.info("outbound queue: {count} message(s) waiting", count=len(entries))
        self._ready = True
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._dispatch()

    def stopService(self) -> Deferred[None]:
        """Take no new work; give deliveries in progress `STOP_GRACE` seconds to be recorded.
        Those still running then are left alone, not cancelled: their entries keep the state
        of before the attempt and are tried again at the next start."""
        super().stopService()
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if not self._running:
            self._transport.close()
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        stopped.addCallback(lambda _: self._transport.close())
        grace = self._clock.callLater(STOP_GRACE, stopped.callback, None)

        def all_done(_: Any) -> None:
            if grace.active():
                grace.cancel()
                stopped.callback(None)
        DeferredList(list(self._running), consumeErrors=True).addCallback(all_done)
        return stopped

    # What the rest of the server uses

    async def enqueue(self, sender: str, recipients: list[str], message: bytes | Path, *,
                      prepend: bytes = b"", received_from: str = "",
                      auth_user: str | None = None) -> QueuedMessage:
        """Queue `prepend` + `message` durably for `recipients`; return once it is on disk (then
        answer 250). Raises OSError when it could not be stored, QueueNotReady when stopping."""
        if not self._ready:
            if self._stopping:
                raise QueueNotReady("the outbound queue is not running")
            waiter: Deferred[None] = Deferred()
            self._ready_waiters.append(waiter)
            await waiter
        if self._stopping:
            raise QueueNotReady("the outbound queue is stopping")
        entry = await self._run_io(self._store.enqueue, sender, recipients, message,
                                   prepend=prepend, received_from=received_from,
                                   auth_user=auth_user)
        self._entries[entry.queue_id] = entry
        self._schedule(entry, entry.created)
        self._dispatch()
        return entry

    def entries(self) -> list[QueuedMessage]:
        """Every queued message, oldest first (a snapshot for the admin)."""
        return sorted((copy.deepcopy(e) for e in self._entries.values()),
                      key=lambda e: (e.created, e.queue_id))

    def get(self, queue_id: str) -> QueuedMessage:
        """One queued message; raises UnknownQueueId."""
        entry = self._entries.get(queue_id)
        if entry is None:
            raise UnknownQueueId(queue_id)
        return copy.deepcopy(entry)

    async def retry(self, queue_id: str) -> QueuedMessage:
        """Make every pending recipient of `queue_id` due now."""
        entry = self._entries.get(queue_id)
        if entry is None:
            raise UnknownQueueId(queue_id)
        now = self._clock.seconds()
        for recipient in entry.pending:
            recipient.next_attempt = now
        await self._persist(entry)
        self._schedule(entry, now)
        self._dispatch()
        return copy.deepcopy(entry)

    async def delete(self, queue_id: str, bounce: bool = False) -> None:
        """Remove `queue_id` from the queue; with `bounce`, its pending recipients fail first
        and the sender gets the DSN, as for any other failure."""
        entry = self._entries.get(queue_id)
        if entry is None:
            raise UnknownQueueId(queue_id)
        if bounce:
            now = self._clock.seconds()
            for recipient in entry.pending:
                recipient.status = "failed"
                recipient.last_status = "5.0.0"
                recipient.last_code = None
                recipient.last_error = "deleted from the queue by the administrator"
                recipient.last_attempt = now
                recipient.next_attempt = None
            await self._finish(entry)
            return
        self._forget(entry)
        await self._run_io(self._store.remove, queue_id)
        log.info("deleted {queue_id} from the queue (no bounce)", queue_id=queue_id)

    # Scheduling

    def _schedule(self, entry: QueuedMessage, when: float) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), entry.queue_id))

    def _dispatch(self) -> None:
        """Turn every due recipient into jobs, start what the limits allow, and set the timer
        for the next due time."""
        if self._stopping or not self._ready:
            return
        now = self._clock.seconds()
        while self._heap and self._heap[0][0] <= now:
            _, _, queue_id = heapq.heappop(self._heap)
            entry = self._entries.get(queue_id)
            if entry is not None:
                self._jobs_for(entry, now)
        self._pump()
        self._arm(now)

    def _jobs_for(self, entry: QueuedMessage, now: float) -> None:
        idle = [r for r in entry.pending if (entry.queue_id, r.address) not in self._busy]
        if not entry.pending and not self._is_busy(entry):
            self._start(self._finish(entry))
            return
        due = [r for r in idle if (r.next_attempt or 0.0) <= now]
        later = [r.next_attempt for r in idle if r.next_attempt is not None and r.next_attempt > now]
        if later:
            self._schedule(entry, min(later))
        by_domain: dict[str, list[RecipientState]] = {}
        for recipient in due:
            by_domain.setdefault(_domain(recipient.address), []).append(recipient)
        size = self._settings.max_recipients
        for domain, recipients in by_domain.items():
            for start in range(0, len(recipients), size):
                batch = recipients[start:start + size]
                self._busy.update((entry.queue_id, r.address) for r in batch)
                self._waiting.setdefault(domain, deque()).append(Job(entry, domain, batch))

    def _pump(self) -> None:
        """Start waiting jobs while the total and per-domain limits allow."""
        settings = self._settings
        for domain in list(self._waiting):
            if self._active >= settings.concurrency:
                return
            jobs = self._waiting[domain]
            while (jobs and self._active < settings.concurrency
                   and self._per_domain[domain] < settings.domain_concurrency):
                self._run_job(jobs.popleft())
            if not jobs:
                del self._waiting[domain]

    def _arm(self, now: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._heap:
            self._timer = self._clock.callLater(max(0.0, self._heap[0][0] - now), self._dispatch)

    def _is_busy(self, entry: QueuedMessage) -> bool:
        return any((entry.queue_id, r.address) in self._busy for r in entry.recipients)

    def _start(self, work: Awaitable[None]) -> None:
        running = ensureDeferred(work)
        self._running.add(running)

        def done(result: Any) -> None:
            self._running.discard(running)
            if isinstance(result, Failure):
                log.failure("outbound queue work failed", result)
        running.addBoth(done)

    def _run_job(self, job: Job) -> None:
        self._active += 1
        self._per_domain[job.domain] += 1
        self._start(self._attempt(job))

    # One attempt

    async def _attempt(self, job: Job) -> None:
        entry = job.entry
        try:
            outcomes = await self._send(job)
            self._apply(entry, job.recipients, outcomes)
        finally:
            self._active -= 1
            self._per_domain[job.domain] -= 1
            if not self._per_domain[job.domain]:
                del self._per_domain[job.domain]
            self._busy.difference_update((entry.queue_id, r.address) for r in job.recipients)
        if self._entries.get(entry.queue_id) is entry:
            finished = not entry.pending and not self._is_busy(entry)
            if not finished or any(r.status == "failed" for r in entry.recipients):
                await self._persist(entry)  # when all is delivered, removing is the record
            if finished:
                await self._finish(entry)
            else:
                await self._warn_if_late(entry)
                self._schedule(entry, entry.next_attempt or self._clock.seconds())
        self._dispatch()

    async def _send(self, job: Job) -> list[Outcome]:
        addresses = [r.address for r in job.recipients]
        try:
            relay = await self._relay_for(job.entry.sender)
            return await self._transport.send(job.entry.sender, job.domain, addresses,
                                              self._store.message_path(job.entry.queue_id),
                                              relay)
        except Exception as e:  # noqa: BLE001 -- a bug or local fault defers, never loses
            log.failure("delivery of {queue_id} failed locally", queue_id=job.entry.queue_id)
            return [Outcome(a, 0, "4.3.0", f"local error: {e}") for a in addresses]

    def _apply(self, entry: QueuedMessage, recipients: list[RecipientState],
               outcomes: list[Outcome]) -> None:
        """Record each recipient's outcome in `entry` and log it."""
        now = self._clock.seconds()
        by_address = {o.address: o for o in outcomes}
        for recipient in recipients:
            outcome = by_address.get(recipient.address) or Outcome(
                recipient.address, 0, "4.3.0", "no result for this recipient")
            recipient.attempts += 1
            recipient.last_attempt = now
            recipient.last_code = outcome.code or None
            recipient.last_status = outcome.status
            recipient.last_error = outcome.text
            recipient.remote_mta = outcome.remote_mta
            if outcome.accepted:
                recipient.status, recipient.next_attempt = "delivered", None
                action = "sent"
            elif outcome.permanent or expired(entry.created, now, self._settings.lifetime):
                recipient.status, recipient.next_attempt = "failed", None
                action = "failed" if outcome.permanent else "expired"
            else:
                recipient.status = "deferred"
                recipient.next_attempt = min(
                    now + next_delay(recipient.attempts, self._settings.retry_delays),
                    entry.created + self._settings.lifetime)
                action = "deferred"
            log.info("{action} {queue_id} to <{recipient}> via {via}{tls}: {code} {status} "
                     "{text}; attempt {attempts}, {delay:.1f} s in queue{retry}",
                     action=action, queue_id=entry.queue_id, recipient=recipient.address,
                     via=outcome.via or "-", tls=f" ({outcome.tls})" if outcome.tls else "",
                     code=outcome.code or "-", status=outcome.status, text=outcome.text,
                     attempts=recipient.attempts, delay=now - entry.created,
                     retry=(f", next try in {recipient.next_attempt - now:.0f} s"
                            if recipient.next_attempt is not None else ""))

    async def _persist(self, entry: QueuedMessage) -> None:
        """Write the entry's state, one write at a time per entry (the newest last)."""
        snapshot = copy.deepcopy(entry)
        lock = self._locks.setdefault(entry.queue_id, DeferredLock())
        try:
            await lock.run(self._run_io, self._store.update, snapshot)
        except UnknownQueueId:
            pass
        except OSError:
            log.failure("cannot record the state of {queue_id}", queue_id=entry.queue_id)

    # The end of an entry

    async def _finish(self, entry: QueuedMessage) -> None:
        """Tell the sender about failures (one DSN), then remove the entry."""
        if entry.queue_id in self._finishing:
            return
        self._finishing.add(entry.queue_id)
        try:
            failed = [r for r in entry.recipients if r.status == "failed"]
            if failed and should_bounce(entry.sender):
                try:
                    dsn = await self._run_io(self._dsn, entry, failed, "failed")
                    await self._notify(entry.sender, dsn)
                except Exception:  # noqa: BLE001 -- keep the entry and try again later
                    log.failure("cannot send the bounce for {queue_id}; trying again in "
                                "{seconds:.0f} s", queue_id=entry.queue_id, seconds=FINISH_RETRY)
                    await self._persist(entry)
                    self._schedule(entry, self._clock.seconds() + FINISH_RETRY)
                    return
                log.info("bounced {queue_id} to <{sender}>: {count} recipient(s) failed",
                         queue_id=entry.queue_id, sender=entry.sender, count=len(failed))
            elif failed:
                log.info("dropped the failure report of {queue_id}: the sender is <>",
                         queue_id=entry.queue_id)
            self._forget(entry)
            await self._run_io(self._store.remove, entry.queue_id)
            if failed:
                log.info("removed {queue_id}: {delivered} delivered, {failed} failed",
                         queue_id=entry.queue_id,
                         delivered=sum(r.status == "delivered" for r in entry.recipients),
                         failed=len(failed))
        finally:
            self._finishing.discard(entry.queue_id)

    def _forget(self, entry: QueuedMessage) -> None:
        if self._entries.get(entry.queue_id) is entry:
            del self._entries[entry.queue_id]
        self._locks.pop(entry.queue_id, None)

    async def _warn_if_late(self, entry: QueuedMessage) -> None:
        """Send the one "delayed" notice when `delay_warning` has passed (RFC 3464 `delayed`)."""
        wait = self._settings.delay_warning
        now = self._clock.seconds()
        if not wait or entry.warned or now - entry.created < wait or not should_bounce(
                entry.sender):
            return
        late = [r for r in entry.recipients if r.status == "deferred"]
        if not late:
            return
        entry.warned = True
        await self._persist(entry)
        try:
            dsn = await self._run_io(self._dsn, entry, late, "delayed")
            await self._notify(entry.sender, dsn)
            log.info("warned <{sender}> that {queue_id} is delayed", sender=entry.sender,
                     queue_id=entry.queue_id)
        except Exception:  # noqa: BLE001 -- a lost warning is no lost mail
            log.failure("cannot send the delay warning for {queue_id}", queue_id=entry.queue_id)

    def _dsn(self, entry: QueuedMessage, recipients: list[RecipientState], action: str) -> bytes:
        """The DSN about `recipients` of `entry` (blocking: reads the message's header)."""
        with open(self._store.message_path(entry.queue_id), "rb") as f:
            head = f.read(HEADER_READ)
        now = datetime.now(timezone.utc)
        expiry = datetime.fromtimestamp(entry.created + self._settings.lifetime, timezone.utc)
        failures = [FailedRecipient(
            address=r.address, status=r.last_status or "5.0.0",
            diagnostic=_diagnostic(r), action=action,  # type: ignore[arg-type]
            remote_mta=r.remote_mta,
            last_attempt=(datetime.fromtimestamp(r.last_attempt, timezone.utc)
                          if r.last_attempt else None),
            will_retry_until=expiry if action == "delayed" else None)
            for r in recipients]
        return build_dsn(reporting_mta=self._hostname, original_sender=entry.sender,
                         queue_id=entry.queue_id, failures=failures, original_headers=head,
                         arrival_date=datetime.fromtimestamp(entry.created, timezone.utc),
                         now=now, postmaster=f"postmaster@{self._hostname}")


def _diagnostic(recipient: RecipientState) -> str:
    if recipient.last_code:
        return f"smtp; {recipient.last_code} {recipient.last_status or ''} " \
               f"{recipient.last_error}".replace("  ", " ").rstrip()
    return f"X-cloudmail; {recipient.last_error or 'delivery failed'}"

