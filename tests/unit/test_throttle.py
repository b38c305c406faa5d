"""Failed-login delays (`cloudmail.directory.throttle`): they grow per IP and per account, stop
growing at the cap, fade after the window, and a success clears only the account."""

from __future__ import annotations

from cloudmail.directory.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_grows_per_ip_and_per_account_up_to_the_cap():
    """0 s for the first failure, then 1, 2, 4 … capped; another account from the same IP and
    the same account from another IP are slowed down too."""
    throttle = LoginThrottle(max_delay=8, clock=Clock())
    delays = [throttle.failed("192.0.2.1", "alice@example.com") for _ in range(6)]
    assert delays == [0, 1, 2, 4, 8, 8]
    assert throttle.delay("192.0.2.1", "bob@example.com") == 8
    assert throttle.delay("198.51.100.7", "ALICE@example.com") == 8
    assert throttle.delay("198.51.100.7", "bob@example.com") == 0


def test_failures_fade_and_success_clears_the_account():
    """After the window without failures the count starts again; a success clears the
    account's count but not the IP's."""
    clock = Clock()
    throttle = LoginThrottle(window=60, clock=clock)
    for _ in range(3):
        throttle.failed("192.0.2.1", "alice@example.com")
    throttle.succeeded("alice@example.com")
    assert throttle.delay("198.51.100.7", "alice@example.com") == 0
    assert throttle.delay("192.0.2.1", "bob@example.com") == 2
    clock.now += 61
    assert throttle.delay("192.0.2.1", "bob@example.com") == 0
