"""Every IMAP command and extension we offer, driven by real clients (imaplib, IMAPClient) and,
where a client cannot send what is needed or hides the exact answer, by raw lines on a socket.

Each test states what it proves and checks the exact tagged status and response code (RFC 3501
7.1, RFC 5530). The server runs on the test's reactor; every client runs in a thread.
"""

from __future__ import annotations

import imaplib
import os
import re
import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.test_imap import MESSAGE, PASSWORD, client, deliver, listen, tls_context
from tests.integration.test_smtp_inbound import book

#: The APPEND limit of the `small_imap` listener.
SMALL_LIMIT = 4096
MULTIPART = (
    b"From: Carol <carol@remote.test>\r\nTo: alice@example.com, Dave <dave@remote.test>\r\n"
    b"Subject: Report\r\nDate: Wed, 25 Nov 2026 09:30:00 +0100\r\n"
    b"Message-ID: <m2@remote.test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n'
    b"preamble\r\n--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n"
    b"--XYZ\r\nContent-Type: application/pdf; name=report.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; "
    b"filename=report.pdf\r\n\r\nJVBERi0xLjQK\r\n--XYZ--\r\n")
EXPECTED_CAPABILITIES = [
    "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE",
    "SPECIAL-USE", "CHILDREN", "UNSELECT", "CONDSTORE", "LIST-EXTENDED", "LIST-STATUS",
    "UTF8=ACCEPT"]


@pytest.fixture
def imap(container):
    """The STARTTLS IMAP listener over the test container; yields its port."""
    yield from listen(container, implicit_tls=False)


@pytest.fixture
def small_imap(container):
    """A STARTTLS listener that takes literals of at most `SMALL_LIMIT` octets."""
    container.certs.load()
    factory = container.imap_factory(implicit_tls=False)
    factory.max_literal = SMALL_LIMIT
    container.imap_factory = lambda implicit_tls: factory
    try:
        yield from listen(container, implicit_tls=False)
    finally:
        del container.imap_factory


def maildir(container, folder: str = "") -> Path:
    """alice's Maildir (`folder` is the Maildir++ directory name, `.Archive`)."""
    return Path(container.config.server.data_dir) / "mail" / "example.com" / "alice" / folder


class Session:
    """A raw IMAP session on a socket: STARTTLS and LOGIN done unless told otherwise; `run`
    sends one command and returns (untagged lines, tagged status line without its tag).
    Literals in responses are read in full and kept inside their line."""

    def __init__(self, port: int, *, login: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.count = 0
        self.greeting = self.line()
        if login:
            self.starttls()
            _, status = self.run(b'LOGIN alice@example.com "%s"' % PASSWORD.encode())
            assert status.startswith(b"OK "), status

    def starttls(self) -> None:
        _, status = self.run(b"STARTTLS")
        assert status.startswith(b"OK "), status
        self.wrap()

    def wrap(self) -> None:
        assert not self.buffer
        self.sock = tls_context().wrap_socket(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def raw_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def line(self) -> bytes:
        """One response, literals included (`{n}` CRLF and the n octets stay in the line)."""
        line = self.raw_line()
        while (marker := re.search(rb"\{(\d+)\}\Z", line)) is not None:
            size = int(marker.group(1))
            while len(self.buffer) < size:
                self._fill()
            line += b"\r\n" + self.buffer[:size]
            self.buffer = self.buffer[size:]
            line += self.raw_line()
        return line

    def tag(self) -> bytes:
        self.count += 1
        return b"t%d" % self.count

    def run(self, *parts: bytes) -> tuple[list[bytes], bytes]:
        """Send `text {n} literal text …` (parts alternate text and literal); wait for the `+`
        before a synchronizing literal; collect the answer."""
        tag = self.tag()
        texts, literals = parts[::2], parts[1::2]
        untagged: list[bytes] = []
        self.send(tag + b" " + texts[0])
        for index, literal in enumerate(literals):
            self.send(b"\r\n")
            if not texts[index].endswith(b"+}"):
                while not (line := self.line()).startswith(b"+"):
                    if line.startswith(tag + b" "):
                        return untagged, line[len(tag) + 1:]
                    untagged.append(line)
            self.send(literal + texts[index + 1])
        self.send(b"\r\n")
        return self.finish(tag, untagged)

    def finish(self, tag: bytes, untagged: list[bytes] | None = None) -> tuple[list[bytes], bytes]:
        untagged = [] if untagged is None else untagged
        while not (line := self.line()).startswith(tag + b" "):
            untagged.append(line)
        return untagged, line[len(tag) + 1:]

    def ok(self, *parts: bytes) -> list[bytes]:
        """`run`, asserting a tagged OK; the untagged lines."""
        untagged, status = self.run(*parts)
        assert status.startswith(b"OK"), (parts[0], status)
        return untagged

    def append(self, folder: bytes, message: bytes, extra: bytes = b"") -> bytes:
        """APPEND with a LITERAL+ literal; the tagged status."""
        _, status = self.run(b"APPEND %s %s{%d+}" % (folder, extra, len(message)), message, b"")
        return status

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def lit(data: bytes) -> bytes:
    """`data` as an IMAP literal, as the server sends every section."""
    return b"{%d}\r\n" % len(data) + data


def literal_items(line: bytes) -> dict[bytes, bytes]:
    """The items of a FETCH response sent as literals, by name, in order."""
    items, position = {}, 0
    while (match := re.compile(rb"([^ (]+) \{(\d+)\}\r\n").search(line, position)):
        position = match.end() + int(match.group(2))
        items[match.group(1)] = line[match.end():position]
    return items


def fetched(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if re.match(rb"\* \d+ FETCH ", line)]


# --- any state ---------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_capability_lists_every_extension(container, imap):
    """RFC 3501 6.1.1: before login CAPABILITY lists STARTTLS and LOGINDISABLED; inside TLS,
    AUTH=PLAIN; after login exactly our extensions (IDLE, UIDPLUS, MOVE, CONDSTORE, SPECIAL-USE,
    LITERAL+, ENABLE, NAMESPACE, ID, CHILDREN, UNSELECT, …) and APPENDLIMIT, in the greeting,
    the LOGIN answer and the CAPABILITY response alike."""
    await book(container)

    def script():
        s = Session(imap, login=False)
        before, status = s.run(b"CAPABILITY")
        assert status == b"OK CAPABILITY completed"
        s.starttls()
        in_tls, _ = s.run(b"CAPABILITY")
        _, login = s.run(b'LOGIN alice@example.com "%s"' % PASSWORD.encode())
        after, status = s.run(b"CAPABILITY")
        s.close()
        return s.greeting, before, in_tls, login, after, status
    greeting, before, in_tls, login, after, status = await deferToThread(script)
    limit = f"APPENDLIMIT={64 * 1024 * 1024}"
    assert greeting.startswith(b"* OK [CAPABILITY " + " ".join(
        EXPECTED_CAPABILITIES + ["STARTTLS", "LOGINDISABLED", limit]).encode() + b"] ")
    assert before == [b"* CAPABILITY " + " ".join(
        EXPECTED_CAPABILITIES + ["STARTTLS", "LOGINDISABLED", limit]).encode()]
    assert in_tls == [b"* CAPABILITY " + " ".join(
        EXPECTED_CAPABILITIES + ["AUTH=PLAIN", limit]).encode()]
    expected = " ".join(EXPECTED_CAPABILITIES + [limit]).encode()
    assert login == b"OK [CAPABILITY " + expected + b"] Logged in"
    assert after == [b"* CAPABILITY " + expected] and status == b"OK CAPABILITY completed"


@pytest_twisted.ensureDeferred
async def test_noop_id_and_namespace(container, imap):
    """NOOP answers OK in every state; ID (RFC 2971) names the server before and after login;
    NAMESPACE (RFC 2342) is one personal namespace with `/`; IMAPClient parses both."""
    await book(container)

    def script():
        s = Session(imap, login=False)
        noop_before = s.run(b"NOOP")
        id_before = s.run(b'ID ("name" "raw-test" "version" "1")')
        namespace_before = s.run(b"NAMESPACE")
        s.close()
        c = client(imap)
        answers = (c.noop(), c.id_({"name": "IMAPClient"}), c.namespace())
        c.logout()
        return noop_before, id_before, namespace_before, answers
    noop_before, id_before, namespace_before, (noop, ident, namespace) = \
        await deferToThread(script)
    assert noop_before == ([], b"OK NOOP completed")
    assert id_before == ([b'* ID ("name" "cloudmail")'], b"OK ID completed")
    assert namespace_before[1].startswith(b"BAD ")
    assert noop[0] == b"NOOP completed"
    assert ident == ((b"name", b"cloudmail"),)
    assert namespace.personal == (("", "/"),) and namespace.other is None \
        and namespace.shared is None


@pytest_twisted.ensureDeferred
async def test_enable(container, imap):
    """ENABLE (RFC 5161) names only what it newly enabled: CONDSTORE and UTF8=ACCEPT, not an
    unknown extension, not a second time; before login it is BAD."""
    await book(container)

    def script():
        s = Session(imap, login=False)
        early = s.run(b"ENABLE CONDSTORE")
        s.starttls()
        s.ok(b'LOGIN alice@example.com "%s"' % PASSWORD.encode())
        first = s.run(b"ENABLE CONDSTORE X-UNKNOWN utf8=accept")
        again = s.run(b"ENABLE CONDSTORE")
        empty = s.run(b"ENABLE")
        s.close()
        return early, first, again, empty
    early, first, again, empty = await deferToThread(script)
    assert early[1] == b"BAD ENABLE is not allowed before login"
    assert first == ([b"* ENABLED CONDSTORE UTF8=ACCEPT"], b"OK ENABLE completed")
    assert again == ([b"* ENABLED"], b"OK ENABLE completed")
    assert empty[1] == b"BAD ENABLE needs capability names"


@pytest_twisted.ensureDeferred
async def test_logout_says_bye_then_ok(container, imap):
    """LOGOUT (RFC 3501 6.1.3) answers `* BYE`, then the tagged OK, then closes; imaplib
    reports the BYE as it should."""
    await book(container)

    def script():
        s = Session(imap)
        answer = s.run(b"LOGOUT")
        closed = s.sock.recv(10)
        s.close()
        c = imaplib.IMAP4("127.0.0.1", imap, timeout=10)
        c.starttls(tls_context())
        c.login("alice@example.com", PASSWORD)
        c.select("INBOX")
        return answer, closed, c.logout()
    (untagged, status), closed, from_imaplib = await deferToThread(script)
    assert from_imaplib == ("BYE", [b"Logging out"])
    assert untagged == [b"* BYE Logging out"] and status == b"OK LOGOUT completed"
    assert closed == b""


@pytest_twisted.ensureDeferred
async def test_bad_commands_and_wrong_state(container, imap):
    """An unknown command, a malformed one and one in the wrong state (FETCH before SELECT)
    each get a tagged BAD and the session goes on; a line without a tag gets `* BAD`."""
    await book(container)

    def script():
        s = Session(imap)
        answers = [s.run(b"FROBNICATE now")[1], s.run(b"FETCH 1 FLAGS")[1],
                   s.run(b'SELECT "unclosed')[1], s.run(b"SELECT (INBOX")[1],
                   s.run(b"STATUS INBOX (NOTHING)")[1], s.run(b"UID FROB 1")[1]]
        s.send(b"\r\n")
        untagged_bad = s.line()
        still = s.run(b"SELECT INBOX")[1]
        s.close()
        return answers, untagged_bad, still
    answers, untagged_bad, still = await deferToThread(script)
    assert answers[0] == b"BAD unknown command FROBNICATE"
    assert answers[1] == b"BAD FETCH is not allowed without a selected folder"
    assert answers[2] == b"BAD unterminated quoted string"
    assert answers[3] == b"BAD unbalanced parentheses"
    assert answers[4].startswith(b"BAD STATUS items are ")
    assert answers[5] == b"BAD UID is not allowed without a selected folder"
    assert untagged_bad == b"* BAD missing tag"
    assert still == b"OK [READ-WRITE] SELECT completed"


@pytest_twisted.ensureDeferred
async def test_starttls_drops_pipelined_plaintext(container, imap):
    """RFC 3501 6.2.1 / RFC 2595: a LOGIN pipelined in plaintext right behind STARTTLS is never
    run: inside TLS the session is still not authenticated."""
    await book(container)

    def script():
        s = Session(imap, login=False)
        s.send(b'a STARTTLS\r\nb LOGIN alice@example.com "%s"\r\n' % PASSWORD.encode())
        started = s.line()
        s.buffer = b""
        s.wrap()
        answer = s.run(b"SELECT INBOX")
        s.close()
        return started, answer
    started, answer = await deferToThread(script)
    assert started == b"a OK Begin TLS negotiation now"
    assert answer == ([], b"BAD SELECT is not allowed before login")


# --- folders -----------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_select_and_examine(container, imap):
    """SELECT (RFC 3501 6.3.1) gives FLAGS, PERMANENTFLAGS with `\\*`, EXISTS, RECENT, UNSEEN
    (the first unseen message), UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ (RFC 7162) and READ-WRITE.
    EXAMINE (6.3.2) gives READ-ONLY with empty PERMANENTFLAGS, refuses STORE, EXPUNGE and MOVE
    with NO [READ-ONLY], leaves \\Seen alone on a body FETCH and does not take \\Recent away."""
    await book(container)

    def script():
        s = Session(imap)
        assert s.append(b"INBOX", MESSAGE, b"(\\Seen $Work) ").startswith(b"OK [APPENDUID ")
        assert s.append(b"INBOX", MESSAGE).startswith(b"OK [APPENDUID ")
        examine = s.run(b"EXAMINE INBOX")
        refused = [s.run(b"STORE 1 +FLAGS (\\Flagged)")[1], s.run(b"EXPUNGE")[1],
                   s.run(b"MOVE 1 Archive")[1]]
        peeked = s.run(b"FETCH 2 (BODY[TEXT])")
        flags_after = s.run(b"FETCH 2 FLAGS")
        select = s.run(b"SELECT INBOX")
        again = s.run(b"SELECT INBOX")
        missing = s.run(b"SELECT Nowhere")
        state = s.run(b"FETCH 1 FLAGS")
        s.close()
        return examine, refused, peeked, flags_after, select, again, missing, state
    examine, refused, peeked, flags_after, select, again, missing, state = \
        await deferToThread(script)
    lines, status = examine
    assert status == b"OK [READ-ONLY] EXAMINE completed"
    assert lines[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)"
    assert lines[1] == b"* OK [PERMANENTFLAGS ()] Flags permitted"
    assert lines[2:5] == [b"* 2 EXISTS", b"* 2 RECENT", b"* OK [UNSEEN 2] First unseen"]
    assert re.fullmatch(rb"\* OK \[UIDVALIDITY \d+\] UIDs valid", lines[5])
    assert lines[6] == b"* OK [UIDNEXT 3] Predicted next UID"
    assert re.fullmatch(rb"\* OK \[HIGHESTMODSEQ \d+\] Highest", lines[7])
    assert refused == [b"NO [READ-ONLY] the folder is read-only (EXAMINE)"] * 3
    assert peeked[1] == b"OK FETCH completed" and b"FLAGS" not in peeked[0][0]
    assert flags_after[0] == [b"* 2 FETCH (FLAGS (\\Recent))"]
    lines, status = select
    assert status == b"OK [READ-WRITE] SELECT completed"
    assert lines[0] == b"* OK [CLOSED] Previous folder closed"
    assert lines[2] == b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft " \
                       b"\\*)] Flags permitted"
    assert lines[3:6] == [b"* 2 EXISTS", b"* 2 RECENT", b"* OK [UNSEEN 2] First unseen"]
    assert again[0][3:5] == [b"* 2 EXISTS", b"* 0 RECENT"]
    assert missing[1] == b"NO [NONEXISTENT] no folder Nowhere"
    assert state[1] == b"BAD FETCH is not allowed without a selected folder"


@pytest_twisted.ensureDeferred
async def test_create_delete_rename(container, imap):
    """CREATE, DELETE and RENAME (RFC 3501 6.3.3-5) with RFC 5530 codes: ALREADYEXISTS for an
    existing name (INBOX too), NONEXISTENT for a missing one, DELETE INBOX refused; a trailing
    separator is dropped; renaming a parent renames its children; renaming INBOX moves its
    messages into the new folder and leaves INBOX empty."""
    await book(container)
    await deliver(container)
    await deliver(container)

    def script():
        s = Session(imap)
        answers = {
            "create": s.run(b"CREATE Projects/2026/")[1],
            "create again": s.run(b"CREATE Projects/2026")[1],
            "create inbox": s.run(b"CREATE inbox")[1],
            "delete missing": s.run(b"DELETE Nowhere")[1],
            "delete inbox": s.run(b"DELETE INBOX")[1],
            "rename missing": s.run(b"RENAME Nowhere Somewhere")[1],
            "rename onto existing": s.run(b"RENAME Projects Archive")[1],
            "rename": s.run(b"RENAME Projects Work")[1],
            "rename inbox": s.run(b"RENAME INBOX Old")[1],
        }
        listed = s.run(b'LIST "" "*"')[0]
        inbox = s.run(b"STATUS INBOX (MESSAGES)")[0]
        old = s.run(b"STATUS Old (MESSAGES)")[0]
        answers["delete"] = s.run(b"DELETE Work/2026")[1]
        answers["delete again"] = s.run(b"DELETE Work/2026")[1]
        s.close()
        return answers, listed, inbox, old
    answers, listed, inbox, old = await deferToThread(script)
    assert answers == {
        "create": b"OK CREATE completed",
        "create again": b"NO [ALREADYEXISTS] folder Projects/2026 exists already",
        "create inbox": b"NO [ALREADYEXISTS] INBOX always exists",
        "delete missing": b"NO [NONEXISTENT] no folder Nowhere",
        "delete inbox": b"NO [CANNOT] INBOX cannot be deleted",
        "rename missing": b"NO [NONEXISTENT] no folder Nowhere",
        "rename onto existing": b"NO [ALREADYEXISTS] folder Archive exists already",
        "rename": b"OK RENAME completed",
        "rename inbox": b"OK RENAME completed",
        "delete": b"OK DELETE completed",
        "delete again": b"NO [NONEXISTENT] no folder Work/2026",
    }
    names = [line.rsplit(b" ", 1)[1] for line in listed]
    assert b"Work" in names and b"Work/2026" in names and b"Projects" not in names
    assert b"INBOX" in names and b"Old" in names
    assert inbox == [b"* STATUS INBOX (MESSAGES 0)"] and old == [b"* STATUS Old (MESSAGES 2)"]


@pytest_twisted.ensureDeferred
async def test_subscribe_unsubscribe_lsub(container, imap):
    """SUBSCRIBE, UNSUBSCRIBE and LSUB (RFC 3501 6.3.6-9): new folders are subscribed,
    UNSUBSCRIBE takes one out of LSUB, a missing folder cannot be subscribed (NONEXISTENT)."""
    await book(container)

    def script():
        s = Session(imap)
        s.ok(b"CREATE News")
        first = s.run(b'LSUB "" "*"')
        unsubscribe = s.run(b"UNSUBSCRIBE News")[1]
        second = s.run(b'LSUB "" "N%"')
        subscribe = s.run(b"SUBSCRIBE News")[1]
        third = s.run(b'LSUB "" "N%"')
        missing = s.run(b"SUBSCRIBE Nowhere")[1]
        s.close()
        return first, unsubscribe, second, subscribe, third, missing
    first, unsubscribe, second, subscribe, third, missing = await deferToThread(script)
    assert first[1] == b"OK LSUB completed"
    assert sorted(first[0]) == sorted(b'* LSUB () "/" ' + name for name in (
        b"INBOX", b"Archive", b"Drafts", b"News", b"Sent", b"Spam", b"Trash"))
    assert unsubscribe == b"OK UNSUBSCRIBE completed"
    assert second == ([], b"OK LSUB completed")
    assert subscribe == b"OK SUBSCRIBE completed"
    assert third == ([b'* LSUB () "/" News'], b"OK LSUB completed")
    assert missing == b"NO [NONEXISTENT] no folder Nowhere"


@pytest_twisted.ensureDeferred
async def test_list_patterns_reference_and_extended(container, imap):
    """LIST (RFC 3501 6.3.8): `%` stops at the separator, `*` does not, the reference is a
    prefix, an empty pattern gives the separator. LIST-EXTENDED (RFC 5258) selects SUBSCRIBED
    or SPECIAL-USE (RFC 6154) folders and RETURNs CHILDREN, SUBSCRIBED, SPECIAL-USE and STATUS
    (RFC 5819); an unknown selection option or STATUS item is BAD."""
    await book(container)
    await deliver(container)

    def script():
        s = Session(imap)
        s.ok(b"CREATE Projects/2026/Q1")
        s.ok(b"UNSUBSCRIBE Projects/2026")
        answers = {
            "percent": s.run(b'LIST "" "%"'),
            "star": s.run(b'LIST "" "Projects*"'),
            "reference": s.run(b'LIST "Projects" "%"'),
            "separator": s.run(b'LIST "" ""'),
            "subscribed": s.run(b'LIST (SUBSCRIBED) "" "Projects*"'),
            "special": s.run(b'LIST (SPECIAL-USE) "" "*"'),
            "return": s.run(b'LIST "" ("INBOX" "Projects") RETURN (CHILDREN SUBSCRIBED '
                            b'SPECIAL-USE STATUS (MESSAGES UNSEEN))'),
            "bad selection": s.run(b'LIST (FROB) "" "*"'),
            "bad status": s.run(b'LIST "" "*" RETURN (STATUS (FROB))'),
        }
        s.close()
        return answers
    answers = await deferToThread(script)
    assert answers["percent"][1] == b"OK LIST completed"
    assert answers["percent"][0] == [
        b'* LIST (\\HasNoChildren) "/" INBOX',
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive',
        b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
        b'* LIST (\\HasChildren) "/" Projects',
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
        b'* LIST (\\HasNoChildren \\Junk) "/" Spam',
        b'* LIST (\\HasNoChildren \\Trash) "/" Trash']
    assert answers["star"][0] == [b'* LIST (\\HasChildren) "/" Projects',
                                  b'* LIST (\\HasChildren) "/" Projects/2026',
                                  b'* LIST (\\HasNoChildren) "/" Projects/2026/Q1']
    assert answers["reference"][0] == [b'* LIST (\\HasChildren) "/" Projects/2026']
    assert answers["separator"][0] == [b'* LIST (\\Noselect) "/" ""']
    assert answers["subscribed"][0] == [
        b'* LIST (\\HasChildren \\Subscribed) "/" Projects',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Projects/2026/Q1']
    assert [line.rsplit(b" ", 1)[1] for line in answers["special"][0]] == [
        b"Archive", b"Drafts", b"Sent", b"Spam", b"Trash"]
    assert answers["return"][0] == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX',
        b"* STATUS INBOX (MESSAGES 1 UNSEEN 1)",
        b'* LIST (\\HasChildren \\Subscribed) "/" Projects',
        b"* STATUS Projects (MESSAGES 0 UNSEEN 0)"]
    assert answers["bad selection"] == ([], b"BAD unknown LIST selection option FROB")
    assert answers["bad status"][0] == []
    assert answers["bad status"][1].startswith(b"BAD STATUS items are MESSAGES ")


@pytest_twisted.ensureDeferred
async def test_status_every_item(container, imap):
    """STATUS (RFC 3501 6.3.10) with every item we offer, HIGHESTMODSEQ (RFC 7162) and SIZE
    (RFC 8438) included; a missing folder is NO [NONEXISTENT]."""
    await book(container)

    def script():
        s = Session(imap)
        s.append(b"Archive", MESSAGE, b"(\\Seen) ")
        s.append(b"Archive", MULTIPART)
        answer = s.run(b"STATUS Archive (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN "
                       b"HIGHESTMODSEQ SIZE)")
        selected = s.run(b"EXAMINE Archive")[0]
        missing = s.run(b"STATUS Nowhere (MESSAGES)")[1]
        s.close()
        return answer, selected, missing
    (lines, status), selected, missing = await deferToThread(script)
    assert status == b"OK STATUS completed"
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", b" ".join(selected)).group(1)
    modseq = re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(selected)).group(1)
    assert lines == [b"* STATUS Archive (MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY "
                     + uidvalidity + b" UNSEEN 1 HIGHESTMODSEQ " + modseq
                     + b" SIZE %d)" % (len(MESSAGE) + len(MULTIPART))]
    assert missing == b"NO [NONEXISTENT] no folder Nowhere"


@pytest_twisted.ensureDeferred
async def test_append_literals_and_limit(container, small_imap):
    """APPEND (RFC 3501 6.3.11) takes a synchronizing literal after the `+` continuation and a
    LITERAL+ one (RFC 7888) at once, answering APPENDUID (RFC 4315); a literal over APPENDLIMIT
    is refused with TOOBIG without a continuation, and a LITERAL+ one is read and dropped, so
    the session goes on; a missing folder is NO [TRYCREATE]; an empty message is refused."""
    await book(container)

    def script():
        s = Session(small_imap)
        tag = s.tag()
        s.send(tag + b" APPEND Drafts (\\Draft) \" 5-Mar-2025 06:07:08 +0100\" {%d}\r\n"
               % len(MESSAGE))
        continuation = s.line()
        s.send(MESSAGE + b"\r\n")
        synchronizing = s.finish(tag)
        plus = s.append(b"Drafts", MESSAGE)
        big = b"x" * (SMALL_LIMIT + 1)
        tag = s.tag()
        s.send(tag + b" APPEND Drafts {%d}\r\n" % len(big))
        too_big = s.line()
        too_big_plus = s.append(b"Drafts", big)
        missing = s.append(b"Nowhere", MESSAGE)
        empty = s.run(b"APPEND Drafts {0+}", b"", b"")[1]
        s.ok(b"SELECT Drafts")
        stored = s.run(b"FETCH 1:* (UID FLAGS INTERNALDATE BODY.PEEK[])")
        s.close()
        return continuation, synchronizing, plus, tag, too_big, too_big_plus, missing, empty, \
            stored
    (continuation, synchronizing, plus, tag, too_big, too_big_plus, missing, empty,
     stored) = await deferToThread(script)
    assert continuation == b"+ Ready for literal data"
    assert re.fullmatch(rb"OK \[APPENDUID \d+ 1\] APPEND completed", synchronizing[1])
    assert re.fullmatch(rb"OK \[APPENDUID \d+ 2\] APPEND completed", plus)
    assert too_big == tag + b" BAD [TOOBIG] literal too big"
    assert too_big_plus == b"BAD [TOOBIG] literal too big"
    assert missing == b"NO [TRYCREATE] no folder Nowhere"
    assert empty == b"NO an empty message cannot be stored"
    lines = fetched(stored[0])
    assert len(lines) == 2
    assert lines[0] == (b'* 1 FETCH (UID 1 FLAGS (\\Draft \\Recent) INTERNALDATE " 5-Mar-2025 '
                        b'05:07:08 +0000" BODY[] {%d}\r\n' % len(MESSAGE) + MESSAGE + b")")
    assert lines[1].endswith(b"BODY[] {%d}\r\n" % len(MESSAGE) + MESSAGE + b")")


@pytest_twisted.ensureDeferred
async def test_folder_names_cannot_escape(container, imap):
    """Names that try to leave the mailbox or break the Maildir++ layout (`../x`, `a/../../b`,
    a NUL, a `.`, an empty part) are refused with NO [CANNOT], or BAD when the syntax cannot
    carry them (a NUL is not valid modified UTF-7 either); nothing is made outside the
    Maildir."""
    await book(container)

    def script():
        s = Session(imap)
        answers = [s.run(b'CREATE "../x"')[1], s.run(b'CREATE "a/../../b"')[1],
                   s.run(b'CREATE "dot.ted"')[1], s.run(b'CREATE "a//b"')[1],
                   s.run(b"CREATE {5+}", b"a\x00bcd", b"")[1],
                   s.run(b'CREATE "a\x00b"')[1], s.run(b'SELECT "../../bob"')[1],
                   s.run(b'RENAME Archive "../Archive"')[1],
                   s.append(b'"../../bob"', MESSAGE)]
        s.close()
        return answers
    answers = await deferToThread(script)
    assert [a.split(b" ", 2)[:2] for a in answers] == [
        [b"NO", b"[CANNOT]"], [b"NO", b"[CANNOT]"], [b"NO", b"[CANNOT]"], [b"NO", b"[CANNOT]"],
        [b"BAD", b"malformed"], [b"BAD", b"invalid"], [b"NO", b"[CANNOT]"], [b"NO", b"[CANNOT]"],
        [b"NO", b"[CANNOT]"]]
    assert [p.name for p in maildir(container).parent.iterdir()] == ["alice"]
    assert [p.name for p in maildir(container).parent.parent.iterdir()] == ["example.com"]


@pytest_twisted.ensureDeferred
async def test_modified_utf7_and_utf8_names(container, imap):
    """Folder names are modified UTF-7 on the wire (RFC 3501 5.1.3): `Entw&APw-rfe` makes
    `Entwürfe`, listed back in the same form, and IMAPClient decodes it; a bare `&`, 8-bit
    text and an encoded printable character are BAD. After ENABLE UTF8=ACCEPT (RFC 6855) names
    go both ways as UTF-8."""
    await book(container)

    def script():
        s = Session(imap)
        created = s.run(b"CREATE Entw&APw-rfe")[1]
        bad = [s.run(b"CREATE &Jjo")[1], s.run("CREATE Bücher".encode())[1],
               s.run(b"CREATE &AGE-")[1]]
        listed = s.run(b'LIST "" "Entw*"')[0]
        c = client(imap)
        names = [name for _, _, name in c.list_folders()]
        c.logout()
        s.ok(b"ENABLE UTF8=ACCEPT")
        utf8 = s.run('CREATE "Bücher"'.encode())[1]
        listed_utf8 = s.run(b'LIST "" "*"')[0]
        status = s.run('STATUS "Entwürfe" (MESSAGES)'.encode())
        s.close()
        return created, bad, listed, names, utf8, listed_utf8, status
    created, bad, listed, names, utf8, listed_utf8, status = await deferToThread(script)
    assert created == b"OK CREATE completed"
    assert bad == [b"BAD malformed modified UTF-7 in a folder name"] * 3
    assert listed == [b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe']
    assert "Entwürfe" in names
    assert (maildir(container) / ".Entw&APw-rfe").is_dir()
    assert utf8 == b"OK CREATE completed"
    assert '* LIST (\\HasNoChildren) "/" {7}\r\nBücher'.encode() in listed_utf8
    assert '* LIST (\\HasNoChildren) "/" {9}\r\nEntwürfe'.encode() in listed_utf8
    assert status == (['* STATUS {9}\r\nEntwürfe (MESSAGES 0)'.encode()],
                      b"OK STATUS completed")


# --- messages ----------------------------------------------------------------------------------

LF_MESSAGE = b"Subject: bare line ends\nFrom: x@remote.test\n\nbody line\n"
UTF8_MESSAGE = ("From: Eve <eve@remote.test>\r\nTo: alice@example.com\r\nSubject: Grüße\r\n"
                "Date: Tue, 1 Dec 2026 08:00:00 +0000\r\n\r\nKäse und Brot\r\n").encode()


def fill_inbox(s: Session) -> None:
    """INBOX: 1 MESSAGE (\\Seen, 4-Mar-2025), 2 MULTIPART (\\Flagged $Work, 25-Nov-2026),
    3 UTF8_MESSAGE (\\Deleted, 1-Dec-2026)."""
    for message, extra in ((MESSAGE, b'(\\Seen) "04-Mar-2025 05:06:07 +0000" '),
                           (MULTIPART, b'(\\Flagged $Work) "25-Nov-2026 10:00:00 +0000" '),
                           (UTF8_MESSAGE, b'(\\Deleted) " 1-Dec-2026 23:30:00 -0100" ')):
        assert s.append(b"INBOX", message, extra).startswith(b"OK [APPENDUID ")


@pytest_twisted.ensureDeferred
async def test_fetch_items(container, imap):
    """FETCH (RFC 3501 6.4.5): FLAGS, UID, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODYSTRUCTURE of
    a multipart, BODY[] and BODY.PEEK with sections, MIME headers and partials, RFC822,
    RFC822.HEADER and RFC822.TEXT equal to BODY[], BODY[HEADER] and BODY[TEXT] (bare LF line
    ends too), the ALL, FAST and FULL macros; a non-PEEK fetch sets \\Seen and says so; UID
    FETCH always carries the UID; BINARY, which is not offered, and a bad number are BAD."""
    await book(container)

    def script():
        s = Session(imap)
        fill_inbox(s)
        assert s.append(b"INBOX", LF_MESSAGE).startswith(b"OK")
        s.ok(b"SELECT INBOX")
        answers = {name: s.run(command) for name, command in (
            ("index", b"FETCH 1 (FLAGS UID INTERNALDATE RFC822.SIZE)"),
            ("envelope", b"FETCH 1 ENVELOPE"),
            ("structure", b"FETCH 2 BODYSTRUCTURE"),
            ("body", b"FETCH 2 BODY"),
            ("sections", (b"FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[2]<0.4> "
                         b"BODY.PEEK[HEADER.FIELDS (Subject To)] BODY.PEEK[HEADER.FIELDS.NOT "
                         b"(Subject To Date Message-ID Content-Type)] BODY.PEEK[3])")),
            ("partial", b"FETCH 1 (BODY.PEEK[]<0.4> BODY.PEEK[TEXT]<4.100>)"),
            ("seen", b"FETCH 2 BODY[TEXT]"),
            ("rfc822", (b"FETCH 1:4 (RFC822.HEADER BODY.PEEK[HEADER] RFC822.TEXT "
                       b"BODY.PEEK[TEXT])")),
            ("all", b"FETCH 1 ALL"), ("fast", b"FETCH 1 FAST"), ("full", b"FETCH 1 FULL"),
            ("uid", b"UID FETCH 2 (FLAGS)"),
            ("binary", b"FETCH 1 BINARY[1]"),
            ("out of range", b"FETCH 9 FLAGS"),
            ("unknown", b"FETCH 1 FROB"),
        )}
        s.close()
        c = client(imap)
        c.select_folder("INBOX", readonly=True)
        parsed = c.fetch([2], ["BODYSTRUCTURE", "ENVELOPE"])[2]
        c.logout()
        return answers, parsed
    answers, parsed = await deferToThread(script)
    size = len(MESSAGE)
    assert answers["index"] == ([b'* 1 FETCH (FLAGS (\\Recent \\Seen) UID 1 INTERNALDATE '
                                 b'" 4-Mar-2025 05:06:07 +0000" RFC822.SIZE %d)' % size],
                                b"OK FETCH completed")
    bob = b'(("Bob" NIL "bob" "remote.test"))'
    assert answers["envelope"][0] == [
        b'* 1 FETCH (ENVELOPE ("Tue, 24 Nov 2026 10:00:00 +0000" "Hello IMAP" ' + bob + b" "
        + bob + b" " + bob + b' ((NIL NIL "alice" "example.com")) NIL NIL NIL '
        b'"<m1@remote.test>"))']
    [structure] = answers["structure"][0]
    assert structure.startswith(
        b'* 2 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT" 17 1 '
        b'NIL NIL NIL NIL)("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" 12 NIL '
        b'("ATTACHMENT" ("FILENAME" "report.pdf")) NIL NIL) "MIXED" ("BOUNDARY" "XYZ") NIL NIL '
        b"NIL))")
    assert answers["body"][0] == [
        (b'* 2 FETCH (BODY (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT" 17 1)'
        b'("APPLICATION" "PDF" ("NAME" "report.pdf") NIL NIL "BASE64" 12) "MIXED"))')]
    assert answers["sections"][0] == [
        b"* 2 FETCH (BODY[1] " + lit("Grüße aus Köln".encode())
        + b" BODY[2.MIME] " + lit(b"Content-Type: application/pdf; name=report.pdf\r\n"
                                  b"Content-Transfer-Encoding: base64\r\nContent-Disposition: "
                                  b"attachment; filename=report.pdf\r\n\r\n")
        + b" BODY[2]<0> " + lit(b"JVBE")
        + b" BODY[HEADER.FIELDS (SUBJECT TO)] "
        + lit(b"To: alice@example.com, Dave <dave@remote.test>\r\nSubject: Report\r\n\r\n")
        + b" BODY[HEADER.FIELDS.NOT (SUBJECT TO DATE MESSAGE-ID CONTENT-TYPE)] "
        + lit(b"From: Carol <carol@remote.test>\r\nMIME-Version: 1.0\r\n\r\n")
        + b" BODY[3] NIL)"]
    assert answers["partial"][0] == [
        b"* 1 FETCH (BODY[]<0> " + lit(b"From") + b" BODY[TEXT]<4> " + lit(b"body text.\r\n")
        + b")"]
    for line in answers["rfc822"][0]:
        items = literal_items(line)
        assert list(items) == [b"RFC822.HEADER", b"BODY[HEADER]", b"RFC822.TEXT", b"BODY[TEXT]"]
        assert items[b"RFC822.HEADER"] == items[b"BODY[HEADER]"]
        assert items[b"RFC822.TEXT"] == items[b"BODY[TEXT]"]
    assert answers["rfc822"][0][3].startswith(
        b"* 4 FETCH (RFC822.HEADER " + lit(b"Subject: bare line ends\nFrom: x@remote.test\n\n"))
    assert answers["all"][0] == [
        b'* 1 FETCH (FLAGS (\\Recent \\Seen) INTERNALDATE " 4-Mar-2025 05:06:07 +0000" '
        b"RFC822.SIZE %d ENVELOPE " % size + answers["envelope"][0][0][len(
            b"* 1 FETCH (ENVELOPE "):]]
    assert answers["fast"][0] == [b'* 1 FETCH (FLAGS (\\Recent \\Seen) INTERNALDATE '
                                  b'" 4-Mar-2025 05:06:07 +0000" RFC822.SIZE %d)' % size]
    assert answers["full"][0][0].endswith(
        b' BODY ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1))')
    assert answers["seen"][0][0].startswith(b"* 2 FETCH (BODY[TEXT] {")
    assert answers["seen"][0][0].endswith(b" FLAGS ($Work \\Flagged \\Recent \\Seen))")
    assert answers["uid"][0] == [b"* 2 FETCH (UID 2 FLAGS ($Work \\Flagged \\Recent \\Seen))"]
    assert answers["binary"][1] == b"BAD BINARY is not offered: BINARY[1]"
    assert answers["out of range"][1] == b"BAD message sequence number out of range"
    assert answers["unknown"][1] == b"BAD unknown FETCH attribute FROB"
    assert parsed[b"BODYSTRUCTURE"].is_multipart
    assert [p[:2] for p in parsed[b"BODYSTRUCTURE"][0]] == [(b"TEXT", b"PLAIN"),
                                                             (b"APPLICATION", b"PDF")]
    assert parsed[b"ENVELOPE"].subject == b"Report"


@pytest_twisted.ensureDeferred
async def test_search_keys(container, imap):
    """SEARCH (RFC 3501 6.4.4) on flags, keywords, header keys, BODY and TEXT, internal and
    sent dates, sizes, sequence and UID sets, OR, NOT and parentheses, with CHARSET UTF-8 and a
    non-ASCII literal (also from IMAPClient); UID SEARCH answers UIDs; an unknown charset is
    NO [BADCHARSET], an unknown key BAD."""
    await book(container)

    def script():
        s = Session(imap)
        fill_inbox(s)
        s.ok(b"SELECT INBOX")
        queries = {
            "all": b"ALL", "seen": b"SEEN", "unseen": b"UNSEEN", "flagged": b"FLAGGED",
            "deleted": b"DELETED", "undeleted": b"UNDELETED", "keyword": b"KEYWORD $work",
            "unkeyword": b"UNKEYWORD $Work", "from": b"FROM bob", "to": b'TO "dave"',
            "subject": b"SUBJECT report", "header": b'HEADER Message-ID "m2@"',
            "body": b'BODY "body text"', "text": b"TEXT carol",
            "before": b"BEFORE 1-Jan-2026", "since": b"SINCE 25-Nov-2026",
            "on": b"ON 2-Dec-2026", "senton": b"SENTON 24-Nov-2026",
            "sentbefore": b"SENTBEFORE 25-Nov-2026", "sentsince": b"SENTSINCE 25-Nov-2026",
            "larger": b"LARGER %d" % len(UTF8_MESSAGE), "smaller": b"SMALLER %d" % len(MESSAGE),
            "sequence": b"2:*", "uid": b"UID 1,3", "or": b"OR SEEN FLAGGED",
            "not": b"NOT SEEN", "nested": b"(OR DELETED (FLAGGED KEYWORD $Work)) NOT 3",
            "recent new": b"NEW",
        }
        answers = {name: s.run(b"SEARCH " + query) for name, query in queries.items()}
        word = "Grüße".encode()
        answers["utf8"] = s.run(b"SEARCH CHARSET UTF-8 SUBJECT {%d}" % len(word), word, b"")
        answers["utf8 plus"] = s.run(b"SEARCH CHARSET utf-8 BODY {%d+}" % len("Käse".encode()),
                                     "Käse".encode(), b"")
        answers["uid search"] = s.run(b"UID SEARCH 2:3 UNDELETED")
        answers["badcharset"] = s.run(b"SEARCH CHARSET KOI8-R SUBJECT x")
        answers["bad key"] = s.run(b"SEARCH FROB")
        answers["bad date"] = s.run(b"SEARCH SINCE yesterday")
        s.close()
        c = client(imap)
        c.select_folder("INBOX")
        from_client = c.search(["BODY", "Köln"], charset="UTF-8")
        c.logout()
        return answers, from_client
    answers, from_client = await deferToThread(script)
    found = {name: (lines, status) for name, (lines, status) in answers.items()}
    expected = {
        "all": b"1 2 3", "seen": b"1", "unseen": b"2 3", "flagged": b"2", "deleted": b"3",
        "undeleted": b"1 2", "keyword": b"2", "unkeyword": b"1 3", "from": b"1", "to": b"2",
        "subject": b"2", "header": b"2", "body": b"1", "text": b"2", "before": b"1",
        "since": b"2 3", "on": b"3", "senton": b"1", "sentbefore": b"1", "sentsince": b"2 3",
        "larger": b"1 2", "smaller": b"3", "sequence": b"2 3", "uid": b"1 3", "or": b"1 2",
        "not": b"2 3", "nested": b"2", "recent new": b"2 3", "utf8": b"3", "utf8 plus": b"3",
        "uid search": b"2",
    }
    for name, numbers in expected.items():
        assert found[name] == ([b"* SEARCH " + numbers], b"OK SEARCH completed"), name
    assert found["badcharset"] == ([], (b"NO [BADCHARSET (UTF-8 US-ASCII)] charset KOI8-R is "
                                       b"not supported"))
    assert found["bad key"] == ([], b"BAD unknown search key FROB")
    assert found["bad date"] == ([], b"BAD SINCE needs a date like 1-Feb-1994")
    assert from_client == [2]


@pytest_twisted.ensureDeferred
async def test_store_flags(container, imap):
    """STORE (RFC 3501 6.4.6): +FLAGS, -FLAGS and FLAGS with system flags and keywords answer
    the new flags; .SILENT answers nothing; UID STORE answers carry the UID, plain STORE ones
    do not; \\Recent cannot be stored (BAD); a keyword shows in FLAGS at the next SELECT;
    IMAPClient sees the same flags."""
    await book(container)

    def script():
        s = Session(imap)
        for _ in range(2):
            s.append(b"INBOX", MESSAGE)
        s.ok(b"SELECT INBOX")
        answers = [
            s.run(b"STORE 1 +FLAGS (\\Flagged $Label1)"),
            s.run(b"STORE 1 -FLAGS ($Label1)"),
            s.run(b"STORE 1:2 FLAGS (\\Seen \\Answered)"),
            s.run(b"STORE 2 +FLAGS.SILENT (\\Draft)"),
            s.run(b"UID STORE 1:* -FLAGS (\\Answered)"),
            s.run(b"STORE 1 +FLAGS \\Deleted"),
            s.run(b"STORE 1 +FLAGS (\\Recent)"),
            s.run(b"STORE 1 FLAGS (\\Seen \\Recent)"),
            s.run(b"STORE 1 +FLAGS (\\Bogus)"),
            s.run(b"STORE 1 FROB (\\Seen)"),
        ]
        s.ok(b"STORE 2 +FLAGS (Project-X)")
        reselect = s.run(b"SELECT INBOX")[0]
        s.close()
        c = client(imap)
        c.select_folder("INBOX")
        flags = c.get_flags([1, 2])
        c.logout()
        return answers, reselect, flags
    answers, reselect, flags = await deferToThread(script)
    assert answers[0] == ([b"* 1 FETCH (FLAGS ($Label1 \\Flagged \\Recent))"],
                          b"OK STORE completed")
    assert answers[1] == ([b"* 1 FETCH (FLAGS (\\Flagged \\Recent))"], b"OK STORE completed")
    assert answers[2] == ([b"* 1 FETCH (FLAGS (\\Answered \\Recent \\Seen))",
                           b"* 2 FETCH (FLAGS (\\Answered \\Recent \\Seen))"],
                          b"OK STORE completed")
    assert answers[3] == ([], b"OK STORE completed")
    assert answers[4] == ([b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen))",
                           b"* 2 FETCH (UID 2 FLAGS (\\Draft \\Recent \\Seen))"],
                          b"OK STORE completed")
    assert answers[5] == ([b"* 1 FETCH (FLAGS (\\Deleted \\Recent \\Seen))"],
                          b"OK STORE completed")
    assert answers[6] == ([], b"BAD \\Recent cannot be changed by STORE (RFC 3501 2.3.2)")
    assert answers[7] == answers[6]
    assert answers[8] == ([], b"BAD unknown system flag \\Bogus")
    assert answers[9][1] == b"BAD STORE items are FLAGS, +FLAGS and -FLAGS (.SILENT)"
    assert reselect[1] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft Project-X)"
    assert flags == {1: (b"\\Deleted", b"\\Seen"), 2: (b"Project-X", b"\\Draft", b"\\Seen")} \
        or {k: set(v) for k, v in flags.items()} == {
            1: {b"\\Deleted", b"\\Seen"}, 2: {b"Project-X", b"\\Draft", b"\\Seen"}}


@pytest_twisted.ensureDeferred
async def test_copy_and_move(container, imap):
    """COPY and MOVE (RFC 3501 6.4.7, RFC 6851) answer COPYUID (RFC 4315), in the tagged OK for
    COPY and untagged before the EXPUNGEs for MOVE; UID COPY and UID MOVE take UIDs; a missing
    target is NO [TRYCREATE]; flags travel with the copies; IMAPClient moves too."""
    await book(container)

    def script():
        s = Session(imap)
        for _ in range(4):
            s.append(b"INBOX", MESSAGE, b"(\\Flagged) ")
        archive = [line for line in s.run(b"EXAMINE Archive")[0] if b"UIDVALIDITY" in line]
        s.ok(b"SELECT INBOX")
        answers = {
            "copy": s.run(b"COPY 1:2 Archive"),
            "uid copy": s.run(b"UID COPY 4 Archive"),
            "missing": s.run(b"COPY 1 Nowhere"),
            "uid missing": s.run(b"UID MOVE 1 Nowhere"),
            "move": s.run(b"MOVE 2 Archive"),
            "uid move": s.run(b"UID MOVE 4 Trash"),
            "none": s.run(b"UID COPY 99 Archive"),
        }
        status = s.run(b"STATUS Archive (MESSAGES)")[0]
        s.close()
        c = client(imap)
        c.select_folder("INBOX")
        moved = c.move([1], "Drafts")
        left = c.search("ALL")
        c.select_folder("Archive")
        flags = c.get_flags(c.search("ALL"))
        c.logout()
        return archive, answers, status, moved, left, flags
    archive, answers, status, moved, left, flags = await deferToThread(script)
    validity = re.search(rb"UIDVALIDITY (\d+)", archive[0]).group(1)
    assert answers["copy"] == ([], b"OK [COPYUID " + validity + b" 1:2 1:2] COPY completed")
    assert answers["uid copy"] == ([], b"OK [COPYUID " + validity + b" 4 3] COPY completed")
    assert answers["missing"] == ([], b"NO [TRYCREATE] no folder Nowhere")
    assert answers["uid missing"] == ([], b"NO [TRYCREATE] no folder Nowhere")
    assert answers["move"] == ([b"* OK [COPYUID " + validity + b" 2 4] Moved", b"* 2 EXPUNGE"],
                               b"OK MOVE completed")
    lines, tagged = answers["uid move"]
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 4 1\] Moved", lines[0])
    assert lines[1:] == [b"* 3 EXPUNGE"] and tagged == b"OK MOVE completed"
    assert answers["none"] == ([], b"OK COPY completed")
    assert status == [b"* STATUS Archive (MESSAGES 4)"]
    assert moved is None or b"COPYUID" in moved or moved == b"MOVE completed"
    assert left == [3]
    assert all(b"\\Flagged" in f for f in flags.values()) and len(flags) == 4


@pytest_twisted.ensureDeferred
async def test_expunge_close_unselect_check(container, imap):
    """EXPUNGE (RFC 3501 6.4.3) answers `* n EXPUNGE` per removed message, highest first so the
    numbers hold; UID EXPUNGE (RFC 4315) removes only the UIDs named; UNSELECT (RFC 3691)
    leaves \\Deleted messages; CLOSE (6.4.2) removes them without a word; CHECK is OK; UID
    EXPUNGE without a set and EXPUNGE with one are BAD."""
    await book(container)

    def script():
        s = Session(imap)
        for _ in range(5):
            s.append(b"INBOX", MESSAGE)
        s.ok(b"SELECT INBOX")
        check = s.run(b"CHECK")
        malformed = [s.run(b"UID EXPUNGE")[1], s.run(b"EXPUNGE 1")[1]]
        s.ok(b"STORE 1,3,5 +FLAGS.SILENT (\\Deleted)")
        uid_expunge = s.run(b"UID EXPUNGE 3")
        expunge = s.run(b"EXPUNGE")
        s.ok(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
        unselect = s.run(b"UNSELECT")
        after_unselect = s.run(b"STATUS INBOX (MESSAGES)")[0]
        examine = s.ok(b"EXAMINE INBOX")
        close_readonly = s.run(b"CLOSE")
        s.ok(b"SELECT INBOX")
        close = s.run(b"CLOSE")
        after_close = s.run(b"STATUS INBOX (MESSAGES)")[0]
        state = s.run(b"EXPUNGE")[1]
        s.close()
        return (check, malformed, uid_expunge, expunge, unselect, after_unselect, examine,
                close_readonly, close, after_close, state)
    (check, malformed, uid_expunge, expunge, unselect, after_unselect, examine, close_readonly,
     close, after_close, state) = await deferToThread(script)
    assert check == ([], b"OK CHECK completed")
    assert malformed == [b"BAD UID EXPUNGE needs a UID set", b"BAD EXPUNGE takes no arguments"]
    assert uid_expunge == ([b"* 3 EXPUNGE"], b"OK EXPUNGE completed")
    assert expunge == ([b"* 4 EXPUNGE", b"* 1 EXPUNGE"], b"OK EXPUNGE completed")
    assert unselect == ([], b"OK UNSELECT completed")
    assert after_unselect == [b"* STATUS INBOX (MESSAGES 2)"]
    assert b"* 2 EXISTS" in examine
    assert close_readonly == ([], b"OK CLOSE completed")
    assert close == ([], b"OK CLOSE completed")
    assert after_close == [b"* STATUS INBOX (MESSAGES 1)"]
    assert state == b"BAD EXPUNGE is not allowed without a selected folder"


# --- CONDSTORE, IDLE and other sessions --------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_condstore(container, imap):
    """CONDSTORE (RFC 7162): SELECT (CONDSTORE) gives HIGHESTMODSEQ and FETCH answers MODSEQ;
    FETCH (CHANGEDSINCE n) gives only what changed after n; STORE (UNCHANGEDSINCE n) leaves a
    message changed since alone and names it in [MODIFIED …]; SEARCH MODSEQ ends with the
    highest mod-sequence found; STATUS HIGHESTMODSEQ follows every change."""
    await book(container)

    def highest(lines: list[bytes]) -> int:
        return int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(lines)).group(1))

    def script():
        s = Session(imap)
        for _ in range(3):
            s.append(b"INBOX", MESSAGE)
        selected = s.run(b"SELECT INBOX (CONDSTORE)")
        start = highest(selected[0])
        s.ok(b"STORE 2 +FLAGS.SILENT (\\Flagged)")
        answers = {
            "changed since": s.run(b"FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % start),
            "uid changed since": s.run(b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % start),
            "conflict": s.run(b"STORE 1:2 (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % start),
            "uid conflict": s.run(b"UID STORE 2 (UNCHANGEDSINCE 1) -FLAGS (\\Flagged)"),
            "search": s.run(b"SEARCH MODSEQ %d" % (start + 1)),
            "status": s.run(b"STATUS INBOX (HIGHESTMODSEQ)"),
            "bad modifier": s.run(b"STORE 1 (FROB 1) +FLAGS (\\Seen)"),
            "bad fetch modifier": s.run(b"FETCH 1 FLAGS (FROB 1)"),
        }
        s.close()
        return start, answers
    start, answers = await deferToThread(script)
    assert answers["changed since"] == (
        [b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % (start + 1)],
        b"OK FETCH completed")
    assert answers["uid changed since"] == (
        [b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % (start + 1)],
        b"OK FETCH completed")
    assert answers["conflict"] == (
        [b"* 1 FETCH (FLAGS (\\Recent \\Seen) MODSEQ (%d))" % (start + 2)],
        b"OK [MODIFIED 2] STORE completed; some messages changed meanwhile")
    assert answers["uid conflict"] == (
        [], b"OK [MODIFIED 2] STORE completed; some messages changed meanwhile")
    assert answers["search"] == ([b"* SEARCH 1 2 (MODSEQ %d)" % (start + 2)],
                                 b"OK SEARCH completed")
    assert answers["status"] == ([b"* STATUS INBOX (HIGHESTMODSEQ %d)" % (start + 2)],
                                 b"OK STATUS completed")
    assert answers["bad modifier"][1] == b"BAD the only STORE modifier is UNCHANGEDSINCE"
    assert answers["bad fetch modifier"][1] == b"BAD unknown FETCH modifier"


@pytest_twisted.ensureDeferred
async def test_enable_condstore_adds_modseq(container, imap):
    """A SEARCH with MODSEQ turns CONDSTORE on for the folder (RFC 7162 3.1), so later STORE
    answers carry MODSEQ; after ENABLE CONDSTORE every SELECT is a CONDSTORE one."""
    await book(container)

    def script():
        s = Session(imap)
        s.append(b"INBOX", MESSAGE)
        s.ok(b"SELECT INBOX")
        plain = s.run(b"FETCH 1 FLAGS")
        s.run(b"SEARCH MODSEQ 1")
        after_search = s.run(b"STORE 1 +FLAGS (\\Draft)")
        s.ok(b"ENABLE CONDSTORE")
        s.ok(b"SELECT INBOX")
        answers = plain, after_search, s.run(b"FETCH 1 FLAGS"), \
            s.run(b"STORE 1 +FLAGS (\\Answered)")
        s.close()
        return answers
    plain, after_search, fetch, store = await deferToThread(script)
    assert plain[0] == [b"* 1 FETCH (FLAGS (\\Recent))"]
    assert re.fullmatch(rb"\* 1 FETCH \(FLAGS \(\\Draft \\Recent\) MODSEQ \(\d+\)\)",
                        after_search[0][0])
    assert re.fullmatch(rb"\* 1 FETCH \(FLAGS \(\\Draft\) MODSEQ \(\d+\)\)", fetch[0][0])
    assert re.fullmatch(rb"\* 1 FETCH \(FLAGS \(\\Answered \\Draft\) MODSEQ \(\d+\)\)",
                        store[0][0])


@pytest_twisted.ensureDeferred
async def test_idle_sees_flags_and_expunges_of_another_session(container, imap):
    """IDLE (RFC 2177): a flag change and an expunge made by a second session arrive as
    `* n FETCH` and `* n EXPUNGE` while idling; DONE ends it with OK."""
    await book(container)

    def script():
        a, b = Session(imap), Session(imap)
        for _ in range(2):
            a.append(b"INBOX", MESSAGE)
        a.ok(b"SELECT INBOX")
        b.ok(b"SELECT INBOX")
        tag = a.tag()
        a.send(tag + b" IDLE\r\n")
        idling = a.line()
        b.ok(b"STORE 1 +FLAGS (\\Flagged)")
        flagged = a.line()
        b.ok(b"STORE 2 +FLAGS.SILENT (\\Deleted)")
        b.ok(b"EXPUNGE")
        seen = [a.line(), a.line()]
        a.send(b"DONE\r\n")
        done = a.finish(tag)
        after = a.run(b"FETCH 1:* UID")
        a.close()
        b.close()
        return idling, flagged, seen, done, after
    idling, flagged, seen, done, after = await deferToThread(script)
    assert idling == b"+ idling"
    assert flagged == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"
    assert seen == [b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Recent))", b"* 2 EXPUNGE"]
    assert done == ([], b"OK IDLE terminated")
    assert after == ([b"* 1 FETCH (UID 1)"], b"OK FETCH completed")


@pytest_twisted.ensureDeferred
async def test_expunges_of_another_session_wait_for_a_safe_moment(container, imap):
    """RFC 3501 7.4.1: another session's expunge is not announced during FETCH, STORE or SEARCH
    (their sequence numbers keep meaning what they meant; a message gone meanwhile is left
    out), but at NOOP, where the numbers shift."""
    await book(container)

    def script():
        a, b = Session(imap), Session(imap)
        for _ in range(3):
            a.append(b"INBOX", MESSAGE)
        a.ok(b"SELECT INBOX")
        b.ok(b"SELECT INBOX")
        b.ok(b"STORE 1 +FLAGS.SILENT (\\Deleted)")
        b.ok(b"EXPUNGE")
        answers = {
            "fetch": a.run(b"FETCH 1:3 UID"),
            "search": a.run(b"SEARCH ALL"),
            "store": a.run(b"STORE 3 +FLAGS (\\Seen)"),
            "noop": a.run(b"NOOP"),
            "fetch after": a.run(b"FETCH 1:* UID"),
        }
        a.close()
        b.close()
        return answers
    answers = await deferToThread(script)
    assert answers["fetch"] == ([b"* 2 FETCH (UID 2)", b"* 3 FETCH (UID 3)"],
                                b"OK FETCH completed")
    assert answers["search"] == ([b"* SEARCH 2 3"], b"OK SEARCH completed")
    assert answers["store"] == ([b"* 3 FETCH (FLAGS (\\Recent \\Seen))"], b"OK STORE completed")
    assert answers["noop"] == ([b"* 1 EXPUNGE"], b"OK NOOP completed")
    assert answers["fetch after"] == ([b"* 1 FETCH (UID 2)", b"* 2 FETCH (UID 3)"],
                                      b"OK FETCH completed")


# --- the Maildir as other programs leave it ------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_broken_message_file_is_served_as_is(container, imap):
    """Garbage bytes and an empty file written into `cur/` get UIDs like any message; FETCH
    serves their bytes exactly, BODYSTRUCTURE and ENVELOPE of them work, and the session goes
    on."""
    await book(container)
    garbage = b"\x00\xff\xfe not a header\r\n\x80\x81 --boundary\r\n\r\n:\r\n"

    def script():
        s = Session(imap)
        s.ok(b"SELECT INBOX")
        cur = maildir(container) / "cur"
        (cur / "1700000000.M1P1.elsewhere,S=40:2,S").write_bytes(garbage)
        (cur / "1700000001.M2P2.elsewhere").write_bytes(b"")
        noop = s.run(b"NOOP")
        answers = [s.run(b"FETCH 1 (UID FLAGS RFC822.SIZE BODY[] BODYSTRUCTURE ENVELOPE)"),
                   s.run(b"FETCH 2 (UID BODY.PEEK[] BODY.PEEK[1] BODYSTRUCTURE)"),
                   s.run(b"SEARCH TEXT boundary")]
        still = s.run(b"NOOP")
        s.close()
        return noop, answers, still
    noop, answers, still = await deferToThread(script)
    assert noop == ([b"* 2 EXISTS", b"* 2 RECENT"], b"OK NOOP completed")
    (first, ), status = answers[0]
    assert status == b"OK FETCH completed"
    assert first.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen) RFC822.SIZE %d BODY[] "
                            % len(garbage) + lit(garbage) + b" BODYSTRUCTURE (\"TEXT\" \"PLAIN\"")
    assert first.endswith(b" ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))")
    (second, ), status = answers[1]
    assert status == b"OK FETCH completed"
    assert second.startswith(b"* 2 FETCH (UID 2 BODY[] {0}\r\n BODY[1] {0}\r\n BODYSTRUCTURE (")
    assert answers[2] == ([b"* SEARCH 1"], b"OK SEARCH completed")
    assert still == ([], b"OK NOOP completed")


@pytest_twisted.ensureDeferred
async def test_files_from_other_programs_get_new_uids(container, imap):
    """Files another program moves into `cur/` or `new/` get the next UIDs in the order they
    arrived, with the flags of their names; a file it removes is expunged at the next NOOP."""
    await book(container)

    def script():
        s = Session(imap)
        s.append(b"INBOX", MESSAGE)
        s.ok(b"SELECT INBOX")
        root = maildir(container)
        first = root / "tmp" / "1700000100.M1P1.other"
        first.write_bytes(MESSAGE)
        os.utime(first, (1700000100, 1700000100))
        os.rename(first, root / "cur" / "1700000100.M1P1.other:2,FS")
        second = root / "tmp" / "1700000200.M2P2.other"
        second.write_bytes(MULTIPART)
        os.utime(second, (1700000200, 1700000200))
        os.rename(second, root / "new" / "1700000200.M2P2.other")
        noop = s.run(b"NOOP")
        listed = s.run(b"UID FETCH 2:* (FLAGS RFC822.SIZE)")
        original = next(p for p in (root / "cur").iterdir() if "other" not in p.name)
        original.unlink()
        gone = s.run(b"NOOP")
        status = s.run(b"STATUS INBOX (MESSAGES UIDNEXT)")
        s.close()
        return noop, listed, gone, status
    noop, listed, gone, status = await deferToThread(script)
    assert noop == ([b"* 3 EXISTS", b"* 3 RECENT"], b"OK NOOP completed")
    assert listed == ([b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent \\Seen) RFC822.SIZE %d)"
                       % len(MESSAGE),
                       b"* 3 FETCH (UID 3 FLAGS (\\Recent) RFC822.SIZE %d)" % len(MULTIPART)],
                      b"OK FETCH completed")
    assert gone == ([b"* 1 EXPUNGE"], b"OK NOOP completed")
    assert status[0] == [b"* STATUS INBOX (MESSAGES 2 UIDNEXT 4)"]
