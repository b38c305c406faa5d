"""How fast the Maildir store delivers durably: N small messages to one mailbox from 2 threads.

Each delivery is the full path the SMTP server waits on before its `250`: write to `tmp/`, fsync
the file, link into `new/`, fsync `new/`. The messages come from one spooled file (as one message
to many recipients would), and the latency of each `deliver` call is measured in its thread.

    .venv/bin/python benchmarks/maildir_deliver.py [--messages N] [--threads T] [--size B]
        [--dir PATH] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cloudmail.address import Address
from cloudmail.mailstore.maildir import MaildirStore

MAILBOX = Address("bench", "bench.example")


def message(size: int) -> bytes:
    """A plain RFC 5322 message of about `size` bytes with CRLF line ends."""
    head = b"From: a@bench.example\r\nTo: bench@bench.example\r\nSubject: benchmark\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def percentile(sorted_values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of already sorted values."""
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--dir", type=Path, help="where to put the mail root (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the delivered files")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="maildir-bench-", dir=args.dir))
    store = MaildirStore(base / "mail")
    spool = base / "spool"
    spool.write_bytes(message(args.size))
    store.ensure_folder(MAILBOX)
    local = threading.local()
    sources = []

    def deliver(_: int) -> float:
        if not hasattr(local, "source"):
            local.source = spool.open("rb")  # a file object per thread: reads move its position
            sources.append(local.source)
        start = time.perf_counter()
        store.deliver(MAILBOX, local.source, prepend=b"Delivered-To: bench@bench.example\r\n")
        return time.perf_counter() - start

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            latencies = sorted(pool.map(deliver, range(args.messages)))
        elapsed = time.perf_counter() - started
        delivered = len(os.listdir(store.folder_path(MAILBOX) / "new"))
        assert delivered == args.messages, f"{delivered} files for {args.messages} messages"
        print(f"{args.messages} messages of {spool.stat().st_size} bytes, {args.threads} threads, "
              f"fsync on, in {base}")
        print(f"  {args.messages / elapsed:8.0f} messages/s ({elapsed:.2f} s)")
        print(f"  latency p50 {percentile(latencies, 50) * 1000:7.2f} ms   "
              f"p99 {percentile(latencies, 99) * 1000:7.2f} ms   "
              f"max {latencies[-1] * 1000:7.2f} ms   mean {statistics.fmean(latencies) * 1000:.2f} ms")
    finally:
        for source in sources:
            source.close()
        if not args.keep:
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
