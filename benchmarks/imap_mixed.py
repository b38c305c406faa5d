"""How many IMAP operations/s the real server serves to C concurrent clients doing a mixed workload.

Starts `twistd -n cloudmail` as a subprocess on a fresh data folder for each client count (only
the `imap`, `imaps` and `admin` listeners, on loopback), makes users and mailboxes through the
admin API — one per client, or with `--shared` a single one for all — and writes `--messages`
varied ≈2–4 KB messages into each INBOX's Maildir `cur/` directly. Each client is a cheap asyncio
connection (raw lines, no threads: the load generator shares the 2 cores with the server) that
logs in (STARTTLS, or `--imaps`), SELECTs INBOX and lists its UIDs — all untimed — and then, for
`--seconds`, runs one command at a time (no pipelining), picked at random with these weights:

    SELECT INBOX                                     1
    UID FETCH u:u+49 (FLAGS)                         3   (a range of flags)
    UID FETCH u BODY.PEEK[]                          3   (one whole message)
    UID STORE u +FLAGS (\\Seen) / -FLAGS (\\Seen)      2
    UID SEARCH UNSEEN                                1
    APPEND INBOX {n+} (a ≈600-byte message)          1
    UID STORE u +FLAGS.SILENT (\\Deleted), then
        UID EXPUNGE u (one the client appended)      1   (two operations: store_deleted, expunge)

Every command is one operation; its latency runs from writing it to reading its tagged answer,
which must be OK (a NO or BAD counts as an error and is listed). Reported per client count:
operations/s in total and per kind, latency p50/p99 (all and per kind), the server's CPU time
during the run (user+system, all threads, /proc/<pid>/stat) and its RSS at the end and peak
(VmHWM), and the load generator's own CPU time. Target: above 900 operations/s at 10 and at 100
clients on a 2-core machine, load generator included.

    timeout 1200 .venv/bin/python benchmarks/imap_mixed.py [--clients 10,100] [--seconds 30]
        [--messages 1000] [--shared] [--imaps] [--dir PATH] [--keep] [--profile FILE] [--json]

It imports the server, message and client helpers from harness.py next to it. The exit
status is 1 when a command failed, a client lost its connection or the server logged an error.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import ssl
import sys
import time
from pathlib import Path

# harness.py is next to this script: its folder goes first on sys.path however it was started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DOMAIN,
    Imap,
    ImapError,
    MessageMaker,
    Server,
    add_output_options,
    emit,
    fill_maildir,
    fresh_server,
    own_cpu_seconds,
    percentile,
    print_lists,
    tls_context,
)

KINDS = ("select", "fetch_flags", "fetch_body", "store", "search", "append", "store_deleted",
         "expunge")
WEIGHTS = {"select": 1, "fetch_flags": 3, "fetch_body": 3, "store": 2, "search": 1, "append": 1,
           "delete": 1}
SMALL = (b"From: Load <load@client.test>\r\nTo: bench@bench.example\r\n"
         b"Subject: small appended message %d\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
         b"Message-ID: <append-%d@client.test>\r\n\r\n"
         + b"A short message appended by the benchmark, a few lines long.\r\n" * 8)


class Stats:
    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors: list[str] = []
        self.lost: list[str] = []


class Client:
    """One logged-in session and the UIDs it works on."""

    def __init__(self, imap: Imap, rng: random.Random, number: int) -> None:
        self.imap = imap
        self.rng = rng
        self.number = number
        self.uids: list[int] = []
        self.appended: list[int] = []
        self.sent = 0

    async def setup(self) -> None:
        await self.imap.check(b"SELECT INBOX", keep=False)
        found = await self.imap.check(b"UID SEARCH ALL")
        for line in found:
            if line.startswith(b"* SEARCH"):
                self.uids = [int(u) for u in line.split()[2:]]
        if not self.uids:
            raise ImapError("UID SEARCH ALL found no messages")

    async def op(self, kind: str, text: bytes, stats: Stats, keep: bool = False) -> bytes | None:
        started = time.perf_counter()
        untagged, done = await self.imap.command(text, keep=keep)
        took = time.perf_counter() - started
        if done.split(b" ", 2)[1:2] != [b"OK"]:
            stats.errors.append(f"{kind}: {text[:70]!r} -> {done.strip()[:200]!r}")
            return None
        stats.latencies[kind].append(took)
        if keep and kind == "fetch_body" and not any(b"BODY[] {" in line[:60] for line in untagged):
            stats.errors.append(f"fetch_body: no BODY[] literal in the answer to {text!r}: "
                                f"{[line[:100] for line in untagged]!r} {done.strip()!r}")
        return done

    async def step(self, stats: Stats) -> None:
        rng = self.rng
        kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        if kind == "delete" and not self.appended:
            kind = "append"
        if kind == "select":
            await self.op(kind, b"SELECT INBOX", stats)
        elif kind == "fetch_flags":
            first = rng.choice(self.uids)
            await self.op(kind, b"UID FETCH %d:%d (FLAGS)" % (first, first + 49), stats)
        elif kind == "fetch_body":
            await self.op(kind, b"UID FETCH %d BODY.PEEK[]" % rng.choice(self.uids), stats,
                          keep=True)
        elif kind == "store":
            sign = b"+" if rng.random() < 0.5 else b"-"
            await self.op(kind, b"UID STORE %d %sFLAGS (\\Seen)" % (rng.choice(self.uids), sign),
                          stats)
        elif kind == "search":
            await self.op(kind, b"UID SEARCH UNSEEN", stats)
        elif kind == "append":
            self.sent += 1
            body = SMALL % (self.number * 1_000_000 + self.sent, self.number * 1_000_000
                            + self.sent)
            done = await self.op(kind, b"APPEND INBOX {%d+}\r\n%s" % (len(body), body), stats)
            m = re.search(rb"APPENDUID \d+ (\d+)", done or b"")
            if m:
                self.appended.append(int(m.group(1)))
            elif done is not None:
                stats.errors.append(f"append: no APPENDUID in {done.strip()!r}")
        else:
            uid = self.appended.pop(0)
            if await self.op("store_deleted", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid,
                             stats) is not None:
                await self.op("expunge", b"UID EXPUNGE %d" % uid, stats)


async def open_clients(server: Server, args: argparse.Namespace, count: int,
                       addresses: list[str]) -> list[Client]:
    context = tls_context()
    port = server.ports["imaps" if args.imaps else "imap"]
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> Client:
        async with gate:
            imap = await Imap.connect(port, args.imaps, context)
            await imap.login(addresses[i % len(addresses)])
            client = Client(imap, random.Random(i), i)
            await client.setup()
            return client
    # The first session of each mailbox logs in alone: a second login to the same mailbox while
    # the first is still opening its account gets a session whose SELECT fails with
    # `NO [SERVERBUG]` ("the account is not open", a race in MailAccounts.open).
    first = await asyncio.gather(*(one(i) for i in range(min(count, len(addresses)))))
    rest = await asyncio.gather(*(one(i) for i in range(len(first), count)))
    return [*first, *rest]


async def drive(clients: list[Client], seconds: float, stats: Stats) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def work(client: Client) -> None:
        try:
            while loop.time() < deadline:
                await client.step(stats)
        except (ImapError, ConnectionError, OSError, ssl.SSLError,
                asyncio.IncompleteReadError) as e:
            stats.lost.append(f"client {client.number}: {type(e).__name__}: {e}")

    started = loop.time()
    await asyncio.gather(*(work(c) for c in clients))
    return loop.time() - started


def one_run(args: argparse.Namespace, count: int) -> dict:
    profile = args.profile.with_name(f"{args.profile.name}.{count}") if args.profile else None
    stats = Stats()
    report: dict = {"clients": count, "mailboxes": 1 if args.shared else count,
                    "messages_per_mailbox": args.messages,
                    "tls": "imaps" if args.imaps else "starttls", "seconds": args.seconds}
    with fresh_server(args, "imap-mixed-", ("imap", "imaps"), 1024, profile=profile) as server:
        mailboxes = 1 if args.shared else count
        addresses = []
        maker = MessageMaker()
        started = time.perf_counter()
        for i in range(mailboxes):
            local = f"bench{i}"
            maildir = server.make_mailbox(local, domain=i == 0)
            fill_maildir(maildir, args.messages, maker, start=i * args.messages)
            addresses.append(f"{local}@{DOMAIN}")
        report["setup_s"] = round(time.perf_counter() - started, 1)

        async def main() -> float:
            started = time.perf_counter()
            clients = await open_clients(server, args, count, addresses)
            report["login_select_s"] = round(time.perf_counter() - started, 1)
            report["rss_before_mb"] = server.memory_mb("VmRSS")
            cpu = server.cpu_seconds()
            own = own_cpu_seconds()
            elapsed = await drive(clients, args.seconds, stats)
            loadgen_cpu = own_cpu_seconds() - own
            report["server_cpu_s"] = round(server.cpu_seconds() - cpu, 1)
            report["loadgen_cpu_s"] = round(loadgen_cpu, 1)
            await asyncio.gather(*(c.imap.logout() for c in clients))
            return elapsed

        try:
            elapsed = asyncio.run(asyncio.wait_for(main(), args.seconds + 600))
        except (ImapError, ConnectionError, OSError, ssl.SSLError) as e:
            stats.lost.append(f"setup: {type(e).__name__}: {e}")
            elapsed = 0.0
        except TimeoutError:
            stats.lost.append("the run did not finish within --seconds + 600 s (a hang?)")
            elapsed = 0.0
        report["elapsed_s"] = round(elapsed, 1)
        total = sum(len(v) for v in stats.latencies.values())
        report["operations"] = total
        report["ops_per_s"] = round(total / elapsed, 1) if elapsed else 0.0
        report["target_900_met"] = report["ops_per_s"] > 900
        every = sorted(x for v in stats.latencies.values() for x in v)
        report["p50_ms"] = round(percentile(every, 50) * 1000, 2)
        report["p99_ms"] = round(percentile(every, 99) * 1000, 2)
        report["per_kind"] = {
            kind: {"ops_per_s": round(len(v) / elapsed, 1) if elapsed else 0.0,
                   "p50_ms": round(percentile(sorted(v), 50) * 1000, 2),
                   "p99_ms": round(percentile(sorted(v), 99) * 1000, 2)}
            for kind, v in stats.latencies.items()}
        if elapsed:
            report["server_cpu_pct_of_one_core"] = round(report.get("server_cpu_s", 0)
                                                         / elapsed * 100, 1)
        report["server_rss_end_mb"] = server.memory_mb("VmRSS")
        report["server_peak_rss_mb"] = server.memory_mb("VmHWM")
        report["errors"] = len(stats.errors)
        report["first_errors"] = sorted(set(stats.errors))[:8]
        report["lost_clients"] = stats.lost[:8]
        if exited := server.exit_problem():
            report["lost_clients"].append(exited)
        report["server_log_problems"] = server.log_problems()
    return report


def print_report(r: dict) -> None:
    print(f"{r['clients']} clients on {r['mailboxes']} mailbox(es) of {r['messages_per_mailbox']} "
          f"messages, {r['tls']}, {r['elapsed_s']} s (setup {r.get('setup_s')} s, login+select "
          f"{r.get('login_select_s')} s)")
    print(f"  {r['operations']} operations, {r['ops_per_s']} ops/s "
          f"(target >900: {'met' if r['target_900_met'] else 'NOT met'}); latency p50 "
          f"{r['p50_ms']} ms, p99 {r['p99_ms']} ms; {r['errors']} errors")
    for kind, k in r["per_kind"].items():
        print(f"    {kind:<14} {k['ops_per_s']:>8} ops/s   p50 {k['p50_ms']:>8} ms   "
              f"p99 {k['p99_ms']:>8} ms")
    print(f"  server CPU {r.get('server_cpu_s')} s ({r.get('server_cpu_pct_of_one_core')}% of "
          f"one core), RSS before {r.get('rss_before_mb')} MB, end {r['server_rss_end_mb']} MB, "
          f"peak {r['server_peak_rss_mb']} MB; load generator CPU {r.get('loadgen_cpu_s')} s")
    print_lists(r, {"first_errors": "error", "lost_clients": "lost",
                    "server_log_problems": "server log"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,100",
                        help="client counts to run, comma-separated (a fresh server for each)")
    parser.add_argument("--seconds", type=float, default=30, help="length of each run")
    parser.add_argument("--messages", type=int, default=1000, help="messages per mailbox")
    parser.add_argument("--shared", action="store_true",
                        help="every client logs in to the same mailbox (default: one each)")
    parser.add_argument("--imaps", action="store_true",
                        help="implicit TLS on the imaps listener instead of STARTTLS on imap")
    add_output_options(parser, "print one JSON object per run",
                       "run twistd under cProfile and save the stats to FILE.<clients>")
    args = parser.parse_args()
    failed = False
    for count in (int(c) for c in args.clients.split(",")):
        report = one_run(args, count)
        failed |= bool(report["errors"] or report["lost_clients"]
                       or report["server_log_problems"])
        emit(report, args.json, print_report)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
