"""The errors that cross module boundaries.

Service-layer errors carry the field they are about, so the admin API can answer with a JSON body
naming it and the CLI can print it; each maps to one HTTP status.
"""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration is wrong; the message names file, table and key."""


class ServiceError(Exception):
    """A request to the service layer that cannot be done; `status` is its HTTP status."""

    status = 400

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message

    def as_json(self) -> dict[str, object]:
        """The JSON error body: what is wrong and with which field."""
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


class BadRequest(ServiceError):
    """The request is malformed (not JSON, wrong type)."""

    status = 400


class Invalid(ServiceError):
    """A value breaks a rule (a name with `+`, a domain that is not a domain)."""

    status = 422


class NotFound(ServiceError):
    """The thing named does not exist."""

    status = 404


class Conflict(ServiceError):
    """The thing exists already, or would clash with another name."""

    status = 409


class ReadOnlyDirectory(ServiceError):
    """Users and groups come from LDAP; they are changed there, not here."""

    status = 409


class AuthenticationFailed(Exception):
    """Wrong address or password (never said which)."""


class DirectoryUnavailable(Exception):
    """The directory cannot answer now (LDAP down or slow): a temporary failure, never a "no"."""
