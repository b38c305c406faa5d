"""How fast the real IMAP server opens and lists a big folder: SELECT and FETCH 1:* on N messages.

Starts `twistd -n cloudmail` as a subprocess on a fresh data folder (only the `imap`, `imaps` and
`admin` listeners, on loopback), makes a domain, a user and a mailbox through the admin API, and
fills the mailbox's INBOX by writing N message files (≈2–4 KB each, varied senders, subjects and
dates, one in ten multipart, about half `\\Seen` and a few `\\Flagged`/`\\Answered`) straight into
its Maildir `cur/` as `<unique>,S=<size>:2,<flags>`, which is far faster than APPEND. Then one
cheap asyncio IMAP client (raw lines, STARTTLS on `imap`, or `--imaps` for implicit TLS) logs in
as bench@bench.example and times, from writing the command to reading its tagged `OK`:

* cold SELECT: the first SELECT INBOX, for which the server indexes the folder (page cache warm:
  the files were just written);
* warm SELECT: UNSELECT (not timed), then SELECT INBOX again in the same session, `--repeat`
  times (p50, min, max): the server's own cost;
* SELECT while selected: SELECT INBOX with INBOX selected, as a client switching folders does;
* SELECT in a new session: log out, log in again and SELECT, `--repeat` times (p50): what a
  client that reconnects for every check sees (the server keeps a mailbox's folders in memory
  for a minute after its last session, so this is not a read of the SQLite index);
* `FETCH 1:* (FLAGS UID)` (p50 of `--repeat`);
* `FETCH 1:* (ENVELOPE)` cold (every header read and the structure cached) and warm (p50).

Every answer is checked: the EXISTS count must equal N and each FETCH must return N responses.
The server's RSS (VmRSS) is reported after start, after each phase, and its peak (VmHWM), with its
CPU time (user+system, all threads, from /proc/<pid>/stat) for the cold phases. Target: warm
SELECT of 100,000 messages under 200 ms.

    timeout 1800 .venv/bin/python benchmarks/imap_select.py [--messages 100000] [--repeat 7]
        [--imaps] [--dir PATH] [--keep] [--timeout 900] [--json]

The exit status is 1 when a command failed or a count did not match.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

TWISTD = str(Path(sys.executable).with_name("twistd"))
DOMAIN = "bench.example"
LOCAL = "bench"
PASSWORD = "benchmark password"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the server --------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, data_dir: Path, admin_port: int, imap_port: int,
                 imaps_port: int) -> Path:
    tables: dict[str, dict] = {
        "server": {"hostname": "mail.bench.example", "data_dir": str(data_dir)},
        "listen": {"smtp": "", "submission": "", "submissions": "", "managesieve": "",
                   "imap": f"tcp:{imap_port}:interface=127.0.0.1:backlog=1024",
                   "imaps": f"tcp:{imaps_port}:interface=127.0.0.1:backlog=1024",
                   "admin": f"tcp:{admin_port}:interface=127.0.0.1"},
    }
    lines = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def api(port: int, token: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


class Server:
    """`twistd -n cloudmail` in a subprocess, its log in a file (a pipe would fill and block it)."""

    def __init__(self, base: Path, profile: Path | None = None) -> None:
        self.base = base
        self.data = base / "data"
        self.admin_port = free_port()
        self.imap_port = free_port()
        self.imaps_port = free_port()
        config = write_config(base / "cloudmail.toml", self.data, self.admin_port,
                              self.imap_port, self.imaps_port)
        self.log_path = base / "twistd.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        extra = [f"--profile={profile}", "--profiler=cprofile", "--savestats"] if profile else []
        self.process = subprocess.Popen([TWISTD, "-n", "--pidfile=", *extra, "cloudmail",
                                         "--config", str(config)],
                                        cwd=base, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_healthy()
        self.token = (self.data / "admin.token").read_text().strip()

    def _wait_healthy(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"twistd exited {self.process.returncode}:\n"
                                 + self.log_path.read_text(errors="replace"))
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/health",
                                       timeout=2).close()
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise SystemExit("the server did not answer /health in time")

    def make_mailbox(self, local: str = LOCAL, domain: bool = True) -> Path:
        """A user and its mailbox `local@bench.example`; the path of its Maildir (made here if
        the server has not made it yet)."""
        if domain:
            api(self.admin_port, self.token, "/api/v1/domains", {"name": DOMAIN})
        api(self.admin_port, self.token, "/api/v1/users", {"username": local, "password": PASSWORD})
        api(self.admin_port, self.token, "/api/v1/mailboxes",
            {"address": f"{local}@{DOMAIN}", "owner": local})
        maildir = self.data / "mail" / DOMAIN / local
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        return maildir

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process, all threads."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def log_problems(self, limit: int = 20) -> list[str]:
        """Tracebacks and failure lines from the twistd log (first `limit` lines of them)."""
        text = self.log_path.read_text(errors="replace")
        found = [line for line in text.splitlines()
                 if re.search(r"Traceback|Error|failed|Unhandled|CRITICAL", line)]
        return found[:limit]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


# --- the messages ------------------------------------------------------------------------------

FIRST = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy",
         "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter"]
LAST = ["Smith", "Jones", "Martin", "Bernard", "Dubois", "Müller", "Rossi", "García", "Novak",
        "Kowalski", "Andersen", "Nakamura", "O'Brien", "Silva"]
ORGS = ["example.org", "corp.test", "lists.example.net", "mail.invalid.test", "shop.example",
        "university.edu.test", "bank.example.com"]
WORDS = ["quarterly", "report", "meeting", "invoice", "project", "update", "review", "schedule",
         "budget", "release", "notes", "draft", "proposal", "contract", "holiday", "party",
         "server", "outage", "migration", "newsletter", "offer", "reminder", "agenda", "minutes",
         "feedback", "request", "approval", "delivery", "order", "shipment", "account",
         "security", "password", "renewal", "subscription"]


def _paragraphs(rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(300):
        words = [rng.choice(WORDS) for _ in range(rng.randint(40, 90))]
        text = " ".join(words).capitalize() + "."
        lines, line = [], ""
        for word in text.split():
            if len(line) + len(word) > 72:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return out


class MessageMaker:
    """Varied ≈2–4 KB messages, made fast from a pool of paragraphs."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.paragraphs = _paragraphs(self.rng)

    def message(self, n: int, to: str = f"{LOCAL}@{DOMAIN}") -> bytes:
        rng = self.rng
        first, last, org = rng.choice(FIRST), rng.choice(LAST), rng.choice(ORGS)
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))).capitalize()
        if rng.random() < 0.3:
            subject = "Re: " + subject
        when = time.gmtime(1_700_000_000 + n * 97 + rng.randint(0, 90))
        date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", when)
        name = f"{first} {last}"
        if not name.isascii():
            name = "=?utf-8?q?" + "".join(c if c.isascii() and c.isalnum() else
                                          "".join(f"={b:02X}" for b in c.encode())
                                          for c in name) + "?="
        head = (f"Return-Path: <{first.lower()}@{org}>\r\n"
                f"From: {name} <{first.lower()}.{last.lower().replace(chr(39), '')}@{org}>\r\n"
                f"To: Bench <{to}>\r\n"
                f"Subject: {subject} #{n}\r\n"
                f"Date: {date}\r\n"
                f"Message-ID: <{n}.{rng.getrandbits(40):x}@{org}>\r\n"
                "MIME-Version: 1.0\r\n")
        target = rng.randint(2048, 4096)
        body = b""
        while len(body) + len(head) < target - 200:
            body += rng.choice(self.paragraphs)
        if n % 10 == 0:
            boundary = f"b{n:x}"
            html = b"<html><body><p>" + body[:600].replace(b"\r\n", b" ") + b"</p></body></html>\r\n"
            return (head + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
                    f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode() \
                + body + (f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
                          ).encode() + html + f"--{boundary}--\r\n".encode()
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode() + body

    def flags(self) -> str:
        r = self.rng.random()
        letters = "S" if r < 0.5 else ""
        if self.rng.random() < 0.05:
            letters = "F" + letters
        if self.rng.random() < 0.1:
            letters += "R" if "S" in letters else ""
        return "".join(sorted(letters))


def fill_maildir(maildir: Path, count: int, maker: MessageMaker, start: int = 0) -> int:
    """Write `count` messages into `maildir/cur/`; their total size in bytes."""
    cur = maildir / "cur"
    pid = os.getpid()
    stamp = int(time.time())
    total = 0
    for n in range(start, start + count):
        data = maker.message(n)
        name = f"{stamp}.M{n}P{pid}.bench,S={len(data)}:2,{maker.flags()}"
        with open(cur / name, "wb") as f:
            f.write(data)
        total += len(data)
    return total


# --- a cheap IMAP client -----------------------------------------------------------------------

class ImapError(Exception):
    pass


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Imap:
    """One IMAP connection: raw lines over asyncio streams, literals read whole."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.count = 0

    @classmethod
    async def connect(cls, port: int, implicit_tls: bool, context: ssl.SSLContext) -> Imap:
        """Connect, read the greeting, and STARTTLS unless `implicit_tls`."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context if implicit_tls else None, limit=1 << 24)
        client = cls(reader, writer)
        greeting = await client.read_response()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting {greeting!r}")
        if not implicit_tls:
            await client.check(b"STARTTLS")
            await writer.start_tls(context)
        return client

    async def read_response(self) -> bytes:
        """One response line with any literals it carries."""
        line = await self.reader.readline()
        if not line.endswith(b"\n"):
            raise ConnectionError(f"connection closed ({line[:80]!r})")
        while line.endswith(b"}\r\n"):
            start = line.rfind(b"{")
            try:
                size = int(line[start + 1:-3].rstrip(b"+"))
            except ValueError:
                break
            line += await self.reader.readexactly(size)
            more = await self.reader.readline()
            if not more.endswith(b"\n"):
                raise ConnectionError("connection closed in a literal")
            line += more
        return line

    async def command(self, text: bytes, keep: bool = True) -> tuple[list[bytes], bytes]:
        """Send one command; (its untagged responses, its tagged response)."""
        self.count += 1
        tag = b"a%d" % self.count
        self.writer.write(tag + b" " + text + b"\r\n")
        tag += b" "
        untagged: list[bytes] = []
        while True:
            line = await self.read_response()
            if line.startswith(tag):
                return untagged, line
            if keep:
                untagged.append(line)

    async def check(self, text: bytes, keep: bool = True) -> list[bytes]:
        """`command`, and ImapError unless it ends in OK."""
        untagged, done = await self.command(text, keep)
        if done.split(b" ", 2)[1:2] != [b"OK"]:
            raise ImapError(f"{text[:60]!r} answered {done.strip()[:300]!r}")
        return untagged

    async def login(self, address: str = f"{LOCAL}@{DOMAIN}", password: str = PASSWORD) -> None:
        await self.check(b'LOGIN "%s" "%s"' % (address.encode(), password.encode()))

    async def logout(self) -> None:
        try:
            await asyncio.wait_for(self.command(b"LOGOUT"), 10)
        except (ImapError, ConnectionError, TimeoutError, ssl.SSLError):
            pass
        self.close()

    def close(self) -> None:
        try:
            self.writer.close()
        except (ConnectionError, ssl.SSLError, RuntimeError):
            pass


def exists_of(untagged: list[bytes]) -> int | None:
    for line in untagged:
        m = re.match(rb"\* (\d+) EXISTS", line)
        if m:
            return int(m.group(1))
    return None


def percentile(sorted_values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


# --- the benchmark -----------------------------------------------------------------------------

def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def timed(client: Imap, text: bytes) -> tuple[float, list[bytes]]:
    started = time.perf_counter()
    untagged = await client.check(text)
    return time.perf_counter() - started, untagged


def fetch_count(untagged: list[bytes]) -> int:
    return sum(1 for line in untagged if b" FETCH (" in line[:40])


async def measure(server: Server, args: argparse.Namespace, report: dict,
                  problems: list[str]) -> None:
    context = tls_context()
    port = server.imaps_port if args.imaps else server.imap_port
    n = args.messages
    rss = report["rss_mb"]

    def note_rss(phase: str) -> None:
        rss[phase] = round(server.status_kb("VmRSS") / 1024, 1)

    def expect(what: str, got: int | None) -> None:
        if got != n:
            problems.append(f"{what}: expected {n}, got {got}")

    client = await Imap.connect(port, args.imaps, context)
    await client.login()
    note_rss("after_login")

    cpu = server.cpu_seconds()
    took, untagged = await timed(client, b"SELECT INBOX")
    report["cold_select_ms"] = ms(took)
    report["cold_select_server_cpu_s"] = round(server.cpu_seconds() - cpu, 2)
    expect("EXISTS of the cold SELECT", exists_of(untagged))
    note_rss("after_cold_select")

    # Warm SELECT from the authenticated state (UNSELECT first, not timed): the server's cost.
    warm = []
    for _ in range(args.repeat):
        await client.check(b"UNSELECT")
        took, untagged = await timed(client, b"SELECT INBOX")
        warm.append(took)
        expect("EXISTS of a warm SELECT", exists_of(untagged))
    warm.sort()
    report["warm_select_ms"] = {"p50": ms(percentile(warm, 50)), "min": ms(warm[0]),
                                "max": ms(warm[-1])}
    # SELECT while a folder is selected, as clients switch folders: the server writes
    # `* OK [CLOSED]` at once and the rest after opening the folder, and without TCP_NODELAY the
    # second write can wait for the client's delayed ACK (≈40 ms on Linux).
    reselect = []
    for _ in range(args.repeat):
        took, untagged = await timed(client, b"SELECT INBOX")
        reselect.append(took)
        expect("EXISTS of a SELECT while selected", exists_of(untagged))
    reselect.sort()
    report["reselect_ms"] = {"p50": ms(percentile(reselect, 50)), "min": ms(reselect[0]),
                             "max": ms(reselect[-1])}
    # The target is for 100,000 messages; with fewer it says nothing.
    report["warm_select_target_met"] = percentile(warm, 50) < 0.2 if n >= 100_000 else None

    flags = []
    for _ in range(args.repeat):
        took, untagged = await timed(client, b"FETCH 1:* (FLAGS UID)")
        flags.append(took)
        expect("responses to FETCH 1:* (FLAGS UID)", fetch_count(untagged))
    flags.sort()
    report["fetch_flags_ms"] = {"p50": ms(percentile(flags, 50)), "min": ms(flags[0]),
                                "max": ms(flags[-1])}

    cpu = server.cpu_seconds()
    took, untagged = await timed(client, b"FETCH 1:* (ENVELOPE)")
    report["fetch_envelope_cold_ms"] = ms(took)
    report["fetch_envelope_cold_server_cpu_s"] = round(server.cpu_seconds() - cpu, 2)
    report["envelope_response_mb"] = round(sum(map(len, untagged)) / 1e6, 1)
    expect("responses to the cold FETCH 1:* (ENVELOPE)", fetch_count(untagged))
    del untagged
    note_rss("after_envelope_cold")
    envelopes = []
    for _ in range(args.repeat):
        took, untagged = await timed(client, b"FETCH 1:* (ENVELOPE)")
        envelopes.append(took)
        expect("responses to a warm FETCH 1:* (ENVELOPE)", fetch_count(untagged))
        del untagged
    envelopes.sort()
    report["fetch_envelope_warm_ms"] = {"p50": ms(percentile(envelopes, 50)),
                                        "min": ms(envelopes[0]), "max": ms(envelopes[-1])}
    note_rss("after_envelope_warm")
    await client.logout()

    # Every session gone: the server should close the account and read the index back at the next
    # SELECT (a time as short as the warm SELECT means the account stayed open).
    reopened = []
    for _ in range(args.repeat):
        await asyncio.sleep(0.5)
        client = await Imap.connect(port, args.imaps, context)
        await client.login()
        took, untagged = await timed(client, b"SELECT INBOX")
        reopened.append(took)
        expect("EXISTS of a SELECT after reopening", exists_of(untagged))
        await client.logout()
    reopened.sort()
    report["reopened_select_ms"] = {"p50": ms(percentile(reopened, 50)), "min": ms(reopened[0]),
                                    "max": ms(reopened[-1])}
    note_rss("end")


def run(args: argparse.Namespace) -> dict:
    base = Path(tempfile.mkdtemp(prefix="imap-select-", dir=args.dir))
    server = Server(base)
    problems: list[str] = []
    report: dict = {"messages": args.messages, "tls": "imaps" if args.imaps else "starttls",
                    "repeat": args.repeat, "rss_mb": {}}
    try:
        maildir = server.make_mailbox()
        report["rss_mb"]["after_start"] = round(server.status_kb("VmRSS") / 1024, 1)
        started = time.perf_counter()
        size = fill_maildir(maildir, args.messages, MessageMaker())
        report["fill_s"] = round(time.perf_counter() - started, 1)
        report["folder_mb"] = round(size / 1e6, 1)
        try:
            asyncio.run(asyncio.wait_for(measure(server, args, report, problems), args.timeout))
        except (ImapError, ConnectionError, ssl.SSLError, OSError) as e:
            problems.append(f"{type(e).__name__}: {e}")
        except TimeoutError:
            problems.append(f"timed out after {args.timeout} s (phases done: "
                            f"{', '.join(k for k in report if k.endswith(('_ms', '_s')))})")
        report["server_peak_rss_mb"] = round(server.status_kb("VmHWM") / 1024, 1)
        report["server_cpu_total_s"] = round(server.cpu_seconds(), 1)
        if server.process.poll() is not None:
            problems.append(f"the server exited with {server.process.returncode}")
        log = server.log_problems()
        if log:
            report["server_log_problems"] = log
    finally:
        server.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    report["problems"] = problems
    return report


def print_report(r: dict) -> None:
    def span(key: str) -> str:
        v = r.get(key)
        return f"p50 {v['p50']} ms (min {v['min']}, max {v['max']})" if v else "-"
    print(f"IMAP SELECT/FETCH on {r['messages']} messages ({r.get('folder_mb')} MB, written in "
          f"{r.get('fill_s')} s), {r['tls']}, {r['repeat']} repeats")
    print(f"  cold SELECT (indexing)      {r.get('cold_select_ms', '-')} ms, server CPU "
          f"{r.get('cold_select_server_cpu_s', '-')} s")
    target = r.get("warm_select_target_met")
    print(f"  warm SELECT                 {span('warm_select_ms')}"
          + ("" if target is None else
             f"   target <200 ms at 100k: {'met' if target else 'NOT met'}"))
    print(f"  SELECT while selected       {span('reselect_ms')}")
    print(f"  SELECT in a new session     {span('reopened_select_ms')}")
    print(f"  FETCH 1:* (FLAGS UID)       {span('fetch_flags_ms')}")
    print(f"  FETCH 1:* (ENVELOPE) cold   {r.get('fetch_envelope_cold_ms', '-')} ms, server CPU "
          f"{r.get('fetch_envelope_cold_server_cpu_s', '-')} s, "
          f"{r.get('envelope_response_mb', '-')} MB of responses")
    print(f"  FETCH 1:* (ENVELOPE) warm   {span('fetch_envelope_warm_ms')}")
    print("  server RSS MB: " + ", ".join(f"{k} {v}" for k, v in r["rss_mb"].items())
          + f"; peak {r.get('server_peak_rss_mb')}; server CPU in all "
          f"{r.get('server_cpu_total_s')} s")
    for problem in r["problems"]:
        print(f"  PROBLEM: {problem}")
    for line in r.get("server_log_problems", []):
        print(f"  server log: {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages in INBOX")
    parser.add_argument("--repeat", type=int, default=7, help="repeats of each warm measure")
    parser.add_argument("--imaps", action="store_true",
                        help="implicit TLS on the imaps listener instead of STARTTLS on imap")
    parser.add_argument("--dir", type=Path, help="where to put the data folder (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and log")
    parser.add_argument("--timeout", type=float, default=900,
                        help="give up on the IMAP phases after this many seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(report), flush=True)
    else:
        print_report(report)
    sys.exit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
