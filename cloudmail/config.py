"""The configuration: one TOML file read into frozen dataclasses.

Every key has a default, so an empty file (or no file) is the embedded default set-up. Every error
names the file, the table and the key, and an unknown key is an error: a typo must never be
silently ignored on a mail server.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from cloudmail.errors import ConfigError
from cloudmail.queue.store import DEFAULT_LIFETIME, DEFAULT_SCHEDULE
from cloudmail.sieve.scripts import MAX_SCRIPT_SIZE, MAX_SCRIPTS

LISTENER_NAMES = ("smtp", "submission", "submissions", "imap", "imaps", "managesieve", "admin")


@dataclass(frozen=True)
class ServerConfig:
    """`[server]`: who we are and where everything lives."""

    hostname: str
    data_dir: Path


@dataclass(frozen=True)
class ListenConfig:
    """`[listen]`: a Twisted server endpoint string per listener; "" disables it."""

    smtp: str = "tcp:25"
    submission: str = "tcp:587"
    submissions: str = "tcp:465"
    imap: str = "tcp:143"
    imaps: str = "tcp:993"
    managesieve: str = "tcp:4190"
    admin: str = "tcp:8580:interface=127.0.0.1"

    def enabled(self) -> dict[str, str]:
        """The listeners that are switched on, by name."""
        return {name: getattr(self, name) for name in LISTENER_NAMES if getattr(self, name)}


@dataclass(frozen=True)
class TlsCertificate:
    """One PEM certificate chain and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsConfig:
    """`[tls]`: the default certificate, extra ones picked by SNI, and the protocol floor.

    With no `cert`/`key`, a self-signed certificate for the hostname is made in the data folder.
    """

    cert: Path | None = None
    key: Path | None = None
    sni: tuple[TlsCertificate, ...] = ()
    min_version: str = "1.2"
    reload_interval: float = 10.0


@dataclass(frozen=True)
class DatabaseConfig:
    """`[database]`: the SQLite file of the store (relative paths are under the data folder)."""

    path: Path


@dataclass(frozen=True)
class LdapConfig:
    """`[ldap]`: where users and groups come from when `[directory] backend = "ldap"`.

    `user_filter` and `group_filter` hold `{username}` / `{group}` placeholders; the values put in
    are always escaped (RFC 4515), so a login name can never change the filter.
    """

    urls: tuple[str, ...] = ()
    bind_dn: str = ""
    bind_password: str = ""
    bind_password_file: Path | None = None
    start_tls: bool = False
    ca_file: Path | None = None
    verify_certificates: bool = True
    user_base: str = ""
    user_filter: str = "(&(objectClass=inetOrgPerson)(uid={username}))"
    username_attribute: str = "uid"
    mail_attribute: str = "mail"
    display_name_attribute: str = "cn"
    group_base: str = ""
    group_filter: str = "(&(objectClass=groupOfNames)(cn={group}))"
    group_member_attribute: str = "member"
    connect_timeout: float = 5.0
    timeout: float = 10.0
    pool_size: int = 4


@dataclass(frozen=True)
class DirectoryConfig:
    """`[directory]`: which directory holds users, passwords and groups."""

    backend: str = "builtin"


@dataclass(frozen=True)
class AdminConfig:
    """`[admin]`: the JSON admin API's bearer token file (relative paths are under data_dir)."""

    token_file: Path


@dataclass(frozen=True)
class SmtpConfig:
    """`[smtp]`: the MX listener's limits and the checks made on every client.

    `ip_blocklist` and `sender_blocklist` are plain files (see `cloudmail.policy.blocklist`);
    None means no list. `dnsbl_zones` empty switches DNSBL lookups off.
    """

    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_connections_per_ip: int = 20
    idle_timeout: float = 300.0
    max_received_headers: int = 50
    dnsbl_zones: tuple[str, ...] = ("zen.spamhaus.org",)
    iprev: bool = True
    authenticate: bool = True
    ip_blocklist: Path | None = None
    sender_blocklist: Path | None = None


@dataclass(frozen=True)
class SubmissionConfig:
    """`[submission]`: `hide_client_ip` leaves the sending client's name and IP out of the
    `Received:` header of submitted mail."""

    hide_client_ip: bool = False


@dataclass(frozen=True)
class ImapConfig:
    """`[imap]`: the IMAP listeners' limits. `max_append_size` is the largest message APPEND
    takes (announced as APPENDLIMIT, RFC 7889); a bigger literal is refused before it is read."""

    max_append_size: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class DnsConfig:
    """`[dns]`: the name servers as `(ip, port)` (empty: /etc/resolv.conf) and the timeout of
    each query in seconds."""

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class QueueConfig:
    """`[queue]`: how outbound mail is delivered to other domains' MX and retried.

    `mx_port` is the port of the receiving MX (25; tests point it at a sink on loopback).
    `tls` is "opportunistic" (STARTTLS when offered, RFC 7435), "required" or "none".
    After a temporary failure the next try waits `retry_delays[attempts - 1]` seconds (the last
    entry repeats); a message still undelivered `lifetime` seconds after it was queued is
    returned to its sender. `delay_warning` > 0 sends the sender one "delayed" notice once a
    message has waited that long. `concurrency` bounds deliveries in progress in all,
    `domain_concurrency` those to one domain; `max_recipients` per SMTP transaction.
    """

    mx_port: int = 25
    tls: str = "opportunistic"
    connect_timeout: float = 30.0
    timeout: float = 300.0
    retry_delays: tuple[float, ...] = DEFAULT_SCHEDULE
    lifetime: float = DEFAULT_LIFETIME
    delay_warning: float = 0.0
    concurrency: int = 100
    domain_concurrency: int = 20
    max_recipients: int = 100


@dataclass(frozen=True)
class RelayConfig:
    """`[relay]`: a smarthost for all outbound mail (a domain's own relay setting wins).

    `provider` names a preset (host and port filled in) or "custom"; "" means no relay: mail
    goes to the recipients' MX. `verify_certificate` checks the relay's certificate against the
    system's roots, or `ca_file` when given, for every relay (global or per domain).
    """

    provider: str = ""
    host: str = ""
    port: int = 587
    tls: str = "starttls"
    username: str = ""
    password: str = field(default="", repr=False)
    verify_certificate: bool = True
    ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.host)


@dataclass(frozen=True)
class SieveConfig:
    """`[sieve]`: ManageSieve quotas per mailbox (`max_scripts`, `max_script_size` in bytes),
    the folder of global scripts for `include :global` (None: `data_dir/sieve-global`), and
    the limits of one run: redirects and actions per message."""

    max_scripts: int = MAX_SCRIPTS
    max_script_size: int = MAX_SCRIPT_SIZE
    global_scripts: Path | None = None
    max_redirects: int = 10
    max_actions: int = 100


@dataclass(frozen=True)
class Config:
    """The whole configuration; `source` is the file it came from, or None for the defaults."""

    source: Path | None
    server: ServerConfig
    listen: ListenConfig
    tls: TlsConfig
    database: DatabaseConfig
    directory: DirectoryConfig
    ldap: LdapConfig
    admin: AdminConfig = field(repr=False)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate the config file at `path`, or build the embedded defaults for None."""
    if path is None:
        return _build(None, {})
    source = Path(path)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file")
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}")
    return _build(source, raw)


class _Table:
    """One TOML table being read: hands out typed values and rejects what is left over."""

    def __init__(self, source: Path | None, name: str, raw: Any) -> None:
        self.source = source
        self.name = name
        if not isinstance(raw, dict):
            raise self.error(None, "must be a table")
        self.raw = dict(raw)

    def error(self, key: str | None, message: str) -> ConfigError:
        where = str(self.source) if self.source else "<defaults>"
        at = f"[{self.name}]" + (f" {key}" if key else "")
        return ConfigError(f"{where}: {at}: {message}")

    def take(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in self.raw:
            return default
        value = self.raw.pop(key)
        if isinstance(value, bool) and kind in (int, float):
            raise self.error(key, f"must be a number, not {value!r}")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise self.error(key, f"must be {_article(names)}, not {type(value).__name__} {value!r}")
        return value

    def text(self, key: str, default: str) -> str:
        return self.take(key, str, default)

    def path(self, key: str, default: Path | None, base: Path | None = None) -> Path | None:
        value = self.take(key, str, None)
        if value is None:
            return default
        if not value:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = (base or _config_dir(self.source)) / p
        return Path(os.path.normpath(p))

    def number(self, key: str, default: float, check: Callable[[float], bool], what: str) -> float:
        value = self.take(key, float, default)
        if not check(value):
            raise self.error(key, f"must be {what}, not {value!r}")
        return value

    def whole(self, key: str, default: int, low: int, high: int) -> int:
        value = self.take(key, int, default)
        if not low <= value <= high:
            raise self.error(key, f"must be a whole number from {low} to {high}, not {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        values = self.take(key, list, None)
        if values is None:
            return default
        for value in values:
            if not isinstance(value, str):
                raise self.error(key, f"must be a list of strings, not one holding {value!r}")
        return tuple(values)

    def finish(self) -> None:
        if self.raw:
            key = sorted(self.raw)[0]
            raise self.error(key, "unknown key")


def _article(names: str) -> str:
    return ("an " if names[0] in "aeiou" else "a ") + names


def _config_dir(source: Path | None) -> Path:
    return source.parent.resolve() if source else Path.cwd()


def _build(source: Path | None, raw: dict[str, Any]) -> Config:
    known = {"server", "listen", "tls", "database", "directory", "ldap", "admin", "smtp", "imap",
             "submission", "dns", "queue", "relay", "sieve"}
    for name in raw:
        if name not in known:
            where = str(source) if source else "<defaults>"
            raise ConfigError(f"{where}: [{name}]: unknown table")
    server = _server(_Table(source, "server", raw.get("server", {})))
    data = server.data_dir
    config = Config(
        source=source,
        server=server,
        listen=_listen(_Table(source, "listen", raw.get("listen", {}))),
        tls=_tls(_Table(source, "tls", raw.get("tls", {}))),
        database=_database(_Table(source, "database", raw.get("database", {})), data),
        directory=_directory(_Table(source, "directory", raw.get("directory", {}))),
        ldap=_ldap(_Table(source, "ldap", raw.get("ldap", {}))),
        admin=_admin(_Table(source, "admin", raw.get("admin", {})), data),
        smtp=_smtp(_Table(source, "smtp", raw.get("smtp", {}))),
        imap=_imap(_Table(source, "imap", raw.get("imap", {}))),
        submission=_submission(_Table(source, "submission", raw.get("submission", {}))),
        dns=_dns(_Table(source, "dns", raw.get("dns", {}))),
        queue=_queue(_Table(source, "queue", raw.get("queue", {}))),
        relay=_relay(_Table(source, "relay", raw.get("relay", {}))),
        sieve=_sieve(_Table(source, "sieve", raw.get("sieve", {}))),
    )
    _check_cross_section(config)
    return config


def _server(t: _Table) -> ServerConfig:
    from cloudmail.address import AddressError, normalize_domain

    hostname = t.text("hostname", "") or socket.getfqdn()
    try:
        hostname = normalize_domain(hostname)
    except AddressError as e:
        raise t.error("hostname", str(e))
    data_dir = t.path("data_dir", Path("/var/lib/cloudmail"))
    if data_dir is None:
        raise t.error("data_dir", "must not be empty")
    t.finish()
    return ServerConfig(hostname=hostname, data_dir=data_dir)


def _listen(t: _Table) -> ListenConfig:
    from twisted.internet import endpoints, reactor

    values = {}
    for f in fields(ListenConfig):
        value = t.text(f.name, f.default)
        if value:
            try:
                endpoints.serverFromString(reactor, value)
            except (ValueError, TypeError, KeyError) as e:
                raise t.error(f.name, f"not a valid endpoint string {value!r}: {e}")
        values[f.name] = value
    t.finish()
    return ListenConfig(**values)


def _tls(t: _Table) -> TlsConfig:
    cert = t.path("cert", None)
    key = t.path("key", None)
    if (cert is None) != (key is None):
        raise t.error("key" if key is None else "cert", "cert and key must be given together")
    sni = []
    for i, entry in enumerate(t.take("sni", list, [])):
        sub = _Table(t.source, f"tls.sni.{i}", entry)
        c, k = sub.path("cert", None), sub.path("key", None)
        if c is None or k is None:
            raise sub.error("cert" if c is None else "key", "is required")
        sub.finish()
        sni.append(TlsCertificate(cert=c, key=k))
    if sni and cert is None:
        raise t.error("sni", "needs a default cert and key")
    min_version = t.text("min_version", "1.2")
    if min_version not in ("1.2", "1.3"):
        raise t.error("min_version", f'must be "1.2" or "1.3", not {min_version!r}')
    interval = t.number("reload_interval", 10.0, lambda v: v >= 0, "0 (off) or more seconds")
    t.finish()
    return TlsConfig(cert, key, tuple(sni), min_version, interval)


def _database(t: _Table, data_dir: Path) -> DatabaseConfig:
    path = t.path("path", data_dir / "cloudmail.sqlite", base=data_dir)
    if path is None:
        raise t.error("path", "must not be empty")
    t.finish()
    return DatabaseConfig(path=path)


def _directory(t: _Table) -> DirectoryConfig:
    backend = t.text("backend", "builtin")
    if backend not in ("builtin", "ldap"):
        raise t.error("backend", f'must be "builtin" or "ldap", not {backend!r}')
    t.finish()
    return DirectoryConfig(backend=backend)


def _ldap(t: _Table) -> LdapConfig:
    d = LdapConfig()
    urls = t.take("urls", list, [])
    for url in urls:
        if not isinstance(url, str) or not url.lower().startswith(("ldap://", "ldaps://")):
            raise t.error("urls", f"each URL must start with ldap:// or ldaps://, not {url!r}")
    values: dict[str, Any] = {"urls": tuple(urls)}
    for name in ("bind_dn", "bind_password", "user_base", "user_filter", "username_attribute",
                 "mail_attribute", "display_name_attribute", "group_base", "group_filter",
                 "group_member_attribute"):
        values[name] = t.text(name, getattr(d, name))
    values["bind_password_file"] = t.path("bind_password_file", None)
    values["ca_file"] = t.path("ca_file", None)
    values["start_tls"] = t.take("start_tls", bool, d.start_tls)
    values["verify_certificates"] = t.take("verify_certificates", bool, d.verify_certificates)
    values["connect_timeout"] = t.number("connect_timeout", d.connect_timeout, lambda v: v > 0,
                                         "more than 0 seconds")
    values["timeout"] = t.number("timeout", d.timeout, lambda v: v > 0, "more than 0 seconds")
    values["pool_size"] = int(t.number("pool_size", d.pool_size, lambda v: v == int(v) and 1 <= v <= 64,
                                       "a whole number from 1 to 64"))
    if "{username}" not in values["user_filter"]:
        raise t.error("user_filter", "must contain {username}")
    if "{group}" not in values["group_filter"]:
        raise t.error("group_filter", "must contain {group}")
    for name in ("user_filter", "group_filter"):
        f = values[name]
        if not (f.startswith("(") and f.endswith(")")):
            raise t.error(name, f"must be an LDAP filter in parentheses, not {f!r}")
    if any(url.lower().startswith("ldaps://") for url in urls) and values["start_tls"]:
        raise t.error("start_tls", "cannot be used with ldaps:// URLs (they are TLS already)")
    t.finish()
    return LdapConfig(**values)


def _admin(t: _Table, data_dir: Path) -> AdminConfig:
    token_file = t.path("token_file", data_dir / "admin.token", base=data_dir)
    if token_file is None:
        raise t.error("token_file", "must not be empty")
    t.finish()
    return AdminConfig(token_file=token_file)


def _smtp(t: _Table) -> SmtpConfig:
    from cloudmail.address import AddressError, normalize_domain

    d = SmtpConfig()
    zones = []
    for zone in t.strings("dnsbl_zones", d.dnsbl_zones):
        try:
            zones.append(normalize_domain(zone))
        except AddressError as e:
            raise t.error("dnsbl_zones", str(e))
    config = SmtpConfig(
        max_message_size=t.whole("max_message_size", d.max_message_size, 1024, 2**40),
        max_recipients=t.whole("max_recipients", d.max_recipients, 1, 100_000),
        max_connections_per_ip=t.whole("max_connections_per_ip", d.max_connections_per_ip,
                                       1, 100_000),
        idle_timeout=t.number("idle_timeout", d.idle_timeout, lambda v: v > 0,
                              "more than 0 seconds"),
        max_received_headers=t.whole("max_received_headers", d.max_received_headers, 1, 1000),
        dnsbl_zones=tuple(dict.fromkeys(zones)),
        iprev=t.take("iprev", bool, d.iprev),
        authenticate=t.take("authenticate", bool, d.authenticate),
        ip_blocklist=t.path("ip_blocklist", None),
        sender_blocklist=t.path("sender_blocklist", None),
    )
    t.finish()
    return config


def _submission(t: _Table) -> SubmissionConfig:
    config = SubmissionConfig(hide_client_ip=t.take("hide_client_ip", bool,
                                                    SubmissionConfig.hide_client_ip))
    t.finish()
    return config


def _imap(t: _Table) -> ImapConfig:
    config = ImapConfig(max_append_size=t.whole("max_append_size", ImapConfig.max_append_size,
                                                1024, 2**32 - 1))
    t.finish()
    return config


def _dns(t: _Table) -> DnsConfig:
    servers = []
    for text in t.strings("nameservers", ()):
        try:
            servers.append(parse_nameserver(text))
        except ValueError as e:
            raise t.error("nameservers", str(e))
    timeout = t.number("timeout", DnsConfig.timeout, lambda v: 0 < v <= 60,
                       "more than 0 and at most 60 seconds")
    t.finish()
    return DnsConfig(nameservers=tuple(servers), timeout=timeout)


def _queue(t: _Table) -> QueueConfig:
    d = QueueConfig()
    tls = t.text("tls", d.tls)
    if tls not in ("opportunistic", "required", "none"):
        raise t.error("tls", f'must be "opportunistic", "required" or "none", not {tls!r}')
    delays = t.take("retry_delays", list, list(d.retry_delays))
    if not delays or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                             for v in delays):
        raise t.error("retry_delays", "must be a non-empty list of seconds, each more than 0")
    positive = (lambda v: v > 0, "more than 0 seconds")
    config = QueueConfig(
        mx_port=t.whole("mx_port", d.mx_port, 1, 65535),
        tls=tls,
        connect_timeout=t.number("connect_timeout", d.connect_timeout, *positive),
        timeout=t.number("timeout", d.timeout, *positive),
        retry_delays=tuple(float(v) for v in delays),
        lifetime=t.number("lifetime", d.lifetime, *positive),
        delay_warning=t.number("delay_warning", d.delay_warning, lambda v: v >= 0,
                               "0 (off) or more seconds"),
        concurrency=t.whole("concurrency", d.concurrency, 1, 10_000),
        domain_concurrency=t.whole("domain_concurrency", d.domain_concurrency, 1, 10_000),
        max_recipients=t.whole("max_recipients", d.max_recipients, 1, 1000),
    )
    t.finish()
    return config


def _relay(t: _Table) -> RelayConfig:
    from cloudmail.queue.relay import (DEFAULT_SES_REGION, PROVIDERS, RELAY_TLS_MODES,
                                       default_port, preset)

    d = RelayConfig()
    provider = t.text("provider", d.provider)
    if provider and provider not in PROVIDERS:
        raise t.error("provider", f"must be one of {', '.join(PROVIDERS)} (or \"\" for none), "
                                  f"not {provider!r}")
    tls = t.text("tls", d.tls)
    if tls not in RELAY_TLS_MODES:
        raise t.error("tls", f"must be one of {', '.join(RELAY_TLS_MODES)}, not {tls!r}")
    region = t.text("region", "")
    if region and provider != "amazon-ses":
        raise t.error("region", 'is only for provider = "amazon-ses"')
    host, port = t.text("host", ""), t.take("port", int, None)
    if provider not in ("", "custom"):
        preset_host, preset_port = preset(provider, region or DEFAULT_SES_REGION)
        host, port = host or preset_host, port or preset_port
    if provider and not host:
        raise t.error("host", f'is required with provider = "{provider}"')
    if host and not provider:
        raise t.error("provider", 'must be set ("custom" for any SMTP server) when host is')
    if port is not None and not 1 <= port <= 65535:
        raise t.error("port", f"must be a whole number from 1 to 65535, not {port!r}")
    username = t.text("username", "")
    password = t.text("password", "")
    password_file = t.path("password_file", None)
    if password_file is not None:
        if password:
            raise t.error("password_file", "give password or password_file, not both")
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise t.error("password_file", f"cannot read {password_file}: {e.strerror}")
    if bool(username) != bool(password):
        raise t.error("password" if username else "username", "username and password go together")
    config = RelayConfig(provider=provider, host=host, port=port or default_port(tls), tls=tls,
                         username=username, password=password,
                         verify_certificate=t.take("verify_certificate", bool,
                                                   d.verify_certificate),
                         ca_file=t.path("ca_file", None))
    t.finish()
    return config


def _sieve(t: _Table) -> SieveConfig:
    d = SieveConfig()
    config = SieveConfig(
        max_scripts=t.whole("max_scripts", d.max_scripts, 1, 1000),
        max_script_size=t.whole("max_script_size", d.max_script_size, 1024, 1024 * 1024),
        global_scripts=t.path("global_scripts", None),
        max_redirects=t.whole("max_redirects", d.max_redirects, 0, 100),
        max_actions=t.whole("max_actions", d.max_actions, 1, 10_000),
    )
    t.finish()
    return config


def parse_nameserver(text: str) -> tuple[str, int]:
    """`"192.0.2.53"`, `"192.0.2.53:5353"`, `"2001:db8::53"` or `"[2001:db8::53]:5353"` as
    `(ip, port)` (port 53 when not given). Raises ValueError naming the problem."""
    host, port = text.strip(), "53"
    try:
        return str(ipaddress.ip_address(host)), 53
    except ValueError:
        pass
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f'{text!r} is not "ip", "ip:port" or "[ipv6]:port"')
        host, port = inside, rest[1:]
    else:
        host, _, port = host.rpartition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f'{text!r} is not "ip", "ip:port" or "[ipv6]:port" '
                         "(name servers are IP addresses)") from None
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{text!r}: the port must be from 1 to 65535")
    return str(address), int(port)


def _check_cross_section(config: Config) -> None:
    """Rules that span tables: LDAP needs URLs and a user base when it is the directory."""
    if config.directory.backend == "ldap":
        where = str(config.source) if config.source else "<defaults>"
        if not config.ldap.urls:
            raise ConfigError(f"{where}: [ldap] urls: required when [directory] backend is \"ldap\"")
        if not config.ldap.user_base:
            raise ConfigError(f"{where}: [ldap] user_base: required when [directory] backend is \"ldap\"")
