"""The built-in directory: users, password hashes and groups in the store's SQLite file.

The default when there is no LDAP server. Hashing runs in the `auth` thread pool and SQL in the
`db` thread, so a burst of logins never stalls the reactor.
"""

from __future__ import annotations

import sqlite3

from twisted.logger import Logger
from zope.interface import implementer

from cloudmail.address import AddressError, validate_username
from cloudmail.database import Database, now
from cloudmail.directory import passwords
from cloudmail.errors import AuthenticationFailed, Conflict, Invalid, NotFound
from cloudmail.interfaces import Group, IDirectory, IDirectoryAdmin, User
from cloudmail.threads import ThreadPools

MIN_PASSWORD_LENGTH = 8
log = Logger()


def check_username(name: str, field: str = "username") -> str:
    """A valid user or group name, lower-case; Invalid naming `field` otherwise."""
    try:
        return validate_username(name)
    except AddressError as e:
        raise Invalid(field, str(e))


def check_new_password(password: str | None, password_hash: str | None) -> None:
    """Exactly one of a password (long enough) or a hash (of a format we can check)."""
    if (password is None) == (password_hash is None):
        raise Invalid("password", "give either a password or a password hash")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid("password", f"must be at least {MIN_PASSWORD_LENGTH} characters")
    if password_hash is not None and passwords.hash_format(password_hash) is None:
        raise Invalid("password_hash", "not a supported hash (argon2, bcrypt, {SSHA}, {SSHA256}, "
                                       "{SSHA512})")


def _user(row: sqlite3.Row) -> User:
    return User(username=row["username"], display_name=row["display_name"])


def _members(conn: sqlite3.Connection, name: str) -> tuple[str, ...]:
    rows = conn.execute("SELECT username FROM group_members WHERE group_name = ? ORDER BY username",
                        (name,))
    return tuple(r[0] for r in rows)


def insert_user(conn: sqlite3.Connection, username: str, password_hash: str,
                display_name: str) -> None:
    """Add a user row; Conflict when the name is taken by a user or a group."""
    if conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
        raise Conflict("username", f"user {username!r} exists already")
    if conn.execute("SELECT 1 FROM groups WHERE name = ?", (username,)).fetchone():
        raise Conflict("username", f"{username!r} is the name of a group")
    conn.execute("INSERT INTO users (username, password_hash, display_name, created) "
                 "VALUES (?, ?, ?, ?)", (username, password_hash, display_name, now()))


@implementer(IDirectory, IDirectoryAdmin)
class BuiltinDirectory:
    """Users and groups kept in our own store."""

    writable = True

    def __init__(self, db: Database, pools: ThreadPools) -> None:
        self._db = db
        self._pools = pools

    async def authenticate(self, username: str, password: str) -> User:
        """Check the password; AuthenticationFailed for a wrong name or password alike."""
        name = username.lower()
        row = await self._db.transact(
            lambda c: c.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone())
        if row is None or not password:
            await self._pools.run("auth", passwords.burn_time, password)
            raise AuthenticationFailed()
        stored = row["password_hash"]
        if not await self._pools.run("auth", passwords.verify_password, stored, password):
            raise AuthenticationFailed()
        if passwords.needs_rehash(stored):
            fresh = await self._pools.run("auth", passwords.hash_password, password)
            await self._db.transact(lambda c: c.execute(
                "UPDATE users SET password_hash = ? WHERE username = ? AND password_hash = ?",
                (fresh, name, stored)))
            log.info("rehashed the password of {username} with argon2id", username=name)
        return _user(row)

    async def check(self) -> None:
        """The built-in directory answers whenever the store does."""
        await self._db.transact(lambda c: c.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        """Nothing to let go of: the store closes on its own."""

    async def get_user(self, username: str) -> User | None:
        row = await self._db.transact(lambda c: c.execute(
            "SELECT * FROM users WHERE username = ?", (username.lower(),)).fetchone())
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        rows = await self._db.transact(
            lambda c: c.execute("SELECT * FROM users ORDER BY username").fetchall())
        return [_user(r) for r in rows]

    async def get_group(self, name: str) -> Group | None:
        def get(conn: sqlite3.Connection) -> Group | None:
            row = conn.execute("SELECT name FROM groups WHERE name = ?", (name.lower(),)).fetchone()
            return Group(row[0], _members(conn, row[0])) if row else None
        return await self._db.transact(get)

    async def list_groups(self) -> list[Group]:
        def groups(conn: sqlite3.Connection) -> list[Group]:
            names = [r[0] for r in conn.execute("SELECT name FROM groups ORDER BY name")]
            return [Group(n, _members(conn, n)) for n in names]
        return await self._db.transact(groups)

    async def group_members(self, name: str) -> list[str]:
        group = await self.get_group(name)
        return list(group.members) if group else []

    async def create_user(self, username: str, password: str | None, password_hash: str | None,
                          display_name: str = "") -> User:
        name = check_username(username)
        check_new_password(password, password_hash)
        if password is not None:
            password_hash = await self._pools.run("auth", passwords.hash_password, password)
        await self._db.transact(insert_user, name, password_hash, display_name)
        return User(name, display_name)

    async def update_user(self, username: str, password: str | None = None,
                          display_name: str | None = None) -> User:
        name = username.lower()
        new_hash = None
        if password is not None:
            check_new_password(password, None)
            new_hash = await self._pools.run("auth", passwords.hash_password, password)

        def update(conn: sqlite3.Connection) -> User:
            if not conn.execute("SELECT 1 FROM users WHERE username = ?", (name,)).fetchone():
                raise NotFound("username", f"no user {name!r}")
            if new_hash is not None:
                conn.execute("UPDATE users SET password_hash = ? WHERE username = ?", (new_hash, name))
            if display_name is not None:
                conn.execute("UPDATE users SET display_name = ? WHERE username = ?",
                             (display_name, name))
            return _user(conn.execute("SELECT * FROM users WHERE username = ?", (name,)).fetchone())
        return await self._db.transact(update)

    async def delete_user(self, username: str) -> None:
        name = username.lower()

        def delete(conn: sqlite3.Connection) -> None:
            owned = conn.execute("SELECT local || '@' || domain FROM mailboxes WHERE owner_type = "
                                 "'user' AND owner = ? ORDER BY domain, local", (name,)).fetchall()
            if owned:
                raise Conflict("username", f"user {name!r} owns mailboxes "
                                           f"({', '.join(r[0] for r in owned)}); delete them first")
            if conn.execute("DELETE FROM users WHERE username = ?", (name,)).rowcount == 0:
                raise NotFound("username", f"no user {name!r}")
        await self._db.transact(delete)

    async def create_group(self, name: str, members: list[str]) -> Group:
        group = check_username(name, "name")
        usernames = sorted({m.lower() for m in members})

        def create(conn: sqlite3.Connection) -> Group:
            if conn.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone():
                raise Conflict("name", f"group {group!r} exists already")
            if conn.execute("SELECT 1 FROM users WHERE username = ?", (group,)).fetchone():
                raise Conflict("name", f"{group!r} is the name of a user")
            conn.execute("INSERT INTO groups (name, created) VALUES (?, ?)", (group, now()))
            for member in usernames:
                _insert_member(conn, group, member)
            return Group(group, tuple(usernames))
        return await self._db.transact(create)

    async def delete_group(self, name: str) -> None:
        group = name.lower()

        def delete(conn: sqlite3.Connection) -> None:
            owned = conn.execute("SELECT local || '@' || domain FROM mailboxes WHERE owner_type = "
                                 "'group' AND owner = ? ORDER BY domain, local", (group,)).fetchall()
            if owned:
                raise Conflict("name", f"group {group!r} owns mailboxes "
                                       f"({', '.join(r[0] for r in owned)}); delete them first")
            if conn.execute("DELETE FROM groups WHERE name = ?", (group,)).rowcount == 0:
                raise NotFound("name", f"no group {group!r}")
        await self._db.transact(delete)

    async def add_member(self, name: str, username: str) -> Group:
        group, member = name.lower(), username.lower()

        def add(conn: sqlite3.Connection) -> Group:
            if not conn.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone():
                raise NotFound("name", f"no group {group!r}")
            if conn.execute("SELECT 1 FROM group_members WHERE group_name = ? AND username = ?",
                            (group, member)).fetchone():
                raise Conflict("username", f"{member!r} is in group {group!r} already")
            _insert_member(conn, group, member)
            return Group(group, _members(conn, group))
        return await self._db.transact(add)

    async def remove_member(self, name: str, username: str) -> Group:
        group, member = name.lower(), username.lower()

        def remove(conn: sqlite3.Connection) -> Group:
            if not conn.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone():
                raise NotFound("name", f"no group {group!r}")
            if conn.execute("DELETE FROM group_members WHERE group_name = ? AND username = ?",
                            (group, member)).rowcount == 0:
                raise NotFound("username", f"{member!r} is not in group {group!r}")
            return Group(group, _members(conn, group))
        return await self._db.transact(remove)


def _insert_member(conn: sqlite3.Connection, group: str, username: str) -> None:
    if not conn.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
        raise NotFound("members", f"no user {username!r}")
    conn.execute("INSERT INTO group_members (group_name, username) VALUES (?, ?)", (group, username))
