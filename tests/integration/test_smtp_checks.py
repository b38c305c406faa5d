"""Checks on the client at the MX listener: IP and sender blocklists, DNSBL and iprev, against
a real smtplib client and a real twisted.names DNS server on loopback."""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from cloudmail.app import Container
from tests.dnsserver import TIMEOUT
from tests.integration.conftest import dns_table
from tests.integration.test_smtp_inbound import MESSAGE, book, inbox, send

LISTED_REASON = "Listed for testing, see https://zen.test/lookup"


def write(path: Path, text: str) -> str:
    """Write a list file, moving its mtime on so the change is seen even within one tick."""
    path.write_text(text, encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return str(path)


def connect_reply(port: int) -> tuple[int, bytes]:
    """The greeting (or refusal) the server gives a new connection."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            return 220, client.ehlo("client.remote.test")[1]
    except smtplib.SMTPConnectError as e:
        return e.smtp_code, e.smtp_error


def mail_reply(port: int, sender: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.remote.test")
        return client.mail(sender)


@pytest_twisted.ensureDeferred
async def test_a_blocked_ip_gets_554_at_connect(start_mx, tmp_path):
    """127.0.0.1 in the IP blocklist file: 554 5.7.1 naming the IP, before any command."""
    blocklist = write(tmp_path / "ips.txt", "# test\n127.0.0.0/8\n")
    container, port = start_mx(smtp={"ip_blocklist": blocklist})
    await book(container)
    code, text = await deferToThread(connect_reply, port)
    assert code == 554 and text == b"5.7.1 Your IP 127.0.0.1 is blocked here"
    assert inbox(container, "alice") == []


@pytest_twisted.ensureDeferred
async def test_an_ip_blocklist_change_is_picked_up_while_running(start_mx, tmp_path):
    """Adding the client to the file of a running server blocks its next connection; taking it
    out again lets it back in."""
    path = tmp_path / "ips.txt"
    write(path, "192.0.2.1\n")
    container, port = start_mx(smtp={"ip_blocklist": str(path)})
    container.ip_blocklist.check_interval = 0  # look at the file on every use
    await book(container)
    assert (await deferToThread(connect_reply, port))[0] == 220
    write(path, "192.0.2.1\n127.0.0.1\n")
    assert (await deferToThread(connect_reply, port))[0] == 554
    write(path, "192.0.2.1\n")
    assert await deferToThread(send, port, ["alice@example.com"]) == {}
    assert len(inbox(container, "alice")) == 1


@pytest_twisted.ensureDeferred
async def test_a_dnsbl_listing_gets_554_naming_the_zone(start_mx, dns_server):
    """A client listed in a DNSBL zone (A 127.0.0.2 + TXT) gets 554 5.7.1 with the zone and
    the zone's reason; the connection then only takes QUIT."""
    server = dns_server({"1.0.0.127.zen.test": {"A": ["127.0.0.2"], "TXT": [LISTED_REASON]}})
    _, port = start_mx(smtp={"dnsbl_zones": ["zen.test"]}, dns=dns_table(server))
    code, text = await deferToThread(connect_reply, port)
    assert code == 554
    assert text == (b"5.7.1 Service unavailable; client host [127.0.0.1] blocked using "
                    b"zen.test; " + LISTED_REASON.encode())
    assert ("1.0.0.127.zen.test", "A") in server.queries


@pytest_twisted.ensureDeferred
async def test_a_dnsbl_timeout_never_rejects(start_mx, dns_server):
    """A DNSBL zone that does not answer counts as not listed: the mail is accepted."""
    server = dns_server({"1.0.0.127.zen.test": TIMEOUT})
    container, port = start_mx(smtp={"dnsbl_zones": ["zen.test"]},
                               dns=dns_table(server, timeout=0.3))
    await book(container)
    assert await deferToThread(send, port, ["alice@example.com"]) == {}
    assert len(inbox(container, "alice")) == 1
    assert ("1.0.0.127.zen.test", "A") in server.queries


@pytest_twisted.ensureDeferred
async def test_a_dnsbl_that_does_not_list_the_client_lets_it_in(start_mx, dns_server):
    """NXDOMAIN from the zone (not listed): the mail is accepted."""
    server = dns_server({"other.zen.test": {"A": ["127.0.0.2"]}})
    container, port = start_mx(smtp={"dnsbl_zones": ["zen.test"]}, dns=dns_table(server))
    await book(container)
    assert await deferToThread(send, port, ["alice@example.com"]) == {}
    assert len(inbox(container, "alice")) == 1


@pytest.mark.parametrize("sender, entry", [
    ("spammer@bad.test", "spammer@bad.test"),
    ("Anyone@Worse.Test", "worse.test"),
    ("x@mail.sub.test", ".sub.test"),
])
@pytest_twisted.ensureDeferred
async def test_a_blocked_sender_gets_550_at_mail(start_mx, tmp_path, sender, entry):
    """Addresses, whole domains and subdomains listed in the sender blocklist get 550 5.7.1
    at MAIL FROM, naming the address."""
    path = write(tmp_path / "senders.txt", "spammer@bad.test\n@worse.test\n.sub.test\n")
    _, port = start_mx(smtp={"sender_blocklist": path})
    code, text = await deferToThread(mail_reply, port, sender)
    assert code == 550 and text == f"5.7.1 Sender address <{sender}> rejected: blocked here".encode()


@pytest_twisted.ensureDeferred
async def test_senders_not_listed_are_accepted(start_mx, tmp_path):
    """Other addresses at a listed address's domain, the parent of a `.domain` entry and the
    null sender pass the sender blocklist."""
    path = write(tmp_path / "senders.txt", "spammer@bad.test\n.sub.test\n")
    _, port = start_mx(smtp={"sender_blocklist": path})
    for sender in ("friend@bad.test", "x@sub.test", ""):
        code, _ = await deferToThread(mail_reply, port, sender)
        assert code == 250, sender


@pytest_twisted.ensureDeferred
async def test_the_iprev_name_goes_into_received(start_mx, dns_server):
    """When 127.0.0.1's PTR name maps back to it, that name is the client name in Received."""
    server = dns_server({"1.0.0.127.in-addr.arpa": {"PTR": ["client.test"]},
                         "client.test": {"A": ["127.0.0.1"]}})
    container, port = start_mx(smtp={"iprev": True}, dns=dns_table(server))
    await book(container)
    assert await deferToThread(send, port, ["alice@example.com"]) == {}
    [message] = inbox(container, "alice")
    assert b"Received: from client.remote.test (client.test [127.0.0.1])" in message
    assert message.endswith(MESSAGE)


@pytest_twisted.ensureDeferred
async def test_an_unconfirmed_ptr_name_is_not_used(start_mx, dns_server):
    """A PTR name that does not map back to the client is not trusted: "unknown" in Received."""
    server = dns_server({"1.0.0.127.in-addr.arpa": {"PTR": ["liar.test"]},
                         "liar.test": {"A": ["192.0.2.1"]}})
    container, port = start_mx(smtp={"iprev": True}, dns=dns_table(server))
    await book(container)
    assert await deferToThread(send, port, ["alice@example.com"]) == {}
    [message] = inbox(container, "alice")
    assert b"Received: from client.remote.test (unknown [127.0.0.1])" in message


@pytest_twisted.ensureDeferred
async def test_session_results_are_dropped_when_the_session_ends(start_mx, dns_server):
    """The backend keeps iprev/DNSBL findings per session only while the session lives."""
    import gc

    server = dns_server({})
    container, _ = start_mx(smtp={"iprev": True, "dnsbl_zones": ["zen.test"]},
                               dns=dns_table(server))
    backend = container.inbound_backend()
    factory_port = reactor.listenTCP(0, _factory_for(container, backend), interface="127.0.0.1")
    try:
        assert (await deferToThread(connect_reply, factory_port.getHost().port))[0] == 220
        for _ in range(50):
            gc.collect()
            if not backend.checks:
                break
            await deferToThread(lambda: None)
        assert backend.checks == {}
    finally:
        await factory_port.stopListening()


def _factory_for(container: Container, backend):
    from cloudmail.smtp.protocol import SmtpFactory

    return SmtpFactory(container.config.server.hostname, backend, container.spool_dir,
                       limits=container.smtp_limits)


@pytest_twisted.ensureDeferred
async def test_smtp_limits_come_from_the_config(start_mx):
    """[smtp] max_message_size is announced with SIZE and max_received_headers bounds the
    Received: headers a message may carry (more is a loop: 554 5.4.6)."""
    container, port = start_mx(smtp={"max_message_size": 4096, "max_received_headers": 2})
    await book(container)
    _, ehlo = await deferToThread(connect_reply, port)
    assert b"SIZE 4096" in ehlo
    hops = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    assert await deferToThread(send, port, ["alice@example.com"], hops * 2 + MESSAGE) == {}
    with pytest.raises(smtplib.SMTPDataError) as info:
        await deferToThread(send, port, ["alice@example.com"], hops * 3 + MESSAGE)
    assert info.value.smtp_code == 554 and info.value.smtp_error.startswith(b"5.4.6")
    assert len(inbox(container, "alice")) == 1
