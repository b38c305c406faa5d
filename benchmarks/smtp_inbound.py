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

The server, its /proc readings and the report plumbing come from harness.py next to it. The exit
status is 1 when a message was not accepted or the files in `new/` do not match.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import ssl
import sys
import time
from pathlib import Path

# harness.py is next to this script: its folder goes first on sys.path however it was started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DOMAIN,
    SmtpError,
    expect,
    read_reply,
    LOCAL,
    add_output_options,
    emit,
    fresh_server,
    own_cpu_seconds,
    percentile,
    print_lists,
    tls_context,
)

# No DNS work (DNSBL, iprev, SPF/DKIM/DMARC): it would measure the resolver, not the server, and
# with no reachable name server every message would wait out the DNS timeout. Every session comes
# from 127.0.0.1, so the per-IP connection limit (default 20) is raised: a client reconnecting
# right after QUIT can otherwise race the server's count and get 421.
SMTP_SETTINGS = {"smtp": {"dnsbl_zones": [], "iprev": False, "authenticate": False,
                          "max_connections_per_ip": 10_000}}


#: A typical user's filter for `--sieve`: lists, senders and subjects sorted into folders, a
#: flag for one sender; nothing matches the benchmark's messages, so each is kept in INBOX
#: after every test has run.
SIEVE_SCRIPT = """require ["fileinto", "imap4flags", "mailbox", "variables", "envelope"];
if exists "list-id" { fileinto :create "Lists"; stop; }
if header :contains "subject" ["[SPAM]", "viagra", "lottery"] { fileinto "Spam"; stop; }
if address :domain "from" ["github.com", "gitlab.com"] { fileinto :create "Dev"; stop; }
if envelope :localpart "from" "noreply" { fileinto :create "Notifications"; stop; }
if header :matches "subject" "Invoice *" { set "n" "${1}"; fileinto :create "Bills"; stop; }
if address :is "from" "boss@example.com" { addflag "\\\\Flagged"; }
if size :over 10M { fileinto :create "Big"; stop; }
"""


def message(size: int, n: int) -> bytes:
    """An RFC 5322 message of about `size` bytes, CRLF line ends, dot-stuffing not needed."""
    head = (f"From: load@client.test\r\nTo: {LOCAL}@{DOMAIN}\r\nSubject: benchmark {n}\r\n"
            f"Message-ID: <bench-{n}@client.test>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


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


def one_run(args: argparse.Namespace, run: int) -> dict:
    with fresh_server(args, "smtp-bench-", ("smtp",), 512, SMTP_SETTINGS,
                      args.profile) as server:
        maildir = server.make_mailbox()
        if args.sieve:
            from cloudmail.sieve.scripts import ScriptStore
            store = ScriptStore(maildir)
            store.put("bench", SIEVE_SCRIPT)
            store.set_active("bench")
        new = maildir / "new"
        port = server.ports["smtp"]
        tls = tls_context() if args.tls else None
        # One warm-up message so imports, the database and the Maildir folders are ready.
        asyncio.run(run_throughput(port, 1, 1, args.size, tls))
        warm = len(os.listdir(new))
        cpu_before = server.cpu_seconds()
        own_before = own_cpu_seconds()
        if args.rate:
            result = asyncio.run(run_rate(port, args.rate, args.messages, args.size, tls))
        else:
            result = asyncio.run(run_throughput(port, args.sessions, args.messages, args.size,
                                                tls))
        loadgen_cpu = own_cpu_seconds() - own_before
        server_cpu = server.cpu_seconds() - cpu_before
        peak_rss_mb = server.memory_mb("VmHWM")
        on_disk = len(os.listdir(new)) - warm
        lat = sorted(result.latencies)
        whole = sorted(result.transactions)
        report = {
            "run": run,
            "mode": f"rate {args.rate:g}/s" if args.rate else f"{args.sessions} sessions",
            "tls": bool(args.tls),
            "sieve": bool(args.sieve),
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
            "server_peak_rss_mb": peak_rss_mb,
            "loadgen_cpu_s": round(loadgen_cpu, 2),
        }
        if result.errors:
            report["first_errors"] = sorted(set(result.errors))[:5]
        if on_disk != len(lat):
            report["MISMATCH"] = "files in new/ differ from the 250s received"
        return report


def print_report(r: dict) -> None:
    print(f"run {r['run']}: {r['mode']}{' TLS' if r['tls'] else ''}{' with a Sieve filter' if r.get('sieve') else ''}, "
          f"{r['accepted_250']}/{r['messages']} accepted, "
          f"{r['files_in_new']} files in new/, {r['errors']} errors\n"
          f"  {r['msgs_per_s_on_disk']} msg/s on disk over {r['elapsed_s']} s; "
          f"final 250 latency p50 {r['p50_ms']} ms, p90 {r['p90_ms']} ms, "
          f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms; whole transaction "
          f"(connect to 250) p50 {r['transaction_p50_ms']} ms, "
          f"p99 {r['transaction_p99_ms']} ms\n"
          f"  server CPU {r['server_cpu_s']} s "
          f"({r['server_cpu_per_msg_ms']} ms/msg, {r['server_cpu_util_pct']}% "
          f"of one core), peak RSS {r['server_peak_rss_mb']} MB; "
          f"load generator CPU {r['loadgen_cpu_s']} s")
    print_lists(r, {"first_errors": "error"})
    if "MISMATCH" in r:
        print(f"  {r['MISMATCH']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions")
    parser.add_argument("--messages", type=int, default=3000, help="messages to send in all")
    parser.add_argument("--rate", type=float, default=0,
                        help="send at this fixed rate (messages/s) instead of as fast as possible")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--tls", action="store_true", help="STARTTLS on every connection")
    parser.add_argument("--sieve", action="store_true",
                        help="give the mailbox an active Sieve filter (SIEVE_SCRIPT)")
    parser.add_argument("--runs", type=int, default=1, help="repeat on a fresh server")
    add_output_options(parser, "print one JSON object per run",
                       "run twistd under cProfile and save the stats to this file")
    args = parser.parse_args()
    failed = False
    for run in range(1, args.runs + 1):
        report = one_run(args, run)
        failed |= "MISMATCH" in report or report["accepted_250"] != args.messages
        emit(report, args.json, print_report)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
