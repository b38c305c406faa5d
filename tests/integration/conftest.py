"""Fixtures for the integration tests: a real OpenLDAP slapd on loopback, shared by the session."""

from __future__ import annotations

import os

import pytest

from tests.ldapserver import SLAPADD, SLAPD, SlapdServer


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
