"""Receiving mail on the MX listener: a real smtplib client, the real store, real Maildirs."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher

from cloudmail.smtp.spool import MEMORY_LIMIT

MESSAGE = b"From: sender@remote.test\r\nSubject: hello\r\n\r\nHi there.\r\n"


@pytest.fixture
def mx(container):
    """The MX listener over the test container on a loopback port; yields the port."""
    port = reactor.listenTCP(0, container.smtp_factory(), interface="127.0.0.1")
    yield port.getHost().port
    pytest_twisted.blockon(port.stopListening())


async def book(c) -> None:
    s = c.admin_service
    await s.add_domain("example.com")
    for name in ("alice", "bob"):
        await s.add_user(name, password="long enough")
        await s.add_mailbox(f"{name}@example.com", owner=name)
    await s.add_alias("al@example.com", "alice@example.com")
    await s.add_group("team@example.com", members=["alice", "bob"])


def send(port: int, recipients: list[str], message: bytes = MESSAGE) -> dict:
    """Send with smtplib; the refused recipients as smtplib reports them."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.remote.test")
        return client.sendmail("sender@remote.test", recipients, message)


def inbox(container, local: str) -> list[bytes]:
    folder = Path(container.config.server.data_dir) / "mail" / "example.com" / local / "new"
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.exists() else []


@pytest_twisted.ensureDeferred
async def test_mail_reaches_mailbox_alias_and_group(container, mx):
    """Mailbox, alias and group recipients each land in the right Maildir, once per mailbox."""
    await book(container)
    refused = await deferToThread(send, mx, ["al@example.com", "team@example.com",
                                             "alice+news@example.com"])
    assert refused == {}
    alice, bob = inbox(container, "alice"), inbox(container, "bob")
    assert len(alice) == 1 and len(bob) == 1
    assert alice[0].endswith(MESSAGE)
    assert alice[0].startswith(b"Return-Path: <sender@remote.test>\r\n"
                               b"Delivered-To: alice@example.com\r\nReceived: from "
                               b"client.remote.test ")


@pytest.mark.parametrize("recipient, code, enhanced", [
    ("nobody@example.com", 550, b"5.1.1"),
    ("someone@elsewhere.test", 554, b"5.7.1"),
    ("alice%elsewhere.test@example.com", 554, b"5.7.1"),
    ("elsewhere.test!alice@example.com", 554, b"5.7.1"),
])
@pytest_twisted.ensureDeferred
async def test_refusals_at_rcpt(container, mx, recipient, code, enhanced):
    """Unknown addresses get 550 5.1.1 and anything not ours 554 5.7.1: never a relay."""
    await book(container)

    def attempt() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", mx, timeout=10) as client:
            client.ehlo("client.remote.test")
            client.mail("sender@remote.test")
            return client.rcpt(recipient)
    answer = await deferToThread(attempt)
    assert answer[0] == code and answer[1].startswith(enhanced)
    assert inbox(container, "alice") == []


@pytest_twisted.ensureDeferred
async def test_a_looping_message_is_refused(container, mx):
    """A message already delivered to the recipient (Delivered-To) is refused, not stored again."""
    await book(container)
    looping = b"Delivered-To: alice@example.com\r\n" + MESSAGE
    with pytest.raises(smtplib.SMTPDataError) as info:
        await deferToThread(send, mx, ["alice@example.com"], looping)
    assert info.value.smtp_code == 554 and info.value.smtp_error.startswith(b"5.4.6")
    assert inbox(container, "alice") == []


@pytest_twisted.ensureDeferred
async def test_one_log_line_per_message_with_its_queue_id(container, mx):
    """Each delivered message gets one log line: the queue id the client was told, the client,
    the envelope sender, the size and every mailbox with its folder."""
    await book(container)
    lines: list[str] = []

    def observer(event: dict) -> None:
        lines.append(formatEvent(event))

    def deliver() -> bytes:
        with smtplib.SMTP("127.0.0.1", mx, timeout=10) as client:
            client.ehlo("client.remote.test")
            client.mail("sender@remote.test")
            client.rcpt("al@example.com")
            client.rcpt("team@example.com")
            return client.data(MESSAGE)[1]
    globalLogPublisher.addObserver(observer)
    try:
        answer = await deferToThread(deliver)
    finally:
        globalLogPublisher.removeObserver(observer)
    queue_id = answer.split()[-1].decode()
    about = [line for line in lines if queue_id in line]
    assert len(about) == 1
    assert about[0].startswith(f"delivered {queue_id} from <sender@remote.test> [127.0.0.1] "
                               f"{len(MESSAGE)} bytes to alice@example.com (INBOX), "
                               "bob@example.com (INBOX) in ")


@pytest_twisted.ensureDeferred
async def test_a_big_message_goes_through_a_spool_file(container, mx):
    """A message bigger than the in-memory limit is spooled to disk, delivered whole from there,
    and the spool file is gone afterwards."""
    await book(container)
    big = MESSAGE + (b"y" * 998 + b"\r\n") * (MEMORY_LIMIT // 1000 + 10)
    assert await deferToThread(send, mx, ["alice@example.com"], big) == {}
    assert inbox(container, "alice")[0].endswith(big)
    assert list(container.spool_dir.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_smtputf8_mail_for_our_domains_only(container, mx):
    """With SMTPUTF8 a UTF-8 sender and UTF-8 headers reach our mailbox intact; a UTF-8 address
    elsewhere is relaying (554 5.7.1) and an unknown one of ours 550 5.1.1."""
    await book(container)
    utf8 = ("From: Jöran <jöran@remote.test>\r\nSubject: Grüße\r\n\r\nHällo\r\n").encode()

    def attempt() -> tuple:
        with smtplib.SMTP("127.0.0.1", mx, timeout=10) as client:
            client.ehlo("client.remote.test")
            assert client.has_extn("smtputf8")
            assert client.mail("jöran@remote.test", ["SMTPUTF8"])[0] == 250
            elsewhere = client.rcpt("jöran@elsewhere.test")
            unknown = client.rcpt("ünknown@example.com")
            ours = client.rcpt("alice@example.com")
            return elsewhere, unknown, ours, client.data(utf8)
    elsewhere, unknown, ours, data = await deferToThread(attempt)
    assert elsewhere[0] == 554 and elsewhere[1].startswith(b"5.7.1")
    assert unknown[0] == 550 and unknown[1].startswith(b"5.1.1")
    assert ours[0] == 250 and data[0] == 250
    [stored] = inbox(container, "alice")
    assert stored.startswith("Return-Path: <jöran@remote.test>\r\n".encode())
    assert stored.endswith(utf8)
