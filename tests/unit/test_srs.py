"""Sender rewriting for forwarded mail: our SRS0/SRS1 addresses reverse to the original sender,
forged or old ones do not, and the format is libsrs2's."""

from __future__ import annotations

import pytest

from cloudmail.srs import MAX_AGE_DAYS, Srs, SrsError

DAY = 86400.0
NOW = 20_000 * DAY + 3600
SRS = Srs(b"test secret", "example.com")


def test_forward_then_reverse():
    """A plain address becomes SRS0 at our domain and reverses to itself."""
    rewritten = SRS.forward("alice@remote.test", NOW)
    assert rewritten.startswith("SRS0=") and rewritten.endswith("=remote.test=alice@example.com")
    assert SRS.reverse(rewritten, NOW) == "alice@remote.test"
    assert SRS.reverse(rewritten.upper().replace("@EXAMPLE.COM", "@example.com"),
                       NOW) == "ALICE@REMOTE.TEST"


@pytest.mark.parametrize("address", ["", "bob@example.com", "noatsign"])
def test_null_sender_and_our_addresses_stay(address):
    """<> and addresses of our own domain are not rewritten."""
    assert SRS.forward(address, NOW) == address


def test_another_forwarders_srs0_becomes_srs1_and_reverses_to_it():
    """SRS0 of another forwarder is wrapped as SRS1 (the chain stays one level deep); our
    reverse gives that forwarder's SRS0 address back, which it can reverse itself."""
    theirs = Srs(b"their secret", "forwarder.test")
    srs0 = theirs.forward("alice@remote.test", NOW)
    srs1 = SRS.forward(srs0, NOW)
    assert srs1.startswith("SRS1=") and "=forwarder.test==" in srs1
    back = SRS.reverse(srs1, NOW)
    assert back == srs0 and theirs.reverse(back, NOW) == "alice@remote.test"
    again = SRS.forward(srs1.replace("@example.com", "@other.test"), NOW)
    assert again.startswith("SRS1=") and SRS.reverse(again, NOW) == srs0


def test_forged_old_and_foreign_addresses_are_refused():
    """A wrong hash, a stamp older than MAX_AGE_DAYS, another domain or a plain address is
    not reversed (no open relay through the reverse path)."""
    rewritten = SRS.forward("alice@remote.test", NOW)
    local, _, _ = rewritten.partition("@")
    tampered = local.replace("=alice", "=mallory") + "@example.com"
    with pytest.raises(SrsError, match="wrong hash"):
        SRS.reverse(tampered, NOW)
    with pytest.raises(SrsError, match="too old"):
        SRS.reverse(rewritten, NOW + (MAX_AGE_DAYS + 1) * DAY)
    assert SRS.reverse(rewritten, NOW + MAX_AGE_DAYS * DAY) == "alice@remote.test"
    for bad in [rewritten.replace("@example.com", "@other.test"), "alice@example.com",
                "SRS0=xx@example.com", Srs(b"other", "example.com").forward("a@b.test", NOW)]:
        with pytest.raises(SrsError):
            SRS.reverse(bad, NOW)
