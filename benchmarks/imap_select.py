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
        [--imaps] [--timeout 900] [--dir PATH] [--keep] [--json]

The server, the messages and the IMAP client come from harness.py next to it. The exit status is
1 when a command failed or a count did not match.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys
import time
from collections.abc import Callable
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


def exists_of(untagged: list[bytes]) -> int | None:
    for line in untagged:
        m = re.match(rb"\* (\d+) EXISTS", line)
        if m:
            return int(m.group(1))
    return None


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def spread(times: list[float]) -> dict[str, float]:
    """p50, min and max of sorted timings, in ms."""
    return {"p50": ms(percentile(times, 50)), "min": ms(times[0]), "max": ms(times[-1])}


async def timed(client: Imap, text: bytes) -> tuple[float, list[bytes]]:
    started = time.perf_counter()
    untagged = await client.check(text)
    return time.perf_counter() - started, untagged


def fetch_count(untagged: list[bytes]) -> int:
    return sum(1 for line in untagged if b" FETCH (" in line[:40])


async def measure(server: Server, args: argparse.Namespace, report: dict,
                  problems: list[str]) -> None:
    context = tls_context()
    port = server.ports["imaps" if args.imaps else "imap"]
    n = args.messages
    rss = report["rss_mb"]

    def note_rss(phase: str) -> None:
        rss[phase] = server.memory_mb("VmRSS")

    def expect(what: str, got: int | None) -> None:
        if got != n:
            problems.append(f"{what}: expected {n}, got {got}")

    async def repeated(text: bytes, what: str, count: Callable[[list[bytes]], int | None],
                       before: bytes | None = None) -> list[float]:
        """`text` timed `--repeat` times (each after `before`, not timed), every answer checked
        with `expect(what, count(…))`; the times, sorted."""
        times = []
        for _ in range(args.repeat):
            if before is not None:
                await client.check(before)
            took, untagged = await timed(client, text)
            times.append(took)
            expect(what, count(untagged))
            del untagged  # a FETCH 1:* answer is large: not kept while the next is read
        return sorted(times)

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
    warm = await repeated(b"SELECT INBOX", "EXISTS of a warm SELECT", exists_of,
                          before=b"UNSELECT")
    report["warm_select_ms"] = spread(warm)
    # SELECT while a folder is selected, as clients switch folders: the server writes
    # `* OK [CLOSED]` at once and the rest after opening the folder, and without TCP_NODELAY the
    # second write can wait for the client's delayed ACK (≈40 ms on Linux).
    report["reselect_ms"] = spread(await repeated(b"SELECT INBOX",
                                                  "EXISTS of a SELECT while selected", exists_of))
    # The target is for 100,000 messages; with fewer it says nothing.
    report["warm_select_target_met"] = percentile(warm, 50) < 0.2 if n >= 100_000 else None

    report["fetch_flags_ms"] = spread(await repeated(
        b"FETCH 1:* (FLAGS UID)", "responses to FETCH 1:* (FLAGS UID)", fetch_count))

    cpu = server.cpu_seconds()
    took, untagged = await timed(client, b"FETCH 1:* (ENVELOPE)")
    report["fetch_envelope_cold_ms"] = ms(took)
    report["fetch_envelope_cold_server_cpu_s"] = round(server.cpu_seconds() - cpu, 2)
    report["envelope_response_mb"] = round(sum(map(len, untagged)) / 1e6, 1)
    expect("responses to the cold FETCH 1:* (ENVELOPE)", fetch_count(untagged))
    del untagged
    note_rss("after_envelope_cold")
    report["fetch_envelope_warm_ms"] = spread(await repeated(
        b"FETCH 1:* (ENVELOPE)", "responses to a warm FETCH 1:* (ENVELOPE)", fetch_count))
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
    report["reopened_select_ms"] = spread(sorted(reopened))
    note_rss("end")


def run(args: argparse.Namespace) -> dict:
    problems: list[str] = []
    report: dict = {"messages": args.messages, "tls": "imaps" if args.imaps else "starttls",
                    "repeat": args.repeat, "rss_mb": {}}
    with fresh_server(args, "imap-select-", ("imap", "imaps"), 1024) as server:
        maildir = server.make_mailbox()
        report["rss_mb"]["after_start"] = server.memory_mb("VmRSS")
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
        report["server_peak_rss_mb"] = server.memory_mb("VmHWM")
        report["server_cpu_total_s"] = round(server.cpu_seconds(), 1)
        if exited := server.exit_problem():
            problems.append(exited)
        log = server.log_problems()
        if log:
            report["server_log_problems"] = log
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
    print_lists(r, {"problems": "PROBLEM", "server_log_problems": "server log"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages in INBOX")
    parser.add_argument("--repeat", type=int, default=7, help="repeats of each warm measure")
    parser.add_argument("--imaps", action="store_true",
                        help="implicit TLS on the imaps listener instead of STARTTLS on imap")
    parser.add_argument("--timeout", type=float, default=900,
                        help="give up on the IMAP phases after this many seconds")
    add_output_options(parser, "print one JSON object")
    args = parser.parse_args()
    report = run(args)
    emit(report, args.json, print_report)
    sys.exit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
