"""Killing the server mid-load loses no message that got a `250` (issue 3, "Done when").

The real `twistd -n cloudmail` takes mail from several smtplib clients at once; it is then killed
with SIGKILL (no shutdown code runs) while messages are in flight. Every message the server
acknowledged must be in the mailbox's Maildir `new/` as a complete file, byte for byte, and no
half-written file may be there: partial data is only allowed in `tmp/` or in the spool.

SIGKILL ends the process, not the kernel, so this checks the order of the steps (write, fsync,
link into `new/`, fsync the folder, then `250`), not that the disk keeps what was fsynced across
a power cut.
"""

from __future__ import annotations

import email
import re
import smtplib
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.integration.test_twistd import TWISTD, free_port, get, provision, server_config

CLIENTS = 6
KILL_AFTER = 1.5  # seconds of load before the SIGKILL
MAX_MESSAGES = 3000  # a bound, should the server be much faster than expected
SIZES = (1_500, 20_000, 400_000)  # bytes: small ones for numbers; the big one (over the 256 KiB
# kept in memory) goes through a spool file and is likely to be cut mid-write
QUEUE_ID = re.compile(rb"Message accepted as (\w+)")


def start_logged(tmp_path: Path, listener: str = "smtp", **tables: dict
                 ) -> tuple[subprocess.Popen, int, int, Path]:
    """twistd with one listener (`listener`, on a free port), its log in a file (a pipe nobody
    reads would fill and block the server under load); (process, admin port, listener port,
    log path) once /health answers."""
    for _ in range(3):
        admin, port = free_port(), free_port()
        config = server_config(tmp_path, admin,
                               listen={listener: f"tcp:{port}:interface=127.0.0.1"}, **tables)
        log_path = tmp_path / f"twistd-{time.monotonic_ns()}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([TWISTD, "-n", "--pidfile=", "cloudmail", "--config",
                                        str(config)], cwd=tmp_path, stdout=log,
                                       stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and process.poll() is None:
            try:
                get(admin, "/health")
                return process, admin, port, log_path
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        process.kill()
        process.wait()
        if "cannot listen" not in log_path.read_text(errors="replace"):
            raise AssertionError(f"twistd did not start:\n{log_path.read_text(errors='replace')}")
    raise AssertionError("no free ports for the listeners")


def make_message(message_id: str, size: int) -> bytes:
    """A message with a unique Message-ID, CRLF line ends and no line starting with a dot."""
    head = (f"From: load@remote.test\r\nTo: alice@example.com\r\nSubject: {message_id}\r\n"
            f"Message-ID: <{message_id}@remote.test>\r\n\r\n").encode()
    line = f"{message_id} the quick brown fox jumps over the lazy dog 0123456789\r\n".encode()
    return head + line * max(1, (size - len(head)) // len(line))


class LoadClient(threading.Thread):
    """Sends messages one per connection until told to stop; records what got a 250."""

    def __init__(self, number: int, port: int, stop: threading.Event, budget: threading.Semaphore):
        super().__init__(daemon=True)
        self.number, self.port, self.stop, self.budget = number, port, stop, budget
        self.sent: dict[str, bytes] = {}  # every message whose DATA was started
        self.acked: dict[str, tuple[bytes, bytes]] = {}  # message id -> (bytes, queue id)
        self.interrupted = 0  # transactions cut short by the kill after MAIL FROM was sent

    def run(self) -> None:
        n = 0
        while not self.stop.is_set() and self.budget.acquire(blocking=False):
            message_id = f"crash-{self.number}-{n}"
            data = make_message(message_id, SIZES[n % len(SIZES)])
            n += 1
            in_transaction = False
            try:
                with smtplib.SMTP("127.0.0.1", self.port, "client.remote.test", timeout=10) as c:
                    c.ehlo()
                    in_transaction = True
                    assert c.mail("load@remote.test")[0] == 250
                    assert c.rcpt("alice@example.com")[0] == 250
                    self.sent[message_id] = data
                    code, text = c.data(data)
                    in_transaction = False
                    if code == 250:
                        self.acked[message_id] = (data, QUEUE_ID.search(text).group(1))
            except (OSError, smtplib.SMTPException):
                if in_transaction:
                    self.interrupted += 1
                if self.stop.is_set():
                    return


def message_id_of(raw: bytes) -> str | None:
    value = email.message_from_bytes(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")["Message-ID"]
    return value.strip("<>").split("@")[0] if value else None


def test_sigkill_mid_load_loses_no_acknowledged_message(tmp_path):
    """Six smtplib clients send mail for ~1.5 s, then the server gets SIGKILL: every message
    that got a 250 is in new/ exactly once, byte for byte after our trace headers, with the queue
    id of its 250 in its Received: header; every file in new/ is a complete message; and the
    server starts again on the same data folder and takes mail."""
    process, admin, smtp, log_path = start_logged(tmp_path)
    data = tmp_path / "data"
    maildir = data / "mail" / "example.com" / "alice"
    try:
        provision(admin, (data / "admin.token").read_text().strip())
        stop = threading.Event()
        budget = threading.Semaphore(MAX_MESSAGES)
        clients = [LoadClient(i, smtp, stop, budget) for i in range(CLIENTS)]
        for client in clients:
            client.start()
        time.sleep(KILL_AFTER)
        stop.set()
        process.kill()  # SIGKILL, mid-load
        process.wait(timeout=10)
        for client in clients:
            client.join(timeout=15)
            assert not client.is_alive()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    sent = {k: v for c in clients for k, v in c.sent.items()}
    acked = {k: v for c in clients for k, v in c.acked.items()}
    interrupted = sum(c.interrupted for c in clients)
    assert len(acked) >= 20, f"too little load before the kill: {len(acked)} acknowledged"
    assert interrupted >= 1, "the kill hit no transaction in flight; the test proved nothing"

    files: dict[str, list[bytes]] = {}
    for path in (maildir / "new").iterdir():
        raw = path.read_bytes()
        message_id = message_id_of(raw)
        assert message_id in sent, f"{path.name} in new/ is not a message that was sent: {raw[:200]!r}"
        assert raw.endswith(sent[message_id]), f"{path.name} in new/ is incomplete or damaged"
        assert raw.startswith(b"Return-Path: <load@remote.test>\r\n")
        files.setdefault(message_id, []).append(raw)
    assert not list((maildir / "cur").iterdir())
    print(f"{len(sent)} messages started, {len(acked)} acknowledged, {interrupted} cut by the "
          f"kill; {sum(map(len, files.values()))} files in new/, "
          f"{len(list((maildir / 'tmp').iterdir()))} in tmp/, "
          f"{len(list((data / 'spool').iterdir()))} in the spool")

    lost = sorted(set(acked) - set(files))
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages are missing: {lost[:5]}"
    for message_id, (body, queue_id) in acked.items():
        assert len(files[message_id]) == 1, f"{message_id} was delivered more than once"
        head = files[message_id][0][:-len(body)]
        assert b" id " + queue_id + b"\r\n" in head, f"{message_id}: queue id {queue_id!r} not in {head!r}"

    # The same data folder serves again after the crash, with the spool emptied of what the
    # crash left there, and new mail still arrives.
    before = len(list((maildir / "new").iterdir()))
    process, admin, smtp, log_path = start_logged(tmp_path)
    try:
        assert list((data / "spool").iterdir()) == []
        with smtplib.SMTP("127.0.0.1", smtp, "client.remote.test", timeout=10) as client:
            client.sendmail("load@remote.test", ["alice@example.com"],
                            make_message("after-restart", 2_000))
        assert len(list((maildir / "new").iterdir())) == before + 1
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert "Traceback" not in log_path.read_text(errors="replace")
