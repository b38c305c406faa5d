"""Running a checked Sieve script (RFC 5228 and the extensions the checker accepts) against one
message: pure and synchronous, it returns the actions for delivery to carry out.

A run that fails (a limit hit, a bad value only known at run time, a missing included script)
does nothing but keep the message: `RunResult.actions` is then `[RunFailure, Keep]` and
`RunResult.error` says why (RFC 5228 2.10.6: mail is never lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cloudmail.sieve import matching
from cloudmail.sieve.actions import (
    Action, Discard, FileInto, Keep, Notify, NotifyMethodError, Redirect, Reject, RunFailure,
    Vacation, VacationSuppressed, format_actions, parse_notify_uri, sorted_flags, split_flags,
)
from cloudmail.sieve.ast import Command, Number, Script, SieveError, StringList, Tag, Test
from cloudmail.sieve.matching import MatchBudget, MatchError
from cloudmail.sieve.message import SieveMessage, encode_words
from cloudmail.sieve.mime import MessageTests
from cloudmail.sieve.variables import Scope, VariableError, apply_modifiers, valid_name
from cloudmail.sieve import vacation as vacation_rules

# Tags followed by a value (every other tag stands alone).
_VALUE_TAGS = frozenset({
    "comparator", "value", "count", "days", "seconds", "subject", "from", "addresses",
    "handle", "importance", "message", "options", "flags", "index", "zone", "param",
    "content", "first", "specialuse", "name",
})
_MATCH_TAGS = ("is", "contains", "matches", "regex", "value", "count")
_ADDRESS_PART_TAGS = ("all", "localpart", "domain", "user", "detail")
_MODIFIERS = ("lower", "upper", "lowerfirst", "upperfirst", "quotewildcard", "quoteregex",
              "encodeurl", "length")
_PROTECTED_HEADERS = frozenset({"received", "auto-submitted"})
_FALLBACK_EXTENSIONS = frozenset({
    "fileinto", "copy", "reject", "ereject", "vacation", "vacation-seconds", "imap4flags",
    "subaddress", "body", "variables", "relational", "envelope", "mailbox", "date", "index",
    "editheader", "regex", "include", "enotify", "mime", "foreverypart", "extracttext",
    "encoded-character", "ihave", "comparator-i;ascii-numeric",
})


@dataclass(frozen=True)
class SieveEnvelope:
    """The SMTP envelope: `sender` is MAIL FROM ("" for <>), `recipient` the RCPT address as
    given (with its +detail), `auth` the authenticated sender if any."""

    sender: str
    recipient: str
    auth: str | None = None


def _inbox_only(name: str) -> bool:
    return name.upper() == "INBOX"


@dataclass
class SieveContext:
    """What a run may ask of the world, and its limits. `load_script(name, location)` returns
    an included script (location "personal" or "global") or raises LookupError when there is
    none; `now` is the time for `currentdate`."""

    mailbox_exists: Callable[[str], bool] = _inbox_only
    load_script: Callable[[str, str], Script] | None = None
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    own_addresses: tuple[str, ...] = ()
    max_redirects: int = 10
    max_actions: int = 100
    max_cpu_seconds: float = 1.0
    max_include_depth: int = 10
    max_match_work: int = 20_000_000
    subaddress_separators: str = "+-"
    extensions: frozenset[str] | None = None


@dataclass
class RunResult:
    """The actions in order (the implicit keep, when it happens, last), the run-time error if
    there was one, and the message as edited by `addheader`/`deleteheader`."""

    actions: list[Action]
    error: str | None
    message: bytes

    def lines(self) -> list[str]:
        """The dry-run lines (`format_actions`)."""
        return format_actions(self.actions)


class SieveRuntimeError(Exception):
    """The script cannot go on with this message."""


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


class _Break(Exception):
    def __init__(self, name: str | None) -> None:
        super().__init__(name)
        self.name = name


class _Args:
    """A command's or test's arguments: tags (with their values) and the positional rest."""

    def __init__(self, arguments) -> None:
        self.tags: dict[str, object] = {}
        self.positional: list = []
        items = list(arguments)
        i = 0
        while i < len(items):
            item = items[i]
            if isinstance(item, Tag):
                if item.name in _VALUE_TAGS and i + 1 < len(items) and not isinstance(items[i + 1], Tag):
                    self.tags[item.name] = items[i + 1]
                    i += 2
                    continue
                self.tags[item.name] = None
            else:
                self.positional.append(item)
            i += 1

    def has(self, name: str) -> bool:
        return name in self.tags

    def first_of(self, names) -> str | None:
        for name in names:
            if name in self.tags:
                return name
        return None


@dataclass
class _Frame:
    requires: frozenset[str]
    scope: Scope


def run(script: Script, message: bytes, envelope: SieveEnvelope, *,
        context: SieveContext | None = None) -> RunResult:
    """Run `script` on `message`; never raises for anything the script or message does."""
    runner = _Runner(message, envelope, context or SieveContext())
    try:
        runner.run_script(script)
    except _Stop:
        pass
    except (SieveRuntimeError, MatchError, VariableError, NotifyMethodError, SieveError) as e:
        return runner.failure(str(e))
    except RecursionError:
        return runner.failure("script nested too deeply")
    except Exception as e:  # noqa: BLE001 - a script must never lose mail
        return runner.failure(f"internal error: {type(e).__name__}: {e}")
    return runner.result()


class _Runner(MessageTests):
    def __init__(self, message: bytes, envelope: SieveEnvelope, context: SieveContext) -> None:
        self.original = message
        self.msg = SieveMessage(message)
        self.env = envelope
        self.ctx = context
        self.actions: list[Action] = []
        self.implicit_keep = True
        self.flags: list[str] = []
        self.globals: dict[str, str] = {}
        self.budget = MatchBudget(context.max_match_work)
        self.deadline = time.thread_time() + context.max_cpu_seconds
        self.included: set[tuple[str, str]] = set()
        self.stack: list[tuple[str, str]] = []
        self.redirects = 0
        self.part = None
        self.loop_depth = 0
        self.frame = _Frame(frozenset(), Scope(self.globals))

    # -- results ----------------------------------------------------------------------------

    def failure(self, reason: str) -> RunResult:
        return RunResult([RunFailure(reason), Keep()], reason, self.original)

    def result(self) -> RunResult:
        actions = list(self.actions)
        delivered = any(isinstance(a, Keep) or (isinstance(a, FileInto) and a.mailbox.upper() == "INBOX")
                        for a in actions)
        if self.implicit_keep and not delivered:
            actions.append(Keep(sorted_flags(self.flags), implicit=True))
        return RunResult(actions, None, self.msg.to_bytes())

    # -- plumbing ---------------------------------------------------------------------------

    def tick(self) -> None:
        if time.thread_time() > self.deadline:
            raise SieveRuntimeError("CPU time limit exceeded")

    def error(self, node, message: str) -> SieveRuntimeError:
        return SieveRuntimeError(f"{node.position}: {message}")

    def expand(self, text: str) -> str:
        if "variables" in self.frame.requires:
            return self.frame.scope.expand(text)
        return text

    def strings(self, argument) -> list[str]:
        if not isinstance(argument, StringList):
            raise SieveRuntimeError("expected a string list")
        return [self.expand(v) for v in argument.values]

    def string(self, argument) -> str:
        values = self.strings(argument)
        return values[0] if values else ""

    def number(self, argument) -> int:
        if isinstance(argument, Number):
            return argument.value
        raise SieveRuntimeError("expected a number")

    def tag_string(self, args: _Args, name: str) -> str | None:
        value = args.tags.get(name)
        return None if value is None else self.string(value)

    def add(self, action: Action) -> None:
        if len(self.actions) >= self.ctx.max_actions:
            raise SieveRuntimeError(f"more than {self.ctx.max_actions} actions")
        self.actions.append(action)

    # -- commands ---------------------------------------------------------------------------

    def run_script(self, script: Script) -> None:
        try:
            self.run_block(script.commands, script.requires)
        except _Return:
            pass

    def run_block(self, commands, requires=None) -> None:
        if requires is not None:
            self.frame.requires = frozenset(requires)
        branch: bool | None = None
        for command in commands:
            self.tick()
            name = command.name
            if name == "if":
                branch = self.test(command.tests[0])
                if branch:
                    self.run_block(command.block or ())
            elif name == "elsif":
                if branch is False:
                    branch = self.test(command.tests[0])
                    if branch:
                        self.run_block(command.block or ())
            elif name == "else":
                if branch is False:
                    self.run_block(command.block or ())
                branch = None
            else:
                branch = None
                handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
                if handler is None:
                    raise self.error(command, f"unknown command {name!r}")
                handler(command, _Args(command.arguments))

    def cmd_require(self, command: Command, args: _Args) -> None:
        pass

    def cmd_stop(self, command: Command, args: _Args) -> None:
        raise _Stop()

    def cmd_return(self, command: Command, args: _Args) -> None:
        raise _Return()

    def cmd_error(self, command: Command, args: _Args) -> None:
        raise self.error(command, self.string(args.positional[0]) if args.positional else "error")

    def action_flags(self, args: _Args) -> tuple[str, ...]:
        if "flags" in args.tags:
            return sorted_flags(split_flags(self.strings(args.tags["flags"])))
        return sorted_flags(self.flags)

    def check_reject_conflict(self, command: Command, rejecting: bool) -> None:
        for action in self.actions:
            if isinstance(action, Reject) or (rejecting and isinstance(action, (Vacation, Keep, FileInto))):
                raise self.error(command, f"{command.name} conflicts with an earlier action")
            if rejecting and isinstance(action, Redirect) and not action.copy:
                raise self.error(command, f"{command.name} conflicts with an earlier redirect")

    def deliver(self, command: Command, mailbox: str, flags, *, create=False, copy=False) -> None:
        self.check_reject_conflict(command, False)
        inbox = mailbox.upper() == "INBOX"
        for i, action in enumerate(self.actions):
            same = (isinstance(action, Keep) and inbox) or (
                isinstance(action, FileInto) and (action.mailbox == mailbox or (inbox and action.mailbox.upper() == "INBOX")))
            if same:
                merged = sorted_flags((*action.flags, *flags))
                if isinstance(action, Keep):
                    self.actions[i] = Keep(merged)
                else:
                    self.actions[i] = FileInto(action.mailbox, merged, action.create or create, action.copy and copy)
                break
        else:
            self.add(FileInto(mailbox, tuple(flags), create, copy))
        if not copy:
            self.implicit_keep = False

    def cmd_keep(self, command: Command, args: _Args) -> None:
        self.check_reject_conflict(command, False)
        flags = self.action_flags(args)
        for i, action in enumerate(self.actions):
            if isinstance(action, Keep) or (isinstance(action, FileInto) and action.mailbox.upper() == "INBOX"):
                self.actions[i] = type(action)(**{**action.__dict__, "flags": sorted_flags((*action.flags, *flags))})
                break
        else:
            self.add(Keep(flags))
        self.implicit_keep = False

    def cmd_discard(self, command: Command, args: _Args) -> None:
        if Discard() not in self.actions:
            self.add(Discard())
        self.implicit_keep = False

    def cmd_fileinto(self, command: Command, args: _Args) -> None:
        mailbox = self.string(args.positional[0])
        if not mailbox or len(mailbox) > 1024 or any(ord(c) < 32 for c in mailbox):
            raise self.error(command, f"bad mailbox name {mailbox!r}")
        self.deliver(command, mailbox, self.action_flags(args), create=args.has("create"), copy=args.has("copy"))

    def cmd_redirect(self, command: Command, args: _Args) -> None:
        address = self.string(args.positional[0]).strip()
        local, domain = matching.split_address(address)
        if not local or not domain or any(c.isspace() or c in "<>," for c in address):
            raise self.error(command, f"bad redirect address {address!r}")
        copy = args.has("copy")
        for action in self.actions:
            if isinstance(action, Redirect) and action.address.lower() == address.lower():
                if not copy:
                    self.implicit_keep = self.implicit_keep and action.suppressed is not None
                return
        if any(isinstance(a, Reject) for a in self.actions) and not copy:
            raise self.error(command, "redirect conflicts with reject")
        self.redirects += 1
        if self.redirects > self.ctx.max_redirects:
            raise self.error(command, f"more than {self.ctx.max_redirects} redirects")
        mine = {a.lower() for a in (self.env.recipient, *self.ctx.own_addresses) if a}
        mine |= {a.lower() for a in self.msg.addresses("Delivered-To")}
        suppressed = "mail-loop" if address.lower() in mine else None
        self.add(Redirect(address, copy, suppressed))
        if not copy and suppressed is None:
            self.implicit_keep = False

    def cmd_reject(self, command: Command, args: _Args, extended: bool = False) -> None:
        self.check_reject_conflict(command, True)
        self.add(Reject(self.string(args.positional[0]), extended))
        self.implicit_keep = False

    def cmd_ereject(self, command: Command, args: _Args) -> None:
        self.cmd_reject(command, args, extended=True)

    def cmd_vacation(self, command: Command, args: _Args) -> None:
        if any(isinstance(a, (Vacation, VacationSuppressed)) for a in self.actions):
            raise self.error(command, "more than one vacation action")
        if any(isinstance(a, Reject) for a in self.actions):
            raise self.error(command, "vacation conflicts with reject")
        reason = self.string(args.positional[0])
        subject = self.tag_string(args, "subject")
        sender = self.tag_string(args, "from")
        handle = self.tag_string(args, "handle")
        addresses = self.strings(args.tags["addresses"]) if args.tags.get("addresses") else []
        days = self.number(args.tags["days"]) if args.tags.get("days") else None
        seconds = self.number(args.tags["seconds"]) if args.tags.get("seconds") else None
        why = vacation_rules.suppression_reason(
            self.msg, self.env.sender, self.env.recipient, self.ctx.own_addresses, addresses)
        if why is not None:
            self.add(VacationSuppressed(why))
            return
        mime = args.has("mime")
        in_reply_to, references = vacation_rules.thread_headers(self.msg)
        self.add(Vacation(
            to=self.env.sender,
            sender=sender if sender is not None else self.env.recipient,
            subject=vacation_rules.reply_subject(subject, (self.msg.headers("Subject") or [""])[0]),
            seconds=vacation_rules.vacation_seconds(days, seconds),
            reason=reason,
            history_key=handle if handle is not None else vacation_rules.default_handle(reason, subject, sender, mime),
            handle=handle, mime=mime, in_reply_to=in_reply_to, references=references,
        ))

    def flag_target(self, args: _Args) -> tuple[str | None, list[str]]:
        if len(args.positional) >= 2:
            return self.string(args.positional[0]), self.strings(args.positional[1])
        return None, self.strings(args.positional[0])

    def change_flags(self, args: _Args, change) -> None:
        variable, values = self.flag_target(args)
        current = self.flags if variable is None else split_flags([self.frame.scope.get(variable)])
        updated = change(current, split_flags(values))
        if variable is None:
            self.flags = updated
        else:
            self.frame.scope.set(variable, " ".join(updated))

    def cmd_setflag(self, command: Command, args: _Args) -> None:
        self.change_flags(args, lambda current, new: new)

    def cmd_addflag(self, command: Command, args: _Args) -> None:
        self.change_flags(args, lambda current, new: split_flags([*current, *new]))

    def cmd_removeflag(self, command: Command, args: _Args) -> None:
        def remove(current, gone):
            lowered = {f.lower() for f in gone}
            return [f for f in current if f.lower() not in lowered]
        self.change_flags(args, remove)

    def cmd_set(self, command: Command, args: _Args) -> None:
        name = args.positional[0].values[0]
        value = self.string(args.positional[1])
        value = apply_modifiers(value, [m for m in _MODIFIERS if args.has(m)])
        self.frame.scope.set(name, value)

    def cmd_global(self, command: Command, args: _Args) -> None:
        for name in args.positional[0].values:
            if not valid_name(name):
                raise self.error(command, f"bad variable name {name!r}")
            self.frame.scope.declared.add(name.lower())

    def cmd_addheader(self, command: Command, args: _Args) -> None:
        name = self.string(args.positional[0])
        value = self.string(args.positional[1])
        if not name or any(ord(c) <= 32 or ord(c) > 126 or c == ":" for c in name):
            raise self.error(command, f"bad header name {name!r}")
        if name.lower() in _PROTECTED_HEADERS:
            return
        encoded = encode_words(value)
        self.msg.add_header(name, encoded, last=args.has("last"))

    def cmd_deleteheader(self, command: Command, args: _Args) -> None:
        name = self.string(args.positional[0])
        if name.lower() in _PROTECTED_HEADERS:
            return
        patterns = self.strings(args.positional[1]) if len(args.positional) > 1 else None
        keep = None
        if patterns is not None:
            def keep(value: str) -> bool:
                saved = self.frame.scope.matches
                try:
                    return not self.compare_values(args, [value], patterns)
                finally:
                    self.frame.scope.matches = saved
        index = self.number(args.tags["index"]) if args.tags.get("index") else None
        self.msg.delete_header(name, keep, index=index, last=args.has("last"))

    def cmd_include(self, command: Command, args: _Args) -> None:
        name = args.positional[0].values[0]
        location = "global" if args.has("global") else "personal"
        key = (location, name)
        if args.has("once") and key in self.included:
            return
        if key in self.stack:
            raise self.error(command, f"include of {name!r} is recursive")
        if len(self.stack) >= self.ctx.max_include_depth:
            raise self.error(command, "includes nested too deeply")
        script = None
        if self.ctx.load_script is not None:
            try:
                script = self.ctx.load_script(name, location)
            except (LookupError, FileNotFoundError):
                script = None
            except SieveError as e:
                raise self.error(command, f"included script {name!r} is invalid: {e}") from None
        if script is None:
            if args.has("optional"):
                return
            raise self.error(command, f"no {location} script {name!r}")
        self.included.add(key)
        outer = self.frame
        self.frame = _Frame(frozenset(script.requires), Scope(self.globals))
        self.stack.append(key)
        try:
            self.run_script(script)
        finally:
            self.stack.pop()
            self.frame = outer

    def cmd_notify(self, command: Command, args: _Args) -> None:
        uri = self.string(args.positional[0])
        method, to, cc = parse_notify_uri(uri)
        importance = self.tag_string(args, "importance")
        if importance is not None and importance not in ("1", "2", "3"):
            raise self.error(command, f"bad importance {importance!r}")
        options = tuple(self.strings(args.tags["options"])) if args.tags.get("options") else ()
        action = Notify(
            method=method, uri=uri, sender=self.tag_string(args, "from"),
            importance=int(importance) if importance else None,
            message=self.tag_string(args, "message"), to=tuple(to), cc=tuple(cc), options=options)
        if action not in self.actions:
            self.add(action)

    def cmd_foreverypart(self, command: Command, args: _Args) -> None:
        label = self.tag_string(args, "name")
        outer = self.part
        top = self.msg.tree if outer is None else outer
        parts = top.descendants() or ([top] if outer is None else [])
        self.loop_depth += 1
        try:
            for part in parts:
                self.part = part
                try:
                    self.run_block(command.block or ())
                except _Break as stop:
                    if stop.name is None or stop.name == label:
                        break
                    raise
        finally:
            self.part = outer
            self.loop_depth -= 1

    def cmd_break(self, command: Command, args: _Args) -> None:
        if not self.loop_depth:
            raise self.error(command, "break outside foreverypart")
        raise _Break(self.tag_string(args, "name"))

    def cmd_extracttext(self, command: Command, args: _Args) -> None:
        if self.part is None:
            raise self.error(command, "extracttext outside foreverypart")
        name = args.positional[0].values[0]
        text = self.part.text() if self.part.content_type.startswith("text/") else ""
        if args.tags.get("first") is not None:
            text = text[: self.number(args.tags["first"])]
        self.frame.scope.set(name, apply_modifiers(text, [m for m in _MODIFIERS if args.has(m)]))

    # -- tests ------------------------------------------------------------------------------

    def test(self, test: Test) -> bool:
        self.tick()
        handler = getattr(self, "test_" + test.name.replace("-", "_"), None)
        if handler is None:
            raise self.error(test, f"unknown test {test.name!r}")
        return handler(test, _Args(test.arguments))

    def test_true(self, test: Test, args: _Args) -> bool:
        return True

    def test_false(self, test: Test, args: _Args) -> bool:
        return False

    def test_not(self, test: Test, args: _Args) -> bool:
        return not self.test(test.tests[0])

    def test_allof(self, test: Test, args: _Args) -> bool:
        return all(self.test(t) for t in test.tests)

    def test_anyof(self, test: Test, args: _Args) -> bool:
        return any(self.test(t) for t in test.tests)

    def test_size(self, test: Test, args: _Args) -> bool:
        limit = self.number(args.positional[0])
        if args.has("over"):
            return self.msg.size > limit
        return self.msg.size < limit

    def compare_values(self, args: _Args, values: list, keys: list[str]) -> bool:
        """The match of RFC 5228 2.7: true when any value matches any key. Sets the match
        variables on a successful :matches/:regex (RFC 5229 3.2)."""
        comparator = self.tag_string(args, "comparator") or "i;ascii-casemap"
        match_type = args.first_of(_MATCH_TAGS) or "is"
        relation = None
        if match_type in ("value", "count"):
            relation = self.string(args.tags[match_type]).lower()
            if relation not in matching.RELATIONS:
                raise SieveRuntimeError(f"bad relation {relation!r}")
        if match_type == "count":
            count = str(sum(1 for v in values if v is not None))
            return any(matching.relation_holds(relation, matching.compare(comparator, count, k)) for k in keys)
        for value in values:
            if value is None:
                continue
            for key in keys:
                self.tick()
                found, captures = matching.match(match_type, comparator, value, key, relation=relation, budget=self.budget)
                if found:
                    if captures is not None:
                        self.frame.scope.matches = captures
                    return True
        return False

    def test_string(self, test: Test, args: _Args) -> bool:
        sources = self.strings(args.positional[0])
        if args.has("count"):
            sources = [s for s in sources if s != ""]
        return self.compare_values(args, sources, self.strings(args.positional[1]))

    def test_hasflag(self, test: Test, args: _Args) -> bool:
        if len(args.positional) >= 2:
            flags = split_flags([self.frame.scope.get(n) for n in self.strings(args.positional[0])])
            keys = self.strings(args.positional[1])
        else:
            flags, keys = list(self.flags), self.strings(args.positional[0])
        if not args.has("count"):
            keys = [k for key in keys for k in key.split()] or keys
        return self.compare_values(args, flags, keys)

    def test_mailboxexists(self, test: Test, args: _Args) -> bool:
        return all(self.ctx.mailbox_exists(name) for name in self.strings(args.positional[0]))

    def test_ihave(self, test: Test, args: _Args) -> bool:
        supported = self.ctx.extensions
        if supported is None:
            try:
                from cloudmail.sieve.checker import SUPPORTED_EXTENSIONS as supported
            except ImportError:
                supported = _FALLBACK_EXTENSIONS
        return all(name in supported for name in self.strings(args.positional[0]))

