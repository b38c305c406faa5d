"""SMTP replies as named constants, with RFC 3463 enhanced status codes (RFC 2034).

A `Reply` is immutable and renders to bytes with `to_bytes()`: one `250 2.0.0 OK\\r\\n` line, or
the multi-line form of RFC 5321 4.2.1 (`250-first`, …, `250 last`). Replies to the greeting, EHLO
and HELO carry no enhanced code (RFC 2034 3), so `enhanced` may be None. Reply text is ASCII on
the wire; anything else is replaced, so a reply can never break the framing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: a three-digit code, an optional enhanced code and one or more text lines."""

    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    @property
    def lines(self) -> tuple[str, ...]:
        """The text lines, one per reply line."""
        return (self.text,) if isinstance(self.text, str) else tuple(self.text) or ("",)

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx replies (RFC 5321 4.2.1)."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        """True for 4xx replies."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """True for 5xx replies."""
        return self.code >= 500

    def with_text(self, *lines: str) -> Reply:
        """The same codes with other text."""
        return replace(self, text=lines[0] if len(lines) == 1 else tuple(lines))

    def to_bytes(self) -> bytes:
        """The reply as it goes on the wire, every line ending in CRLF."""
        return self._wire

    @cached_property
    def _wire(self) -> bytes:
        """`to_bytes`, rendered once: most replies are constants sent again and again."""
        lines = self.lines
        out = []
        for index, line in enumerate(lines):
            separator = " " if index == len(lines) - 1 else "-"
            text = _clean(line)
            if self.enhanced:
                text = f"{self.enhanced} {text}" if text else self.enhanced
            out.append(f"{self.code:03d}{separator}{text}".rstrip(" ") + "\r\n")
        return "".join(out).encode("ascii", "replace")

    def __str__(self) -> str:
        return self.to_bytes().decode("ascii").rstrip("\r\n")


def _clean(text: str) -> str:
    """Text safe inside one reply line: no CR, LF or other control characters, ASCII only."""
    return "".join(c if " " <= c < "\x7f" else "?" for c in text)


# --- 2xx / 3xx (RFC 5321 4.2.2, RFC 3463 3.1) -----------------------------------------------------

#: The greeting's text is the hostname and a banner (RFC 5321 4.3.1); no enhanced code.
GREETING = Reply(220, None, "ESMTP ready")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
HELP = Reply(214, "2.0.0", (
    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS",
    "See RFC 5321",
))
BYE = Reply(221, "2.0.0", "Bye")
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Message accepted")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
NOOP_OK = Reply(250, "2.0.0", "OK")
#: RFC 5321 3.5.3: VRFY may answer 252 rather than confirm or deny an address (no enumeration).
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
START_DATA = Reply(354, None, "Start mail input; end with <CRLF>.<CRLF>")

# --- 4xx ----------------------------------------------------------------------------------------

TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")

# --- 5xx ----------------------------------------------------------------------------------------

SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BAD_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
SYNTAX_ERROR_IN_PARAMETERS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
HELO_FIRST = Reply(503, "5.5.1", "Send EHLO or HELO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
ALREADY_TLS = Reply(503, "5.5.1", "TLS already active")
NO_SERVICE = Reply(503, "5.5.1", "No service, only QUIT")
PARAMETER_NOT_IMPLEMENTED = Reply(504, "5.5.4", "Command parameter not implemented")
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
#: RFC 1870 6: a declared or actual size over the limit.
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
#: RFC 6531 3.5: a UTF-8 address without the SMTPUTF8 parameter.
UTF8_NOT_ALLOWED = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
#: RFC 5429 2.1: the recipient's Sieve script rejected the message (see `sieve_rejected`).
SIEVE_REJECTED = Reply(550, "5.7.1", "Message rejected by the recipient's filter")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
#: RFC 5321 2.3.8: bare CR or LF in the message — the door to SMTP smuggling.
BARE_LINE_ENDING = Reply(554, "5.6.0", "Message contains a bare CR or LF (RFC 5321 2.3.8)")
#: RFC 5321 4.5.3.1.6: a text line longer than the limit inside DATA.
DATA_LINE_TOO_LONG = Reply(500, "5.5.2", "Message contains a line that is too long")
TRANSACTION_FAILED = Reply(554, "5.0.0", "Transaction failed")
#: RFC 5321 4.1.1.11: MAIL/RCPT parameters not recognized or not implemented.
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Parameter not recognized")


def sieve_rejected(reason: str) -> Reply:
    """`SIEVE_REJECTED` with the script's reason as one reply line: printable ASCII, at most
    200 characters (RFC 5429 2.1 lets the reason be the reply text)."""
    text = "".join(c if " " <= c <= "~" else "?" for c in " ".join(reason.split()))[:200]
    return SIEVE_REJECTED.with_text(text) if text else SIEVE_REJECTED
