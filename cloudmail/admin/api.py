"""The JSON admin API: a thin HTTP skin over `AdminService` (Klein, served by twisted.web).

Every rule of the address book lives in the service layer; this module only turns requests into
service calls and the answers (or `ServiceError`s) into JSON, checks the bearer token and logs each
change in one structured line, never with a password. The routes and their answers are described
in `openapi.json` next to this file, served at `/openapi.json`; a test keeps the two in step.

`/health` and `/openapi.json` need no token; everything under `/api/v1/` needs
`Authorization: Bearer <token>`. Until the server has started (`token` is None) every
authenticated request is refused.
"""

from __future__ import annotations

import functools
import hmac
import json
from importlib import resources
from typing import Any, Awaitable, Callable

from klein import Klein
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, TimeoutError, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site
from werkzeug import exceptions as http
from werkzeug.routing import RequestRedirect

from cloudmail.errors import BadRequest, DirectoryUnavailable, Invalid, ServiceError

log = Logger()

MAX_BODY = 1 << 20
API = "/api/v1"
Reply = tuple[int, Any]
_app = Klein()


class Unauthorized(ServiceError):
    """No bearer token, or not the right one."""

    status = 401


def error_body(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    """An error body of the same shape as `ServiceError.as_json()`."""
    return {"error": {"status": status, "field": field, "message": message}}


def write_json(request: IRequest, status: int, body: Any) -> bytes:
    """Set the status and headers of a JSON answer and return its bytes (none for 204)."""
    request.setResponseCode(status)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    if status == 204:
        return b""
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def write_error(request: IRequest, error: ServiceError) -> bytes:
    """A `ServiceError` as its status and JSON body; a 401 also gets its Bearer challenge."""
    if isinstance(error, Unauthorized):
        challenge = 'Bearer realm="cloudmail"'
        if request.getHeader(b"Authorization"):
            challenge += ', error="invalid_token"'
        request.setHeader(b"WWW-Authenticate", challenge.encode("ascii"))
    return write_json(request, error.status, error.as_json())


def json_object(request: IRequest) -> dict[str, Any]:
    """The request body as a JSON object (UTF-8), else 400 naming `body`.

    `BoundedRequest` has already refused bodies over `MAX_BODY`.
    """
    request.content.seek(0)
    raw = request.content.read()

    def no_constants(name: str) -> None:
        raise ValueError(f"{name} is not JSON")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("body", "the body must be a JSON object (UTF-8)")
    if not isinstance(body, dict):
        raise BadRequest("body", "the body must be a JSON object")
    return body


def fields(request: IRequest, required: tuple[str, ...] = (),
           optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object of the body, holding every `required` key and no key not listed (422)."""
    body = json_object(request)
    for key in body:
        if key not in required and key not in optional:
            raise Invalid(key, f"unknown field (expected {', '.join(required + optional)})")
    for key in required:
        if key not in body:
            raise Invalid(key, "is required")
    return body


def optional_fields(request: IRequest, optional: tuple[str, ...]) -> dict[str, Any]:
    """Like `fields`, for a body that may also be left out (empty): then no fields."""
    request.content.seek(0)
    if not request.content.read().strip():
        return {}
    return fields(request, (), optional)


def query(request: IRequest, name: str) -> str | None:
    """A query parameter as text; absent or empty is None."""
    values = request.args.get(name.encode("ascii"))
    if not values or not values[0]:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(name, "must be UTF-8")


def items(values: list[Any]) -> dict[str, Any]:
    """A list answer: always an object, so fields can be added later."""
    return {"items": values}


def _method(request: IRequest) -> str:
    return request.method.decode("ascii", "replace")


def _path(request: IRequest) -> str:
    return request.path.decode("utf-8", "replace")


def route(url: str, *methods: str, auth: bool = True):
    """Register an API handler: token check, errors to JSON, answer to JSON.

    The handler is `async (self, request, **path) -> (status, body)`. A `ServiceError` becomes its
    status and `as_json()`; anything else is logged and answered with a plain 500.
    """
    def register(handler: Callable[..., Awaitable[Reply]]):
        @functools.wraps(handler)
        async def endpoint(self: AdminApi, request: IRequest, **path: str) -> bytes:
            try:
                if auth:
                    self.authenticate(request)
                status, body = await handler(self, request, **path)
            except ServiceError as e:
                return write_error(request, e)
            except CancelledError:
                raise
            except Exception:
                log.failure("admin: {method} {path} failed", method=_method(request),
                            path=_path(request))
                return write_json(request, 500, error_body(500, "internal error; see the log"))
            return write_json(request, status, body)
        return _app.route(url, methods=list(methods), endpoint=handler.__name__)(endpoint)
    return register


@functools.cache
class BoundedRequest(Request):
    """A request whose body may not grow past `MAX_BODY`: refused with 413 as it arrives.

    twisted.web would otherwise store any body whole (in a temporary file) before the API sees
    it, so one client could fill the disk; here a too-large declared length, or a chunked body
    that grows too large, ends the connection at once.
    """

    _refused = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length if length is None or length <= MAX_BODY else 0)
        if length is not None and length > MAX_BODY:
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse()
            return
        super().handleContentChunk(data)

    def _refuse(self) -> None:
        self._refused = True
        body = json.dumps(error_body(413, f"the body is larger than {MAX_BODY} bytes",
                                     "body")).encode("utf-8")
        self.channel.transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.channel.loseConnection()


def openapi_document() -> Any:
    """The OpenAPI 3.1 description of this API, from the package data."""
    return json.loads(resources.files("cloudmail.admin").joinpath("openapi.json").read_bytes())


class AdminApi:
    """The admin API of one container; `resource()` is what the admin listener serves."""

    app = _app
    health_timeout = 3.0

    def __init__(self, container: Any) -> None:
        self.container = container
        self.token: str | None = None

    @property
    def service(self):
        return self.container.admin_service

    def resource(self):
        """The twisted.web resource of this API."""
        return self.app.resource()

    def site(self) -> Site:
        """The web site the admin listener serves: this API, with bounded request bodies."""
        site = Site(self.resource())
        site.requestFactory = BoundedRequest
        return site

    def authenticate(self, request: IRequest) -> None:
        """Let the request through only with the right bearer token (compared in constant time)."""
        header = (request.getHeader(b"Authorization") or b"").decode("latin-1")
        scheme, _, presented = header.strip().partition(" ")
        if self.token is None:
            raise Unauthorized(None, "the server has not started yet")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode("latin-1"), self.token.encode("utf-8")):
            log.warn("admin: refused {method} {path} from {peer}: no valid token",
                     method=_method(request), path=_path(request),
                     peer=getattr(request.getClientAddress(), "host", "?"))
            raise Unauthorized(None, "a valid bearer token is required")

    # Unauthenticated

    @route("/health", "GET", auth=False)
    async def health(self, request: IRequest) -> Reply:
        """200 while the database answers (directory trouble only degrades); 503 when it fails."""
        def reason(e: Exception) -> str:
            if isinstance(e, TimeoutError):
                return f"no answer within {self.health_timeout:g} s"
            return str(e) or type(e).__name__
        try:
            await self.container.database.transact(lambda c: c.execute("SELECT 1").fetchone()
                                                   ).addTimeout(self.health_timeout, reactor)
        except Exception as e:
            log.failure("admin: health check: the database fails")
            return 503, {"status": "unavailable", "database": "failing", "directory": "unknown",
                         "reason": f"database: {reason(e)}"}
        try:
            await ensureDeferred(self.container.directory.check()).addTimeout(
                self.health_timeout, reactor)
        except Exception as e:
            if not isinstance(e, (DirectoryUnavailable, TimeoutError)):
                log.failure("admin: health check: the directory check failed")
            return 200, {"status": "degraded", "database": "ok", "directory": "unavailable",
                         "reason": f"directory: {reason(e)}"}
        return 200, {"status": "ok", "database": "ok", "directory": "ok"}

    @route("/openapi.json", "GET", auth=False)
    async def openapi(self, request: IRequest) -> Reply:
        return 200, openapi_document()

    # Domains

    @route(f"{API}/domains", "GET")
    async def list_domains(self, request: IRequest) -> Reply:
        return 200, items(await self.service.list_domains())

    @route(f"{API}/domains", "POST")
    async def add_domain(self, request: IRequest) -> Reply:
        domain = await self.service.add_domain(fields(request, ("name",))["name"])
        log.info("admin: created domain {name}", name=domain["name"])
        return 201, domain

    @route(f"{API}/domains/<name>", "GET")
    async def get_domain(self, request: IRequest, name: str) -> Reply:
        return 200, await self.service.get_domain(name)

    @route(f"{API}/domains/<name>", "PATCH")
    async def update_domain(self, request: IRequest, name: str) -> Reply:
        body = json_object(request)
        domain = await self.service.update_domain(name, body)
        log.info("admin: changed domain {name} ({settings})", name=domain["name"],
                 settings=", ".join(sorted(body)))
        return 200, domain

    @route(f"{API}/domains/<name>", "DELETE")
    async def delete_domain(self, request: IRequest, name: str) -> Reply:
        await self.service.delete_domain(name)
        log.info("admin: deleted domain {name}", name=name)
        return 204, None

    @route(f"{API}/domains/<name>/dkim/rotate", "POST")
    async def rotate_dkim(self, request: IRequest, name: str) -> Reply:
        body = optional_fields(request, ("selector", "algorithm"))
        domain = await self.service.rotate_dkim(name, body.get("selector"),
                                                body.get("algorithm", "rsa"))
        signing = [k["selector"] for k in domain["dkim"]["keys"] if k["role"] != "retired"]
        log.info("admin: rotated a DKIM key of {name}; signing with {selectors}",
                 name=domain["name"], selectors=", ".join(signing))
        return 200, domain

    @route(f"{API}/domains/<name>/dkim/<selector>", "DELETE")
    async def remove_dkim_key(self, request: IRequest, name: str, selector: str) -> Reply:
        await self.service.remove_dkim_key(name, selector)
        log.info("admin: removed DKIM key {selector} of {name}", selector=selector, name=name)
        return 204, None

    @route(f"{API}/domains/<name>/catchall", "GET")
    async def get_catchall(self, request: IRequest, name: str) -> Reply:
        return 200, await self.service.get_catchall(name)

    @route(f"{API}/domains/<name>/catchall", "PUT")
    async def set_catchall(self, request: IRequest, name: str) -> Reply:
        catchall = await self.service.set_catchall(name, fields(request, ("mailboxes",))["mailboxes"])
        log.info("admin: set the catch-all of {domain} to {mailboxes}", domain=catchall["domain"],
                 mailboxes=", ".join(catchall["mailboxes"]) or "nothing")
        return 200, catchall

    # Users

    @route(f"{API}/users", "GET")
    async def list_users(self, request: IRequest) -> Reply:
        return 200, items(await self.service.list_users())

    @route(f"{API}/users", "POST")
    async def add_user(self, request: IRequest) -> Reply:
        body = fields(request, ("username",), ("password", "password_hash", "display_name"))
        user = await self.service.add_user(**body)
        log.info("admin: created user {username}", username=user["username"])
        return 201, user

    @route(f"{API}/users/<username>", "GET")
    async def get_user(self, request: IRequest, username: str) -> Reply:
        return 200, await self.service.get_user(username)

    @route(f"{API}/users/<username>", "PATCH")
    async def update_user(self, request: IRequest, username: str) -> Reply:
        body = fields(request, (), ("password", "display_name"))
        user = await self.service.update_user(username, **body)
        log.info("admin: changed user {username} ({fields})", username=user["username"],
                 fields=", ".join(sorted(body)))
        return 200, user

    @route(f"{API}/users/<username>", "DELETE")
    async def delete_user(self, request: IRequest, username: str) -> Reply:
        await self.service.delete_user(username)
        log.info("admin: deleted user {username}", username=username)
        return 204, None

    # Groups

    @route(f"{API}/groups", "GET")
    async def list_groups(self, request: IRequest) -> Reply:
        return 200, items(await self.service.list_groups())

    @route(f"{API}/groups", "POST")
    async def add_group(self, request: IRequest) -> Reply:
        group = await self.service.add_group(**fields(request, ("name",), ("members",)))
        log.info("admin: created group {name} with {members}", name=group["name"],
                 members=", ".join(group["members"]) or "no members")
        return 201, group

    @route(f"{API}/groups/<name>", "GET")
    async def get_group(self, request: IRequest, name: str) -> Reply:
        return 200, await self.service.get_group(name)

    @route(f"{API}/groups/<name>", "DELETE")
    async def delete_group(self, request: IRequest, name: str) -> Reply:
        await self.service.delete_group(name)
        log.info("admin: deleted group {name}", name=name)
        return 204, None

    @route(f"{API}/groups/<name>/members", "POST")
    async def add_member(self, request: IRequest, name: str) -> Reply:
        username = fields(request, ("username",))["username"]
        group = await self.service.add_member(name, username)
        log.info("admin: added {username} to group {name}", username=username, name=group["name"])
        return 200, group

    @route(f"{API}/groups/<name>/members/<username>", "DELETE")
    async def remove_member(self, request: IRequest, name: str, username: str) -> Reply:
        await self.service.remove_member(name, username)
        log.info("admin: removed {username} from group {name}", username=username, name=name)
        return 204, None

    # Mailboxes and aliases

    @route(f"{API}/mailboxes", "GET")
    async def list_mailboxes(self, request: IRequest) -> Reply:
        return 200, items(await self.service.list_mailboxes(query(request, "domain"),
                                                            query(request, "owner")))

    @route(f"{API}/mailboxes", "POST")
    async def add_mailbox(self, request: IRequest) -> Reply:
        body = fields(request, ("address",), ("owner", "owner_type"))
        mailbox = await self.service.add_mailbox(body["address"], body.get("owner"),
                                                 body.get("owner_type", "user"))
        log.info("admin: created mailbox {address} of {owner_type} {owner}",
                 address=mailbox["address"], owner_type=mailbox["owner_type"],
                 owner=mailbox["owner"])
        return 201, mailbox

    @route(f"{API}/mailboxes/<address>", "GET")
    async def get_mailbox(self, request: IRequest, address: str) -> Reply:
        return 200, await self.service.get_mailbox(address)

    @route(f"{API}/mailboxes/<address>", "PATCH")
    async def update_mailbox(self, request: IRequest, address: str) -> Reply:
        body = json_object(request)
        mailbox = await self.service.update_mailbox(address, body)
        log.info("admin: changed mailbox {address} ({fields})", address=mailbox["address"],
                 fields=", ".join(sorted(body)))
        return 200, mailbox

    @route(f"{API}/mailboxes/<address>", "DELETE")
    async def delete_mailbox(self, request: IRequest, address: str) -> Reply:
        await self.service.delete_mailbox(address)
        log.info("admin: deleted mailbox {address}", address=address)
        return 204, None

    @route(f"{API}/aliases", "GET")
    async def list_aliases(self, request: IRequest) -> Reply:
        return 200, items(await self.service.list_aliases(query(request, "domain"),
                                                          query(request, "mailbox")))

    @route(f"{API}/aliases", "POST")
    async def add_alias(self, request: IRequest) -> Reply:
        body = fields(request, ("address", "mailbox"))
        alias = await self.service.add_alias(body["address"], body["mailbox"])
        log.info("admin: created alias {address} of {mailbox}", address=alias["address"],
                 mailbox=alias["mailbox"])
        return 201, alias

    @route(f"{API}/aliases/<address>", "DELETE")
    async def delete_alias(self, request: IRequest, address: str) -> Reply:
        await self.service.delete_alias(address)
        log.info("admin: deleted alias {address}", address=address)
        return 204, None

    # The outbound queue and the test message (they live in the running server)

    @functools.cached_property
    def queue(self):
        from cloudmail.admin.queue import QueueAdmin
        return QueueAdmin(self.container)

    @route(f"{API}/queue", "GET")
    async def list_queue(self, request: IRequest) -> Reply:
        return 200, items(self.queue.list())

    @route(f"{API}/queue/retry", "POST")
    async def retry_queue(self, request: IRequest) -> Reply:
        retried = await self.queue.retry_all()
        log.info("admin: retrying every queued message now ({count})", count=len(retried))
        return 200, items(retried)

    @route(f"{API}/queue/<id>", "GET")
    async def get_queued(self, request: IRequest, id: str) -> Reply:
        return 200, self.queue.get(id)

    @route(f"{API}/queue/<id>/retry", "POST")
    async def retry_queued(self, request: IRequest, id: str) -> Reply:
        entry = await self.queue.retry(id)
        log.info("admin: retrying {queue_id} now", queue_id=entry["id"])
        return 200, entry

    @route(f"{API}/queue/<id>", "DELETE")
    async def delete_queued(self, request: IRequest, id: str) -> Reply:
        bounce = query(request, "bounce")
        if bounce not in (None, "true", "false"):
            raise BadRequest("bounce", "must be true or false")
        await self.queue.delete(id, bounce=bounce == "true")
        log.info("admin: deleted {queue_id} from the queue ({how})", queue_id=id,
                 how="returned to the sender" if bounce == "true" else "no bounce")
        return 204, None

    @route(f"{API}/mail/test", "POST")
    async def send_test(self, request: IRequest) -> Reply:
        body = fields(request, ("to",), ("from",))
        sent = await self.queue.send_test(body["to"], body.get("from"))
        log.info("admin: sent a test message from <{sender}> to <{to}> ({where})",
                 sender=sent["from"], to=sent["to"],
                 where=f"queued as {sent['queue_id']}" if sent["queue_id"] else "delivered here")
        return 202, sent

    # Sieve

    @route(f"{API}/sieve/test", "POST")
    async def test_sieve(self, request: IRequest) -> Reply:
        """The Sieve dry run (`cloudmail.sieve.dryrun`): what delivery to a fresh mailbox would
        do with the message; a script that does not compile is an answer too (200)."""
        from cloudmail.sieve.dryrun import dry_run

        body = fields(request, ("script", "message", "from", "to"))
        for name in ("script", "message", "from", "to"):
            if not isinstance(body[name], str):
                raise BadRequest(name, "must be a string")
            try:
                body[name].encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(name, "must be valid Unicode text (no lone surrogates)")
        result = await self.container.pools.run(
            "io", dry_run, body["script"], body["message"].encode("utf-8"), body["from"],
            body["to"])
        return 200, result.as_json()

    # What no route answers

    @_app.handle_errors(http.HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        """Unknown routes (404) and wrong methods (405) as JSON; under /api/v1 only with a token,
        so that nobody learns which routes exist without one."""
        error: http.HTTPException = failure.value
        if _path(request) == API or _path(request).startswith(API + "/"):
            try:
                self.authenticate(request)
            except Unauthorized as e:
                return write_error(request, e)
        if isinstance(error, http.MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"Allow", ", ".join(sorted(error.valid_methods)).encode("ascii"))
        if isinstance(error, RequestRedirect):
            request.setHeader(b"Location", error.new_url.encode("utf-8"))
        status = error.code or 500
        message = {404: "no such route", 405: f"{_method(request)} is not allowed here"}
        return write_json(request, status, error_body(status, message.get(status,
                                                                          error.description)))

    @_app.handle_errors(Exception)
    def unexpected_error(self, request: IRequest, failure: Failure) -> bytes:
        """Anything that escaped a handler: logged with its traceback, answered with a plain 500."""
        log.failure("admin: {method} {path} failed", failure, method=_method(request),
                    path=_path(request))
        return write_json(request, 500, error_body(500, "internal error; see the log"))
