"""The outbound queue and the test message through the admin API and `cloudmail-admin`.

Each test runs a container with its outbound queue (the `outbound` fixture of tests/outbound.py: a
loopback DNS server and the SMTP sink as `remote.test`'s MX) and its `AdminApi` on a real
loopback port. The sink answers RCPT with 451 until the test lets it accept, so messages stay
queued. The CLI tests run the real command in a subprocess (in a thread, the server being in
this reactor) with a config whose `[listen] admin` is that port.
"""

from __future__ import annotations

import email
import json
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dkim
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from cloudmail.accounts import dkimkeys
from cloudmail.admin.api import AdminApi
from cloudmail.app import Container
from tests.conftest import write_config
from tests.integration.test_admin_api import Client, declared_statuses
from tests.integration.test_outbound import MESSAGE
from tests.integration.test_smtp_inbound import inbox
from tests.outbound import until
from tests.smtpsink import SmtpSink

LATER = (451, "4.2.0 try later")
OK = (250, "2.1.5 ok")


@dataclass
class Server:
    """A running container with its queue, its admin API and the MX sink of remote.test."""

    container: Container
    api: Client
    sink: SmtpSink
    port: int
    answer: list[tuple[int, str]]

    def accept(self) -> None:
        """Let the MX accept recipients from now on."""
        self.answer[0] = OK

    async def queue(self, *recipients: str, sender: str = "alice@example.com") -> str:
        """Queue MESSAGE for `recipients`; wait for the first (deferred) attempt; its id."""
        sent = await self.container.mailer.send(sender, list(recipients or ["carol@remote.test"]),
                                                MESSAGE)
        queue_id = sent.queued.queue_id
        await until(lambda: all(r.attempts for r in self.container.outbound_queue.get(
            queue_id).recipients))
        return queue_id

    async def dkim_record(self) -> bytes:
        domain = await self.container.accounts.get_domain("example.com")
        return dkimkeys.dns_record(domain.dkim_private_key).encode()


@pytest.fixture
def server(outbound, smtp_sink):
    """`await server()` → a `Server`; at teardown every status the client saw must be declared
    in openapi.json."""
    clients: list[Client] = []
    ports: list[Any] = []

    async def start() -> Server:
        answer = [LATER]
        sink = smtp_sink(rcpt_reply=lambda rcpt: answer[0])
        container = await outbound(sink.port, queue={"retry_delays": [600]})
        admin = AdminApi(container)
        admin.token = container.admin_token()
        port = reactor.listenTCP(0, admin.site(), interface="127.0.0.1")
        ports.append(port)
        client = Client(f"http://127.0.0.1:{port.getHost().port}", token=admin.token)
        clients.append(client)
        return Server(container, client, sink, port.getHost().port, answer)

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())
    for client in clients:
        undeclared = [(m, p, s) for m, p, s in client.seen
                      if (d := declared_statuses(m, p)) is not None and str(s) not in d]
        assert not undeclared, f"statuses not declared in openapi.json: {undeclared}"


# The API


@pytest_twisted.ensureDeferred
async def test_queue_lists_and_shows_where_each_recipient_stands(server):
    """A deferred message is listed with its envelope and, per recipient, the attempts, next
    try, last reply and the MX that gave it; times are ISO 8601 UTC."""
    s = await server()
    assert (await s.api.get("/api/v1/queue")).json == {"items": []}
    queue_id = await s.queue("carol@remote.test", "dave@remote.test")
    answer = await s.api.get("/api/v1/queue")
    assert answer.status == 200
    [entry] = answer.json["items"]
    assert entry["id"] == queue_id and entry["sender"] == "alice@example.com"
    assert entry["size"] == len(MESSAGE) and entry["auth_user"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", entry["created"])
    assert [r["address"] for r in entry["recipients"]] == ["carol@remote.test", "dave@remote.test"]
    carol = entry["recipients"][0]
    assert carol["status"] == "deferred" and carol["attempts"] == 1
    assert carol["last_code"] == 451 and carol["last_status"] == "4.2.0"
    assert "try later" in carol["last_error"] and carol["remote_mta"]
    assert carol["next_attempt"] > carol["last_attempt"] >= entry["created"]
    assert entry["next_attempt"] == carol["next_attempt"]
    shown = await s.api.get(f"/api/v1/queue/{queue_id}")
    assert shown.status == 200 and shown.json == entry


@pytest_twisted.ensureDeferred
async def test_unknown_or_malformed_queue_id_is_404(server):
    """An id nobody has, or text that is no queue id, is 404 naming `id` for every action."""
    s = await server()
    for queue_id in ("0123456789ABCDEF", "nothing", "..%2E%2E"):
        for method, path in [("GET", ""), ("POST", "/retry"), ("DELETE", "")]:
            answer = await s.api.request(method, f"/api/v1/queue/{queue_id}{path}")
            assert answer.status == 404, (method, queue_id, answer.raw)
            assert answer.error_field == "id"
    assert (await s.api.get("/api/v1/queue/a%2F..%2F..")).status == 404
    assert (await s.api.get("/api/v1/queue", token="wrong")).status == 401


@pytest_twisted.ensureDeferred
async def test_retry_sends_at_once(server):
    """After the MX recovers, retry makes the message go now (not in 10 minutes); retrying
    all does the same for every message."""
    s = await server()
    queue_id = await s.queue()
    s.accept()
    answer = await s.api.post(f"/api/v1/queue/{queue_id}/retry")
    assert answer.status == 200 and answer.json["id"] == queue_id
    [arrived] = await s.sink.wait_for(1)
    assert arrived.recipients == ["carol@remote.test"] and arrived.data.endswith(b"Hello Carol.\r\n")
    await until(lambda: not s.container.outbound_queue.entries())

    s.answer[0] = LATER
    first, second = await s.queue("x@remote.test"), await s.queue("y@remote.test")
    s.accept()
    answer = await s.api.post("/api/v1/queue/retry")
    assert answer.status == 200 and [e["id"] for e in answer.json["items"]] == [first, second]
    arrived = await s.sink.wait_for(3)
    assert sorted(r for m in arrived[1:] for r in m.recipients) == ["x@remote.test",
                                                                    "y@remote.test"]
    await until(lambda: not s.container.outbound_queue.entries())


@pytest_twisted.ensureDeferred
async def test_delete_drops_silently(server):
    """DELETE removes the entry and its files; nobody is told."""
    s = await server()
    queue_id = await s.queue()
    answer = await s.api.delete(f"/api/v1/queue/{queue_id}")
    assert answer.status == 204 and answer.raw == b""
    assert (await s.api.get("/api/v1/queue")).json == {"items": []}
    assert not list(s.container.queue_store.root.glob(f"{queue_id}.*"))
    assert (await s.api.delete(f"/api/v1/queue/{queue_id}")).status == 404
    assert inbox(s.container, "alice") == []
    other = await s.queue()
    answer = await s.api.delete(f"/api/v1/queue/{other}?bounce=maybe")
    assert answer.status == 400 and answer.error_field == "bounce"


@pytest_twisted.ensureDeferred
async def test_delete_with_bounce_returns_it_to_the_sender(server):
    """With ?bounce=true the sender gets a DSN saying the administrator deleted it."""
    s = await server()
    queue_id = await s.queue()
    answer = await s.api.delete(f"/api/v1/queue/{queue_id}?bounce=true")
    assert answer.status == 204
    await until(lambda: inbox(s.container, "alice"))
    [bounce] = inbox(s.container, "alice")
    assert bounce.startswith(b"Return-Path: <>\r\n")
    assert email.message_from_bytes(bounce).get_content_type() == "multipart/report"
    assert b"Final-Recipient: rfc822; carol@remote.test" in bounce
    assert b"Action: failed" in bounce and b"deleted from the queue by the administrator" in bounce
    assert (await s.api.get("/api/v1/queue")).json == {"items": []}


@pytest_twisted.ensureDeferred
async def test_test_message_to_a_remote_address_arrives_signed(server):
    """The test message from postmaster@ our first domain is queued, reaches the MX and its
    DKIM signature verifies against the domain's published key."""
    s = await server()
    s.accept()
    answer = await s.api.post("/api/v1/mail/test", {"to": "Carol@remote.test"})
    assert answer.status == 202, answer.raw
    sent = answer.json
    assert sent["from"] == "postmaster@example.com" and sent["delivered"] == []
    assert re.fullmatch(r"[0-9A-F]{16}", sent["queue_id"])
    [arrived] = await s.sink.wait_for(1)
    assert arrived.sender == "postmaster@example.com"
    assert arrived.recipients == [sent["to"]] and sent["to"].lower() == "carol@remote.test"
    record = await s.dkim_record()
    assert dkim.verify(arrived.data, dnsfunc=lambda name, timeout=5: record)
    message = email.message_from_bytes(arrived.data)
    assert message["Subject"] == "cloudmail test message"
    assert message["Message-ID"].endswith("@mail.example.test>") and message["Date"]
    assert "mail.example.test" in message.get_payload()
    await until(lambda: not s.container.outbound_queue.entries())


@pytest_twisted.ensureDeferred
async def test_test_message_to_a_local_address_lands_in_the_inbox(server):
    """To an address of ours the test message is delivered at once (no queue), signed, from the
    address given."""
    s = await server()
    answer = await s.api.post("/api/v1/mail/test", {"to": "bob@example.com",
                                                    "from": "alice@example.com"})
    assert answer.status == 202, answer.raw
    assert answer.json == {"to": "bob@example.com", "from": "alice@example.com",
                           "queue_id": None, "delivered": ["bob@example.com"]}
    [copy] = inbox(s.container, "bob")
    assert b"\r\nSubject: cloudmail test message\r\n" in copy
    record = await s.dkim_record()
    assert b"DKIM-Signature:" in copy and dkim.verify(copy, dnsfunc=lambda n, timeout=5: record)
    assert s.container.outbound_queue.entries() == [] and s.sink.connections == 0


@pytest_twisted.ensureDeferred
async def test_test_message_refuses_bad_addresses(server):
    """A missing, non-string, malformed or unknown `to`, or a `from` not of our domains, is
    refused naming the field; nothing is sent."""
    s = await server()
    for body, status, field in [({}, 422, "to"), ({"to": 5}, 400, "to"),
                                ({"to": "no address"}, 422, "to"),
                                ({"to": "nobody@example.com"}, 422, "to"),
                                ({"to": "bob@example.com", "from": "x@elsewhere.test"}, 422,
                                 "from"),
                                ({"to": "bob@example.com", "from": ["x"]}, 400, "from"),
                                ({"to": "bob@example.com", "cc": "x"}, 422, "cc")]:
        answer = await s.api.post("/api/v1/mail/test", body)
        assert answer.status == status and answer.error_field == field, (body, answer.raw)
    answer = await s.api.post("/api/v1/mail/test", raw=b"[1]")
    assert answer.status == 400 and answer.error_field == "body"
    assert inbox(s.container, "bob") == [] and s.container.outbound_queue.entries() == []


# The command line


def cli_config(tmp_path: Path, admin: str, token_file: Path) -> Path:
    """A config for `cloudmail-admin` that reaches the admin API at `admin`."""
    directory = tmp_path / "cli"
    directory.mkdir(exist_ok=True)
    return write_config(directory / "cloudmail.toml", {
        "server": {"hostname": "mail.example.test", "data_dir": str(directory / "data")},
        "listen": {"admin": admin}, "admin": {"token_file": str(token_file)}})


async def admin(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `cloudmail-admin --config CONFIG ARGS...` in a thread (the server runs here)."""
    return await deferToThread(
        subprocess.run, [sys.executable, "-m", "cloudmail.admin.cli", "--config", str(config),
                         *args], input="", capture_output=True, text=True, timeout=120)


async def ok(config: Path, *args: str) -> str:
    done = await admin(config, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


async def failed(config: Path, *args: str, status: int = 1) -> str:
    done = await admin(config, *args)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    return done.stderr


def rows(table: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()]


@pytest.fixture
def cli_server(server, tmp_path):
    """`await cli_server()` → (Server, the CLI's config pointing at its admin API)."""
    async def start() -> tuple[Server, Path]:
        s = await server()
        return s, cli_config(tmp_path, f"tcp:{s.port}:interface=127.0.0.1",
                             s.container.config.admin.token_file)
    return start


@pytest_twisted.ensureDeferred
async def test_cli_queue_list_show_and_delete(cli_server):
    """`queue list` prints the table, `--json` the API's JSON, `show` the envelope and a
    recipient table; `delete --bounce` returns the message to its sender."""
    s, config = await cli_server()
    assert rows(await ok(config, "queue", "list")) == [
        ["ID", "SENDER", "RECIPIENTS", "ATTEMPTS", "NEXT TRY", "LAST ERROR"]]
    queue_id = await s.queue("carol@remote.test", "dave@remote.test")
    table = rows(await ok(config, "queue", "list"))
    assert table[1][:4] == [queue_id, "alice@example.com", "carol@remote.test, dave@remote.test",
                            "1"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", table[1][4])
    assert table[1][5] == "451 4.2.0 try later"
    listed = json.loads(await ok(config, "--json", "queue", "list"))
    assert [e["id"] for e in listed["items"]] == [queue_id]
    shown = await ok(config, "queue", "show", queue_id)
    assert f"id:           {queue_id}" in shown and "sender:       alice@example.com" in shown
    recipients = rows(shown.split("\n\n")[1])
    assert recipients[0][:3] == ["RECIPIENT", "STATUS", "ATTEMPTS"]
    assert recipients[1][:3] == ["carol@remote.test", "deferred", "1"]
    assert json.loads(await ok(config, "--json", "queue", "show", queue_id))["id"] == queue_id

    assert "id: no queued message" in await failed(config, "queue", "show", "0123456789ABCDEF")
    assert "queue ID or --all" in await failed(config, "queue", "retry")
    assert (await ok(config, "queue", "delete", queue_id, "--bounce")).strip() == \
        f"deleted {queue_id} from the queue"
    await until(lambda: inbox(s.container, "alice"))
    assert b"Action: failed" in inbox(s.container, "alice")[0]
    other = await s.queue()
    assert await ok(config, "--json", "queue", "delete", other) == ""
    assert s.container.outbound_queue.entries() == [] and len(inbox(s.container, "alice")) == 1


@pytest_twisted.ensureDeferred
async def test_cli_queue_retry(cli_server):
    """`queue retry ID` and `queue retry --all` make messages go now."""
    s, config = await cli_server()
    queue_id = await s.queue()
    s.accept()
    assert (await ok(config, "queue", "retry", queue_id)).strip() == \
        f"retrying {queue_id} now (1 recipient(s) due)"
    await s.sink.wait_for(1)
    await until(lambda: not s.container.outbound_queue.entries())
    s.answer[0] = LATER
    await s.queue("x@remote.test")
    await s.queue("y@remote.test")
    s.accept()
    assert (await ok(config, "queue", "retry", "--all")).strip() == \
        "retrying 2 queued message(s) now"
    await s.sink.wait_for(3)
    await until(lambda: not s.container.outbound_queue.entries())


@pytest_twisted.ensureDeferred
async def test_cli_send_test(cli_server):
    """`send-test` queues for a remote address (signed at the MX) and delivers a local one at
    once; a bad address fails naming the field."""
    s, config = await cli_server()
    s.accept()
    out = await ok(config, "send-test", "carol@remote.test")
    queued = re.search(r"queued as ([0-9A-F]{16})", out)
    assert out.startswith("sent the test message from <postmaster@example.com> to "
                          "<carol@remote.test>: queued as") and queued
    [arrived] = await s.sink.wait_for(1)
    record = await s.dkim_record()
    assert dkim.verify(arrived.data, dnsfunc=lambda name, timeout=5: record)
    sent = json.loads(await ok(config, "--json", "send-test", "bob@example.com", "--from",
                               "al@example.com"))
    assert sent == {"to": "bob@example.com", "from": "al@example.com", "queue_id": None,
                    "delivered": ["bob@example.com"]}
    assert len(inbox(s.container, "bob")) == 1
    assert "to: " in await failed(config, "send-test", "nobody@example.com")
    assert "from: " in await failed(config, "send-test", "bob@example.com", "--from",
                                    "x@elsewhere.test")


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_cli_says_when_the_server_is_not_running(tmp_path):
    """Nobody at the admin address: one clear line, exit 1. A wrong token is refused (exit 1);
    an admin listener that is off is a configuration error (exit 2)."""
    token = tmp_path / "admin.token"
    token.write_text("secret\n", encoding="ascii")
    port = closed_port()
    config = cli_config(tmp_path, f"tcp:{port}:interface=127.0.0.1", token)
    for args in (["queue", "list"], ["send-test", "bob@example.com"]):
        stderr = await failed(config, *args)
        assert stderr == (f"cloudmail-admin: error: the server is not running (admin API at "
                          f"127.0.0.1:{port}: connection refused)\n")
    config = cli_config(tmp_path, f"tcp:port={port}", tmp_path / "missing.token")
    assert "the server is not running (no admin token" in await failed(config, "queue", "list")
    config = cli_config(tmp_path, "", token)
    assert "[listen] admin is off" in await failed(config, "queue", "list", status=2)


@pytest_twisted.ensureDeferred
async def test_cli_with_a_wrong_token_is_refused(cli_server, tmp_path):
    s, _ = await cli_server()
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not the token\n", encoding="ascii")
    config = cli_config(tmp_path, f"tcp:{s.port}:interface=127.0.0.1", wrong)
    assert "refused the token" in await failed(config, "queue", "list")


def test_admin_endpoint_strings():
    """The CLI reaches `[listen] admin` on its port, on loopback for any-address listeners."""
    from cloudmail.admin.cli import parse_admin_endpoint
    from cloudmail.errors import ConfigError
    assert parse_admin_endpoint("tcp:8580:interface=127.0.0.1") == ("127.0.0.1", 8580)
    assert parse_admin_endpoint("tcp:8580") == ("127.0.0.1", 8580)
    assert parse_admin_endpoint("tcp:port=9000:interface=\\:\\:1") == ("::1", 9000)
    assert parse_admin_endpoint("tcp:9000:interface=0.0.0.0") == ("127.0.0.1", 9000)
    assert parse_admin_endpoint("tcp6:9000:interface=\\:\\:") == ("::1", 9000)
    for bad in ("", "unix:/run/cloudmail.sock", "tcp:interface=127.0.0.1"):
        with pytest.raises(ConfigError):
            parse_admin_endpoint(bad)
