"""The `outbound` fixture: a container whose outbound queue runs against a loopback DNS server
(`ZONES`: remote.test's MX is 127.0.0.1, and a few odd domains) and a given MX port, for the
tests of sending, the queue and Sieve follow-ups; with `stop` and `until`."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import ensureDeferred

from cloudmail.app import Container
from tests.conftest import test_config
from tests.dnsserver import SERVFAIL
from tests.integration.conftest import dns_table
from tests.integration.test_smtp_inbound import book

ZONES = {
    "remote.test": {"MX": [(10, "mx.remote.test")]},
    "mx.remote.test": {"A": ["127.0.0.1"]},
    "nomx.test": {"A": ["127.0.0.1"]},
    "nullmx.test": {"MX": [(0, "")]},
    "backup.test": {"MX": [(10, "dead.backup.test"), (20, "mx.remote.test")]},
    "dead.backup.test": {"A": ["127.0.0.2"]},
    "broken.test": SERVFAIL,
}


@pytest.fixture
def outbound(tmp_path, dns_server):
    """A function `start(sink_port, **tables)` → a container with the address book of
    test_smtp_inbound and its outbound queue running; everything stopped afterwards."""
    dns = dns_server(ZONES)
    started: list[Container] = []

    async def start(mx_port: int, **tables: dict) -> Container:
        queue = {"mx_port": mx_port, "connect_timeout": 2, "timeout": 5, **tables.pop("queue", {})}
        directory = tmp_path / f"c{len(started)}"
        directory.mkdir()
        container = Container(test_config(directory, dns=dns_table(dns), queue=queue, **tables))
        container.prepare_data_dir()
        started.append(container)
        if len(started) == 1 or tables.get("server") is None:
            await book(container)
        container.outbound_queue.startService()
        return container

    yield start
    for container in started:
        pytest_twisted.blockon(ensureDeferred(stop(container)))


async def stop(container: Container) -> None:
    """Stop what `outbound` started (once: a test may stop a server itself)."""
    if container.pools.stopped:
        return
    if container.outbound_queue.running:
        await container.outbound_queue.stopService()
    container.resolver.close()
    await container.database.close()
    container.pools.stopService()


async def until(condition, timeout: float = 10.0) -> None:
    """Wait (without blocking the reactor) until `condition()` is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await task.deferLater(reactor, 0.05, lambda: None)
