"""The server as operators run it: `twistd -n cloudmail` in a real process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import write_config

TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_config(tmp_path: Path, port: int, **tables: dict) -> Path:
    base = {
        "server": {"hostname": "mail.example.test", "data_dir": str(tmp_path / "data")},
        "listen": {"smtp": "", "submission": "", "submissions": "", "imap": "", "imaps": "",
                   "managesieve": "", "admin": f"tcp:{port}:interface=127.0.0.1"},
        "smtp": {"dnsbl_zones": [], "iprev": False, "authenticate": False},  # no DNS lookups on the Internet
    }
    for table, keys in tables.items():
        base.setdefault(table, {}).update(keys)
    return write_config(tmp_path / "cloudmail.toml", base)


def twistd(tmp_path: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([TWISTD, "-n", "--pidfile=", "cloudmail", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def get(port: int, path: str, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_healthy(process: subprocess.Popen, port: int, seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"twistd exited {process.returncode}:\n{process.stdout.read()}")
        try:
            return get(port, "/health")[1]
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("the server did not answer /health in time")


def finish(process: subprocess.Popen) -> str:
    """Wait for a start that should fail by itself; its output."""
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        return stop(process)
    return output


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=20)
    return output


def start_server(tmp_path: Path, **tables: dict) -> tuple[subprocess.Popen, int, dict]:
    """Start twistd on a free admin port and wait for /health; (process, port, health).

    A port found free can be taken by another test's client socket before twistd binds it, so
    a start that fails with "cannot listen" is tried again on another port.
    """
    for _ in range(3):
        port = free_port()
        process = twistd(tmp_path, "--config", str(server_config(tmp_path, port, **tables)))
        try:
            return process, port, wait_healthy(process, port)
        except AssertionError as e:
            stop(process)
            if "cannot listen" not in str(e):
                raise
    raise AssertionError("no free port for the admin listener")


def provision(port: int, token: str) -> None:
    """Domain example.com, user alice and the mailbox alice@example.com, through the admin API."""
    for path, body in [("/api/v1/domains", {"name": "example.com"}),
                       ("/api/v1/users", {"username": "alice", "password": "long enough"}),
                       ("/api/v1/mailboxes", {"address": "alice@example.com", "owner": "alice"})]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST",
                                         data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def server(tmp_path):
    """A running `twistd -n cloudmail` on the built-in directory; yields (process, port)."""
    process, port, _ = start_server(tmp_path)
    try:
        yield process, port
    finally:
        stop(process)


def test_twistd_lists_the_plugin():
    """After installing, `twistd --help` lists cloudmail."""
    output = subprocess.run([TWISTD, "--help"], capture_output=True, text=True).stdout
    assert "cloudmail" in output


def test_first_start_makes_the_data_folder(server, tmp_path):
    """One data folder: SQLite store, admin token (0600) and a self-signed certificate."""
    process, port = server
    data = tmp_path / "data"
    assert (data / "cloudmail.sqlite").exists()
    token_file = data / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert (data / "tls" / "cert.pem").exists() and (data / "tls" / "key.pem").exists()
    token = token_file.read_text().strip()
    assert get(port, "/api/v1/domains", token) == (200, {"items": []})
    assert get(port, "/api/v1/domains")[0] == 401


def test_token_survives_a_restart(tmp_path):
    """The token made on first start is kept on the next start."""
    tokens = set()
    for _ in range(2):
        process, port, _ = start_server(tmp_path)
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        tokens.add(token)
        assert get(port, "/api/v1/users", token)[0] == 200
        output = stop(process)
        assert process.returncode == -signal.SIGTERM, output  # twistd re-raises the signal it got
        assert "Traceback" not in output and "Main loop terminated." in output
    assert len(tokens) == 1


def test_unreachable_ldap_degrades_instead_of_failing(tmp_path):
    """With LDAP down the server still starts, logs why, and /health says degraded."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    process, port, health = start_server(
        tmp_path, directory={"backend": "ldap"},
        ldap={"urls": [f"ldap://127.0.0.1:{dead}"], "user_base": "dc=example,dc=com",
              "connect_timeout": 1, "timeout": 1})
    try:
        assert health["status"] == "degraded" and health["database"] == "ok"
        assert get(port, "/health")[1]["status"] == "degraded"
    finally:
        output = stop(process)
    assert "the directory is unavailable" in output
    assert "Traceback" not in output


def test_check_config_reports_ok_and_errors(tmp_path):
    """`--check-config` says OK for a good file, and names file, table and key for a bad one."""
    good = server_config(tmp_path, free_port())
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "cloudmail", "--config", str(good),
                             "--check-config"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "config OK" in result.stdout
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("text, expected", [
    ("[server]\nhostname = 'mail.example.test'\nflavour = 'x'\n", "[server] flavour: unknown key"),
    ("[listen]\nimap = 'tcp:port'\n", "[listen] imap: not a valid endpoint string"),
    ("[directory]\nbackend = 'ldap'\n", "[ldap] urls: required"),
])
def test_broken_config_stops_the_start_with_one_line(tmp_path, text, expected):
    """A bad config: exit status 1 and one line naming the file, table and key; no traceback."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    process = twistd(tmp_path, "--config", str(path))
    output = finish(process)
    assert process.returncode == 1
    assert f"cloudmail: {path}: {expected}" in output
    assert "Traceback" not in output


def test_port_in_use_is_a_clear_error(tmp_path):
    """A listener whose port is taken stops the start, naming the listener and the port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = twistd(tmp_path, "--config", str(server_config(tmp_path, port)))
        output = finish(process)
    assert process.returncode == 1
    assert f"cloudmail: cannot listen for admin on 'tcp:{port}:interface=127.0.0.1'" in output
    assert "Address already in use" in output
    assert "Traceback" not in output


def test_unwritable_data_folder_is_a_clear_error(tmp_path):
    """A data folder that cannot be made stops the start with one line naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    port = free_port()
    config = server_config(tmp_path, port, server={"data_dir": str(blocker / "data")})
    process = twistd(tmp_path, "--config", str(config))
    output = finish(process)
    assert process.returncode == 1
    assert f"cloudmail: data folder {blocker / 'data'}:" in output
    assert "Traceback" not in output


def python_usable_by(user: str) -> bool:
    """Whether `user` can run this interpreter (not so when it lives in root's home)."""
    probe = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c",
                            "import encodings.idna, cloudmail.tap"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_uid_gid_drop_after_binding():
    """With --uid/--gid the port is bound as root and the data files belong to the service user."""
    import pwd
    import tempfile
    nobody = pwd.getpwnam("nobody")
    if not python_usable_by("nobody"):
        pytest.skip(f"user nobody cannot run {sys.executable} (it is in a private folder)")
    tmp_path = Path(tempfile.mkdtemp(prefix="cloudmail-uid-"))
    os.chmod(tmp_path, 0o755)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    config = server_config(tmp_path, port)
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "--uid", str(nobody.pw_uid), "--gid", str(nobody.pw_gid),
         "cloudmail", "--config", str(config)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(process, port)
        status = Path(f"/proc/{process.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
        for name in ("cloudmail.sqlite", "admin.token", "tls/key.pem"):
            assert (data / name).stat().st_uid == nobody.pw_uid
    finally:
        stop(process)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_mail_sent_to_the_running_server_lands_in_the_maildir(tmp_path):
    """twistd with the smtp listener: a domain and mailbox made through the API, then smtplib
    delivers a message that is on disk in the mailbox's Maildir when the 250 comes back."""
    import smtplib
    smtp_port = free_port()
    process, port, _ = start_server(tmp_path, listen={"smtp": f"tcp:{smtp_port}:interface=127.0.0.1"})
    try:
        provision(port, (tmp_path / "data" / "admin.token").read_text().strip())
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.ehlo("client.remote.test")
            client.starttls()
            client.ehlo("client.remote.test")
            client.sendmail("sender@remote.test", ["Alice@Example.com"], b"Subject: hi\r\n\r\nHello\r\n")
        new = list((tmp_path / "data" / "mail" / "example.com" / "alice" / "new").iterdir())
        assert len(new) == 1 and new[0].read_bytes().endswith(b"Subject: hi\r\n\r\nHello\r\n")
        assert b"with ESMTPS id " in new[0].read_bytes()
    finally:
        output = stop(process)
    assert "delivered " in output and "alice@example.com (INBOX)" in output


def test_a_mailbox_added_with_the_cli_gets_mail_at_once(tmp_path):
    """`cloudmail-admin` writes the database from another process; the running server notices
    within a second or two (it routes from cached look-ups) and takes mail for the new mailbox."""
    import smtplib
    smtp_port = free_port()
    process, port, _ = start_server(tmp_path, listen={"smtp": f"tcp:{smtp_port}:interface=127.0.0.1"})

    def rcpt() -> int:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.ehlo("client.remote.test")
            client.mail("sender@remote.test")
            return client.rcpt("bob@example.com")[0]
    try:
        provision(port, (tmp_path / "data" / "admin.token").read_text().strip())
        assert rcpt() == 550
        config = str(tmp_path / "cloudmail.toml")
        for args in (["user", "add", "bob", "--password-stdin"],
                     ["mailbox", "add", "bob@example.com", "--owner", "bob"]):
            subprocess.run([sys.executable, "-m", "cloudmail.admin.cli", "--config", config, *args],
                           input="long enough\n", text=True, check=True, capture_output=True)
        deadline = time.monotonic() + 5
        while rcpt() != 250:
            assert time.monotonic() < deadline, "the new mailbox was not seen in 5 s"
            time.sleep(0.2)
    finally:
        stop(process)


def test_start_clears_crash_leftovers(tmp_path):
    """A spool file and a Maildir tmp/ file older than 36 h, as a crash leaves them, are gone
    after a start; a recent tmp/ file (a delivery of another program, maybe) is kept."""
    data = tmp_path / "data"
    (data / "spool").mkdir(parents=True)
    leftover = data / "spool" / "data-crash.eml"
    leftover.write_bytes(b"Subject: never acknowledged\r\n\r\n")
    tmp = data / "mail" / "example.com" / "alice" / "tmp"
    tmp.mkdir(parents=True)
    old, recent = tmp / "old.partial", tmp / "recent.partial"
    old.write_bytes(b"x")
    recent.write_bytes(b"x")
    two_days_ago = time.time() - 48 * 3600
    os.utime(old, (two_days_ago, two_days_ago))
    process, _, _ = start_server(tmp_path)
    try:
        deadline = time.monotonic() + 5
        while old.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not leftover.exists() and not old.exists() and recent.exists()
    finally:
        output = stop(process)
    assert "removed 1 unfinished message(s)" in output
    assert "removed 1 stale file(s)" in output
