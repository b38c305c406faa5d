"""`cloudmail-admin`: the address book from the command line.

A thin front end over `AdminService`, the same service layer as the admin API: this module parses
arguments, reads secrets and CSV files, calls one service coroutine and prints its answer (an
aligned table, `key: value` lines, or with `--json` the service's JSON). Every rule lives in the
service, so the command line can never accept what the API refuses.

It opens the server's own SQLite file through the same `Container`; WAL mode lets it run while the
server does. Passwords are read from stdin only, never from arguments (they would show in `ps`).

The outbound queue and the test message live in the running server, so `queue ...` and `send-test`
call its admin API instead: over HTTP on loopback at the `[listen] admin` address, with the
bearer token from `[admin] token_file`. When nobody answers there they say the server is not
running (exit 1).

`sieve test` (the Sieve dry run, `cloudmail.sieve.dryrun`) needs neither: it reads its files and
runs the script in this process, without the config, the database or the server. Its action
lines are its answer (exit 0), also `error: compile` and `error: runtime`; a compile error is
also printed on stderr as `SCRIPT:LINE:COLUMN: message`.

With `--json`, commands that delete print nothing (the service returns nothing); errors are
always one line on stderr. Exit status: 0 done; 1 the request could not be done (ServiceError,
unavailable directory, unreadable or malformed input file); 2 usage or configuration error;
130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cloudmail.admin.service import AdminService, ImportRow
from cloudmail.config import load_config
from cloudmail.database import SchemaTooNew
from cloudmail.errors import ConfigError, DirectoryUnavailable, ServiceError
from cloudmail.queue.relay import PROVIDERS

if TYPE_CHECKING:
    from cloudmail.app import Container

PROG = "cloudmail-admin"
IMPORT_COLUMNS = ("username", "password", "password_hash", "display_name", "mailboxes", "aliases")
IMPORT_REQUIRED = ("username", "mailboxes")

Run = Callable[[AdminService, argparse.Namespace], Any]


class CommandError(Exception):
    """A user error the command line finds itself (unreadable file, malformed CSV): exit 1."""


# Output


def plain(value: Any) -> str:
    """One value as table or `show` text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) if value else "-"
    return str(value)


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) pairs, in order."""
    pairs: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            pairs.extend(flatten(value, f"{prefix}{key}."))
        else:
            pairs.append((prefix + key, value))
    return pairs


def show(data: dict[str, Any]) -> str:
    """`key: value` lines, values aligned."""
    pairs = flatten(data)
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{k + ':':<{width}} {plain(v)}".rstrip() for k, v in pairs)


def table(*columns: tuple[str, Callable[[dict[str, Any]], Any]]) -> Callable[[list], str]:
    """A view printing rows as an aligned table: a header row, then one line per row."""
    def render(rows: list[dict[str, Any]]) -> str:
        lines = [[header for header, _ in columns]]
        lines += [[plain(get(row)) for _, get in columns] for row in rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                         for line in lines)
    return render


def key(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda row: row[name]


class Done:
    """The view of a command that returns nothing: a line saying what was done."""

    def __init__(self, template: str) -> None:
        self.template = template

    def render(self, args: argparse.Namespace) -> str:
        return self.template.format(**vars(args))


def relay_text(domain: dict[str, Any]) -> str | None:
    relay = domain["relay"]
    return f"{relay['host']}:{relay['port']} ({relay['tls']})" if relay["host"] else None


DKIM_ROLES = {"main": "signing ({algorithm}, main key)",
              "ed25519": "signing ({algorithm}, second signature)",
              "retired": "retired since {created} ({algorithm}): not signing; keep it published "
                         "until mail signed with it has arrived, then dkim-remove it"}


def domain_text(domain: dict[str, Any]) -> str:
    """A domain as `key: value` lines, then each DKIM TXT record to publish as
    `dkim.keys.SELECTOR.{status,record_name,record}`, saying which keys sign and which are
    retired."""
    dkim = dict(domain["dkim"])
    keys = dkim.pop("keys", [])
    dkim["keys"] = {k["selector"]: {"status": DKIM_ROLES[k["role"]].format(
                        algorithm=k["algorithm"], created=when(k["created"]) or "-"),
                        "record_name": k["record_name"], "record": k["record"]}
                    for k in keys}
    return show({**domain, "dkim": dkim})


def catchall_text(data: dict[str, Any]) -> str:
    targets = (plain(data["mailboxes"]) if data["mailboxes"]
               else "none (unknown addresses are rejected)")
    return f"domain:    {data['domain']}\nmailboxes: {targets}"


def import_text(counts: dict[str, Any]) -> str:
    return (f"imported {counts['users']} users, {counts['mailboxes']} mailboxes, "
            f"{counts['aliases']} aliases in {counts['seconds']:.1f} s")


DOMAINS = table(("NAME", key("name")), ("DKIM SELECTOR", lambda d: d["dkim"]["selector"]),
                ("RELAY", relay_text), ("MASQUERADE", key("masquerade")),
                ("CREATED", key("created")))
USERS = table(("USERNAME", key("username")), ("DISPLAY NAME", key("display_name")))
MAILBOXES = table(("ADDRESS", key("address")), ("OWNER TYPE", key("owner_type")),
                  ("OWNER", key("owner")), ("CREATED", key("created")))
ALIASES = table(("ADDRESS", key("address")), ("MAILBOX", key("mailbox")),
                ("CREATED", key("created")))
GROUPS = table(("NAME", key("name")), ("MEMBERS", key("members")))


# Input


def read_secret(prompt: str) -> str:
    """A password from stdin: asked twice, unechoed, at a terminal; else read (one newline cut)."""
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != first:
            raise CommandError("the passwords do not match")
        return first
    value = sys.stdin.read()
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise CommandError(f"{path}: cannot read {what}: {e.strerror or e}")
    except UnicodeDecodeError:
        raise CommandError(f"{path}: {what} is not UTF-8 text")


def read_import_csv(path: str) -> list[ImportRow]:
    """Parse the import CSV into ImportRows (line numbers are file lines; the header is line 1).

    Columns, by header name in any order: `username` and `mailboxes` (required), `password` and/or
    `password_hash`, `display_name`, `aliases`. `mailboxes` and `aliases` hold space-separated
    addresses; aliases go to the first mailbox. Exactly one of password/password_hash per row is
    checked by the service, with the rest of the rules.
    """
    reader = csv.reader(read_text(path, "the CSV file").splitlines(keepends=True), strict=True)
    try:
        header = [name.strip().lower() for name in next(reader, [])]
        if not header:
            raise CommandError(f"{path}: line 1: the header row is missing")
        unknown = [name for name in header if name not in IMPORT_COLUMNS]
        if unknown:
            raise CommandError(f"{path}: line 1: unknown column {unknown[0]!r} (known: "
                               f"{', '.join(IMPORT_COLUMNS)})")
        missing = [name for name in IMPORT_REQUIRED if name not in header]
        if missing or not {"password", "password_hash"} & set(header):
            need = missing[0] if missing else "password or password_hash"
            raise CommandError(f"{path}: line 1: the header has no {need} column")
        if len(set(header)) != len(header):
            raise CommandError(f"{path}: line 1: a column is named twice")
        rows = []
        line = reader.line_num + 1
        for fields in reader:
            if fields:
                if len(fields) != len(header):
                    raise CommandError(f"{path}: line {line}: expected {len(header)} fields, "
                                       f"found {len(fields)}")
                cell = dict(zip(header, (f.strip() for f in fields)))
                rows.append(ImportRow(
                    line=line, username=cell["username"],
                    password=cell.get("password") or None,
                    password_hash=cell.get("password_hash") or None,
                    display_name=cell.get("display_name", ""),
                    mailboxes=tuple(cell["mailboxes"].split()),
                    aliases=tuple(cell.get("aliases", "").split())))
            line = reader.line_num + 1
    except csv.Error as e:
        raise CommandError(f"{path}: line {reader.line_num}: malformed CSV: {e}")
    return rows


def relay_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `relay` object of `domain set` from `--relay HOST[:PORT]` and/or `--relay-provider`
    and their companions (a provider preset gives host and port unless `--relay` does)."""
    relay: dict[str, Any] = {}
    if args.relay_provider is not None:
        relay["provider"] = args.relay_provider
    if args.relay_region is not None:
        relay["region"] = args.relay_region
    if args.relay is not None:
        host, _, port = args.relay.rpartition(":")
        if not host or not port.isdigit():
            host, port = args.relay, ""
        relay["host"] = host
        if port:
            relay["port"] = int(port)
    if args.relay_tls is not None:
        relay["tls"] = args.relay_tls
    if args.relay_username is not None:
        relay["username"] = args.relay_username
    if args.relay_password is not None:
        relay["password"] = args.relay_password
    return relay


def domain_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The settings `domain set` changes, as the service's `update_domain` takes them."""
    changes: dict[str, Any] = {}
    if args.dkim_selector is not None:
        changes["dkim_selector"] = args.dkim_selector
    if args.dkim_key_file is not None:
        changes["dkim_private_key"] = read_text(args.dkim_key_file, "the DKIM key")
    if args.masquerade is not None:
        changes["masquerade"] = args.masquerade == "on"
    if args.dkim_ed25519 is not None:
        changes["dkim_ed25519"] = args.dkim_ed25519 == "on"
    companions = (args.relay_username or args.relay_password_stdin or args.relay_tls
                  or args.relay_region is not None)
    if args.no_relay:
        if companions or args.relay_provider is not None:
            raise CommandError("--no-relay takes no other --relay-* option")
        changes["relay"] = None
    elif args.relay is not None or args.relay_provider is not None:
        changes["relay"] = relay_settings(args)
    elif companions:
        raise CommandError("--relay-username, --relay-password-stdin, --relay-tls and "
                           "--relay-region need --relay or --relay-provider")
    if not changes:
        raise CommandError("domain set: nothing to change (see --help)")
    return changes


def read_inputs(args: argparse.Namespace) -> None:
    """Read what comes from stdin and files before the reactor starts, so it never waits on them."""
    args.password = read_secret("Password: ") if getattr(args, "password_stdin", False) else None
    args.relay_password = (read_secret("Relay password: ")
                           if getattr(args, "relay_password_stdin", False) else None)
    if args.run is domain_set:
        args.changes = domain_changes(args)
    if args.run is import_users:
        args.rows = read_import_csv(args.file)


# The server's admin API: the outbound queue and the test message live in the running server


class ServerDown(Exception):
    """The admin API does not answer (the server is not running, or listens elsewhere)."""


def parse_admin_endpoint(description: str) -> tuple[str, int]:
    """(host, port) to reach the `[listen] admin` endpoint string on, e.g. "tcp:8580" or
    "tcp:port=8580:interface=127.0.0.1" → ("127.0.0.1", 8580); any-address interfaces are
    reached on loopback. Raises ConfigError for a disabled or non-TCP listener."""
    if not description:
        raise ConfigError("[listen] admin is off: the queue and send-test commands need the "
                          "running server's admin API")
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", description)]
    kind, positional, named = parts[0].lower(), [], {}
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if equals:
            named[name] = value
        else:
            positional.append(part)
    if kind not in ("tcp", "tcp6"):
        raise ConfigError(f"[listen] admin = {description!r}: only a tcp listener can be "
                          "reached by cloudmail-admin")
    port = named.get("port", positional[0] if positional else "")
    interface = named.get("interface", positional[2] if len(positional) > 2 else "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"[listen] admin = {description!r}: no port to connect to")
    if interface in ("", "0.0.0.0"):
        interface = "::1" if kind == "tcp6" else "127.0.0.1"
    elif interface == "::":
        interface = "::1"
    return interface, int(port)


class AdminClient:
    """The running server's admin API over loopback HTTP (urllib), with its bearer token."""

    timeout = 60.0

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.base = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def where(self) -> str:
        return f"admin API at {self.host}:{self.port}"

    @classmethod
    def of_config(cls, config: Any) -> AdminClient:
        host, port = parse_admin_endpoint(config.listen.admin)
        path = config.admin.token_file
        try:
            token = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise ServerDown(f"no admin token in {path}: the server has never been started")
        except (OSError, UnicodeDecodeError) as e:
            raise CommandError(f"cannot read the admin token {path}: "
                               f"{getattr(e, 'strerror', None) or e}")
        return cls(host, port, token)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Call the API; its JSON answer (None for 204). Raises ServerDown when nobody answers,
        ServiceError for an error answer."""
        import http.client
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            with e:
                raise self._error(e.code, e.read()) from None
        except urllib.error.URLError as e:
            reason = e.reason
            text = (reason.strerror or str(reason)) if isinstance(reason, OSError) else str(reason)
            raise ServerDown(f"{self.where}: {text.lower()}") from None
        except (TimeoutError, ConnectionError) as e:
            raise ServerDown(f"{self.where}: {e.strerror or e}") from None
        except http.client.HTTPException as e:
            raise CommandError(f"the {self.where} gave no HTTP answer ({e!r}); is [listen] admin "
                               "right?") from None
        return json.loads(raw.decode("utf-8")) if raw else None

    def _error(self, status: int, raw: bytes) -> ServiceError:
        try:
            error = json.loads(raw.decode("utf-8"))["error"]
            field, message = error.get("field"), str(error["message"])
        except (ValueError, KeyError, TypeError):
            field, message = None, f"the {self.where} answered {status}"
        if status == 401:
            message = f"the {self.where} refused the token ({message})"
        failure = ServiceError(field, message)
        failure.status = status
        return failure


def when(value: str | None) -> str | None:
    """An API time (ISO 8601 UTC) as table text: "2025-05-01 12:00:00Z"."""
    return value.replace("T", " ").replace("+00:00", "Z") if value else None


def pending(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in entry["recipients"] if r["status"] in ("queued", "deferred")]


def last_error(recipient: dict[str, Any]) -> str | None:
    if not recipient["last_error"]:
        return None
    code = " ".join(str(v) for v in (recipient["last_code"], recipient["last_status"]) if v)
    return f"{code} {recipient['last_error']}" if code else recipient["last_error"]


def entry_error(entry: dict[str, Any]) -> str | None:
    """The last error of the first pending recipient that has one."""
    return next((e for r in pending(entry) if (e := last_error(r))), None)


QUEUE = table(("ID", key("id")), ("SENDER", lambda e: e["sender"] or "<>"),
              ("RECIPIENTS", lambda e: [r["address"] for r in pending(e) or e["recipients"]]),
              ("ATTEMPTS", lambda e: max((r["attempts"] for r in e["recipients"]), default=0)),
              ("NEXT TRY", lambda e: when(e["next_attempt"])), ("LAST ERROR", entry_error))
RECIPIENTS = table(("RECIPIENT", key("address")), ("STATUS", key("status")),
                   ("ATTEMPTS", key("attempts")), ("NEXT TRY", lambda r: when(r["next_attempt"])),
                   ("LAST TRY", lambda r: when(r["last_attempt"])),
                   ("REMOTE MTA", key("remote_mta")), ("LAST ERROR", last_error))


def queue_table(answer: dict[str, Any]) -> str:
    return QUEUE(answer["items"])


def queued_text(entry: dict[str, Any]) -> str:
    """One queue entry: its envelope as `key: value` lines, then its recipients as a table."""
    head = {"id": entry["id"], "sender": entry["sender"] or "<>", "created": when(entry["created"]),
            "size": entry["size"], "auth_user": entry["auth_user"],
            "next_attempt": when(entry["next_attempt"])}
    return f"{show(head)}\n\n{RECIPIENTS(entry['recipients'])}"


def retried_text(answer: dict[str, Any]) -> str:
    if "items" in answer:
        return f"retrying {len(answer['items'])} queued message(s) now"
    return f"retrying {answer['id']} now ({len(pending(answer))} recipient(s) due)"


def sent_text(sent: dict[str, Any]) -> str:
    where = [f"delivered to {', '.join(sent['delivered'])}"] if sent["delivered"] else []
    if sent["queue_id"]:
        where.append(f"queued as {sent['queue_id']} (see: {PROG} queue show {sent['queue_id']})")
    return f"sent the test message from <{sent['from']}> to <{sent['to']}>: " \
           f"{'; '.join(where) or 'nobody got it'}"


def queue_path(queue_id: str) -> str:
    import urllib.parse
    return f"/api/v1/queue/{urllib.parse.quote(queue_id, safe='')}"


def queue_retry(c: AdminClient, a: argparse.Namespace) -> Any:
    if a.all == (a.id is not None):
        raise CommandError("queue retry: give a queue ID or --all")
    if a.all:
        return c.request("POST", "/api/v1/queue/retry")
    return c.request("POST", queue_path(a.id) + "/retry")


def send_test(c: AdminClient, a: argparse.Namespace) -> Any:
    body = {"to": a.to}
    if a.sender is not None:
        body["from"] = a.sender
    return c.request("POST", "/api/v1/mail/test", body)


def sieve_test(args: argparse.Namespace) -> int:
    """`sieve test`: the dry run of a script on a message file; prints one action per line (or
    the JSON with `--json`). Exit 0 whatever the script does, 1 for an unreadable file."""
    from cloudmail.sieve.dryrun import dry_run

    try:
        script = read_text(args.script, "the Sieve script")
        message = read_message(args.message)
    except CommandError as e:
        return fail(str(e), 1)
    personal = Path(args.personal) if args.personal is not None else None
    global_ = Path(args.global_dir) if args.global_dir is not None else None
    result = dry_run(script, message, args.sender, args.recipient, personal=personal,
                     global_=global_)
    if result.error is not None:
        position = result.error.position
        print(f"{args.script}:{position.line}:{position.column}: {result.error.message}",
              file=sys.stderr)
    elif result.runtime_error is not None:
        print(f"{args.script}: runtime error: {result.runtime_error}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    else:
        for line in result.lines:
            print(line)
    return 0


def read_message(path: str) -> bytes:
    """The message file as bytes ("-": standard input)."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CommandError(f"{path}: cannot read the message: {e.strerror or e}")


def remote(parser: argparse.ArgumentParser, run: Callable[[AdminClient, argparse.Namespace], Any],
           view: Any = show) -> argparse.ArgumentParser:
    """Mark a command as one the running server does, through its admin API."""
    parser.set_defaults(run=None, remote=run, view=view)
    return parser


# Commands: each takes the service and the arguments and returns the service's JSON


def domain_set(s: AdminService, a: argparse.Namespace):
    return s.update_domain(a.name, a.changes)


async def import_users(s: AdminService, a: argparse.Namespace) -> dict[str, Any]:
    """Import the rows, hashing with a progress bar on stderr (when it is a terminal)."""
    from tqdm import tqdm

    start = time.monotonic()
    with tqdm(total=len(a.rows), unit="user", desc="hashing", file=sys.stderr,
              disable=None, leave=False) as bar:
        counts = await s.import_users(a.rows, bar.update)
    return {**counts, "seconds": round(time.monotonic() - start, 2)}


async def mailbox_add(s: AdminService, a: argparse.Namespace) -> dict[str, Any]:
    if a.app:
        created = await s.add_mailbox(a.address, None, "app")
        print(f"{PROG}: note: the app password is shown only now; keep it", file=sys.stderr)
        return created
    if a.owner_group is not None:
        return await s.add_mailbox(a.address, a.owner_group, "group")
    return await s.add_mailbox(a.address, a.owner, "user")


class Commands:
    """Builds the parser: nouns, then verbs, each verb with its service call and its view."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.nouns = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True)

    def noun(self, name: str, help: str) -> argparse._SubParsersAction:
        parser = self.nouns.add_parser(name, help=help, description=help, allow_abbrev=False)
        return parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    @staticmethod
    def verb(verbs: argparse._SubParsersAction, name: str, help: str, run: Run,
             view: Any = show) -> argparse.ArgumentParser:
        """Add a verb: `run` calls the service, `view` turns its result into text (or a `Done`)."""
        parser = verbs.add_parser(name, help=help, description=help, allow_abbrev=False)
        parser.set_defaults(run=run, view=view)
        return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Manage cloudmail's domains, users, groups, mailboxes and aliases. Works on "
                    "the server's database directly, also while the server runs.")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help="the server's TOML config file (default: the embedded defaults)")
    parser.add_argument("--json", action="store_true",
                        help="print the JSON the service returns instead of a table")
    c = Commands(parser)

    v = c.noun("domain", "mail domains, their DKIM keys and outbound relays")
    p = c.verb(v, "add", "add a domain (a DKIM key is made for it)",
               lambda s, a: s.add_domain(a.name), domain_text)
    p.add_argument("name")
    c.verb(v, "list", "list the domains", lambda s, a: s.list_domains(), DOMAINS)
    p = c.verb(v, "show", "show a domain with every DKIM TXT record to publish (signing and "
               "retired keys)", lambda s, a: s.get_domain(a.name), domain_text)
    p.add_argument("name")
    p = c.verb(v, "dkim-rotate", "make a new DKIM key that signs from now on; the old one stays "
               "published as retired until dkim-remove",
               lambda s, a: s.rotate_dkim(a.name, a.selector, a.algorithm), domain_text)
    p.add_argument("name")
    p.add_argument("--selector", metavar="S",
                   help="the new key's selector (default: the old one's with -YYYYMMDD)")
    p.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa",
                   help="rsa: a new main key (default); ed25519: a new Ed25519 key")
    p = c.verb(v, "dkim-remove", "stop publishing a retired DKIM key (or drop the Ed25519 one)",
               lambda s, a: s.remove_dkim_key(a.name, a.selector), domain_text)
    p.add_argument("name")
    p.add_argument("selector")
    p = c.verb(v, "delete", "delete a domain (it must hold no mailboxes or aliases)",
               lambda s, a: s.delete_domain(a.name), Done("deleted domain {name}"))
    p.add_argument("name")
    p = c.verb(v, "set", "change a domain's DKIM selector or key, masquerading or relay",
               domain_set, domain_text)
    p.add_argument("name")
    p.add_argument("--dkim-selector", metavar="S",
                   help="rename the main DKIM key's selector (a DNS label)")
    p.add_argument("--dkim-key-file", metavar="PEM", help="an RSA or Ed25519 private key file")
    p.add_argument("--dkim-ed25519", choices=("on", "off"),
                   help="sign with an Ed25519 key (selector S-ed25519) next to the main key")
    p.add_argument("--masquerade", choices=("on", "off"),
                   help="let users send as any address of the domain")
    relay = p.add_mutually_exclusive_group()
    relay.add_argument("--relay", metavar="HOST[:PORT]",
                       help="send outbound mail through HOST (default: the provider's)")
    relay.add_argument("--no-relay", action="store_true", help="deliver directly by MX again")
    p.add_argument("--relay-username", metavar="U", help="the relay login name")
    p.add_argument("--relay-password-stdin", action="store_true",
                   help="read the relay password from stdin")
    p.add_argument("--relay-tls", choices=("starttls", "tls", "none"),
                   help="how to reach the relay (default starttls)")
    p.add_argument("--relay-provider", choices=PROVIDERS, metavar="NAME",
                   help=f"a sending service whose host and port are filled in: "
                        f"{', '.join(PROVIDERS)} (custom: give --relay)")
    p.add_argument("--relay-region", metavar="REGION",
                   help="the Amazon SES region (with --relay-provider amazon-ses; "
                        "default us-east-1)")

    v = c.noun("user", "users of the built-in directory")
    p = c.verb(v, "add", "add a user with a password from stdin or a ready hash",
               lambda s, a: s.add_user(a.name, a.password, a.password_hash, a.display_name))
    p.add_argument("name")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the password from stdin")
    secret.add_argument("--password-hash", metavar="HASH",
                        help="an argon2, bcrypt or {SSHA} hash (made argon2id at first login)")
    p.add_argument("--display-name", metavar="TEXT", default="")
    c.verb(v, "list", "list the users", lambda s, a: s.list_users(), USERS)
    p = c.verb(v, "show", "show a user and its mailboxes", lambda s, a: s.get_user(a.name))
    p.add_argument("name")
    p = c.verb(v, "passwd", "set a user's password (read from stdin)",
               lambda s, a: s.update_user(a.name, a.password),
               Done("changed the password of {name}"))
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", required=True,
                   help="read the password from stdin")
    p = c.verb(v, "delete", "delete a user (it must own no mailboxes)",
               lambda s, a: s.delete_user(a.name), Done("deleted user {name}"))
    p.add_argument("name")

    v = c.noun("mailbox", "mailboxes of users, groups and apps")
    p = c.verb(v, "add", "add a mailbox; an app mailbox's password is printed once", mailbox_add)
    p.add_argument("address")
    owner = p.add_mutually_exclusive_group(required=True)
    owner.add_argument("--owner", metavar="USER", help="the user who owns it")
    owner.add_argument("--owner-group", metavar="GROUP", help="the group it forwards to")
    owner.add_argument("--app", action="store_true", help="an app mailbox (name.app@domain)")
    p = c.verb(v, "list", "list mailboxes", lambda s, a: s.list_mailboxes(a.domain, a.owner),
               MAILBOXES)
    p.add_argument("--domain", metavar="D", help="only those of this domain")
    p.add_argument("--owner", metavar="O", help="only those of this user or group")
    p = c.verb(v, "show", "show a mailbox and its aliases", lambda s, a: s.get_mailbox(a.address))
    p.add_argument("address")
    p = c.verb(v, "delete", "delete a mailbox with its aliases (its mail stays on disk)",
               lambda s, a: s.delete_mailbox(a.address), Done("deleted mailbox {address}"))
    p.add_argument("address")

    v = c.noun("alias", "other addresses of mailboxes")
    p = c.verb(v, "add", "add an alias of a mailbox", lambda s, a: s.add_alias(a.address, a.to))
    p.add_argument("address")
    p.add_argument("--to", metavar="MAILBOX", required=True, help="the mailbox it delivers to")
    p = c.verb(v, "list", "list aliases", lambda s, a: s.list_aliases(a.domain, a.mailbox), ALIASES)
    p.add_argument("--domain", metavar="D", help="only those of this domain")
    p.add_argument("--mailbox", metavar="M", help="only those of this mailbox")
    p = c.verb(v, "delete", "delete an alias", lambda s, a: s.delete_alias(a.address),
               Done("deleted alias {address}"))
    p.add_argument("address")

    v = c.noun("group", "groups of users (an address makes a group mailbox too)")
    p = c.verb(v, "add", "add a group; given NAME@DOMAIN, also its group mailbox",
               lambda s, a: s.add_group(a.name, a.member))
    p.add_argument("name", metavar="NAME_OR_ADDRESS")
    p.add_argument("--member", metavar="USER", action="append", default=[],
                   help="a member (repeat for more)")
    c.verb(v, "list", "list the groups", lambda s, a: s.list_groups(), GROUPS)
    p = c.verb(v, "show", "show a group, its members and mailboxes",
               lambda s, a: s.get_group(a.name))
    p.add_argument("name")
    p = c.verb(v, "delete", "delete a group (it must own no mailboxes)",
               lambda s, a: s.delete_group(a.name), Done("deleted group {name}"))
    p.add_argument("name")
    members = v.add_parser("member", help="add or remove group members",
                           description="add or remove group members", allow_abbrev=False)
    mv = members.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = c.verb(mv, "add", "put a user in a group", lambda s, a: s.add_member(a.name, a.user))
    p.add_argument("name")
    p.add_argument("user")
    p = c.verb(mv, "remove", "take a user out of a group",
               lambda s, a: s.remove_member(a.name, a.user))
    p.add_argument("name")
    p.add_argument("user")

    v = c.noun("catchall", "where mail to a domain's unknown addresses goes")
    p = c.verb(v, "set", "set the catch-all mailboxes (none: unknown addresses are rejected)",
               lambda s, a: s.set_catchall(a.domain, a.mailboxes), catchall_text)
    p.add_argument("domain")
    p.add_argument("mailboxes", metavar="MAILBOX", nargs="*")
    p = c.verb(v, "show", "show the catch-all mailboxes", lambda s, a: s.get_catchall(a.domain),
               catchall_text)
    p.add_argument("domain")

    v = c.noun("queue", "the running server's outbound queue (through its admin API)")
    remote(c.verb(v, "list", "list the queued messages: recipients, attempts, next try, last "
                  "error", None), lambda c, a: c.request("GET", "/api/v1/queue"), queue_table)
    p = remote(c.verb(v, "show", "show a queued message and where each recipient stands", None),
               lambda c, a: c.request("GET", queue_path(a.id)), queued_text)
    p.add_argument("id", metavar="ID")
    p = remote(c.verb(v, "retry", "try a queued message (or all) again now", None), queue_retry,
               retried_text)
    p.add_argument("id", metavar="ID", nargs="?")
    p.add_argument("--all", action="store_true", help="every queued message")
    p = remote(c.verb(v, "delete", "delete a queued message (silently, unless --bounce)", None),
               lambda c, a: c.request("DELETE", queue_path(a.id) + ("?bounce=true" if a.bounce
                                                                    else "")),
               Done("deleted {id} from the queue"))
    p.add_argument("id", metavar="ID")
    p.add_argument("--bounce", action="store_true",
                   help="return it to its sender with a delivery status notification")

    p = c.nouns.add_parser(
        "send-test", allow_abbrev=False, help="send a test message through the running server",
        description="Send a short test message through the running server (its admin API): "
                    "DKIM-signed when the sender's domain has a key, delivered here or queued "
                    "like users' mail.")
    remote(p, send_test, sent_text)
    p.add_argument("to", metavar="TO", help="the recipient (any address)")
    p.add_argument("--from", dest="sender", metavar="ADDR",
                   help="the sender, an address of one of our domains (default postmaster@ the "
                        "first domain)")

    v = c.noun("sieve", "Sieve filter scripts")
    p = v.add_parser(
        "test", allow_abbrev=False,
        help="dry-run a Sieve script on a message file: print what delivery would do",
        description="Run a Sieve script on a message with the envelope given, as delivery to a\n"
                    "fresh mailbox (folders INBOX, Junk and Archive, no vacation history) would,\n"
                    "and print what delivery would do, one action per line:\n\n"
                    "  keep [flags=\"F1 F2\"]\n"
                    "  fileinto \"MAILBOX\" [create] [flags=\"F1 F2\"]\n"
                    "  redirect \"ADDRESS\" [suppressed=\"mail-loop\"]\n"
                    "  discard\n"
                    "  reject \"REASON\"\n"
                    "  vacation to=\"ADDR\" from=\"ADDR\" subject=\"SUBJECT\" seconds=N "
                    "[handle=\"HANDLE\"] reason=\"TEXT\"\n"
                    "  vacation suppressed=\"WHY\"\n"
                    "  notify method=\"mailto\" [from=\"ADDR\"] [importance=N] "
                    "[message=\"TEXT\"] [to=\"A,B\"] [cc=\"A,B\"]\n"
                    "  error: compile\n"
                    "  error: runtime\n\n"
                    "The implicit keep is the last line when it happens; after error: runtime\n"
                    "comes the fallback keep. A compile error is also printed on stderr as\n"
                    "SCRIPT:LINE:COLUMN: message. Needs neither the server nor its database.",
        epilog="example:\n  cloudmail-admin sieve test filter.sieve mail.eml "
               "--from bob@example.org --to alice@example.com",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=None, local=sieve_test)
    p.add_argument("script", metavar="SCRIPT", help="the Sieve script file (UTF-8)")
    p.add_argument("message", metavar="MESSAGE", help="the message file (\"-\": stdin)")
    p.add_argument("--from", dest="sender", metavar="ADDR", required=True,
                   help="the envelope sender (MAIL FROM); \"<>\" or \"\" for none")
    p.add_argument("--to", dest="recipient", metavar="ADDR", required=True,
                   help="the envelope recipient (RCPT TO), the mailbox's own address")
    p.add_argument("--personal", metavar="DIR",
                   help="where `include` finds personal scripts (DIR/NAME.sieve)")
    p.add_argument("--global", dest="global_dir", metavar="DIR",
                   help="where `include :global` finds global scripts (DIR/NAME.sieve)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print {\"actions\": [...], \"error\": ...} instead of the lines")

    p = c.nouns.add_parser(
        "import", allow_abbrev=False,
        help="create users with mailboxes and aliases from a CSV file",
        description="Create users with their mailboxes and aliases from a CSV file, all or "
                    "none.\n\n"
                    "The header row (line 1) names the columns: username, mailboxes (space-\n"
                    "separated addresses), password or password_hash (one of them per row),\n"
                    "and optionally display_name and aliases (space-separated; they deliver to\n"
                    "the first mailbox). Errors name the line. A progress bar shows on a terminal.",
        epilog="example:\n  username,password,password_hash,display_name,mailboxes,aliases\n"
               "  alice,correct horse,,Alice,alice@example.com alice@example.org,al@example.com\n"
               "  bob,,$2b$12$...,Bob,bob@example.com,",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=import_users, view=import_text)
    p.add_argument("file", metavar="FILE.csv")
    return parser


# Running


def run_on_reactor(container: Container, args: argparse.Namespace) -> Any:
    """Run the command's service call on the reactor and return its result (or raise its error)."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.error import ReactorNotRunning

    outcome: list[Any] = []

    async def work() -> Any:
        try:
            return await args.run(container.admin_service, args)
        finally:
            await container.database.close()

    def stop(result: Any) -> None:
        outcome.append(result)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    reactor.callWhenRunning(lambda: ensureDeferred(work()).addBoth(stop))
    reactor.run()
    if not outcome:
        raise KeyboardInterrupt()
    if hasattr(outcome[0], "raiseException"):
        outcome[0].raiseException()
    return outcome[0]


def fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def run_remote(config: Any, args: argparse.Namespace) -> int:
    """Run a command of the running server through its admin API and print the answer."""
    try:
        client = AdminClient.of_config(config)
        result = args.remote(client, args)
    except ConfigError as e:
        return fail(str(e), 2)
    except ServerDown as e:
        return fail(f"the server is not running ({e})", 1)
    except (CommandError, ServiceError) as e:
        return fail(str(e), 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    return print_answer(args, result)


def print_answer(args: argparse.Namespace, result: Any) -> int:
    """Print a command's answer (its JSON with `--json`, else its view); exit status 0."""
    if args.json:
        if result is not None:
            print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(args.view.render(args) if isinstance(args.view, Done) else args.view(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status. Runs the reactor, so only once per process."""
    args = build_parser().parse_args(argv)
    if getattr(args, "local", None) is not None:
        return args.local(args)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        return fail(str(e), 2)
    if getattr(args, "remote", None) is not None:
        return run_remote(config, args)
    try:
        read_inputs(args)
    except CommandError as e:
        return fail(str(e), 1)
    from cloudmail.app import Container

    container = Container(config)
    try:
        container.prepare_data_dir()
        result = run_on_reactor(container, args)
    except ServiceError as e:
        return fail(str(e), 1)
    except DirectoryUnavailable as e:
        return fail(f"the directory is unavailable, try again later ({e})", 1)
    except OSError as e:
        return fail(f"data folder {config.server.data_dir}: {e.strerror or e}", 1)
    except (sqlite3.Error, SchemaTooNew) as e:
        return fail(f"database {config.database.path}: {e}", 1)
    except KeyboardInterrupt:
        # Stopping the pools would first run every queued job (a big import's hashes): end now.
        # Whatever was not committed is rolled back by SQLite, as after a crash.
        fail("interrupted; a change not yet committed is not applied", 130)
        sys.stderr.flush()
        os._exit(130)
    finally:
        container.pools.stopService()
    return print_answer(args, result)


if __name__ == "__main__":
    sys.exit(main())
