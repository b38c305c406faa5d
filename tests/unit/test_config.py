"""The config file: defaults, every table, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudmail.config import load_config
from cloudmail.errors import ConfigError
from tests.conftest import write_config

REPO = Path(__file__).resolve().parents[2]


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_no_file_gives_the_embedded_defaults():
    """With no --config every key has its documented default."""
    config = load_config(None)
    assert config.source is None
    assert config.listen.smtp == "tcp:25"
    assert config.listen.admin == "tcp:8580:interface=127.0.0.1"
    assert config.server.data_dir == Path("/var/lib/cloudmail")
    assert config.database.path == Path("/var/lib/cloudmail/cloudmail.sqlite")
    assert config.admin.token_file == Path("/var/lib/cloudmail/admin.token")
    assert config.directory.backend == "builtin"
    assert config.tls.cert is None and config.tls.min_version == "1.2"
    assert config.smtp.authenticate is True and config.smtp.iprev is True
    assert config.smtp.max_message_size == 26214400 and config.smtp.max_recipients == 100
    assert config.smtp.max_connections_per_ip == 20 and config.smtp.idle_timeout == 300.0
    assert config.smtp.max_received_headers == 50
    assert config.smtp.dnsbl_zones == ("zen.spamhaus.org",) and config.smtp.iprev is True
    assert config.smtp.ip_blocklist is None and config.smtp.sender_blocklist is None
    assert config.dns.nameservers == () and config.dns.timeout == 5.0


def test_shipped_example_configs_load():
    """conf/cloudmail.toml (every key) and conf/dev.toml both load without error."""
    full = load_config(REPO / "conf" / "cloudmail.toml")
    dev = load_config(REPO / "conf" / "dev.toml")
    assert full.server.hostname
    assert dev.server.data_dir == (REPO / "data").resolve()
    assert all(int(d.split(":")[1]) >= 1024 for d in dev.listen.enabled().values())


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    """data_dir is resolved against the config's folder; database and token against data_dir."""
    path = write_config(tmp_path / "c.toml", {"server": {"data_dir": "mail"},
                                               "database": {"path": "db/x.sqlite"}})
    config = load_config(path)
    assert config.server.data_dir == tmp_path.resolve() / "mail"
    assert config.database.path == tmp_path.resolve() / "mail" / "db" / "x.sqlite"
    assert config.admin.token_file == tmp_path.resolve() / "mail" / "admin.token"


def test_empty_listener_disables_it(tmp_path):
    """An empty endpoint string switches a listener off."""
    config = load_config(write_config(tmp_path / "c.toml", {"listen": {"smtp": ""}}))
    assert "smtp" not in config.listen.enabled()
    assert "imap" in config.listen.enabled()


def test_hostname_is_normalised(tmp_path):
    """The hostname is stored lower-case, IDNs as A-labels."""
    config = load_config(write_config(tmp_path / "c.toml", {"server": {"hostname": "Mail.Bücher.Example"}}))
    assert config.server.hostname == "mail.xn--bcher-kva.example"


@pytest.mark.parametrize("text, expected", [
    ("[server]\nhostnme = 'x'\n", "[server] hostnme: unknown key"),
    ("[srv]\n", "[srv]: unknown table"),
    ("[server]\nhostname = 3\n", "[server] hostname: must be a str, not int 3"),
    ("[server]\nhostname = 'bad_host!'\n", "[server] hostname: "),
    ("[server]\ndata_dir = ''\n", "[server] data_dir: must not be empty"),
    ("[listen]\nimap = 'tcpx:143'\n", "[listen] imap: not a valid endpoint string 'tcpx:143'"),
    ("[listen]\nimap = 'tcp:notaport'\n", "[listen] imap: not a valid endpoint string"),
    ("[listen]\nfoo = 'tcp:1'\n", "[listen] foo: unknown key"),
    ("[tls]\ncert = '/x.pem'\n", "[tls] key: cert and key must be given together"),
    ("[tls]\nmin_version = '1.1'\n", "[tls] min_version: must be \"1.2\" or \"1.3\", not '1.1'"),
    ("[tls]\nreload_interval = -1\n", "[tls] reload_interval: must be 0 (off) or more seconds"),
    ("[tls]\nreload_interval = true\n", "[tls] reload_interval: must be a number, not True"),
    ("[tls]\ncert='a'\nkey='b'\nsni = [{cert = 'c'}]\n", "[tls.sni.0] key: is required"),
    ("[directory]\nbackend = 'ad'\n", "[directory] backend: must be \"builtin\" or \"ldap\", not 'ad'"),
    ("[directory]\nbackend = 'ldap'\n", "[ldap] urls: required when [directory] backend is \"ldap\""),
    ("[directory]\nbackend = 'ldap'\n[ldap]\nurls = ['ldap://x']\n", "[ldap] user_base: required"),
    ("[ldap]\nurls = ['http://x']\n", "[ldap] urls: each URL must start with ldap:// or ldaps://"),
    ("[ldap]\nuser_filter = '(uid=x)'\n", "[ldap] user_filter: must contain {username}"),
    ("[ldap]\nuser_filter = 'uid={username}'\n", "[ldap] user_filter: must be an LDAP filter in parentheses"),
    ("[ldap]\npool_size = 0\n", "[ldap] pool_size: must be a whole number from 1 to 64"),
    ("[ldap]\nurls = ['ldaps://x']\nstart_tls = true\n", "[ldap] start_tls: cannot be used with ldaps://"),
    ("[ldap]\nstart_tls = 'yes'\n", "[ldap] start_tls: must be a bool, not str 'yes'"),
    ("server = 1\n", "[server]: must be a table"),
    ("[smtp]\nmax_message_size = 10\n", "[smtp] max_message_size: must be a whole number from 1024"),
    ("[imap]\nmax_append_size = 5\n", "[imap] max_append_size: must be a whole number from 1024"),
    ("[imap]\nappend_limit = 5\n", "[imap] append_limit: unknown key"),
    ("[submission]\nhide_client_ip = 1\n", "[submission] hide_client_ip: must be a bool"),
    ("[smtp]\nmax_message_size = 1.5e6\n", "[smtp] max_message_size: must be an int, not float"),
    ("[smtp]\nmax_recipients = 0\n", "[smtp] max_recipients: must be a whole number from 1"),
    ("[smtp]\nmax_connections_per_ip = true\n", "[smtp] max_connections_per_ip: must be a number"),
    ("[smtp]\nidle_timeout = 0\n", "[smtp] idle_timeout: must be more than 0 seconds"),
    ("[smtp]\nmax_received_headers = 5000\n", "[smtp] max_received_headers: must be a whole number"),
    ("[smtp]\ndnsbl_zones = 'zen.spamhaus.org'\n", "[smtp] dnsbl_zones: must be a list, not str"),
    ("[smtp]\ndnsbl_zones = [1]\n", "[smtp] dnsbl_zones: must be a list of strings"),
    ("[smtp]\ndnsbl_zones = ['bad zone!']\n", "[smtp] dnsbl_zones: "),
    ("[smtp]\niprev = 'yes'\n", "[smtp] iprev: must be a bool, not str 'yes'"),
    ("[smtp]\nip_blocklist = 3\n", "[smtp] ip_blocklist: must be a str"),
    ("[smtp]\nblocklist = 'x'\n", "[smtp] blocklist: unknown key"),
    ("[dns]\nnameservers = ['dns.example']\n", "[dns] nameservers: 'dns.example' is not \"ip\""),
    ("[dns]\nnameservers = ['192.0.2.53:99999']\n", "[dns] nameservers: '192.0.2.53:99999': the port"),
    ("[dns]\nnameservers = '192.0.2.53'\n", "[dns] nameservers: must be a list"),
    ("[dns]\ntimeout = 0\n", "[dns] timeout: must be more than 0 and at most 60 seconds"),
    ("[dns]\nretries = 3\n", "[dns] retries: unknown key"),
    ("[queue]\ntls = 'always'\n", "[queue] tls: must be \"opportunistic\", \"required\" or \"none\""),
    ("[queue]\nretry_delays = []\n", "[queue] retry_delays: must be a non-empty list of seconds"),
    ("[queue]\nretry_delays = [60, -1]\n", "[queue] retry_delays: must be a non-empty list"),
    ("[queue]\nmx_port = 0\n", "[queue] mx_port: must be a whole number from 1 to 65535"),
    ("[queue]\nlifetime = 0\n", "[queue] lifetime: must be more than 0 seconds"),
    ("[queue]\nconcurrency = 0\n", "[queue] concurrency: must be a whole number from 1"),
    ("[queue]\nretries = 3\n", "[queue] retries: unknown key"),
    ("[relay]\nprovider = 'aws'\n", "[relay] provider: must be one of amazon-ses, google"),
    ("[relay]\nhost = 'smtp.example.net'\n", "[relay] provider: must be set (\"custom\""),
    ("[relay]\nprovider = 'custom'\n", "[relay] host: is required with provider = \"custom\""),
    ("[relay]\nprovider = 'google'\nregion = 'x'\n", "[relay] region: is only for provider"),
    ("[relay]\nprovider = 'mailgun'\nusername = 'u'\n", "[relay] password: username and password go together"),
    ("[relay]\nprovider = 'mailgun'\ntls = 'ssl'\n", "[relay] tls: must be one of starttls, tls, none"),
    ("[relay]\nprovider = 'mailgun'\npassword_file = 'nope'\n", "[relay] password_file: cannot read"),
    ("[sieve]\nmax_scripts = 0\n", "[sieve] max_scripts: must be a whole number from 1"),
    ("[sieve]\nmax_script_size = 10\n", "[sieve] max_script_size: must be a whole number from 1024"),
    ("[sieve]\nquota = 1\n", "[sieve] quota: unknown key"),
])
def test_each_mistake_names_file_table_and_key(tmp_path, text, expected):
    """A wrong config stops with one line naming the file, the table, the key and the problem."""
    message = config_error(tmp_path, text)
    assert message.startswith(str(tmp_path / "bad.toml") + ": ")
    assert expected in message
    assert "\n" not in message


def test_not_toml_and_missing_file(tmp_path):
    """Broken TOML and a missing file are config errors naming the file."""
    assert "not valid TOML" in config_error(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match="nope.toml: no such file"):
        load_config(tmp_path / "nope.toml")


def test_smtp_and_dns_tables(tmp_path):
    """[smtp] values reach the config (zones normalised, blocklists relative to the config's
    folder, "" = none) and [dns] name servers are parsed as (ip, port), port 53 by default."""
    path = write_config(tmp_path / "c.toml", {
        "smtp": {"max_message_size": 1048576, "max_recipients": 5, "max_connections_per_ip": 3,
                 "idle_timeout": 30, "max_received_headers": 20,
                 "dnsbl_zones": ["Zen.Test.", "bl.example"], "iprev": False,
                 "ip_blocklist": "lists/ips.txt", "sender_blocklist": ""},
        "dns": {"nameservers": ["192.0.2.53", "127.0.0.1:5353", "2001:db8::53",
                                "[2001:db8::54]:5300"], "timeout": 1.5},
    })
    config = load_config(path)
    smtp = config.smtp
    assert (smtp.max_message_size, smtp.max_recipients, smtp.max_connections_per_ip) == (1048576, 5, 3)
    assert smtp.idle_timeout == 30.0 and smtp.max_received_headers == 20
    assert smtp.dnsbl_zones == ("zen.test", "bl.example") and smtp.iprev is False
    assert smtp.ip_blocklist == tmp_path.resolve() / "lists" / "ips.txt"
    assert smtp.sender_blocklist is None
    assert config.dns.nameservers == (("192.0.2.53", 53), ("127.0.0.1", 5353),
                                      ("2001:db8::53", 53), ("2001:db8::54", 5300))
    assert config.dns.timeout == 1.5


def test_queue_and_relay_tables(tmp_path):
    """[queue] values reach the config; a [relay] provider fills in host and port (Amazon SES
    by region), a password can come from a file, and a custom relay takes host and port."""
    (tmp_path / "relay.pw").write_text("s3cret\n")
    path = write_config(tmp_path / "c.toml", {
        "queue": {"mx_port": 2525, "tls": "required", "retry_delays": [1, 2.5], "lifetime": 60,
                  "delay_warning": 30, "concurrency": 5, "domain_concurrency": 2,
                  "max_recipients": 10},
        "relay": {"provider": "amazon-ses", "region": "eu-west-1", "username": "AKIA",
                  "password_file": "relay.pw"},
    })
    config = load_config(path)
    assert config.queue.retry_delays == (1.0, 2.5) and config.queue.mx_port == 2525
    assert (config.queue.concurrency, config.queue.domain_concurrency) == (5, 2)
    relay = config.relay
    assert (relay.host, relay.port, relay.tls) == ("email-smtp.eu-west-1.amazonaws.com", 587,
                                                   "starttls")
    assert (relay.username, relay.password, relay.enabled) == ("AKIA", "s3cret", True)
    custom = load_config(write_config(tmp_path / "d.toml", {"relay": {
        "provider": "custom", "host": "[192.0.2.7]", "tls": "tls"}})).relay
    assert (custom.host, custom.port) == ("[192.0.2.7]", 465)
    assert not load_config(None).relay.enabled


def test_an_empty_dnsbl_list_switches_dnsbl_off(tmp_path):
    """dnsbl_zones = [] means no DNSBL lookups at all."""
    config = load_config(write_config(tmp_path / "c.toml", {"smtp": {"dnsbl_zones": []}}))
    assert config.smtp.dnsbl_zones == ()


def test_container_builds_limits_and_resolver_from_the_config(tmp_path):
    """The SMTP factory gets its Limits from [smtp]; the resolver uses [dns]."""
    from cloudmail.app import Container

    path = write_config(tmp_path / "c.toml", {
        "server": {"data_dir": str(tmp_path / "data")},
        "smtp": {"max_message_size": 2048, "max_recipients": 7, "max_connections_per_ip": 2,
                 "idle_timeout": 12, "dnsbl_zones": [], "iprev": False},
        "dns": {"nameservers": ["127.0.0.1:5353"], "timeout": 2},
    })
    container = Container(load_config(path))
    limits = container.smtp_limits
    assert (limits.max_message_size, limits.max_recipients, limits.max_connections_per_ip,
            limits.idle_timeout) == (2048, 7, 2, 12.0)
    resolver = container.resolver
    try:
        assert resolver.timeout == 2.0
        assert resolver._client.servers == [("127.0.0.1", 5353)]
    finally:
        resolver.close()


def test_sieve_table_reaches_managesieve_and_delivery(tmp_path):
    """[sieve] quotas go to the ManageSieve factory; the global script folder defaults to the
    data folder's sieve-global."""
    from cloudmail.app import Container
    config = load_config(write_config(tmp_path / "c.toml", {
        "server": {"data_dir": str(tmp_path / "data")},
        "sieve": {"max_scripts": 3, "max_script_size": 4096, "max_redirects": 2}}))
    container = Container(config)
    factory = container.managesieve_factory()
    assert (factory.max_scripts, factory.max_script_size) == (3, 4096)
    assert config.sieve.global_scripts is None and config.sieve.max_redirects == 2
    container.pools.stopService()
