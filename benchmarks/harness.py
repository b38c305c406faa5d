"""What the benchmarks that drive the real server share: the `twistd` subprocess and the numbers it
is measured by, the test messages, a cheap asyncio IMAP client and the report plumbing.

smtp_inbound.py, imap_select.py, imap_mixed.py and imap_idle.py each start `twistd -n cloudmail` on
a fresh data folder with only the listeners they drive (on loopback), make users and mailboxes
through the admin API, read the server's CPU time and memory from /proc and print a text or JSON
report. Keeping that here means every benchmark starts, measures and stops the server the same
way, and each script holds only the load it makes and what it reports. The scripts are run as
`python benchmarks/<name>.py` and import this module by name (`from harness import …`), with
their own folder put first on sys.path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TWISTD = str(Path(sys.executable).with_name("twistd"))
DOMAIN = "bench.example"
LOCAL = "bench"
PASSWORD = "benchmark password"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The mail listeners of the config; those a benchmark does not drive are turned off.
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "managesieve")


# --- the server --------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value: Any) -> str:
    """A Python value written as TOML (enough for the benchmark configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """Write `tables` as a TOML file at `path`."""
    lines = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in keys.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def api(port: int, token: str, path: str, body: dict | None = None) -> dict:
    """One admin API call: a POST of `body` as JSON, or a GET without one; the JSON answer."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     method="POST" if body is not None else "GET",
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


class Server:
    """`twistd -n cloudmail` in a subprocess, its log in a file (a pipe would fill and block it).

    Only the `listeners` named (each on a free loopback port, in `ports`, with that listen
    `backlog`) and the admin API are on; `settings` are further config tables (e.g. `smtp`).
    """

    def __init__(self, base: Path, listeners: tuple[str, ...], backlog: int,
                 settings: dict[str, dict[str, Any]] | None = None,
                 profile: Path | None = None) -> None:
        self.base = base
        self.data = base / "data"
        self.admin_port = free_port()
        self.ports = {name: free_port() for name in listeners}
        listen = {name: f"tcp:{self.ports[name]}:interface=127.0.0.1:backlog={backlog}"
                  if name in self.ports else "" for name in LISTENERS}
        listen["admin"] = f"tcp:{self.admin_port}:interface=127.0.0.1"
        config = write_config(base / "cloudmail.toml", {
            "server": {"hostname": "mail.bench.example", "data_dir": str(self.data)},
            "listen": listen, **(settings or {})})
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
        """A user and its mailbox `local@bench.example` (and the domain first, if `domain`); the
        path of its Maildir (made here if the server has not made it yet)."""
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
        """A kB figure of /proc/<pid>/status (`VmRSS`, `VmHWM`, …); 0 if it is not there."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def memory_mb(self, key: str) -> float:
        """`status_kb(key)` in MB, to one decimal, as the reports give it."""
        return round(self.status_kb(key) / 1024, 1)

    def log_problems(self, limit: int = 20) -> list[str]:
        """Tracebacks and failure lines from the twistd log (first `limit` lines of them)."""
        text = self.log_path.read_text(errors="replace")
        found = [line for line in text.splitlines()
                 if re.search(r"Traceback|Error|failed|Unhandled|CRITICAL", line)]
        return found[:limit]

    def exit_problem(self) -> str | None:
        """A line for the report if the server has exited (it should run until `stop`)."""
        if self.process.poll() is None:
            return None
        return f"the server exited with {self.process.returncode}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextlib.contextmanager
def fresh_server(args: argparse.Namespace, prefix: str, listeners: tuple[str, ...], backlog: int,
                 settings: dict[str, dict[str, Any]] | None = None,
                 profile: Path | None = None) -> Iterator[Server]:
    """A `Server` on a new data folder `<prefix>…` under `--dir`, stopped on leaving; the folder is
    then removed, or with `--keep` kept and its path printed on stderr."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=args.dir))
    server = Server(base, listeners, backlog, settings, profile)
    try:
        yield server
    finally:
        server.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


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
    """A client TLS context that takes the server's self-signed certificate."""
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


# --- figures and reports -----------------------------------------------------------------------

def percentile(sorted_values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def own_cpu_seconds() -> float:
    """User + system CPU time of this process so far: what the load generator costs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def add_output_options(parser: argparse.ArgumentParser, json_help: str,
                       profile_help: str | None = None) -> None:
    """The options every benchmark has: `--dir`, `--keep`, `--json` (and `--profile` where
    `profile_help` says what it saves)."""
    parser.add_argument("--dir", type=Path, help="where to put the data folder (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and log")
    if profile_help is not None:
        parser.add_argument("--profile", type=Path, help=profile_help)
    parser.add_argument("--json", action="store_true", help=json_help)


def emit(report: dict, as_json: bool, print_text: Callable[[dict], None]) -> None:
    """Print one run's report, as one JSON object on a line or as `print_text` writes it; flushed,
    so that a series of runs shows each one as it ends."""
    if as_json:
        print(json.dumps(report), flush=True)
    else:
        print_text(report)
        sys.stdout.flush()


def print_lists(report: dict, labels: dict[str, str]) -> None:
    """The report's lists of errors and problems named in `labels` (key: label), each item on a
    line `  <label>: <item>`; a list the report does not have is skipped."""
    for key, label in labels.items():
        for item in report.get(key, []):
            print(f"  {label}: {item}")


# --- a loopback DNS server ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
_DNS_SCRIPT = """
import json, sys
from twisted.internet import reactor
from tests.dnsserver import DnsServer
server = DnsServer(json.loads(sys.argv[1]))
print(server.start(), flush=True)
reactor.run()
"""


@contextlib.contextmanager
def dns_server(zones: dict[str, Any]) -> Iterator[int]:
    """tests/dnsserver.py's twisted.names server over `zones` (its dict format; tuples as JSON
    lists are fine for MX) in a subprocess of its own, so that it costs neither the server nor
    an asyncio load generator any CPU time; yields its port (UDP and TCP on 127.0.0.1) for
    `[dns] nameservers = ["127.0.0.1:<port>"]`, and is killed on leaving."""
    process = subprocess.Popen([sys.executable, "-c", _DNS_SCRIPT, json.dumps(zones)],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.strip().isdigit():
            raise SystemExit(f"the DNS server did not start (exit {process.poll()})")
        yield int(line)
    finally:
        process.kill()
        process.wait()
        if process.stdout:
            process.stdout.close()


class SmtpError(Exception):
    """An SMTP reply other than the one expected, or a connection closed early."""


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (possibly multi-line) SMTP reply: (code, last line)."""
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise SmtpError(f"connection closed or bad reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def expect(reader: asyncio.StreamReader, code: int, what: str) -> bytes:
    """Read a reply and insist on `code`."""
    got, line = await read_reply(reader)
    if got != code:
        raise SmtpError(f"{what}: {line.strip()!r}")
    return line
