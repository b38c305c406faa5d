"""The Sieve tests that read the message, its envelope and the clock: `exists`, `header`,
`address`, `envelope` (RFC 5228 5), `body` (RFC 5173), `date`/`currentdate` (RFC 5260), with
`:index`/`:last` (RFC 5260 6) and the MIME options `:mime`, `:anychild`, `:type`, `:subtype`,
`:contenttype`, `:param` (RFC 5703 4); and enotify's method tests (RFC 5435 5).

A mixin of the interpreter's runner: it relies on `msg`, `part` (the `foreverypart` part, None
outside a loop), `ctx`, `strings`, `string`, `number`, `tag_string` and `compare_values`.
"""

from __future__ import annotations

from datetime import timezone
from email.utils import parsedate_to_datetime

from cloudmail.sieve import matching
from cloudmail.sieve.actions import NotifyMethodError, parse_notify_uri
from cloudmail.sieve.message import MimePart, parse_addresses


def _select(values: list, args) -> list:
    """`:index N` (from 1) and `:last` (count from the end) pick one field occurrence."""
    index = args.tags.get("index")
    if index is None:
        return values
    n = index.value
    if n < 1 or n > len(values):
        return []
    return [values[-n] if "last" in args.tags else values[n - 1]]


class MessageTests:
    def mime_parts(self, args) -> list[MimePart] | None:
        """The parts whose headers a test reads; None for the top-level header list (which
        `addheader`/`deleteheader` change)."""
        if "anychild" in args.tags:
            current = self.part if self.part is not None else self.msg.tree
            return current.descendants()
        if "mime" in args.tags and self.part is not None:
            return [self.part]
        return None

    def field_values(self, args, name: str, *, raw: bool = False) -> list[str]:
        parts = self.mime_parts(args)
        if parts is None:
            values = self.msg.raw_headers(name) if raw else self.msg.headers(name)
            return _select(values, args)
        found: list[str] = []
        for part in parts:
            found.extend(_select(part.raw_headers(name) if raw else part.headers(name), args))
        return found

    def test_exists(self, test, args) -> bool:
        return all(self.field_values(args, name) for name in self.strings(args.positional[0]))

    def mime_option_values(self, args, name: str) -> list[str]:
        """RFC 5703 4.1: the content type pieces or parameters instead of the whole value."""
        parts = self.mime_parts(args)
        if parts is None:
            parts = [self.msg.tree]
        values: list[str] = []
        for part in parts:
            occurrences = _select(part.headers(name), args)
            if not occurrences and name.lower() == "content-type" and "param" not in args.tags:
                occurrences = ["text/plain"]
            for value in occurrences:
                main = value.split(";", 1)[0].strip().lower()
                if "type" in args.tags:
                    values.append(main.split("/", 1)[0] if name.lower() == "content-type" else main)
                elif "subtype" in args.tags:
                    values.append(main.split("/", 1)[1] if "/" in main else "")
                elif "contenttype" in args.tags:
                    values.append(main)
                elif "param" in args.tags:
                    wanted = [p.lower() for p in self.strings(args.tags["param"])]
                    params = _params(value)
                    values.extend(params[p] for p in wanted if p in params)
                else:
                    values.append(value)
        return values

    def test_header(self, test, args) -> bool:
        values: list[str] = []
        for name in self.strings(args.positional[0]):
            if "mime" in args.tags and args.first_of(("type", "subtype", "contenttype", "param")):
                values.extend(self.mime_option_values(args, name))
            else:
                values.extend(self.field_values(args, name))
        return self.compare_values(args, values, self.strings(args.positional[1]))

    def test_address(self, test, args) -> bool:
        part = args.first_of(("all", "localpart", "domain", "user", "detail")) or "all"
        values = []
        for name in self.strings(args.positional[0]):
            for field in self.field_values(args, name, raw=True):
                for address in parse_addresses([field]):
                    values.append(matching.address_part(address, part, self.ctx.subaddress_separators))
        return self.compare_values(args, values, self.strings(args.positional[1]))

    def test_body(self, test, args) -> bool:
        keys = self.strings(args.positional[0])
        if "raw" in args.tags:
            return self.compare_values(args, [self.msg.raw_body()], keys)
        if "content" in args.tags:
            types = [t.strip().lower() for t in self.strings(args.tags["content"])]
        else:
            types = ["text"]
        tree = self.msg.tree
        leaves = [p for p in [tree, *tree.descendants()] if not p.is_multipart()]
        texts = []
        for part in leaves:
            ctype = part.content_type
            if part.content_type == "message/rfc822":
                continue
            if any(t == "" or t == ctype or ("/" not in t and ctype.split("/")[0] == t) for t in types):
                texts.append(part.text())
        return self.compare_values(args, texts, keys)

    def test_date(self, test, args) -> bool:
        name, part_arg, key_arg = args.positional[0], args.positional[1], args.positional[2]
        part = self.string(part_arg).lower()
        zone = self.tag_string(args, "zone")
        local = self.ctx.now.tzinfo or timezone.utc
        values = []
        for field in self.field_values(args, self.string(name)):
            text = field.rsplit(";", 1)[-1] if self.string(name).lower() == "received" else field
            try:
                moment = parsedate_to_datetime(text.strip())
            except (TypeError, ValueError, IndexError):
                continue
            if moment is None:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=timezone.utc)
            if zone is not None:
                moment = moment.astimezone(matching.parse_zone(zone))
            elif "originalzone" not in args.tags:
                moment = moment.astimezone(local)
            values.append(matching.date_part(moment, part))
        return self.compare_values(args, values, self.strings(key_arg))

    def test_envelope(self, test, args) -> bool:
        part = args.first_of(("all", "localpart", "domain", "user", "detail")) or "all"
        values = []
        for name in self.strings(args.positional[0]):
            name = name.lower()
            address = {"from": self.env.sender, "to": self.env.recipient, "auth": self.env.auth}.get(name)
            if address is None:
                continue
            address = address.strip().strip("<>")
            values.append("" if address == "" and part != "detail" else
                          matching.address_part(address, part, self.ctx.subaddress_separators))
        return self.compare_values(args, values, self.strings(args.positional[1]))

    def test_valid_notify_method(self, test, args) -> bool:
        try:
            for uri in self.strings(args.positional[0]):
                parse_notify_uri(uri)
        except NotifyMethodError:
            return False
        return True

    def test_notify_method_capability(self, test, args) -> bool:
        try:
            parse_notify_uri(self.string(args.positional[0]))
        except NotifyMethodError:
            return False
        capability = self.string(args.positional[1]).lower()
        if capability != "online":
            return False
        return self.compare_values(args, ["maybe"], self.strings(args.positional[2]))

    def test_currentdate(self, test, args) -> bool:
        now = self.ctx.now if self.ctx.now.tzinfo else self.ctx.now.replace(tzinfo=timezone.utc)
        zone = self.tag_string(args, "zone")
        if zone is not None:
            now = now.astimezone(matching.parse_zone(zone))
        part = self.string(args.positional[0]).lower()
        return self.compare_values(args, [matching.date_part(now, part)], self.strings(args.positional[1]))


def _params(value: str) -> dict[str, str]:
    from email.message import Message
    holder = Message()
    holder["Content-Type"] = value
    found = {}
    for name, param in holder.get_params([], header="Content-Type")[1:]:
        if isinstance(param, tuple):
            from email.utils import collapse_rfc2231_value
            param = collapse_rfc2231_value(param)
        found[name.lower()] = str(param)
    return found
