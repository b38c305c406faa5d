"""SMTP replies (`cloudmail.smtp.replies`) render as RFC 5321 4.2.1 lines with RFC 3463 codes."""

from __future__ import annotations

from cloudmail.smtp import replies
from cloudmail.smtp.replies import Reply


def test_single_and_multi_line_replies():
    """One line is `code enhanced text`; several use `code-` on all but the last line."""
    assert replies.OK.to_bytes() == b"250 2.0.0 OK\r\n"
    assert Reply(250, None, ("mail.test", "SIZE 10", "PIPELINING")).to_bytes() == (
        b"250-mail.test\r\n250-SIZE 10\r\n250 PIPELINING\r\n")
    assert replies.HELP.to_bytes().startswith(b"214-2.0.0 ")


def test_reply_text_cannot_break_the_framing():
    """CR, LF and non-ASCII in reply text are replaced, so a reply is always its own lines."""
    reply = replies.NO_SUCH_USER.with_text("bad\r\n250 injected é")
    assert reply.to_bytes() == b"550 5.1.1 bad??250 injected ?\r\n"


def test_every_constant_renders():
    """Every named reply has a three-digit code and renders to CRLF-terminated ASCII."""
    for value in vars(replies).values():
        if isinstance(value, Reply):
            data = value.to_bytes()
            assert data.endswith(b"\r\n") and data[:3].isdigit() and data.isascii()
