"""How fast the real MX listener takes mail: N concurrent SMTP sessions into one local Maildir.

Starts `twistd -n cloudmail` as a subprocess on a fresh data folder (only the `smtp` and `admin`
listeners, on loopback), makes a domain, a user and a mailbox through the admin API, then drives
the SMTP port with a cheap asyncio client (raw sockets, no smtplib threads, so the load generator
leaves the CPU to the server): one ≈2 KB message per connection, like the Postfix comparison of
issue 3. `MAIL`, `RCPT` and `DATA` are pipelined (the server advertises PIPELINING), the body is
sent in one write, and the latency is measured from writing the final `.` to reading the `250`
(and, separately, for the whole transaction from connecting to that `250`).

Two modes:

* throughput (default): `--sessions` connections at a time, each sending one message and
  reconnecting, until `--messages` have been sent; reports messages/s fully on disk.
* fixed rate (`--rate R`): one new connection every 1/R s (open loop: a slow server does not slow
  the sender down), for `--messages` messages; reports the latency percentiles at that rate.

At the end the files in the mailbox's `new/` are counted and must equal the `250`s (each `250`
means file and directory were fsynced). The server's CPU time (user+system, all threads, from
/proc/<pid>/stat) and peak RSS (VmHWM from /proc/<pid>/status) are reported too, as is the
load generator's own CPU time.

    .venv/bin/python benchmarks/smtp_inbound.py [--sessions 20] [--messages 3000] [--rate R]
        [--size 2048] [--tls] [--runs 1] [--dir PATH] [--keep] [--profile FILE] [--json]

The exit status is 1 when a message was not accepted or the files in `new/` do not match.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
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
from pathlib import Path

TWISTD = str(Path(sys.executable).with_name("twistd"))
DOMAIN = "bench.example"
LOCAL = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def write_config(path: Path, data_dir: Path, admin_port: int, smtp_port: int) -> Path:
    tables: dict[str, dict] = {
        "server": {"hostname": "mail.bench.example", "data_dir": str(data_dir)},
        "listen": {"smtp": f"tcp:{smtp_port}:interface=127.0.0.1:backlog=512", "submission": "",
                   "submissions": "", "imap": "", "imaps": "", "managesieve": "",
                   "admin": f"tcp:{admin_port}:interface=127.0.0.1"},
    }
    # No DNS work (DNSBL, iprev, SPF/DKIM/DMARC): it would measure the resolver, not the server,
    # and with no reachable name server every message would wait out the DNS timeout.
    # Every session comes from 127.0.0.1, so the per-IP connection limit (default 20) is raised:
    # a client reconnecting right after QUIT can otherwise race the server's count and get 421.
    tables["smtp"] = {"dnsbl_zones": [], "iprev": False, "authenticate": False,
                      "max_connections_per_ip": 10_000}
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
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


class Server:
    """`twistd -n cloudmail` in a subprocess, its log in a file (a pipe would fill and block it)."""

    def __init__(self, base: Path, profile: Path | None = None) -> None:
        self.base = base
        self.data = base / "data"
        self.admin_port = free_port()
        self.smtp_port = free_port()
        config = write_config(base / "cloudmail.toml", self.data, self.admin_port, self.smtp_port)
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

    def make_mailbox(self) -> Path:
        api(self.admin_port, self.token, "/api/v1/domains", {"name": DOMAIN})
        api(self.admin_port, self.token, "/api/v1/users",
            {"username": LOCAL, "password": "benchmark password"})
        api(self.admin_port, self.token, "/api/v1/mailboxes",
            {"address": f"{LOCAL}@{DOMAIN}", "owner": LOCAL})
        return self.data / "mail" / DOMAIN / LOCAL / "new"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process, all threads."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)

    def status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def message(size: int, n: int) -> bytes:
    """An RFC 5322 message of about `size` bytes, CRLF line ends, dot-stuffing not needed."""
    head = (f"From: load@client.test\r\nTo: {LOCAL}@{DOMAIN}\r\nSubject: benchmark {n}\r\n"
            f"Message-ID: <bench-{n}@client.test>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


class SmtpError(Exception):
    pass


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One (possibly multi-line) SMTP reply: (code, last line)."""
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise SmtpError(f"connection closed or bad reply {line!r}")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def expect(reader: asyncio.StreamReader, code: int, what: str) -> bytes:
    got, line = await read_reply(reader)
    if got != code:
        raise SmtpError(f"{what}: {line!r}")
    return line


async def one_message(port: int, body: bytes,
                      tls: ssl.SSLContext | None) -> tuple[float, float]:
    """Send one message on a fresh connection; the seconds from the final `.` to the `250`, and
    from connecting to the `250` (the whole transaction)."""
    connected = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await expect(reader, 220, "greeting")
        writer.write(b"EHLO load.client.test\r\n")
        await expect(reader, 250, "EHLO")
        if tls is not None:
            writer.write(b"STARTTLS\r\n")
            await expect(reader, 220, "STARTTLS")
            await writer.start_tls(tls)
            writer.write(b"EHLO load.client.test\r\n")
            await expect(reader, 250, "EHLO after STARTTLS")
        writer.write(b"MAIL FROM:<load@client.test>\r\nRCPT TO:<%s@%s>\r\nDATA\r\n"
                     % (LOCAL.encode(), DOMAIN.encode()))
        await expect(reader, 250, "MAIL")
        await expect(reader, 250, "RCPT")
        await expect(reader, 354, "DATA")
        writer.write(body)
        await writer.drain()
        started = time.perf_counter()
        writer.write(b".\r\n")
        await expect(reader, 250, "end of data")
        done = time.perf_counter()
        writer.write(b"QUIT\r\n")
        try:
            await asyncio.wait_for(read_reply(reader), 5)
        except (TimeoutError, SmtpError, ConnectionError):
            pass
        return done - started, done - connected
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


@dataclasses.dataclass
class Result:
    latencies: list[float]
    transactions: list[float]
    errors: list[str]
    elapsed: float


async def run_throughput(port: int, sessions: int, total: int, size: int,
                         tls: ssl.SSLContext | None) -> Result:
    latencies: list[float] = []
    transactions: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))

    async def worker() -> None:
        for n in counter:
            try:
                final, whole = await one_message(port, message(size, n), tls)
                latencies.append(final)
                transactions.append(whole)
            except (SmtpError, OSError, ssl.SSLError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(sessions)))
    return Result(latencies, transactions, errors, time.perf_counter() - started)


async def run_rate(port: int, rate: float, total: int, size: int,
                   tls: ssl.SSLContext | None) -> Result:
    latencies: list[float] = []
    transactions: list[float] = []
    errors: list[str] = []
    late = 0

    async def send(n: int) -> None:
        try:
            final, whole = await one_message(port, message(size, n), tls)
            latencies.append(final)
            transactions.append(whole)
        except (SmtpError, OSError, ssl.SSLError) as e:
            errors.append(f"{type(e).__name__}: {e}")

    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for n in range(total):
        due = started + n / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            late += 1
        tasks.append(asyncio.ensure_future(send(n)))
    await asyncio.gather(*tasks)
    if late:
        errors.append(f"the load generator started {late} connections more than 10 ms late")
    return Result(latencies, transactions, errors, loop.time() - started)


def percentile(sorted_values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def one_run(args: argparse.Namespace, run: int) -> dict:
    base = Path(tempfile.mkdtemp(prefix="smtp-bench-", dir=args.dir))
    server = Server(base, args.profile)
    try:
        new = server.make_mailbox()
        tls = None
        if args.tls:
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        # One warm-up message so imports, the database and the Maildir folders are ready.
        asyncio.run(run_throughput(server.smtp_port, 1, 1, args.size, tls))
        warm = len(os.listdir(new))
        cpu_before = server.cpu_seconds()
        own_before = resource.getrusage(resource.RUSAGE_SELF)
        if args.rate:
            result = asyncio.run(run_rate(server.smtp_port, args.rate, args.messages, args.size,
                                          tls))
        else:
            result = asyncio.run(run_throughput(server.smtp_port, args.sessions, args.messages,
                                                args.size, tls))
        own_after = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = server.cpu_seconds() - cpu_before
        hwm_kb = server.status_kb("VmHWM")
        on_disk = len(os.listdir(new)) - warm
        lat = sorted(result.latencies)
        whole = sorted(result.transactions)
        report = {
            "run": run,
            "mode": f"rate {args.rate:g}/s" if args.rate else f"{args.sessions} sessions",
            "tls": bool(args.tls),
            "messages": args.messages,
            "accepted_250": len(lat),
            "files_in_new": on_disk,
            "errors": len(result.errors),
            "elapsed_s": round(result.elapsed, 3),
            "msgs_per_s_on_disk": round(on_disk / result.elapsed, 1),
            "p50_ms": round(percentile(lat, 50) * 1000, 2),
            "p90_ms": round(percentile(lat, 90) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2) if lat else None,
            "transaction_p50_ms": round(percentile(whole, 50) * 1000, 2),
            "transaction_p99_ms": round(percentile(whole, 99) * 1000, 2),
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_per_msg_ms": round(server_cpu / max(1, len(lat)) * 1000, 3),
            "server_cpu_util_pct": round(server_cpu / result.elapsed * 100, 1),
            "server_peak_rss_mb": round(hwm_kb / 1024, 1),
            "loadgen_cpu_s": round((own_after.ru_utime - own_before.ru_utime)
                                   + (own_after.ru_stime - own_before.ru_stime), 2),
        }
        if result.errors:
            report["first_errors"] = sorted(set(result.errors))[:5]
        if on_disk != len(lat):
            report["MISMATCH"] = "files in new/ differ from the 250s received"
        return report
    finally:
        server.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions")
    parser.add_argument("--messages", type=int, default=3000, help="messages to send in all")
    parser.add_argument("--rate", type=float, default=0,
                        help="send at this fixed rate (messages/s) instead of as fast as possible")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--tls", action="store_true", help="STARTTLS on every connection")
    parser.add_argument("--runs", type=int, default=1, help="repeat on a fresh server")
    parser.add_argument("--dir", type=Path, help="where to put the data folder (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder and log")
    parser.add_argument("--profile", type=Path,
                        help="run twistd under cProfile and save the stats to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run")
    args = parser.parse_args()
    failed = False
    for run in range(1, args.runs + 1):
        report = one_run(args, run)
        failed |= "MISMATCH" in report or report["accepted_250"] != args.messages
        if args.json:
            print(json.dumps(report), flush=True)
        else:
            print(f"run {run}: {report['mode']}{' TLS' if report['tls'] else ''}, "
                  f"{report['accepted_250']}/{report['messages']} accepted, "
                  f"{report['files_in_new']} files in new/, {report['errors']} errors\n"
                  f"  {report['msgs_per_s_on_disk']} msg/s on disk over {report['elapsed_s']} s; "
                  f"final 250 latency p50 {report['p50_ms']} ms, p90 {report['p90_ms']} ms, "
                  f"p99 {report['p99_ms']} ms, max {report['max_ms']} ms; whole transaction "
                  f"(connect to 250) p50 {report['transaction_p50_ms']} ms, "
                  f"p99 {report['transaction_p99_ms']} ms\n"
                  f"  server CPU {report['server_cpu_s']} s "
                  f"({report['server_cpu_per_msg_ms']} ms/msg, {report['server_cpu_util_pct']}% "
                  f"of one core), peak RSS {report['server_peak_rss_mb']} MB; "
                  f"load generator CPU {report['loadgen_cpu_s']} s", flush=True)
            for error in report.get("first_errors", []):
                print(f"  error: {error}")
            if "MISMATCH" in report:
                print(f"  {report['MISMATCH']}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
