"""Sieve on delivery: a mailbox's active script (stored as ManageSieve stores it) decides where
mail sent over SMTP lands, with which flags, and what is sent on: redirects (SRS, signed) and
vacation replies reach a loopback sink, rejects are refused at SMTP time, loops are stopped."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread

from cloudmail.address import Address
from cloudmail.sieve.scripts import ScriptStore
from tests.integration import test_imap
from tests.outbound import until

MESSAGE = (b"From: Dave <dave@remote.test>\r\nTo: alice@example.com\r\n"
           b"Subject: project report\r\nMessage-ID: <r1@remote.test>\r\n\r\nThe report.\r\n")


def activate(container, local: str, script: str) -> None:
    store = ScriptStore(container.mailstore.mailbox_path(Address(local, "example.com")))
    store.put("main", script)
    store.set_active("main")


def maildir(container, local: str, folder: str = "") -> Path:
    return container.mailstore.mailbox_path(Address(local, "example.com")) / folder


def files(path: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") if (path / sub).is_dir()
                  for p in (path / sub).iterdir())


@pytest.fixture
def mx(outbound, smtp_sink):
    """A container with its queue running (remote.test's MX is a sink), an MX listener, and
    alice and bob; yields (container, mx port, sink)."""
    sink = smtp_sink()
    container = pytest_twisted.blockon(ensureDeferred(outbound(sink.port)))
    port = reactor.listenTCP(0, container.smtp_factory(), interface="127.0.0.1")
    yield container, port.getHost().port, sink
    pytest_twisted.blockon(port.stopListening())


def send(port: int, recipients: list[str], message: bytes = MESSAGE,
         sender: str = "dave@remote.test"):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.sendmail(sender, recipients, message)


@pytest_twisted.ensureDeferred
async def test_fileinto_flags_and_discard(mx):
    """fileinto :create files into a new folder with \\Seen and \\Flagged as Maildir letters;
    fileinto to a missing folder without :create falls back to INBOX; discard stores nothing."""
    container, port, _ = mx
    activate(container, "alice", 'require ["fileinto", "imap4flags", "mailbox"];\n'
             'if header :contains "subject" "report" {\n'
             '  fileinto :create :flags ["\\\\Seen", "\\\\Flagged"] "Reports/2026"; stop;\n}\n'
             'if header :contains "subject" "missing" { fileinto "Nowhere"; stop; }\n'
             'if header :contains "subject" "spam" { discard; }\n')
    await deferToThread(send, port, ["alice@example.com"])
    [stored] = files(maildir(container, "alice", ".Reports.2026"))
    assert stored.name.endswith(":2,FS") and b"The report." in stored.read_bytes()
    await deferToThread(send, port, ["alice@example.com"],
                        MESSAGE.replace(b"project report", b"missing folder"))
    assert len(files(maildir(container, "alice"))) == 1
    assert not maildir(container, "alice", ".Nowhere").exists()
    await deferToThread(send, port, ["alice@example.com"],
                        MESSAGE.replace(b"project report", b"cheap spam"))
    assert len(files(maildir(container, "alice"))) == 1


@pytest_twisted.ensureDeferred
async def test_reject_at_smtp_time_and_as_a_bounce(mx):
    """A reject with one recipient is `550 5.7.1` with the reason at the end of DATA; with a
    second recipient the others get the message and the sender gets a DSN (queued for the
    remote sender)."""
    container, port, sink = mx
    activate(container, "alice", 'require "reject"; reject "I do not want this";')
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await deferToThread(send, port, ["alice@example.com"])
    assert refused.value.smtp_code == 550 and b"5.7.1 I do not want this" in \
        refused.value.smtp_error
    assert files(maildir(container, "alice")) == []
    assert await deferToThread(send, port, ["alice@example.com", "bob@example.com"]) == {}
    assert len(files(maildir(container, "bob"))) == 1
    [dsn] = await sink.wait_for(1)
    assert dsn.sender == "" and dsn.recipients == ["dave@remote.test"]
    assert b"Status: 5.7.1" in dsn.data and b"I do not want this" in dsn.data


@pytest_twisted.ensureDeferred
async def test_redirect_goes_out_signed_with_srs_and_loops_stop(mx):
    """redirect sends the message on through the queue with an SRS envelope sender and a DKIM
    signature of our domain, our Delivered-To kept; redirecting to itself is a loop and the
    message is kept instead."""
    container, port, sink = mx
    activate(container, "alice", 'redirect "carol@remote.test";')
    await deferToThread(send, port, ["alice@example.com"])
    [forwarded] = await sink.wait_for(1)
    assert forwarded.recipients == ["carol@remote.test"]
    assert forwarded.sender.startswith("SRS0=") and "=remote.test=dave@" in forwarded.sender
    assert container.srs.reverse(forwarded.sender) == "dave@remote.test"
    assert b"DKIM-Signature:" in forwarded.data and b"d=example.com" in forwarded.data
    assert b"Delivered-To: alice@example.com" in forwarded.data
    assert not forwarded.data.startswith(b"Return-Path:")
    assert files(maildir(container, "alice")) == []
    activate(container, "bob", 'redirect "bob@example.com";')
    await deferToThread(send, port, ["bob@example.com"])
    assert len(files(maildir(container, "bob"))) == 1


@pytest_twisted.ensureDeferred
async def test_a_bounce_to_our_srs_address_returns_to_the_original_sender(mx):
    """The receiver of a forward bounces to our SRS address: we take it (null sender only)
    and queue it back to the original sender; a forged or non-bounce use is refused."""
    container, port, sink = mx
    srs_address = container.srs.forward("dave@remote.test")
    bounce = b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered\r\n\r\nNo.\r\n"
    assert await deferToThread(send, port, [srs_address], bounce, "") == {}
    [returned] = await sink.wait_for(1)
    assert returned.sender == "" and returned.recipients == ["dave@remote.test"]
    assert b"Subject: Undelivered" in returned.data
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await deferToThread(send, port, [srs_address], bounce, "spammer@remote.test")
    assert refused.value.recipients[srs_address][0] == 550
    forged = srs_address.replace("=dave@", "=mallory@")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await deferToThread(send, port, [forged], bounce, "")
    assert refused.value.recipients[forged][0] == 554


@pytest_twisted.ensureDeferred
async def test_vacation_replies_once_and_never_to_lists(mx):
    """A vacation reply goes to the sender from <> with Auto-Submitted, once per period; mail
    from a mailing list gets none; the original is kept."""
    container, port, sink = mx
    activate(container, "alice", 'require "vacation";\n'
             'vacation :days 7 :subject "Away" "I am away until Monday.";')
    await deferToThread(send, port, ["alice@example.com"])
    [reply] = await sink.wait_for(1)
    assert reply.sender == "" and reply.recipients == ["dave@remote.test"]
    assert b"Subject: Away" in reply.data and b"Auto-Submitted: auto-replied" in reply.data
    assert b"In-Reply-To: <r1@remote.test>" in reply.data and b"DKIM-Signature:" in reply.data
    await deferToThread(send, port, ["alice@example.com"])
    await deferToThread(send, port, ["alice@example.com"],
                        b"List-Id: <news.remote.test>\r\n" + MESSAGE, "news@remote.test")
    await until(lambda: len(files(maildir(container, "alice"))) == 3)
    assert len(sink.messages) == 1


@pytest_twisted.ensureDeferred
async def test_notify_and_editheader(mx):
    """enotify's mailto sends a short notice from <> marked auto-notified to the URI's address;
    editheader's changes are in the stored copy."""
    container, port, sink = mx
    activate(container, "alice", 'require ["enotify", "editheader"];\n'
             'addheader "X-Filtered" "yes";\ndeleteheader "Message-ID";\n'
             'notify :message "Report arrived" "mailto:pager@remote.test";\n')
    await deferToThread(send, port, ["alice@example.com"])
    [notice] = await sink.wait_for(1)
    assert notice.sender == "" and notice.recipients == ["pager@remote.test"]
    assert b"Auto-Submitted: auto-notified" in notice.data
    assert b"Subject: Report arrived" in notice.data
    [stored] = files(maildir(container, "alice"))
    data = stored.read_bytes()
    assert b"X-Filtered: yes" in data and b"Message-ID: <r1@remote.test>" not in data


imap = test_imap.imap  # the IMAP listener fixture, over the `container` fixture


@pytest_twisted.ensureDeferred
async def test_flags_and_keywords_reach_imap(container, imap):
    """imap4flags flags set by the script are what an IMAP client sees: system flags from the
    Maildir file name, keywords (which have no letter there) from the index."""
    from tests.integration.test_smtp_inbound import book
    await book(container)
    activate(container, "alice", 'require ["fileinto", "imap4flags", "mailbox"];\n'
             'fileinto :create :flags ["\\\\Flagged", "$Label1", "project"] "Work";\n')
    await test_imap.deliver(container, MESSAGE)

    def look():
        client = test_imap.client(imap)
        client.select_folder("Work")
        flags = client.get_flags(client.search("ALL"))
        client.logout()
        return flags
    [flags] = (await deferToThread(look)).values()
    assert set(flags) - {b"\\Recent"} == {b"\\Flagged", b"$Label1", b"project"}


@pytest_twisted.ensureDeferred
async def test_include_personal_and_global_scripts(mx):
    """include (RFC 6609) finds personal scripts among the mailbox's own and global ones in
    the server's global folder (`[sieve] global_scripts`, by default data/sieve-global)."""
    container, port, _ = mx
    store = ScriptStore(container.mailstore.mailbox_path(Address("alice", "example.com")))
    store.put("reports", 'require ["fileinto", "mailbox"];\n'
                         'if header :contains "subject" "report" { fileinto :create "R"; }')
    global_dir = container.config.server.data_dir / "sieve-global"
    global_dir.mkdir()
    (global_dir / "flag.sieve").write_text('require "imap4flags"; addflag "\\\\Flagged";')
    activate(container, "alice", 'require "include";\n'
             'include :global "flag";\ninclude :personal "reports";\n')
    await deferToThread(send, port, ["alice@example.com"])
    [stored] = files(maildir(container, "alice", ".R"))
    assert stored.name.endswith(":2,F")
