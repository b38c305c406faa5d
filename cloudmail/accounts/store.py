"""The address book in SQLite: domains, mailboxes, aliases, catch-all and per-domain settings.

The `insert_*`/`delete_*` functions take a connection and run inside a transaction of the caller
(`Database.transact`), so the admin service can put several of them in one transaction (a CSV
import is all or nothing). `AccountStore` wraps them for single changes and look-ups.

Every address is unique across mailboxes and aliases of its domain: an alias never shadows a
mailbox, and a mailbox never takes an alias's address.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from cloudmail.address import Address
from cloudmail.database import Database, now
from cloudmail.errors import Conflict, NotFound
from cloudmail.interfaces import IAccounts

#: Look-up results kept by `AccountStore` (all dropped at once when full).
LOOKUP_CACHE_SIZE = 10_000

OWNER_TYPES = ("user", "group", "app")
RELAY_TLS_MODES = ("starttls", "tls", "none")


@dataclass(frozen=True)
class RelaySettings:
    """Where a domain's outbound mail is handed on (host None: delivered directly by MX)."""

    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: str = "starttls"


@dataclass(frozen=True)
class DkimKey:
    """A DKIM key besides the domain's main one: `role` "ed25519" signs too (a second
    signature, RFC 8463), "retired" only stays published after a rotation."""

    selector: str
    private_key: str = field(repr=False)
    role: str
    created: str


@dataclass(frozen=True)
class Domain:
    """A mail domain and the settings later parts of the server read."""

    name: str
    created: str
    dkim_selector: str
    dkim_private_key: str | None = field(repr=False)
    relay: RelaySettings
    masquerade: bool
    dkim_keys: tuple[DkimKey, ...] = ()

    @property
    def signing_keys(self) -> list[tuple[str, str]]:
        """(selector, private key PEM) of every key that signs: the main one, then Ed25519."""
        keys = [(self.dkim_selector, self.dkim_private_key)] if self.dkim_private_key else []
        return keys + [(k.selector, k.private_key) for k in self.dkim_keys if k.role == "ed25519"]


@dataclass(frozen=True)
class Mailbox:
    """A mailbox and who owns it: a user, a group (forwards to its members) or an app."""

    address: Address
    owner_type: str
    owner: str
    created: str
    has_app_password: bool = False


@dataclass(frozen=True)
class Alias:
    """Another address that delivers to a mailbox."""

    address: Address
    mailbox: Address
    created: str


def _domain(conn: sqlite3.Connection, row: sqlite3.Row) -> Domain:
    relay = RelaySettings(row["relay_host"], row["relay_port"], row["relay_username"],
                          row["relay_password"], row["relay_tls"])
    keys = tuple(DkimKey(k["selector"], k["private_key"], k["role"], k["created"])
                 for k in conn.execute("SELECT * FROM dkim_keys WHERE domain = ? "
                                       "ORDER BY role, created, selector", (row["name"],)))
    return Domain(row["name"], row["created"], row["dkim_selector"], row["dkim_private_key"], relay,
                  bool(row["masquerade"]), keys)


def _mailbox(row: sqlite3.Row) -> Mailbox:
    return Mailbox(Address(row["local"], row["domain"]), row["owner_type"], row["owner"],
                   row["created"], row["app_password_hash"] is not None)


def _alias(row: sqlite3.Row) -> Alias:
    return Alias(Address(row["local"], row["domain"]),
                 Address(row["mailbox_local"], row["mailbox_domain"]), row["created"])


def find_domain(conn: sqlite3.Connection, name: str) -> Domain | None:
    """The domain's row, or None."""
    row = conn.execute("SELECT * FROM domains WHERE name = ?", (name,)).fetchone()
    return _domain(conn, row) if row is not None else None


def require_domain(conn: sqlite3.Connection, name: str, field_name: str = "domain") -> Domain:
    """The domain's row, or NotFound naming `field_name`."""
    domain = find_domain(conn, name)
    if domain is None:
        raise NotFound(field_name, f"no domain {name!r}")
    return domain


def require_mailbox(conn: sqlite3.Connection, address: Address, field_name: str = "address") -> Mailbox:
    """The mailbox at that address, or NotFound naming `field_name`."""
    row = conn.execute("SELECT * FROM mailboxes WHERE local = ? AND domain = ?",
                       (address.local, address.domain)).fetchone()
    if row is None:
        raise NotFound(field_name, f"no mailbox {address}")
    return _mailbox(row)


def _check_address_free(conn: sqlite3.Connection, address: Address, field_name: str) -> None:
    args = (address.local, address.domain)
    if conn.execute("SELECT 1 FROM mailboxes WHERE local = ? AND domain = ?", args).fetchone():
        raise Conflict(field_name, f"{address} is a mailbox already")
    if conn.execute("SELECT 1 FROM aliases WHERE local = ? AND domain = ?", args).fetchone():
        raise Conflict(field_name, f"{address} is an alias already")


def insert_domain(conn: sqlite3.Connection, name: str, dkim_private_key: str | None) -> Domain:
    """Add a domain; Conflict when it exists."""
    if conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
        raise Conflict("name", f"domain {name!r} exists already")
    conn.execute("INSERT INTO domains (name, created, dkim_private_key) VALUES (?, ?, ?)",
                 (name, now(), dkim_private_key))
    return require_domain(conn, name)


def update_domain(conn: sqlite3.Connection, name: str, changes: dict[str, Any]) -> Domain:
    """Change domain settings; `changes` maps column names to already-validated values."""
    require_domain(conn, name, "name")
    for column, value in changes.items():
        conn.execute(f"UPDATE domains SET {column} = ? WHERE name = ?", (value, name))
    return require_domain(conn, name, "name")


def add_dkim_key(conn: sqlite3.Connection, name: str, selector: str, private_key: str,
                 role: str) -> Domain:
    """Keep another key for the domain; Conflict when the selector is taken."""
    _check_selector_free(require_domain(conn, name, "name"), selector)
    _insert_dkim_key(conn, name, selector, private_key, role)
    return require_domain(conn, name, "name")


def _check_selector_free(domain: Domain, selector: str) -> None:
    if selector == domain.dkim_selector or any(k.selector == selector for k in domain.dkim_keys):
        raise Conflict("selector", f"selector {selector!r} is in use for {domain.name} already")


def _insert_dkim_key(conn: sqlite3.Connection, name: str, selector: str, private_key: str,
                     role: str) -> None:
    conn.execute("INSERT INTO dkim_keys (domain, selector, private_key, role, created) "
                 "VALUES (?, ?, ?, ?, ?)", (name, selector, private_key, role, now()))


def remove_dkim_key(conn: sqlite3.Connection, name: str, selector: str) -> Domain:
    """Drop one of the domain's other keys; NotFound when it has none with that selector."""
    require_domain(conn, name, "name")
    if not conn.execute("DELETE FROM dkim_keys WHERE domain = ? AND selector = ?",
                        (name, selector)).rowcount:
        raise NotFound("selector", f"{name} has no other DKIM key with selector {selector!r}")
    return require_domain(conn, name, "name")


def rotate_dkim_key(conn: sqlite3.Connection, name: str, selector: str,
                    private_key: str) -> Domain:
    """Make (selector, private_key) the main key; the old main key is kept as retired (still
    published, no longer signing) until `remove_dkim_key`."""
    domain = require_domain(conn, name, "name")
    _check_selector_free(domain, selector)
    if domain.dkim_private_key:
        _insert_dkim_key(conn, name, domain.dkim_selector, domain.dkim_private_key, "retired")
    conn.execute("UPDATE domains SET dkim_selector = ?, dkim_private_key = ? WHERE name = ?",
                 (selector, private_key, name))
    return require_domain(conn, name, "name")


def delete_domain(conn: sqlite3.Connection, name: str) -> None:
    """Remove a domain that holds no mailboxes or aliases (mail is never thrown away by accident)."""
    require_domain(conn, name, "name")
    count = conn.execute("SELECT count(*) FROM mailboxes WHERE domain = ?", (name,)).fetchone()[0]
    if count:
        raise Conflict("name", f"domain {name!r} still has {count} mailbox(es); delete them first")
    if conn.execute("SELECT 1 FROM aliases WHERE domain = ?", (name,)).fetchone():
        raise Conflict("name", f"domain {name!r} still has aliases; delete them first")
    conn.execute("DELETE FROM domains WHERE name = ?", (name,))


def insert_mailbox(conn: sqlite3.Connection, address: Address, owner_type: str, owner: str,
                   app_password_hash: str | None = None) -> Mailbox:
    """Add a mailbox in an existing domain; Conflict when the address is taken."""
    require_domain(conn, address.domain, "address")
    _check_address_free(conn, address, "address")
    conn.execute("INSERT INTO mailboxes (local, domain, owner_type, owner, app_password_hash, "
                 "created) VALUES (?, ?, ?, ?, ?, ?)",
                 (address.local, address.domain, owner_type, owner, app_password_hash, now()))
    return require_mailbox(conn, address)


def update_mailbox(conn: sqlite3.Connection, address: Address, changes: dict[str, Any]) -> Mailbox:
    """Change a mailbox's owner or app password hash (validated by the caller)."""
    require_mailbox(conn, address)
    for column, value in changes.items():
        conn.execute(f"UPDATE mailboxes SET {column} = ? WHERE local = ? AND domain = ?",
                     (value, address.local, address.domain))
    return require_mailbox(conn, address)


def delete_mailbox(conn: sqlite3.Connection, address: Address) -> None:
    """Remove a mailbox with its aliases and catch-all entries (its Maildir stays on disk)."""
    require_mailbox(conn, address)
    conn.execute("DELETE FROM mailboxes WHERE local = ? AND domain = ?",
                 (address.local, address.domain))


def insert_alias(conn: sqlite3.Connection, alias: Address, mailbox: Address) -> Alias:
    """Add an alias of an existing mailbox; Conflict when the alias address is taken."""
    require_domain(conn, alias.domain, "address")
    require_mailbox(conn, mailbox, "mailbox")
    _check_address_free(conn, alias, "address")
    conn.execute("INSERT INTO aliases (local, domain, mailbox_local, mailbox_domain, created) "
                 "VALUES (?, ?, ?, ?, ?)",
                 (alias.local, alias.domain, mailbox.local, mailbox.domain, now()))
    row = conn.execute("SELECT * FROM aliases WHERE local = ? AND domain = ?",
                       (alias.local, alias.domain)).fetchone()
    return _alias(row)


def delete_alias(conn: sqlite3.Connection, alias: Address) -> None:
    """Remove an alias."""
    if conn.execute("DELETE FROM aliases WHERE local = ? AND domain = ?",
                    (alias.local, alias.domain)).rowcount == 0:
        raise NotFound("address", f"no alias {alias}")


def set_catchall(conn: sqlite3.Connection, domain: str, mailboxes: list[Address]) -> list[Address]:
    """Replace the domain's catch-all list (empty: mail to unknown addresses is rejected)."""
    require_domain(conn, domain)
    for mailbox in mailboxes:
        require_mailbox(conn, mailbox, "mailboxes")
    conn.execute("DELETE FROM catchall WHERE domain = ?", (domain,))
    for mailbox in dict.fromkeys(mailboxes):
        conn.execute("INSERT INTO catchall (domain, mailbox_local, mailbox_domain) VALUES (?, ?, ?)",
                     (domain, mailbox.local, mailbox.domain))
    return get_catchall(conn, domain)


def get_catchall(conn: sqlite3.Connection, domain: str) -> list[Address]:
    """The mailboxes that get a domain's mail for unknown addresses."""
    require_domain(conn, domain)
    rows = conn.execute("SELECT mailbox_local, mailbox_domain FROM catchall WHERE domain = ? "
                        "ORDER BY mailbox_domain, mailbox_local", (domain,))
    return [Address(r[0], r[1]) for r in rows]


@implementer(IAccounts)
class AccountStore:
    """Look-ups and single changes of the address book, each one transaction in the db thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[tuple[Any, ...], tuple[int, Any]] = {}

    def _cached(self, key: tuple[Any, ...], fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """`db.transact(fn, *args)`, answered from memory while the database has not changed.

        Routing asks these look-ups for every RCPT; a hit saves a trip to the db thread. An
        entry is only used while `db.generation` is the one read before its look-up began, so
        any commit (ours at once, another process's within the service's check interval) makes
        every entry stale. Values are immutable (frozen dataclasses, tuples)."""
        generation = self.db.generation
        hit = self._cache.get(key)
        if hit is not None and hit[0] == generation:
            return succeed(hit[1])

        def keep(value: Any) -> Any:
            if len(self._cache) >= LOOKUP_CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = (generation, value)
            return value
        return self.db.transact(fn, *args).addCallback(keep)

    def get_domain(self, name: str):
        def found(domain: Domain | None) -> Domain:
            if domain is None:
                raise NotFound("name", f"no domain {name!r}")
            return domain
        return self._cached(("domain", name), find_domain, name).addCallback(found)

    def list_domains(self):
        return self.db.transact(lambda c: [_domain(c, r) for r in c.execute(
            "SELECT * FROM domains ORDER BY name").fetchall()])

    def get_mailbox(self, address: Address):
        return self.db.transact(require_mailbox, address)

    def find_mailbox(self, address: Address):
        def find(conn: sqlite3.Connection) -> Mailbox | None:
            row = conn.execute("SELECT * FROM mailboxes WHERE local = ? AND domain = ?",
                               (address.local, address.domain)).fetchone()
            return _mailbox(row) if row else None
        return self._cached(("mailbox", address), find)

    def app_password_hash(self, address: Address):
        return self.db.transact(lambda c: (c.execute(
            "SELECT app_password_hash FROM mailboxes WHERE local = ? AND domain = ?",
            (address.local, address.domain)).fetchone() or [None])[0])

    def list_mailboxes(self, domain: str | None = None, owner_type: str | None = None,
                       owner: str | None = None):
        def select(conn: sqlite3.Connection) -> list[Mailbox]:
            where, args = [], []
            for column, value in (("domain", domain), ("owner_type", owner_type), ("owner", owner)):
                if value is not None:
                    where.append(f"{column} = ?")
                    args.append(value)
            sql = "SELECT * FROM mailboxes"
            if where:
                sql += " WHERE " + " AND ".join(where)
            return [_mailbox(r) for r in conn.execute(sql + " ORDER BY domain, local", args)]
        return self.db.transact(select)

    def list_aliases(self, domain: str | None = None, mailbox: Address | None = None):
        def select(conn: sqlite3.Connection) -> list[Alias]:
            if mailbox is not None:
                require_mailbox(conn, mailbox, "mailbox")
                rows = conn.execute("SELECT * FROM aliases WHERE mailbox_local = ? AND "
                                    "mailbox_domain = ? ORDER BY domain, local",
                                    (mailbox.local, mailbox.domain))
            elif domain is not None:
                rows = conn.execute("SELECT * FROM aliases WHERE domain = ? ORDER BY local", (domain,))
            else:
                rows = conn.execute("SELECT * FROM aliases ORDER BY domain, local")
            return [_alias(r) for r in rows]
        return self.db.transact(select)

    def find_alias(self, address: Address):
        """Fire with the mailbox `Address` the alias at `address` delivers to, or None."""
        def find(conn: sqlite3.Connection) -> Address | None:
            row = conn.execute("SELECT mailbox_local, mailbox_domain FROM aliases "
                               "WHERE local = ? AND domain = ?",
                               (address.local, address.domain)).fetchone()
            return Address(row[0], row[1]) if row else None
        return self._cached(("alias", address), find)

    def get_catchall(self, domain: str):
        return self._cached(("catchall", domain),
                            lambda conn: tuple(get_catchall(conn, domain))).addCallback(list)
