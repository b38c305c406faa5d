"""Mail sent with swaks (the Debian package) to the real `twistd -n cloudmail` (issue 3).

swaks is an independent SMTP client: it checks that the server speaks SMTP the way other
implementations expect, in plain text and with STARTTLS. The tests are skipped when it is not
installed (`make test` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.integration.test_crash_safety import start_logged
from tests.integration.test_twistd import provision

SWAKS = shutil.which("swaks")
pytestmark = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed (apt install swaks)")


@pytest.fixture(scope="module")
def mx(tmp_path_factory):
    """One server for the module with alice@example.com and the alias info@example.com."""
    import json
    import urllib.request

    tmp_path = tmp_path_factory.mktemp("swaks")
    process, admin, smtp, _ = start_logged(tmp_path)
    try:
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        provision(admin, token)
        request = urllib.request.Request(
            f"http://127.0.0.1:{admin}/api/v1/aliases", method="POST",
            data=json.dumps({"address": "info@example.com", "mailbox": "alice@example.com"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()
        yield smtp, tmp_path / "data" / "mail" / "example.com" / "alice"
    finally:
        process.terminate()
        process.wait(timeout=20)


def swaks(port: int, to: str, subject: str, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(port),
                           "--helo", "client.remote.test", "--from", "sender@remote.test",
                           "--to", to, "--header", f"Subject: {subject}",
                           "--body", "Sent by swaks.\n", "--timeout", "20", *options],
                          check=False, capture_output=True, text=True, timeout=60)


def delivered(maildir, subject: str) -> list[bytes]:
    return [raw for raw in (p.read_bytes() for p in (maildir / "new").iterdir())
            if f"Subject: {subject}\r\n".encode() in raw]


@pytest.mark.parametrize("to, options, protocol", [
    ("alice@example.com", (), b"with ESMTP id "),
    ("alice@example.com", ("--tls",), b"with ESMTPS id "),
    ("Info@Example.COM", ("--tls",), b"with ESMTPS id "),
], ids=["plain", "starttls", "alias-starttls"])
def test_swaks_delivers_to_the_maildir(mx, to, options, protocol):
    """swaks, in plain text or with STARTTLS, to a mailbox or an alias of it: one copy in the
    mailbox's new/, with our trace headers (ESMTPS and the TLS version when TLS was used)."""
    port, maildir = mx
    subject = f"swaks {uuid.uuid4().hex}"
    result = swaks(port, to, subject, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Message accepted as" in result.stdout
    copies = delivered(maildir, subject)
    assert len(copies) == 1
    raw = copies[0]
    assert raw.startswith(b"Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.com\r\n")
    assert protocol in raw and b"Sent by swaks.\r\n" in raw
    assert (b"(using TLSv1." in raw) == ("--tls" in options)


@pytest.mark.parametrize("to, reply", [
    ("nobody@example.com", "550 5.1.1"),
    ("someone@elsewhere.test", "554 5.7.1"),
], ids=["unknown-user", "relay"])
def test_swaks_refused_recipients(mx, to, reply):
    """An unknown user of our domain gets 550 5.1.1 and a foreign domain 554 5.7.1 at RCPT;
    swaks fails and nothing is stored."""
    port, maildir = mx
    subject = f"swaks {uuid.uuid4().hex}"
    result = swaks(port, to, subject)
    assert result.returncode != 0
    assert f"<** {reply}" in result.stdout, result.stdout
    assert delivered(maildir, subject) == []



def test_submission_on_587_and_465_with_swaks(tmp_path):
    """swaks logs in (AUTH PLAIN after STARTTLS on 587, AUTH LOGIN with TLS on connect on 465)
    and sends as alice@example.com to her own mailbox; without AUTH it is refused."""
    from tests.integration.test_twistd import free_port, start_server, stop
    ports = free_port(), free_port()
    process, admin, _ = start_server(tmp_path, listen={
        "submission": f"tcp:{ports[0]}:interface=127.0.0.1",
        "submissions": f"tcp:{ports[1]}:interface=127.0.0.1"})
    try:
        provision(admin, (tmp_path / "data" / "admin.token").read_text().strip())
        common = ("--from", "alice@example.com", "--auth-user", "alice@example.com",
                  "--auth-password", "long enough")
        starttls = subprocess.run(
            [SWAKS, "--server", "127.0.0.1", "--port", str(ports[0]), "--to", "alice@example.com",
             "--tls", "--auth", "PLAIN", "--header", "Subject: via 587", *common],
            capture_output=True, text=True, timeout=60)
        implicit = subprocess.run(
            [SWAKS, "--server", "127.0.0.1", "--port", str(ports[1]), "--to", "alice@example.com",
             "--tls-on-connect", "--auth", "LOGIN", "--header", "Subject: via 465", *common],
            capture_output=True, text=True, timeout=60)
        anonymous = subprocess.run(
            [SWAKS, "--server", "127.0.0.1", "--port", str(ports[0]), "--to", "alice@example.com",
             "--tls", "--from", "alice@example.com"], capture_output=True, text=True, timeout=60)
    finally:
        stop(process)
    assert starttls.returncode == 0, starttls.stdout
    assert implicit.returncode == 0, implicit.stdout
    assert anonymous.returncode != 0 and "530 5.7.0" in anonymous.stdout
    maildir = tmp_path / "data" / "mail" / "example.com" / "alice"
    assert len(delivered(maildir, "via 587")) == 1 and len(delivered(maildir, "via 465")) == 1
    assert b"DKIM-Signature:" in delivered(maildir, "via 465")[0]


@pytest_twisted.ensureDeferred
async def test_swaks_submits_for_another_domain_delivered_to_postfix_smtp_sink(
        tmp_path, dns_server, postfix_sink):
    """swaks submits (587, STARTTLS, AUTH) a message for a remote domain: the real twistd
    queues it, finds the domain's MX in the loopback DNS and delivers it, DKIM-signed, to
    Postfix's smtp-sink; the queue is then empty."""
    from tests.integration.conftest import dns_table
    from tests.integration.test_twistd import free_port, start_server, stop
    sink_port, dumps = postfix_sink
    dns = dns_server({"remote.test": {"MX": [(10, "mx.remote.test")]},
                      "mx.remote.test": {"A": ["127.0.0.1"]}})
    port = free_port()
    process, admin, _ = start_server(
        tmp_path, listen={"submission": f"tcp:{port}:interface=127.0.0.1"},
        dns=dns_table(dns), queue={"mx_port": sink_port, "connect_timeout": 2, "timeout": 10})
    try:
        provision(admin, (tmp_path / "data" / "admin.token").read_text().strip())
        subject = f"remote {uuid.uuid4()}"
        result = await deferToThread(subprocess.run, [
            SWAKS, "--server", "127.0.0.1", "--port", str(port), "--tls", "--auth", "PLAIN",
            "--auth-user", "alice@example.com", "--auth-password", "long enough",
            "--from", "alice@example.com", "--to", "carol@remote.test",
            "--header", f"Subject: {subject}"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout
        for _ in range(200):
            arrived = [p.read_bytes() for p in dumps.iterdir()]
            if arrived and not list((tmp_path / "data" / "queue").glob("*.json")):
                break
            await deferLater(reactor, 0.05, lambda: None)
    finally:
        stop(process)
    [dump] = arrived
    assert f"Subject: {subject}".encode() in dump and b"DKIM-Signature: v=1; a=rsa-sha256" in dump
    assert b"carol@remote.test" in dump
