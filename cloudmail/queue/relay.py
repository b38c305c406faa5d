"""Smarthosts: where outbound mail goes when it is not delivered to the recipients' MX.

A relay is given per domain (the admin API's `relay` of a domain) or once for all
(`[relay]` in the config); the domain's wins. The presets are the submission endpoints the big
sending services publish, so an operator names the provider and gives the credentials, as in
Cloudron's "Relaying outbound mails". Each of them takes STARTTLS on 587 and AUTH.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudmail.accounts.store import RELAY_TLS_MODES, RelaySettings

__all__ = ["RELAY_TLS_MODES", "PRESETS", "PROVIDERS", "Relay", "preset", "default_port"]

#: provider → (host, port); `{region}` is filled in for Amazon SES.
PRESETS: dict[str, tuple[str, int]] = {
    "amazon-ses": ("email-smtp.{region}.amazonaws.com", 587),
    "google": ("smtp.gmail.com", 587),
    "mailgun": ("smtp.mailgun.org", 587),
    "postmark": ("smtp.postmarkapp.com", 587),
    "sendgrid": ("smtp.sendgrid.net", 587),
    "office365": ("smtp.office365.com", 587),
}
#: `custom` is "any other SMTP server": host and port as given.
PROVIDERS = (*PRESETS, "custom")
DEFAULT_SES_REGION = "us-east-1"


@dataclass(frozen=True)
class Relay:
    """One smarthost: host and port, how TLS is used, and the AUTH login if any."""

    host: str
    port: int
    tls: str = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def of_domain(cls, settings: RelaySettings) -> Relay | None:
        """A domain's relay from its stored settings, or None when it has none."""
        if not settings.host:
            return None
        return cls(settings.host, settings.port or default_port(settings.tls), settings.tls,
                   settings.username, settings.password)

    @property
    def auth(self) -> tuple[str, str] | None:
        """(user, password) for AUTH, or None to send without logging in."""
        if self.username is None or self.password is None:
            return None
        return self.username, self.password


def preset(provider: str, region: str = DEFAULT_SES_REGION) -> tuple[str, int]:
    """The host and port of a named provider; raises ValueError naming the known ones."""
    if provider not in PRESETS:
        raise ValueError(f"unknown provider {provider!r} (one of {', '.join(PROVIDERS)})")
    host, port = PRESETS[provider]
    return host.format(region=region), port


def default_port(tls: str) -> int:
    """465 for implicit TLS, else the submission port 587."""
    return 465 if tls == "tls" else 587
