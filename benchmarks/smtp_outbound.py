"""How fast submitted mail goes out: N messages submitted for a remote domain whose MX is a sink.

Starts `twistd -n cloudmail` as a subprocess on a fresh data folder (only the `submission` and
`admin` listeners, on loopback), a twisted.names DNS server in a subprocess of its own serving
`remote.example` (MX → mx.remote.example → 127.0.0.1) for the server's `[dns] nameservers`, and a
light asyncio SMTP sink in this process as that MX (`[queue] mx_port`). The domain is made
through the admin API, which gives it a DKIM key, so every message is signed on submission. Then
`--clients` concurrent submission sessions (STARTTLS, or implicit TLS with `--implicit-tls`, and
AUTH PLAIN) send `--messages` ≈2 KB messages, `--per-connection` of them per session before
reconnecting, like an application keeping its connection (`--per-connection 1`: one message per
connection). MAIL, RCPT and DATA are pipelined.

Each message carries a token header; the sink stamps its arrival, so that the report gives:

- submission: messages/s from the first connection to the last `250`, and the latency of the
  `250` after the final dot (p50/p99), which includes signing and the fsynced enqueue;
- end to end: delivered messages/s from the first submission to the last arrival at the sink,
  and the queue latency (the `250` to the client → the message at the sink) p50/p99/max;
- server CPU seconds (user+system, all threads) per message and peak/final RSS;
- that every message arrived (count, no loss), and how many arrived twice (none expected).

    .venv/bin/python benchmarks/smtp_outbound.py [--messages 3000] [--clients 20]
        [--per-connection 50] [--size 2048] [--implicit-tls] [--sink-tls]
        [--domain-concurrency 20] [--concurrency 100] [--dkim rsa|ed25519] [--runs 1] [--dir PATH] [--keep]
        [--profile FILE] [--json]

The exit status is 1 when a message was not accepted or did not arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
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
    PASSWORD,
    REPO,
    MessageMaker,
    add_output_options,
    dns_server,
    emit,
    fresh_server,
    own_cpu_seconds,
    percentile,
    print_lists,
    tls_context,
)

REMOTE = "remote.example"
ZONES = {REMOTE: {"MX": [[10, f"mx.{REMOTE}"]]}, f"mx.{REMOTE}": {"A": ["127.0.0.1"]}}
TOKEN_HEADER = b"X-Bench-Token: "
# No inbound DNS checks; every session comes from 127.0.0.1, so the per-IP limit is raised.
SMTP_SETTINGS = {"dnsbl_zones": [], "iprev": False, "authenticate": False,
                 "max_connections_per_ip": 10_000}


def now() -> float:
    """One clock for the clients and the sink (CLOCK_MONOTONIC, the same in every process)."""
    return time.monotonic()


# --- the messages ------------------------------------------------------------------------------

class Messages:
    """≈`size`-byte messages from the benchmark user to one remote recipient each, made from
    harness's paragraphs; a token header names each one. Dot-stuffing is never needed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.paragraphs = MessageMaker().paragraphs

    def make(self, n: int) -> tuple[str, bytes]:
        recipient = f"user{n % 997}@{REMOTE}"
        head = (f"From: Bench <{LOCAL}@{DOMAIN}>\r\nTo: <{recipient}>\r\n"
                f"Subject: outbound benchmark {n}\r\n"
                f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
                f"Message-ID: <out-{n}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
                f"Content-Type: text/plain; charset=utf-8\r\n").encode() \
            + TOKEN_HEADER + str(n).encode() + b"\r\n\r\n"
        body = b""
        i = n
        while len(head) + len(body) < self.size:
            body += self.paragraphs[i % len(self.paragraphs)]
            i += 7
        body = body[:max(0, self.size - len(head))]
        body = body[:body.rfind(b"\r\n") + 2] if b"\r\n" in body else b"x\r\n"
        return recipient, head + body


# --- the sink ----------------------------------------------------------------------------------

class Sink:
    """What the sink saw: arrival times per token, and the count of every message."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.arrivals: dict[int, list[float]] = {}
        self.untokened = 0
        self.messages = 0
        self.connections = 0
        self.waiter: asyncio.Future[None] | None = None
        self.expected = 0

    def arrived(self, data: bytes) -> None:
        self.messages += 1
        start = data.find(b"\n" + TOKEN_HEADER)
        if start < 0:
            self.untokened += 1
            return
        start += 1 + len(TOKEN_HEADER)
        token = int(data[start:data.index(b"\r\n", start)])
        self.arrivals.setdefault(token, []).append(now())
        if (self.waiter is not None and not self.waiter.done()
                and len(self.arrivals) >= self.expected):
            self.waiter.set_result(None)


class SinkProtocol(asyncio.Protocol):
    """A minimal ESMTP server: PIPELINING, 8BITMIME, optional STARTTLS; takes everything."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink.connections += 1
        self.transport.write(b"220 sink.remote.example ESMTP bench sink\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while self.buffer:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    if self.buffer.startswith(b".\r\n"):
                        end = -2
                    else:
                        break
                self.sink.arrived(bytes(self.buffer[:end + 2]))
                del self.buffer[:end + 5]
                self.in_data = False
                out.append(b"250 2.0.0 queued\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            line = bytes(self.buffer[:end])
            del self.buffer[:end + 2]
            verb = line[:4].upper()
            if verb == b"EHLO":
                extensions = [b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES"]
                if self.sink.tls is not None and not self.transport.get_extra_info("sslcontext"):
                    extensions.append(b"STARTTLS")
                out.append(b"250-sink.remote.example\r\n"
                           + b"".join(b"250-" + e + b"\r\n" for e in extensions[:-1])
                           + b"250 " + extensions[-1] + b"\r\n")
            elif verb == b"STAR" and self.sink.tls is not None:
                self.transport.write(b"".join(out) + b"220 2.0.0 go ahead\r\n")
                out = []
                asyncio.ensure_future(self._start_tls())
                return
            elif verb == b"DATA":
                out.append(b"354 go ahead\r\n")
                self.in_data = True
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                out.append(b"250 2.0.0 ok\r\n")
        if out:
            self.transport.write(b"".join(out))

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(self.transport, self, self.sink.tls, server_side=True)
        self.transport = transport
        self.buffer.clear()


def sink_tls() -> ssl.SSLContext:
    """A server context with a certificate for the sink from the tests' PKI."""
    import tempfile
    sys.path.insert(0, str(REPO))
    from tests.pki import Pki
    directory = Path(tempfile.mkdtemp(prefix="outbound-sink-"))
    cert = Pki().write(directory, "localhost")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


# --- the submission clients --------------------------------------------------------------------

@dataclasses.dataclass
class Load:
    submitted: dict[int, float]  # token → when its 250 came
    latencies: list[float]  # final dot → 250
    errors: list[str]
    started: float
    sessions: int = 0


async def session(port: int, implicit: bool, context: ssl.SSLContext, tokens, messages: Messages,
                  per_connection: int, load: Load) -> bool:
    """One submission session: log in, send up to `per_connection` messages; False when there
    was nothing left to send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   ssl=context if implicit else None)
    load.sessions += 1
    more = True
    try:
        await expect(reader, 220, "greeting")
        writer.write(b"EHLO app.client.test\r\n")
        await expect(reader, 250, "EHLO")
        if not implicit:
            writer.write(b"STARTTLS\r\n")
            await expect(reader, 220, "STARTTLS")
            await writer.start_tls(context)
            writer.write(b"EHLO app.client.test\r\n")
            await expect(reader, 250, "EHLO after STARTTLS")
        secret = base64.b64encode(f"\0{LOCAL}@{DOMAIN}\0{PASSWORD}".encode())
        writer.write(b"AUTH PLAIN " + secret + b"\r\n")
        await expect(reader, 235, "AUTH")
        for _ in range(per_connection):
            n = next(tokens, None)
            if n is None:
                more = False
                break
            recipient, body = messages.make(n)
            writer.write(b"MAIL FROM:<%s@%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                         % (LOCAL.encode(), DOMAIN.encode(), recipient.encode()))
            await expect(reader, 250, "MAIL")
            await expect(reader, 250, "RCPT")
            await expect(reader, 354, "DATA")
            writer.write(body)
            await writer.drain()
            dot = now()
            writer.write(b".\r\n")
            await expect(reader, 250, "end of data")
            done = now()
            load.latencies.append(done - dot)
            load.submitted[n] = done
        writer.write(b"QUIT\r\n")
        try:
            await asyncio.wait_for(read_reply(reader), 5)
        except (TimeoutError, SmtpError, ConnectionError):
            pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
    return more


async def submit_all(port: int, args: argparse.Namespace, first: int, count: int,
                     messages: Messages) -> Load:
    tokens = iter(range(first, first + count))
    context = tls_context()
    load = Load({}, [], [], now())

    async def client() -> None:
        while True:
            try:
                if not await session(port, args.implicit_tls, context, tokens, messages,
                                     args.per_connection, load):
                    return
            except (SmtpError, OSError, ssl.SSLError) as e:
                load.errors.append(f"{type(e).__name__}: {e}")
                if len(load.errors) > 100:
                    return

    await asyncio.gather(*(client() for _ in range(args.clients)))
    return load


# --- one run -----------------------------------------------------------------------------------

def settings(args: argparse.Namespace, dns_port: int, sink_port: int) -> dict:
    return {"smtp": SMTP_SETTINGS,
            "dns": {"nameservers": [f"127.0.0.1:{dns_port}"], "timeout": 2},
            "queue": {"mx_port": sink_port, "tls": "opportunistic" if args.sink_tls else "none",
                      "connect_timeout": 10, "timeout": 60, "concurrency": args.concurrency,
                      "domain_concurrency": args.domain_concurrency}}


async def wait_arrivals(sink: Sink, expected: int, patience: float) -> None:
    """Until `expected` distinct tokens have arrived, or nothing arrived for `patience` s."""
    sink.expected = expected
    while len(sink.arrivals) < expected:
        sink.waiter = asyncio.get_running_loop().create_future()
        before = len(sink.arrivals)
        try:
            await asyncio.wait_for(sink.waiter, patience)
        except TimeoutError:
            if len(sink.arrivals) == before:
                return


def queue_left(data: Path) -> int:
    return len(list((data / "queue").glob("*.json"))) if (data / "queue").is_dir() else 0


def use_ed25519_key(server) -> None:
    """Give the domain an Ed25519 key in place of the RSA one made with it (a diagnostic: what
    the rest of the way costs when signing is cheap)."""
    import json
    import urllib.request

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode("ascii")
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.admin_port}/api/v1/domains/{DOMAIN}", method="PATCH",
        data=json.dumps({"dkim_private_key": pem}).encode(),
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()


async def wait_queue_empty(data: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while queue_left(data) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def one_run(args: argparse.Namespace, run: int) -> dict:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    sink = Sink(sink_tls() if args.sink_tls else None)
    listener = loop.run_until_complete(loop.create_server(
        lambda: SinkProtocol(sink), "127.0.0.1", 0, backlog=1024))
    sink_port = listener.sockets[0].getsockname()[1]
    messages = Messages(args.size)
    listener_name = "submissions" if args.implicit_tls else "submission"
    try:
        with dns_server(ZONES) as dns_port, \
                fresh_server(args, "smtp-out-bench-", (listener_name,), 512,
                             settings(args, dns_port, sink_port), args.profile) as server:
            server.make_mailbox()
            if args.dkim == "ed25519":
                use_ed25519_key(server)
            port = server.ports[listener_name]
            # Warm-up: one message through, so imports, TLS, DNS and the queue folder are ready.
            warm = loop.run_until_complete(submit_all(port, argparse.Namespace(
                **{**vars(args), "clients": 1}), 10**9, 1, messages))
            loop.run_until_complete(wait_arrivals(sink, 1, 15))
            if warm.errors or not sink.arrivals:
                raise SystemExit(f"the warm-up message did not go through: {warm.errors} "
                                 f"{server.log_problems()}")
            sink.arrivals.clear()
            sink.messages = 0
            cpu_before = server.cpu_seconds()
            own_before = own_cpu_seconds()
            load = loop.run_until_complete(submit_all(port, args, 0, args.messages, messages))
            submit_end = now()
            loop.run_until_complete(wait_arrivals(sink, len(load.submitted), args.patience))
            last_arrival = max((t[0] for t in sink.arrivals.values()), default=now())
            server_cpu = server.cpu_seconds() - cpu_before
            loadgen_cpu = own_cpu_seconds() - own_before
            rss_mb, peak_rss_mb = server.memory_mb("VmRSS"), server.memory_mb("VmHWM")
            # The sink must keep answering (QUIT) while the server records and removes entries.
            loop.run_until_complete(wait_queue_empty(server.data, 10))
            left = queue_left(server.data)
            problems = [line for line in server.log_problems(50)
                        if not line.endswith(" delivered, 0 failed")][:5]
            exit_problem = server.exit_problem()
    finally:
        listener.close()
        loop.run_until_complete(listener.wait_closed())
        loop.close()

    accepted = len(load.submitted)
    arrived = set(sink.arrivals)
    missing = sorted(set(load.submitted) - arrived)
    unexpected = sorted(arrived - set(range(args.messages)))
    duplicates = sum(len(t) - 1 for t in sink.arrivals.values())
    queue_lat = sorted(sink.arrivals[n][0] - t for n, t in load.submitted.items()
                       if n in sink.arrivals)
    sub_lat = sorted(load.latencies)
    submit_elapsed = submit_end - load.started
    e2e_elapsed = last_arrival - load.started
    report = {
        "run": run,
        "clients": args.clients,
        "per_connection": args.per_connection,
        "tls": "implicit" if args.implicit_tls else "starttls",
        "sink_tls": bool(args.sink_tls),
        "dkim": args.dkim,
        "messages": args.messages,
        "size": args.size,
        "accepted_250": accepted,
        "arrived": len(arrived & set(load.submitted)),
        "missing": len(missing),
        "unexpected": len(unexpected) + sink.untokened,
        "duplicates": duplicates,
        "queue_left": left,
        "errors": len(load.errors),
        "sessions": load.sessions,
        "sink_connections": sink.connections,
        "submit_elapsed_s": round(submit_elapsed, 3),
        "submit_msgs_per_s": round(accepted / submit_elapsed, 1),
        "submit_p50_ms": round(percentile(sub_lat, 50) * 1000, 2),
        "submit_p99_ms": round(percentile(sub_lat, 99) * 1000, 2),
        "e2e_elapsed_s": round(e2e_elapsed, 3),
        "e2e_msgs_per_s": round(len(arrived) / e2e_elapsed, 1),
        "queue_p50_ms": round(percentile(queue_lat, 50) * 1000, 1),
        "queue_p99_ms": round(percentile(queue_lat, 99) * 1000, 1),
        "queue_max_ms": round(queue_lat[-1] * 1000, 1) if queue_lat else None,
        "server_cpu_s": round(server_cpu, 2),
        "server_cpu_per_msg_ms": round(server_cpu / max(1, accepted) * 1000, 3),
        "server_cpu_util_pct": round(server_cpu / e2e_elapsed * 100, 1),
        "server_rss_mb": rss_mb,
        "server_peak_rss_mb": peak_rss_mb,
        "loadgen_cpu_s": round(loadgen_cpu, 2),
    }
    if load.errors:
        report["first_errors"] = sorted(set(load.errors))[:5]
    if missing:
        report["first_missing"] = missing[:10]
    if problems:
        report["log_problems"] = problems
    if exit_problem:
        report["log_problems"] = [*problems, exit_problem]
    return report


def print_report(r: dict) -> None:
    print(f"run {r['run']}: {r['clients']} clients ({r['tls']}), {r['per_connection']} msg/session, "
          f"{r['size']} B, DKIM {r['dkim']}, sink {'STARTTLS' if r['sink_tls'] else 'plain'}: "
          f"{r['accepted_250']}/{r['messages']} accepted, {r['arrived']} arrived, "
          f"{r['missing']} missing, {r['duplicates']} duplicates, {r['unexpected']} unexpected, "
          f"{r['errors']} errors, {r['queue_left']} left in the queue\n"
          f"  submission {r['submit_msgs_per_s']} msg/s over {r['submit_elapsed_s']} s; "
          f"250 after the dot p50 {r['submit_p50_ms']} ms, p99 {r['submit_p99_ms']} ms\n"
          f"  end to end {r['e2e_msgs_per_s']} msg/s delivered over {r['e2e_elapsed_s']} s; "
          f"queue latency (250 → at the sink) p50 {r['queue_p50_ms']} ms, "
          f"p99 {r['queue_p99_ms']} ms, max {r['queue_max_ms']} ms\n"
          f"  server CPU {r['server_cpu_s']} s ({r['server_cpu_per_msg_ms']} ms/msg, "
          f"{r['server_cpu_util_pct']}% of one core), RSS {r['server_rss_mb']} MB "
          f"(peak {r['server_peak_rss_mb']} MB); load generator + sink CPU "
          f"{r['loadgen_cpu_s']} s; {r['sessions']} sessions, {r['sink_connections']} "
          f"connections to the sink")
    print_lists(r, {"first_errors": "error", "first_missing": "missing",
                    "log_problems": "server log"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages to submit")
    parser.add_argument("--clients", type=int, default=20, help="concurrent submission sessions")
    parser.add_argument("--per-connection", type=int, default=50,
                        help="messages per session before reconnecting (1: one per connection)")
    parser.add_argument("--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--implicit-tls", action="store_true",
                        help="submit on the submissions port (implicit TLS) instead of STARTTLS")
    parser.add_argument("--sink-tls", action="store_true",
                        help="the sink offers STARTTLS (the queue uses it, opportunistically)")
    parser.add_argument("--dkim", choices=("rsa", "ed25519"), default="rsa",
                        help="sign with the domain's RSA key (made with the domain) or, as a "
                             "diagnostic, with an Ed25519 key set through the admin API")
    parser.add_argument("--concurrency", type=int, default=100, help="[queue] concurrency")
    parser.add_argument("--domain-concurrency", type=int, default=20,
                        help="[queue] domain_concurrency")
    parser.add_argument("--patience", type=float, default=30,
                        help="seconds without an arrival before giving up on missing messages")
    parser.add_argument("--runs", type=int, default=1, help="repeat on a fresh server")
    add_output_options(parser, "print one JSON object per run",
                       "run twistd under cProfile and save the stats to this file")
    args = parser.parse_args()
    failed = False
    for run in range(1, args.runs + 1):
        report = one_run(args, run)
        failed |= bool(report["missing"] or report["unexpected"]
                       or report["accepted_250"] != args.messages)
        emit(report, args.json, print_report)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
