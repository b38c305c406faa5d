"""DKIM keys of a domain: an Ed25519 key signing next to the RSA one, rotation with the old key
kept published as retired, and removal — through the service, the admin API and the CLI.

Signatures are made by `sign_as_author` (what submission and the test message use) and checked
with dkimpy against exactly the TXT records the service says to publish.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timezone

import dkim
import pytest
import pytest_twisted

from cloudmail.admin.service import next_selector
from cloudmail.errors import BadRequest, Conflict, Invalid, NotFound
from cloudmail.smtp.sending import sign_as_author
from tests.integration.test_admin_api import api  # noqa: F401  (the admin API fixture)
from tests.integration.test_cli import as_json, failed, fields, ok
from tests.integration.test_cli import config  # noqa: F401  (the CLI config fixture)

MESSAGE = (b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: keys\r\n"
           b"Date: Thu, 01 May 2025 12:00:00 +0000\r\nMessage-ID: <k@example.com>\r\n"
           b"\r\nHello.\r\n")


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d")


async def signing_selectors(container, domain: dict) -> list[str]:
    """Sign MESSAGE as alice@example.com; check every signature against the records `domain`
    (the service's JSON) says to publish; the selectors that signed, sorted."""
    run_in_thread = functools.partial(container.pools.run, "auth")
    signed = await sign_as_author(container.accounts, run_in_thread, MESSAGE, "alice@example.com")
    records = {f"{k['record_name']}.".encode(): k["record"].encode()
               for k in domain["dkim"]["keys"]}
    count = signed.count(b"DKIM-Signature:")
    verifier = dkim.DKIM(signed)
    assert all(verifier.verify(idx=i, dnsfunc=lambda name, timeout=5: records[name])
               for i in range(count))
    signatures = signed[:signed.index(b"From:")]
    return sorted(s.decode() for s in re.findall(rb"[;\s]s=([\w-]+);", signatures))


def roles(domain: dict) -> list[tuple[str, str, str]]:
    return [(k["selector"], k["role"], k["algorithm"]) for k in domain["dkim"]["keys"]]


# The service


@pytest_twisted.ensureDeferred
async def test_ed25519_key_signs_next_to_rsa_and_is_idempotent(container):
    """`dkim_ed25519: true` adds an Ed25519 key under "<selector>-ed25519": two records to
    publish, two signatures that verify; true again changes nothing; false removes it."""
    service = container.admin_service
    added = await service.add_domain("example.com")
    assert roles(added) == [("cloudmail", "main", "rsa")]
    assert added["dkim"]["keys"][0]["record"] == added["dkim"]["record"]

    domain = await service.update_domain("example.com", {"dkim_ed25519": True})
    assert roles(domain) == [("cloudmail", "main", "rsa"),
                             ("cloudmail-ed25519", "ed25519", "ed25519")]
    ed = domain["dkim"]["keys"][1]
    assert ed["record_name"] == "cloudmail-ed25519._domainkey.example.com"
    assert ed["record"].startswith("v=DKIM1; k=ed25519; p=") and ed["created"]
    assert domain["dkim"]["selector"] == "cloudmail"  # the compatible top-level fields
    assert await signing_selectors(container, domain) == ["cloudmail", "cloudmail-ed25519"]

    assert await service.update_domain("example.com", {"dkim_ed25519": True}) == domain
    domain = await service.update_domain("example.com", {"dkim_ed25519": False})
    assert roles(domain) == [("cloudmail", "main", "rsa")]
    assert await service.update_domain("example.com", {"dkim_ed25519": False}) == domain
    assert await signing_selectors(container, domain) == ["cloudmail"]


@pytest_twisted.ensureDeferred
async def test_rotation_keeps_the_old_key_published_until_removed(container):
    """A rotation makes a new main key under a fresh selector; the old one is shown as retired
    (its record unchanged) and no longer signs; removing it drops it; the main key stays."""
    service = container.admin_service
    before = await service.add_domain("example.com")
    await service.update_domain("example.com", {"dkim_ed25519": True})

    domain = await service.rotate_dkim("example.com")
    new = f"cloudmail-{today()}"
    assert roles(domain) == [(new, "main", "rsa"), ("cloudmail-ed25519", "ed25519", "ed25519"),
                             ("cloudmail", "retired", "rsa")]
    assert domain["dkim"]["selector"] == new
    assert domain["dkim"]["record"] != before["dkim"]["record"]
    assert domain["dkim"]["keys"][2]["record"] == before["dkim"]["record"]
    assert await signing_selectors(container, domain) == [new, "cloudmail-ed25519"]

    domain = await service.rotate_dkim("example.com")  # the same day: numbered
    assert [k["selector"] for k in domain["dkim"]["keys"] if k["role"] == "retired"] == [
        "cloudmail", new]
    assert domain["dkim"]["selector"] == f"{new}-2"
    domain = await service.rotate_dkim("example.com", "May2025")
    assert domain["dkim"]["selector"] == "may2025"

    for retired in ("cloudmail", new, f"{new}-2"):
        domain = await service.remove_dkim_key("example.com", retired)
    assert roles(domain) == [("may2025", "main", "rsa"),
                             ("cloudmail-ed25519", "ed25519", "ed25519")]
    assert await signing_selectors(container, domain) == ["cloudmail-ed25519", "may2025"]
    domain = await service.remove_dkim_key("example.com", "cloudmail-ed25519")
    assert roles(domain) == [("may2025", "main", "rsa")]

    with pytest.raises(Invalid) as e:
        await service.remove_dkim_key("example.com", "May2025")
    assert e.value.field == "selector" and "rotate" in e.value.message
    with pytest.raises(NotFound) as e:
        await service.remove_dkim_key("example.com", "cloudmail")
    assert e.value.field == "selector"


@pytest_twisted.ensureDeferred
async def test_ed25519_rotation(container):
    """`algorithm="ed25519"` replaces the Ed25519 key (the old one retired); the RSA key stays."""
    service = container.admin_service
    await service.add_domain("example.com")
    with pytest.raises(Invalid) as e:
        await service.rotate_dkim("example.com", algorithm="ed25519")
    assert e.value.field == "algorithm"
    await service.update_domain("example.com", {"dkim_ed25519": True})
    domain = await service.rotate_dkim("example.com", algorithm="ed25519")
    assert roles(domain) == [("cloudmail", "main", "rsa"),
                             (f"cloudmail-ed25519-{today()}", "ed25519", "ed25519"),
                             ("cloudmail-ed25519", "retired", "ed25519")]
    assert await signing_selectors(container, domain) == ["cloudmail",
                                                          f"cloudmail-ed25519-{today()}"]


@pytest_twisted.ensureDeferred
async def test_selector_rules_and_conflicts(container):
    """Bad selectors are Invalid naming the field, taken ones Conflict; renaming the main key
    leaves the Ed25519 key's selector as published; unknown domains are NotFound."""
    service = container.admin_service
    await service.add_domain("example.com")
    await service.update_domain("example.com", {"dkim_ed25519": True})
    for bad in ("not a label", "-x", "a" * 64):
        with pytest.raises(Invalid) as e:
            await service.rotate_dkim("example.com", bad)
        assert e.value.field == "selector"
    with pytest.raises(Invalid) as e:
        await service.rotate_dkim("example.com", algorithm="dsa")
    assert e.value.field == "algorithm"
    for taken in ("cloudmail", "cloudmail-ed25519"):
        with pytest.raises(Conflict) as e:
            await service.rotate_dkim("example.com", taken)
        assert e.value.field == "selector"
    with pytest.raises(Conflict) as e:
        await service.update_domain("example.com", {"dkim_selector": "cloudmail-ed25519"})
    assert e.value.field == "dkim_selector"
    with pytest.raises(BadRequest) as e:
        await service.update_domain("example.com", {"dkim_ed25519": "yes"})
    assert e.value.field == "dkim_ed25519"

    domain = await service.update_domain("example.com", {"dkim_selector": "s2"})
    assert roles(domain) == [("s2", "main", "rsa"), ("cloudmail-ed25519", "ed25519", "ed25519")]
    # Off and on again: the new key goes under the current main selector.
    await service.update_domain("example.com", {"dkim_ed25519": False})
    domain = await service.update_domain("example.com", {"dkim_ed25519": True})
    assert roles(domain)[1][0] == "s2-ed25519"
    # The Ed25519 selector of a 63-character main selector would be too long.
    await service.update_domain("example.com", {"dkim_ed25519": False})
    with pytest.raises(Invalid) as e:
        await service.update_domain("example.com", {"dkim_selector": "a" * 63,
                                                    "dkim_ed25519": True})
    assert e.value.field == "dkim_ed25519"
    assert (await service.get_domain("example.com"))["dkim"]["selector"] == "s2"  # rolled back

    for call in (service.rotate_dkim("nowhere.test"),
                 service.remove_dkim_key("nowhere.test", "cloudmail"),
                 service.update_domain("nowhere.test", {"dkim_ed25519": True})):
        with pytest.raises(NotFound) as e:
            await call
        assert e.value.field == "name"


def test_next_selector_rule():
    """The old selector without its date suffix, then -YYYYMMDD, numbered while taken, at most
    63 characters."""
    day = datetime(2025, 6, 12, tzinfo=timezone.utc)
    assert next_selector("cloudmail", {"cloudmail"}, day) == "cloudmail-20250612"
    assert next_selector("cloudmail-20250501", set(), day) == "cloudmail-20250612"
    assert next_selector("s-20250612", {"s-20250612"}, day) == "s-20250612-2"
    assert next_selector("s-20250612-2", {"s-20250612", "s-20250612-2"}, day) == "s-20250612-3"
    long = next_selector("a" * 60 + "-b", set(), day)
    assert len(long) <= 63 and long.endswith("-20250612") and "--" not in long


# The admin API


@pytest_twisted.ensureDeferred
async def test_api_ed25519_rotate_and_remove(api, container):  # noqa: F811
    """PATCH dkim_ed25519, POST .../dkim/rotate (with or without a body) and DELETE
    .../dkim/<selector> (204); errors name their field; the records shown verify."""
    assert (await api.post("/api/v1/domains", {"name": "example.com"})).status == 201
    answer = await api.patch("/api/v1/domains/example.com", {"dkim_ed25519": True})
    assert answer.status == 200, answer.raw
    assert await signing_selectors(container, answer.json) == ["cloudmail", "cloudmail-ed25519"]

    answer = await api.post("/api/v1/domains/example.com/dkim/rotate")
    assert answer.status == 200, answer.raw
    assert roles(answer.json)[2] == ("cloudmail", "retired", "rsa")
    answer = await api.post("/api/v1/domains/Example.COM/dkim/rotate", {"selector": "s2"})
    assert answer.status == 200 and answer.json["dkim"]["selector"] == "s2"
    assert await signing_selectors(container, answer.json) == ["cloudmail-ed25519", "s2"]
    assert (await api.get("/api/v1/domains/example.com")).json == answer.json

    answer = await api.delete("/api/v1/domains/example.com/dkim/cloudmail")
    assert answer.status == 204 and answer.raw == b""
    shown = (await api.get("/api/v1/domains/example.com")).json
    assert "cloudmail" not in [k["selector"] for k in shown["dkim"]["keys"]]

    for method, path, body, status, wrong in [
            ("DELETE", "/dkim/s2", None, 422, "selector"),
            ("DELETE", "/dkim/cloudmail", None, 404, "selector"),
            ("POST", "/dkim/rotate", {"selector": "bad selector"}, 422, "selector"),
            ("POST", "/dkim/rotate", {"selector": "cloudmail-ed25519"}, 409, "selector"),
            ("POST", "/dkim/rotate", {"algorithm": "dsa"}, 422, "algorithm"),
            ("POST", "/dkim/rotate", {"colour": "blue"}, 422, "colour"),
            ("POST", "/dkim/rotate", [1], 400, "body"),
            ("PATCH", "", {"dkim_ed25519": "on"}, 400, "dkim_ed25519"),
            ("PATCH", "", {"dkim_selector": "cloudmail-ed25519"}, 409, "dkim_selector")]:
        kw = {} if body is None else {"body": body}
        answer = await api.request(method, "/api/v1/domains/example.com" + path, **kw)
        assert (answer.status, answer.error_field) == (status, wrong), (method, path, body)
    answer = await api.post("/api/v1/domains/nowhere.test/dkim/rotate")
    assert answer.status == 404 and answer.error_field == "name"
    answer = await api.delete("/api/v1/domains/nowhere.test/dkim/s2")
    assert answer.status == 404 and answer.error_field == "name"


# The command line


def test_cli_shows_every_record_rotates_and_removes(config):  # noqa: F811
    """`domain set --dkim-ed25519 on`, `domain dkim-rotate` and `domain dkim-remove`; `domain
    show` prints each record to publish, saying which signs and which is retired."""
    ok(config, "domain", "add", "example.com")
    shown = fields(ok(config, "domain", "set", "example.com", "--dkim-ed25519", "on"))
    assert shown["dkim.keys.cloudmail.status"] == "signing (rsa, main key)"
    assert shown["dkim.keys.cloudmail-ed25519.status"] == "signing (ed25519, second signature)"
    assert shown["dkim.keys.cloudmail-ed25519.record_name"] == \
        "cloudmail-ed25519._domainkey.example.com"
    assert shown["dkim.keys.cloudmail-ed25519.record"].startswith("v=DKIM1; k=ed25519; p=")
    old_record = shown["dkim.record"]

    rotated = as_json(config, "domain", "dkim-rotate", "example.com", "--selector", "s2")
    assert roles(rotated) == [("s2", "main", "rsa"), ("cloudmail-ed25519", "ed25519", "ed25519"),
                              ("cloudmail", "retired", "rsa")]
    shown = fields(ok(config, "domain", "show", "example.com"))
    assert shown["dkim.record_name"] == "s2._domainkey.example.com"
    assert shown["dkim.keys.s2.status"] == "signing (rsa, main key)"
    assert shown["dkim.keys.cloudmail.status"].startswith("retired since ")
    assert "not signing" in shown["dkim.keys.cloudmail.status"]
    assert shown["dkim.keys.cloudmail.record"] == old_record

    shown = fields(ok(config, "domain", "dkim-remove", "example.com", "cloudmail"))
    assert "dkim.keys.cloudmail.record" not in shown and "dkim.keys.s2.record" in shown
    assert "main key" in failed(config, "domain", "dkim-remove", "example.com", "s2")
    assert "selector" in failed(config, "domain", "dkim-rotate", "example.com", "--selector",
                                "cloudmail-ed25519")
    shown = fields(ok(config, "domain", "set", "example.com", "--dkim-ed25519", "off"))
    assert [k for k in shown if k.endswith(".status")] == ["dkim.keys.s2.status"]
