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
answers with the reply that says why once the end arrives.

A message is held in memory up to `MEMORY_LIMIT` bytes (most mail is a few kilobytes: no file to
create, write and remove on the reactor for it); a bigger one moves to a temporary file in the
spool folder as soon as it outgrows the limit, and then at most one partial line (bounded) is held
in memory. The spooled copy is not the durable one: whoever answers `250` has first written the
message where it stays (a Maildir, the queue) and fsynced it there, so a spool file needs no fsync,
and one left behind by a crash is garbage (`clear_spool` removes such leftovers at start).
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cloudmail.smtp import replies
from cloudmail.smtp.replies import Reply

#: RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
MAX_LINE_LENGTH = 1000
#: A message up to this size stays in memory; a bigger one goes to a spool file.
MEMORY_LIMIT = 256 * 1024
#: An unfinished line longer than this is written out rather than held in memory.
_FLUSH_PARTIAL = 64 * 1024
_WRITE_BUFFER = 64 * 1024
_SPOOL_PREFIX = "data-"


@dataclass
class SpooledMessage:
    """A received message: the un-stuffed bytes with CRLF line ends, in memory (`data`) or in a
    spool file (`path`).

    The protocol drops it with `discard()` once the backend has answered; a backend that needs
    the data later must store its own copy before answering.
    """

    size: int
    data: bytes | None = None
    path: Path | None = None

    @property
    def in_memory(self) -> bool:
        """True when reading the message costs no disk access (no need for a thread)."""
        return self.data is not None

    def open(self) -> BinaryIO:
        """The message bytes, for reading."""
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")

    def read_bytes(self) -> bytes:
        """The whole message in memory."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def head(self, limit: int) -> bytes:
        """At most the first `limit` bytes (enough for the header section)."""
        if self.data is not None:
            return self.data[:limit]
        with self.open() as f:
            return f.read(limit)

    def discard(self) -> None:
        """Forget the message and remove its spool file, if any (no error if it is gone)."""
        self.data = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def clear_spool(spool_dir: Path) -> int:
    """Remove the spool files a crash left behind (nothing in them was acknowledged); return how
    many. Only for start-up, before any listener runs: it is blocking disk work."""
    removed = 0
    for entry in Path(spool_dir).glob(_SPOOL_PREFIX + "*"):
        try:
            entry.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


class DataSink:
    """Receives the raw DATA stream of one message (RFC 5321 4.1.1.4) and spools it.

    Feed it bytes with `feed()` until it returns the index just past the CRLF `.` CRLF that ended
    the data; then `rejection` is None and `finish()` gives the `SpooledMessage`, or `rejection`
    is the reply to send (and nothing of the message is kept).
    """

    def __init__(self, spool_dir: Path, max_size: int,
                 max_line_length: int = MAX_LINE_LENGTH,
                 memory_limit: int = MEMORY_LIMIT) -> None:
        self.spool_dir = Path(spool_dir)
        self.max_size = max_size
        self.max_line_length = max_line_length
        self.memory_limit = memory_limit
        #: The spool file, once the message has outgrown `memory_limit`.
        self.path: Path | None = None
        self._memory: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        #: Message bytes after un-stuffing (what is kept, or would be).
        self.size = 0
        self.bare_line_ending = False
        self.line_too_long = False
        self.too_big = False
        #: Why the spool file could not be written, if it could not.
        self.spool_error: OSError | None = None
        self.done = False
        self._carry = b""
        #: True when the next byte begins a line: at the start and after every CRLF.
        self._line_start = True
        #: The current line was partly written already (a long line): not at its start.
        self._in_line = False
        self._line_length = 0

    @property
    def in_memory(self) -> bool:
        """True while the message has not needed a spool file (`finish` is then instant)."""
        return self._file is None and self._memory is not None

    @property
    def rejection(self) -> Reply | None:
        """Why the message is refused, or None; bare line ends first, they are an attack sign."""
        if self.bare_line_ending:
            return replies.BARE_LINE_ENDING
        if self.spool_error is not None:
            return replies.LOCAL_ERROR
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
                if self.rejection is not None:
                    self.abort()
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
        if self.rejection is not None:
            self.abort()
        elif self._file is not None:
            self._file.write(data)
        elif self._memory is not None:
            self._memory += data
            if len(self._memory) > self.memory_limit:
                self._spill()

    def _spill(self) -> None:
        """Move the message from memory to a new spool file; if the disk refuses, the message
        is refused with 451 (the client tries again later)."""
        memory, self._memory = self._memory, None
        try:
            fd, name = tempfile.mkstemp(prefix=_SPOOL_PREFIX, suffix=".eml", dir=self.spool_dir)
            self.path = Path(name)
            self._file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
            self._file.write(memory)
        except OSError as e:
            self.spool_error = e
            self.abort()

    def finish(self) -> SpooledMessage:
        """The accepted message; for a spool file, flush and close it first (blocking: run it in
        a thread unless `in_memory`)."""
        if not self.done or self.rejection is not None:
            raise RuntimeError("only a complete, accepted message can be finished")
        if self._memory is not None:
            memory, self._memory = self._memory, None
            return SpooledMessage(self.size, data=bytes(memory))
        file, self._file = self._file, None
        if file is None:
            raise RuntimeError("the message has already been finished or dropped")
        file.close()
        return SpooledMessage(self.size, path=self.path)

    def abort(self) -> None:
        """Drop the message (connection lost, message refused); feeding may go on, keeping
        nothing."""
        self._memory = None
        file, self._file = self._file, None
        if file is not None:
            file.close()
        path, self.path = self.path, None
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
