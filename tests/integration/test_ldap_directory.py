"""The LDAP directory against a real OpenLDAP slapd on loopback (tests/ldapserver.py).

The directory: alice (two addresses), bob (whose DN's RDN is `cn`, not `uid`), carol, o'brien, two
entries with uid `dup`; groupOfNames `team` (alice, bob) and `admins` (alice), posixGroup `devs`
(memberUid carol). Searches run as `cn=reader`.
"""

from __future__ import annotations

import socket
import time
from contextlib import closing

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults

from cloudmail.directory.ldap import LdapDirectory
from cloudmail.errors import AuthenticationFailed, DirectoryUnavailable
from cloudmail.interfaces import Group, IDirectory, User
from cloudmail.threads import ThreadPools
from tests.ldapserver import free_port

ALICE = User("alice", "Alice Liddell", ("alice@example.com", "a.liddell@example.org"))
POSIX = {"group_filter": "(&(objectClass=posixGroup)(cn={group}))",
         "group_member_attribute": "memberUid"}


@pytest.fixture
def pools():
    """The thread pools of one test, stopped at its end (ldap sized like the connection pool)."""
    p = ThreadPools({"ldap": 2})
    yield p
    p.stopService()


@pytest.fixture
def make_directory(slapd, pools):
    """Build an LdapDirectory for the test slapd with config overrides; closed at the end."""
    made = []

    def make(**overrides) -> LdapDirectory:
        directory = LdapDirectory(slapd.config(**overrides), pools)
        made.append(directory)
        return directory

    yield make
    for directory in made:
        pytest_twisted.blockon(directory.close())


@pytest.fixture
def directory(make_directory):
    return make_directory()


@pytest.fixture
def black_hole():
    """A loopback port that accepts TCP connections (the kernel's backlog) and never answers."""
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"ldap://127.0.0.1:{s.getsockname()[1]}"


async def unavailable(d) -> DirectoryUnavailable:
    with pytest.raises(DirectoryUnavailable) as info:
        await d
    return info.value


# --- logging in ----------------------------------------------------------------------------------

def test_provides_idirectory_read_only(directory):
    """LdapDirectory provides IDirectory and says it cannot be changed through us."""
    assert IDirectory.providedBy(directory)
    assert directory.writable is False


@pytest_twisted.ensureDeferred
async def test_authenticate_right_password(directory, slapd):
    """The right password fires with the User: name, display name and every mail value."""
    assert await directory.authenticate("alice", slapd.passwords["alice"]) == ALICE
    user = await directory.authenticate("o'brien", slapd.passwords["o'brien"])
    assert user.username == "o'brien" and user.emails == ("obrien@example.com",)


@pytest_twisted.ensureDeferred
async def test_authenticate_is_case_insensitive_and_returns_lower_case(directory, slapd):
    """A login name in capitals finds the user; the User carries the lower-case name."""
    user = await directory.authenticate("ALICE", slapd.passwords["alice"])
    assert user.username == "alice"


@pytest_twisted.ensureDeferred
async def test_user_whose_dn_is_not_by_uid_can_log_in(directory, slapd):
    """bob's DN starts with cn=, not uid=: the search finds his DN and the bind uses it."""
    user = await directory.authenticate("bob", slapd.passwords["bob"])
    assert user == User("bob", "Bob Builder", ("bob@example.com",))


@pytest_twisted.ensureDeferred
async def test_wrong_password_fails(directory, slapd):
    """A wrong password is AuthenticationFailed, also when it is another user's password."""
    with pytest.raises(AuthenticationFailed):
        await directory.authenticate("alice", "not-her-password")
    with pytest.raises(AuthenticationFailed):
        await directory.authenticate("alice", slapd.passwords["bob"])


@pytest_twisted.ensureDeferred
async def test_unknown_user_fails(directory):
    """A name no entry has is AuthenticationFailed, like a wrong password."""
    with pytest.raises(AuthenticationFailed):
        await directory.authenticate("mallory", "whatever")


@pytest_twisted.ensureDeferred
async def test_empty_password_refused_without_binding(directory):
    """An empty password (an unauthenticated bind that would "succeed") is refused before any
    connection is made; so is an empty name."""
    for name, password in [("alice", ""), ("", "alice-pw"), ("", "")]:
        with pytest.raises(AuthenticationFailed):
            await directory.authenticate(name, password)
    assert directory.search_connections_opened == 0
    assert directory.bind_connections_opened == 0


@pytest.mark.parametrize("name", ["*", "alice)(uid=*", "*)(|(uid=*", "al*", "*)(objectClass=*",
                                  "alice\\", "alice\x00", "a=b", "(", "dup"])
@pytest_twisted.ensureDeferred
async def test_filter_injection_never_matches(directory, slapd, name):
    """Filter metacharacters in a login name are escaped (RFC 4515): no wildcard or extra clause
    ever matches an entry, with anyone's password; an ambiguous name (two entries) is no user."""
    for password in slapd.passwords.values():
        with pytest.raises(AuthenticationFailed):
            await directory.authenticate(name, password)
    assert await directory.get_user(name) is None


@pytest_twisted.ensureDeferred
async def test_search_connection_stays_bound_as_the_service_account(directory, slapd, pools):
    """Password binds run on their own connections: after a login the pooled search connection
    is still the reader (RFC 4532 Who am I?), never alice."""
    await directory.authenticate("alice", slapd.passwords["alice"])
    with pytest.raises(AuthenticationFailed):
        await directory.authenticate("bob", "wrong")

    def who_am_i() -> list[str]:
        return [c.extend.standard.who_am_i() for c in directory._search_pool._idle]

    assert await pools.run("ldap", who_am_i) == [f"dn:{slapd.reader_dn}"]


# --- users and groups ----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_get_user(directory):
    """get_user reads the display name and both mail values; unknown or ambiguous names are None."""
    assert await directory.get_user("Alice") == ALICE
    assert await directory.get_user("mallory") is None
    assert await directory.get_user("dup") is None
    assert await directory.get_user("") is None


@pytest_twisted.ensureDeferred
async def test_list_users(directory):
    """list_users lists every user the filter finds, sorted, leaving out the ambiguous `dup`."""
    users = await directory.list_users()
    assert [u.username for u in users] == ["alice", "bob", "carol", "o'brien"]
    assert users[0] == ALICE


@pytest_twisted.ensureDeferred
async def test_group_of_names_members_are_usernames(directory):
    """groupOfNames `member` DNs map to usernames: from the RDN (alice) or, when the RDN is not
    the username attribute, by reading the entry (bob's DN is cn=Bob Builder); a member DN with
    no entry behind it is left out."""
    assert await directory.get_group("TEAM") == Group("team", ("alice", "bob"))
    assert await directory.group_members("team") == ["alice", "bob"]


@pytest_twisted.ensureDeferred
async def test_posix_group_member_uids_are_usernames(make_directory):
    """posixGroup `memberUid` values are usernames as they are."""
    directory = make_directory(**POSIX)
    assert await directory.get_group("devs") == Group("devs", ("carol",))
    assert await directory.group_members("devs") == ["carol"]
    assert [g.name for g in await directory.list_groups()] == ["devs"]


@pytest_twisted.ensureDeferred
async def test_unknown_group(directory):
    """An unknown group has no members and get_group is None; wildcards are no group either."""
    assert await directory.group_members("nobody") == []
    assert await directory.get_group("nobody") is None
    assert await directory.group_members("*") == []
    assert await directory.get_group("") is None


@pytest_twisted.ensureDeferred
async def test_list_groups(directory):
    """list_groups lists every group the filter finds, sorted by name, with members."""
    assert await directory.list_groups() == [Group("admins", ("alice",)),
                                             Group("team", ("alice", "bob"))]


@pytest_twisted.ensureDeferred
async def test_group_base_defaults_to_user_base(make_directory, slapd):
    """With no group_base, groups are searched under user_base."""
    directory = make_directory(group_base="", user_base=slapd.base_dn)
    assert await directory.group_members("admins") == ["alice"]


# --- binding as the service account --------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_check_answers(directory):
    """check() fires None when a bound search connection reads user_base."""
    assert await directory.check() is None


@pytest_twisted.ensureDeferred
async def test_check_reports_a_missing_user_base(make_directory):
    """check() says so when user_base is not on the server, so start-up can warn."""
    directory = make_directory(user_base="ou=nowhere,dc=example,dc=com")
    error = await unavailable(directory.check())
    assert "ou=nowhere" in str(error)


@pytest_twisted.ensureDeferred
async def test_anonymous_search(make_directory, slapd):
    """With no bind_dn, searches run anonymously and logging in still works."""
    directory = make_directory(bind_dn="", bind_password="")
    assert await directory.check() is None
    assert await directory.authenticate("alice", slapd.passwords["alice"]) == ALICE


@pytest_twisted.ensureDeferred
async def test_bind_password_file(make_directory, slapd, tmp_path):
    """The service password can come from a file; its trailing newline is not part of it."""
    secret = tmp_path / "ldap.secret"
    secret.write_text(slapd.reader_password + "\n")
    directory = make_directory(bind_password="wrong", bind_password_file=secret)
    assert await directory.authenticate("alice", slapd.passwords["alice"]) == ALICE


@pytest_twisted.ensureDeferred
async def test_wrong_service_password_is_unavailable(make_directory, slapd):
    """A refused service-account bind is DirectoryUnavailable naming the account (a set-up
    problem), never AuthenticationFailed for the user trying to log in."""
    directory = make_directory(bind_password="not-the-reader-pw")
    error = await unavailable(directory.authenticate("alice", slapd.passwords["alice"]))
    assert slapd.reader_dn in str(error) and "invalidCredentials" in str(error)
    assert "not-the-reader-pw" not in str(error)
    error = await unavailable(directory.check())
    assert "bind_password" in str(error)
    await unavailable(directory.get_user("alice"))
    no_password = make_directory(bind_password="")
    assert "password is empty" in str(await unavailable(no_password.check()))


# --- TLS -----------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_start_tls(make_directory, slapd):
    """StartTLS on ldap:// with the test CA: searches and the password bind work over TLS."""
    directory = make_directory(start_tls=True)
    assert await directory.authenticate("alice", slapd.passwords["alice"]) == ALICE
    assert await directory.check() is None


@pytest_twisted.ensureDeferred
async def test_ldaps(make_directory, slapd):
    """ldaps:// with the test CA works."""
    directory = make_directory(urls=(slapd.ldaps_url,))
    assert await directory.authenticate("alice", slapd.passwords["alice"]) == ALICE


@pytest.mark.parametrize("mode", ["start_tls", "ldaps"])
@pytest_twisted.ensureDeferred
async def test_wrong_ca_is_unavailable(make_directory, slapd, mode):
    """A certificate the CA file does not vouch for is DirectoryUnavailable (the handshake fails
    before any bind); with verify_certificates off the same server is accepted."""
    tls = {"start_tls": True} if mode == "start_tls" else {"urls": (slapd.ldaps_url,)}
    directory = make_directory(ca_file=slapd.other_ca_file, **tls)
    error = await unavailable(directory.authenticate("alice", slapd.passwords["alice"]))
    assert "certificate" in str(error).lower()
    trusting = make_directory(ca_file=slapd.other_ca_file, verify_certificates=False, **tls)
    assert await trusting.authenticate("alice", slapd.passwords["alice"]) == ALICE


# --- servers that do not answer ------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_unreachable_server_is_unavailable_quickly(make_directory, slapd):
    """A closed port is DirectoryUnavailable at once, never AuthenticationFailed."""
    directory = make_directory(urls=(f"ldap://127.0.0.1:{free_port()}",))
    started = time.monotonic()
    await unavailable(directory.authenticate("alice", slapd.passwords["alice"]))
    await unavailable(directory.check())
    assert time.monotonic() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_black_holed_server_times_out_without_blocking_the_reactor(make_directory, slapd,
                                                                         black_hole):
    """A server that accepts and never answers is DirectoryUnavailable after about the timeouts,
    and the reactor keeps running meanwhile (the wait is in the ldap thread)."""
    directory = make_directory(urls=(black_hole,), connect_timeout=0.5, timeout=1.0)
    ticks = []
    loop = task.LoopingCall(lambda: ticks.append(reactor.seconds()))
    loop.start(0.05)
    started = time.monotonic()
    try:
        await unavailable(directory.authenticate("alice", slapd.passwords["alice"]))
    finally:
        loop.stop()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 0.5 + 1.0 + 1.0
    assert len(ticks) >= elapsed / 0.05 * 0.5


@pytest.mark.parametrize("dead", ["closed", "black hole"])
@pytest_twisted.ensureDeferred
async def test_dead_first_server_falls_over_to_the_next(make_directory, slapd, black_hole, dead):
    """With the first URL dead (closed port or black hole), the second (slapd) answers; the dead
    one is tried last for a while, so the next new connection does not wait on it again."""
    first = f"ldap://127.0.0.1:{free_port()}" if dead == "closed" else black_hole
    directory = make_directory(urls=(first, slapd.url), connect_timeout=0.5, timeout=1.0)
    assert await directory.authenticate("alice", slapd.passwords["alice"]) == ALICE
    await directory.close()  # the next login opens new connections
    started = time.monotonic()
    assert await directory.authenticate("bob", slapd.passwords["bob"])
    assert time.monotonic() - started < 0.4
    assert directory.search_connections_opened == 2


# --- connection pooling --------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_connections_are_pooled(make_directory, slapd):
    """30 logins in a row reuse one search and one bind connection; 20 at once open no more
    than pool_size of each."""
    directory = make_directory(pool_size=2)
    for _ in range(30):
        await directory.authenticate("alice", slapd.passwords["alice"])
    assert directory.search_connections_opened == 1
    assert directory.bind_connections_opened == 1
    await gatherResults([directory.authenticate(name, slapd.passwords[name])
                         for name in ("alice", "bob", "carol", "o'brien") * 5])
    assert directory.search_connections_opened <= 2
    assert directory.bind_connections_opened <= 2


@pytest_twisted.ensureDeferred
async def test_dead_pooled_connection_is_replaced(directory, slapd, pools):
    """A pooled connection the server dropped while idle is thrown away and the request is
    retried on a new connection, not failed."""
    assert await directory.get_user("alice") == ALICE

    def cut() -> None:
        for conn in directory._search_pool._idle:
            conn.socket.shutdown(socket.SHUT_RDWR)

    await pools.run("ldap", cut)
    assert await directory.get_user("alice") == ALICE
    assert directory.search_connections_opened == 2
