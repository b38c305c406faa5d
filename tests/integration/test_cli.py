"""`cloudmail-admin`, run as the real command in a subprocess against a config in tmp_path."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from cloudmail.admin import cli
from cloudmail.errors import AuthenticationFailed
from tests.conftest import test_config, write_config


def admin(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cloudmail-admin --config CONFIG ARGS...`; stdin is empty unless given."""
    return subprocess.run([sys.executable, "-m", "cloudmail.admin.cli", "--config", str(config),
                           *args], input=stdin or "", capture_output=True, text=True, timeout=300)


def ok(config: Path, *args: str, stdin: str | None = None) -> str:
    """Run a command that must succeed; return its stdout."""
    done = admin(config, *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def as_json(config: Path, *args: str, stdin: str | None = None):
    """Run a command with `--json` and parse what it prints."""
    return json.loads(ok(config, "--json", *args, stdin=stdin))


def failed(config: Path, *args: str, status: int = 1, stdin: str | None = None) -> str:
    """Run a command that must fail with `status`, without a traceback; return its stderr."""
    done = admin(config, *args, stdin=stdin)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done.stderr


def rows(table: str) -> list[list[str]]:
    """An aligned plain-text table as cells (split on runs of two or more spaces)."""
    import re
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()]


def fields(text: str) -> dict[str, str]:
    """`key: value` lines as a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines())
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The path of a test config whose data folder is in tmp_path."""
    return test_config(tmp_path).source


@pytest.fixture
def example(config: Path) -> Path:
    """The example flow's address book: example.com, alice and bob, a mailbox, alias and group."""
    ok(config, "domain", "add", "example.com")
    ok(config, "user", "add", "alice", "--password-stdin", "--display-name", "Alice Liddell",
       stdin="correct horse\n")
    ok(config, "user", "add", "bob", "--password-stdin", stdin="battery staple\n")
    ok(config, "mailbox", "add", "alice@example.com", "--owner", "alice")
    ok(config, "alias", "add", "al@example.com", "--to", "alice@example.com")
    ok(config, "group", "add", "team@example.com", "--member", "alice", "--member", "bob")
    ok(config, "catchall", "set", "example.com", "alice@example.com")
    return config


def test_example_flow_lists_as_tables(example):
    """The documented example flow leaves exactly what the list commands print as tables."""
    domains = rows(ok(example, "domain", "list"))
    assert domains[0] == ["NAME", "DKIM SELECTOR", "RELAY", "MASQUERADE", "CREATED"]
    assert domains[1][:4] == ["example.com", "cloudmail", "-", "no"]
    assert rows(ok(example, "user", "list")) == [["USERNAME", "DISPLAY NAME"],
                                                 ["alice", "Alice Liddell"], ["bob"]]
    mailboxes = rows(ok(example, "mailbox", "list"))
    assert mailboxes[0] == ["ADDRESS", "OWNER TYPE", "OWNER", "CREATED"]
    assert [r[:3] for r in mailboxes[1:]] == [["alice@example.com", "user", "alice"],
                                              ["team@example.com", "group", "team"]]
    aliases = rows(ok(example, "alias", "list"))
    assert aliases[0] == ["ADDRESS", "MAILBOX", "CREATED"]
    assert [r[:2] for r in aliases[1:]] == [["al@example.com", "alice@example.com"]]
    assert rows(ok(example, "group", "list")) == [["NAME", "MEMBERS"], ["team", "alice, bob"]]
    assert fields(ok(example, "catchall", "show", "example.com")) == {
        "domain": "example.com", "mailboxes": "alice@example.com"}


def test_json_flag_prints_the_service_json(example):
    """With --json, list and show commands print the service's JSON (lists and objects)."""
    assert [d["name"] for d in as_json(example, "domain", "list")] == ["example.com"]
    assert as_json(example, "user", "list") == [
        {"username": "alice", "display_name": "Alice Liddell", "emails": []},
        {"username": "bob", "display_name": "", "emails": []}]
    alice = as_json(example, "user", "show", "alice")
    assert alice["mailboxes"] == ["alice@example.com"]
    mailbox = as_json(example, "mailbox", "show", "alice@example.com")
    assert mailbox["owner_type"] == "user" and mailbox["aliases"] == ["al@example.com"]
    assert as_json(example, "alias", "list", "--mailbox", "alice@example.com")[0]["address"] == \
        "al@example.com"
    assert as_json(example, "group", "show", "team") == {
        "name": "team", "members": ["alice", "bob"], "mailboxes": ["team@example.com"]}
    assert as_json(example, "catchall", "show", "example.com") == {
        "domain": "example.com", "mailboxes": ["alice@example.com"]}


def test_domain_show_gives_the_dkim_record(config):
    """`domain show` prints the DKIM TXT record name and value to publish, as key: value lines."""
    ok(config, "domain", "add", "Example.COM")
    shown = fields(ok(config, "domain", "show", "example.com"))
    assert shown["name"] == "example.com"
    assert shown["dkim.record_name"] == "cloudmail._domainkey.example.com"
    assert shown["dkim.record"].startswith("v=DKIM1; k=rsa; p=")
    assert shown["relay.host"] == "-" and shown["masquerade"] == "no"


def test_domain_set_changes_selector_key_masquerading_and_relay(config, tmp_path):
    """`domain set` changes each setting; the relay password comes from stdin, never shown."""
    ok(config, "domain", "add", "example.com")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "dkim.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    domain = as_json(config, "domain", "set", "example.com", "--dkim-selector", "s2026",
                     "--dkim-key-file", str(pem), "--masquerade", "on")
    assert domain["dkim"]["selector"] == "s2026" and domain["masquerade"] is True
    assert domain["dkim"]["record"].startswith("v=DKIM1; k=ed25519; p=")
    domain = as_json(config, "domain", "set", "example.com", "--relay", "smtp.relay.test:2525",
                     "--relay-username", "mailer", "--relay-password-stdin", "--relay-tls", "tls",
                     stdin="relay secret\n")
    assert domain["relay"] == {"host": "smtp.relay.test", "port": 2525, "username": "mailer",
                               "password_set": True, "tls": "tls"}
    assert "relay secret" not in json.dumps(domain)
    relay = fields(ok(config, "domain", "set", "example.com", "--no-relay", "--masquerade", "off"))
    assert relay["relay.host"] == "-" and relay["relay.password_set"] == "no"
    assert "--relay" in failed(config, "domain", "set", "example.com", "--relay-username", "x")
    assert "nothing to change" in failed(config, "domain", "set", "example.com")
    assert "relay.host" in failed(config, "domain", "set", "example.com", "--relay", "bad host")


def test_domain_set_relay_provider(config):
    """`--relay-provider` fills in the service's host and port, so `--relay` is optional;
    `--relay-region` picks the Amazon SES region and needs a provider."""
    ok(config, "domain", "add", "example.com")
    domain = as_json(config, "domain", "set", "example.com", "--relay-provider", "amazon-ses",
                     "--relay-region", "eu-central-1", "--relay-username", "AKIA",
                     "--relay-password-stdin", stdin="ses secret\n")
    assert domain["relay"] == {"host": "email-smtp.eu-central-1.amazonaws.com", "port": 587,
                               "username": "AKIA", "password_set": True, "tls": "starttls"}
    relay = fields(ok(config, "domain", "set", "example.com", "--relay-provider", "postmark"))
    assert relay["relay.host"] == "smtp.postmarkapp.com" and relay["relay.port"] == "587"
    domain = as_json(config, "domain", "set", "example.com", "--relay-provider", "mailgun",
                     "--relay", "smtp.eu.mailgun.org:2525")
    assert (domain["relay"]["host"], domain["relay"]["port"]) == ("smtp.eu.mailgun.org", 2525)
    assert "relay.host" in failed(config, "domain", "set", "example.com",
                                  "--relay-provider", "custom")
    assert "relay.region" in failed(config, "domain", "set", "example.com",
                                    "--relay-provider", "google", "--relay-region", "eu-west-1")
    assert "--relay-provider" in failed(config, "domain", "set", "example.com",
                                        "--relay-region", "eu-west-1")
    assert "--no-relay" in failed(config, "domain", "set", "example.com", "--no-relay",
                                  "--relay-provider", "google")
    assert "invalid choice" in failed(config, "domain", "set", "example.com",
                                      "--relay-provider", "nope", status=2)


def test_delete_commands_remove_what_they_name(example):
    """Each delete removes its thing; a domain or user still in use cannot be deleted."""
    assert "owns mailboxes" in failed(example, "user", "delete", "alice")
    assert "still has" in failed(example, "domain", "delete", "example.com")
    deleted = ok(example, "alias", "delete", "al@example.com")
    assert deleted == "deleted alias al@example.com\n"
    ok(example, "mailbox", "delete", "alice@example.com")
    ok(example, "mailbox", "delete", "team@example.com")
    ok(example, "group", "delete", "team")
    ok(example, "user", "delete", "alice")
    ok(example, "domain", "delete", "example.com")
    assert as_json(example, "domain", "list") == []
    assert as_json(example, "user", "list")[0]["username"] == "bob"
    assert as_json(example, "group", "list") == []
    assert "no alias" in failed(example, "alias", "delete", "al@example.com")


@pytest_twisted.ensureDeferred
async def test_password_from_stdin_is_the_login_password(container, example):
    """The passwords given on stdin (add, passwd) are the ones that log in; one newline is cut."""
    auth = container.authenticator
    assert (await auth.authenticate("alice@example.com", "correct horse")).username == "alice"
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("alice@example.com", "correct horse\n")
    assert ok(example, "user", "passwd", "alice", "--password-stdin",
              stdin="new password 2\n").strip() == "changed the password of alice"
    assert (await auth.authenticate("alice@example.com", "new password 2")).username == "alice"
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate("alice@example.com", "correct horse")
    assert "at least 8" in failed(example, "user", "passwd", "alice", "--password-stdin",
                                  stdin="short\n")


@pytest_twisted.ensureDeferred
async def test_mailbox_of_a_group_and_of_an_app(container, example):
    """A group mailbox needs a group; an app mailbox's password is printed once and logs in."""
    ok(example, "group", "add", "sales")
    created = as_json(example, "mailbox", "add", "orders@example.com", "--owner-group", "sales")
    assert (created["owner_type"], created["owner"]) == ("group", "sales")
    app = admin(example, "mailbox", "add", "backup.app@example.com", "--app")
    assert app.returncode == 0 and "shown only now" in app.stderr
    password = fields(app.stdout)["password"]
    login = await container.authenticator.authenticate("backup.app@example.com", password)
    assert login.username is None
    assert "password" not in as_json(example, "mailbox", "show", "backup.app@example.com")
    listed = as_json(example, "mailbox", "list", "--owner", "sales")
    assert [m["address"] for m in listed] == ["orders@example.com"]
    assert len(as_json(example, "mailbox", "list", "--domain", "example.com")) == 4
    assert "owner" in failed(example, "mailbox", "add", "x@example.com", "--owner", "nobody")
    failed(example, "mailbox", "add", "x@example.com", status=2)


def test_group_members_are_added_and_removed(example):
    """`group member add/remove` change the members; the group shows them and its mailboxes."""
    assert fields(ok(example, "group", "add", "ops", "--member", "alice")) == {
        "name": "ops", "members": "alice"}
    assert as_json(example, "group", "member", "add", "ops", "bob")["members"] == ["alice", "bob"]
    shown = fields(ok(example, "group", "member", "remove", "ops", "alice"))
    assert shown["members"] == "bob"
    assert "not in group" in failed(example, "group", "member", "remove", "ops", "alice")
    assert fields(ok(example, "group", "show", "team"))["mailboxes"] == "team@example.com"
    assert "no group" in failed(example, "group", "show", "nope")


def test_catchall_set_to_nothing_rejects_unknown_addresses(example):
    """`catchall set DOMAIN` with no mailbox clears the catch-all, and `show` says so."""
    ok(example, "mailbox", "add", "bob@example.com", "--owner", "bob")
    both = as_json(example, "catchall", "set", "example.com", "alice@example.com",
                   "bob@example.com")
    assert both["mailboxes"] == ["alice@example.com", "bob@example.com"]
    ok(example, "catchall", "set", "example.com")
    assert "rejected" in fields(ok(example, "catchall", "show", "example.com"))["mailboxes"]
    assert as_json(example, "catchall", "show", "example.com")["mailboxes"] == []
    assert "mailboxes: no mailbox" in failed(example, "catchall", "set", "example.com",
                                             "nobody@example.com")


def test_errors_name_the_field_and_exit_1(example):
    """A ServiceError prints `cloudmail-admin: error: <field>: <message>` and exits 1."""
    assert failed(example, "mailbox", "add", "carol@nowhere.test", "--owner", "alice") == \
        "cloudmail-admin: error: address: no domain 'nowhere.test'\n"
    assert failed(example, "domain", "show", "nowhere.test").startswith(
        "cloudmail-admin: error: name: no domain")
    plus = failed(example, "mailbox", "add", "alice+tag@example.com", "--owner", "alice")
    assert plus.startswith("cloudmail-admin: error: address: ") and "'+'" in plus
    assert failed(example, "alias", "add", "a+b@example.com", "--to", "alice@example.com") \
        .startswith("cloudmail-admin: error: address: ")
    assert failed(example, "user", "add", "bad+name", "--password-hash", "{SSHA}x") \
        .startswith("cloudmail-admin: error: username: ")
    assert "exists already" in failed(example, "domain", "add", "example.com")
    assert "cannot read the DKIM key" in failed(example, "domain", "set", "example.com",
                                                "--dkim-key-file", "/nonexistent.pem")


def test_bad_config_exits_2_naming_file_and_key(tmp_path):
    """A config error prints the file, table and key and exits 2, before touching any data."""
    bad = write_config(tmp_path / "bad.toml", {"server": {"data_dir": str(tmp_path / "d"),
                                                          "hostname": 42}})
    err = failed(bad, "domain", "list", status=2)
    assert str(bad) in err and "[server] hostname" in err
    typo = write_config(tmp_path / "typo.toml", {"server": {"data_dir": str(tmp_path / "d"),
                                                           "hostnme": "x.test"}})
    assert "[server] hostnme: unknown key" in failed(typo, "user", "list", status=2)
    assert "no such file" in failed(tmp_path / "missing.toml", "user", "list", status=2)
    assert not (tmp_path / "d").exists()


def test_usage_errors_exit_2_and_passwords_are_never_arguments(config):
    """Missing verbs or arguments exit 2; there is no option that takes a password itself."""
    failed(config, "domain", status=2)
    failed(config, "frobnicate", status=2)
    failed(config, "user", "add", "alice", status=2)
    failed(config, "user", "add", "alice", "--password", "secret123", status=2)
    failed(config, "user", "add", "alice", "--password-s", "secret123", status=2)
    failed(config, "user", "passwd", "alice", status=2)
    failed(config, "domain", "set", "x.test", "--relay-password", "pw", status=2)


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command of the parser, as the words that name it (nouns, verbs, sub-verbs)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,)
                yield from command_paths(sub, path + (name,))


def test_every_command_has_help(capsys):
    """`--help` works for the program and every noun and verb, and describes it."""
    paths = list(command_paths(cli.build_parser()))
    assert ("group", "member", "remove") in paths and ("import",) in paths
    for path in [(), *paths]:
        with pytest.raises(SystemExit) as exit:
            cli.main([*path, "--help"])
        assert exit.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: cloudmail-admin") and len(out.splitlines()) > 3, path


def ssha(password: str, salt: bytes = b"salt1234") -> str:
    """An LDAP `{SSHA}` hash, as another server would have stored it."""
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


@pytest_twisted.ensureDeferred
async def test_import_creates_users_mailboxes_and_aliases(container, config, tmp_path):
    """A good CSV makes every user, mailbox and alias; bcrypt and {SSHA} hashes log in as is."""
    ok(config, "domain", "add", "example.com")
    ok(config, "domain", "add", "example.org")
    bcrypt_hash = bcrypt.hashpw(b"bcrypt password", bcrypt.gensalt(rounds=4)).decode()
    csv_file = tmp_path / "users.csv"
    csv_file.write_text(
        "username,password,password_hash,display_name,mailboxes,aliases\n"
        "alice,correct horse,,Alice Liddell,alice@example.com alice@example.org,al@example.com\n"
        f"bob,,{bcrypt_hash},\"Bob, the Builder\",bob@example.com,\n"
        f"carol,,{ssha('ssha password')},,carol@example.com,c@example.com c@example.org\n",
        encoding="utf-8")
    assert ok(config, "import", str(csv_file)).startswith(
        "imported 3 users, 4 mailboxes, 3 aliases in ")
    assert rows(ok(config, "user", "list"))[1:] == [
        ["alice", "Alice Liddell"], ["bob", "Bob, the Builder"], ["carol"]]
    assert [m["address"] for m in as_json(config, "mailbox", "list")] == [
        "alice@example.com", "bob@example.com", "carol@example.com", "alice@example.org"]
    assert {a["address"]: a["mailbox"] for a in as_json(config, "alias", "list")} == {
        "al@example.com": "alice@example.com", "c@example.com": "carol@example.com",
        "c@example.org": "carol@example.com"}
    auth = container.authenticator
    assert (await auth.authenticate("alice@example.org", "correct horse")).username == "alice"
    assert (await auth.authenticate("bob@example.com", "bcrypt password")).username == "bob"
    assert (await auth.authenticate("carol@example.com", "ssha password")).username == "carol"
    summary = as_json(config, "import", str(write_csv(tmp_path / "one.csv", 1)))
    assert (summary["users"], summary["mailboxes"], summary["aliases"]) == (1, 1, 0)


def write_csv(path: Path, users: int) -> Path:
    """A CSV of `users` users with plain passwords and one mailbox each at example.com."""
    lines = ["username,password,mailboxes"]
    lines += [f"user{i},password-{i},user{i}@example.com" for i in range(users)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_import_with_a_bad_row_names_its_line_and_creates_nothing(config, tmp_path):
    """A bad row on line 5 fails the whole import (exit 1, line 5 named) and nothing is made."""
    ok(config, "domain", "add", "example.com")
    csv_file = tmp_path / "users.csv"
    csv_file.write_text(
        "username,password,password_hash,mailboxes,aliases\n"
        "alice,correct horse,,alice@example.com,\n"
        "bob,battery staple,,bob@example.com,b@example.com\n"
        "carol,carol password,,carol@example.com,\n"
        "dave,dave password,,dave+x@example.com,\n"
        "erin,erin password,,erin@example.com,\n", encoding="utf-8")
    err = failed(config, "import", str(csv_file))
    assert "line 5" in err and "mailboxes" in err
    assert rows(ok(config, "user", "list")) == [["USERNAME", "DISPLAY NAME"]]
    assert as_json(config, "mailbox", "list") == [] and as_json(config, "alias", "list") == []
    csv_file.write_text("username,password,mailboxes\n"
                        "alice,correct horse,alice@example.com\n"
                        "bob,battery staple,alice@example.com\n", encoding="utf-8")
    assert "line 3" in failed(config, "import", str(csv_file))
    assert as_json(config, "user", "list") == []


def test_malformed_csv_names_the_line(config, tmp_path):
    """A missing header column, an unknown one or a row of the wrong width is named by line."""
    bad = tmp_path / "bad.csv"
    bad.write_text("username,password\nalice,correct horse\n", encoding="utf-8")
    assert "line 1" in failed(config, "import", str(bad)) and "mailboxes" in failed(
        config, "import", str(bad))
    bad.write_text("username,pasword,mailboxes\n", encoding="utf-8")
    assert "line 1: unknown column 'pasword'" in failed(config, "import", str(bad))
    bad.write_text("username,password,mailboxes\nalice,correct horse,alice@example.com\n\n"
                   "bob,battery staple\n", encoding="utf-8")
    assert f"{bad}: line 4: expected 3 fields, found 2" in failed(config, "import", str(bad))
    assert "cannot read" in failed(config, "import", str(tmp_path / "missing.csv"))


def test_import_of_1000_users(config, tmp_path):
    """1,000 users with plain passwords (argon2id in the auth pool) import in one go."""
    ok(config, "domain", "add", "example.com")
    csv_file = write_csv(tmp_path / "users.csv", 1000)
    start = time.monotonic()
    out = ok(config, "import", str(csv_file))
    print(f"\nimported 1000 users in {time.monotonic() - start:.1f} s (wall, whole command)")
    assert out.startswith("imported 1000 users, 1000 mailboxes, 0 aliases in ")
    assert len(as_json(config, "user", "list")) == 1000


def test_interrupted_import_ends_at_once_and_creates_nothing(config, tmp_path):
    """SIGTERM during the hashing ends the command at once (exit 130) with nothing imported."""
    ok(config, "domain", "add", "example.com")
    csv_file = write_csv(tmp_path / "users.csv", 1000)
    process = subprocess.Popen([sys.executable, "-m", "cloudmail.admin.cli", "--config",
                                str(config), "import", str(csv_file)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    start = time.monotonic()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err and out == ""
    assert time.monotonic() - start < 3
    assert as_json(config, "user", "list") == []


def test_ldap_directory_is_read_only_and_unavailability_is_clear(tmp_path):
    """With LDAP, user changes are refused (exit 1); an unreachable LDAP server is named, exit 1."""
    pytest.importorskip("cloudmail.directory.ldap")
    config = test_config(tmp_path, directory={"backend": "ldap"},
                         ldap={"urls": ["ldap://127.0.0.1:9"], "user_base": "dc=example,dc=test",
                               "connect_timeout": 1, "timeout": 1}).source
    assert "LDAP" in failed(config, "user", "add", "alice", "--password-hash", "{SSHA}x")
    assert "directory is unavailable" in failed(config, "user", "list")
