"""The outbound queue survives `kill -9` mid-run with nothing lost (issue: outbound queue, "Done
when"); duplicates come only from the crash window between the remote `250` and our record of it.

The real `twistd -n cloudmail` runs with a submission listener (STARTTLS, AUTH), `[dns]` pointing
at a loopback DNS server in this process (remote.test MX → 127.0.0.1) and `[queue] mx_port` at a
loopback SMTP sink in this process, which is slow now and then and answers 451 to a quarter of
the recipients the first time it sees them, so that at the kill some messages are being
delivered, some are deferred and some wait for a slot. Several smtplib clients (threads) submit
messages with a unique token each; after ~2 s the server gets SIGKILL. A new server on the same
data folder must then deliver what is left until the queue folder is empty:

- every message that got a `250` from the submission listener reached the sink, its bytes (what
  the client sent, after the headers we add in front: Received, DKIM-Signature) intact;
- nothing reached the sink that no client sent;
- a message reached the sink twice only if its first copy came from the killed server (the restart
  sent it again because the first server died before recording the sink's 250), never twice
  from one server run. How many duplicates there were is printed.

The test runs on the pytest-twisted reactor (the DNS server and the sink live in it); everything
that blocks (smtplib, waiting for the subprocess) runs in threads.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from tests.integration.test_crash_safety import start_logged
from tests.integration.test_twistd import (
    provision,
)
from tests.smtpsink import SinkMessage, SmtpSink

ZONES = {
    "remote.test": {"MX": [(10, "mx.remote.test")]},
    "mx.remote.test": {"A": ["127.0.0.1"]},
}
PASSWORD = "long enough"  # provision()'s password for alice
CLIENTS = 6
KILL_AFTER = 2.0  # seconds of load before the SIGKILL
PER_SESSION = 8  # messages per SMTP session before the client reconnects
MAX_MESSAGES = 2000  # a bound, should the server be much faster than expected
DRAIN_TIMEOUT = 20.0  # seconds the restarted server gets to empty the queue
TOKEN = re.compile(rb"\r\nX-Crash-Token: (\S+)\r\n")


class MoodySink(SmtpSink):
    """An `SmtpSink` that stalls every `slow_every`-th DATA for `slow_delay` seconds (a slow MX:
    the queue's deliveries pile up behind it) and stamps each message's arrival time."""

    slow_every = 5
    slow_delay = 0.3

    def __init__(self, **options) -> None:
        self._datas = 0
        self.arrivals: list[tuple[float, SinkMessage]] = []
        super().__init__(**options)

    @property  # type: ignore[override]
    def data_delay(self) -> float:
        self._datas += 1
        return self.slow_delay if self._datas % self.slow_every == 0 else 0.0

    @data_delay.setter
    def data_delay(self, value: float) -> None:
        pass  # set by SmtpSink.__init__; the property above decides

    def _arrived(self, message: SinkMessage) -> None:
        self.arrivals.append((time.monotonic(), message))
        super()._arrived(message)


class FirstTimeRefusals:
    """`rcpt_reply`: 451 the first time it sees a recipient `r<client>-<n>@remote.test` with
    client + n a multiple of 4 (a greylisting MX), 250 otherwise."""

    def __init__(self) -> None:
        self.refused: set[str] = set()

    def __call__(self, address: str) -> tuple[int, str]:
        client, _, n = address.partition("@")[0].removeprefix("r").partition("-")
        if (int(client) + int(n)) % 4 == 0 and address not in self.refused:
            self.refused.add(address)
            return 451, "4.2.0 greylisted, try again later"
        return 250, "2.1.5 recipient OK"


def start_server(tmp_path: Path, dns_port: int, sink_port: int
                 ) -> tuple[subprocess.Popen, int, int, Path]:
    """twistd with the submission listener, our DNS server and the sink as every MX, its log in
    a file; (process, admin port, submission port, log path) once /health answers."""
    return start_logged(
        tmp_path, "submission", dns={"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": 1},
        queue={"mx_port": sink_port, "retry_delays": [0.5], "connect_timeout": 2,
               "timeout": 10, "domain_concurrency": 10})


def make_message(token: str, recipient: str) -> bytes:
    """A ≈1.5 KB message from alice with its own token, Message-ID and Date (so the server adds
    nothing in between), CRLF line ends, no line starting with a dot."""
    head = (f"From: Alice <alice@example.com>\r\nTo: <{recipient}>\r\nSubject: crash {token}\r\n"
            f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{token}@example.com>\r\n"
            f"X-Crash-Token: {token}\r\n\r\n").encode()
    line = f"{token}: the quick brown fox jumps over the lazy dog 0123456789\r\n".encode()
    return head + line * 20


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Submitter(threading.Thread):
    """Submits messages over STARTTLS + AUTH, `PER_SESSION` per connection, until told to stop;
    records what it sent (DATA started) and what got a 250."""

    def __init__(self, number: int, port: int, stop: threading.Event,
                 budget: threading.Semaphore) -> None:
        super().__init__(daemon=True, name=f"submitter-{number}")
        self.number, self.port, self.stop, self.budget = number, port, stop, budget
        self.sent: dict[str, bytes] = {}
        self.acked: set[str] = set()
        self.refused: list[str] = []  # replies other than 250 while the server was up

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, "client.example.com", timeout=10) as c:
                    c.starttls(context=client_tls())
                    c.login("alice@example.com", PASSWORD)
                    for _ in range(PER_SESSION):
                        if self.stop.is_set() or not self.budget.acquire(blocking=False):
                            return
                        token = f"t{self.number}x{n}"
                        recipient = f"r{self.number}-{n}@remote.test"
                        n += 1
                        data = make_message(token, recipient)
                        code, text = c.mail("alice@example.com")
                        if code != 250:
                            self.refused.append(f"MAIL {code} {text!r}")
                            continue
                        code, text = c.rcpt(recipient)
                        if code != 250:
                            self.refused.append(f"RCPT {code} {text!r}")
                            c.rset()
                            continue
                        self.sent[token] = data
                        code, text = c.data(data)
                        if code == 250:
                            self.acked.add(token)
                        else:
                            self.refused.append(f"DATA {code} {text!r}")
            except (OSError, smtplib.SMTPException):
                if self.stop.is_set():
                    return
                time.sleep(0.05)  # the server is gone or busy; try again until stopped


def queue_files(data: Path) -> list[Path]:
    return sorted((data / "queue").glob("*.json"))


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_sigkill_mid_run_loses_no_queued_message(tmp_path, dns_server):
    dns = dns_server(ZONES)
    refusals = FirstTimeRefusals()
    sink = MoodySink(rcpt_reply=refusals, directory=tmp_path / "sink")
    sink.start()
    data = tmp_path / "data"
    clients: list[Submitter] = []
    process: subprocess.Popen | None = None
    try:
        process, admin, submission, first_log = await deferToThread(
            start_server, tmp_path, dns.port, sink.port)
        await deferToThread(provision, admin, (data / "admin.token").read_text().strip())

        stop = threading.Event()
        budget = threading.Semaphore(MAX_MESSAGES)
        clients = [Submitter(i, submission, stop, budget) for i in range(CLIENTS)]
        for client in clients:
            client.start()
        await sleep(KILL_AFTER)
        process.kill()  # SIGKILL: no shutdown code runs
        killed_at = time.monotonic()
        stop.set()
        await deferToThread(process.wait, 10)
        for client in clients:
            await deferToThread(client.join, 15)
            assert not client.is_alive()

        # What the dead server left in its queue.
        left = [json.loads(path.read_bytes()) for path in queue_files(data)]
        deferred = sum(any(r["status"] == "deferred" for r in e["recipients"]) for e in left)
        await sleep(0.2)  # what the dead server's sockets still held reaches the sink
        restarted_at = time.monotonic()
        arrived_before = len(sink.arrivals)

        process, admin, submission, second_log = await deferToThread(
            start_server, tmp_path, dns.port, sink.port)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while queue_files(data):
            assert time.monotonic() < deadline, \
                f"the queue was not emptied in {DRAIN_TIMEOUT} s: {len(queue_files(data))} left"
            await sleep(0.1)
        process.terminate()
        await deferToThread(process.wait, 20)
    finally:
        if process is not None and process.poll() is None:
            process.kill()
            await deferToThread(process.wait)
        await sink.stop()

    sent = {token: body for c in clients for token, body in c.sent.items()}
    acked = set().union(*(c.acked for c in clients))
    refused = [r for c in clients for r in c.refused]
    assert len(acked) >= 10, f"too little load before the kill: {len(acked)} acknowledged"
    assert not refused, f"the server refused submissions while up: {refused[:5]}"
    assert left, "the queue was empty at the kill: the test proved nothing about the queue"

    copies: dict[str, list[float]] = {}
    for arrived_at, message in sink.arrivals:
        found = TOKEN.search(message.data)
        assert found, f"a message without token reached the sink: {message.data[:300]!r}"
        token = found.group(1).decode()
        assert token in sent, f"{token} reached the sink but was never submitted"
        assert message.data.endswith(sent[token]), f"{token} arrived damaged"
        assert message.data.startswith(b"DKIM-Signature:") or \
            b"\r\nDKIM-Signature:" in message.data.split(b"\r\n\r\n", 1)[0], \
            f"{token} arrived unsigned"
        assert message.recipients and all(r.endswith("@remote.test") for r in message.recipients)
        copies.setdefault(token, []).append(arrived_at)

    lost = sorted(acked - set(copies))
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages never arrived: {lost[:5]}"
    duplicated = {t: times for t, times in copies.items() if len(times) > 1}
    for token, times in duplicated.items():
        before = [t for t in times if t < restarted_at]
        after = [t for t in times if t >= restarted_at]
        assert len(before) == 1 and len(after) == 1, \
            f"{token} arrived {len(before)} time(s) before the restart and {len(after)} after"
    window = max((killed_at - times[0] for times in duplicated.values()), default=0.0)
    print(f"\n{len(sent)} messages submitted, {len(acked)} acknowledged, "
          f"{len(sent) - len(acked)} cut by the kill; {len(left)} queue entries at the kill "
          f"({deferred} deferred); {arrived_before} arrivals before the kill, "
          f"{len(sink.arrivals) - arrived_before} after the restart; "
          f"{len(copies)} distinct messages arrived, {len(duplicated)} duplicate(s)"
          + (f" (first copies at most {window * 1000:.0f} ms before the kill)"
             if duplicated else ""))
    for log_path in (first_log, second_log):
        text = log_path.read_text(errors="replace")
        assert "Traceback" not in text, f"{log_path.name}:\n{text[-3000:]}"
