"""The TLS certificate store without sockets: loading, self-signed, errors, SNI choice, reload.

The handshakes over real sockets are in tests/integration/test_tls_listener.py.
"""

from __future__ import annotations

import datetime
import signal
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from cloudmail import signals
from cloudmail.config import TlsCertificate, TlsConfig
from cloudmail.errors import ConfigError
from cloudmail.tls import CertReloadService, CertStore
from tests.pki import Pki, key_pem, pem, replace

HOSTNAME = "mail.example.test"


@pytest.fixture(scope="module")
def pki():
    return Pki()


@pytest.fixture
def log_lines():
    lines: list[str] = []

    def observer(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def store_for(files: TlsCertificate, tmp_path: Path, sni=(), min_version="1.2") -> CertStore:
    store = CertStore(TlsConfig(cert=files.cert, key=files.key, sni=tuple(sni),
                                min_version=min_version), HOSTNAME, tmp_path / "data")
    store.load()
    return store


def leaf_of(store: CertStore, server_name: str | None = None) -> x509.Certificate:
    return store.certificate_for(server_name).chain[0]


# --- self-signed ---------------------------------------------------------------------------------

def test_self_signed_is_made_for_the_hostname(tmp_path):
    """With no cert configured, load() makes a self-signed cert for the hostname (SAN), valid
    about ten years, in data_dir/tls/, with the key file mode 0600."""
    store = CertStore(TlsConfig(), HOSTNAME, tmp_path)
    store.load()
    cert_file, key_file = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOSTNAME]
    assert cert.issuer == cert.subject
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3600) < lifetime < datetime.timedelta(days=3700)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert store.names() == [HOSTNAME]
    assert leaf_of(store) == cert
    assert not list((tmp_path / "tls").glob(".*.tmp"))


def test_self_signed_is_reused_on_the_next_start(tmp_path):
    """A second store (the next start) serves the same self-signed files, not a new cert."""
    first = CertStore(TlsConfig(), HOSTNAME, tmp_path)
    first.load()
    cert_bytes = (tmp_path / "tls" / "cert.pem").read_bytes()
    key_bytes = (tmp_path / "tls" / "key.pem").read_bytes()
    second = CertStore(TlsConfig(), HOSTNAME, tmp_path)
    second.load()
    assert (tmp_path / "tls" / "cert.pem").read_bytes() == cert_bytes
    assert (tmp_path / "tls" / "key.pem").read_bytes() == key_bytes
    assert leaf_of(second).serial_number == leaf_of(first).serial_number


def test_self_signed_is_remade_when_the_hostname_changes(tmp_path):
    """A self-signed cert that does not name the (new) hostname is replaced by one that does."""
    CertStore(TlsConfig(), "old.example.test", tmp_path).load()
    store = CertStore(TlsConfig(), HOSTNAME, tmp_path)
    store.load()
    assert store.names() == [HOSTNAME]


def test_self_signed_in_an_unwritable_place_is_a_config_error(tmp_path):
    """If the self-signed certificate cannot be written, load() raises a ConfigError naming the
    path, not an OSError traceback."""
    (tmp_path / "file").write_text("not a folder")
    store = CertStore(TlsConfig(), HOSTNAME, tmp_path / "file")
    with pytest.raises(ConfigError) as e:
        store.load()
    assert str(e.value).startswith(f"{tmp_path / 'file' / 'tls'}: [tls] self-signed: cannot write")


# --- loading configured certificates -------------------------------------------------------------

@pytest.mark.parametrize("use_rsa", [False, True], ids=["ec", "rsa"])
def test_fullchain_and_privkey_load_as_they_are(pki, tmp_path, use_rsa):
    """A Let's Encrypt-style fullchain.pem (leaf + intermediate) and privkey.pem, EC or RSA, load
    with the leaf as the served certificate and the intermediate kept in the chain."""
    files = pki.write(tmp_path / "le", HOSTNAME, "imap.example.test", use_rsa=use_rsa)
    store = store_for(files, tmp_path)
    loaded = store.certificate_for(None)
    assert [c.subject for c in loaded.chain] == [loaded.chain[0].subject, pki.inter.subject]
    assert store.names() == [HOSTNAME, "imap.example.test"]
    assert leaf_of(store) == loaded.chain[0]


def test_a_combined_pem_file_can_be_both_cert_and_key(pki, tmp_path):
    """One PEM file holding the chain and the key may be given as both `cert` and `key`."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    combined = tmp_path / "combined.pem"
    combined.write_bytes(files.cert.read_bytes() + files.key.read_bytes())
    store = store_for(TlsCertificate(combined, combined), tmp_path)
    assert store.names() == [HOSTNAME]


def test_missing_certificate_file_names_the_file(pki, tmp_path):
    """A cert path that does not exist is a ConfigError naming that path."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    missing = tmp_path / "nope" / "fullchain.pem"
    with pytest.raises(ConfigError) as e:
        store_for(TlsCertificate(missing, files.key), tmp_path)
    assert str(e.value) == f"{missing}: [tls] cert: no such file"


def test_missing_key_file_names_the_file(pki, tmp_path):
    """A key path that does not exist is a ConfigError naming that path."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    missing = tmp_path / "privkey-missing.pem"
    with pytest.raises(ConfigError) as e:
        store_for(TlsCertificate(files.cert, missing), tmp_path)
    assert str(e.value) == f"{missing}: [tls] key: no such file"


def test_non_pem_certificate_names_the_file(pki, tmp_path):
    """A cert file that is not PEM (here DER) is a ConfigError naming the file."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    der = tmp_path / "cert.der"
    der.write_bytes(pki.inter.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ConfigError) as e:
        store_for(TlsCertificate(der, files.key), tmp_path)
    assert str(e.value).startswith(f"{der}: [tls] cert: not a PEM certificate")


def test_non_pem_key_names_the_file(pki, tmp_path):
    """A key file that holds no PEM private key (here the certificate) names the key file."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    with pytest.raises(ConfigError) as e:
        store_for(TlsCertificate(files.cert, files.cert), tmp_path)
    assert str(e.value).startswith(f"{files.cert}: [tls] key: not a PEM private key")


def test_garbled_pem_certificate_names_the_file(pki, tmp_path):
    """A PEM block with a broken body is a ConfigError naming the file."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    files.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError) as e:
        store_for(files, tmp_path)
    assert str(e.value).startswith(f"{files.cert}: [tls] cert: not a valid PEM certificate")


def test_encrypted_key_is_refused_with_a_reason(pki, tmp_path):
    """A passphrase-protected key cannot be used unattended: the error says so and names it."""
    cert, key = pki.leaf(HOSTNAME)
    (tmp_path / "c.pem").write_bytes(pem(cert))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError) as e:
        store_for(TlsCertificate(tmp_path / "c.pem", tmp_path / "k.pem"), tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'k.pem'}: [tls] key: encrypted with a passphrase")


def test_mismatched_key_names_key_and_certificate(pki, tmp_path):
    """A key that belongs to another certificate is a ConfigError naming both files."""
    files = pki.write(tmp_path / "a", HOSTNAME)
    other = pki.write(tmp_path / "b", HOSTNAME)
    with pytest.raises(ConfigError) as e:
        store_for(TlsCertificate(files.cert, other.key), tmp_path)
    assert str(e.value).startswith(
        f"{other.key}: [tls] key: does not match the certificate {files.cert}")


def test_intermediate_first_is_a_mismatch(pki, tmp_path):
    """A chain with the intermediate before the leaf is caught (the leaf must come first)."""
    cert, key = pki.leaf(HOSTNAME)
    (tmp_path / "c.pem").write_bytes(pem(pki.inter) + pem(cert))
    (tmp_path / "k.pem").write_bytes(key_pem(key))
    with pytest.raises(ConfigError, match="does not match the certificate"):
        store_for(TlsCertificate(tmp_path / "c.pem", tmp_path / "k.pem"), tmp_path)


def test_bad_sni_entry_names_its_table(pki, tmp_path):
    """An error in an SNI certificate names its file and its `[tls.sni.N]` table."""
    files = pki.write(tmp_path / "a", HOSTNAME)
    missing = tmp_path / "x.pem"
    with pytest.raises(ConfigError) as e:
        store_for(files, tmp_path, sni=[TlsCertificate(missing, files.key)])
    assert str(e.value) == f"{missing}: [tls.sni.0] cert: no such file"


# --- SNI choice ----------------------------------------------------------------------------------

@pytest.fixture
def sni_store(pki, tmp_path):
    default = pki.write(tmp_path / "default", HOSTNAME)
    other = pki.write(tmp_path / "other", "mail.other.test")
    wild = pki.write(tmp_path / "wild", "*.wild.test")
    return store_for(default, tmp_path, sni=[other, wild])


@pytest.mark.parametrize("name, expected", [
    ("mail.other.test", "mail.other.test"),
    ("MAIL.Other.Test.", "mail.other.test"),
    ("imap.wild.test", "*.wild.test"),
    ("a.b.wild.test", HOSTNAME),
    ("wild.test", HOSTNAME),
    ("unknown.test", HOSTNAME),
    (HOSTNAME, HOSTNAME),
    (None, HOSTNAME),
])
def test_sni_picks_the_certificate_that_names_the_host(sni_store, name, expected):
    """context_for() picks the exact name, then a one-label wildcard, else the default cert."""
    leaf = leaf_of(sni_store, name)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == expected


def test_names_lists_every_covered_host(sni_store):
    """names() lists the default certificate's names first, then the SNI ones."""
    assert sni_store.names() == [HOSTNAME, "mail.other.test", "*.wild.test"]


# --- connection creator and reload ---------------------------------------------------------------

def test_server_creator_uses_the_current_contexts(pki, tmp_path):
    """server_creator() provides IOpenSSLServerConnectionCreator, and connections it makes after
    a reload use the new certificate while one made before keeps the old."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = store_for(files, tmp_path)
    creator = store.server_creator()
    assert IOpenSSLServerConnectionCreator.providedBy(creator)
    before = creator.serverConnectionForTLS(None)
    pki.write(tmp_path / "le", HOSTNAME)
    assert store.reload() is True
    after = creator.serverConnectionForTLS(None)
    assert isinstance(after, SSL.Connection)
    assert after.get_context() is store.context_for(None)
    assert before.get_context() is not after.get_context()


def test_reload_without_changes_reports_nothing_changed(pki, tmp_path):
    """reload() with the same files returns False and keeps the same contexts."""
    store = store_for(pki.write(tmp_path / "le", HOSTNAME), tmp_path)
    context = store.context_for(None)
    assert store.reload() is False
    assert store.context_for(None) is context


def test_reload_with_a_broken_key_keeps_the_old_certificate(pki, tmp_path, log_lines):
    """reload() with a key that no longer matches logs an error naming the file, does not raise,
    returns False and keeps serving the old certificate."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = store_for(files, tmp_path)
    old = leaf_of(store)
    _, stranger = pki.leaf(HOSTNAME)
    files.key.write_bytes(key_pem(stranger))
    assert store.reload() is False
    assert leaf_of(store) == old
    assert any(f"{files.key}: [tls] key: does not match" in line for line in log_lines)


def test_reload_before_load_raises_nothing_and_loads(pki, tmp_path):
    """reload() on a store never loaded simply loads it (returns True)."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = CertStore(TlsConfig(cert=files.cert, key=files.key), HOSTNAME, tmp_path)
    assert store.reload() is True
    assert store.names() == [HOSTNAME]


# --- CertReloadService ---------------------------------------------------------------------------

def test_reload_service_polls_file_changes(pki, tmp_path):
    """The service reloads when the files' stamps change, at its interval, and not otherwise."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = store_for(files, tmp_path)
    clock = Clock()
    service = CertReloadService(store, 5, clock=clock)
    service.startService()
    try:
        old = leaf_of(store)
        clock.advance(5)
        assert leaf_of(store) == old
        pki.write(tmp_path / "le", HOSTNAME)
        clock.advance(4)
        assert leaf_of(store) == old
        clock.advance(1)
        assert leaf_of(store) != old
    finally:
        service.stopService()
    assert not clock.getDelayedCalls()


def test_reload_service_keeps_polling_after_a_bad_reload(pki, tmp_path):
    """A poll that finds half-replaced files (new key, old cert) keeps the old certificate and
    the next poll, once the cert is replaced too, loads the new pair."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = store_for(files, tmp_path)
    old_cert = files.cert.read_bytes()
    clock = Clock()
    service = CertReloadService(store, 1, clock=clock)
    service.startService()
    try:
        old = leaf_of(store)
        pki.write(tmp_path / "le", HOSTNAME)
        new_cert = files.cert.read_bytes()
        replace(files.cert, old_cert)
        clock.advance(1)
        assert leaf_of(store) == old
        replace(files.cert, new_cert)
        clock.advance(1)
        assert leaf_of(store) != old
    finally:
        service.stopService()


def test_reload_service_interval_zero_does_not_poll(pki, tmp_path):
    """interval 0 switches polling off (SIGHUP still works)."""
    store = store_for(pki.write(tmp_path / "le", HOSTNAME), tmp_path)
    clock = Clock()
    service = CertReloadService(store, 0, clock=clock)
    service.startService()
    try:
        assert not clock.getDelayedCalls()
        assert service.reload() is False
    finally:
        service.stopService()


def test_reload_service_registers_for_sighup_while_running(pki, tmp_path):
    """While running, the service's reload is called by the SIGHUP hook; stopping unregisters it
    and puts the previous SIGHUP handler back."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = store_for(files, tmp_path)
    previous = signal.getsignal(signal.SIGHUP)
    service = CertReloadService(store, 0)
    service.startService()
    try:
        assert signal.getsignal(signal.SIGHUP) is not previous
        old = leaf_of(store)
        pki.write(tmp_path / "le", HOSTNAME)
        signals.run_callbacks()
        assert leaf_of(store) != old
    finally:
        service.stopService()
    assert signal.getsignal(signal.SIGHUP) == previous


# --- the SIGHUP hook -----------------------------------------------------------------------------

def test_sighup_callbacks_each_run_and_failures_are_logged(log_lines):
    """run_callbacks() calls every registered callback; one that raises is logged and does not
    stop the others."""
    calls = []

    def broken():
        raise RuntimeError("boom")

    unregister = [signals.on_sighup(lambda: calls.append(1)), signals.on_sighup(broken),
                  signals.on_sighup(lambda: calls.append(2))]
    try:
        signals.run_callbacks()
    finally:
        for u in unregister:
            u()
    assert calls == [1, 2]
    assert any("SIGHUP callback" in line and "failed" in line for line in log_lines)
    signals.run_callbacks()
    assert calls == [1, 2]


def test_sighup_handler_hands_the_call_to_the_reactor(monkeypatch):
    """The installed signal handler does not run callbacks itself: it passes run_callbacks to
    reactor.callFromThread (so reloads happen in the reactor thread)."""
    from twisted.internet import reactor

    handed = []
    monkeypatch.setattr(reactor, "callFromThread", lambda f, *a: handed.append(f))
    unregister = signals.on_sighup(lambda: None)
    try:
        signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
    finally:
        unregister()
    assert handed == [signals.run_callbacks]
