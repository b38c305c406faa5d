"""The outbound queue end to end: a message for another domain is queued durably, delivered to
that domain's MX (found in a loopback DNS server, on a loopback SMTP sink) or to a relay,
retried after a temporary failure and returned to its sender in a DSN after a permanent one.

Each test builds a container whose `[queue] mx_port` is the sink's port and whose `[dns]` is a
twisted.names server serving `remote.test` (MX → mx.remote.test → 127.0.0.1).
"""

from __future__ import annotations

import email
import smtplib

import dkim
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from cloudmail.accounts import dkimkeys
from tests.integration.test_smtp_inbound import inbox
from tests.outbound import stop, until
from tests.integration.test_submission import tls

PASSWORD = "long enough"
MESSAGE = (b"From: Alice <alice@example.com>\r\nTo: Carol <carol@remote.test>\r\n"
           b"Subject: over there\r\nMessage-ID: <m1@example.com>\r\n\r\nHello Carol.\r\n")


@pytest_twisted.ensureDeferred
async def test_submitted_mail_reaches_the_remote_mx_signed_over_tls(outbound, smtp_sink):
    """smtplib submits to a remote and a local recipient: the local copy is in the INBOX at
    once, the remote one reaches the MX found in DNS over opportunistic STARTTLS with our EHLO
    name and our Received: header (RFC 5321 4.4), its DKIM signature verifies against the
    published key, and the entry is gone."""
    sink = smtp_sink(starttls=True)
    container = await outbound(sink.port)
    container.certs.load()
    port = reactor.listenTCP(0, container.submission_factory(), interface="127.0.0.1")

    def submit():
        with smtplib.SMTP("127.0.0.1", port.getHost().port, timeout=10) as c:
            c.starttls(context=tls())
            c.login("alice@example.com", PASSWORD)
            return c.sendmail("alice@example.com", ["carol@remote.test", "bob@example.com"],
                              MESSAGE)
    try:
        assert await deferToThread(submit) == {}
    finally:
        await port.stopListening()
    assert len(inbox(container, "bob")) == 1
    [arrived] = await sink.wait_for(1)
    assert arrived.sender == "alice@example.com" and arrived.recipients == ["carol@remote.test"]
    assert arrived.tls and arrived.helo == "mail.example.test"
    trace = arrived.data[:400]
    assert trace.startswith(b"Received: from ") and b"with ESMTPSA id " in trace
    assert b"for <carol@remote.test>;" in trace
    domain = await container.accounts.get_domain("example.com")
    record = dkimkeys.dns_record(domain.dkim_private_key).encode()
    assert dkim.verify(arrived.data, dnsfunc=lambda name, timeout=5: record)
    await until(lambda: not container.outbound_queue.entries())
    assert not list(container.queue_store.root.glob("*.eml"))


@pytest_twisted.ensureDeferred
async def test_implicit_mx_and_backup_mx(outbound, smtp_sink):
    """A domain without MX is its own host (RFC 5321 5.1); when the first MX does not answer,
    the next one by preference gets the message."""
    sink = smtp_sink()
    container = await outbound(sink.port, queue={"connect_timeout": 0.5})
    await container.mailer.send("alice@example.com", ["x@nomx.test", "y@backup.test"], MESSAGE)
    arrived = await sink.wait_for(2)
    assert sorted(r for m in arrived for r in m.recipients) == ["x@nomx.test", "y@backup.test"]


@pytest_twisted.ensureDeferred
async def test_temporary_failure_is_retried_then_delivered(outbound, smtp_sink):
    """A 451 at RCPT defers the recipient; the next try, after `retry_delays`, delivers it and
    nothing is bounced."""
    answers = iter([(451, "4.2.0 try later"), (250, "2.1.5 ok")])
    sink = smtp_sink(rcpt_reply=lambda rcpt: next(answers))
    container = await outbound(sink.port, queue={"retry_delays": [0.3]})
    sent = await container.mailer.send("alice@example.com", ["carol@remote.test"], MESSAGE)
    queue_id = sent.queued.queue_id
    await until(lambda: container.outbound_queue.entries()
                and container.outbound_queue.entries()[0].recipients[0].status == "deferred")
    [entry] = container.outbound_queue.entries()
    assert entry.queue_id == queue_id and entry.recipients[0].last_code == 451
    assert container.queue_store.get(queue_id).recipients[0].status == "deferred"
    [arrived] = await sink.wait_for(1)
    assert arrived.recipients == ["carol@remote.test"]
    await until(lambda: not container.outbound_queue.entries())
    assert inbox(container, "alice") == []


@pytest_twisted.ensureDeferred
async def test_permanent_failure_bounces_once_to_the_local_sender(outbound, smtp_sink):
    """550 for one recipient, 250 for the other: the sender gets one RFC 3464 report about
    the failed one only, from <>, with the original header attached."""
    sink = smtp_sink(rcpt_reply=lambda rcpt: (550, "5.1.1 no such user")
                     if rcpt.startswith("nobody") else (250, "2.1.5 ok"))
    container = await outbound(sink.port)
    await container.mailer.send("alice@example.com", ["nobody@remote.test", "carol@remote.test"],
                                MESSAGE)
    await sink.wait_for(1)
    await until(lambda: inbox(container, "alice"))
    [bounce] = inbox(container, "alice")
    assert bounce.startswith(b"Return-Path: <>\r\n")
    report = email.message_from_bytes(bounce)
    assert report.get_content_type() == "multipart/report"
    status = bounce.decode()
    assert "Final-Recipient: rfc822; nobody@remote.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in status
    assert "carol@remote.test" not in status.split("text/rfc822-headers")[0].split(
        "message/delivery-status")[1].replace("To: Carol <carol@remote.test>", "")
    assert "Subject: over there" in status
    await until(lambda: not container.outbound_queue.entries())


@pytest_twisted.ensureDeferred
async def test_null_mx_fails_at_once_and_null_sender_gets_no_bounce(outbound, smtp_sink):
    """A null MX (RFC 7505) fails without a connection (5.1.10); a message from <> that
    fails is dropped without a DSN (no bounce loops)."""
    sink = smtp_sink()
    container = await outbound(sink.port)
    await container.mailer.send("alice@example.com", ["x@nullmx.test"], MESSAGE)
    await until(lambda: inbox(container, "alice"))
    assert b"Status: 5.1.10" in inbox(container, "alice")[0]
    await container.mailer.send("", ["y@nullmx.test"], MESSAGE)
    await until(lambda: not container.outbound_queue.entries())
    assert len(inbox(container, "alice")) == 1 and sink.connections == 0


@pytest_twisted.ensureDeferred
async def test_expiry_bounces_with_the_last_temporary_error(outbound, smtp_sink):
    """A recipient that keeps getting 4xx is returned when `lifetime` has passed, with the
    last error; with `delay_warning` the sender was first told once that it is late."""
    sink = smtp_sink(rcpt_reply=lambda rcpt: (452, "4.2.2 mailbox full"))
    container = await outbound(sink.port, queue={"retry_delays": [0.2], "lifetime": 1.5,
                                                  "delay_warning": 0.3})
    await container.mailer.send("alice@example.com", ["carol@remote.test"], MESSAGE)
    await until(lambda: len(inbox(container, "alice")) == 2)
    warning, bounce = inbox(container, "alice")
    assert b"Action: delayed" in warning and b"Will-Retry-Until:" in warning
    assert b"Action: failed" in bounce and b"Status: 4.2.2" in bounce
    assert b"452 4.2.2 mailbox full" in bounce
    await until(lambda: not container.outbound_queue.entries())


@pytest_twisted.ensureDeferred
async def test_queue_survives_a_restart(outbound, smtp_sink, tmp_path):
    """Queued while the MX is down, the entry is on disk; a new server over the same data
    folder loads it and delivers it once the MX answers."""
    sink = smtp_sink(refuse_connections=1000)
    first = await outbound(sink.port, queue={"retry_delays": [60]})
    sent = await first.mailer.send("alice@example.com", ["carol@remote.test"], MESSAGE)
    await until(lambda: first.outbound_queue.entries()[0].recipients[0].attempts == 1)
    await stop(first)
    sink.refuse_connections = 0
    data_dir = first.config.server.data_dir
    second = await outbound(sink.port, server={"hostname": "mail.example.test",
                                               "data_dir": str(data_dir)},
                            queue={"retry_delays": [60]})
    await until(lambda: second.outbound_queue.entries())
    [entry] = second.outbound_queue.entries()
    assert entry.queue_id == sent.queued.queue_id
    await second.outbound_queue.retry(entry.queue_id)
    [arrived] = await sink.wait_for(1)
    assert arrived.data.endswith(b"Hello Carol.\r\n")
    await until(lambda: not second.outbound_queue.entries())


@pytest_twisted.ensureDeferred
async def test_global_relay_with_starttls_and_auth(outbound, smtp_sink):
    """`[relay]` sends everything to the smarthost, over verified STARTTLS with AUTH, whatever
    the recipient's MX."""
    relay = smtp_sink(starttls=True, users={"relayuser": "relay secret"})
    mx = smtp_sink()
    container = await outbound(mx.port, relay={
        "provider": "custom", "host": "localhost", "port": relay.port,
        "username": "relayuser", "password": "relay secret", "ca_file": str(relay.ca_pem)})
    await container.mailer.send("alice@example.com", ["carol@remote.test"], MESSAGE)
    [arrived] = await relay.wait_for(1)
    assert arrived.tls and arrived.auth_user == "relayuser"
    assert arrived.recipients == ["carol@remote.test"] and mx.connections == 0


@pytest_twisted.ensureDeferred
async def test_domain_relay_wins_and_a_bad_certificate_defers(outbound, smtp_sink):
    """A domain's own relay (admin API setting) is used for its senders; a relay whose
    certificate does not verify is not given the message: it stays queued."""
    relay = smtp_sink(starttls=True)
    container = await outbound(relay.port)
    await container.admin_service.update_domain("example.com", {"relay": {
        "host": "localhost", "port": relay.port, "tls": "starttls"}})
    await container.mailer.send("alice@example.com", ["carol@remote.test"], MESSAGE)
    await until(lambda: container.outbound_queue.entries()
                and container.outbound_queue.entries()[0].recipients[0].attempts == 1)
    [entry] = container.outbound_queue.entries()
    assert entry.recipients[0].status == "deferred" and relay.messages == []
    assert "relay" in entry.recipients[0].last_error or "TLS" in entry.recipients[0].last_error


@pytest_twisted.ensureDeferred
async def test_domain_concurrency_is_bounded(outbound, smtp_sink):
    """With `domain_concurrency = 2`, never more than two deliveries to one domain at once,
    while another domain still gets its own."""
    sink = smtp_sink()
    container = await outbound(sink.port, queue={"domain_concurrency": 2})
    transport = container.transport
    send, busy, most = transport.send, {}, {}

    async def counting(sender, domain, recipients, message, relay):
        busy[domain] = busy.get(domain, 0) + 1
        most[domain] = max(most.get(domain, 0), busy[domain])
        try:
            await task.deferLater(reactor, 0.05, lambda: None)
            return await send(sender, domain, recipients, message, relay)
        finally:
            busy[domain] -= 1
    transport.send = counting
    for n in range(6):
        await container.mailer.send("alice@example.com", [f"r{n}@remote.test", f"s{n}@nomx.test"],
                                    MESSAGE)
    await sink.wait_for(12)
    assert most == {"remote.test": 2, "nomx.test": 2}


@pytest_twisted.ensureDeferred
async def test_one_connection_carries_a_queue_of_messages(outbound, smtp_sink):
    """Messages to one server one after another go over one kept session (one greeting, one
    STARTTLS); when the server has closed the kept connection, the next message simply takes a
    new one, and nothing is lost."""
    sink = smtp_sink(starttls=True)
    container = await outbound(sink.port)
    for n in range(3):
        await container.mailer.send("alice@example.com", [f"r{n}@remote.test"], MESSAGE)
        await until(lambda: not container.outbound_queue.entries())
    assert len(sink.messages) == 3 and sink.connections == 1 and sink.transcript.count("STARTTLS") == 1
    for protocol in list(sink._protocols):
        protocol.transport.loseConnection()
    await task.deferLater(reactor, 0.1, lambda: None)
    await container.mailer.send("alice@example.com", ["r3@remote.test"], MESSAGE)
    await sink.wait_for(4)
    assert sink.connections == 2
    await until(lambda: not container.outbound_queue.entries())


@pytest_twisted.ensureDeferred
async def test_required_tls_and_dns_failures_defer(outbound, smtp_sink):
    """With `[queue] tls = "required"`, an MX without STARTTLS does not get the message (it
    waits, deferred); a domain whose DNS fails (SERVFAIL) is deferred too (4.4.3), never
    bounced at once."""
    sink = smtp_sink()
    container = await outbound(sink.port, queue={"tls": "required"})
    await container.mailer.send("alice@example.com", ["x@remote.test", "y@broken.test"],
                                MESSAGE)
    await until(lambda: all(r.attempts for e in container.outbound_queue.entries()
                            for r in e.recipients))
    [entry] = container.outbound_queue.entries()
    states = {r.address: (r.status, r.last_status) for r in entry.recipients}
    assert states == {"x@remote.test": ("deferred", "4.4.1"),
                      "y@broken.test": ("deferred", "4.4.3")}
    assert "STARTTLS is not offered" in entry.recipients[0].last_error
    assert sink.messages == [] and inbox(container, "alice") == []
