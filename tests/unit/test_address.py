"""Addresses, domains and names: the naming rules, and no input that makes them crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudmail.address import (Address, AddressError, normalize_domain, parse_address,
                               validate_local, validate_username)


@pytest.mark.parametrize("text, expected", [
    ("Example.COM", "example.com"),
    ("example.com.", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
    ("a-b.example", "a-b.example"),
])
def test_domains_have_one_stored_form(text, expected):
    """Domains are lower-case A-labels without a trailing dot."""
    assert normalize_domain(text) == expected


@pytest.mark.parametrize("text", ["", ".", "a..b", "-a.com", "a-.com", "a b.com", "a_b.com",
                                  "x" * 64 + ".com", "example.123", ("a" * 60 + ".") * 5 + "com",
                                  "exa@mple.com"])
def test_bad_domains_are_refused(text):
    """Empty labels, bad hyphens, spaces, over-long labels and names, numeric TLDs: refused."""
    with pytest.raises(AddressError):
        normalize_domain(text)


def test_app_names_only_for_apps():
    """`.app` names are for app mailboxes only, and app mailboxes must have one."""
    assert validate_local("Blog.App", app=True) == "blog.app"
    with pytest.raises(AddressError, match="reserved for apps"):
        validate_local("blog.app")
    with pytest.raises(AddressError, match="must end in"):
        validate_local("blog", app=True)
    assert parse_address("blog.app@example.com", app=None).is_app
    assert not parse_address("blog@example.com", app=None).is_app


def test_addresses_print_as_they_are_stored():
    """An Address is `local@domain`, lower-case, with an A-label domain."""
    assert str(parse_address("Alice.B@Bücher.Example")) == "alice.b@xn--bcher-kva.example"
    assert parse_address("a@example.com") == Address("a", "example.com")


@pytest.mark.parametrize("text", ["alice", "a@b@c.com", "@example.com", "alice@", "a+b@example.com",
                                  "a-b@example.com", "\"a\"@example.com", "a%b@example.com"])
def test_bad_addresses_are_refused(text):
    """No @, two @, empty parts, sub-address characters, quoting and the percent hack: refused."""
    with pytest.raises(AddressError):
        parse_address(text)


def test_usernames():
    """Usernames allow LDAP-style `-` and `_` but stay short plain ASCII."""
    assert validate_username("John_Doe-2") == "john_doe-2"
    for bad in ["", "-x", "a b", "x" * 65, "é", "a@b"]:
        with pytest.raises(AddressError):
            validate_username(bad)


@given(st.text(max_size=300))
def test_parsing_never_fails_in_another_way(text):
    """Any text either parses into a valid address or raises AddressError: nothing else."""
    try:
        address = parse_address(text, app=None)
    except AddressError:
        return
    assert str(address) == str(parse_address(str(address), app=None))
    assert len(address.local) <= 200


@given(st.text(max_size=300))
def test_domain_normalising_never_fails_in_another_way(text):
    """Any text either becomes a stored domain (idempotently) or raises AddressError."""
    try:
        name = normalize_domain(text)
    except AddressError:
        return
    assert normalize_domain(name) == name
    assert name == name.lower() and name.isascii()
