"""A shared SIGHUP hook: "re-read your files" for every component that has some.

Unix daemons take SIGHUP as the sign to reload (certificates after a renewal, blocklist files).
Only one Python handler can own a signal, so this module installs one and fans the call out to
every registered callback. The handler itself does nothing but hand the work to the reactor
thread with `reactor.callFromThread`: a signal interrupts whatever the main thread is doing, and
reload code must not run in the middle of reactor work. Each callback's exceptions are logged,
never propagated, so one broken component cannot keep the others from reloading.
"""

from __future__ import annotations

import signal
from typing import Any, Callable

from twisted.logger import Logger

log = Logger()

_callbacks: list[Callable[[], object]] = []
_previous: Any = None
_installed = False


def on_sighup(callback: Callable[[], object]) -> Callable[[], None]:
    """Call `callback()` in the reactor thread on every SIGHUP; returns a function to unregister.

    The first registration installs the signal handler (it must be made from the main thread, as
    `twistd`'s `startService` is); the last unregistration puts the previous handler back. On a
    platform without SIGHUP the callback is kept but never called.
    """
    _install()
    _callbacks.append(callback)

    def unregister() -> None:
        if callback in _callbacks:
            _callbacks.remove(callback)
        if not _callbacks:
            _uninstall()

    return unregister


def run_callbacks() -> None:
    """Call every registered callback now, logging (not raising) their failures.

    This is what a SIGHUP ends up doing in the reactor thread; tests and an admin "reload"
    command may call it directly.
    """
    for callback in list(_callbacks):
        try:
            callback()
        except Exception:
            log.failure("SIGHUP callback {callback!r} failed", callback=callback)


def _handle_sighup(signum: int, frame: object) -> None:
    from twisted.internet import reactor

    log.info("SIGHUP received: reloading")
    reactor.callFromThread(run_callbacks)  # type: ignore[attr-defined]
    if callable(_previous):
        _previous(signum, frame)


def _install() -> None:
    global _installed, _previous
    if _installed or not hasattr(signal, "SIGHUP"):
        return
    _previous = signal.signal(signal.SIGHUP, _handle_sighup)
    _installed = True


def _uninstall() -> None:
    global _installed, _previous
    if not _installed:
        return
    previous = _previous if _previous is not None else signal.SIG_DFL
    signal.signal(signal.SIGHUP, previous)
    _installed, _previous = False, None
