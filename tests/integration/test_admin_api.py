"""The JSON admin API over a real socket, called with urllib as any admin script would.

Each test gets a fresh store, an `AdminApi` on 127.0.0.1:0 with the token "secret", and a client
that runs urllib in a thread. The client records every answer, and the fixture checks at the end
of each test that each status seen is declared in openapi.json for that operation, so the
document cannot drift from what the server does.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from werkzeug.exceptions import HTTPException

import cloudmail.admin
from cloudmail.admin.api import AdminApi
from cloudmail.directory import passwords
from cloudmail.errors import AuthenticationFailed, DirectoryUnavailable

OPENAPI = json.loads((Path(cloudmail.admin.__file__).parent / "openapi.json").read_text("utf-8"))
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_UNSET = object()


@dataclass
class Answer:
    """One HTTP answer as urllib saw it."""

    status: int
    headers: Message
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw.decode("utf-8"))

    @property
    def error_field(self) -> str | None:
        return self.json["error"]["field"]


@dataclass
class Client:
    """A small HTTP client over urllib (run in a thread), with the bearer token by default."""

    base: str
    token: str | None = "secret"
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    def _send(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> Answer:
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as e:
            with e:
                return Answer(e.code, e.headers, e.read())

    async def request(self, method: str, path: str, body: Any = _UNSET, *, raw: bytes | None = None,
                      token: Any = _UNSET, headers: dict[str, str] | None = None) -> Answer:
        """Send `body` as JSON (or `raw` bytes as they are); answer whatever status comes back."""
        sent = dict(headers or {})
        token = self.token if token is _UNSET else token
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not _UNSET:
            data = json.dumps(body).encode("utf-8")
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        answer = await deferToThread(self._send, method, path, data, sent)
        self.seen.append((method, path, answer.status))
        return answer

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = _UNSET, **kw: Any) -> Answer:
        return await self.request("POST", path, body, **kw)

    async def put(self, path: str, body: Any = _UNSET, **kw: Any) -> Answer:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any = _UNSET, **kw: Any) -> Answer:
        return await self.request("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> Answer:
        return await self.request("DELETE", path, **kw)


def openapi_path(rule: str) -> str:
    """A werkzeug rule (`/a/<name>`, `/a/<path:x>`) as an OpenAPI path template (`/a/{name}`)."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def declared_statuses(method: str, path: str) -> set[str] | None:
    """The statuses openapi.json declares for the operation that serves this request, or None
    when no route serves it (404/405 answers are not operations)."""
    adapter = AdminApi.app.url_map.bind("127.0.0.1")
    try:
        rule, _ = adapter.match(urllib.parse.unquote(path.split("?")[0]), method=method,
                                return_rule=True)
    except HTTPException:
        return None
    operation = OPENAPI["paths"][openapi_path(rule.rule)][method.lower()]
    return set(operation["responses"])


@pytest.fixture
def api(container):
    """An AdminApi with the token "secret" on a real loopback port, and a client for it.

    At teardown, every status the client saw must be declared for its operation in openapi.json.
    """
    admin = AdminApi(container)
    admin.token = "secret"
    port = reactor.listenTCP(0, admin.site(), interface="127.0.0.1")
    client = Client(f"http://127.0.0.1:{port.getHost().port}")
    client.admin = admin
    yield client
    pytest_twisted.blockon(port.stopListening())
    undeclared = [(m, p, s) for m, p, s in client.seen
                  if (d := declared_statuses(m, p)) is not None and str(s) not in d]
    assert not undeclared, f"statuses not declared in openapi.json: {undeclared}"


@pytest.fixture
def logged():
    """Every log event emitted during the test, as formatted text."""
    from twisted.logger import formatEvent
    lines: list[str] = []

    def observe(event: dict) -> None:
        lines.append(formatEvent(event) + " " + repr(sorted(
            (k, v) for k, v in event.items() if not k.startswith("log_"))))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


async def add_domain(api: Client, name: str = "example.com") -> dict:
    answer = await api.post("/api/v1/domains", {"name": name})
    assert answer.status == 201, answer.raw
    return answer.json


async def add_user(api: Client, username: str = "alice", password: str = "correct horse") -> dict:
    answer = await api.post("/api/v1/users", {"username": username, "password": password})
    assert answer.status == 201, answer.raw
    return answer.json


async def add_mailbox(api: Client, address: str, owner: str = "alice", **extra: Any) -> dict:
    answer = await api.post("/api/v1/mailboxes", {"address": address, "owner": owner, **extra})
    assert answer.status == 201, answer.raw
    return answer.json


# Health, the document and the token


@pytest_twisted.ensureDeferred
async def test_health_needs_no_token(api):
    """/health answers 200 with every part ok, without a token, as JSON in UTF-8."""
    answer = await api.get("/health", token=None)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.json == {"status": "ok", "database": "ok", "directory": "ok"}


@pytest_twisted.ensureDeferred
async def test_health_degraded_when_directory_unavailable(api, container):
    """A directory that fails or does not answer in time degrades health (200) with the reason."""
    container.directory.check = lambda: fail(DirectoryUnavailable("ldap://ldap.test: refused"))
    answer = await api.get("/health", token=None)
    assert answer.status == 200
    assert answer.json["status"] == "degraded" and answer.json["directory"] == "unavailable"
    assert "refused" in answer.json["reason"]

    api.admin.health_timeout = 0.2
    container.directory.check = lambda: Deferred()
    answer = await api.get("/health", token=None)
    assert answer.status == 200 and answer.json["status"] == "degraded"
    assert "no answer within 0.2 s" in answer.json["reason"]


@pytest_twisted.ensureDeferred
async def test_health_503_when_database_fails(api, container, monkeypatch):
    """A database that fails makes the server unusable: health answers 503 and says why."""
    monkeypatch.setattr(container.database, "transact",
                        lambda *a: fail(sqlite3.OperationalError("disk I/O error")))
    answer = await api.get("/health", token=None)
    assert answer.status == 503
    assert answer.json["status"] == "unavailable" and answer.json["database"] == "failing"
    assert "disk I/O error" in answer.json["reason"]


@pytest_twisted.ensureDeferred
async def test_openapi_document_served_without_token(api):
    """/openapi.json serves the package's OpenAPI 3.1 document to anyone."""
    answer = await api.get("/openapi.json", token=None)
    assert answer.status == 200
    assert answer.json == OPENAPI and answer.json["openapi"].startswith("3.1")


@pytest_twisted.ensureDeferred
async def test_api_needs_the_right_bearer_token(api):
    """No token, a wrong token or another scheme get 401 JSON with `WWW-Authenticate: Bearer`."""
    for headers, token in [({}, None), ({}, "wrong"), ({"Authorization": "Basic c2VjcmV0"}, None),
                           ({}, "secret2"), ({}, "")]:
        answer = await api.get("/api/v1/domains", token=token, headers=headers)
        assert answer.status == 401, (headers, token)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert answer.json["error"]["status"] == 401
    assert (await api.get("/api/v1/domains")).status == 200


@pytest_twisted.ensureDeferred
async def test_no_token_before_start_refuses_everything(api):
    """Until the server has started (token None) even a "right" token is refused."""
    api.admin.token = None
    answer = await api.get("/api/v1/users")
    assert answer.status == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
    answer = await api.get("/api/v1/users", token="None")
    assert answer.status == 401


@pytest_twisted.ensureDeferred
async def test_unknown_api_route_without_token_is_401(api):
    """Without a token, /api/v1/ says nothing about which routes exist: 401, not 404 or 405."""
    assert (await api.get("/api/v1/nothing", token=None)).status == 401
    assert (await api.put("/api/v1/domains", {}, token=None)).status == 401


# Domains


@pytest_twisted.ensureDeferred
async def test_domain_crud(api):
    """A domain is added (201, with its DKIM record), listed, shown, changed and deleted (204)."""
    domain = await add_domain(api, "Example.COM")
    assert domain["name"] == "example.com"
    assert domain["dkim"]["record_name"] == f"{domain['dkim']['selector']}._domainkey.example.com"
    assert domain["dkim"]["record"].startswith("v=DKIM1;")
    assert domain["relay"]["host"] is None and domain["masquerade"] is False

    listed = await api.get("/api/v1/domains")
    assert listed.status == 200 and [d["name"] for d in listed.json["items"]] == ["example.com"]
    assert (await api.get("/api/v1/domains/EXAMPLE.com")).json == domain

    relay = {"host": "smtp.relay.test", "port": 2525, "username": "u", "password": "relay pw",
             "tls": "tls"}
    answer = await api.patch("/api/v1/domains/example.com",
                             {"relay": relay, "masquerade": True, "dkim_selector": "May2025"})
    assert answer.status == 200, answer.raw
    assert answer.json["relay"] == {"host": "smtp.relay.test", "port": 2525, "username": "u",
                                    "password_set": True, "tls": "tls"}
    assert "relay pw" not in answer.raw.decode()
    assert answer.json["masquerade"] is True
    assert answer.json["dkim"]["record_name"] == "may2025._domainkey.example.com"

    answer = await api.patch("/api/v1/domains/example.com", {"relay": None, "masquerade": False})
    assert answer.json["relay"]["host"] is None and answer.json["relay"]["password_set"] is False
    assert answer.json["masquerade"] is False

    answer = await api.delete("/api/v1/domains/example.com")
    assert answer.status == 204 and answer.raw == b""
    answer = await api.get("/api/v1/domains/example.com")
    assert answer.status == 404 and answer.error_field == "name"


@pytest_twisted.ensureDeferred
async def test_domain_settings_are_checked(api):
    """A bad DKIM selector, relay or unknown setting is 422 naming it; an unknown domain 404."""
    await add_domain(api)
    for settings, wrong in [({"dkim_selector": "not a label"}, "dkim_selector"),
                            ({"dkim_selector": "-x"}, "dkim_selector"),
                            ({"relay": {"host": "bad host!"}}, "relay.host"),
                            ({"relay": {"host": "h.test", "tls": "ssl"}}, "relay.tls"),
                            ({"relay": {"host": "h.test", "username": "u"}}, "relay.password"),
                            ({"colour": "blue"}, "colour")]:
        answer = await api.patch("/api/v1/domains/example.com", settings)
        assert answer.status == 422, settings
        assert answer.error_field == wrong
    answer = await api.patch("/api/v1/domains/example.com", {"masquerade": "yes"})
    assert answer.status == 400 and answer.error_field == "masquerade"
    answer = await api.patch("/api/v1/domains/nowhere.test", {"masquerade": True})
    assert answer.status == 404


@pytest_twisted.ensureDeferred
async def test_domain_relay_provider_presets(api):
    """A relay `provider` fills in the service's host and port (Amazon SES's per `region`);
    host or port given win; `custom` needs a host; unknown providers and misplaced regions are
    422 naming them."""
    await add_domain(api)

    async def relay(settings: dict) -> dict:
        answer = await api.patch("/api/v1/domains/example.com", {"relay": settings})
        assert answer.status == 200, answer.raw
        return answer.json["relay"]
    assert await relay({"provider": "sendgrid", "username": "apikey", "password": "pw"}) == {
        "host": "smtp.sendgrid.net", "port": 587, "username": "apikey", "password_set": True,
        "tls": "starttls"}
    ses = await relay({"provider": "amazon-ses", "region": "eu-west-1"})
    assert (ses["host"], ses["port"]) == ("email-smtp.eu-west-1.amazonaws.com", 587)
    assert (await relay({"provider": "amazon-ses"}))["host"] == \
        "email-smtp.us-east-1.amazonaws.com"
    assert await relay({"provider": "mailgun", "host": "smtp.eu.mailgun.org", "port": 2525}) == {
        "host": "smtp.eu.mailgun.org", "port": 2525, "username": None, "password_set": False,
        "tls": "starttls"}
    assert (await relay({"provider": "google", "tls": "tls"}))["port"] == 465
    assert (await relay({"provider": "custom", "host": "relay.test"}))["port"] == 587
    for settings, wrong in [({"provider": "nope"}, "relay.provider"),
                            ({"provider": "custom"}, "relay.host"),
                            ({}, "relay.host"),
                            ({"provider": "google", "region": "eu-west-1"}, "relay.region"),
                            ({"provider": "amazon-ses", "region": "not a region"},
                             "relay.region")]:
        answer = await api.patch("/api/v1/domains/example.com", {"relay": settings})
        assert answer.status == 422 and answer.error_field == wrong, (settings, answer.raw)
    answer = await api.patch("/api/v1/domains/example.com", {"relay": {"provider": 1}})
    assert answer.status == 400 and answer.error_field == "relay.provider"


@pytest_twisted.ensureDeferred
async def test_idn_domain_is_stored_as_a_label(api):
    """An IDN domain is stored as its A-label and can be found by either spelling."""
    domain = await add_domain(api, "Bücher.Example")
    assert domain["name"] == "xn--bcher-kva.example"
    answer = await api.get("/api/v1/domains/" + urllib.parse.quote("bücher.example"))
    assert answer.status == 200 and answer.json["name"] == "xn--bcher-kva.example"


@pytest_twisted.ensureDeferred
async def test_domain_names_are_checked(api):
    """A name that is not a domain is 422 `name`; adding one twice is 409; a missing name 422."""
    answer = await api.post("/api/v1/domains", {"name": "not a domain"})
    assert answer.status == 422 and answer.error_field == "name"
    answer = await api.post("/api/v1/domains", {"name": 42})
    assert answer.status == 400 and answer.error_field == "name"
    answer = await api.post("/api/v1/domains", {})
    assert answer.status == 422 and answer.error_field == "name"
    await add_domain(api)
    answer = await api.post("/api/v1/domains", {"name": "EXAMPLE.com."})
    assert answer.status == 409 and answer.error_field == "name"


@pytest_twisted.ensureDeferred
async def test_domain_with_mailboxes_cannot_be_deleted(api):
    """Deleting a domain that still holds mailboxes is 409; after they go, it is 204."""
    await add_domain(api)
    await add_user(api)
    await add_mailbox(api, "alice@example.com")
    answer = await api.delete("/api/v1/domains/example.com")
    assert answer.status == 409 and answer.error_field == "name"
    assert (await api.delete("/api/v1/mailboxes/alice@example.com")).status == 204
    assert (await api.delete("/api/v1/domains/example.com")).status == 204


@pytest_twisted.ensureDeferred
async def test_catchall_set_and_clear(api):
    """The catch-all is set to mailboxes, shown, refused for unknown ones and cleared with []."""
    await add_domain(api)
    await add_user(api)
    await add_mailbox(api, "alice@example.com")
    answer = await api.get("/api/v1/domains/example.com/catchall")
    assert answer.status == 200 and answer.json == {"domain": "example.com", "mailboxes": []}
    answer = await api.put("/api/v1/domains/example.com/catchall",
                           {"mailboxes": ["Alice@example.com"]})
    assert answer.status == 200 and answer.json["mailboxes"] == ["alice@example.com"]
    assert (await api.get("/api/v1/domains/example.com/catchall")).json["mailboxes"] == [
        "alice@example.com"]
    answer = await api.put("/api/v1/domains/example.com/catchall",
                           {"mailboxes": ["nobody@example.com"]})
    assert answer.status == 404 and answer.error_field == "mailboxes"
    answer = await api.put("/api/v1/domains/example.com/catchall", {"mailboxes": "alice"})
    assert answer.status == 400 and answer.error_field == "mailboxes"
    answer = await api.put("/api/v1/domains/example.com/catchall", {"mailboxes": []})
    assert answer.status == 200 and answer.json["mailboxes"] == []
    assert (await api.get("/api/v1/domains/nowhere.test/catchall")).status == 404


# Users


@pytest_twisted.ensureDeferred
async def test_user_crud_and_login(api, container):
    """A user is added (201, no password in the answer), logs in, changes password and goes."""
    await add_domain(api)
    user = await add_user(api, "Alice", "correct horse")
    assert user == {"username": "alice", "display_name": "", "emails": []}
    await add_mailbox(api, "alice@example.com")
    login = await container.authenticator.authenticate("alice@example.com", "correct horse")
    assert login.username == "alice"

    answer = await api.get("/api/v1/users/alice")
    assert answer.status == 200 and answer.json["mailboxes"] == ["alice@example.com"]
    assert "hash" not in answer.raw.decode() and "correct horse" not in answer.raw.decode()
    assert [u["username"] for u in (await api.get("/api/v1/users")).json["items"]] == ["alice"]

    answer = await api.patch("/api/v1/users/alice",
                             {"password": "battery staple", "display_name": "Alice Liddell"})
    assert answer.status == 200 and answer.json["display_name"] == "Alice Liddell"
    with pytest.raises(AuthenticationFailed):
        await container.authenticator.authenticate("alice@example.com", "correct horse")
    await container.authenticator.authenticate("alice@example.com", "battery staple")

    answer = await api.delete("/api/v1/users/alice")
    assert answer.status == 409 and answer.error_field == "username"
    await api.delete("/api/v1/mailboxes/alice@example.com")
    assert (await api.delete("/api/v1/users/alice")).status == 204
    answer = await api.get("/api/v1/users/alice")
    assert answer.status == 404 and answer.error_field == "username"


@pytest_twisted.ensureDeferred
async def test_user_with_password_hash(api, container):
    """A user imported with a ready hash (and a display name) logs in with its password."""
    hashed = passwords.hash_password("imported secret")
    answer = await api.post("/api/v1/users", {"username": "bob", "password_hash": hashed,
                                              "display_name": "Bob"})
    assert answer.status == 201 and answer.json["display_name"] == "Bob"
    assert (await container.directory.authenticate("bob", "imported secret")).username == "bob"
    answer = await api.post("/api/v1/users", {"username": "carol", "password_hash": "md5:abc"})
    assert answer.status == 422 and answer.error_field == "password_hash"


@pytest_twisted.ensureDeferred
async def test_user_rules(api):
    """Short password 422 `password`; duplicate 409; bad name 422; unknown field 422 naming it."""
    answer = await api.post("/api/v1/users", {"username": "alice", "password": "short"})
    assert answer.status == 422 and answer.error_field == "password"
    answer = await api.post("/api/v1/users", {"username": "alice"})
    assert answer.status == 422 and answer.error_field == "password"
    answer = await api.post("/api/v1/users", {"username": "no spaces", "password": "long enough"})
    assert answer.status == 422 and answer.error_field == "username"
    answer = await api.post("/api/v1/users", {"username": "alice", "password": "long enough",
                                              "admin": True})
    assert answer.status == 422 and answer.error_field == "admin"
    await add_user(api)
    answer = await api.post("/api/v1/users", {"username": "ALICE", "password": "long enough"})
    assert answer.status == 409 and answer.error_field == "username"
    answer = await api.patch("/api/v1/users/alice", {"password": "short"})
    assert answer.status == 422 and answer.error_field == "password"
    answer = await api.patch("/api/v1/users/alice", {"username": "eve"})
    assert answer.status == 422 and answer.error_field == "username"
    assert (await api.patch("/api/v1/users/nobody", {"display_name": "x"})).status == 404


# Groups


@pytest_twisted.ensureDeferred
async def test_groups_and_members(api):
    """Groups are added with members, shown, changed one member at a time and deleted."""
    await add_user(api, "alice")
    await add_user(api, "bob")
    answer = await api.post("/api/v1/groups", {"name": "Team", "members": ["alice"]})
    assert answer.status == 201 and answer.json["name"] == "team"
    assert answer.json["members"] == ["alice"]

    answer = await api.post("/api/v1/groups/team/members", {"username": "bob"})
    assert answer.status == 200 and answer.json["members"] == ["alice", "bob"]
    answer = await api.post("/api/v1/groups/team/members", {"username": "bob"})
    assert answer.status == 409 and answer.error_field == "username"
    answer = await api.post("/api/v1/groups/team/members", {"username": "carol"})
    assert answer.status == 404 and answer.error_field == "members"
    answer = await api.get("/api/v1/groups/team")
    assert answer.json == {"name": "team", "members": ["alice", "bob"], "mailboxes": []}

    assert (await api.delete("/api/v1/groups/team/members/alice")).status == 204
    answer = await api.delete("/api/v1/groups/team/members/alice")
    assert answer.status == 404 and answer.error_field == "username"
    assert [g["members"] for g in (await api.get("/api/v1/groups")).json["items"]] == [["bob"]]

    answer = await api.post("/api/v1/groups", {"name": "alice"})
    assert answer.status == 409 and answer.error_field == "name"
    answer = await api.post("/api/v1/groups", {"name": "crew", "members": ["nobody"]})
    assert answer.status == 404 and answer.error_field == "members"
    assert (await api.delete("/api/v1/groups/team")).status == 204
    answer = await api.get("/api/v1/groups/team")
    assert answer.status == 404 and answer.error_field == "name"


@pytest_twisted.ensureDeferred
async def test_group_named_by_address_gets_its_mailbox(api):
    """A group added by address gets that group mailbox; the group cannot go while it has it."""
    await add_domain(api)
    await add_user(api)
    answer = await api.post("/api/v1/groups", {"name": "sales@example.com", "members": ["alice"]})
    assert answer.status == 201
    assert answer.json["name"] == "sales" and answer.json["mailboxes"] == ["sales@example.com"]
    mailbox = (await api.get("/api/v1/mailboxes/sales@example.com")).json
    assert mailbox["owner_type"] == "group" and mailbox["owner"] == "sales"
    answer = await api.delete("/api/v1/groups/sales")
    assert answer.status == 409 and answer.error_field == "name"


# Mailboxes and aliases


@pytest_twisted.ensureDeferred
async def test_mailbox_crud(api):
    """Mailboxes are added, listed with filters, shown with aliases, given away and deleted."""
    await add_domain(api, "example.com")
    await add_domain(api, "example.org")
    await add_user(api, "alice")
    await add_user(api, "bob")
    mailbox = await add_mailbox(api, "Alice@Example.com")
    assert mailbox["address"] == "alice@example.com" and mailbox["owner"] == "alice"
    assert mailbox["owner_type"] == "user"
    await add_mailbox(api, "alice@example.org")
    await add_mailbox(api, "bob@example.org", owner="bob")

    def addresses(answer):
        return [m["address"] for m in answer.json["items"]]
    assert addresses(await api.get("/api/v1/mailboxes")) == [
        "alice@example.com", "alice@example.org", "bob@example.org"]
    assert addresses(await api.get("/api/v1/mailboxes?domain=example.org")) == [
        "alice@example.org", "bob@example.org"]
    assert addresses(await api.get("/api/v1/mailboxes?owner=alice&domain=example.org")) == [
        "alice@example.org"]
    assert (await api.get("/api/v1/mailboxes?domain=nowhere.test")).json == {"items": []}
    answer = await api.get("/api/v1/mailboxes?domain=not%20a%20domain")
    assert answer.status == 404 and answer.error_field == "domain"

    answer = await api.get("/api/v1/mailboxes/alice@example.com")
    assert answer.status == 200 and answer.json["aliases"] == []
    answer = await api.patch("/api/v1/mailboxes/alice@example.com", {"owner": "bob"})
    assert answer.status == 200 and answer.json["owner"] == "bob"
    answer = await api.patch("/api/v1/mailboxes/alice@example.com", {"owner": "nobody"})
    assert answer.status == 404 and answer.error_field == "owner"
    answer = await api.patch("/api/v1/mailboxes/alice@example.com", {"colour": "red"})
    assert answer.status == 422 and answer.error_field == "colour"

    assert (await api.delete("/api/v1/mailboxes/alice@example.com")).status == 204
    answer = await api.get("/api/v1/mailboxes/alice@example.com")
    assert answer.status == 404 and answer.error_field == "address"


@pytest_twisted.ensureDeferred
async def test_mailbox_owner_and_domain_must_exist(api):
    """A mailbox for an unknown user is 404 `owner`; in an unknown domain, 404; taken, 409."""
    await add_domain(api)
    answer = await api.post("/api/v1/mailboxes", {"address": "alice@example.com", "owner": "alice"})
    assert answer.status == 404 and answer.error_field == "owner"
    await add_user(api)
    answer = await api.post("/api/v1/mailboxes", {"address": "alice@nowhere.test", "owner": "alice"})
    assert answer.status == 404
    await add_mailbox(api, "alice@example.com")
    answer = await api.post("/api/v1/mailboxes", {"address": "ALICE@example.com", "owner": "alice"})
    assert answer.status == 409 and answer.error_field == "address"
    answer = await api.post("/api/v1/mailboxes", {"address": "x@example.com", "owner": "alice",
                                                  "owner_type": "robot"})
    assert answer.status == 422 and answer.error_field == "owner_type"


@pytest_twisted.ensureDeferred
async def test_mailbox_naming_rules(api):
    """`+`, `-`, over 200 characters and a `.app` ending (for a non-app) are 422 `address`."""
    await add_domain(api)
    await add_user(api)
    for local in ["alice+tag", "alice-smith", "a" * 201, "shop.app", "two..dots", "", "a b"]:
        answer = await api.post("/api/v1/mailboxes", {"address": f"{local}@example.com",
                                                      "owner": "alice"})
        assert answer.status == 422, local
        assert answer.error_field == "address"
    assert (await add_mailbox(api, "a" * 200 + "@example.com"))["address"].startswith("a" * 200)


@pytest_twisted.ensureDeferred
async def test_app_mailbox_gets_a_password_once(api, container):
    """An app mailbox answers with its password once; it logs in with it; a reset makes another."""
    await add_domain(api)
    answer = await api.post("/api/v1/mailboxes", {"address": "billing.app@example.com",
                                                  "owner_type": "app"})
    assert answer.status == 201 and answer.json["owner_type"] == "app"
    password = answer.json["password"]
    assert len(password) >= 24
    login = await container.authenticator.authenticate("billing.app@example.com", password)
    assert login.username is None
    shown = await api.get("/api/v1/mailboxes/billing.app@example.com")
    assert "password" not in shown.json

    answer = await api.patch("/api/v1/mailboxes/billing.app@example.com",
                             {"reset_app_password": True})
    assert answer.status == 200 and answer.json["password"] != password
    with pytest.raises(AuthenticationFailed):
        await container.authenticator.authenticate("billing.app@example.com", password)

    answer = await api.post("/api/v1/mailboxes", {"address": "billing@example.com",
                                                  "owner_type": "app"})
    assert answer.status == 422 and answer.error_field == "address"


@pytest_twisted.ensureDeferred
async def test_aliases(api):
    """Aliases are added, listed and deleted; clashes are 409 and an unknown mailbox 404."""
    await add_domain(api)
    await add_user(api)
    await add_mailbox(api, "alice@example.com")
    await api.post("/api/v1/groups", {"name": "team", "members": ["alice"]})

    answer = await api.post("/api/v1/aliases", {"address": "Al@example.com",
                                                "mailbox": "alice@example.com"})
    assert answer.status == 201
    assert answer.json["address"] == "al@example.com"
    assert answer.json["mailbox"] == "alice@example.com"
    listed = await api.get("/api/v1/aliases?mailbox=alice@example.com")
    assert [a["address"] for a in listed.json["items"]] == ["al@example.com"]
    listed = await api.get("/api/v1/aliases?domain=example.com")
    assert [a["address"] for a in listed.json["items"]] == ["al@example.com"]
    assert (await api.get("/api/v1/mailboxes/alice@example.com")).json["aliases"] == [
        "al@example.com"]
    answer = await api.get("/api/v1/aliases?mailbox=nobody@example.com")
    assert answer.status == 404 and answer.error_field == "mailbox"

    for body, status, wrong in [
            ({"address": "alice@example.com", "mailbox": "alice@example.com"}, 409, "address"),
            ({"address": "al@example.com", "mailbox": "alice@example.com"}, 409, "address"),
            ({"address": "team@example.com", "mailbox": "alice@example.com"}, 409, "address"),
            ({"address": "x@example.com", "mailbox": "nobody@example.com"}, 404, "mailbox"),
            ({"address": "x-y@example.com", "mailbox": "alice@example.com"}, 422, "address"),
            ({"address": "x@example.com"}, 422, "mailbox")]:
        answer = await api.post("/api/v1/aliases", body)
        assert (answer.status, answer.error_field) == (status, wrong), body

    assert (await api.delete("/api/v1/aliases/al@example.com")).status == 204
    answer = await api.delete("/api/v1/aliases/al@example.com")
    assert answer.status == 404 and answer.error_field == "address"


# Requests that are wrong in themselves


@pytest_twisted.ensureDeferred
async def test_body_must_be_a_json_object(api):
    """A body that is not JSON, not UTF-8, not an object, or empty is 400 naming `body`."""
    for raw in [b"name=example.com", b"\xff\xfe{}", b'["example.com"]', b"", b"NaN",
                b'{"name": "example.com"']:
        answer = await api.post("/api/v1/domains", raw=raw)
        assert answer.status == 400, raw
        assert answer.error_field == "body"


@pytest_twisted.ensureDeferred
async def test_unknown_fields_are_refused(api):
    """A POST body with a field the operation does not take is 422 naming that field."""
    answer = await api.post("/api/v1/domains", {"name": "example.com", "nmae": "x"})
    assert answer.status == 422 and answer.error_field == "nmae"
    assert (await api.get("/api/v1/domains")).json == {"items": []}


def _send_chunked_body(port: int, size: int) -> bytes:
    """POST a chunked body of `size` bytes (as far as the server lets it) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /api/v1/domains HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
                  b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        try:
            for _ in range(size // len(chunk)):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass
        answer = b""
        try:
            while data := s.recv(4096):
                answer += data
        except ConnectionResetError:
            pass
        return answer


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_one_mebibyte_is_413(api):
    """A chunked body growing past 1 MiB is refused with 413 and nothing is created."""
    port = int(api.base.rsplit(":", 1)[1])
    answer = await deferToThread(_send_chunked_body, port, 4 << 20)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert (await api.get("/api/v1/domains")).json == {"items": []}


def _declare_huge_body(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /api/v1/domains HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n{")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        return answer


@pytest_twisted.ensureDeferred
async def test_huge_body_is_refused_before_it_is_sent(api):
    """A declared 100 MiB body gets 413 at once: the server neither waits for it nor stores it."""
    port = int(api.base.rsplit(":", 1)[1])
    answer = await deferToThread(_declare_huge_body, port)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["error"]["field"] == "body"


@pytest_twisted.ensureDeferred
async def test_unknown_route_and_wrong_method(api):
    """An unknown route is 404 JSON; a known route with the wrong method is 405 JSON with Allow."""
    for path in ["/nothing", "/api/v1/nothing", "/api/v1/domains/a/b/c"]:
        answer = await api.get(path)
        assert answer.status == 404, path
        assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
        assert answer.json["error"]["status"] == 404
    answer = await api.put("/api/v1/domains", {"name": "example.com"})
    assert answer.status == 405 and answer.json["error"]["status"] == 405
    assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD", "POST"}


@pytest_twisted.ensureDeferred
async def test_unexpected_error_is_500_json_and_logged(api, container, logged):
    """A bug behind a route is logged with its traceback but answered with a plain 500 JSON."""
    async def broken() -> list:
        raise RuntimeError("internal detail")
    container.admin_service.list_domains = broken
    answer = await api.get("/api/v1/domains")
    assert answer.status == 500 and answer.json["error"]["status"] == 500
    assert "internal detail" not in answer.raw.decode()
    assert "Traceback" not in answer.raw.decode()
    assert any("admin: GET /api/v1/domains failed" in line for line in logged)
    assert (await api.get("/health", token=None)).status == 200


@pytest_twisted.ensureDeferred
async def test_changes_are_logged_without_passwords(api, logged):
    """Each change is one structured log line; no password ever reaches the log."""
    await add_domain(api)
    await add_user(api, "alice", "correct horse")
    await api.patch("/api/v1/users/alice", {"password": "battery staple"})
    await api.patch("/api/v1/domains/example.com",
                    {"relay": {"host": "relay.test", "username": "u", "password": "relay secret"}})
    app = await api.post("/api/v1/mailboxes", {"address": "shop.app@example.com",
                                               "owner_type": "app"})
    text = "\n".join(logged)
    assert "admin: created domain example.com" in text
    assert "admin: created user alice" in text
    assert "admin: changed user alice (password)" in text
    assert "admin: changed domain example.com (relay)" in text
    assert "admin: created mailbox shop.app@example.com" in text
    for secret in ["correct horse", "battery staple", "relay secret", app.json["password"],
                   "secret"]:
        assert secret not in text, secret


# The OpenAPI document tells the truth


def test_openapi_routes_match_the_app():
    """Every Klein route is in openapi.json with the same methods, and nothing else is."""
    served: dict[str, set[str]] = {}
    for rule in AdminApi.app.url_map.iter_rules():
        served.setdefault(openapi_path(rule.rule), set()).update(
            m.lower() for m in rule.methods if m not in ("HEAD", "OPTIONS"))
    documented = {path: {m for m in item if m in HTTP_METHODS}
                  for path, item in OPENAPI["paths"].items()}
    assert served == documented


def test_openapi_document_is_whole():
    """Every $ref resolves, every path parameter is declared, and /api/v1 needs the bearer token."""
    def resolve(ref: str) -> Any:
        node: Any = OPENAPI
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                resolve(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(OPENAPI)

    assert OPENAPI["openapi"].startswith("3.1")
    assert OPENAPI["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert OPENAPI["security"] == [{"bearerAuth": []}]
    for path, item in OPENAPI["paths"].items():
        names = {resolve(p["$ref"])["name"] if "$ref" in p else p["name"]
                 for p in item.get("parameters", [])}
        assert names == set(re.findall(r"{(\w+)}", path)), path
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            public = operation.get("security") == []
            assert public == (not path.startswith("/api/v1/")), (method, path)
            assert public or "401" in operation["responses"], (method, path)
