"""The whole path in the real `twistd -n cloudmail`: mail sent over SMTP is read over IMAP
(STARTTLS on `imap`, implicit TLS on `imaps`), flagged, searched, moved and expunged, and the
UIDs are the same after a restart."""

from __future__ import annotations

import smtplib
import ssl

from imapclient import IMAPClient

from tests.integration.test_twistd import free_port, provision, start_server, stop

MESSAGE = b"From: sender@remote.test\r\nSubject: over the wire\r\n\r\nHello Alice.\r\n"


def tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def start(tmp_path, ports):
    smtp, imap, imaps = ports
    return start_server(tmp_path, listen={"smtp": f"tcp:{smtp}:interface=127.0.0.1",
                                          "imap": f"tcp:{imap}:interface=127.0.0.1",
                                          "imaps": f"tcp:{imaps}:interface=127.0.0.1"})


def test_smtp_to_imap_and_uids_after_restart(tmp_path):
    """A message delivered by the MX is in INBOX over IMAP; it is flagged, found, moved to
    Archive and expunged there; a second one keeps its UID across a restart."""
    ports = (free_port(), free_port(), free_port())
    process, admin, _ = start(tmp_path, ports)
    try:
        provision(admin, (tmp_path / "data" / "admin.token").read_text().strip())
        for _ in range(2):
            with smtplib.SMTP("127.0.0.1", ports[0], timeout=10) as client:
                client.sendmail("sender@remote.test", ["alice@example.com"], MESSAGE)
        with IMAPClient("127.0.0.1", port=ports[1], ssl=False, timeout=10) as imap:
            imap.starttls(tls())
            imap.login("alice@example.com", "long enough")
            info = imap.select_folder("INBOX")
            uids = imap.search("ALL")
            assert len(uids) == 2
            body = imap.fetch(uids[:1], ["BODY.PEEK[]"])[uids[0]][b"BODY[]"]
            assert body.endswith(MESSAGE) and b"Received: from" in body
            imap.add_flags(uids[:1], [b"\\Flagged"])
            assert imap.search(["FLAGGED", "SUBJECT", "over the wire"]) == uids[:1]
            imap.move(uids[:1], "Archive")
            imap.select_folder("Archive")
            [archived] = imap.search("ALL")
            imap.delete_messages([archived])
            imap.expunge()
            assert imap.search("ALL") == []
    finally:
        stop(process)
    process, _, _ = start(tmp_path, ports)
    try:
        with IMAPClient("127.0.0.1", port=ports[2], ssl=True, ssl_context=tls(),
                        timeout=10) as imap:
            imap.login("alice@example.com", "long enough")
            again = imap.select_folder("INBOX")
            assert again[b"UIDVALIDITY"] == info[b"UIDVALIDITY"]
            assert imap.search("ALL") == uids[1:]
    finally:
        output = stop(process)
    assert "IMAP login alice@example.com" in output
