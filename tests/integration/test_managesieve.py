"""The ManageSieve listener (RFC 5804) with real clients over real sockets: a small Python
client written here (socket + ssl), and Debian's `sieve-connect` when it is installed.

The server runs on the test's reactor; every client runs in a thread (`deferToThread`).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from cloudmail.address import parse_address
from cloudmail.sieve.checker import SUPPORTED_EXTENSIONS
from cloudmail.sieve.managesieve import Line, LineReader, Refused, parse_line, quote
from cloudmail.sieve.scripts import active_script_text
from tests.integration.test_smtp_inbound import book

PASSWORD = "long enough"
GOOD = 'require ["fileinto"];\r\nif header :contains "subject" "x" {\r\n  fileinto "X";\r\n}\r\n'
BAD = 'require ["fileinto"];\r\nkeep;\r\nfrobnicate "now";\r\n'


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def plain(user: str = "alice@example.com", password: str = PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


@pytest.fixture
def sieve_factory(container):
    container.certs.load()
    return container.managesieve_factory()


@pytest.fixture
def managesieve(container, sieve_factory):
    """The managesieve listener (STARTTLS) over the test container; yields its port."""
    port = reactor.listenTCP(0, sieve_factory, interface="127.0.0.1")
    yield port.getHost().port
    pytest_twisted.blockon(port.stopListening())


def maildir(container, address: str = "alice@example.com") -> Path:
    return container.mailstore.mailbox_path(parse_address(address, app=None))


# --- a small ManageSieve client ----------------------------------------------------------------

_RESPONSE = re.compile(rb'^(OK|NO|BYE)(?: \(((?:[^()"]|"(?:[^"\\]|\\.)*")*)\))?(?: (.*))?$',
                       re.DOTALL)


class Response:
    def __init__(self, status: str, code: str | None, text: str, lines: list[bytes]) -> None:
        self.status, self.code, self.text, self.lines = status, code, text, lines

    def __repr__(self) -> str:
        return f"<{self.status} ({self.code}) {self.text!r} {self.lines!r}>"


def unquote(value: bytes) -> str:
    if value.startswith(b'"'):
        return re.sub(rb'\\(.)', rb'\1', value[1:-1]).decode()
    return value.decode()


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        self.greeting = self.read()

    def starttls(self) -> Response:
        self.send(b"STARTTLS")
        ok = self.read()
        assert ok.status == "OK", ok
        self.file.close()
        self.sock = tls_context().wrap_socket(self.sock)
        self.file = self.sock.makefile("rb")
        return self.read()  # RFC 5804 2.2: the capabilities again, then OK

    def send(self, data: bytes) -> None:
        self.sock.sendall(data + b"\r\n")

    def item(self) -> bytes:
        """One line, a trailing literal `{n}` read into it (as the literal's bytes)."""
        line = self.file.readline()
        if not line:
            raise ConnectionError("closed")
        line = line.rstrip(b"\r\n")
        marker = re.search(rb"\{(\d+)\}$", line)
        if marker:
            data = self.file.read(int(marker.group(1)))
            rest = self.file.readline().rstrip(b"\r\n")
            return line[:marker.start()] + b"\0LITERAL\0" + data + rest
        return line

    def read(self) -> Response:
        lines = []
        while True:
            line = self.item()
            match = _RESPONSE.match(line)
            if match:
                status, code, text = match.groups()
                if text and text.startswith(b"\0LITERAL\0"):
                    text = text[len(b"\0LITERAL\0"):]
                else:
                    text = text and unquote(text).encode()
                return Response(status.decode(), code and code.decode(),
                                (text or b"").decode(), lines)
            lines.append(line)

    def command(self, data: bytes) -> Response:
        self.send(data)
        return self.read()

    def capabilities(self, response: Response) -> dict[str, str]:
        caps = {}
        for line in response.lines:
            name, _, value = line.partition(b" ")
            caps[unquote(name).upper()] = unquote(value) if value else ""
        return caps

    def login(self, user: str = "alice@example.com", password: str = PASSWORD) -> Response:
        return self.command(b'AUTHENTICATE "PLAIN" "%s"' % plain(user, password).encode())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def literal(text: str, plus: bool = True) -> bytes:
    data = text.encode()
    return b"{%d%s}\r\n%s" % (len(data), b"+" if plus else b"", data)


def session(port: int) -> Client:
    c = Client(port)
    c.starttls()
    assert c.login().status == "OK"
    return c


# --- the wire (no sockets) -----------------------------------------------------------------------

def test_reader_literals_and_limits():
    """Both literal forms are read without a continuation; an oversized literal is refused as
    soon as its marker arrives and its octets are skipped, however the bytes are split."""
    stream = (b'PUTSCRIPT "a" {3+}\r\nabc\r\nCHECKSCRIPT {2}\r\nxy\r\n'
              b'PUTSCRIPT "b" {50+}\r\n' + b"L" * 50 + b' "tail {9+}"\r\nNOOP\r\n')
    for step in (1, 7, len(stream)):
        reader = LineReader(max_literal=10)
        events = []
        for i in range(0, len(stream), step):
            events += reader.feed(stream[i:i + step])
        assert [parse_line(e) if isinstance(e, Line) else e for e in events] == [
            ["PUTSCRIPT", b"a", b"abc"], ["CHECKSCRIPT", b"xy"],
            Refused("a string can be at most 10 octets", "QUOTA/MAXSIZE"), ["NOOP"]]
    reader = LineReader(max_line=20)
    assert reader.feed(b"NOOP " + b"x" * 40 + b"\r\nNOOP\r\n")[0].text == "command line too long"


def test_quoting():
    assert quote('say "hi" \\') == b'"say \\"hi\\" \\\\"'
    assert quote("two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert parse_line(Line([b'NOOP "a\\"b"'], [])) == ["NOOP", b'a"b']


# --- TLS and login -------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_capabilities_starttls_and_login(container, managesieve):
    """Before TLS: SASL empty, STARTTLS offered, AUTHENTICATE refused (ENCRYPT-NEEDED); after
    STARTTLS the capabilities come again unasked, with SASL PLAIN; then login works, with the
    initial response or in a dialogue."""
    await book(container)

    def script():
        c = Client(managesieve)
        before = c.capabilities(c.greeting)
        refused = c.login()
        asked = c.capabilities(c.command(b"CAPABILITY"))
        again = c.starttls()
        after = c.capabilities(again)
        c.send(b'AUTHENTICATE "PLAIN"')
        challenge = c.item()
        c.send(literal(plain()))
        logged_in = c.read()
        owner = c.capabilities(c.command(b"CAPABILITY"))
        starttls_again = c.command(b"STARTTLS")
        logout = c.command(b"LOGOUT")
        closed = c.file.read()
        c.close()
        return before, refused, asked, again, after, challenge, logged_in, owner, \
            starttls_again, logout, closed
    (before, refused, asked, again, after, challenge, logged_in, owner, starttls_again, logout,
     closed) = await deferToThread(script)
    assert before["SASL"] == "" and "STARTTLS" in before and before["VERSION"] == "1.0"
    assert before["IMPLEMENTATION"] == "cloudmail" and "UNAUTHENTICATE" in before
    assert set(before["SIEVE"].split()) == set(SUPPORTED_EXTENSIONS)
    assert refused.status == "NO" and refused.code == "ENCRYPT-NEEDED"
    assert asked == before
    assert again.status == "OK" and after["SASL"] == "PLAIN" and "STARTTLS" not in after
    assert challenge == b'""'
    assert logged_in.status == "OK", logged_in
    assert owner["OWNER"] == "alice@example.com" and owner["SASL"] == ""
    assert starttls_again.status == "NO"
    assert logout.status == "OK" and closed == b""


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_throttled_then_bye(container, managesieve):
    """Wrong passwords get NO, each later than the one before (the shared LoginThrottle), and
    the fifth ends the session with BYE; an alias is no login; `*` cancels."""
    await book(container)
    container.login_throttle.max_delay = 0.3

    def script():
        c = Client(managesieve)
        c.starttls()
        c.send(b'AUTHENTICATE "PLAIN"')
        c.item()
        cancelled = c.command(b'"*"')
        alias = c.login("al@example.com")
        answers = []
        for _ in range(4):
            start = time.monotonic()
            answers.append((c.login(password="wrong"), time.monotonic() - start))
        c.close()
        return cancelled, alias, answers
    cancelled, alias, answers = await deferToThread(script)
    assert cancelled.status == "NO" and alias.status == "NO"
    assert [a.status for a, _ in answers] == ["NO", "NO", "NO", "BYE"]
    assert all(elapsed >= 0.25 for _, elapsed in answers)  # 2nd+ failure of this IP
    assert container.login_throttle.delay("127.0.0.1", "alice@example.com") > 0


# --- the commands ----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_every_command(container, managesieve):
    """PUTSCRIPT (both literal forms), LISTSCRIPTS, SETACTIVE, GETSCRIPT, CHECKSCRIPT,
    HAVESPACE, RENAMESCRIPT (the active one stays active), DELETESCRIPT, NOOP with a tag,
    UNAUTHENTICATE, on disk as Dovecot lays it out."""
    await book(container)
    home = maildir(container)

    def script():
        c = session(managesieve)
        r = {}
        r["space"] = c.command(b'HAVESPACE "vacation" 1000')
        r["put"] = c.command(b'PUTSCRIPT "vacation" ' + literal(GOOD))
        r["put_sync"] = c.command(b'PUTSCRIPT "caf\xc3\xa9 rules" ' + literal("keep;\r\n", False))
        r["list1"] = c.command(b"LISTSCRIPTS")
        r["active"] = c.command(b'SETACTIVE "vacation"')
        r["list2"] = c.command(b"LISTSCRIPTS")
        r["link1"] = os.readlink(home / ".dovecot.sieve")
        r["delivery1"] = active_script_text(home)
        r["get"] = c.command(b'GETSCRIPT "vacation"')
        r["check"] = c.command(b"CHECKSCRIPT " + literal(GOOD))
        r["rename"] = c.command(b'RENAMESCRIPT "vacation" "holiday"')
        r["list3"] = c.command(b"LISTSCRIPTS")
        r["link2"] = os.readlink(home / ".dovecot.sieve")
        r["files"] = sorted(os.listdir(home / "sieve"))
        r["deactivate"] = c.command(b'SETACTIVE ""')
        r["delivery2"] = active_script_text(home)
        r["delete"] = c.command(b'DELETESCRIPT "holiday"')
        r["list4"] = c.command(b"LISTSCRIPTS")
        r["noop"] = c.command(b'NOOP "STARTTLS-SYNC-42"')
        r["unauth"] = c.command(b"UNAUTHENTICATE")
        r["after_unauth"] = c.command(b"LISTSCRIPTS")
        r["relogin"] = c.login()
        r["list5"] = c.command(b"LISTSCRIPTS")
        c.command(b"LOGOUT")
        c.close()
        return r
    r = await deferToThread(script)
    for key in ("space", "put", "put_sync", "active", "get", "check", "rename", "deactivate",
                "delete", "noop", "unauth", "relogin"):
        assert r[key].status == "OK", (key, r[key])
    assert r["list1"].lines == [b'"caf\xc3\xa9 rules"', b'"vacation"']
    assert r["list2"].lines == [b'"caf\xc3\xa9 rules"', b'"vacation" ACTIVE']
    assert r["link1"] == "sieve/vacation.sieve" and r["delivery1"] == GOOD
    assert r["get"].lines == [b"\0LITERAL\0" + GOOD.encode()]
    assert r["list3"].lines == [b'"caf\xc3\xa9 rules"', b'"holiday" ACTIVE']
    assert r["link2"] == "sieve/holiday.sieve"
    assert r["files"] == ["café rules.sieve", "holiday.sieve"]
    assert r["delivery2"] is None and not (home / ".dovecot.sieve").exists()
    assert r["list4"].lines == [b'"caf\xc3\xa9 rules"']
    assert r["noop"].code == 'TAG "STARTTLS-SYNC-42"'
    assert r["after_unauth"].status == "NO"
    assert r["list5"].lines == [b'"caf\xc3\xa9 rules"']
    assert (home / "sieve" / "café rules.sieve").read_bytes() == b"keep;\r\n"


@pytest_twisted.ensureDeferred
async def test_errors_keep_the_session(container, managesieve):
    """A bad script is refused with its line; the active script cannot be deleted; rename onto
    an existing name, unknown scripts, names leaving the folder, unknown commands and syntax
    errors get NO; the session goes on after each."""
    await book(container)
    home = maildir(container)

    def script():
        c = Client(managesieve)
        r = {"before_login": c.command(b"LISTSCRIPTS")}
        c.starttls()
        c.login()
        r["bad"] = c.command(b'PUTSCRIPT "bad" ' + literal(BAD))
        r["check_bad"] = c.command(b"CHECKSCRIPT " + literal(BAD))
        c.command(b'PUTSCRIPT "one" ' + literal("keep;\r\n"))
        c.command(b'PUTSCRIPT "two" ' + literal("keep;\r\n"))
        c.command(b'SETACTIVE "one"')
        r["delete_active"] = c.command(b'DELETESCRIPT "one"')
        r["rename_existing"] = c.command(b'RENAMESCRIPT "two" "one"')
        r["get_missing"] = c.command(b'GETSCRIPT "nope"')
        r["delete_missing"] = c.command(b'DELETESCRIPT "nope"')
        r["activate_missing"] = c.command(b'SETACTIVE "nope"')
        r["rename_missing"] = c.command(b'RENAMESCRIPT "nope" "other"')
        r["names"] = [c.command(b"PUTSCRIPT " + quote(name) + b" " + literal("keep;\r\n"))
                      for name in ("../escape", "a/b", ".hidden", "..", "tab\there", "",
                                   "x" * 129)]
        r["rename_out"] = c.command(b'RENAMESCRIPT "two" "../../two"')
        r["get_out"] = c.command(b'GETSCRIPT "../../../../cloudmail.toml"')
        r["unknown"] = c.command(b"FROBNICATE")
        r["syntax"] = c.command(b'GETSCRIPT "unterminated')
        r["args"] = c.command(b"GETSCRIPT")
        r["not_utf8"] = c.command(b'PUTSCRIPT "latin" {4+}\r\n\xe9t\xe9;')
        r["list"] = c.command(b"LISTSCRIPTS")
        c.close()
        return r
    r = await deferToThread(script)
    assert r["before_login"].status == "NO"
    for key in ("bad", "check_bad"):
        assert r[key].status == "NO" and "line 3" in r[key].text, r[key]
    assert r["delete_active"].status == "NO" and r["delete_active"].code == "ACTIVE"
    assert r["rename_existing"].code == "ALREADYEXISTS"
    for key in ("get_missing", "delete_missing", "activate_missing", "rename_missing"):
        assert r[key].status == "NO" and r[key].code == "NONEXISTENT", (key, r[key])
    assert all(n.status == "NO" for n in r["names"]), r["names"]
    for key in ("rename_out", "get_out", "unknown", "syntax", "args", "not_utf8"):
        assert r[key].status == "NO", (key, r[key])
    assert r["list"].status == "OK" and r["list"].lines == [b'"one" ACTIVE', b'"two"']
    assert sorted(os.listdir(home / "sieve")) == ["one.sieve", "two.sieve"]
    assert not any(p.name.startswith(("escape", "two")) for p in home.parent.rglob("*")
                   if home / "sieve" not in p.parents)


@pytest_twisted.ensureDeferred
async def test_quotas(container, sieve_factory, managesieve):
    """HAVESPACE and PUTSCRIPT enforce the script count and size; an oversized literal is
    refused as soon as its size is announced, before its octets arrive, and skipped."""
    await book(container)
    sieve_factory.max_scripts = 2
    sieve_factory.max_script_size = 100

    def script():
        c = session(managesieve)
        r = {"space_big": c.command(b'HAVESPACE "a" 101'),
             "space_ok": c.command(b'HAVESPACE "a" 100')}
        c.command(b'PUTSCRIPT "a" ' + literal("keep;"))
        c.command(b'PUTSCRIPT "b" ' + literal("keep;"))
        r["space_count"] = c.command(b'HAVESPACE "c" 10')
        r["space_replace"] = c.command(b'HAVESPACE "a" 10')
        r["put_count"] = c.command(b'PUTSCRIPT "c" ' + literal("keep;"))
        r["replace"] = c.command(b'PUTSCRIPT "a" ' + literal("discard;"))
        c.send(b'PUTSCRIPT "a" {1000000+}')
        r["huge"] = c.read()  # answered before the literal is sent
        c.sock.sendall(b"k" * 1_000_000 + b"\r\n")
        r["after"] = c.command(b'NOOP "still here"')
        r["get"] = c.command(b'GETSCRIPT "a"')
        c.close()
        return r
    r = await deferToThread(script)
    assert r["space_big"].code == "QUOTA/MAXSIZE" and r["space_ok"].status == "OK"
    assert r["space_count"].code == "QUOTA/MAXSCRIPTS" and r["space_replace"].status == "OK"
    assert r["put_count"].code == "QUOTA/MAXSCRIPTS" and r["replace"].status == "OK"
    assert r["huge"].status == "NO" and r["huge"].code == "QUOTA/MAXSIZE"
    assert r["after"].status == "OK" and r["after"].code == 'TAG "still here"'
    assert r["get"].lines == [b"\0LITERAL\0discard;"]


# --- sieve-connect -------------------------------------------------------------------------------

SIEVE_CONNECT = shutil.which("sieve-connect")


@pytest_twisted.ensureDeferred
async def test_uploaded_script_files_mail_delivered_over_smtp(container, managesieve):
    """A script uploaded and activated over ManageSieve decides where mail delivered over SMTP
    lands: here into a folder it creates; other mail stays in INBOX."""
    import smtplib
    await book(container)
    script = ('require ["fileinto", "mailbox"];\n'
              'if header :contains "subject" "invoice" { fileinto :create "Bills"; }\n')

    def upload():
        c = session(managesieve)
        assert c.command(b'PUTSCRIPT "bills" ' + literal(script)).status == "OK"
        assert c.command(b'SETACTIVE "bills"').status == "OK"
        c.close()
    await deferToThread(upload)
    port = reactor.listenTCP(0, container.smtp_factory(), interface="127.0.0.1")

    def send(subject):
        with smtplib.SMTP("127.0.0.1", port.getHost().port, timeout=10) as client:
            client.sendmail("dave@remote.test", ["alice@example.com"],
                            f"From: dave@remote.test\r\nSubject: {subject}\r\n\r\nHi\r\n")
    try:
        await deferToThread(send, "Your invoice 42")
        await deferToThread(send, "Lunch?")
    finally:
        await port.stopListening()
    home = maildir(container)
    assert len(os.listdir(home / ".Bills" / "new")) == 1
    assert len(os.listdir(home / "new")) == 1


def sieve_connect(port: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SIEVE_CONNECT, "--server", "127.0.0.1", "--port", str(port), "--nosrv",
         "--user", "alice@example.com", "--passwordfd", "0", "--nosslverify",
         "--authmech", "PLAIN", *args],
        input=PASSWORD + "\n", capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


@pytest.mark.skipif(SIEVE_CONNECT is None, reason="sieve-connect is not installed (Debian "
                    "package sieve-connect)")
@pytest_twisted.ensureDeferred
async def test_sieve_connect(container, managesieve, tmp_path):
    """Debian's sieve-connect uploads, lists, activates, downloads, checks and deletes."""
    await book(container)
    home = maildir(container)
    work = tmp_path / "client"
    work.mkdir()
    (work / "rules.sieve").write_bytes(GOOD.encode())
    (work / "broken.sieve").write_text(BAD)

    def script():
        r = {"upload": sieve_connect(managesieve, "--upload", "--localsieve", "rules.sieve",
                                     cwd=work),
             "activate": sieve_connect(managesieve, "--activate", "--remotesieve",
                                       "rules.sieve", cwd=work),
             "list": sieve_connect(managesieve, "--list", cwd=work),
             "download": sieve_connect(managesieve, "--download", "--remotesieve",
                                       "rules.sieve", "--localsieve", "copy.sieve", cwd=work),
             "broken": sieve_connect(managesieve, "--upload", "--localsieve", "broken.sieve",
                                     cwd=work),
             "delete_active": sieve_connect(managesieve, "--delete", "--remotesieve",
                                            "rules.sieve", cwd=work)}
        r["deactivate"] = sieve_connect(managesieve, "--deactivate", cwd=work)
        r["delete"] = sieve_connect(managesieve, "--delete", "--remotesieve", "rules.sieve",
                                    cwd=work)
        return r
    r = await deferToThread(script)
    for key in ("upload", "activate", "list", "download", "deactivate", "delete"):
        assert r[key].returncode == 0, (key, r[key].stdout, r[key].stderr)
    assert "rules.sieve" in r["list"].stdout and "ACTIVE" in r["list"].stdout.upper()
    assert (work / "copy.sieve").read_bytes() == GOOD.encode()
    assert r["broken"].returncode != 0 and "line 3" in r["broken"].stdout + r["broken"].stderr
    assert r["delete_active"].returncode != 0
    assert not (home / "sieve" / "rules.sieve.sieve").exists()
    assert os.listdir(home / "sieve") == []


@pytest.mark.skipif(SIEVE_CONNECT is None, reason="sieve-connect is not installed (Debian "
                    "package sieve-connect)")
@pytest_twisted.ensureDeferred
async def test_sieve_connect_script_files_smtp_mail(container, managesieve, tmp_path):
    """A filter uploaded and activated with sieve-connect files the next message that arrives
    over SMTP into the folder it names."""
    import smtplib
    await book(container)
    work = tmp_path / "client"
    work.mkdir()
    (work / "lists.sieve").write_text('require ["fileinto", "mailbox"];\n'
                                      'if exists "list-id" { fileinto :create "Lists"; }\n')
    port = reactor.listenTCP(0, container.smtp_factory(), interface="127.0.0.1")

    def script():
        for args in (("--upload", "--localsieve", "lists.sieve"),
                     ("--activate", "--remotesieve", "lists.sieve")):
            done = sieve_connect(managesieve, *args, cwd=work)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        with smtplib.SMTP("127.0.0.1", port.getHost().port, timeout=10) as client:
            client.sendmail("news@remote.test", ["alice@example.com"],
                            "List-Id: <news.remote.test>\r\nSubject: News\r\n\r\nHi\r\n")
    try:
        await deferToThread(script)
    finally:
        await port.stopListening()
    assert len(os.listdir(maildir(container) / ".Lists" / "new")) == 1


def test_twistd_service_has_the_listener(tmp_path):
    """`[listen] managesieve` makes a listener of the service tree (no longer "a later
    release")."""
    from cloudmail.app import Container
    from cloudmail.sieve.managesieve import ManageSieveFactory
    from cloudmail.tap import CloudmailService
    from tests.conftest import test_config
    container = Container(test_config(tmp_path, listen={"managesieve": "tcp:0"}))
    service = CloudmailService(container)
    try:
        listener = service.getServiceNamed("managesieve")
        assert isinstance(listener.factory, ManageSieveFactory)
    finally:
        container.pools.stopService()
