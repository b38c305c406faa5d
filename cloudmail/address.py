"""Mail addresses and the naming rules of the address book.

Domains are stored lower-case with IDNs as A-labels (RFC 5890), so one domain has one spelling.
Local parts of mailboxes, aliases and groups follow the model's rules: letters, digits and dots
only, at most 200 characters, no `+` or `-` (they would clash with sub-addressing), and names
ending in `.app` belong to apps.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import idna

MAX_LOCAL_LENGTH = 200
APP_SUFFIX = ".app"
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_LOCAL = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class AddressError(ValueError):
    """The text is not a valid domain, address or name; the message says why."""


@dataclass(frozen=True, order=True)
class Address:
    """A mailbox-style address: a validated local part and an A-label domain, both lower-case."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def is_app(self) -> bool:
        """True for the `name.app@domain` addresses reserved for apps."""
        return self.local.endswith(APP_SUFFIX)


@functools.lru_cache(maxsize=4096)
def normalize_domain(text: str) -> str:
    """Return the domain in its one stored form (lower-case A-labels), or raise AddressError.
    Answers are cached: IDNA processing costs about 60 µs and every message asks several
    times about the same few domains."""
    name = text.strip().rstrip(".")
    if not name:
        raise AddressError("a domain name is required")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise AddressError(f"{text!r} is not a valid domain name ({e})")
    ascii_name = ascii_name.lower()
    if len(ascii_name) > 253:
        raise AddressError(f"{text!r} is longer than 253 characters")
    labels = ascii_name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            raise AddressError(f"{text!r} is not a valid domain name (label {label!r})")
    if labels[-1].isdigit():
        raise AddressError(f"{text!r} is not a valid domain name (numeric top-level label)")
    return ascii_name


def validate_local(local: str, *, app: bool = False) -> str:
    """Check a mailbox, alias or group name against the naming rules; return it lower-case.

    `app` says the name is for an app mailbox, which must end in `.app`; every other name must not.
    """
    name = local.lower()
    if not name:
        raise AddressError("the local part is empty")
    if len(name) > MAX_LOCAL_LENGTH:
        raise AddressError(f"the local part is longer than {MAX_LOCAL_LENGTH} characters")
    if "+" in name or "-" in name:
        raise AddressError(f"{local!r}: '+' and '-' are not allowed (they are kept for sub-addressing)")
    if not _LOCAL.match(name):
        raise AddressError(f"{local!r}: only letters, digits and single dots between them are allowed")
    if app and not name.endswith(APP_SUFFIX):
        raise AddressError(f"{local!r}: an app mailbox name must end in {APP_SUFFIX!r}")
    if not app and name.endswith(APP_SUFFIX):
        raise AddressError(f"{local!r}: names ending in {APP_SUFFIX!r} are reserved for apps")
    return name


def parse_address(text: str, *, app: bool | None = False) -> Address:
    """Parse `local@domain` under the naming rules.

    `app=None` accepts both app and non-app names (for look-ups); otherwise as in validate_local.
    """
    if text.count("@") != 1:
        raise AddressError(f"{text!r} is not an address of the form name@domain")
    local, domain = text.strip().split("@")
    is_app = local.lower().endswith(APP_SUFFIX) if app is None else app
    return Address(validate_local(local, app=is_app), normalize_domain(domain))


def validate_username(name: str) -> str:
    """Check a built-in directory user or group name; return it lower-case.

    Usernames are wider than mailbox names (LDAP uids often hold `-` or `_`) but stay plain ASCII.
    """
    lowered = name.lower()
    if not _USERNAME.match(lowered):
        raise AddressError(
            f"{name!r}: a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return lowered
