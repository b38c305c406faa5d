"""Local blocklists kept as plain files: client IPs / networks, and sender addresses / domains.

One entry per line; `#` starts a comment, blank lines are ignored. A line that is not a valid
entry is logged with its file and line number and skipped: a typo in a blocklist never stops the
server (nor empties the rest of the list).

`Blocklist` (the `[smtp] ip_blocklist` file) holds IPv4 and IPv6 addresses and CIDR networks
(`192.0.2.9`, `198.51.100.0/24`, `2001:db8::/32`; host bits are allowed and ignored). An
IPv4-mapped IPv6 client (`::ffff:192.0.2.9`) is matched as its IPv4 address.

`SenderBlocklist` (the `[smtp] sender_blocklist` file) holds, matched case-insensitively against
the MAIL FROM address (domains compared as IDNA A-labels):

- `user@example.com` — that one address (exactly: `user+tag@example.com` is another address);
- `example.com` or `@example.com` — every address at exactly that domain, not its subdomains;
- `.example.com` — every address at any subdomain of example.com (`a.example.com`,
  `b.c.example.com`), not example.com itself; list both lines to block both.

The null sender `<>` (bounces) is never blocked.

Both files are re-read when they change — on use, looking at the file's mtime, size and inode at
most once every `check_interval` seconds — and on SIGHUP. A missing or unreadable file is logged
and counts as empty until it can be read. `matches()` is otherwise a pure look-up.
"""

from __future__ import annotations

import ipaddress
import os
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

from twisted.logger import Logger

from cloudmail.address import AddressError, normalize_domain
from cloudmail.signals import on_sighup

log = Logger()

CHECK_INTERVAL = 2.0
"""Seconds between two looks at a blocklist file's mtime (the look happens on use)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Entries = TypeVar("Entries")


class _ListFile(Generic[Entries]):
    """A plain list file parsed into `Entries`, re-read when it changes or on SIGHUP."""

    def __init__(self, path: Path | str, check_interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, reload_on_sighup: bool = True
                 ) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = clock()
        self.entries: Entries = self._parse([])
        self.reload()
        if reload_on_sighup:
            _reload_on_sighup(self)

    def reload(self) -> bool:
        """Read the file now; True if it could be read. A missing file leaves the list empty."""
        self._checked_at = self._clock()
        self._stamp = _stamp(self.path)
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            log.error("blocklist {path}: cannot read: {reason}; treated as empty",
                      path=str(self.path), reason=e.strerror or str(e))
            self.entries = self._parse([])
            return False
        self.entries = self._parse(self._lines(text))
        log.info("blocklist {path}: {count} entries loaded", path=str(self.path),
                 count=self._count(self.entries))
        return True

    def refresh(self) -> bool:
        """Re-read the file if `check_interval` has passed and it changed; True if re-read."""
        now = self._clock()
        if now - self._checked_at < self.check_interval:
            return False
        self._checked_at = now
        if _stamp(self.path) == self._stamp:
            return False
        self.reload()
        return True

    def _lines(self, text: str) -> Iterable[tuple[int, str]]:
        for number, line in enumerate(text.splitlines(), start=1):
            entry = line.split("#", 1)[0].strip()
            if entry:
                yield number, entry

    def _bad_line(self, number: int, line: str, reason: str) -> None:
        log.warn(  # noqa: G010 -- twisted.logger has no warning()
            "blocklist {path}:{line_number}: {entry!r} skipped: {reason}",
            path=str(self.path), line_number=number, entry=line, reason=reason)

    def _parse(self, lines: Iterable[tuple[int, str]]) -> Entries:
        raise NotImplementedError

    def _count(self, entries: Entries) -> int:
        raise NotImplementedError


class Blocklist(_ListFile[dict[int, set[Network]]]):
    """Client IP addresses and networks that may not connect (see the module)."""

    def _parse(self, lines: Iterable[tuple[int, str]]) -> dict[int, set[Network]]:
        by_length: dict[int, set[Network]] = {}
        for number, line in lines:
            try:
                network = ipaddress.ip_network(line, strict=False)
            except ValueError:
                self._bad_line(number, line, "not an IP address or CIDR network")
                continue
            by_length.setdefault(_key(network.version, network.prefixlen), set()).add(network)
        return by_length

    def _count(self, entries: dict[int, set[Network]]) -> int:
        return sum(len(networks) for networks in entries.values())

    def matches(self, ip: str) -> Network | None:
        """The listed network holding `ip`, or None (also for text that is not an IP)."""
        self.refresh()
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for key, networks in self.entries.items():
            version, length = divmod(key, 1000)
            if version != address.version:
                continue
            network = ipaddress.ip_network(f"{address}/{length}", strict=False)
            if network in networks:
                return network
        return None


def _key(version: int, prefixlen: int) -> int:
    return version * 1000 + prefixlen


class SenderEntries:
    """The parsed sender list: exact addresses, exact domains and parent domains of subdomains."""

    def __init__(self) -> None:
        self.addresses: set[str] = set()
        self.domains: set[str] = set()
        self.subdomains_of: set[str] = set()

    def __len__(self) -> int:
        return len(self.addresses) + len(self.domains) + len(self.subdomains_of)


class SenderBlocklist(_ListFile[SenderEntries]):
    """Sender addresses and domains whose mail is refused at MAIL FROM (see the module)."""

    def _parse(self, lines: Iterable[tuple[int, str]]) -> SenderEntries:
        entries = SenderEntries()
        for number, line in lines:
            try:
                if line.startswith("."):
                    entries.subdomains_of.add(normalize_domain(line[1:]))
                elif line.startswith("@"):
                    entries.domains.add(normalize_domain(line[1:]))
                elif "@" in line:
                    entries.addresses.add(_normalize_address(line))
                else:
                    entries.domains.add(normalize_domain(line))
            except AddressError as e:
                self._bad_line(number, line, str(e))
        return entries

    def _count(self, entries: SenderEntries) -> int:
        return len(entries)

    def matches(self, sender: str) -> str | None:
        """The entry blocking `sender` as written in the list's form (`user@domain`, `domain`
        or `.domain`), or None. The null sender ("") is never blocked."""
        self.refresh()
        if not sender or "@" not in sender:
            return None
        try:
            address = _normalize_address(sender)
        except AddressError:
            return None
        entries = self.entries
        if address in entries.addresses:
            return address
        domain = address.rpartition("@")[2]
        if domain in entries.domains:
            return domain
        labels = domain.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            if parent in entries.subdomains_of:
                return "." + parent
        return None


def _normalize_address(text: str) -> str:
    local, _, domain = text.strip().rpartition("@")
    if not local:
        raise AddressError(f"{text!r} has no local part")
    return f"{local.lower()}@{normalize_domain(domain)}"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _reload_on_sighup(listfile: _ListFile) -> None:
    """Re-read `listfile` on SIGHUP for as long as it exists (a weak reference: a list dropped
    with its container unregisters itself)."""
    ref = weakref.ref(listfile)

    def reload() -> None:
        target = ref()
        if target is not None:
            target.reload()

    try:
        unregister = on_sighup(reload)
    except ValueError:  # signal handlers can only be installed from the main thread
        log.info("blocklist {path}: not reloaded on SIGHUP (built outside the main thread)",
                 path=str(listfile.path))
        return
    weakref.finalize(listfile, unregister)
