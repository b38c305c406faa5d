"""Local delivery: routed recipients into their Maildirs, with trace headers, one copy each."""

from __future__ import annotations

import os
import threading

import pytest_twisted

from cloudmail.address import Address
from cloudmail.delivery import Envelope
from tests.integration.test_smtp_inbound import book

MESSAGE = b"From: x@remote.test\r\nSubject: hi\r\n\r\nBody \xe2\x9c\x93\r\n.. dot line\r\n"


def envelope(**kw) -> Envelope:
    values = dict(queue_id="Q1", sender="x@remote.test", client_ip="192.0.2.7",
                  client_name="mx.remote.test", helo="mx.remote.test")
    values.update(kw)
    return Envelope(**values)


@pytest_twisted.ensureDeferred
async def test_each_mailbox_gets_one_copy_with_trace_headers(container):
    """Alias, group and mailbox recipients that meet at one mailbox give it one copy."""
    await book(container)
    recipients = [await container.router.resolve(r)
                  for r in ("al@example.com", "team@example.com", "alice+x@example.com")]
    done = await container.delivery.deliver(envelope(tls="TLSv1.3 TLS_AES_256_GCM_SHA384"),
                                            recipients, MESSAGE)
    assert [d.mailbox for d in done] == [Address("alice", "example.com"),
                                         Address("bob", "example.com")]
    alice = open(done[0].path, "rb").read()
    head, _, rest = alice.partition(b"From: x@remote.test")
    assert rest.endswith(MESSAGE[len(b"From: x@remote.test"):])
    assert head.startswith(b"Return-Path: <x@remote.test>\r\nDelivered-To: alice@example.com\r\n"
                           b"Received: from mx.remote.test (mx.remote.test [192.0.2.7])\r\n"
                           b"\t(using TLSv1.3 TLS_AES_256_GCM_SHA384)\r\n"
                           b"\tby mail.example.test (cloudmail) with ESMTPS id Q1\r\n"
                           b"\tfor <al@example.com>; ")
    assert "/mail/example.com/alice/new/" in done[0].path
    bob = open(done[1].path, "rb").read()
    assert b"Delivered-To: bob@example.com\r\n" in bob and b"for <team@example.com>" in bob


@pytest_twisted.ensureDeferred
async def test_delivery_runs_in_the_io_pool_from_a_spool_file(container, tmp_path, monkeypatch):
    """Every copy is written in an `io` pool thread, never on the reactor; a big message is read
    from its spool file there."""
    await book(container)
    spool = tmp_path / "data-1.eml"
    spool.write_bytes(MESSAGE)
    threads: list[str] = []
    store_deliver = container.mailstore.deliver

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return store_deliver(*args, **kwargs)
    monkeypatch.setattr(container.mailstore, "deliver", recording)
    recipients = [await container.router.resolve(r) for r in ("bob@example.com", "al@example.com")]
    done = await container.delivery.deliver(envelope(queue_id="Q42"), recipients, spool)
    assert len(threads) == 2 and all("cloudmail-io" in name for name in threads)
    assert [open(d.path, "rb").read().endswith(MESSAGE) for d in done] == [True, True]
    assert [d.size for d in done] == [os.path.getsize(d.path) for d in done]
