"""What an idle IMAP connection costs the real server: RSS per IDLE session, plain and TLS.

For each connection count K (default 1,000 and 10,000) and each mode — `starttls` (the `imap`
listener, STARTTLS then LOGIN) and `imaps` (implicit TLS) — starts `twistd -n cloudmail` as a
subprocess on a fresh data folder (only `imap`, `imaps` and `admin`, on loopback), makes one user
and mailbox through the admin API and writes `--messages` messages into its INBOX `cur/`. One
warm-up session logs in, SELECTs INBOX and IDLEs (so the account, the folder and TLS are loaded
before the baseline), then the server's VmRSS is read; K more connections are opened by a cheap
asyncio client (`--parallel` at a time), each logging in as bench@bench.example, SELECTing INBOX
and sending IDLE until `+ idling`. After `--settle` seconds VmRSS is read again:

    RSS per idle connection = (VmRSS after − VmRSS before) / K        target: under 50 KB

(VmRSS is user-space memory only; the kernel's socket buffers are not in it.) Then a message is
dropped into the INBOX's `new/` (written in `tmp/`, renamed into `new/`, as an MDA does); the
server sees files from other programs through its 1-second poll of folders with IDLE sessions,
and every idle client (or a `--sample` of them) must get `* n EXISTS` within `--wait` seconds;
the delay from the drop is reported (p50, max). All connections are then closed.

The script raises its own RLIMIT_NOFILE soft limit to the hard limit (the server, its child,
inherits it); K needs about K + 100 descriptors in each process, so a K above the hard limit is
lowered, with a warning.

    timeout 3600 .venv/bin/python benchmarks/imap_idle.py [--connections 1000,10000]
        [--modes starttls,imaps] [--parallel 100] [--sample 0] [--dir PATH] [--keep] [--json]

Logins are the slow part of setting up (an argon2 hash check each, ≈20 ms of server CPU). It
imports the server, message and client helpers from harness.py next to it. The exit status
is 1 when a connection failed, a sampled client missed the delivery or the server logged an error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import ssl
import sys
import time
from pathlib import Path

# harness.py is next to this script: its folder goes first on sys.path however it was started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    Imap,
    ImapError,
    MessageMaker,
    Server,
    add_output_options,
    emit,
    fill_maildir,
    fresh_server,
    percentile,
    print_lists,
    tls_context,
)


def raise_nofile(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (at most the hard limit); (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def open_idle(port: int, implicit_tls: bool, context: ssl.SSLContext) -> Imap:
    """A session logged in, INBOX selected, in IDLE (after `+ idling`)."""
    client = await Imap.connect(port, implicit_tls, context)
    await client.login()
    await client.check(b"SELECT INBOX", keep=False)
    client.count += 1
    client.writer.write(b"i%d IDLE\r\n" % client.count)
    while True:
        line = await client.read_response()
        if line.startswith(b"+"):
            return client
        if not line.startswith(b"*"):
            raise ImapError(f"IDLE answered {line.strip()!r}")


async def wait_exists(client: Imap, dropped: list[float], timeout: float) -> float | None:
    """Seconds from the drop to this client's `* n EXISTS`, or None if it did not come."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                line = await client.read_response()
                if line.startswith(b"* ") and line.rstrip().endswith(b" EXISTS"):
                    return time.perf_counter() - dropped[0]
    except (TimeoutError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
        return None


def drop_message(maildir: Path, maker: MessageMaker) -> None:
    """Deliver one message as another program would: write in tmp/, rename into new/."""
    data = maker.message(999_999)
    name = f"{int(time.time())}.M999999P{os.getpid()}.drop,S={len(data)}"
    tmp = maildir / "tmp" / name
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, maildir / "new" / name)


async def measure(server: Server, maildir: Path, args: argparse.Namespace, count: int,
                  mode: str, report: dict) -> None:
    implicit = mode == "imaps"
    port = server.ports["imaps" if implicit else "imap"]
    context = tls_context()
    warmup = await open_idle(port, implicit, context)
    # A few sessions opened and closed, so one-time costs (imports, caches) are paid already.
    for c in await asyncio.gather(*(open_idle(port, implicit, context) for _ in range(10))):
        c.close()
    await asyncio.sleep(args.settle)
    before = server.status_kb("VmRSS")
    report["rss_before_mb"] = round(before / 1024, 1)

    gate = asyncio.Semaphore(args.parallel)
    failures: list[str] = []

    async def one(i: int) -> Imap | None:
        async with gate:
            try:
                return await open_idle(port, implicit, context)
            except (ImapError, ConnectionError, OSError, ssl.SSLError,
                    asyncio.IncompleteReadError) as e:
                failures.append(f"connection {i}: {type(e).__name__}: {e}")
                return None

    cpu = server.cpu_seconds()
    started = time.perf_counter()
    opened = await asyncio.gather(*(one(i) for i in range(count)))
    clients = [c for c in opened if c is not None]
    took = time.perf_counter() - started
    report["open_s"] = round(took, 1)
    report["sessions_per_s"] = round(len(clients) / took, 1)
    report["open_server_cpu_s"] = round(server.cpu_seconds() - cpu, 1)
    report["idle_connections"] = len(clients)
    report["failed_connections"] = len(failures)
    report["first_failures"] = failures[:5]
    await asyncio.sleep(args.settle)
    after = server.status_kb("VmRSS")
    report["rss_after_mb"] = round(after / 1024, 1)
    report["rss_per_connection_kb"] = round((after - before) / max(1, len(clients)), 1)
    report["target_50kb_met"] = report["rss_per_connection_kb"] < 50

    sample = clients if not args.sample else random.Random(1).sample(
        clients, min(args.sample, len(clients)))
    dropped = [time.perf_counter()]
    waits = [asyncio.ensure_future(wait_exists(c, dropped, args.wait)) for c in sample]
    await asyncio.sleep(0.05)
    dropped[0] = time.perf_counter()
    drop_message(maildir, MessageMaker(seed=7))
    delays = await asyncio.gather(*waits)
    got = sorted(d for d in delays if d is not None)
    report["delivery_sampled"] = len(sample)
    report["delivery_seen"] = len(got)
    report["delivery_p50_ms"] = round(percentile(got, 50) * 1000, 1) if got else None
    report["delivery_max_ms"] = round(got[-1] * 1000, 1) if got else None
    report["rss_peak_mb"] = server.memory_mb("VmHWM")

    for c in clients:
        c.close()
    warmup.close()
    await asyncio.sleep(1)


def one_run(args: argparse.Namespace, count: int, mode: str) -> dict:
    report: dict = {"connections": count, "mode": mode}
    problems: list[str] = []
    with fresh_server(args, "imap-idle-", ("imap", "imaps"), 1024) as server:
        maildir = server.make_mailbox()
        fill_maildir(maildir, args.messages, MessageMaker())
        try:
            asyncio.run(asyncio.wait_for(measure(server, maildir, args, count, mode, report),
                                         args.timeout))
        except (ImapError, ConnectionError, OSError, ssl.SSLError) as e:
            problems.append(f"{type(e).__name__}: {e}")
        except TimeoutError:
            problems.append(f"did not finish in {args.timeout} s (a hang?)")
        if exited := server.exit_problem():
            problems.append(exited)
        if report.get("failed_connections"):
            problems.append(f"{report['failed_connections']} connections failed")
        if report.get("delivery_seen", 0) != report.get("delivery_sampled", -1):
            problems.append(f"only {report.get('delivery_seen')} of "
                            f"{report.get('delivery_sampled')} idle clients saw the delivery "
                            f"within {args.wait} s")
        report["server_log_problems"] = server.log_problems()
    report["problems"] = problems
    return report


def print_report(r: dict) -> None:
    print(f"{r['connections']} idle connections, {r['mode']}: {r.get('idle_connections')} open "
          f"in {r.get('open_s')} s ({r.get('sessions_per_s')} sessions/s, server CPU "
          f"{r.get('open_server_cpu_s')} s), {r.get('failed_connections')} failed")
    if "rss_per_connection_kb" in r:
        print(f"  server RSS {r['rss_before_mb']} -> {r['rss_after_mb']} MB: "
              f"{r['rss_per_connection_kb']} KB per idle connection (target <50 KB: "
              f"{'met' if r['target_50kb_met'] else 'NOT met'}); peak {r.get('rss_peak_mb')} MB")
    if "delivery_sampled" in r:
        print(f"  delivery dropped into new/: seen by {r['delivery_seen']} of "
              f"{r['delivery_sampled']} idle clients, delay p50 {r['delivery_p50_ms']} ms, max "
              f"{r['delivery_max_ms']} ms")
    print_lists(r, {"first_failures": "failure", "problems": "PROBLEM",
                    "server_log_problems": "server log"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="1000,10000",
                        help="idle connection counts, comma-separated (a fresh server for each)")
    parser.add_argument("--modes", default="starttls,imaps",
                        help="starttls (imap listener), imaps (implicit TLS), or both")
    parser.add_argument("--messages", type=int, default=100, help="messages in INBOX")
    parser.add_argument("--parallel", type=int, default=100,
                        help="connections being set up at a time")
    parser.add_argument("--sample", type=int, default=0,
                        help="idle clients checked for the delivery (0: all)")
    parser.add_argument("--wait", type=float, default=10,
                        help="seconds a client may take to see the delivery")
    parser.add_argument("--settle", type=float, default=2,
                        help="seconds to wait before reading VmRSS")
    parser.add_argument("--timeout", type=float, default=1800, help="give up on a run after this")
    add_output_options(parser, "print one JSON object per run")
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    soft, hard = raise_nofile(max(counts) + 200)
    if max(counts) + 200 > soft:
        print(f"warning: RLIMIT_NOFILE is {soft} (hard limit {hard}), too low for "
              f"{max(counts)} connections; counts are capped at {soft - 200}", file=sys.stderr)
        counts = [min(c, soft - 200) for c in counts]
    failed = False
    for count in counts:
        for mode in args.modes.split(","):
            report = one_run(args, count, mode)
            report["rlimit_nofile"] = [soft, hard]
            failed |= bool(report["problems"] or report["server_log_problems"])
            emit(report, args.json, print_report)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
