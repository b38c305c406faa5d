"""Named, bounded thread pools for the blocking work the reactor must never do.

`db` (one thread: SQLite writes are serial), `auth` (password hashing, key generation) and `ldap`
(ldap3 is blocking) each have their own pool, so a slow LDAP server cannot hold up a password
hash or a store write. The pools start and stop with the service.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.application.service import Service
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class ThreadPools(Service):
    """A set of named thread pools, started on first use and stopped with the service."""

    def __init__(self, sizes: dict[str, int], reactor: Any = None) -> None:
        self._reactor = reactor or _reactor
        self._sizes = dict(sizes)
        self._pools: dict[str, ThreadPool] = {}
        self._stopped = False

    def _pool(self, name: str) -> ThreadPool:
        pool = self._pools.get(name)
        if pool is None:
            if self._stopped:
                raise RuntimeError(f"the {name} thread pool has been stopped")
            size = self._sizes[name]
            pool = ThreadPool(minthreads=0, maxthreads=size, name=f"cloudmail-{name}")
            pool.start()
            self._pools[name] = pool
        return pool

    def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run `fn(*args, **kwargs)` in the pool called `name`; fire with its result (or fail
        once the pools have been stopped: no thread may outlive the service)."""
        try:
            pool = self._pool(name)
        except RuntimeError:
            return fail()
        return deferToThreadPool(self._reactor, pool, fn, *args, **kwargs)

    @property
    def stopped(self) -> bool:
        """True once the pools have been stopped (no more work is taken)."""
        return self._stopped

    def stopService(self) -> None:
        super().stopService()
        self._stopped = True
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.stop()
