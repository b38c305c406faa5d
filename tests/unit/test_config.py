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
