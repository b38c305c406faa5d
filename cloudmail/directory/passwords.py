"""Password hashes: argon2id for everything we make, a few imported formats for migrations.

We hash with argon2id at OWASP's recommended cost (19 MiB, 2 passes, 1 lane): memory-hard, and
about 20 ms here, so a 1,000-user import hashes in seconds. Hashes brought in from another server
(bcrypt `$2b$`, LDAP-style `{SSHA}`/`{SSHA256}`/`{SSHA512}`) are accepted as they are, checked at
login, and replaced by argon2id on the first successful one. Every function here is blocking
(CPU-bound): call them from the `auth` thread pool.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
_SALTED_SHA = {"{SSHA}": hashlib.sha1, "{SSHA256}": hashlib.sha256, "{SSHA512}": hashlib.sha512}
_DUMMY_HASH = _hasher.hash("cloudmail: no such user")


def hash_password(password: str) -> str:
    """Hash a password with argon2id."""
    return _hasher.hash(password)


def hash_format(password_hash: str) -> str | None:
    """Name the format of a stored hash ("argon2", "bcrypt", "ssha"), or None if we cannot check it."""
    if password_hash.startswith("$argon2"):
        return "argon2"
    if password_hash.startswith(("$2a$", "$2b$", "$2y$")) and len(password_hash) == 60:
        return "bcrypt"
    for prefix in _SALTED_SHA:
        if password_hash.upper().startswith(prefix):
            return "ssha"
    return None


def verify_password(password_hash: str, password: str) -> bool:
    """Check a password against a stored hash of any supported format."""
    kind = hash_format(password_hash)
    if kind == "argon2":
        try:
            return _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    if kind == "bcrypt":
        try:
            return bcrypt.checkpw(password.encode("utf-8"), password_hash.encode("ascii"))
        except ValueError:
            return False
    if kind == "ssha":
        prefix, _, encoded = password_hash.partition("}")
        digest_of = _SALTED_SHA[prefix.upper() + "}"]
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            return False
        size = digest_of().digest_size
        digest, salt = raw[:size], raw[size:]
        return hmac.compare_digest(digest, digest_of(password.encode("utf-8") + salt).digest())
    return False


def needs_rehash(password_hash: str) -> bool:
    """True when the hash should be replaced by a fresh argon2id one at the next login."""
    return hash_format(password_hash) != "argon2" or _hasher.check_needs_rehash(password_hash)


def burn_time(password: str) -> None:
    """Spend as long as a real check, so an unknown user cannot be told from a wrong password."""
    verify_password(_DUMMY_HASH, password)
