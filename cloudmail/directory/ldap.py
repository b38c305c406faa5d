"""The LDAP directory: users, passwords and groups read from an LDAP server with ldap3.

ldap3 is blocking, so every operation runs whole in the `ldap` thread pool and the reactor only
sees a Deferred. Searches run on a small pool of connections bound as the service account
(`bind_dn`, or anonymous); passwords are checked by binding as the user's DN on a second pool of
connections used for nothing but binds, so no search ever runs as a user who just logged in (a
bind replaces the connection's identity, RFC 4511 section 4.2).

Every value put into a filter is escaped (RFC 4515 section 3); an empty password is refused before
any bind (RFC 4513 section 5.1.2: it would be an unauthenticated bind that "succeeds"); a server
that cannot answer gives `DirectoryUnavailable`, never `AuthenticationFailed`: a mail client must
hear "try again later", not "wrong password", when LDAP is down.

Servers in `urls` are tried in order; one that fails is tried last for `DOWN_FOR` seconds, so a
dead first server costs one timeout, not one per new connection. ldap3's ServerPool is not used:
when every server is down it sleeps 10 s before giving up, and it fails over only when the TCP
connect fails, not when a server accepts and never answers.
"""

from __future__ import annotations

import math
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from ipaddress import ip_address
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ldap3 import ANONYMOUS, BASE, NONE, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPInvalidDnError
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from cloudmail.config import LdapConfig
from cloudmail.errors import AuthenticationFailed, DirectoryUnavailable
from cloudmail.interfaces import Group, IDirectory, User
from cloudmail.threads import ThreadPools

log = Logger()
T = TypeVar("T")
Entry = tuple[str, dict[str, list[str]]]  # (dn, attributes by lower-case name)

DOWN_FOR = 30.0
PAGE_SIZE = 500
#: Bind results that mean "this name and password do not log in" (RFC 4511 section 4.1.9):
#: inappropriateAuthentication, invalidCredentials, insufficientAccessRights, unwillingToPerform.
REFUSED = frozenset({48, 49, 50, 53})
SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT, INVALID_DN_SYNTAX = 4, 32, 34
PAGED_RESULTS = "1.2.840.113556.1.4.319"  # RFC 2696
BROKEN = (LDAPException, OSError)  # the connection is no good: drop it, the server may be down


def _log_from_thread(level: str, fmt: str, **kwargs: Any) -> None:
    reactor.callFromThread(getattr(log, level), fmt, **kwargs)


def _close(conn: Connection) -> None:
    """Unbind; and close the socket, which ldap3 leaves open when connecting failed."""
    try:
        conn.unbind()
    except BROKEN:
        pass
    if getattr(conn, "socket", None) is not None:
        try:
            conn.socket.close()
        except OSError:
            pass


def _describe(result: dict[str, Any] | None) -> str:
    result = result or {}
    text = f"{result.get('description', 'no answer')} ({result.get('result')})"
    return f"{text}: {result['message']}" if result.get("message") else text


class _ConnectionPool:
    """Idle connections kept for reuse, at most `size`; one that failed is dropped, not kept."""

    def __init__(self, size: int, open_one: Callable[[], Connection]) -> None:
        self._size = size
        self._open_one = open_one
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self.opened = 0

    def take(self) -> tuple[Connection, bool]:
        """An open connection and whether it was reused (a reused one may have died idle)."""
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn, True
        conn = self._open_one()
        with self._lock:
            self.opened += 1
        return conn, False

    def give_back(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < self._size and not conn.closed:
                self._idle.append(conn)
                return
        _close(conn)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)


@implementer(IDirectory)
class LdapDirectory:
    """Users and groups from LDAP; read-only (they are changed in LDAP, not here)."""

    writable = False

    def __init__(self, config: LdapConfig, pools: ThreadPools) -> None:
        self._config = config
        self._pools = pools
        self._group_base = config.group_base or config.user_base
        match = re.search(r"\(\s*([A-Za-z][\w.;-]*)\s*=\s*\{group\}\s*\)", config.group_filter)
        self._group_name = (match.group(1) if match else "cn").lower()
        self._user_attributes = [a.lower() for a in (
            config.username_attribute, config.mail_attribute, config.display_name_attribute)]
        self._group_attributes = [self._group_name, config.group_member_attribute.lower()]
        self._servers: list[tuple[str, Server]] | None = None
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._search_pool = _ConnectionPool(config.pool_size, self._open_search)
        self._bind_pool = _ConnectionPool(config.pool_size, lambda: self._open("", "", bind=False))

    @property
    def search_connections_opened(self) -> int:
        """How many service-account connections were opened so far (pooling keeps this small)."""
        return self._search_pool.opened

    @property
    def bind_connections_opened(self) -> int:
        """How many password-checking connections were opened so far."""
        return self._bind_pool.opened

    # --- IDirectory: each call is one trip to the ldap thread pool --------------------------

    def authenticate(self, username: str, password: str) -> Deferred[User]:
        """Bind as the user's DN with `password`; fire with the `User`.

        AuthenticationFailed for an unknown name, a wrong or an empty password alike;
        DirectoryUnavailable when no server answers.
        """
        if not password or not username:
            return fail(AuthenticationFailed())
        return self._run("authenticate", self._authenticate, username, password)

    def get_user(self, username: str) -> Deferred[User | None]:
        """Fire with the one `User` the user filter finds for `username`, or None."""
        return self._run("get_user", self._get_user, username)

    def list_users(self) -> Deferred[list[User]]:
        """Fire with every user the user filter finds, sorted by username."""
        return self._run("list_users", self._on_pool, self._search_pool, self._list_users)

    def get_group(self, name: str) -> Deferred[Group | None]:
        """Fire with the one `Group` the group filter finds for `name`, members included."""
        return self._run("get_group", self._get_group, name)

    def list_groups(self) -> Deferred[list[Group]]:
        """Fire with every group the group filter finds, sorted by name."""
        return self._run("list_groups", self._on_pool, self._search_pool, self._list_groups)

    def group_members(self, name: str) -> Deferred[list[str]]:
        """Fire with the usernames in group `name` (empty for an unknown group)."""
        return self.get_group(name).addCallback(lambda g: list(g.members) if g else [])

    def check(self) -> Deferred[None]:
        """Fire None when a bound search connection can read `user_base`.

        Errback DirectoryUnavailable saying why (no server answers, the service account is
        refused, the base is missing), so the service can warn at start-up, not at a login.
        """
        return self._run("check", self._on_pool, self._search_pool, self._check)

    def close(self) -> Deferred[None]:
        """Unbind the idle pooled connections (at shutdown, before the thread pools stop)."""
        def close_all() -> None:
            self._search_pool.close_all()
            self._bind_pool.close_all()
        return self._pools.run("ldap", close_all)

    def _run(self, operation: str, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        def unavailable(failure: Failure) -> Failure:
            if failure.check(DirectoryUnavailable):
                log.warn("LDAP directory unavailable for {operation}: {reason}",
                         operation=operation, reason=str(failure.value))
            return failure
        return self._pools.run("ldap", fn, *args).addErrback(unavailable)

    # --- the work, in the ldap threads ------------------------------------------------------

    def _authenticate(self, username: str, password: str) -> User:
        found = self._on_pool(self._search_pool, self._find_user, username)
        if found is None:
            raise AuthenticationFailed()
        dn, user = found
        if not self._on_pool(self._bind_pool, self._bind_as, dn, password):
            _log_from_thread("info", "LDAP refused the password of {username}",
                             username=user.username)
            raise AuthenticationFailed()
        return user

    def _get_user(self, username: str) -> User | None:
        found = self._on_pool(self._search_pool, self._find_user, username) if username else None
        return found[1] if found else None

    def _find_user(self, conn: Connection, username: str) -> tuple[str, User] | None:
        """The DN and `User` of the one entry the user filter finds, else None (0 or >1)."""
        entry = self._one(conn, self._config.user_base, self._config.user_filter.replace(
            "{username}", escape_filter_chars(username)), self._user_attributes, username)
        user = self._user(entry[1], username) if entry else None
        return (entry[0], user) if entry and user else None

    def _list_users(self, conn: Connection) -> list[User]:
        flt = self._config.user_filter.replace("{username}", "*")
        by_name: dict[str, list[User]] = {}
        for _, attributes in self._search(conn, self._config.user_base, flt,
                                          self._user_attributes, paged=True):
            user = self._user(attributes, None)
            if user:
                by_name.setdefault(user.username, []).append(user)
        return [users[0] for _, users in sorted(by_name.items()) if len(users) == 1]

    def _get_group(self, name: str) -> Group | None:
        def get(conn: Connection) -> Group | None:
            flt = self._config.group_filter.replace("{group}", escape_filter_chars(name))
            entry = self._one(conn, self._group_base, flt, self._group_attributes, name)
            return self._group(conn, entry[1], name) if entry else None
        return self._on_pool(self._search_pool, get) if name else None

    def _list_groups(self, conn: Connection) -> list[Group]:
        flt = self._config.group_filter.replace("{group}", "*")
        found: dict[str, Group] = {}
        for _, attributes in self._search(conn, self._group_base, flt, self._group_attributes,
                                          paged=True):
            group = self._group(conn, attributes, None)
            if group:
                found.setdefault(group.name, group)
        return [found[name] for name in sorted(found)]

    def _check(self, conn: Connection) -> None:
        base = self._config.user_base
        if not conn.search(base, "(objectClass=*)", BASE, attributes=["1.1"]):
            raise DirectoryUnavailable(f"cannot read user_base {base!r}: {_describe(conn.result)}")

    def _user(self, attributes: dict[str, list[str]], wanted: str | None) -> User | None:
        name_attribute, mail, display = self._user_attributes
        username = _pick(attributes.get(name_attribute, []), wanted)
        if not username:
            return None
        names = attributes.get(display, [])
        emails = tuple(dict.fromkeys(m.strip() for m in attributes.get(mail, []) if m.strip()))
        return User(username=username, display_name=names[0] if names else "", emails=emails)

    def _group(self, conn: Connection, attributes: dict[str, list[str]],
               wanted: str | None) -> Group | None:
        name = _pick(attributes.get(self._group_name, []), wanted)
        if not name:
            return None
        members = set()
        for value in attributes.get(self._group_attributes[1], []):
            member = self._member_name(conn, value) if "=" in value else value
            if member and member.strip():
                members.add(member.strip().lower())
        return Group(name=name, members=tuple(sorted(members)))

    def _member_name(self, conn: Connection, dn: str) -> str | None:
        """The username of a member DN: its RDN value when that is the username attribute
        (no lookup), else the attribute read from the entry (None for a member with none)."""
        attribute = self._user_attributes[0]
        try:
            kind, value, separator = parse_dn(dn)[0]
            if kind.lower() == attribute and separator != "+" and "\\" not in value \
                    and not value.startswith("#"):
                return value
        except (LDAPException, IndexError):
            pass
        try:
            entries = self._search(conn, dn, "(objectClass=*)", [attribute], scope=BASE)
        except LDAPInvalidDnError:  # a member value that is not a DN names no user
            return None
        values = entries[0][1].get(attribute, []) if entries else []
        return values[0] if values else None

    # --- searching --------------------------------------------------------------------------

    def _one(self, conn: Connection, base: str, flt: str, attributes: list[str],
             name: str) -> Entry | None:
        """The one entry found, or None when there is none or more than one (ambiguous)."""
        entries = self._search(conn, base, flt, attributes, size_limit=2)
        if len(entries) > 1:
            _log_from_thread("warn", "LDAP name {name} is ambiguous: more than one entry under "
                             "{base}", name=name, base=base)
        return entries[0] if len(entries) == 1 else None

    def _search(self, conn: Connection, base: str, flt: str, attributes: list[str], *,
                scope: str = SUBTREE, size_limit: int = 0, paged: bool = False) -> list[Entry]:
        """The entries found; a missing or malformed base is none, other errors are
        DirectoryUnavailable. A size limit that was hit still returns what came; `paged` pages
        through all of them (RFC 2696)."""
        entries: list[Entry] = []
        cookie: Any = None
        while True:
            conn.search(base, flt, scope, attributes=attributes, size_limit=size_limit,
                        paged_size=PAGE_SIZE if paged else None, paged_cookie=cookie)
            code = conn.result.get("result")
            if code in (NO_SUCH_OBJECT, INVALID_DN_SYNTAX):
                return entries
            if code not in (0, SIZE_LIMIT_EXCEEDED):
                raise DirectoryUnavailable(f"search in {base!r} failed: {_describe(conn.result)}")
            for item in conn.response or []:
                if item.get("type") == "searchResEntry":
                    entries.append((item["dn"], _lists(item.get("attributes", {}))))
            controls = conn.result.get("controls") or {}
            cookie = controls.get(PAGED_RESULTS, {}).get("value", {}).get("cookie")
            if not paged or not cookie:
                return entries

    # --- connections ------------------------------------------------------------------------

    def _on_pool(self, pool: _ConnectionPool, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` on a pooled connection; a reused one that turns out dead (the
        server closed it while idle) is replaced once, then the failure is DirectoryUnavailable."""
        for attempt in (1, 2):
            conn, reused = pool.take()
            try:
                result = fn(conn, *args)
            except BROKEN as e:
                _close(conn)
                if reused and attempt == 1:
                    continue
                self._mark_down(conn.server)
                raise DirectoryUnavailable(f"LDAP server {_url(conn.server)} failed: {e}") from e
            except BaseException:
                _close(conn)
                raise
            pool.give_back(conn)
            return result
        raise AssertionError("unreachable")

    def _bind_as(self, conn: Connection, dn: str, password: str) -> bool:
        """Check a password by binding as `dn`; False when the server refuses it."""
        if conn.closed:  # ldap3 would re-open it without StartTLS: never send a password so
            raise DirectoryUnavailable("the password-check connection is closed")
        try:
            ok = conn.rebind(user=dn, password=password, authentication=SIMPLE,
                             read_server_info=False)
        finally:
            conn.password = None
        if ok:
            return True
        if conn.result.get("result") in REFUSED:
            return False
        raise DirectoryUnavailable(f"the LDAP bind of a user failed: {_describe(conn.result)}")

    def _open_search(self) -> Connection:
        c = self._config
        password = c.bind_password
        if c.bind_dn and c.bind_password_file is not None:
            try:
                password = c.bind_password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as e:
                raise DirectoryUnavailable(f"cannot read [ldap] bind_password_file: {e}") from e
        if c.bind_dn and not password:
            raise DirectoryUnavailable("[ldap] bind_dn is set but its password is empty")
        return self._open(c.bind_dn, password)

    def _open(self, bind_dn: str, password: str, bind: bool = True) -> Connection:
        """A connection to the first server that answers: opened, TLS started, bound (as
        `bind_dn`, anonymous when empty) unless `bind` is False."""
        c = self._config
        failures = []
        for url, server in self._ordered_servers():
            # ldap3 packs receive_timeout into SO_RCVTIMEO as whole seconds.
            conn = Connection(server, user=bind_dn or None, password=password or None,
                              authentication=SIMPLE if bind_dn else ANONYMOUS,
                              receive_timeout=math.ceil(c.timeout), raise_exceptions=False,
                              read_only=True, auto_referrals=False, return_empty_attributes=True)
            try:
                conn.open(read_server_info=False)
                if c.start_tls and not server.ssl and not conn.start_tls(read_server_info=False):
                    raise DirectoryUnavailable(f"{url} refused StartTLS: {_describe(conn.result)}")
                if bind and not conn.bind(read_server_info=False):
                    who = f"the service account {bind_dn!r}" if bind_dn else "an anonymous bind"
                    raise DirectoryUnavailable(f"{url} refused {who}: {_describe(conn.result)}; "
                                               "check [ldap] bind_dn and bind_password")
            except BROKEN as e:
                _close(conn)
                self._mark_down(server)
                failures.append(f"{url}: {e}")
                _log_from_thread("warn", "LDAP server {url} failed: {reason}", url=url,
                                 reason=str(e))
                continue
            except BaseException:
                _close(conn)
                raise
            finally:
                conn.password = None
            with self._lock:
                self._down_until.pop(_url(server), None)
            _log_from_thread("debug", "opened an LDAP connection to {url}", url=url)
            return conn
        raise DirectoryUnavailable("no LDAP server answered: " + "; ".join(failures))

    def _ordered_servers(self) -> list[tuple[str, Server]]:
        """The servers in config order, those that failed in the last DOWN_FOR seconds last."""
        with self._lock:
            if self._servers is None:
                try:
                    self._servers = [(url, self._server(url)) for url in self._config.urls]
                except (LDAPException, ValueError) as e:
                    raise DirectoryUnavailable(f"bad [ldap] settings: {e}") from e
            now = time.monotonic()
            up = [s for s in self._servers if self._down_until.get(_url(s[1]), 0) <= now]
            return up + [s for s in self._servers if s not in up]

    def _mark_down(self, server: Server) -> None:
        with self._lock:
            self._down_until[_url(server)] = time.monotonic() + DOWN_FOR

    def _server(self, url: str) -> Server:
        parts = urlsplit(url)
        use_ssl = parts.scheme.lower() == "ldaps"
        host = parts.hostname or "localhost"
        tls = None
        if use_ssl or self._config.start_tls:
            # ldap3 uses Python's default client context, which refuses TLS below 1.2 (3.10+).
            tls = Tls(validate=ssl.CERT_REQUIRED if self._config.verify_certificates
                      else ssl.CERT_NONE,
                      ca_certs_file=str(self._config.ca_file) if self._config.ca_file else None,
                      sni=None if _is_ip(host) else host)
        return Server(host, port=parts.port or (636 if use_ssl else 389), use_ssl=use_ssl,
                      tls=tls, get_info=NONE, connect_timeout=self._config.connect_timeout)


def _url(server: Server) -> str:
    return f"{'ldaps' if server.ssl else 'ldap'}://{server.host}:{server.port}"


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _lists(attributes: dict[str, Any]) -> dict[str, list[str]]:
    """Attributes by lower-case name (names are case-insensitive, RFC 4512 section 2.5), every
    value a list of str."""
    return {name.lower(): [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                           for v in (value if isinstance(value, (list, tuple)) else [value])]
            for name, value in attributes.items()}


def _pick(values: Iterable[str], wanted: str | None) -> str | None:
    """The value equal to `wanted` (case-insensitive) if there, else the first; lower-case."""
    names = [v.strip().lower() for v in values if v.strip()]
    if wanted is not None and wanted.lower() in names:
        return wanted.lower()
    return names[0] if names else None
