"""The IP and sender blocklist files: what a line means, bad lines, and re-reading."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.logger import globalLogPublisher

from cloudmail import signals
from cloudmail.policy.blocklist import Blocklist, SenderBlocklist


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> Path:
    """Write `text` and move the mtime on, so a change is seen even within one clock tick."""
    path.write_text(text, encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    return path


def captured_logs() -> tuple[list[dict], object]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    return events, events.append


def test_ip_entries_addresses_networks_and_ipv6(tmp_path):
    """Single addresses, CIDR networks (host bits allowed) and IPv6 networks all match; an
    IPv4-mapped IPv6 client matches as its IPv4 address; comments and blank lines are ignored."""
    path = write(tmp_path / "ips", "# blocked\n\n192.0.2.9\n198.51.100.7/24  # a whole net\n"
                                   "2001:db8::/32\n")
    blocklist = Blocklist(path, reload_on_sighup=False)
    assert str(blocklist.matches("192.0.2.9")) == "192.0.2.9/32"
    assert str(blocklist.matches("198.51.100.200")) == "198.51.100.0/24"
    assert str(blocklist.matches("::ffff:198.51.100.1")) == "198.51.100.0/24"
    assert str(blocklist.matches("2001:db8:1::5")) == "2001:db8::/32"
    assert blocklist.matches("192.0.2.10") is None
    assert blocklist.matches("2001:db9::1") is None
    assert blocklist.matches("not an ip") is None


def test_a_bad_line_is_logged_with_file_and_line_and_skipped(tmp_path):
    """A line that is not an IP or network is logged as file:line and the rest still loads."""
    path = write(tmp_path / "ips", "192.0.2.1\n192.0.2.300\n192.0.2.2\n")
    events, observer = captured_logs()
    try:
        blocklist = Blocklist(path, reload_on_sighup=False)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert blocklist.matches("192.0.2.1") and blocklist.matches("192.0.2.2")
    bad = [e for e in events if e.get("entry") == "192.0.2.300"]
    assert len(bad) == 1 and bad[0]["path"] == str(path) and bad[0]["line_number"] == 2


def test_a_missing_file_is_empty_until_it_appears(tmp_path):
    """A missing file blocks nothing and does not raise; once written it is picked up."""
    clock = FakeClock()
    path = tmp_path / "ips"
    blocklist = Blocklist(path, check_interval=2, clock=clock, reload_on_sighup=False)
    assert blocklist.matches("192.0.2.9") is None
    write(path, "192.0.2.9\n")
    clock.now += 3
    assert blocklist.matches("192.0.2.9") is not None


def test_changes_are_seen_at_most_every_check_interval(tmp_path):
    """The file is looked at on use, no more than once per check_interval seconds."""
    clock = FakeClock()
    path = write(tmp_path / "ips", "192.0.2.9\n")
    blocklist = Blocklist(path, check_interval=2, clock=clock, reload_on_sighup=False)
    write(path, "192.0.2.10\n")
    clock.now += 1
    assert blocklist.matches("192.0.2.9") is not None  # not looked at yet
    clock.now += 1.5
    assert blocklist.matches("192.0.2.9") is None
    assert blocklist.matches("192.0.2.10") is not None


def test_sighup_rereads_the_file(tmp_path):
    """A SIGHUP (run_callbacks, as the reactor runs it) re-reads the list at once; a list that is
    garbage collected unregisters itself."""
    path = write(tmp_path / "senders", "a@example.com\n")
    blocklist = SenderBlocklist(path, check_interval=3600)
    write(path, "b@example.com\n")
    signals.run_callbacks()
    assert blocklist.matches("b@example.com") == "b@example.com"
    assert blocklist.matches("a@example.com") is None
    import gc
    gc.collect()  # lists left by earlier tests go first, so only ours is counted below
    before = len(signals._callbacks)
    del blocklist
    gc.collect()
    assert len(signals._callbacks) == before - 1


def test_sender_entries_addresses_domains_and_subdomains(tmp_path):
    """user@domain blocks that address; `domain` and `@domain` that domain exactly;
    `.domain` every subdomain but not the domain itself. Case does not matter; IDNs match as
    A-labels; the null sender is never blocked."""
    path = write(tmp_path / "senders", "Spam@Example.COM\nbad.test\n@worse.test\n.sub.test\n"
                                       "bücher.test\n")
    blocklist = SenderBlocklist(path, reload_on_sighup=False)
    assert blocklist.matches("spam@example.com") == "spam@example.com"
    assert blocklist.matches("ham@example.com") is None
    assert blocklist.matches("x@BAD.test") == "bad.test"
    assert blocklist.matches("x@a.bad.test") is None
    assert blocklist.matches("x@worse.test") == "worse.test"
    assert blocklist.matches("x@a.sub.test") == ".sub.test"
    assert blocklist.matches("x@b.a.sub.test") == ".sub.test"
    assert blocklist.matches("x@sub.test") is None
    assert blocklist.matches("x@xn--bcher-kva.test") == "xn--bcher-kva.test"
    assert blocklist.matches("") is None


def test_bad_sender_lines_are_skipped(tmp_path):
    """Lines that are not addresses or domains are logged and skipped, never fatal."""
    path = write(tmp_path / "senders", "@\nbad domain!\nfoo@@\nok.test\n")
    events, observer = captured_logs()
    try:
        blocklist = SenderBlocklist(path, reload_on_sighup=False)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert blocklist.matches("x@ok.test") == "ok.test"
    assert sorted(e["line_number"] for e in events if "line_number" in e) == [1, 2, 3]
