"""The one service layer behind the admin API and `cloudmail-admin`.

Both front ends hand plain values (as parsed from JSON or from the command line) to these methods
and get JSON-ready dicts back, or a `ServiceError` naming the field that is wrong. Every rule of
the address book is checked here (or below, in the store), so no rule is written twice.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from cloudmail.accounts import dkimkeys, store
from cloudmail.accounts.store import AccountStore, Alias, Domain, Mailbox
from cloudmail.address import Address, AddressError, normalize_domain, parse_address
from cloudmail.directory import passwords
from cloudmail.directory.builtin import check_new_password, check_username, insert_user
from cloudmail.errors import BadRequest, Conflict, Invalid, NotFound, ReadOnlyDirectory, ServiceError
from cloudmail.interfaces import Group, IDirectory, IDirectoryAdmin, User
from cloudmail.threads import ThreadPools

_SELECTOR = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\[[0-9A-Fa-f:.]+\]$")
#: The date suffix `rotate_dkim` gives new selectors ("-20250501", "-20250501-2"), taken off
#: the old selector before a new one is made, so selectors do not grow with every rotation.
_DATED = re.compile(r"-\d{8}(-\d+)?$")
ED25519_SUFFIX = "-ed25519"
DKIM_ALGORITHMS = ("rsa", "ed25519")


def text(value: Any, field: str, *, optional: bool = False) -> str | None:
    """A string field; None allowed only when `optional`."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadRequest(field, "must be a string")
    return value


def flag(value: Any, field: str) -> bool:
    """A boolean field (JSON true/false)."""
    if not isinstance(value, bool):
        raise BadRequest(field, "must be true or false")
    return value


def domain_name(value: Any, field: str = "name") -> str:
    """A domain name in its stored form."""
    try:
        return normalize_domain(text(value, field))
    except AddressError as e:
        raise Invalid(field, str(e))


def address(value: Any, field: str = "address", *, app: bool | None = False) -> Address:
    """A mailbox or alias address checked against the naming rules."""
    try:
        return parse_address(text(value, field), app=app)
    except AddressError as e:
        raise Invalid(field, str(e))


def lookup_address(value: Any, field: str = "address") -> Address:
    """An address to look something up by; a malformed one cannot exist, so it is NotFound."""
    try:
        return parse_address(text(value, field), app=None)
    except AddressError:
        raise NotFound(field, f"no such address {value!r}")


def dkim_selector(value: Any, field: str = "selector") -> str:
    """A DKIM selector (one DNS label), lower-cased."""
    chosen = text(value, field).lower()
    if not _SELECTOR.match(chosen):
        raise Invalid(field, f"{value!r} is not a DNS label (a-z, 0-9 and -, at most 63)")
    return chosen


def next_selector(old: str, taken: set[str], today: datetime | None = None) -> str:
    """The selector a rotation gives the new key when none is asked for: the old one without
    its date suffix, then "-YYYYMMDD" (UTC), then "-2", "-3"... while that is taken.
    "cloudmail" → "cloudmail-20250501"; "cloudmail-20250501" → "cloudmail-20250612"."""
    base = _DATED.sub("", old)
    stamp = (today or datetime.now(timezone.utc)).strftime("%Y%m%d")
    n = 1
    while True:
        suffix = f"-{stamp}" + (f"-{n}" if n > 1 else "")
        candidate = base[:63 - len(suffix)].rstrip("-") + suffix
        if candidate not in taken:
            return candidate
        n += 1


def dkim_key_json(domain: str, selector: str, pem: str, role: str,
                  created: str | None) -> dict[str, Any]:
    """One published DKIM key: where its TXT record goes, the record, and what it does."""
    return {"selector": selector, "record_name": f"{selector}._domainkey.{domain}",
            "record": dkimkeys.dns_record(pem), "algorithm": dkimkeys.algorithm(pem),
            "role": role, "created": created}


def domain_json(d: Domain) -> dict[str, Any]:
    """A domain as the API shows it (secrets left out, the DKIM TXT records added).

    `dkim.selector`/`record_name`/`record` are the main key's; `dkim.keys` lists every key to
    publish: the main one (role "main", signs), the Ed25519 one ("ed25519", signs too) and the
    retired ones ("retired": published, no longer signing). A key's `created` is when it took
    its role (a retired key's: when it was retired); the main key's is not recorded (null)."""
    keys = [dkim_key_json(d.name, d.dkim_selector, d.dkim_private_key, "main", None)] \
        if d.dkim_private_key else []
    keys += [dkim_key_json(d.name, k.selector, k.private_key, k.role, k.created)
             for k in d.dkim_keys]
    return {
        "name": d.name,
        "created": d.created,
        "dkim": {
            "selector": d.dkim_selector,
            "record_name": f"{d.dkim_selector}._domainkey.{d.name}",
            "record": dkimkeys.dns_record(d.dkim_private_key) if d.dkim_private_key else None,
            "keys": keys,
        },
        "relay": {
            "host": d.relay.host, "port": d.relay.port, "username": d.relay.username,
            "password_set": d.relay.password is not None, "tls": d.relay.tls,
        },
        "masquerade": d.masquerade,
    }


def mailbox_json(m: Mailbox, aliases: list[Alias] | None = None) -> dict[str, Any]:
    """A mailbox as the API shows it."""
    out: dict[str, Any] = {"address": str(m.address), "owner_type": m.owner_type, "owner": m.owner,
                           "created": m.created}
    if aliases is not None:
        out["aliases"] = [str(a.address) for a in aliases]
    return out


def alias_json(a: Alias) -> dict[str, Any]:
    """An alias as the API shows it."""
    return {"address": str(a.address), "mailbox": str(a.mailbox), "created": a.created}


def user_json(u: User) -> dict[str, Any]:
    """A user as the API shows it."""
    return {"username": u.username, "display_name": u.display_name, "emails": list(u.emails)}


def group_json(g: Group) -> dict[str, Any]:
    """A group as the API shows it."""
    return {"name": g.name, "members": list(g.members)}


@dataclass(frozen=True)
class ImportRow:
    """One user of a bulk import: a password or a hash, and the addresses (mailbox first)."""

    line: int
    username: str
    password: str | None
    password_hash: str | None
    display_name: str
    mailboxes: tuple[str, ...]
    aliases: tuple[str, ...]


class AdminService:
    """Domains, users, groups, mailboxes, aliases and catch-all: checked, then stored."""

    def __init__(self, accounts: AccountStore, directory: IDirectory, pools: ThreadPools) -> None:
        self.accounts = accounts
        self.directory = directory
        self.pools = pools

    def _transact(self, fn: Callable[..., Any], *args: Any):
        return self.accounts.db.transact(fn, *args)

    def _writable_directory(self) -> IDirectoryAdmin:
        if not self.directory.writable:
            raise ReadOnlyDirectory(None, "users and groups come from LDAP; change them there")
        return IDirectoryAdmin(self.directory)

    # Domains

    async def list_domains(self) -> list[dict[str, Any]]:
        return [domain_json(d) for d in await self.accounts.list_domains()]

    async def get_domain(self, name: Any) -> dict[str, Any]:
        return domain_json(await self.accounts.get_domain(self._known_domain(name)))

    @staticmethod
    def _known_domain(name: Any, field: str = "name") -> str:
        try:
            return normalize_domain(text(name, field))
        except AddressError:
            raise NotFound(field, f"no domain {name!r}")

    async def add_domain(self, name: Any) -> dict[str, Any]:
        domain = domain_name(name)
        key = await self.pools.run("auth", dkimkeys.generate_private_key)
        return domain_json(await self._transact(store.insert_domain, domain, key))

    async def update_domain(self, name: Any, changes: dict[str, Any]) -> dict[str, Any]:
        """Change `dkim_selector`, `dkim_private_key`, `dkim_ed25519`, `relay` (object or null)
        or `masquerade`, all in one transaction.

        `dkim_ed25519: true` makes an Ed25519 key that signs next to the main one (RFC 8463),
        under the selector "<main selector>-ed25519" (409 when that is taken); false removes it.
        Both are no-ops when already so. A new `dkim_selector` renames the main key only (409
        when another key of the domain has it): the Ed25519 key keeps its selector, because its
        record is published under that name already."""
        domain = self._known_domain(name)
        columns: dict[str, Any] = {}
        ed25519: bool | None = None
        for key, value in changes.items():
            if key == "dkim_selector":
                columns["dkim_selector"] = dkim_selector(value, key)
            elif key == "dkim_ed25519":
                ed25519 = flag(value, key)
            elif key == "dkim_private_key":
                try:
                    dkimkeys.load_private_key(text(value, key))
                except dkimkeys.DkimKeyError as e:
                    raise Invalid(key, str(e))
                columns["dkim_private_key"] = value
            elif key == "masquerade":
                columns["masquerade"] = int(flag(value, key))
            elif key == "relay":
                columns.update(self._relay_columns(value))
            else:
                raise Invalid(key, "unknown setting (dkim_selector, dkim_private_key, "
                                   "dkim_ed25519, relay, masquerade)")
        ed_pem = (await self.pools.run("auth", dkimkeys.generate_ed25519_private_key)
                  if ed25519 else None)

        def write(conn: sqlite3.Connection) -> Domain:
            before = store.require_domain(conn, domain, "name")
            new_selector = columns.get("dkim_selector", before.dkim_selector)
            if any(k.selector == new_selector for k in before.dkim_keys):
                raise Conflict("dkim_selector", f"selector {new_selector!r} is in use for "
                                                f"another DKIM key of {domain}")
            after = store.update_domain(conn, domain, columns)
            current = [k for k in after.dkim_keys if k.role == "ed25519"]
            if ed25519 is False:
                for k in current:
                    store.remove_dkim_key(conn, domain, k.selector)
            elif ed25519 and not current:
                ed_selector = after.dkim_selector + ED25519_SUFFIX
                if not _SELECTOR.match(ed_selector):
                    raise Invalid("dkim_ed25519", f"{ed_selector!r} would be too long for a "
                                                  "selector; choose a shorter dkim_selector")
                try:
                    store.add_dkim_key(conn, domain, ed_selector, ed_pem, "ed25519")
                except Conflict as e:
                    raise Conflict("dkim_ed25519", e.message)
            return store.require_domain(conn, domain, "name")
        return domain_json(await self._transact(write))

    async def rotate_dkim(self, name: Any, selector: Any = None,
                          algorithm: Any = "rsa") -> dict[str, Any]:
        """Replace a signing key by a new one, keeping the old one published as retired (so
        mail signed with it still verifies) until `remove_dkim_key`.

        "rsa" makes a new RSA 2048 main key; "ed25519" a new Ed25519 key in place of the
        domain's Ed25519 one (422 naming `algorithm` when it has none). The new key's selector is
        `selector`, else `next_selector` of the old one (409 naming `selector` when taken)."""
        domain = self._known_domain(name)
        kind = text(algorithm, "algorithm")
        if kind not in DKIM_ALGORITHMS:
            raise Invalid("algorithm", f"must be one of {', '.join(DKIM_ALGORITHMS)}")
        chosen = dkim_selector(selector) if selector is not None else None
        pem = await self.pools.run("auth", dkimkeys.generate_private_key if kind == "rsa"
                                   else dkimkeys.generate_ed25519_private_key)

        def write(conn: sqlite3.Connection) -> Domain:
            d = store.require_domain(conn, domain, "name")
            taken = {d.dkim_selector} | {k.selector for k in d.dkim_keys}
            if chosen in taken:
                raise Conflict("selector", f"selector {chosen!r} is in use for {domain} already")
            if kind == "rsa":
                return store.rotate_dkim_key(conn, domain, chosen or next_selector(
                    d.dkim_selector, taken), pem)
            old = next((k for k in d.dkim_keys if k.role == "ed25519"), None)
            if old is None:
                raise Invalid("algorithm", f"{domain} has no Ed25519 key to rotate (set "
                                           "dkim_ed25519 to make one)")
            store.remove_dkim_key(conn, domain, old.selector)
            store.add_dkim_key(conn, domain, old.selector, old.private_key, "retired")
            return store.add_dkim_key(conn, domain, chosen or next_selector(old.selector, taken),
                                      pem, "ed25519")
        return domain_json(await self._transact(write))

    async def remove_dkim_key(self, name: Any, selector: Any) -> dict[str, Any]:
        """Stop publishing a retired key (or drop the Ed25519 one); the main key cannot be
        removed (422 naming `selector`): rotate first, then remove it once retired."""
        domain = self._known_domain(name)
        chosen = text(selector, "selector").lower()

        def write(conn: sqlite3.Connection) -> Domain:
            d = store.require_domain(conn, domain, "name")
            if chosen == d.dkim_selector:
                raise Invalid("selector", f"{chosen!r} is the main key of {domain}, which signs "
                                          "its mail; rotate to a new key first, then remove "
                                          "this one once it is retired")
            return store.remove_dkim_key(conn, domain, chosen)
        return domain_json(await self._transact(write))

    @staticmethod
    def _relay_columns(value: Any) -> dict[str, Any]:
        """The relay columns from the API's `relay` object: a `provider` preset fills in host and
        port (Amazon SES's with `region`), which may still be given; `custom` or none needs a
        host."""
        from cloudmail.queue.relay import DEFAULT_SES_REGION, PROVIDERS, preset

        if value is None:
            return {"relay_host": None, "relay_port": None, "relay_username": None,
                    "relay_password": None, "relay_tls": "starttls"}
        if not isinstance(value, dict):
            raise BadRequest("relay", "must be an object or null")
        unknown = set(value) - {"provider", "region", "host", "port", "username", "password",
                                "tls"}
        if unknown:
            raise Invalid(f"relay.{sorted(unknown)[0]}", "unknown key")
        provider = text(value.get("provider", "custom"), "relay.provider")
        if provider not in PROVIDERS:
            raise Invalid("relay.provider", f"must be one of {', '.join(PROVIDERS)}, "
                                            f"not {provider!r}")
        region = text(value.get("region"), "relay.region", optional=True)
        if region is not None and provider != "amazon-ses":
            raise Invalid("relay.region", "is only for the provider amazon-ses")
        if region is not None and not _SELECTOR.match(region):
            raise Invalid("relay.region", f"{region!r} is not a region name (like us-east-1)")
        preset_host, preset_port = (None, None) if provider == "custom" else \
            preset(provider, region or DEFAULT_SES_REGION)
        if "host" not in value and preset_host is None:
            raise Invalid("relay.host", "is required (or a provider preset)")
        host = text(value.get("host", preset_host), "relay.host")
        if not _HOST.match(host):
            raise Invalid("relay.host", f"{host!r} is not a host name or [address]")
        tls = text(value.get("tls", "starttls"), "relay.tls")
        if tls not in store.RELAY_TLS_MODES:
            raise Invalid("relay.tls", f"must be one of {', '.join(store.RELAY_TLS_MODES)}")
        default_port = preset_port if preset_port is not None and tls != "tls" else \
            465 if tls == "tls" else 587
        port = value.get("port", default_port)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise Invalid("relay.port", "must be a port number from 1 to 65535")
        username = text(value.get("username"), "relay.username", optional=True)
        password = text(value.get("password"), "relay.password", optional=True)
        if (username is None) != (password is None):
            raise Invalid("relay.password" if password is None else "relay.username",
                          "username and password go together")
        return {"relay_host": host, "relay_port": port, "relay_username": username,
                "relay_password": password, "relay_tls": tls}

    async def delete_domain(self, name: Any) -> None:
        await self._transact(store.delete_domain, self._known_domain(name))

    async def get_catchall(self, domain: Any) -> dict[str, Any]:
        name = self._known_domain(domain, "domain")
        mailboxes = await self.accounts.get_catchall(name)
        return {"domain": name, "mailboxes": [str(m) for m in mailboxes]}

    async def set_catchall(self, domain: Any, mailboxes: Any) -> dict[str, Any]:
        name = self._known_domain(domain, "domain")
        if not isinstance(mailboxes, list):
            raise BadRequest("mailboxes", "must be a list of mailbox addresses")
        targets = [lookup_address(m, "mailboxes") for m in mailboxes]
        result = await self._transact(store.set_catchall, name, targets)
        return {"domain": name, "mailboxes": [str(m) for m in result]}

    # Users and groups

    async def list_users(self) -> list[dict[str, Any]]:
        return [user_json(u) for u in await self.directory.list_users()]

    async def get_user(self, username: Any) -> dict[str, Any]:
        name = text(username, "username").lower()
        user = await self.directory.get_user(name)
        if user is None:
            raise NotFound("username", f"no user {name!r}")
        out = user_json(user)
        mailboxes = await self.accounts.list_mailboxes(owner_type="user", owner=user.username)
        out["mailboxes"] = [str(m.address) for m in mailboxes]
        return out

    async def add_user(self, username: Any, password: Any = None, password_hash: Any = None,
                       display_name: Any = "") -> dict[str, Any]:
        directory = self._writable_directory()
        user = await directory.create_user(
            text(username, "username"), text(password, "password", optional=True),
            text(password_hash, "password_hash", optional=True),
            text(display_name, "display_name"))
        return user_json(user)

    async def update_user(self, username: Any, password: Any = None,
                          display_name: Any = None) -> dict[str, Any]:
        directory = self._writable_directory()
        user = await directory.update_user(text(username, "username"),
                                           text(password, "password", optional=True),
                                           text(display_name, "display_name", optional=True))
        return user_json(user)

    async def delete_user(self, username: Any) -> None:
        await self._writable_directory().delete_user(text(username, "username"))

    async def list_groups(self) -> list[dict[str, Any]]:
        return [group_json(g) for g in await self.directory.list_groups()]

    async def get_group(self, name: Any) -> dict[str, Any]:
        group = await self.directory.get_group(text(name, "name").lower())
        if group is None:
            raise NotFound("name", f"no group {name!r}")
        out = group_json(group)
        mailboxes = await self.accounts.list_mailboxes(owner_type="group", owner=group.name)
        out["mailboxes"] = [str(m.address) for m in mailboxes]
        return out

    async def add_group(self, name: Any, members: Any = ()) -> dict[str, Any]:
        """Add a group; given an address, also the group mailbox that forwards to its members."""
        directory = self._writable_directory()
        if not isinstance(members, (list, tuple)):
            raise BadRequest("members", "must be a list of usernames")
        names = [text(m, "members") for m in members]
        raw = text(name, "name")
        if "@" not in raw:
            return group_json(await directory.create_group(raw, names))
        mailbox = address(raw, "name")
        await self._transact(store.require_domain, mailbox.domain, "name")
        group = await directory.create_group(mailbox.local, names)
        try:
            await self._transact(store.insert_mailbox, mailbox, "group", group.name)
        except ServiceError:
            await directory.delete_group(group.name)
            raise
        return await self.get_group(group.name)

    async def delete_group(self, name: Any) -> None:
        await self._writable_directory().delete_group(text(name, "name"))

    async def add_member(self, name: Any, username: Any) -> dict[str, Any]:
        group = await self._writable_directory().add_member(text(name, "name"),
                                                            text(username, "username"))
        return group_json(group)

    async def remove_member(self, name: Any, username: Any) -> dict[str, Any]:
        group = await self._writable_directory().remove_member(text(name, "name"),
                                                               text(username, "username"))
        return group_json(group)

    # Mailboxes and aliases

    async def list_mailboxes(self, domain: Any = None, owner: Any = None) -> list[dict[str, Any]]:
        name = self._known_domain(domain, "domain") if domain is not None else None
        owner_name = text(owner, "owner", optional=True)
        mailboxes = await self.accounts.list_mailboxes(domain=name, owner=owner_name)
        return [mailbox_json(m) for m in mailboxes]

    async def get_mailbox(self, addr: Any) -> dict[str, Any]:
        mailbox = await self.accounts.get_mailbox(lookup_address(addr))
        return mailbox_json(mailbox, await self.accounts.list_aliases(mailbox=mailbox.address))

    async def _check_owner(self, owner_type: str, owner: str) -> str:
        if owner_type == "user":
            user = await self.directory.get_user(owner)
            if user is None:
                raise NotFound("owner", f"no user {owner!r}")
            return user.username
        group = await self.directory.get_group(owner)
        if group is None:
            raise NotFound("owner", f"no group {owner!r}")
        return group.name

    async def add_mailbox(self, addr: Any, owner: Any = None,
                          owner_type: Any = "user") -> dict[str, Any]:
        """Add a mailbox of a user or group; an app mailbox gets a password, shown only now."""
        kind = text(owner_type, "owner_type")
        if kind not in store.OWNER_TYPES:
            raise Invalid("owner_type", f"must be one of {', '.join(store.OWNER_TYPES)}")
        mailbox = address(addr, app=kind == "app")
        if kind == "app":
            if owner is not None:
                raise Invalid("owner", "an app mailbox has no owner")
            password = secrets.token_urlsafe(24)
            hashed = await self.pools.run("auth", passwords.hash_password, password)
            created = await self._transact(store.insert_mailbox, mailbox, "app", mailbox.local,
                                           hashed)
            return {**mailbox_json(created), "password": password}
        owner_name = await self._check_owner(kind, text(owner, "owner").lower())
        created = await self._transact(store.insert_mailbox, mailbox, kind, owner_name)
        return mailbox_json(created)

    async def update_mailbox(self, addr: Any, changes: dict[str, Any]) -> dict[str, Any]:
        """Give a mailbox another owner (`owner`, `owner_type`) or a new app password."""
        mailbox = await self.accounts.get_mailbox(lookup_address(addr))
        unknown = set(changes) - {"owner", "owner_type", "reset_app_password"}
        if unknown:
            raise Invalid(sorted(unknown)[0], "unknown field (owner, owner_type, reset_app_password)")
        columns: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if changes.get("reset_app_password") is not None:
            if not flag(changes["reset_app_password"], "reset_app_password"):
                raise Invalid("reset_app_password", "only true makes sense here")
            if mailbox.owner_type != "app":
                raise Invalid("reset_app_password", f"{mailbox.address} is not an app mailbox")
            extra["password"] = secrets.token_urlsafe(24)
            columns["app_password_hash"] = await self.pools.run("auth", passwords.hash_password,
                                                                extra["password"])
        if "owner" in changes or "owner_type" in changes:
            if mailbox.owner_type == "app":
                raise Invalid("owner", "an app mailbox has no owner")
            kind = text(changes.get("owner_type", mailbox.owner_type), "owner_type")
            if kind not in ("user", "group"):
                raise Invalid("owner_type", "must be user or group")
            columns["owner_type"] = kind
            columns["owner"] = await self._check_owner(
                kind, text(changes.get("owner", mailbox.owner), "owner").lower())
        updated = await self._transact(store.update_mailbox, mailbox.address, columns)
        return {**mailbox_json(updated), **extra}

    async def delete_mailbox(self, addr: Any) -> None:
        await self._transact(store.delete_mailbox, lookup_address(addr))

    async def list_aliases(self, domain: Any = None, mailbox: Any = None) -> list[dict[str, Any]]:
        name = self._known_domain(domain, "domain") if domain is not None else None
        target = lookup_address(mailbox, "mailbox") if mailbox is not None else None
        return [alias_json(a) for a in await self.accounts.list_aliases(domain=name, mailbox=target)]

    async def add_alias(self, addr: Any, mailbox: Any) -> dict[str, Any]:
        """Add an alias; its address may not be a mailbox or alias already, nor a group's name."""
        alias = address(addr)
        target = lookup_address(mailbox, "mailbox")
        if await self.directory.get_group(alias.local) is not None:
            raise Conflict("address", f"{alias.local!r} is the name of a group")
        return alias_json(await self._transact(store.insert_alias, alias, target))

    async def delete_alias(self, addr: Any) -> None:
        await self._transact(store.delete_alias, lookup_address(addr))

    # Bulk import

    async def import_users(self, rows: list[ImportRow],
                           progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
        """Create users with their mailboxes and aliases in one transaction: all rows or none.

        Every row is checked first (naming its line), then the passwords are hashed in the `auth`
        pool, then everything is written at once. `progress(n)` is called as hashes finish.
        """
        self._writable_directory()
        checked = [self._check_import_row(row) for row in rows]
        groups = {g.name for g in await self.directory.list_groups()}
        for row, (_, _, aliases) in zip(rows, checked):
            for alias in aliases:
                if alias.local in groups:
                    raise Conflict("aliases", f"line {row.line}: {alias.local!r} is the name of "
                                              "a group")
        hashes = []
        for row in rows:
            if row.password is not None:
                hashes.append(self.pools.run("auth", passwords.hash_password, row.password))
            else:
                hashes.append(None)
        done_hashes = []
        for d in hashes:
            done_hashes.append(await d if d is not None else None)
            progress(1)
        final = [h if h is not None else row.password_hash for h, row in zip(done_hashes, rows)]

        def write(conn: sqlite3.Connection) -> dict[str, int]:
            counts = {"users": 0, "mailboxes": 0, "aliases": 0}
            for row, (username, mailboxes, aliases), password_hash in zip(rows, checked, final):
                try:
                    insert_user(conn, username, password_hash, row.display_name)
                    counts["users"] += 1
                    for mailbox in mailboxes:
                        store.insert_mailbox(conn, mailbox, "user", username)
                        counts["mailboxes"] += 1
                    for alias in aliases:
                        store.insert_alias(conn, alias, mailboxes[0])
                        counts["aliases"] += 1
                except ServiceError as e:
                    raise type(e)(e.field, f"line {row.line}: {e.message}")
            return counts
        return await self._transact(write)

    @staticmethod
    def _check_import_row(row: ImportRow) -> tuple[str, list[Address], list[Address]]:
        try:
            username = check_username(row.username)
            check_new_password(row.password, row.password_hash)
            if not row.mailboxes:
                raise Invalid("mailboxes", "at least one mailbox address is needed")
            mailboxes = [address(a, "mailboxes") for a in row.mailboxes]
            aliases = [address(a, "aliases") for a in row.aliases]
        except ServiceError as e:
            raise type(e)(e.field, f"line {row.line}: {e.message}")
        return username, mailboxes, aliases
