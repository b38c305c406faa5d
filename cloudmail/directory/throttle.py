"""Slowing down password guessing: a growing delay after failed logins, per client IP and per
account, as Dovecot's auth penalty and mox's rate limits do.

Every front end with a login (IMAP, and later submission and ManageSieve) asks `delay` before
it answers a failed attempt and waits that long (with the reactor's callLater, never blocking),
so a client guessing passwords gets ever slower answers: 0 s for the first failure, then 1, 2,
4 … up to `max_delay`. Failures are forgotten `window` seconds after the last one, and a success
clears its account's count (but not the IP's: one right password does not excuse many wrong
ones from the same place).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED = 100_000


@dataclass
class _Failures:
    count: int
    last: float


class LoginThrottle:
    """Counts failed logins by IP and by account name (see the module docstring)."""

    def __init__(self, *, max_delay: float = 15.0, window: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_delay = max_delay
        self.window = window
        self._clock = clock
        self._failures: dict[str, _Failures] = {}

    def _count(self, key: str) -> int:
        entry = self._failures.get(key)
        if entry is None:
            return 0
        if self._clock() - entry.last > self.window:
            del self._failures[key]
            return 0
        return entry.count

    def failed(self, ip: str, account: str) -> float:
        """Record a failed attempt; the seconds to wait before answering it."""
        now = self._clock()
        if len(self._failures) >= MAX_TRACKED:
            self._forget_old(now)
        for key in (f"ip:{ip}", f"account:{account.lower()}"):
            entry = self._failures.setdefault(key, _Failures(0, now))
            entry.count += 1
            entry.last = now
        return self.delay(ip, account)

    def delay(self, ip: str, account: str) -> float:
        """The wait for an attempt failing now: 2^(n-2) s for the n-th failure, capped."""
        worst = max(self._count(f"ip:{ip}"), self._count(f"account:{account.lower()}"))
        if worst <= 1:
            return 0.0
        return min(self.max_delay, 2.0 ** (worst - 2))

    def succeeded(self, account: str) -> None:
        self._failures.pop(f"account:{account.lower()}", None)

    def _forget_old(self, now: float) -> None:
        for key in [k for k, e in self._failures.items() if now - e.last > self.window]:
            del self._failures[key]
        if len(self._failures) >= MAX_TRACKED:
            self._failures.clear()
