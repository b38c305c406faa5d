"""How one queued message reaches the server of one recipient domain: through a relay, or to the
domain's MX hosts in preference order (RFC 5321 5.1).

- MX records come from our resolver (twisted.names, `[dns]`), never the system's, so tests and
  air-gapped sites control them. No MX record: the domain itself is the host (implicit MX,
  RFC 5321 5.1). A null MX (RFC 7505) or a domain that does not exist fails at once, for good.
- Answers are kept `DNS_CACHE_SECONDS` (a queue of mail to one domain asks once, not per
  message); failures are not kept.
- Hosts of equal preference are tried in random order (RFC 5321 5.1 "SHOULD randomize"); each
  host's IPv4 then IPv6 addresses. The next host is tried after a connection-level failure (no
  connection, 4xx/5xx greeting, a broken TLS or EHLO, a timeout before the transaction); a
  reply to MAIL, RCPT or DATA is the answer for the message.
- Sessions are kept open a moment for the next message to the same server
  (`cloudmail.queue.sessions`).
- A relay gets the whole message whatever the domain, with STARTTLS required (or implicit TLS)
  and AUTH when configured, its certificate checked unless the operator said not to.
- An MX is reached with opportunistic STARTTLS by default (`[queue] tls`): encrypt when offered,
  never refuse a certificate (RFC 7435), since refusing would only leave the mail in plaintext.

The result is one `Outcome` per recipient: accepted, transient (retry) or permanent (bounce).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger

from cloudmail.dns import AsyncResolver, DnsNotFound, DnsTemporaryError, is_null_mx
from cloudmail.queue.relay import Relay
from cloudmail.queue.sessions import SessionCache
from cloudmail.smtp import client
from cloudmail.smtp.client import DeliveryResult, OpportunisticTls, SmtpClientError, TlsMode

log = Logger()

#: Seconds an MX or address answer is reused, and how many answers are kept at most.
DNS_CACHE_SECONDS = 60.0
DNS_CACHE_SIZE = 10_000



@dataclass(frozen=True)
class Outcome:
    """What became of one recipient in one attempt. `code` 0 means no server answered (a DNS
    or connection failure); `remote_mta` is the name of the host that answered, if any, and
    `via` says how it was reached ("mx.example.com[192.0.2.1]", "relay smtp.example.com:587")."""

    address: str
    code: int
    status: str
    text: str
    remote_mta: str | None = None
    via: str | None = None
    tls: str | None = None

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def transient(self) -> bool:
        return not (self.accepted or self.permanent)


@dataclass(frozen=True)
class TransportSettings:
    """The `[queue]` settings that concern one connection, and our name for EHLO."""

    helo: str
    mx_port: int = 25
    tls: TlsMode = "opportunistic"
    timeout: float = 300.0
    connect_timeout: float = 30.0
    verify_relay: bool = True
    relay_ca_file: Path | None = None


def _failed(recipients: list[str], code: int, status: str, text: str,
            remote_mta: str | None = None, via: str | None = None) -> list[Outcome]:
    return [Outcome(r, code, status, text, remote_mta, via) for r in recipients]


class Transport:
    """Delivers a queued message to the recipients of one domain (see the module docstring)."""

    def __init__(self, resolver: AsyncResolver, settings: TransportSettings,
                 run_blocking: Callable[[Callable[[], Any]], Any],
                 clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._sessions = SessionCache(clock)
        self._relay_creators: dict[str, IOpenSSLClientConnectionCreator] = {}
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._resolver = resolver
        self._settings = settings
        self._run_blocking = run_blocking
        self._relay_trust: IOpenSSLClientConnectionCreator | None = None

    async def send(self, sender: str, domain: str, recipients: list[str], message: Path,
                   relay: Relay | None) -> list[Outcome]:
        """Try to deliver `message` from `sender` to `recipients` (all at `domain`)."""
        if relay is not None:
            return await self._via_relay(sender, recipients, message, relay)
        try:
            hosts = await self.mx_hosts(domain)
        except DnsTemporaryError as e:
            return _failed(recipients, 0, "4.4.3", f"cannot look up the MX of {domain}: {e.reason}")
        except DnsNotFound:
            return _failed(recipients, 550, "5.4.4", f"the domain {domain} does not exist")
        if not hosts:
            return _failed(recipients, 556, "5.1.10",
                           f"the domain {domain} accepts no mail (null MX, RFC 7505)")
        return await self._via_mx(sender, domain, recipients, message, hosts)

    async def mx_hosts(self, domain: str) -> list[str]:
        """The hosts to try for `domain`: MX exchanges by preference (ties shuffled), the domain
        itself when it has no MX, [] for a null MX. Raises DnsNotFound, DnsTemporaryError."""
        records = await self._lookup("mx", domain)
        if is_null_mx(records):
            return []
        if not records:
            return [domain]
        by_preference: dict[int, list[str]] = {}
        for preference, host in records:
            by_preference.setdefault(preference, []).append(host)
        hosts: list[str] = []
        for preference in sorted(by_preference):
            group = by_preference[preference]
            random.shuffle(group)
            hosts.extend(h for h in group if h not in hosts)
        return hosts

    async def _addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses of an MX host; [] when it has none or DNS fails."""
        found: list[str] = []
        for kind in ("a", "aaaa"):
            try:
                found.extend(await self._lookup(kind, host))
            except (DnsNotFound, DnsTemporaryError):
                continue
        return found

    async def _lookup(self, kind: str, name: str) -> Any:
        """`self._resolver.<kind>(name)`, answered from the cache while it is fresh."""
        now = self._clock.seconds()
        cached = self._cache.get((kind, name))
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = await getattr(self._resolver, kind)(name)
        if len(self._cache) >= DNS_CACHE_SIZE:
            self._cache.clear()
        self._cache[(kind, name)] = (now + DNS_CACHE_SECONDS, answer)
        return answer

    async def _via_mx(self, sender: str, domain: str, recipients: list[str], message: Path,
                      hosts: list[str]) -> list[Outcome]:
        """Each address of each host in turn until one takes the transaction: its replies
        decide. A refusal of MAIL (or a message it cannot take: size, SMTPUTF8) decides too."""
        settings = self._settings
        errors: list[str] = []
        for host in hosts:
            addresses = await self._addresses(host)
            if not addresses:
                errors.append(f"{host}: no address")
            for ip in addresses:
                opener = partial(client.open_session, ip, settings.mx_port, helo=settings.helo,
                                 tls=settings.tls,
                                 tls_context=lambda _ip, name=host: OpportunisticTls(name),
                                 timeout=settings.timeout,
                                 connect_timeout=settings.connect_timeout,
                                 run_blocking=self._run_blocking)
                try:
                    result = await self._sessions.send(
                        (ip, settings.mx_port, settings.tls), opener, sender, recipients,
                        message)
                except SmtpClientError as e:
                    if e.command == "MAIL":
                        return self._from_error(recipients, e, host, f"{host}[{ip}]")
                    errors.append(f"{host}[{ip}]: {e}")
                    continue
                return self._from_result(result, host, f"{host}[{ip}]")
        return _failed(recipients, 0, "4.4.1", f"cannot deliver to {domain}: "
                                               + "; ".join(errors))

    async def _via_relay(self, sender: str, recipients: list[str], message: Path,
                         relay: Relay) -> list[Outcome]:
        settings = self._settings
        host = relay.host.strip("[]")
        mode: TlsMode = {"starttls": "required", "tls": "implicit", "none": "none"}[relay.tls]
        where = f"relay {host}:{relay.port}"
        opener = partial(client.open_session, host, relay.port, helo=settings.helo, tls=mode,
                         tls_context=self._relay_tls, auth=relay.auth, timeout=settings.timeout,
                         connect_timeout=settings.connect_timeout,
                         run_blocking=self._run_blocking)
        try:
            result = await self._sessions.send((host, relay.port, mode, relay.auth), opener,
                                               sender, recipients, message)
        except SmtpClientError as e:
            return self._from_error(recipients, e, host, where)
        return self._from_result(result, host, where)

    def _relay_tls(self, host: str) -> IOpenSSLClientConnectionCreator:
        """The relay's certificate checked against `relay_ca_file` or the system's roots, or
        not at all when `verify_relay` is off. Made once per host: building it reads the CA
        file and loads the trust store, work for neither every connection nor the reactor."""
        creator = self._relay_creators.get(host)
        if creator is None:
            if not self._settings.verify_relay:
                creator = OpportunisticTls(host)
            else:
                trust = None
                if self._settings.relay_ca_file is not None:
                    pem = self._settings.relay_ca_file.read_bytes()
                    trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem)])
                creator = ssl.optionsForClientTLS(host, trustRoot=trust,
                                                  extraCertificateOptions={
                                                      "raiseMinimumTo": ssl.TLSVersion.TLSv1_2})
            self._relay_creators[host] = creator
        return creator

    def close(self) -> None:
        """End the SMTP sessions kept open for the next message (at shutdown)."""
        self._sessions.close()

    @staticmethod
    def _from_result(result: DeliveryResult, host: str, where: str) -> list[Outcome]:
        return [Outcome(r.address, r.code, r.enhanced or _basic_status(r.code), r.text, host,
                        where, result.tls)
                for r in result.outcomes]

    @staticmethod
    def _from_error(recipients: list[str], error: SmtpClientError, host: str,
                    where: str) -> list[Outcome]:
        """Every recipient fails with the connection's error: permanent only when the server
        said so with a 5xx."""
        code = error.code if error.code is not None else 0
        if not error.transient and code < 500:
            code = 550
        if error.transient and code >= 500:
            code = 0
        status = error.enhanced or _basic_status(code)
        return _failed(recipients, code, status, str(error), host if error.code else None, where)


def _basic_status(code: int) -> str:
    """An enhanced status for a reply that gave none (RFC 3463 3: class and "undefined")."""
    return {2: "2.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")

