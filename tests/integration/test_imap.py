"""The IMAP listener with real clients (imaplib, IMAPClient) over the real store and Maildirs.

The server runs on the test's reactor; every client runs in a thread (`deferToThread`), so the
server keeps serving while a client waits.
"""

from __future__ import annotations

import imaplib
import ssl
import time

import pytest
import pytest_twisted
from imapclient import IMAPClient
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread

from cloudmail.delivery import Envelope
from tests.integration.test_smtp_inbound import book

PASSWORD = "long enough"
MESSAGE = (b"From: Bob <bob@remote.test>\r\nTo: alice@example.com\r\nSubject: Hello IMAP\r\n"
           b"Date: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@remote.test>\r\n"
           b"X-Thing: one\r\n  folded\r\n\r\nThe body text.\r\n")


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def listen(container, implicit_tls: bool):
    """Serve IMAP over the container on a loopback port; afterwards, wait (briefly) for the
    sessions to end, then close the accounts before the thread pools stop."""
    container.certs.load()
    port = reactor.listenTCP(0, container.imap_factory(implicit_tls=implicit_tls),
                             interface="127.0.0.1")
    yield port.getHost().port
    pytest_twisted.blockon(port.stopListening())
    deadline = time.monotonic() + 3
    while container.mail_accounts.sessions and time.monotonic() < deadline:
        pytest_twisted.blockon(task.deferLater(reactor, 0.05, lambda: None))
    pytest_twisted.blockon(defer.ensureDeferred(container.mail_accounts.close_all()))


@pytest.fixture
def imap(container):
    """The STARTTLS IMAP listener over the test container; yields its port."""
    yield from listen(container, implicit_tls=False)


@pytest.fixture
def imaps(container):
    """The implicit-TLS listener (993); yields its port."""
    yield from listen(container, implicit_tls=True)


def client(port: int) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10)
    c.starttls(tls_context())
    c.login("alice@example.com", PASSWORD)
    return c


async def deliver(container, message: bytes = MESSAGE, to: str = "alice@example.com") -> None:
    """Deliver through the real local delivery, as the MX does."""
    routed = [await container.router.resolve(to)]
    envelope = Envelope(queue_id="Q1", sender="bob@remote.test", client_ip="192.0.2.1",
                        client_name="mx.remote.test", helo="mx.remote.test")
    await container.delivery.deliver(envelope, routed, message)


# --- login -------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_login_only_inside_tls(container, imap):
    """Before STARTTLS the server says LOGINDISABLED and refuses LOGIN; after it, the full
    address and password log in, and AUTH=PLAIN is offered."""
    await book(container)

    def script():
        c = imaplib.IMAP4("127.0.0.1", imap, timeout=10)
        before = c.capabilities
        try:
            c.login("alice@example.com", PASSWORD)
            refused = None
        except imaplib.IMAP4.error as e:
            refused = str(e)
        c.starttls(tls_context())
        after = c.capabilities
        status, _ = c.login("alice@example.com", PASSWORD)
        c.logout()
        return before, refused, after, status
    before, refused, after, status = await deferToThread(script)
    assert "STARTTLS" in before and "LOGINDISABLED" in before and "AUTH=PLAIN" not in before
    assert refused is not None and "PRIVACYREQUIRED" in refused
    assert "AUTH=PLAIN" in after and "STARTTLS" not in after
    assert status == "OK"


@pytest_twisted.ensureDeferred
async def test_wrong_password_alias_and_plain_auth(container, imaps):
    """Over implicit TLS: a wrong password and an alias are refused with AUTHENTICATIONFAILED;
    AUTHENTICATE PLAIN with the right password works."""
    await book(container)

    def script():
        results = []
        for user, password in (("alice@example.com", "wrong"), ("al@example.com", PASSWORD)):
            c = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=tls_context(), timeout=10)
            try:
                c.login(user, password)
                results.append("OK")
            except imaplib.IMAP4.error as e:
                results.append(str(e))
            c.logout()
        c = IMAPClient("127.0.0.1", port=imaps, ssl=True, ssl_context=tls_context(), timeout=10)
        results.append(c.plain_login("alice@example.com", PASSWORD))
        c.logout()
        return results
    wrong, alias, plain = await deferToThread(script)
    assert "AUTHENTICATIONFAILED" in wrong and "AUTHENTICATIONFAILED" in alias
    assert plain.startswith(b"[CAPABILITY") or b"Logged in" in plain


# --- folders -----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_special_folders_exist_at_first_login(container, imap):
    """Sent, Drafts, Trash, Spam and Archive are made at the first login, with SPECIAL-USE
    attributes; CREATE, RENAME and DELETE work on nested names."""
    await book(container)

    def script():
        c = client(imap)
        first = c.list_folders()
        c.create_folder("Projects/2026")
        c.rename_folder("Projects", "Work")
        nested = [f[2] for f in c.list_folders()]
        c.delete_folder("Work/2026")
        last = [f[2] for f in c.list_folders()]
        c.logout()
        return first, nested, last
    first, nested, last = await deferToThread(script)
    by_name = {name: flags for flags, _, name in first}
    assert set(by_name) >= {"INBOX", "Sent", "Drafts", "Trash", "Spam", "Archive"}
    assert b"\\Sent" in by_name["Sent"] and b"\\Junk" in by_name["Spam"]
    assert "Work/2026" in nested and "Projects/2026" not in nested
    assert "Work/2026" not in last


# --- messages ----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_delivered_message_is_read_flagged_searched_moved_and_expunged(container, imap):
    """A delivered message is fetched byte for byte (headers exactly as stored), flagged,
    found by SEARCH, moved with COPYUID and expunged."""
    await book(container)
    await deliver(container)

    def script():
        c = client(imap)
        selected = c.select_folder("INBOX")
        fetched = c.fetch([1], ["UID", "FLAGS", "RFC822.SIZE", "BODY.PEEK[]", "ENVELOPE",
                                  "BODY.PEEK[HEADER.FIELDS (X-THING SUBJECT)]"])
        c.add_flags(1, [b"\\Flagged"])
        flags = c.get_flags(1)
        found = c.search(["FROM", "bob", "SUBJECT", "hello", "FLAGGED"])
        none = c.search(["SUBJECT", "nothing like it"])
        moved = c.move([1], "Archive")
        after_move = c.search("ALL")
        c.select_folder("Archive")
        archived = c.fetch([1], ["FLAGS", "BODY.PEEK[TEXT]"])
        c.add_flags(1, [b"\\Deleted"])
        c.expunge()
        left = c.search("ALL")
        c.logout()
        return selected, fetched, flags, found, none, moved, after_move, archived, left
    (selected, fetched, flags, found, none, moved, after_move, archived,
     left) = await deferToThread(script)
    assert selected[b"EXISTS"] == 1 and selected[b"UIDVALIDITY"] > 0
    [(seq, data)] = fetched.items()
    body = data[b"BODY[]"]
    assert body.endswith(MESSAGE) and body.startswith(b"Return-Path: <bob@remote.test>")
    assert data[b"RFC822.SIZE"] == len(body)
    assert data[b"ENVELOPE"].subject == b"Hello IMAP"
    assert data[b"BODY[HEADER.FIELDS (X-THING SUBJECT)]"] == (
        b"Subject: Hello IMAP\r\nX-Thing: one\r\n  folded\r\n\r\n")
    assert b"\\Flagged" in flags[seq]
    assert found == [1] and none == []
    assert after_move == []
    [(_, archived_data)] = archived.items()
    assert archived_data[b"BODY[TEXT]"] == b"The body text.\r\n"
    assert b"\\Flagged" in archived_data[b"FLAGS"]
    assert left == []


@pytest_twisted.ensureDeferred
async def test_append_gives_appenduid_and_keeps_flags_and_date(container, imap):
    """APPEND stores the exact bytes with the flags and internal date given, answers
    APPENDUID, and a missing folder gets NO [TRYCREATE]."""
    await book(container)

    def script():
        c = client(imap)
        from datetime import datetime, timezone
        when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
        answer = c.append("Drafts", MESSAGE, flags=[b"\\Draft", b"$Label1"], msg_time=when)
        c.select_folder("Drafts")
        fetched = c.fetch("1", ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])
        try:
            c.append("No/Such/Folder", MESSAGE)
            missing = None
        except IMAPClient.Error as e:
            missing = str(e)
        c.logout()
        return answer, fetched, missing
    answer, fetched, missing = await deferToThread(script)
    assert b"APPENDUID" in answer
    data = fetched[1]
    assert data[b"BODY[]"] == MESSAGE
    assert set(data[b"FLAGS"]) - {b"\\Recent"} == {b"\\Draft", b"$Label1"}
    assert data[b"INTERNALDATE"].replace(tzinfo=None).timetuple()[:6] == (2025, 3, 4, 5, 6, 7) \
        or data[b"INTERNALDATE"].timestamp() == 1741064767
    assert missing is not None and "TRYCREATE" in missing


@pytest_twisted.ensureDeferred
async def test_two_sessions_see_each_others_changes_and_idle_sees_delivery(container, imap):
    """A flag set in one session shows in the other at its next NOOP; a delivery shows up
    during IDLE within a second."""
    await book(container)
    await deliver(container)

    def script():
        a, b = client(imap), client(imap)
        a.select_folder("INBOX")
        b.select_folder("INBOX")
        a.add_flags(1, [b"\\Seen"])
        seen_by_b = b.noop()
        b.idle()
        return a, b, seen_by_b

    a, b, seen_by_b = await deferToThread(script)
    await deliver(container)

    def wait():
        responses = b.idle_check(timeout=5)
        b.idle_done()
        a.logout()
        b.logout()
        return responses
    started = time.monotonic()
    responses = await deferToThread(wait)
    assert time.monotonic() - started < 2
    assert any(r[1] == b"EXISTS" and r[0] == 2 for r in responses)
    assert any(b"\\Seen" in str(r).encode() for r in seen_by_b[1])


@pytest_twisted.ensureDeferred
async def test_uids_survive_a_restart(container, imap):
    """UIDs and UIDVALIDITY are the same after the account is closed and opened again."""
    await book(container)
    await deliver(container)
    await deliver(container)

    def uids():
        c = client(imap)
        info = c.select_folder("INBOX")
        found = c.search("ALL")
        fetched = c.fetch(found, ["UID"])
        c.logout()
        return info[b"UIDVALIDITY"], sorted(fetched)
    first = await deferToThread(uids)
    await deliver(container)
    second = await deferToThread(uids)
    assert first[0] == second[0]
    assert second[1][:2] == first[1] and second[1][2] > first[1][1]


@pytest_twisted.ensureDeferred
async def test_bad_commands_get_bad_and_the_session_goes_on(container, imap):
    """Unknown commands, bad syntax and wrong states get BAD; the session still works."""
    await book(container)

    def script():
        c = client(imap)
        answers = []
        for command in (b"FROB", b"FETCH 1 FLAGS", b'SELECT "unclosed', b"LIST"):
            tag = c._imap._new_tag()
            c._imap.send(tag + b" " + command + b"\r\n")
            while True:
                line = c._imap._get_line()
                if line.startswith(tag):
                    answers.append(line)
                    break
        still = c.list_folders()
        c.logout()
        return answers, still
    answers, still = await deferToThread(script)
    assert all(b" BAD " in answer for answer in answers)
    assert still


@pytest_twisted.ensureDeferred
async def test_many_sessions_log_in_to_one_mailbox_at_once(container, imap):
    """Ten clients logging in to the same mailbox at the same moment all get a working
    session (the account is opened once, the others wait for it)."""
    await book(container)
    await deliver(container)

    def one() -> int:
        c = client(imap)
        exists = c.select_folder("INBOX")[b"EXISTS"]
        c.logout()
        return exists
    results = await defer.gatherResults([deferToThread(one) for _ in range(10)])
    assert results == [1] * 10


@pytest_twisted.ensureDeferred
async def test_an_account_opened_twice_at_once_is_ready_for_both(container):
    """The second `open` of a mailbox still being opened waits for it instead of handing out
    an account whose index is not there yet."""
    from cloudmail.address import Address
    await book(container)
    alice = Address("alice", "example.com")
    first = defer.ensureDeferred(container.mail_accounts.open(alice))
    second = await container.mail_accounts.open(alice)
    assert (await second.folder("INBOX")).name == "INBOX"
    assert await first is second
    await container.mail_accounts.close_all()
