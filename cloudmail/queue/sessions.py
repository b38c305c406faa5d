"""Open SMTP sessions kept between deliveries to the same server, as Postfix's connection
cache does: a queue of messages to one destination then pays for the TCP connection, the
greeting, EHLO, STARTTLS and AUTH once, not once per message.

A session is kept `IDLE_SECONDS` after its last transaction (Postfix's
`smtp_connection_cache_time_limit`, 2 s) and carries at most `MAX_TRANSACTIONS` messages; it
is then ended with QUIT. A kept session the server has closed meanwhile is simply not used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from cloudmail.smtp.client import DeliveryResult, SmtpClientError, SmtpSession

IDLE_SECONDS = 2.0
MAX_TRANSACTIONS = 100


class SessionCache:
    """Idle sessions by destination key (address, port, TLS mode, login)."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._idle: dict[Hashable, list[tuple[SmtpSession, IDelayedCall]]] = {}

    async def send(self, key: Hashable, opener: Callable[[], Awaitable[SmtpSession]],
                   sender: str, recipients: list[str], message: Path) -> DeliveryResult:
        """Send over a kept session for `key`, or a new one from `opener()`. A kept session
        that breaks before the message was sent is replaced by a new one at once (nothing was
        delivered through it); any other error is raised."""
        session = self._take(key)
        if session is not None:
            try:
                return await self._send(key, session, sender, recipients, message)
            except SmtpClientError as e:
                if e.code is not None or session.data_sent:
                    raise
        return await self._send(key, await opener(), sender, recipients, message)

    async def _send(self, key: Hashable, session: SmtpSession, sender: str,
                    recipients: list[str], message: Path) -> DeliveryResult:
        try:
            result = await session.send(sender, recipients, message)
        except SmtpClientError as e:
            if e.code is None:
                session.connection.abandon()
            else:
                self._keep(key, session)
            raise
        except BaseException:
            session.connection.abandon()
            raise
        self._keep(key, session)
        return result

    def _take(self, key: Hashable) -> SmtpSession | None:
        sessions = self._idle.get(key)
        while sessions:
            session, timer = sessions.pop()
            if timer.active():
                timer.cancel()
            if session.usable:
                return session
        self._idle.pop(key, None)
        return None

    def _keep(self, key: Hashable, session: SmtpSession) -> None:
        if not session.usable or session.transactions >= MAX_TRANSACTIONS:
            defer.ensureDeferred(session.quit())
            return
        timer = self._clock.callLater(IDLE_SECONDS, self._expire, key, session)
        self._idle.setdefault(key, []).append((session, timer))

    def _expire(self, key: Hashable, session: SmtpSession) -> None:
        sessions = self._idle.get(key, [])
        self._idle[key] = [(s, t) for s, t in sessions if s is not session]
        if not self._idle[key]:
            del self._idle[key]
        defer.ensureDeferred(session.quit())

    def close(self) -> None:
        """End every kept session (at shutdown)."""
        idle, self._idle = self._idle, {}
        for sessions in idle.values():
            for session, timer in sessions:
                if timer.active():
                    timer.cancel()
                defer.ensureDeferred(session.quit())
