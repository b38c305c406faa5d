"""The login cache: a successful login is remembered briefly (no second argon2 check), a wrong
password never is, and any address-book change (a new password, a removed mailbox) forgets it."""

from __future__ import annotations

import pytest
import pytest_twisted

from cloudmail.directory import cred
from cloudmail.errors import AuthenticationFailed
from tests.integration.test_smtp_inbound import book


def counting(container) -> list[str]:
    """Count the directory checks behind the authenticator (each an argon2 verification)."""
    calls: list[str] = []
    check = container.directory.authenticate

    async def counted(username, password):
        calls.append(username)
        return await check(username, password)
    container.directory.authenticate = counted
    return calls


@pytest_twisted.ensureDeferred
async def test_success_is_remembered_failure_is_not(container):
    """Two logins with the right password cost one directory check; wrong passwords are
    checked (and refused) every time, also right after a success."""
    await book(container)
    calls = counting(container)
    for _ in range(3):
        login = await container.authenticator.authenticate("Alice@example.com", "long enough")
        assert login.mailbox == "alice@example.com"
    assert len(calls) == 1
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            await container.authenticator.authenticate("alice@example.com", "wrong password")
    assert len(calls) == 3


@pytest_twisted.ensureDeferred
async def test_a_changed_password_or_removed_mailbox_counts_at_once(container):
    """A password change or a deleted mailbox (any database change) empties the cache: the old
    password fails at once."""
    await book(container)
    await container.authenticator.authenticate("alice@example.com", "long enough")
    await container.admin_service.update_user("alice", password="another secret")
    with pytest.raises(AuthenticationFailed):
        await container.authenticator.authenticate("alice@example.com", "long enough")
    assert await container.authenticator.authenticate("alice@example.com", "another secret")
    await container.admin_service.delete_mailbox("alice@example.com")
    with pytest.raises(AuthenticationFailed):
        await container.authenticator.authenticate("alice@example.com", "another secret")


@pytest_twisted.ensureDeferred
async def test_entries_expire(container, monkeypatch):
    """After CACHE_SECONDS the directory is asked again."""
    await book(container)
    calls = counting(container)
    now = [1000.0]
    monkeypatch.setattr(container.authenticator, "_clock", lambda: now[0])
    await container.authenticator.authenticate("alice@example.com", "long enough")
    now[0] += cred.CACHE_SECONDS + 1
    await container.authenticator.authenticate("alice@example.com", "long enough")
    assert len(calls) == 2
