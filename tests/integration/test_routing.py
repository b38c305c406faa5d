"""Routing at RCPT time over a real SQLite store and the built-in directory."""

from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from cloudmail.accounts import store
from cloudmail.accounts.store import Mailbox
from cloudmail.address import Address
from cloudmail.app import Container
from cloudmail.errors import DirectoryUnavailable, NotFound
from cloudmail.routing import Router, is_loop

# A ready {SSHA} hash, so that setting up users costs no password hashing.
SALT = b"saltsalt"
HASH = "{SSHA}" + base64.b64encode(hashlib.sha1(b"password" + SALT).digest() + SALT).decode()
IDN = "xn--bcher-kva.example"


def a(text: str) -> Address:
    local, domain = text.split("@")
    return Address(local, domain)


async def setup_book(c: Container) -> Router:
    """Four domains; alice (two mailboxes), bob (.org and .net), carol (none), dave; a group
    `team` with mailboxes in .com and .org; aliases, one of them to the group; an app mailbox."""
    for name in ["example.com", "example.org", "example.net", IDN]:
        await c.database.transact(store.insert_domain, name, None)
    s = c.admin_service
    for user in ["alice", "bob", "carol", "dave"]:
        await s.add_user(user, password_hash=HASH)
    for address, owner in [("alice@example.com", "alice"), ("alice@example.org", "alice"),
                           ("bob@example.org", "bob"), ("bobby@example.net", "bob"),
                           ("dave@example.com", "dave"), ("anna@Bücher.example", "alice")]:
        await s.add_mailbox(address, owner=owner)
    await s.add_group("team@example.com", members=["alice", "bob", "carol"])
    await s.add_mailbox("team@example.org", owner="team", owner_type="group")
    await s.add_group("ghosts@example.com", members=["carol"])
    await s.add_mailbox("blog.app@example.com", owner_type="app")
    await s.add_alias("al@example.com", "alice@example.com")
    await s.add_alias("crew@example.net", "team@example.com")
    return Router(c.accounts, c.directory)


@pytest_twisted.ensureDeferred
async def test_a_mailbox_gets_its_own_mail(container):
    """A user's mailbox resolves to itself, with no tag, the address normalised."""
    router = await setup_book(container)
    r = await router.resolve("alice@example.com")
    assert r.kind == "local" and r.is_local
    assert r.mailboxes == (a("alice@example.com"),)
    assert r.tag is None and r.address == "alice@example.com" and r.reason == "mailbox"


@pytest_twisted.ensureDeferred
async def test_matching_ignores_case_and_angle_brackets(container):
    """Local part and domain match in any case; `<...>` around the path is allowed."""
    router = await setup_book(container)
    for text in ["ALICE@EXAMPLE.COM", "<Alice@Example.Com>", " alice@example.com "]:
        r = await router.resolve(text)
        assert r.mailboxes == (a("alice@example.com"),) and r.address == "alice@example.com"


@pytest_twisted.ensureDeferred
async def test_trailing_dot_on_the_domain_is_the_same_domain(container):
    """`<user@ourdomain.>` (a fully-qualified name with its root dot) is our domain."""
    router = await setup_book(container)
    r = await router.resolve("<dave@example.com.>")
    assert r.mailboxes == (a("dave@example.com"),)


@pytest_twisted.ensureDeferred
async def test_idn_domain_matches_in_u_and_a_labels(container):
    """An IDN domain matches written as U-labels (any case) or as A-labels."""
    router = await setup_book(container)
    for text in ["anna@bücher.example", "Anna@BÜCHER.example", f"anna@{IDN}"]:
        r = await router.resolve(text)
        assert r.kind == "local" and r.mailboxes == (a(f"anna@{IDN}"),)
        assert r.address == f"anna@{IDN}"


@pytest_twisted.ensureDeferred
async def test_an_app_mailbox_gets_its_own_mail(container):
    """An app mailbox is a mailbox like any other: it resolves to itself."""
    router = await setup_book(container)
    r = await router.resolve("Blog.App@example.com")
    assert r.mailboxes == (a("blog.app@example.com"),)


@pytest_twisted.ensureDeferred
async def test_an_alias_delivers_to_its_mailbox(container):
    """An alias resolves to the mailbox it points at, and says so in the reason."""
    router = await setup_book(container)
    r = await router.resolve("AL@example.com")
    assert r.kind == "local" and r.mailboxes == (a("alice@example.com"),)
    assert r.address == "al@example.com" and "alias" in r.reason


@pytest_twisted.ensureDeferred
async def test_sub_address_on_mailbox_and_alias_keeps_the_tag(container):
    """`local+tag@` goes to `local`, mailbox or alias alike; the tag is kept as written."""
    router = await setup_book(container)
    r = await router.resolve("Alice+Kayak@example.com")
    assert r.mailboxes == (a("alice@example.com"),) and r.tag == "Kayak"
    assert r.address == "alice+Kayak@example.com"
    r = await router.resolve("al+aws@example.com")
    assert r.mailboxes == (a("alice@example.com"),) and r.tag == "aws"
    r = await router.resolve("alice+@example.com")
    assert r.mailboxes == (a("alice@example.com"),) and r.tag == ""
    r = await router.resolve("alice+a+b@example.com")
    assert r.tag == "a+b"


@pytest_twisted.ensureDeferred
async def test_a_dash_separates_a_tag_too(container):
    """As in the model, `no-reply@` reaches `no`: `-` separates a tag like `+` (the first wins)."""
    router = await setup_book(container)
    r = await router.resolve("alice-x@example.com")
    assert r.kind == "local" and r.mailboxes == (a("alice@example.com"),) and r.tag == "x"
    r = await router.resolve("alice-x+y@example.com")
    assert r.mailboxes == (a("alice@example.com"),) and r.tag == "x+y"
    r = await router.resolve("nobody-x@example.com")
    assert r.kind == "unknown"


@pytest_twisted.ensureDeferred
async def test_group_address_reaches_each_member_once(container):
    """A group mailbox goes to each member's mailbox in the group's domain, else the member's
    first mailbox (by domain, then name); a member with no mailbox is skipped."""
    router = await setup_book(container)
    r = await router.resolve("team@example.com")
    assert r.kind == "local"
    assert r.mailboxes == (a("alice@example.com"), a("bobby@example.net"))
    r = await router.resolve("team@example.org")
    assert r.mailboxes == (a("alice@example.org"), a("bob@example.org"))


@pytest_twisted.ensureDeferred
async def test_group_with_no_member_mailboxes_is_unknown(container):
    """A group whose members have no mailbox has nobody to deliver to: refused as unknown, and
    each skipped member is logged."""
    router = await setup_book(container)
    with capturedLogs() as events:
        r = await router.resolve("ghosts@example.com")
    assert r.kind == "unknown" and r.mailboxes == ()
    skipped = [e for e in events if e.get("username") == "carol"]
    assert skipped and skipped[0]["group"] == "ghosts"


class RepeatingDirectory:
    """A directory that lists every member twice, as a sloppy LDAP group can."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def group_members(self, name: str) -> list[str]:
        members = list(await self.inner.group_members(name))
        return members + [m.upper() for m in members]


@pytest_twisted.ensureDeferred
async def test_a_member_listed_twice_gets_one_copy(container):
    """A member named twice in the group (in any case) still gets the message once."""
    await setup_book(container)
    router = Router(container.accounts, RepeatingDirectory(container.directory))
    r = await router.resolve("team@example.com")
    assert r.mailboxes == (a("alice@example.com"), a("bobby@example.net"))


class DownDirectory:
    """A directory that cannot answer, as LDAP when it is down."""

    async def group_members(self, name: str) -> list[str]:
        raise DirectoryUnavailable("ldap down")


@pytest_twisted.ensureDeferred
async def test_group_fails_temporarily_when_the_directory_is_down(container):
    """A group address cannot be expanded without the directory: the error reaches the caller
    (for a 451), while plain mailboxes still resolve."""
    await setup_book(container)
    router = Router(container.accounts, DownDirectory())
    with pytest.raises(DirectoryUnavailable):
        await router.resolve("team@example.com")
    assert (await router.resolve("alice@example.com")).mailboxes == (a("alice@example.com"),)


@pytest_twisted.ensureDeferred
async def test_alias_to_a_group_mailbox_expands_the_group(container):
    """An alias of a group mailbox reaches the group's members, chosen by the group mailbox's
    domain; a +tag on it is kept."""
    router = await setup_book(container)
    r = await router.resolve("crew+news@example.net")
    assert r.mailboxes == (a("alice@example.com"), a("bobby@example.net")) and r.tag == "news"


@pytest_twisted.ensureDeferred
async def test_catchall_delivers_to_each_listed_mailbox(container):
    """An unknown local part (with or without a tag) goes to the domain's catch-all mailboxes."""
    router = await setup_book(container)
    await container.admin_service.set_catchall("example.org",
                                               ["alice@example.org", "bob@example.org"])
    r = await router.resolve("nobody@example.org")
    assert r.kind == "local" and r.reason == "catch-all"
    assert r.mailboxes == (a("alice@example.org"), a("bob@example.org"))
    r = await router.resolve("no-reply+x@example.org")
    assert r.mailboxes == (a("alice@example.org"), a("bob@example.org")) and r.tag == "reply+x"
    r = await router.resolve("alice@example.org")
    assert r.mailboxes == (a("alice@example.org"),)


@pytest_twisted.ensureDeferred
async def test_catchall_reaching_a_user_twice_delivers_once(container):
    """A catch-all listing a group mailbox and a member's own mailbox gives that member one copy."""
    router = await setup_book(container)
    await container.admin_service.set_catchall("example.com",
                                               ["alice@example.com", "team@example.com"])
    r = await router.resolve("whoever@example.com")
    assert r.mailboxes == (a("alice@example.com"), a("bobby@example.net"))


@pytest_twisted.ensureDeferred
async def test_unknown_address_with_empty_catchall_is_unknown(container):
    """Our domain, no such address, no catch-all: unknown (550 5.1.1), nobody to deliver to."""
    router = await setup_book(container)
    for text in ["nobody@example.com", "nobody+tag@example.com", "+tag@example.com"]:
        r = await router.resolve(text)
        assert r.kind == "unknown" and r.mailboxes == ()
    assert (await router.resolve("nobody+tag@example.com")).tag == "tag"


@pytest_twisted.ensureDeferred
async def test_a_domain_that_is_not_ours_is_relaying(container):
    """Any domain outside our domains table, or an address literal, is not ours."""
    router = await setup_book(container)
    for text in ["alice@example.edu", "alice@sub.example.com", "alice@[127.0.0.1]",
                 "user%example.com@other.test"]:
        r = await router.resolve(text)
        assert r.kind == "not_ours" and r.mailboxes == (), text


@pytest.mark.parametrize("trick", [
    "alice%other.test@example.com",         # percent hack
    "other.test!alice@example.com",         # bang path
    '"alice@other.test"@example.com',       # quoted local part with @
    '"other.test!alice"@example.com',
])
@pytest_twisted.ensureDeferred
async def test_relay_tricks_are_never_local(container, trick):
    """Relay routing hidden in the local part of our domain is refused as relaying, even when a
    catch-all would take unknown addresses."""
    router = await setup_book(container)
    await container.admin_service.set_catchall("example.com", ["dave@example.com"])
    r = await router.resolve(trick)
    assert r.kind == "not_ours" and r.mailboxes == ()


@pytest.mark.parametrize("text", [
    "@relay.test,@example.org:alice@example.com",   # source route
    "@example.com:alice@example.com",
    "alice@other.test@example.com",                 # a second @ must be quoted
    "alice", "", "<>", "alice@", "@example.com",
    "al ice@example.com", ".alice@example.com", "alice.@example.com", "a..b@example.com",
    '"unterminated@example.com', "alice@exa mple.com", "alice@-bad.com",
])
@pytest_twisted.ensureDeferred
async def test_bad_syntax_is_invalid(container, text):
    """Source routes, missing parts and malformed local parts or domains are invalid (501)."""
    router = await setup_book(container)
    r = await router.resolve(text)
    assert r.kind == "invalid" and r.mailboxes == ()


@pytest_twisted.ensureDeferred
async def test_quoted_plain_local_part_is_the_same_address(container):
    """`"alice"@dom` is `alice@dom` (RFC 5321 4.1.2: the quotes change nothing)."""
    router = await setup_book(container)
    r = await router.resolve('"alice"@example.com')
    assert r.mailboxes == (a("alice@example.com"),)


@pytest_twisted.ensureDeferred
async def test_bare_postmaster_goes_to_postmaster_of_the_first_domain(container):
    """RFC 5321 4.5.1: `<Postmaster>` without a domain is accepted, as postmaster@ the first
    domain (or the one the router is given); `postmaster@dom` resolves like any address."""
    router = await setup_book(container)
    assert (await router.resolve("<Postmaster>")).kind == "unknown"
    await container.admin_service.add_alias("postmaster@example.com", "dave@example.com")
    await container.admin_service.add_alias("postmaster@example.org", "bob@example.org")
    r = await router.resolve("<Postmaster>")
    assert r.kind == "local" and r.mailboxes == (a("dave@example.com"),)
    r = await Router(container.accounts, container.directory, "example.org").resolve("postmaster")
    assert r.mailboxes == (a("bob@example.org"),)
    r = await router.resolve("POSTMASTER@example.org")
    assert r.mailboxes == (a("bob@example.org"),)


@pytest_twisted.ensureDeferred
async def test_no_domains_at_all(container):
    """With an empty address book every address is not ours and bare postmaster is unknown."""
    router = Router(container.accounts, container.directory)
    assert (await router.resolve("alice@example.com")).kind == "not_ours"
    assert (await router.resolve("postmaster")).kind == "unknown"


ALICE = Address("alice", "example.com")


def test_loop_none_for_an_ordinary_message():
    """A few Received headers and a Delivered-To for someone else are no loop."""
    headers = [(b"Received", b"from a by b"), (b"Delivered-To", b"bob@example.com"),
               (b"Subject", b"hi")]
    assert is_loop(headers, ALICE) is None


def test_loop_on_delivered_to_the_recipient():
    """A Delivered-To naming the recipient (any case, with <>, a +tag or folded) is a loop."""
    for value in [b"alice@example.com", b" ALICE@Example.COM\r\n", b"<alice@example.com>",
                  b"alice+news@example.com"]:
        for name in [b"Delivered-To", b"delivered-to", b"DELIVERED-TO "]:
            reason = is_loop([(name, value)], ALICE)
            assert reason and "Delivered-To" in reason


def test_loop_on_delivered_to_an_idn_recipient():
    """A Delivered-To in U-labels matches the A-label recipient."""
    assert is_loop([(b"Delivered-To", "anna@bücher.example".encode())], Address("anna", IDN))


def test_loop_on_too_many_received_headers():
    """More than max_received Received headers is a loop; exactly max_received is not."""
    headers = [(b"Received", b"x")] * 50
    assert is_loop(headers, ALICE) is None
    assert "51 Received" in is_loop(headers + [(b"received", b"y")], ALICE)
    assert is_loop(headers[:4], ALICE, max_received=3)
    assert is_loop([(b"X-Received", b"x")] * 60, ALICE) is None


class BookInMemory:
    """An address book held in dicts, answering at once, for property tests of the parser."""

    def __init__(self) -> None:
        self.mailbox = Mailbox(ALICE, "user", "alice", "now")

    async def get_domain(self, name: str):
        if name != "example.com":
            raise NotFound("name", name)
        return SimpleNamespace(name=name)

    async def list_domains(self):
        return [SimpleNamespace(name="example.com")]

    async def find_mailbox(self, address: Address):
        return self.mailbox if address == ALICE else None

    async def find_alias(self, address: Address):
        return None

    async def get_catchall(self, domain: str):
        return [ALICE]


def resolve_now(text: str):
    """Resolve through the in-memory book, which never waits, so the result is there at once."""
    results = []
    ensureDeferred(Router(BookInMemory(), None).resolve(text)).addBoth(results.append)
    [result] = results
    if isinstance(result, Failure):
        result.raiseException()
    return result


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from('@%!<>"\\:,.+ ab\0é[]') | st.characters(), max_size=40))
def test_any_text_resolves_without_error(text):
    """Any recipient text gets one of the four answers; a local one names existing mailboxes."""
    r = resolve_now(text)
    assert r.kind in ("local", "unknown", "not_ours", "invalid")
    assert (r.mailboxes == (ALICE,)) if r.kind == "local" else r.mailboxes == ()


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(), max_size=20), st.sampled_from("%!@"),
       st.text(st.characters(), max_size=20), st.booleans())
def test_relay_characters_in_our_local_part_are_never_local(before, mark, after, quoted):
    """Whatever surrounds a `%`, `!` or `@` in the local part, quoted or not, it is not delivered
    locally, even though this book's catch-all takes every unknown address."""
    local = before + mark + after
    if quoted:
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert resolve_now(f"{local}@example.com").kind in ("not_ours", "invalid")


@pytest_twisted.ensureDeferred
async def test_lookups_are_cached_until_any_change(container):
    """A repeated look-up is answered without the db thread; a change through the service is
    seen at once, and one by another process (another connection, as `cloudmail-admin` is)
    once the database has been checked for changes."""
    import sqlite3
    router = container.router
    s = container.admin_service
    await s.add_domain("example.com")
    await s.add_user("alice", password_hash=HASH)
    await s.add_mailbox("alice@example.com", owner="alice")
    assert (await router.resolve("alice@example.com")).is_local
    trips = []
    transact = container.database.transact
    container.database.transact = lambda *args: trips.append(args) or transact(*args)
    assert (await router.resolve("alice@example.com")).is_local
    assert trips == []
    container.database.transact = transact
    await s.delete_mailbox("alice@example.com")
    assert (await router.resolve("alice@example.com")).kind == "unknown"

    other = sqlite3.connect(container.config.database.path, isolation_level=None)
    try:
        other.execute("INSERT INTO mailboxes (local, domain, owner_type, owner, created) "
                      "VALUES ('alice', 'example.com', 'user', 'alice', '2026-01-01T00:00:00')")
    finally:
        other.close()
    assert (await router.resolve("alice@example.com")).kind == "unknown"
    await container.database.check_for_changes()
    assert (await router.resolve("alice@example.com")).is_local
