"""Delivery status notifications (`cloudmail.queue.dsn`): the RFC 3464 report read back with
Python's email package, field by field."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email import policy

import pytest

from cloudmail.queue.dsn import FailedRecipient, build_dsn, should_bounce

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ARRIVAL = NOW - timedelta(days=5)
HEADERS = (b"Received: from client.example.org\r\n\tby mx.example.org; Mon, 1 May 2024\r\n"
           b"From: Alice <a@example.org>\r\nTo: b@example.net\r\nSubject: Lunch?\r\n"
           b"Message-ID: <1@example.org>\r\n")
FAILURES = [
    FailedRecipient("b@example.net", "5.1.1", "smtp; 550 5.1.1 No such user",
                    remote_mta="mx.example.net"),
    FailedRecipient("c@example.com", "5.4.4", "X-Cloudmail; Host or domain name not found"),
]


def dsn(**overrides):
    """Build a DSN with sensible arguments, overridden as asked."""
    args = {"reporting_mta": "mail.example.org", "original_sender": "a@example.org",
            "queue_id": "018F4A2B3C4D5E6F", "failures": FAILURES,
            "original_headers": HEADERS + b"\r\nThe body, not to be returned.\r\n",
            "arrival_date": ARRIVAL, "now": NOW, "postmaster": "postmaster@example.org"}
    args.update(overrides)
    return build_dsn(**args)


def test_three_parts_with_right_types():
    """The DSN is multipart/report; report-type=delivery-status with text/plain,
    message/delivery-status and text/rfc822-headers, addressed from MAILER-DAEMON to the sender."""
    message = email.message_from_bytes(dsn(), policy=policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in message.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert message["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.org"
    assert message["From"].addresses[0].display_name == "Mail Delivery System"
    assert message["To"].addresses[0].addr_spec == "a@example.org"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Date"].datetime == NOW
    assert message["Message-ID"].endswith("@mail.example.org>")
    assert message.defects == [] and all(p.defects == [] for p in message.walk())


def test_human_part_names_each_recipient_and_reason():
    """The text part lists every failed recipient with the remote reply or local reason, and the
    postmaster to contact."""
    message = email.message_from_bytes(dsn(), policy=policy.default)
    text = next(message.iter_parts()).get_content()
    assert "<b@example.net>: delivery failed" in text
    assert "host mx.example.net said: smtp; 550 5.1.1 No such user" in text
    assert "<c@example.com>: delivery failed" in text
    assert "Host or domain name not found" in text
    assert "postmaster@example.org" in text


def test_delivery_status_fields():
    """Per-message fields (Reporting-MTA, X-Queue-ID, Arrival-Date) and, per recipient,
    Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code and Last-Attempt-Date."""
    raw = dsn(envelope_id="env-42")
    body = raw.split(b"Content-Type: message/delivery-status\r\n")[1].split(b"\r\n\r\n", 1)[1]
    body = body.split(b"\r\n--=_cloudmail_")[0]
    per_message, first, second = [
        dict(line.split(": ", 1) for line in block.decode().split("\r\n"))
        for block in body.strip(b"\r\n").split(b"\r\n\r\n")]
    assert per_message == {
        "Reporting-MTA": "dns; mail.example.org", "X-Queue-ID": "018F4A2B3C4D5E6F",
        "Original-Envelope-Id": "env-42", "Arrival-Date": "Wed, 01 May 2024 07:08:09 +0000"}
    assert first == {
        "Final-Recipient": "rfc822; b@example.net", "Action": "failed", "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.net", "Diagnostic-Code": "smtp; 550 5.1.1 No such user",
        "Last-Attempt-Date": "Mon, 06 May 2024 07:08:09 +0000"}
    assert "Remote-MTA" not in second
    assert second["Diagnostic-Code"] == "X-Cloudmail; Host or domain name not found"
    message = email.message_from_bytes(raw, policy=policy.default)
    parsed = list(message.iter_parts())[1].get_payload()
    assert [str(block["Final-Recipient"]) for block in parsed[1:]] == [
        "rfc822; b@example.net", "rfc822; c@example.com"]
    assert "Original-Envelope-Id" not in dsn().decode()


def test_original_headers_without_body():
    """The third part holds the original header section, byte for byte, and not the body."""
    raw = dsn()
    message = email.message_from_bytes(raw, policy=policy.default)
    part = list(message.iter_parts())[2]
    assert part.get_payload(decode=True).rstrip(b"\r\n") == HEADERS.rstrip(b"\r\n")
    assert b"The body" not in raw


def test_cut_off_headers_keep_whole_lines():
    """When given only the start of a long header section, the partial last line is dropped."""
    raw = dsn(original_headers=HEADERS + b"X-Long: abc")
    assert b"X-Long" not in raw and b"Message-ID: <1@example.org>\r\n" in raw


def test_crlf_line_ends_only_and_short_lines():
    """Every line ends in CRLF (no bare CR or LF anywhere) and none exceeds 998 octets, even with
    a reply text holding line breaks and a very long diagnostic."""
    failures = [FailedRecipient("b@example.net", "5.7.1",
                                "smtp; 550-5.7.1 Rejected\r\n550 5.7.1 " + "word " * 400)]
    for raw in (dsn(), dsn(failures=failures, original_headers=HEADERS.replace(b"\r\n", b"\n"))):
        assert raw.endswith(b"\r\n")
        assert b"\n" not in raw.replace(b"\r\n", b"")
        assert b"\r" not in raw.replace(b"\r\n", b"")
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = email.message_from_bytes(dsn(failures=failures), policy=policy.default)
    assert message.defects == []


def test_delayed_notification():
    """A report with only delayed recipients has the delay subject, Action: delayed and
    Will-Retry-Until."""
    until = NOW + timedelta(days=4)
    raw = dsn(failures=[FailedRecipient("b@example.net", "4.4.1", "smtp; 421 Try later",
                                        action="delayed", will_retry_until=until)])
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == "Delivery Status Notification (Delay)"
    assert b"Action: delayed\r\n" in raw
    assert b"Will-Retry-Until: Fri, 10 May 2024 07:08:09 +0000\r\n" in raw


def test_internationalised_address_uses_global_types():
    """A UTF-8 recipient makes a global-delivery-status report with a `utf-8;` address type."""
    raw = dsn(failures=[FailedRecipient("用户@例子.广告", "5.1.1", "smtp; 550 No such user")])
    message = email.message_from_bytes(raw, policy=policy.default)
    assert message.get_param("report-type") == "global-delivery-status"
    assert list(message.iter_parts())[1].get_content_type() == "message/global-delivery-status"
    assert "Final-Recipient: utf-8; 用户@例子.广告\r\n".encode() in raw


def test_untyped_diagnostic_is_smtp():
    """Reply text without a type gets `smtp;`, as RFC 3464 §2.3.6 needs a diagnostic type."""
    raw = dsn(failures=[FailedRecipient("b@example.net", "5.0.0", "550 Go away")])
    assert b"Diagnostic-Code: smtp; 550 Go away\r\n" in raw


@pytest.mark.parametrize("sender", ["", "<>", " <> "])
def test_never_to_the_null_sender(sender):
    """No DSN is built for the null reverse-path, and `should_bounce` says so first."""
    assert should_bounce(sender) is False
    with pytest.raises(ValueError):
        dsn(original_sender=sender)


def test_should_bounce_ordinary_senders():
    """Any real reverse-path may get a DSN, MAILER-DAEMON included (only <> is exempt)."""
    assert should_bounce("a@example.org")
    assert should_bounce("MAILER-DAEMON@example.org")


def test_needs_failures():
    """A DSN with nothing to report is refused."""
    with pytest.raises(ValueError):
        dsn(failures=[])
