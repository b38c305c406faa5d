"""SPF, DKIM, DMARC, DNSBL and iprev in the real `twistd -n cloudmail`, asking a real DNS server
on loopback (the `[dns]` table points the server at it), with smtplib as the client.

The DNS server runs on this test's reactor, so everything blocking (starting twistd, smtplib)
runs in threads. Clients connect from 127.0.0.1 (not listed, forward-confirmed reverse DNS) and
from 127.0.0.2 (listed in the DNSBL zone).
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.test_smtp_authentication import ZONES, message
from tests.integration.test_twistd import free_port, provision, start_server, stop

CHECK_ZONES = {
    **ZONES,
    "2.0.0.127.bl.test": {"A": ["127.0.0.2"], "TXT": ["listed for the test"]},
    "1.0.0.127.in-addr.arpa": {"PTR": ["client.remote.test"]},
    "client.remote.test": {"A": ["127.0.0.1"]},
}


def send(port: int, sender: str, data: bytes, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("client.remote.test")
        client.sendmail(sender, ["alice@example.com"], data)


def stored(tmp_path: Path, folder: str = "") -> list[bytes]:
    path = tmp_path / "data" / "mail" / "example.com" / "alice" / folder / "new"
    return [p.read_bytes() for p in sorted(path.iterdir())] if path.exists() else []


@pytest_twisted.ensureDeferred
async def test_checks_in_the_running_server_against_local_dns(tmp_path, dns_server):
    """Pass, reject, quarantine and DNSBL refusal, each decided by the running server from the
    loopback DNS server's records, and recorded in its Authentication-Results header."""
    server = dns_server(CHECK_ZONES)
    smtp = free_port()
    process, admin, _ = await deferToThread(
        start_server, tmp_path, listen={"smtp": f"tcp:{smtp}:interface=127.0.0.1"},
        dns={"nameservers": [f"127.0.0.1:{server.port}"], "timeout": 1.0},
        smtp={"authenticate": True, "iprev": True, "dnsbl_zones": ["bl.test"]})
    try:
        await deferToThread(provision, admin,
                            (tmp_path / "data" / "admin.token").read_text().strip())
        await deferToThread(send, smtp, "bounce@signed.test",
                            message("a@signed.test", sign=True))
        [passed] = stored(tmp_path)
        head = passed.split(b"\r\n\r\n", 1)[0]
        assert b"Authentication-Results: mail.example.test;" in head
        for result in (b"iprev=pass", b"spf=pass", b"dkim=pass", b"dmarc=pass"):
            assert result in head
        assert b"(client.remote.test [127.0.0.1])" in head

        with pytest.raises(smtplib.SMTPDataError) as refused:
            await deferToThread(send, smtp, "x@strict.test", message("a@strict.test"))
        assert refused.value.smtp_code == 550 and b"strict.test" in refused.value.smtp_error

        await deferToThread(send, smtp, "x@careful.test", message("a@careful.test"))
        [junk] = stored(tmp_path, ".Spam")
        assert b"dmarc=fail" in junk

        with pytest.raises(smtplib.SMTPResponseException) as listed:
            await deferToThread(send, smtp, "bounce@signed.test",
                                message("a@signed.test", sign=True), "127.0.0.2")
        assert listed.value.smtp_code == 554 and b"bl.test" in listed.value.smtp_error
        assert len(stored(tmp_path)) == 1
    finally:
        output = await deferToThread(stop, process)
    assert "dmarc=pass" in output and "rejected" in output
