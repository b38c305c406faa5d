"""Who gets a message sent to an address, decided at RCPT time.

The router turns one envelope recipient into the Maildir owners that get a copy: a mailbox itself,
an alias's mailbox, every member of a group, or the domain's catch-all mailboxes. Anything that is
not plainly an address in one of our domains is refused here, before DATA, so the server never
relays (RFC 5321 3.6.1: a server that is not a relay for the domain must refuse it at RCPT) and
never has to bounce to a forged sender.

- Matching is case-insensitive: domains become lower-case A-labels, local parts are lower-cased.
- `local+tag@domain` and `local-tag@domain` deliver to `local` with the tag kept for Sieve
  (RFC 5233), as in the model, whose naming rules forbid both characters in names for this reason
  ("for addresses like `no-reply`, simply add a mailbox or an alias named `no`"). The first `+`
  or `-` separates the tag (Postfix's `recipient_delimiter = +-`).
- Relay tricks inside a local part of our domain (`user%other@`, `other!user@`, `"user@other"@`)
  are refused as relaying, never delivered locally (not even to the catch-all). Source routes
  (`@a,@b:user@dom`, RFC 5321 4.1.1.3 / appendix C) are refused as invalid.
- A bare `postmaster` (RFC 5321 4.5.1) resolves as `postmaster@` the router's postmaster domain:
  the one given, else the first of our domains by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twisted.logger import Logger

from cloudmail.accounts.store import Mailbox
from cloudmail.address import (
    APP_SUFFIX,
    Address,
    AddressError,
    normalize_domain,
    validate_local,
)
from cloudmail.errors import NotFound
from cloudmail.interfaces import IAccounts, IDirectory

log = Logger()

LOCAL = "local"
UNKNOWN = "unknown"
NOT_OURS = "not_ours"
INVALID = "invalid"

TAG_SEPARATORS = re.compile(r"[+-]")
RELAY_CHARACTERS = frozenset("@%!")
MAX_ADDRESS_LENGTH = 1000

# RFC 5321 4.1.2 Atom, widened by RFC 6531 3.3 to UTF-8 for SMTPUTF8.
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+$")
# RFC 5321 4.1.2 QcontentSMTP: qtextSMTP, or a backslash before any printable ASCII.
_QUOTED = re.compile(r'^"((?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*)"$')


@dataclass(frozen=True)
class Resolution:
    """The answer for one recipient.

    `kind` is `local` (deliver to `mailboxes`), `unknown` (our domain, nobody there: 550 5.1.1),
    `not_ours` (relaying: 554 5.7.1) or `invalid` (bad syntax: 501 5.1.3). `mailboxes` are the
    final Maildir owners, each once, in a stable order; `tag` is the sub-address (RFC 5233) or
    None; `address` the normalised recipient; `reason` a short text for the logs.
    """

    kind: str
    address: str
    reason: str
    mailboxes: tuple[Address, ...] = ()
    tag: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == LOCAL


def _split_local(text: str) -> str | None:
    """The local part as its content (quotes and escapes removed), or None if it is malformed.

    RFC 5321 4.1.2: Local-part = Dot-string / Quoted-string.
    """
    quoted = _QUOTED.match(text)
    if quoted:
        return re.sub(r"\\(.)", r"\1", quoted.group(1))
    if all(_ATOM.match(atom) for atom in text.split(".")):
        return text
    return None


def _as_name(local: str, domain: str) -> Address | None:
    """The `Address` when `local` could be a mailbox or alias name at all, else None."""
    try:
        return Address(validate_local(local, app=local.endswith(APP_SUFFIX)), domain)
    except AddressError:
        return None


class Router:
    """Resolves envelope recipients through the address book (`IAccounts`) and the directory.

    `resolve` may errback with `DirectoryUnavailable` when a group's members cannot be read; the
    caller then answers with a temporary failure (451 4.3.0) rather than guessing.
    """

    def __init__(self, accounts: IAccounts, directory: IDirectory,
                 postmaster_domain: str | None = None) -> None:
        self.accounts = accounts
        self.directory = directory
        self.postmaster_domain = postmaster_domain

    async def resolve(self, recipient: str) -> Resolution:
        """Decide who gets mail sent to `recipient` (an RCPT TO path, with or without `<>`)."""
        text = recipient.strip()
        if text.startswith("<") and text.endswith(">"):
            text = text[1:-1].strip()
        if not text or len(text) > MAX_ADDRESS_LENGTH:
            return Resolution(INVALID, text, "empty or overlong address")
        if text.startswith("@"):
            return Resolution(INVALID, text, "source routes are not accepted")
        if "@" not in text:
            if text.lower() != "postmaster":
                return Resolution(INVALID, text, "an address needs a domain")
            domain = self.postmaster_domain or await self._first_domain()
            if domain is None:
                return Resolution(UNKNOWN, "postmaster", "no domains to take postmaster mail")
            text = f"postmaster@{domain}"
        raw_local, _, raw_domain = text.rpartition("@")
        local = _split_local(raw_local)
        if not local:
            return Resolution(INVALID, text, "the local part is not valid RFC 5321 syntax")
        if raw_domain.startswith("["):
            return Resolution(NOT_OURS, text, "address literals are not our domains")
        try:
            domain = normalize_domain(raw_domain)
        except AddressError as e:
            return Resolution(INVALID, text, f"bad domain: {e}")
        address = f"{local.lower()}@{domain}"
        try:
            await self.accounts.get_domain(domain)
        except NotFound:
            return Resolution(NOT_OURS, address, f"{domain} is not one of our domains")
        if RELAY_CHARACTERS & set(local):
            return Resolution(NOT_OURS, address, "relay routing in the local part (%, ! or @)")
        return await self._resolve_local(local, domain)

    async def _resolve_local(self, local: str, domain: str) -> Resolution:
        """Mailbox, then alias, then catch-all, for a local part in one of our domains."""
        base, separator, tag = split_tag(local)
        base = base.lower()
        tag_or_none = tag if separator else None
        address = f"{base}{separator}{tag}@{domain}"
        name = _as_name(base, domain)
        if name is not None:
            mailbox = await self.accounts.find_mailbox(name)
            how = "mailbox"
            if mailbox is None:
                target = await self.accounts.find_alias(name)
                mailbox = await self.accounts.find_mailbox(target) if target else None
                how = f"alias of {target}"
            if mailbox is not None:
                owners = await self._owners(mailbox)
                if not owners:
                    return Resolution(UNKNOWN, address, f"{how}: group {mailbox.owner} has no "
                                      "member with a mailbox", tag=tag_or_none)
                return Resolution(LOCAL, address, how, owners, tag_or_none)
        catchall = await self.accounts.get_catchall(domain)
        caught: list[Address] = []
        for entry in catchall:
            listed = await self.accounts.find_mailbox(entry)
            if listed is not None:
                caught.extend(await self._owners(listed))
        if not caught:
            return Resolution(UNKNOWN, address, "no such address and no catch-all", tag=tag_or_none)
        return Resolution(LOCAL, address, "catch-all", tuple(dict.fromkeys(caught)), tag_or_none)

    async def _owners(self, mailbox: Mailbox) -> tuple[Address, ...]:
        """The Maildir owners behind a mailbox: itself, or for a group mailbox its members' own.

        A member's mailbox is the one in the group mailbox's domain if there is one, else the
        member's first mailbox (by domain, then name). Members with no mailbox are skipped.
        """
        if mailbox.owner_type != "group":
            return (mailbox.address,)
        owners: list[Address] = []
        for username in await self.directory.group_members(mailbox.owner):
            owned = await self.accounts.list_mailboxes(owner_type="user", owner=username.lower())
            if not owned:
                log.info("group {group}: member {username} has no mailbox; skipped",
                         group=mailbox.owner, username=username)
                continue
            same_domain = [m for m in owned if m.address.domain == mailbox.address.domain]
            owners.append((same_domain or owned)[0].address)
        return tuple(dict.fromkeys(owners))

    async def _first_domain(self) -> str | None:
        domains = await self.accounts.list_domains()
        return domains[0].name if domains else None


def split_tag(local: str) -> tuple[str, str, str]:
    """(base, separator, tag) of a local part, split at its first `+` or `-`."""
    match = TAG_SEPARATORS.search(local)
    if match is None:
        return local, "", ""
    return local[:match.start()], match.group(), local[match.end():]


def _header_address(value: bytes) -> str:
    """A header value as a comparable address: unfolded, without `<>`, lower-case, no +tag."""
    text = b" ".join(value.split()).decode("utf-8", "replace").strip().strip("<>").strip()
    local, at, domain = text.rpartition("@")
    if not at:
        return text.lower()
    try:
        domain = normalize_domain(domain)
    except AddressError:
        domain = domain.lower()
    return f"{split_tag(local)[0].lower()}@{domain}"


def is_loop(headers: list[tuple[bytes, bytes]], recipient: Address,
            max_received: int = 50) -> str | None:
    """Why this message is looping for `recipient`, or None.

    A message with more than `max_received` `Received:` headers has been passed around too often
    (RFC 5321 6.3 asks servers to bound this, 100 being the usual hop limit), and one that carries
    a `Delivered-To:` equal to the recipient (case-insensitive, ignoring a +tag) has been delivered
    here already and came back (the Postfix / qmail convention).
    """
    wanted = str(recipient).lower()
    received = 0
    for name, value in headers:
        field = name.strip().lower()
        if field == b"received":
            received += 1
        elif field == b"delivered-to" and _header_address(value) == wanted:
            return f"already delivered to {recipient} (Delivered-To)"
    if received > max_received:
        return f"{received} Received headers, more than {max_received}"
    return None
