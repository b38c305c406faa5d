"""The seams between the protocol front ends and the back ends.

Methods return Deferreds or are coroutines (`async def`): either way the caller awaits them, and
wraps them with `ensureDeferred` at the edges that need a Deferred. Protocol code talks to these interfaces only; it never sees SQLite, LDAP
or file paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class User:
    """A person in the directory: the login name, a display name and the addresses it lists."""

    username: str
    display_name: str = ""
    emails: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group:
    """A group in the directory and the usernames of its members."""

    name: str
    members: tuple[str, ...] = ()


class IDirectory(Interface):
    """Who the users are, their passwords, and which groups they are in."""

    writable = Attribute("True when users and groups can be changed through this directory.")

    def authenticate(username: str, password: str):
        """Check a password; fire with the `User`.

        Errback with `AuthenticationFailed` for a wrong name or password (never saying which) and
        with `DirectoryUnavailable` when the directory cannot answer now.
        """

    def get_user(username: str):
        """Fire with the `User` of that name, or None."""

    def list_users():
        """Fire with every `User`, sorted by username."""

    def get_group(name: str):
        """Fire with the `Group` of that name (members included), or None."""

    def list_groups():
        """Fire with every `Group`, sorted by name."""

    def group_members(name: str):
        """Fire with the usernames in the group (empty for an unknown group)."""

    def check():
        """Fire with None when the directory answers; errback `DirectoryUnavailable` if not."""

    def close():
        """Let go of open connections at shutdown; fire when done."""


class IDirectoryAdmin(Interface):
    """The changes a writable (built-in) directory takes. LDAP is changed in LDAP, not here."""

    def create_user(username: str, password: str | None, password_hash: str | None,
                    display_name: str):
        """Add a user with a password (hashed here) or a ready hash; errback `Conflict` if taken."""

    def update_user(username: str, password: str | None, display_name: str | None):
        """Change a user's password and/or display name; errback `NotFound`."""

    def delete_user(username: str):
        """Remove a user and its group memberships; errback `NotFound`."""

    def create_group(name: str, members: list[str]):
        """Add a group with members; errback `Conflict` if taken, `NotFound` for a member."""

    def delete_group(name: str):
        """Remove a group; errback `NotFound`."""

    def add_member(name: str, username: str):
        """Put a user in a group; errback `NotFound`, `Conflict` if already in."""

    def remove_member(name: str, username: str):
        """Take a user out of a group; errback `NotFound`."""


class IAccounts(Interface):
    """The address book of the mail system: domains, mailboxes, aliases and catch-all."""

    def get_domain(name: str):
        """Fire with the `Domain` (settings included); errback `NotFound`."""

    def list_domains():
        """Fire with every `Domain`, sorted by name."""

    def find_mailbox(address):
        """Fire with the `Mailbox` at that `Address`, or None (aliases are not mailboxes)."""

    def find_alias(address):
        """Fire with the mailbox `Address` an alias delivers to, or None."""

    def get_mailbox(address):
        """Fire with the `Mailbox` at that `Address`; errback `NotFound`."""

    def list_mailboxes(domain=None, owner_type=None, owner=None):
        """Fire with the mailboxes matching every filter given, sorted by domain and name."""

    def list_aliases(domain=None, mailbox=None):
        """Fire with the aliases of a domain, of a mailbox, or all of them."""

    def get_catchall(domain: str):
        """Fire with the mailbox `Address`es that get mail for the domain's unknown addresses."""

    def app_password_hash(address):
        """Fire with the password hash of an app mailbox, or None."""
