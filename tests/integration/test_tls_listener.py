"""The certificate store behind real TLS listeners on loopback, checked with Python's `ssl` client.

Each test serves `TLSMemoryBIOFactory(store.server_creator(), False, echo)` (implicit TLS, as on
465/993) or a line protocol that calls `transport.startTLS(creator)` (STARTTLS), and connects from
a thread with the standard library, so the server runs on the test's reactor undisturbed.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory

from cloudmail.config import TlsCertificate, TlsConfig
from cloudmail.tls import CertReloadService, CertStore
from tests.pki import Pki

HOSTNAME = "mail.example.test"


@pytest.fixture(scope="module")
def pki():
    return Pki()


# --- servers -------------------------------------------------------------------------------------

class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class StartTlsLines(LineReceiver):
    """`STARTTLS` → `GO`, then TLS; any other line comes back as `ECHO <line>`."""

    def lineReceived(self, line):
        if line == b"STARTTLS":
            self.sendLine(b"GO")
            self.transport.startTLS(self.factory.creator)
        else:
            self.sendLine(b"ECHO " + line)


@pytest.fixture
def serve():
    """serve(store) → port of an implicit-TLS echo listener; serve(store, starttls=True) → port of
    a plaintext line listener offering STARTTLS. All are closed after the test."""
    ports = []

    def start(store: CertStore, starttls: bool = False) -> int:
        if starttls:
            factory = Factory.forProtocol(StartTlsLines)
            factory.creator = store.server_creator()
        else:
            factory = TLSMemoryBIOFactory(store.server_creator(), False,
                                          Factory.forProtocol(Echo))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        ports.append(port)
        return port.getHost().port

    yield start
    for port in ports:
        port.stopListening()


def store_for(files: TlsCertificate | None, tmp_path: Path, sni=(), min_version="1.2"):
    config = (TlsConfig(cert=files.cert, key=files.key, sni=tuple(sni), min_version=min_version)
              if files else TlsConfig(min_version=min_version))
    store = CertStore(config, HOSTNAME, tmp_path / "data")
    store.load()
    return store


# --- the client (runs in a thread) ---------------------------------------------------------------

@dataclass
class Handshake:
    version: str
    cert: x509.Certificate
    echo: bytes


def client_context(cadata=None, minimum=None, maximum=None, ciphers=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cadata:
        context.load_verify_locations(cadata=cadata)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if ciphers:
        context.set_ciphers(ciphers)
    if minimum:
        context.minimum_version = minimum
    if maximum:
        context.maximum_version = maximum
    return context


def _read_exactly(sock, size) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _result(tls: ssl.SSLSocket, payload: bytes) -> Handshake:
    tls.sendall(payload)
    echo = _read_exactly(tls, len(payload))
    cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    return Handshake(tls.version(), cert, echo)


def tls_connect(port, server_name=None, payload=b"ping\r\n", **context_options) -> Handshake:
    """Connect, handshake, echo `payload` once, close (blocking; for deferToThread)."""
    context = client_context(**context_options)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return _result(tls, payload)


def connect(port, server_name=None, **context_options):
    return deferToThread(tls_connect, port, server_name, **context_options)


async def wait_until(condition, timeout=5.0):
    """Poll `condition()` on the reactor until it is true, failing after `timeout` seconds."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not met in time")


# --- tests ---------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_self_signed_certificate_is_served_and_reused(serve, tmp_path):
    """With no cert configured, the listener serves a self-signed cert for the hostname, which a
    client trusting exactly that file verifies; a second start serves the same files (key 0600)."""
    first = store_for(None, tmp_path)
    cert_file = tmp_path / "data" / "tls" / "cert.pem"
    key_file = tmp_path / "data" / "tls" / "key.pem"
    cert_bytes, key_bytes = cert_file.read_bytes(), key_file.read_bytes()
    result = await connect(serve(first), HOSTNAME, cadata=cert_bytes.decode("ascii"))
    assert result.echo == b"ping\r\n"
    assert result.cert == x509.load_pem_x509_certificate(cert_bytes)
    second = store_for(None, tmp_path)
    again = await connect(serve(second), HOSTNAME, cadata=cert_bytes.decode("ascii"))
    assert again.cert.serial_number == result.cert.serial_number
    assert (cert_file.read_bytes(), key_file.read_bytes()) == (cert_bytes, key_bytes)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("use_rsa", [False, True], ids=["ec", "rsa"])
@pytest_twisted.ensureDeferred
async def test_fullchain_is_served_with_its_intermediate(pki, serve, tmp_path, use_rsa):
    """A fullchain.pem is sent whole: a client that trusts only the root CA verifies the leaf
    (and checks the host name), for an EC and an RSA key."""
    store = store_for(pki.write(tmp_path / "le", HOSTNAME, use_rsa=use_rsa), tmp_path)
    result = await connect(serve(store), HOSTNAME, cadata=pki.root_pem)
    assert result.echo == b"ping\r\n"
    assert result.cert == store.certificate_for(None).chain[0]


@pytest.mark.parametrize("version, name", [
    (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
    (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
])
@pytest_twisted.ensureDeferred
async def test_tls_1_2_and_1_3_clients_are_served(pki, serve, tmp_path, version, name):
    """A client pinned to TLS 1.2, or to TLS 1.3, completes the handshake on that version."""
    port = serve(store_for(pki.write(tmp_path / "le", HOSTNAME), tmp_path))
    result = await connect(port, HOSTNAME, cadata=pki.root_pem, minimum=version, maximum=version)
    assert result.version == name
    assert result.echo == b"ping\r\n"


REFUSED_VERSION = "PROTOCOL_VERSION|protocol version|NO_PROTOCOLS_AVAILABLE|unsupported protocol"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_tls_1_1_client_is_refused(pki, serve, tmp_path):
    """A client that can speak at most TLS 1.1 (weak ciphers allowed on its side) gets no
    handshake: the server's floor is TLS 1.2. (The client OpenSSL here can offer TLS 1.1, and
    the server answers with a protocol_version alert.)"""
    port = serve(store_for(pki.write(tmp_path / "le", HOSTNAME), tmp_path))
    with pytest.raises(ssl.SSLError, match=REFUSED_VERSION):
        await connect(port, HOSTNAME, ciphers="ALL:@SECLEVEL=0",
                      minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1)
    assert (await connect(port, HOSTNAME)).echo == b"ping\r\n"


@pytest_twisted.ensureDeferred
async def test_min_version_1_3_refuses_a_tls_1_2_client(pki, serve, tmp_path):
    """With min_version "1.3", a TLS 1.2-only client is refused and a TLS 1.3 client served."""
    store = store_for(pki.write(tmp_path / "le", HOSTNAME), tmp_path, min_version="1.3")
    port = serve(store)
    with pytest.raises(ssl.SSLError, match=REFUSED_VERSION):
        await connect(port, HOSTNAME, maximum=ssl.TLSVersion.TLSv1_2)
    assert (await connect(port, HOSTNAME)).version == "TLSv1.3"


@pytest.mark.parametrize("server_name, expected", [
    ("mail.other.test", "mail.other.test"),
    ("imap.wild.test", "*.wild.test"),
    ("unknown.test", HOSTNAME),
    (None, HOSTNAME),
])
@pytest_twisted.ensureDeferred
async def test_sni_serves_the_certificate_for_the_name(pki, serve, tmp_path, server_name, expected):
    """The SNI name picks the certificate naming it (wildcards one label deep); an unknown name
    or no SNI at all gets the default certificate."""
    store = store_for(pki.write(tmp_path / "default", HOSTNAME), tmp_path, sni=[
        pki.write(tmp_path / "other", "mail.other.test"),
        pki.write(tmp_path / "wild", "*.wild.test"),
    ])
    result = await connect(serve(store), server_name)
    assert result.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == expected


@pytest_twisted.ensureDeferred
async def test_sni_certificate_verifies_for_its_name(pki, serve, tmp_path):
    """A verifying client asking for an SNI name gets a chain that verifies for that name."""
    store = store_for(pki.write(tmp_path / "default", HOSTNAME), tmp_path,
                      sni=[pki.write(tmp_path / "wild", "*.wild.test")])
    result = await connect(serve(store), "smtp.wild.test", cadata=pki.root_pem)
    assert result.echo == b"ping\r\n"


@pytest_twisted.ensureDeferred
async def test_reload_serves_new_certificate_to_new_connections_only(pki, serve, tmp_path):
    """After the files are replaced and reload() runs, new connections get the new certificate,
    while a connection opened before keeps working with the old one."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = store_for(files, tmp_path)
    port = serve(store)
    raw = await deferToThread(socket.create_connection, ("127.0.0.1", port), 5)
    tls = await deferToThread(client_context(cadata=pki.root_pem).wrap_socket, raw,
                              server_hostname=HOSTNAME)
    try:
        before = await deferToThread(_result, tls, b"one\r\n")
        pki.write(tmp_path / "le", HOSTNAME)
        assert store.reload() is True
        after = await connect(port, HOSTNAME, cadata=pki.root_pem)
        assert after.cert.serial_number != before.cert.serial_number
        still = await deferToThread(_result, tls, b"two\r\n")
        assert still.echo == b"two\r\n"
        assert still.cert.serial_number == before.cert.serial_number
    finally:
        tls.close()


@pytest_twisted.ensureDeferred
async def test_reload_with_broken_key_keeps_serving_the_old_certificate(pki, serve, tmp_path):
    """A reload that finds a key not matching the new certificate does not raise, returns False,
    and the listener goes on serving the old certificate."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = store_for(files, tmp_path)
    port = serve(store)
    before = await connect(port, HOSTNAME, cadata=pki.root_pem)
    key = files.key.read_bytes()
    pki.write(tmp_path / "le", HOSTNAME)
    files.key.write_bytes(key)
    assert store.reload() is False
    after = await connect(port, HOSTNAME, cadata=pki.root_pem)
    assert after.cert.serial_number == before.cert.serial_number


@pytest_twisted.ensureDeferred
async def test_reload_service_picks_up_replaced_files_by_polling(pki, serve, tmp_path):
    """A running CertReloadService with a short interval notices replaced files by itself and
    the listener then serves the new certificate."""
    files = pki.write(tmp_path / "le", HOSTNAME)
    store = store_for(files, tmp_path)
    port = serve(store)
    old = store.certificate_for(None).chain[0]
    service = CertReloadService(store, 0.05)
    service.startService()
    try:
        pki.write(tmp_path / "le", HOSTNAME)
        await wait_until(lambda: store.certificate_for(None).chain[0] != old)
    finally:
        service.stopService()
    result = await connect(port, HOSTNAME, cadata=pki.root_pem)
    assert result.cert != old


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_the_certificates(pki, serve, tmp_path):
    """A real SIGHUP sent to this process makes a running CertReloadService (polling off) reload,
    through the reactor thread, and new connections get the new certificate."""
    store = store_for(pki.write(tmp_path / "le", HOSTNAME), tmp_path)
    port = serve(store)
    old = store.certificate_for(None).chain[0]
    service = CertReloadService(store, 0)
    service.startService()
    try:
        pki.write(tmp_path / "le", HOSTNAME)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: store.certificate_for(None).chain[0] != old)
    finally:
        service.stopService()
    result = await connect(port, HOSTNAME, cadata=pki.root_pem)
    assert result.cert.serial_number != old.serial_number


def starttls_exchange(port, cadata) -> tuple[bytes, Handshake]:
    """Plaintext `STARTTLS`, wait for `GO`, upgrade with ssl, echo a line inside TLS."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"STARTTLS\r\n")
        go = _read_exactly(raw, len(b"GO\r\n"))
        context = client_context(cadata=cadata)
        with context.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
            tls.sendall(b"hello\r\n")
            echo = _read_exactly(tls, len(b"ECHO hello\r\n"))
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            return go, Handshake(tls.version(), cert, echo)


@pytest_twisted.ensureDeferred
async def test_starttls_upgrades_with_the_store_certificate(pki, serve, tmp_path):
    """`transport.startTLS(store.server_creator())` upgrades a plaintext line connection; the
    client verifies the chain and the protocol goes on talking inside TLS."""
    store = store_for(pki.write(tmp_path / "le", HOSTNAME), tmp_path)
    port = serve(store, starttls=True)
    go, result = await deferToThread(starttls_exchange, port, pki.root_pem)
    assert go == b"GO\r\n"
    assert result.echo == b"ECHO hello\r\n"
    assert result.cert == store.certificate_for(None).chain[0]
