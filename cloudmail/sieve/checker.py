"""What each Sieve command and test accepts, and which extension it needs.

Public API:

- `SUPPORTED_EXTENSIONS`: the capability names this implementation offers (ManageSieve's
  "SIEVE" capability, `require`, `ihave`). "comparator-i;octet" and
  "comparator-i;ascii-casemap" are built in (RFC 5228 2.7.3): requiring them is allowed even
  though they are not listed.
- `compile_script(text, *, extensions=SUPPORTED_EXTENSIONS) -> Script`: parse, then check;
  raises `SieveError` with the position of the first problem. The `Script` is returned as the
  parser made it (the interpreter reads the argument lists again, see `split_arguments`).
- `check(script, *, extensions=SUPPORTED_EXTENSIONS) -> Script`: the check alone.
- `COMMANDS`, `TESTS`: name -> `Spec`, the signature of every command and test.
- `split_arguments(node, spec=None) -> (tags, positional)`: a command's or test's arguments
  split into `tags` (tag name without colon -> its value: `True` for a flag tag such as
  `:copy`, else the `StringList` or `Number` after it, e.g. `tags["days"]` is a `Number`,
  `tags["count"]` the `StringList` with the relational operator) and the `positional`
  arguments in order (still `StringList`/`Number`). `spec` defaults to the node's own spec.
  It raises `SieveError` on arguments that do not fit, so it is safe on unchecked input.
- Helpers for the interpreter: `match_type(tags)` ("is", "contains", "matches", "count",
  "value" or "regex"; "is" when absent), `comparator(tags)` (default "i;ascii-casemap"),
  `address_part(tags)` (default "all"), `relational_operator(tags)` (lower case, or None).

What is checked: every command and test is known and its extension required (or guaranteed by
an enclosing `if ihave`); `require` names only supported extensions; tags are known for the
command, their extension is required, each appears once, they come before the positional
arguments, conflicting ones (match types, address parts, `:days`/`:seconds`, ...) are not
combined, tags that need another (`:last` needs `:index`, `:anychild` needs `:mime`) have it,
tags get the value they need (string, string list, number); positional arguments are there,
not too many, of the right kind (a single string where the RFC says <string>); tests only
where a command takes one, blocks only on `if`/`elsif`/`else`/`foreverypart`; `elsif`/`else`
follow `if`/`elsif`; `break` only inside `foreverypart` (with a matching `:name`). Literal
values where RFCs fix them (when they hold no "${" variable reference): relational operators,
comparator names, envelope parts, date parts, time zones, `:importance`, notification method
(mailto only), variable names in `set`/`global`/imap4flags, header field names in
`addheader`/`deleteheader`, `:index` >= 1, `size` with one of `:over`/`:under`.

Not checked here (the interpreter's job, at run time): regular expression syntax, that
`address` headers hold addresses, include script existence, mailto URI details, numbers in
`:days`/`:seconds` (0 is accepted; the interpreter applies its minimum), whether `allof`/`anyof`
were written with parentheses (the AST does not keep it).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from cloudmail.sieve.ast import (Argument, Command, Number, Position, Script, SieveError,
                                 StringList, Tag, Test)
from cloudmail.sieve.parser import parse

__all__ = ["COMMANDS", "IMPLICIT_EXTENSIONS", "SUPPORTED_EXTENSIONS", "TESTS", "Spec",
           "TagSpec", "address_part", "check", "comparator", "compile_script", "match_type",
           "relational_operator", "split_arguments"]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    "fileinto", "copy", "reject", "ereject", "envelope", "body", "variables", "vacation",
    "vacation-seconds", "imap4flags", "subaddress", "relational", "comparator-i;ascii-numeric",
    "mailbox", "date", "index", "editheader", "regex", "include", "enotify", "mime",
    "foreverypart", "extracttext", "encoded-character", "ihave",
)
IMPLICIT_EXTENSIONS: tuple[str, ...] = ("comparator-i;octet", "comparator-i;ascii-casemap")

COMPARATORS = {"i;octet": None, "i;ascii-casemap": None,
               "i;ascii-numeric": "comparator-i;ascii-numeric"}
RELATIONAL_OPERATORS = ("gt", "ge", "lt", "le", "eq", "ne")
DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second", "time",
              "iso8601", "std11", "zone", "weekday")
#: "auth" (the logged-in identity) as Dovecot Pigeonhole offers it, besides RFC 5228's two.
ENVELOPE_PARTS = ("from", "to", "auth")

STRING, STRINGS, NUMBER = "string", "string list", "number"


@dataclass(frozen=True)
class TagSpec:
    """A tag a command or test accepts: the kind of value after it (`STRING`, `STRINGS`,
    `NUMBER`, or None for a flag), the group of mutually exclusive tags it belongs to, the
    extension it needs, and another tag it needs."""

    value: str | None = None
    group: str | None = None
    extension: str | None = None
    needs: str | None = None


@dataclass(frozen=True)
class Spec:
    """The signature of a command or test. `positional`: (label, kind) in order; `optional`:
    how many of them may be left out, from the front (`optional_first`) or from the end.
    `tests`: None (no test), "one", "list" (one or more). `block`: True (required), False
    (forbidden). `required_group`: one tag of that group must be present."""

    name: str
    extension: str | None = None
    tags: Mapping[str, TagSpec] = field(default_factory=dict)
    positional: tuple[tuple[str, str], ...] = ()
    optional: int = 0
    optional_first: bool = False
    tests: str | None = None
    block: bool = False
    required_group: str | None = None


def _tags(*groups: Mapping[str, TagSpec], **more: TagSpec) -> dict[str, TagSpec]:
    merged: dict[str, TagSpec] = {}
    for group in groups:
        merged.update(group)
    merged.update(more)
    return merged


MATCH = {"is": TagSpec(group="match"), "contains": TagSpec(group="match"),
         "matches": TagSpec(group="match"),
         "count": TagSpec(STRING, "match", "relational"),
         "value": TagSpec(STRING, "match", "relational"),
         "regex": TagSpec(None, "match", "regex")}
COMPARATOR = {"comparator": TagSpec(STRING)}
#: The modifiers of `set` (RFC 5229 4.1), also taken by `extracttext` (RFC 5703 7).
MODIFIERS = {"lower": TagSpec(group="case"), "upper": TagSpec(group="case"),
             "lowerfirst": TagSpec(group="first"), "upperfirst": TagSpec(group="first"),
             "quotewildcard": TagSpec(group="quote"),
             "quoteregex": TagSpec(None, "quote", "regex"),
             "encodeurl": TagSpec(None, None, "enotify"),
             "length": TagSpec()}
ADDRESS_PART = {"all": TagSpec(group="address-part"),
                "localpart": TagSpec(group="address-part"),
                "domain": TagSpec(group="address-part"),
                "user": TagSpec(None, "address-part", "subaddress"),
                "detail": TagSpec(None, "address-part", "subaddress")}
INDEX = {"index": TagSpec(NUMBER, None, "index"),
         "last": TagSpec(None, None, "index", needs="index")}
MIME = {"mime": TagSpec(None, None, "mime"),
        "anychild": TagSpec(None, None, "mime", needs="mime")}
MIME_OPTIONS = {"type": TagSpec(None, "mime-option", "mime", needs="mime"),
                "subtype": TagSpec(None, "mime-option", "mime", needs="mime"),
                "contenttype": TagSpec(None, "mime-option", "mime", needs="mime"),
                "param": TagSpec(STRINGS, "mime-option", "mime", needs="mime")}
KEYS = ("key list", STRINGS)


def _specs(*specs: Spec) -> dict[str, Spec]:
    return {spec.name: spec for spec in specs}


COMMANDS: dict[str, Spec] = _specs(
    Spec("require", positional=(("capabilities", STRINGS),)),
    Spec("if", tests="one", block=True),
    Spec("elsif", tests="one", block=True),
    Spec("else", block=True),
    Spec("stop"),
    Spec("keep", tags={"flags": TagSpec(STRINGS, None, "imap4flags")}),
    Spec("discard"),
    Spec("fileinto", "fileinto", {"copy": TagSpec(None, None, "copy"),
                                  "flags": TagSpec(STRINGS, None, "imap4flags"),
                                  "create": TagSpec(None, None, "mailbox")},
         (("mailbox", STRING),)),
    Spec("redirect", tags={"copy": TagSpec(None, None, "copy")},
         positional=(("address", STRING),)),
    Spec("reject", "reject", positional=(("reason", STRING),)),
    Spec("ereject", "ereject", positional=(("reason", STRING),)),
    Spec("vacation", "vacation", {
        "days": TagSpec(NUMBER, "period"),
        "seconds": TagSpec(NUMBER, "period", "vacation-seconds"),
        "subject": TagSpec(STRING), "from": TagSpec(STRING), "addresses": TagSpec(STRINGS),
        "mime": TagSpec(), "handle": TagSpec(STRING)}, (("reason", STRING),)),
    Spec("setflag", "imap4flags", positional=(("variable name", STRING), ("flags", STRINGS)),
         optional=1, optional_first=True),
    Spec("addflag", "imap4flags", positional=(("variable name", STRING), ("flags", STRINGS)),
         optional=1, optional_first=True),
    Spec("removeflag", "imap4flags",
         positional=(("variable name", STRING), ("flags", STRINGS)), optional=1,
         optional_first=True),
    Spec("set", "variables", MODIFIERS, (("name", STRING), ("value", STRING))),
    Spec("extracttext", "extracttext", _tags(MODIFIERS, first=TagSpec(NUMBER)),
         (("name", STRING),)),
    Spec("addheader", "editheader", {"last": TagSpec()},
         (("field name", STRING), ("value", STRING))),
    Spec("deleteheader", "editheader", _tags(
        COMPARATOR, MATCH, index=TagSpec(NUMBER), last=TagSpec(needs="index")),
         (("field name", STRING), ("value patterns", STRINGS)), optional=1),
    Spec("include", "include", {
        "personal": TagSpec(group="location"), "global": TagSpec(group="location"),
        "once": TagSpec(), "optional": TagSpec()}, (("script name", STRING),)),
    Spec("return", "include"),
    Spec("global", "include", positional=(("variable names", STRINGS),)),
    Spec("notify", "enotify", {
        "from": TagSpec(STRING), "importance": TagSpec(STRING), "options": TagSpec(STRINGS),
        "message": TagSpec(STRING)}, (("method", STRING),)),
    Spec("foreverypart", "foreverypart", {"name": TagSpec(STRING)}, block=True),
    Spec("break", "foreverypart", {"name": TagSpec(STRING)}),
    Spec("error", "ihave", positional=(("message", STRING),)),
)

TESTS: dict[str, Spec] = _specs(
    Spec("true"),
    Spec("false"),
    Spec("not", tests="one"),
    Spec("allof", tests="list"),
    Spec("anyof", tests="list"),
    Spec("exists", tags=MIME, positional=(("header names", STRINGS),)),
    Spec("size", tags={"over": TagSpec(group="size"), "under": TagSpec(group="size")},
         positional=(("limit", NUMBER),), required_group="size"),
    Spec("header", tags=_tags(MIME, MIME_OPTIONS, COMPARATOR, MATCH, INDEX),
         positional=(("header names", STRINGS), KEYS)),
    Spec("address", tags=_tags(MIME, COMPARATOR, ADDRESS_PART, MATCH, INDEX),
         positional=(("header list", STRINGS), KEYS)),
    Spec("envelope", "envelope", _tags(COMPARATOR, ADDRESS_PART, MATCH),
         (("envelope parts", STRINGS), KEYS)),
    Spec("body", "body", _tags(COMPARATOR, MATCH, raw=TagSpec(group="transform"),
                               content=TagSpec(STRINGS, "transform"),
                               text=TagSpec(group="transform")), (KEYS,)),
    Spec("string", "variables", _tags(COMPARATOR, MATCH), (("source", STRINGS), KEYS)),
    Spec("hasflag", "imap4flags", _tags(COMPARATOR, MATCH),
         (("variable list", STRINGS), ("flags", STRINGS)), optional=1, optional_first=True),
    Spec("mailboxexists", "mailbox", positional=(("mailbox names", STRINGS),)),
    Spec("date", "date", _tags(COMPARATOR, MATCH, INDEX, zone=TagSpec(STRING, "zone"),
                               originalzone=TagSpec(None, "zone")),
         (("header name", STRING), ("date part", STRING), KEYS)),
    Spec("currentdate", "date", _tags(COMPARATOR, MATCH, zone=TagSpec(STRING)),
         (("date part", STRING), KEYS)),
    Spec("valid_notify_method", "enotify", positional=(("notification URIs", STRINGS),)),
    Spec("notify_method_capability", "enotify", _tags(COMPARATOR, MATCH),
         (("notification URI", STRING), ("capability", STRING), KEYS)),
    Spec("ihave", "ihave", positional=(("capabilities", STRINGS),)),
)

_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")
_ZONE = re.compile(r"[+-](?:[01][0-9]|2[0-3])[0-5][0-9]\Z")


# -- splitting arguments (shared with the interpreter)

def _kind(argument: Argument) -> str:
    if isinstance(argument, Number):
        return NUMBER
    if isinstance(argument, StringList):
        return STRING if argument.single else STRINGS
    return "tag"


def _fits(argument: Argument, kind: str) -> bool:
    if kind == NUMBER:
        return isinstance(argument, Number)
    if kind == STRING:
        return isinstance(argument, StringList) and argument.single
    return isinstance(argument, StringList)


def _a(kind: str) -> str:
    return {NUMBER: "a number", STRING: "a string", STRINGS: "a string list",
            "tag": "a tag"}[kind]


def split_arguments(node: Command | Test, spec: Spec | None = None,
                    ) -> tuple[dict[str, Argument | bool], list[Argument]]:
    """Split `node.arguments` into tags (name -> True or the value after the tag) and
    positional arguments, following `spec` (default: the spec of the node's name). Raises
    `SieveError` for unknown or repeated tags, tags after positional arguments and tags
    without their value; does not check extensions or the positional arguments."""
    if spec is None:
        table = COMMANDS if isinstance(node, Command) else TESTS
        spec = table.get(node.name)
        if spec is None:
            raise SieveError(node.position, f'unknown {_what(node)} "{node.name}"')
    tags: dict[str, Argument | bool] = {}
    positional: list[Argument] = []
    arguments = node.arguments
    i = 0
    while i < len(arguments):
        argument = arguments[i]
        i += 1
        if not isinstance(argument, Tag):
            positional.append(argument)
            continue
        name = argument.name
        tag = spec.tags.get(name)
        if tag is None:
            raise SieveError(argument.position,
                             f'unknown tag ":{name}" for {_what(node)} "{node.name}"')
        if positional:
            raise SieveError(argument.position, f'tag ":{name}" must come before the other '
                                                f'arguments of "{node.name}"')
        if name in tags:
            raise SieveError(argument.position, f'tag ":{name}" given twice')
        if tag.value is None:
            tags[name] = True
            continue
        value = arguments[i] if i < len(arguments) else None
        if value is None or not _fits(value, tag.value):
            where = value.position if value is not None else argument.position
            raise SieveError(where, f'tag ":{name}" must be followed by {_a(tag.value)}')
        tags[name] = value
        i += 1
    return tags, positional


def match_type(tags: Mapping[str, object]) -> str:
    """The match type named by the tags: "is" when none is given."""
    for name in ("is", "contains", "matches", "count", "value", "regex"):
        if name in tags:
            return name
    return "is"


def comparator(tags: Mapping[str, object]) -> str:
    """The comparator named by `:comparator`, default "i;ascii-casemap" (RFC 5228 2.7.3)."""
    value = tags.get("comparator")
    return value.values[0].lower() if isinstance(value, StringList) else "i;ascii-casemap"


def address_part(tags: Mapping[str, object]) -> str:
    """The address part named by the tags, default "all"."""
    for name in ("localpart", "domain", "user", "detail", "all"):
        if name in tags:
            return name
    return "all"


def relational_operator(tags: Mapping[str, object]) -> str | None:
    """The operator of `:count`/`:value` ("gt", "ge", ...), lower case, or None."""
    value = tags.get("count") or tags.get("value")
    return value.values[0].lower() if isinstance(value, StringList) else None


def _what(node: Command | Test) -> str:
    return "command" if isinstance(node, Command) else "test"


# -- the checker

class _Checker:
    def __init__(self, script: Script, extensions: Collection[str]) -> None:
        self.script = script
        self.supported = frozenset(extensions) | frozenset(IMPLICIT_EXTENSIONS)

    def run(self) -> None:
        enabled: set[str] = set()
        for command in self.script.commands:
            if command.name != "require":
                continue
            capabilities = command.arguments[0]
            assert isinstance(capabilities, StringList)
            for name in capabilities.values:
                if name not in self.supported:
                    raise SieveError(capabilities.position, f'unsupported extension "{name}"')
                enabled.add(name)
        self.variables = "variables" in enabled
        self.block(self.script.commands, frozenset(enabled), ())

    def need(self, extension: str | None, enabled: frozenset[str], position: Position,
             what: str) -> None:
        if extension is not None and extension not in enabled:
            raise SieveError(position, f'{what} requires the "{extension}" extension '
                                       f'(require "{extension}")')

    def block(self, commands: tuple[Command, ...], enabled: frozenset[str],
              loops: tuple[str | None, ...]) -> None:
        previous = None
        for command in commands:
            if command.name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise SieveError(command.position,
                                 f'"{command.name}" must follow "if" or "elsif"')
            self.command(command, enabled, loops)
            previous = command.name

    def command(self, command: Command, enabled: frozenset[str],
                loops: tuple[str | None, ...]) -> None:
        name = command.name
        spec = COMMANDS.get(name)
        if spec is None:
            raise SieveError(command.position, f'unknown command "{name}"')
        self.need(spec.extension, enabled, command.position, f'command "{name}"')
        tags, positional = self.arguments(command, spec, enabled)
        if spec.tests is None and command.tests:
            raise SieveError(command.tests[0].position, f'expected ";" after the arguments of '
                                                        f'"{name}", found "{command.tests[0].name}"')
        if spec.tests is not None and len(command.tests) != 1:
            where = command.tests[1].position if command.tests else command.position
            raise SieveError(where, f'"{name}" takes exactly one test')
        if spec.block and command.block is None:
            raise SieveError(command.position, f'"{name}" needs a block: {{ ... }}')
        if not spec.block and command.block is not None:
            raise SieveError(command.position, f'"{name}" does not take a block: expected ";" '
                                               f'after its arguments')
        for test in command.tests:
            self.test(test, enabled)
        getattr(self, "command_" + name, _nothing)(command, tags, positional, enabled, loops)
        if command.block is not None:
            inner = enabled
            if name in ("if", "elsif"):
                guaranteed = _guaranteed(command.tests[0])
                if not guaranteed <= self.supported:
                    return  # RFC 5463: not compiled when an extension is missing
                inner = enabled | guaranteed
            if name == "foreverypart":
                label = tags.get("name")
                loops = loops + (label.values[0] if isinstance(label, StringList) else None,)
            self.block(command.block, inner, loops)

    def test(self, test: Test, enabled: frozenset[str]) -> None:
        spec = TESTS.get(test.name)
        if spec is None:
            raise SieveError(test.position, f'unknown test "{test.name}"')
        self.need(spec.extension, enabled, test.position, f'test "{test.name}"')
        tags, positional = self.arguments(test, spec, enabled)
        if spec.tests is None and test.tests:
            raise SieveError(test.tests[0].position, f'test "{test.name}" does not take a '
                                                     f'test after its arguments')
        if spec.tests == "one" and len(test.tests) != 1:
            where = test.tests[1].position if test.tests else test.position
            raise SieveError(where, f'"{test.name}" takes exactly one test')
        if spec.tests == "list" and not test.tests:
            raise SieveError(test.position, f'"{test.name}" needs a list of tests: ( ... )')
        for inner in test.tests:
            self.test(inner, enabled)
        getattr(self, "test_" + test.name, _nothing)(test, tags, positional, enabled, ())

    def arguments(self, node: Command | Test, spec: Spec, enabled: frozenset[str],
                  ) -> tuple[dict[str, Argument | bool], list[Argument]]:
        tags, positional = split_arguments(node, spec)
        groups: dict[str, str] = {}
        for argument in node.arguments:
            if not isinstance(argument, Tag):
                continue
            tag = spec.tags[argument.name]
            self.need(tag.extension, enabled, argument.position, f'tag ":{argument.name}"')
            if tag.group is not None:
                other = groups.setdefault(tag.group, argument.name)
                if other != argument.name:
                    raise SieveError(argument.position, f'tags ":{other}" and '
                                                        f'":{argument.name}" cannot be used '
                                                        f'together')
            if tag.needs is not None and tag.needs not in tags:
                raise SieveError(argument.position,
                                 f'tag ":{argument.name}" needs ":{tag.needs}"')
        if spec.required_group is not None and spec.required_group not in groups:
            names = " or ".join(f'":{t}"' for t, s in spec.tags.items()
                                if s.group == spec.required_group)
            raise SieveError(node.position, f'"{node.name}" needs {names}')
        self.positional(node, spec, positional)
        self.common_tags(tags, enabled)
        return tags, positional

    def positional(self, node: Command | Test, spec: Spec,
                   positional: list[Argument]) -> None:
        expected = spec.positional
        count = len(positional)
        if count > len(expected):
            raise SieveError(positional[len(expected)].position,
                             f'too many arguments for "{node.name}"')
        minimum = len(expected) - spec.optional
        if count < minimum:
            label = expected[count + (spec.optional if spec.optional_first else 0)][0]
            raise SieveError(node.position, f'"{node.name}" is missing its {label} argument')
        if spec.optional_first:
            expected = expected[len(expected) - count:]
        for argument, (label, kind) in zip(positional, expected):
            if not _fits(argument, kind):
                raise SieveError(argument.position, f'the {label} of "{node.name}" must be '
                                                    f'{_a(kind)}, not {_a(_kind(argument))}')

    def literal(self, value: str) -> bool:
        """Whether `value` is known when compiling (no variable in it)."""
        return not (self.variables and "${" in value)

    def common_tags(self, tags: Mapping[str, Argument | bool], enabled: frozenset[str]) -> None:
        value = tags.get("comparator")
        if isinstance(value, StringList):
            name = value.values[0].lower()
            if name not in COMPARATORS:
                raise SieveError(value.position, f'unsupported comparator "{value.values[0]}"')
            self.need(COMPARATORS[name], enabled, value.position, f'comparator "{name}"')
        for tag in ("count", "value"):
            value = tags.get(tag)
            if isinstance(value, StringList) and self.literal(value.values[0]) \
                    and value.values[0].lower() not in RELATIONAL_OPERATORS:
                raise SieveError(value.position, f'unknown relational operator '
                                                 f'"{value.values[0]}": expected one of '
                                                 f'{", ".join(RELATIONAL_OPERATORS)}')
        value = tags.get("index")
        if isinstance(value, Number) and value.value < 1:
            raise SieveError(value.position, '":index" counts from 1')
        value = tags.get("zone")
        if isinstance(value, StringList) and self.literal(value.values[0]) \
                and not _ZONE.match(value.values[0]):
            raise SieveError(value.position, f'invalid time zone "{value.values[0]}": '
                                             f'expected +hhmm or -hhmm')

    # -- per-command checks: (node, tags, positional, enabled, loops)

    def variable_name(self, value: StringList) -> None:
        for name in value.values:
            if not _VARIABLE_NAME.match(name):
                raise SieveError(value.position, f'invalid variable name "{name}"')

    def command_set(self, node, tags, positional, enabled, loops) -> None:
        self.variable_name(positional[0])

    def command_global(self, node, tags, positional, enabled, loops) -> None:
        self.need("variables", enabled, node.position, 'command "global"')
        self.variable_name(positional[0])

    def command_setflag(self, node, tags, positional, enabled, loops) -> None:
        if len(positional) == 2:
            self.need("variables", enabled, positional[0].position, "a flag variable name")
            self.variable_name(positional[0])

    command_addflag = command_removeflag = command_setflag

    def command_addheader(self, node, tags, positional, enabled, loops) -> None:
        value = positional[0]
        name = value.values[0]
        if self.literal(name) and not _FIELD_NAME.match(name):
            raise SieveError(value.position, f'invalid header field name "{name}"')

    command_deleteheader = command_addheader

    def command_notify(self, node, tags, positional, enabled, loops) -> None:
        importance = tags.get("importance")
        if isinstance(importance, StringList) and self.literal(importance.values[0]) \
                and importance.values[0] not in ("1", "2", "3"):
            raise SieveError(importance.position, '":importance" must be "1", "2" or "3"')
        method = positional[0]
        uri = method.values[0]
        if self.literal(uri) and not uri.lower().startswith("mailto:"):
            raise SieveError(method.position, f'unsupported notification method "{uri}": '
                                              f'only mailto is supported')

    def command_break(self, node, tags, positional, enabled, loops) -> None:
        if not loops:
            raise SieveError(node.position, '"break" must be inside "foreverypart"')
        label = tags.get("name")
        if isinstance(label, StringList) and label.values[0] not in loops:
            raise SieveError(label.position, f'no enclosing "foreverypart" is named '
                                             f'"{label.values[0]}"')

    def command_extracttext(self, node, tags, positional, enabled, loops) -> None:
        """RFC 5703 7: only inside "foreverypart", and it sets a variable."""
        if not loops:
            raise SieveError(node.position, '"extracttext" must be inside "foreverypart"')
        self.need("variables", enabled, node.position, '"extracttext"')
        self.variable_name(positional[0])

    def command_include(self, node, tags, positional, enabled, loops) -> None:
        value = positional[0]
        if not value.values[0]:
            raise SieveError(value.position, "empty script name")

    def test_hasflag(self, node, tags, positional, enabled, loops) -> None:
        if len(positional) == 2:
            self.need("variables", enabled, positional[0].position, "a flag variable list")
            self.variable_name(positional[0])

    def test_envelope(self, node, tags, positional, enabled, loops) -> None:
        parts = positional[0]
        for part in parts.values:
            if self.literal(part) and part.lower() not in ENVELOPE_PARTS:
                raise SieveError(parts.position, f'unsupported envelope part "{part}": '
                                                 f'expected "from" or "to"')

    def test_date(self, node, tags, positional, enabled, loops) -> None:
        part = positional[-2]
        if self.literal(part.values[0]) and part.values[0].lower() not in DATE_PARTS:
            raise SieveError(part.position, f'unknown date part "{part.values[0]}"')

    test_currentdate = test_date

    def test_header(self, node, tags, positional, enabled, loops) -> None:
        if any(name in tags for name in MIME_OPTIONS) and "mime" not in tags:
            raise SieveError(node.position, 'MIME options need ":mime"')


def _nothing(*arguments: object) -> None:
    return None


def _guaranteed(test: Test) -> frozenset[str]:
    """The extensions a test guarantees when true: `ihave` and `allof` of them."""
    if test.name == "ihave" and test.arguments and isinstance(test.arguments[-1], StringList):
        return frozenset(test.arguments[-1].values)
    if test.name == "allof":
        result: frozenset[str] = frozenset()
        for inner in test.tests:
            result |= _guaranteed(inner)
        return result
    return frozenset()


def check(script: Script, *, extensions: Collection[str] = SUPPORTED_EXTENSIONS) -> Script:
    """Check a parsed script against the commands, tests and `extensions` offered; raise
    `SieveError` at the first problem; return the script unchanged."""
    _Checker(script, extensions).run()
    return script


def compile_script(text: str, *, extensions: Collection[str] = SUPPORTED_EXTENSIONS) -> Script:
    """Parse and check a Sieve script (see the module documentation)."""
    return check(parse(text), extensions=extensions)
