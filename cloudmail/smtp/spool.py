"""The DATA sink: turns the bytes after `354` into a spooled message file, safely.

RFC 5321 4.1.1.4 and 4.5.2 define the mail data as CRLF-terminated lines ended by a line holding
only `.`, with a leading `.` of any other line removed (dot-stuffing). RFC 5321 2.3.8 forbids
a bare CR or LF. Receivers that accept `\\n.\\n`, `\\n.\\r\\n`, `\\r.\\r\\n` or `\\r\\n.\\n` as the
end of data let an attacker smuggle a second message past a relay that does not ("SMTP
smuggling").

`DataSink` is a byte parser, not a line reader: only CRLF `.` CRLF ends the data, and a line only
*starts* after a CRLF. A bare CR or LF anywhere marks the message as rejected (it is never
normalised silently), a line over the limit marks it too, and so does the size cap (RFC 1870);
in every case the sink keeps reading to the real end so the client and server stay in step, and
answers with the reply that says why once the end arrives. Data goes straight to a temporary file
in the spool folder — at most one partial line (bounded) is held in memory — and `finish()`
fsyncs it before anyone answers `250`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cloudmail.smtp import replies
from cloudmail.smtp.replies import Reply

#: RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
MAX_LINE_LENGTH = 1000
#: An unfinished line longer than this is written out rather than held in memory.
_FLUSH_PARTIAL = 64 * 1024
_WRITE_BUFFER = 64 * 1024


@dataclass
class SpooledMessage:
    """A received message on disk: the un-stuffed bytes, CRLF line ends, fsynced.

    The protocol removes the file with `discard()` once the backend has answered; a backend that
    needs the data later links or copies `path` before its answer.
    """

    path: Path
    size: int

    def open(self) -> BinaryIO:
        """The message bytes, for reading."""
        return open(self.path, "rb")

    def read_bytes(self) -> bytes:
        """The whole message in memory (for small messages and tests)."""
        return self.path.read_bytes()

    def discard(self) -> None:
        """Remove the spool file (no error if it is already gone)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class DataSink:
    """Receives the raw DATA stream of one message (RFC 5321 4.1.1.4) and spools it.

    Feed it bytes with `feed()` until it returns the index just past the CRLF `.` CRLF that ended
    the data; then `rejection` is None and `finish()` gives the fsynced `SpooledMessage`, or
    `rejection` is the reply to send (and the file is already gone).
    """

    def __init__(self, spool_dir: Path, max_size: int,
                 max_line_length: int = MAX_LINE_LENGTH) -> None:
        self.spool_dir = Path(spool_dir)
        self.max_size = max_size
        self.max_line_length = max_line_length
        fd, name = tempfile.mkstemp(prefix="data-", suffix=".eml", dir=self.spool_dir)
        self.path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        #: Message bytes after un-stuffing (what the file holds, or would hold).
        self.size = 0
        self.bare_line_ending = False
        self.line_too_long = False
        self.too_big = False
        self.done = False
        self._carry = b""
        #: True when the next byte begins a line: at the start and after every CRLF.
        self._line_start = True
        #: The current line was partly written already (a long line): not at its start.
        self._in_line = False
        self._line_length = 0

    @property
    def rejection(self) -> Reply | None:
        """Why the message is refused, or None; bare line ends first, they are an attack sign."""
        if self.bare_line_ending:
            return replies.BARE_LINE_ENDING
        if self.too_big:
            return replies.MESSAGE_TOO_BIG
        if self.line_too_long:
            return replies.DATA_LINE_TOO_LONG
        return None

    def feed(self, data: bytes) -> int | None:
        """Take more DATA bytes; return the index in `data` just past the end of the message
        (the bytes after it are the client's next commands), or None if the end is still to
        come."""
        if self.done:
            raise RuntimeError("the message has already ended")
        carried = len(self._carry)
        buffer = self._carry + data if carried else data
        position = 0
        while True:
            newline = buffer.find(b"\n", position)
            if newline == -1:
                self._carry = self._hold_partial(buffer[position:])
                return None
            if self._line(buffer[position:newline + 1]):
                self.done = True
                self._carry = b""
                self._close_file()
                return newline + 1 - carried
            position = newline + 1

    def _hold_partial(self, partial: bytes) -> bytes:
        """Keep an unfinished line in memory unless it is long; then write all but its last
        byte (a CR there may be the start of the line's CRLF)."""
        if len(partial) <= _FLUSH_PARTIAL:
            return partial
        head, tail = partial[:-1], partial[-1:]
        if b"\r" in head:
            self.bare_line_ending = True
        if not self._in_line and self._line_start and head.startswith(b"."):
            head = head[1:]
        self._in_line = True
        self._line_length += len(head)
        if self._line_length > self.max_line_length:
            self.line_too_long = True
        self._write(head)
        return tail

    def _line(self, line: bytes) -> bool:
        """Handle one piece of data ending in LF; True if it is the end-of-data line."""
        at_start = self._line_start and not self._in_line
        if at_start and line == b".\r\n":
            return True
        if line.endswith(b"\r\n"):
            body = line[:-2]
            self._line_start = True
        else:
            body = line[:-1]
            self.bare_line_ending = True
            self._line_start = False
        if b"\r" in body:
            self.bare_line_ending = True
        if at_start and body.startswith(b"."):
            line = line[1:]
        self._line_length += len(line)
        if self._line_length > self.max_line_length:
            self.line_too_long = True
        self._in_line = False
        self._line_length = 0
        self._write(line)
        return False

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_size:
            self.too_big = True
        if self._file is not None and self.rejection is None:
            self._file.write(data)
        elif self._file is not None:
            self.abort()

    def _close_file(self) -> None:
        if self.rejection is not None:
            self.abort()

    def finish(self) -> SpooledMessage:
        """Flush and fsync the file (blocking: run it in a thread) and return the message."""
        if not self.done or self.rejection is not None or self._file is None:
            raise RuntimeError("only a complete, accepted message can be finished")
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        return SpooledMessage(self.path, self.size)

    def abort(self) -> None:
        """Drop the file (connection lost, message refused); feeding may go on, writing nothing."""
        file, self._file = self._file, None
        if file is not None:
            file.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
