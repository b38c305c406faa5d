"""Fixtures for the integration tests: a real slapd and real DNS servers on loopback, and MX
listeners over test containers."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import reactor

from cloudmail.app import Container
from tests.conftest import test_config
from tests.dnsserver import DnsServer
from tests.ldapserver import SLAPADD, SLAPD, SlapdServer
from tests.smtpsink import postfix_sink, smtp_sink  # noqa: F401  (loopback SMTP sinks)


@pytest.fixture(scope="session")
def slapd():
    """One slapd with the test directory (tests/ldapserver.py) for the whole session."""
    for program in (SLAPD, SLAPADD):
        if not os.access(program, os.X_OK):
            pytest.skip(f"{program} is missing: install the Debian packages slapd and ldap-utils "
                        "to run the LDAP integration tests")
    server = SlapdServer().start()
    yield server
    server.stop()


@pytest.fixture
def start_mx(tmp_path):
    """A function building a container from `test_config(tmp_path, **tables)` and an MX listener
    on a loopback port for it; returns (container, port). Everything is stopped afterwards."""
    started: list[tuple[Container, object]] = []

    def start(**tables: dict) -> tuple[Container, int]:
        container = Container(test_config(tmp_path, **tables))
        container.prepare_data_dir()
        port = reactor.listenTCP(0, container.smtp_factory(), interface="127.0.0.1")
        started.append((container, port))
        return container, port.getHost().port

    yield start
    for container, port in started:
        pytest_twisted.blockon(port.stopListening())
        if "resolver" in container.__dict__:
            container.resolver.close()
        pytest_twisted.blockon(container.database.close())
        container.pools.stopService()


@pytest.fixture
def dns_server():
    """A function starting a DnsServer over the given zones; stopped afterwards."""
    servers: list[DnsServer] = []

    def start(zones: dict) -> DnsServer:
        server = DnsServer(zones)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        pytest_twisted.blockon(server.stop())


def dns_table(server: DnsServer, timeout: float = 0.5) -> dict:
    return {"nameservers": [f"127.0.0.1:{server.port}"], "timeout": timeout}


from tests.outbound import outbound  # noqa: E402, F401  (a container with its queue running)
