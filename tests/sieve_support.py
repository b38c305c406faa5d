"""Shared setup of the Sieve unit tests: a plain and a multipart message, a fixed clock, and
helpers that compile a script and run it on a message, returning the dry-run lines or the result."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cloudmail.sieve.checker import compile_script
from cloudmail.sieve.interpreter import SieveContext, SieveEnvelope, run

EXTENSIONS = (
    "fileinto", "copy", "reject", "ereject", "envelope", "body", "variables", "vacation",
    "vacation-seconds", "imap4flags", "subaddress", "relational", "comparator-i;ascii-numeric",
    "mailbox", "date", "index", "editheader", "regex", "include", "enotify", "mime",
    "foreverypart", "ihave",
)
ALL = "require [" + ", ".join(f'"{e}"' for e in EXTENSIONS) + "];\n"
NOW = datetime(2026, 12, 5, 14, 30, 15, tzinfo=timezone(timedelta(hours=1)))

MESSAGE = (
    b"Return-Path: <alice@example.org>\r\n"
    b"Received: from mx.example.org by mail.example.com; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: Bob <bob+lists@example.com>, carol@example.net\r\n"
    b"Cc: dave@Example.COM\r\n"
    b"Subject: [acme-users] [fwd] version 1.0 is out\r\n"
    b"Date: Tue, 01 Dec 2026 10:30:45 +0100\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"X-Spam-Score: 7\r\n"
    b"X-Spam-Score: 12\r\n"
    b"X-Encoded: =?utf-8?q?Caf=C3=A9_cr=C3=A8me?=\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"the meeting is at noon.\r\n"
)

MULTIPART = (
    b"From: alice@example.org\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: report\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Caf=C3=A9 numbers inside\r\n"
    b"--XX\r\n"
    b"Content-Type: text/html; charset=us-ascii\r\n"
    b"\r\n"
    b"<p>html secret</p>\r\n"
    b"--XX\r\n"
    b'Content-Type: application/pdf; name="report.pdf"\r\n'
    b'Content-Disposition: attachment; filename="report.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"JVBERi0xLjQK\r\n"
    b"--XX--\r\n"
)


def context(**overrides) -> SieveContext:
    values = {"now": NOW, "own_addresses": ("bob@example.com",)}
    values.update(overrides)
    return SieveContext(**values)


def sieve(script: str, message: bytes = MESSAGE, *, sender: str = "alice@example.org",
          recipient: str = "bob+lists@example.com", auth: str | None = None,
          **overrides) -> list[str]:
    """The dry-run lines of `script` (with every extension required) on `message`."""
    return run_script(ALL + script, message, sender=sender, recipient=recipient, auth=auth,
                      **overrides).lines()


def run_script(text: str, message: bytes = MESSAGE, *, sender: str = "alice@example.org",
               recipient: str = "bob+lists@example.com", auth: str | None = None,
               **overrides):
    return run(compile_script(text), message, SieveEnvelope(sender, recipient, auth),
               context=context(**overrides))
