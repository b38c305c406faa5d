"""The address book's rules and logging in, over a real SQLite store and the built-in directory."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import threading

import bcrypt
import pytest
import pytest_twisted

from cloudmail.app import Container
from cloudmail.database import SchemaTooNew, migrate
from cloudmail.directory import passwords
from cloudmail.errors import AuthenticationFailed, Conflict, Invalid, NotFound
from tests.conftest import test_config


async def setup_alice(c: Container) -> None:
    s = c.admin_service
    await s.add_domain("example.com")
    await s.add_domain("example.org")
    await s.add_user("alice", password="correct horse")
    await s.add_user("bob", password="battery staple")
    await s.add_mailbox("alice@example.com", owner="alice")
    await s.add_mailbox("Alice@Example.ORG", owner="alice")


@pytest_twisted.ensureDeferred
async def test_store_runs_off_the_reactor_thread(container):
    """Every SQL statement runs in the db thread, never in the reactor's."""
    seen = await container.database.transact(lambda conn: threading.current_thread().name)
    assert seen != threading.current_thread().name
    assert "cloudmail-db" in seen


@pytest_twisted.ensureDeferred
async def test_login_with_any_mailbox_address_of_the_user(container):
    """alice@example.com and alice@example.org are both Alice, with her one password."""
    await setup_alice(container)
    auth = container.authenticator
    assert (await auth.authenticate("alice@example.com", "correct horse")).username == "alice"
    login = await auth.authenticate("ALICE@example.ORG", "correct horse")
    assert login.mailbox == "alice@example.org" and login.username == "alice"
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("alice@example.com", "battery staple")


@pytest_twisted.ensureDeferred
async def test_alias_group_unknown_and_empty_cannot_log_in(container):
    """An alias, a group mailbox, an unknown address, a bare username and "" are all refused."""
    await setup_alice(container)
    s = container.admin_service
    await s.add_alias("al@example.com", "alice@example.com")
    await s.add_group("team@example.com", members=["alice", "bob"])
    auth = container.authenticator
    for login, password in [("al@example.com", "correct horse"), ("team@example.com", "correct horse"),
                            ("carol@example.com", "correct horse"), ("alice", "correct horse"),
                            ("alice@example.com", ""), ("not an address", "x")]:
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(login, password)


@pytest_twisted.ensureDeferred
async def test_app_mailbox_logs_in_with_its_own_password(container):
    """An app mailbox gets a generated password at creation, and only that logs it in."""
    await container.admin_service.add_domain("example.com")
    created = await container.admin_service.add_mailbox("blog.app@example.com", owner_type="app")
    assert len(created["password"]) >= 24
    login = await container.authenticator.authenticate("blog.app@example.com", created["password"])
    assert login.username is None and login.mailbox == "blog.app@example.com"
    with pytest.raises(AuthenticationFailed):
        await container.authenticator.authenticate("blog.app@example.com", "guess")
    reset = await container.admin_service.update_mailbox("blog.app@example.com",
                                                         {"reset_app_password": True})
    with pytest.raises(AuthenticationFailed):
        await container.authenticator.authenticate("blog.app@example.com", created["password"])
    assert await container.authenticator.authenticate("blog.app@example.com", reset["password"])


@pytest_twisted.ensureDeferred
async def test_imported_hashes_work_and_are_upgraded_to_argon2(container):
    """bcrypt and {SSHA} hashes from another server log in, then are replaced by argon2id."""
    s = container.admin_service
    await s.add_domain("example.com")
    salt = b"12345678"
    ssha = "{SSHA}" + base64.b64encode(hashlib.sha1(b"old secret" + salt).digest() + salt).decode()
    await s.add_user("carol", password_hash=bcrypt.hashpw(b"bcrypt secret", bcrypt.gensalt(4)).decode())
    await s.add_user("dave", password_hash=ssha)
    await s.add_mailbox("carol@example.com", owner="carol")
    await s.add_mailbox("dave@example.com", owner="dave")
    assert await container.authenticator.authenticate("carol@example.com", "bcrypt secret")
    assert await container.authenticator.authenticate("dave@example.com", "old secret")
    stored = await container.database.transact(
        lambda c: [r[0] for r in c.execute("SELECT password_hash FROM users ORDER BY username")])
    assert all(h.startswith("$argon2id$") for h in stored)
    assert await container.authenticator.authenticate("dave@example.com", "old secret")


@pytest_twisted.ensureDeferred
async def test_unsupported_hash_and_short_password_are_refused(container):
    """A hash we cannot check, or a password under 8 characters, is a 422 naming the field."""
    with pytest.raises(Invalid) as info:
        await container.admin_service.add_user("eve", password_hash="$1$md5crypt$xx")
    assert info.value.field == "password_hash"
    with pytest.raises(Invalid) as info:
        await container.admin_service.add_user("eve", password="short")
    assert info.value.field == "password"


@pytest.mark.parametrize("name", ["no-reply", "a+b", "x" * 201, "blog.app", "a..b", ".a", "é", ""])
@pytest_twisted.ensureDeferred
async def test_naming_rules_for_mailboxes(container, name):
    """Only letters, digits and dots, at most 200 characters, no + or -, .app for apps only."""
    await container.admin_service.add_domain("example.com")
    await container.admin_service.add_user("alice", password="correct horse")
    with pytest.raises(Invalid) as info:
        await container.admin_service.add_mailbox(f"{name}@example.com", owner="alice")
    assert info.value.field == "address"


@pytest_twisted.ensureDeferred
async def test_two_hundred_characters_are_allowed(container):
    """A 200-character local part is the longest accepted, stored lower-case."""
    await container.admin_service.add_domain("example.com")
    await container.admin_service.add_user("alice", password="correct horse")
    created = await container.admin_service.add_mailbox("A" * 200 + "@example.com", owner="alice")
    assert created["address"] == "a" * 200 + "@example.com"


@pytest_twisted.ensureDeferred
async def test_aliases_cannot_clash(container):
    """An alias may not take a mailbox's or alias's address, nor a group's name."""
    await setup_alice(container)
    s = container.admin_service
    await s.add_group("team", members=["bob"])
    await s.add_alias("al@example.com", "alice@example.com")
    for addr in ["alice@example.org", "al@example.com", "team@example.com"]:
        with pytest.raises(Conflict) as info:
            await s.add_alias(addr, "alice@example.com")
        assert info.value.field == "address"
    with pytest.raises(Conflict):
        await s.add_mailbox("al@example.com", owner="bob")
    with pytest.raises(NotFound) as info:
        await s.add_alias("x@example.com", "nobody@example.com")
    assert info.value.field == "mailbox"


@pytest_twisted.ensureDeferred
async def test_deleting_a_mailbox_takes_its_aliases_and_catchall_entries(container):
    """Aliases and catch-all entries of a deleted mailbox go with it; the domain stays."""
    await setup_alice(container)
    s = container.admin_service
    await s.add_alias("al@example.com", "alice@example.com")
    await s.set_catchall("example.com", ["alice@example.com", "alice@example.org"])
    await s.delete_mailbox("alice@example.com")
    assert await s.list_aliases() == []
    assert (await s.get_catchall("example.com"))["mailboxes"] == ["alice@example.org"]


@pytest_twisted.ensureDeferred
async def test_owners_and_domains_in_use_cannot_be_deleted(container):
    """A domain with mailboxes, a user or group owning mailboxes: 409, and nothing changes."""
    await setup_alice(container)
    s = container.admin_service
    await s.add_group("team@example.com", members=["bob"])
    for call, field in [(s.delete_domain("example.com"), "name"), (s.delete_user("alice"), "username"),
                        (s.delete_group("team"), "name")]:
        with pytest.raises(Conflict) as info:
            await call
        assert info.value.field == field
    assert len(await s.list_mailboxes()) == 3


@pytest_twisted.ensureDeferred
async def test_group_address_makes_group_and_mailbox(container):
    """`group add team@example.com` makes the group and its mailbox; members must be users."""
    await setup_alice(container)
    s = container.admin_service
    group = await s.add_group("team@example.com", members=["alice", "bob"])
    assert group == {"name": "team", "members": ["alice", "bob"], "mailboxes": ["team@example.com"]}
    mailbox = await s.get_mailbox("team@example.com")
    assert mailbox["owner_type"] == "group" and mailbox["owner"] == "team"
    with pytest.raises(NotFound) as info:
        await s.add_group("other", members=["nobody"])
    assert info.value.field == "members"
    assert [g["name"] for g in await s.list_groups()] == ["team"]


@pytest_twisted.ensureDeferred
async def test_domain_names_are_stored_in_one_form(container):
    """Domains are lower-case, IDNs as A-labels, and the same domain cannot be added twice."""
    s = container.admin_service
    created = await s.add_domain("Bücher.Example")
    assert created["name"] == "xn--bcher-kva.example"
    assert created["dkim"]["record"].startswith("v=DKIM1; k=rsa; p=")
    with pytest.raises(Conflict):
        await s.add_domain("xn--bcher-kva.example")
    for bad in ["exa mple.com", "-x.com", "a" * 64 + ".com", "example.123", ""]:
        with pytest.raises(Invalid):
            await s.add_domain(bad)


def test_migrations_are_applied_once_and_a_newer_schema_is_refused(tmp_path):
    """Reopening keeps the schema; a file from a newer cloudmail is refused, not damaged."""
    conn = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)
    migrate(conn)
    migrate(conn)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.execute(f"PRAGMA user_version = {version + 1}")
    with pytest.raises(SchemaTooNew):
        migrate(conn)


@pytest_twisted.ensureDeferred
async def test_database_files_are_for_the_owner_only(container):
    """The database holds password hashes, DKIM keys and relay passwords: mode 0600, its WAL
    files too, and a file made with a looser mode is tightened when opened."""
    import os
    import stat
    await container.admin_service.add_domain("example.com")
    path = container.config.database.path
    for name in (path, path.with_name(path.name + "-wal")):
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600, name
    other = path.with_name("loose.sqlite")
    other.touch(mode=0o644)
    from cloudmail.database import Database
    database = Database(other, container.pools)
    database.open()
    await database.close()
    assert stat.S_IMODE(os.stat(other).st_mode) == 0o600


def test_dummy_check_takes_as_long_as_a_real_one():
    """burn_time does a real argon2 verification, so unknown users cost the same as known ones."""
    assert passwords.verify_password(passwords.hash_password("x" * 8), "x" * 8)
    passwords.burn_time("anything")


@pytest_twisted.ensureDeferred
async def test_a_second_container_sees_the_same_store(tmp_path):
    """The CLI and the server share one SQLite file: a change by one is seen by the other."""
    config = test_config(tmp_path)
    a, b = Container(config), Container(config)
    a.prepare_data_dir()
    b.prepare_data_dir()
    try:
        await a.admin_service.add_domain("example.com")
        assert [d["name"] for d in await b.admin_service.list_domains()] == ["example.com"]
    finally:
        for c in (a, b):
            await c.database.close()
            c.pools.stopService()


@pytest_twisted.ensureDeferred
async def test_import_keeps_the_alias_rules(container):
    """An imported alias may not be a group's name either; the whole import is refused."""
    from cloudmail.admin.service import ImportRow
    s = container.admin_service
    await s.add_domain("example.com")
    await s.add_user("bob", password="battery staple")
    await s.add_group("team", members=["bob"])
    rows = [ImportRow(2, "carol", "long enough", None, "", ("carol@example.com",),
                      ("team@example.com",))]
    with pytest.raises(Conflict, match="line 2: 'team' is the name of a group"):
        await s.import_users(rows)
    assert [u["username"] for u in await s.list_users()] == ["bob"]
