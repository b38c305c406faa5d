"""The submission listeners with smtplib: AUTH only inside TLS, the sender rules, the header
completed, DKIM signing that verifies against the published key, local delivery."""

from __future__ import annotations

import base64
import re
import smtplib
import ssl

import dkim
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from cloudmail.accounts import dkimkeys
from tests.integration.test_smtp_inbound import book, inbox

PASSWORD = "long enough"


def tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def submission(container):
    """The STARTTLS submission listener (587) over the test container, with its outbound queue
    running; yields its port."""
    yield from listening(container, implicit_tls=False)


@pytest.fixture
def submissions(container):
    """The implicit-TLS submission listener (465); yields its port."""
    yield from listening(container, implicit_tls=True)


def listening(container, implicit_tls: bool):
    container.certs.load()
    container.outbound_queue.startService()
    port = reactor.listenTCP(0, container.submission_factory(implicit_tls=implicit_tls),
                             interface="127.0.0.1")
    yield port.getHost().port
    pytest_twisted.blockon(port.stopListening())
    pytest_twisted.blockon(container.outbound_queue.stopService())


def message(author: str = "alice@example.com", extra: str = "") -> bytes:
    return (f"From: Alice <{author}>\r\nTo: bob@example.com\r\nSubject: from Alice\r\n{extra}"
            "\r\nHello Bob.\r\n").encode()


def logged_in(port: int, user: str = "alice@example.com") -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    client.starttls(context=tls())
    client.login(user, PASSWORD)
    return client


@pytest_twisted.ensureDeferred
async def test_auth_only_inside_tls_and_mail_only_after_auth(container, submission):
    """Before STARTTLS no AUTH is offered and MAIL gets 530; after it AUTH PLAIN and LOGIN work,
    a wrong password gets 535 5.7.8, and MAIL without AUTH gets 530 5.7.0."""
    await book(container)

    def script():
        c = smtplib.SMTP("127.0.0.1", submission, timeout=10)
        c.ehlo("client.test")
        before = c.has_extn("auth")
        plain_mail = c.mail("alice@example.com")
        c.starttls(context=tls())
        c.ehlo("client.test")
        offered = c.esmtp_features.get("auth", "")
        anonymous = c.mail("alice@example.com")
        try:
            c.login("alice@example.com", "wrong password")
            wrong = None
        except smtplib.SMTPAuthenticationError as e:
            wrong = (e.smtp_code, e.smtp_error)
        c.quit()
        results = []
        for mechanism in ("PLAIN", "LOGIN"):
            c = smtplib.SMTP("127.0.0.1", submission, timeout=10)
            c.starttls(context=tls())
            c.ehlo("client.test")
            c.user, c.password = "alice@example.com", PASSWORD
            authobject = c.auth_plain if mechanism == "PLAIN" else c.auth_login
            results.append(c.auth(mechanism, authobject, initial_response_ok=False))
            c.quit()
        return before, plain_mail, offered, anonymous, wrong, results
    before, plain_mail, offered, anonymous, wrong, results = await deferToThread(script)
    assert before is False and plain_mail[0] == 530
    assert "PLAIN" in offered and "LOGIN" in offered
    assert anonymous[0] == 530 and anonymous[1].startswith(b"5.7.0")
    assert wrong[0] == 535 and wrong[1].startswith(b"5.7.8")
    assert [r[0] for r in results] == [235, 235]


@pytest_twisted.ensureDeferred
async def test_local_mail_is_signed_completed_and_delivered(container, submissions):
    """Over implicit TLS: a message to a local mailbox gets Date: and Message-ID:, a DKIM
    signature that verifies with dkimpy against the domain's published key, and lands in the
    recipient's INBOX; a +tag form of the sender is allowed."""
    await book(container)

    def script():
        with smtplib.SMTP_SSL("127.0.0.1", submissions, context=tls(), timeout=10) as c:
            c.login("alice@example.com", PASSWORD)
            return c.sendmail("alice+lists@example.com", ["bob@example.com"], message())
    assert await deferToThread(script) == {}
    [stored] = inbox(container, "bob")
    assert b"\r\nDate: " in stored and b"\r\nMessage-ID: <" in stored
    domain = await container.accounts.get_domain("example.com")
    record = dkimkeys.dns_record(domain.dkim_private_key).encode()
    signed = stored[stored.index(b"DKIM-Signature:"):]

    def dns(name, timeout=5):
        assert name == f"{domain.dkim_selector}._domainkey.example.com.".encode()
        return record
    assert dkim.verify(signed, dnsfunc=dns)


@pytest.mark.parametrize("sender, author, code", [
    ("mallory@example.com", "alice@example.com", 553),
    ("alice@example.com", "bob@example.com", 553),
    ("al@example.com", "al@example.com", 250),
    ("alice@elsewhere.test", "alice@example.com", 553),
])
@pytest_twisted.ensureDeferred
async def test_sender_rules(container, submission, sender, author, code):
    """The envelope sender and From: must be the user's mailbox or one of its aliases
    (553 5.7.1 otherwise, saying why)."""
    await book(container)

    def script():
        c = logged_in(submission)
        try:
            c.sendmail(sender, ["bob@example.com"], message(author))
            return 250, b""
        except smtplib.SMTPSenderRefused as e:
            return e.smtp_code, e.smtp_error
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
        finally:
            c.close()
    got, text = await deferToThread(script)
    assert got == code
    if code == 553:
        assert text.startswith(b"5.7.1")


@pytest_twisted.ensureDeferred
async def test_masquerading_allows_any_address_of_the_domain(container, submission):
    """With masquerading on for the domain, any of its addresses may be the sender."""
    await book(container)
    await container.admin_service.update_domain("example.com", {"masquerade": True})

    def script():
        c = logged_in(submission)
        try:
            return c.sendmail("newsletter@example.com", ["bob@example.com"],
                              message("newsletter@example.com"))
        finally:
            c.close()
    assert await deferToThread(script) == {}


@pytest_twisted.ensureDeferred
async def test_other_domains_are_queued(container, submission):
    """A recipient in another domain is accepted and its copy queued (durably) before the 250;
    a local recipient of the same message is delivered at once."""
    await book(container)

    def script():
        c = logged_in(submission)
        refused = c.sendmail("alice@example.com", ["someone@elsewhere.test", "bob@example.com"],
                             message())
        c.quit()
        return refused
    assert await deferToThread(script) == {}
    [entry] = container.outbound_queue.entries()
    assert [r.address for r in entry.recipients] == ["someone@elsewhere.test"]
    assert entry.auth_user == "alice@example.com"
    assert len(inbox(container, "bob")) == 1


def test_plain_initial_response_is_decoded_exactly():
    """AUTH PLAIN's initial response is authzid NUL user NUL password (RFC 4616)."""
    assert base64.b64decode(base64.b64encode(b"\0alice@example.com\0pw")).split(b"\0") == \
        [b"", b"alice@example.com", b"pw"]


@pytest_twisted.ensureDeferred
async def test_received_header_names_esmtpsa_and_can_hide_the_client(tmp_path):
    """Submitted mail's Received: says ESMTPSA (RFC 3848); with `hide_client_ip` it does not
    show the client's IP."""
    from cloudmail.app import Container
    from tests.conftest import test_config
    for hide in (False, True):
        (tmp_path / str(hide)).mkdir()
        container = Container(test_config(tmp_path / str(hide), submission={"hide_client_ip": hide}))
        container.prepare_data_dir()
        container.certs.load()
        await book(container)
        port = reactor.listenTCP(0, container.submission_factory(), interface="127.0.0.1")
        try:
            def send():
                c = logged_in(port.getHost().port)
                c.sendmail("alice@example.com", ["bob@example.com"], message())
                c.quit()
            await deferToThread(send)
        finally:
            await port.stopListening()
            await container.database.close()
            container.pools.stopService()
        [stored] = inbox(container, "bob")
        assert b"with ESMTPSA id " in stored
        assert (b"[127.0.0.1]" in stored) is not hide


@pytest_twisted.ensureDeferred
async def test_ed25519_key_signs_next_to_rsa_and_a_retired_key_no_longer_signs(container,
                                                                               submission):
    """With an Ed25519 key beside the RSA one, a message carries two signatures (RFC 8463:
    RSA for receivers that do not know Ed25519) and each verifies against its own published
    record; after a rotation the new main key signs and the retired one does not."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from cloudmail.accounts import store
    await book(container)
    ed_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    await container.database.transact(store.add_dkim_key, "example.com", "ed", ed_pem, "ed25519")

    def send(subject):
        c = logged_in(submission)
        c.sendmail("alice@example.com", ["bob@example.com"],
                   message(extra=f"X-Test: {subject}\r\n"))
        c.quit()

    async def signatures(subject):
        await deferToThread(send, subject)
        [stored] = [m for m in inbox(container, "bob") if f"X-Test: {subject}".encode() in m]
        domain = await container.accounts.get_domain("example.com")
        records = {f"{selector}._domainkey.example.com.".encode():
                   dkimkeys.dns_record(pem).encode() for selector, pem in
                   [(domain.dkim_selector, domain.dkim_private_key)]
                   + [(k.selector, k.private_key) for k in domain.dkim_keys]}
        signed = stored[stored.index(b"DKIM-Signature:"):]
        verifier = dkim.DKIM(signed)
        count = signed.count(b"DKIM-Signature:")
        assert all(verifier.verify(idx=i, dnsfunc=lambda name, timeout=5: records[name])
                   for i in range(count))
        return [re.search(rb"\bs=([\w-]+)", h).group(1).decode()
                for h in re.findall(rb"DKIM-Signature:.*?(?=\r\n\S)", signed, re.S)]

    assert sorted(await signatures("both")) == ["cloudmail", "ed"]
    new_key = dkimkeys.generate_private_key()
    await container.database.transact(store.rotate_dkim_key, "example.com", "cloudmail2", new_key)
    assert sorted(await signatures("rotated")) == ["cloudmail2", "ed"]
    domain = await container.accounts.get_domain("example.com")
    assert [(k.selector, k.role) for k in domain.dkim_keys] == [("ed", "ed25519"),
                                                                ("cloudmail", "retired")]
