"""The TLS certificate store shared by every TLS listener (465/993 and STARTTLS on 25/587/143/4190).

`CertStore` reads the default PEM chain and key (a Let's Encrypt `fullchain.pem` + `privkey.pem`
as they are: leaf first, then intermediates; RSA or EC) and the extra `[tls] sni` certificates
into pyOpenSSL contexts. With no certificate configured it makes a self-signed one for the
hostname once, in `data_dir/tls/`, so a fresh install speaks STARTTLS at once.

Listeners never hold a context: they hold `server_creator()`, which builds each new connection
from the store's *current* contexts. `reload()` swaps in freshly read contexts (bad new files are
logged and the old certificate kept), so a renewal takes effect for new connections while open
ones carry on. `CertReloadService` calls `reload()` when the files change, or on SIGHUP.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from cloudmail.config import TlsCertificate, TlsConfig
from cloudmail.errors import ConfigError
from cloudmail.signals import on_sighup

log = Logger()

#: Mozilla "intermediate" TLS 1.2 suites (TLS 1.3 suites are OpenSSL's defaults, all good). The
#: DHE ones are only used if DH parameters are set, which we leave to OpenSSL (it sets none).
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
SELF_SIGNED_DAYS = 3650
#: A self-signed certificate this close to its end (or not naming the hostname) is made anew.
SELF_SIGNED_RENEW = datetime.timedelta(days=30)


@dataclass(frozen=True)
class LoadedCertificate:
    """One chain and key as read from disk: the leaf first, then the intermediates."""

    files: TlsCertificate
    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes
    names: tuple[str, ...]
    digest: bytes


@dataclass(frozen=True)
class _Contexts:
    """One consistent generation of contexts; replaced whole on reload, never mutated.

    `contexts[i]` serves `certificates[i]`; index 0 is the default. `exact` and `wildcard` map a
    host name (a wildcard without its `*.`) to that index.
    """

    contexts: tuple[SSL.Context, ...]
    certificates: tuple[LoadedCertificate, ...]
    exact: dict[str, int]
    wildcard: dict[str, int]
    digest: bytes

    def pick(self, server_name: str | None) -> int:
        if not server_name:
            return 0
        name = server_name.lower().rstrip(".")
        if name in self.exact:
            return self.exact[name]
        _, dot, parent = name.partition(".")
        return self.wildcard.get(parent, 0) if dot else 0


class CertStore:
    """The server's certificates, as pyOpenSSL contexts chosen per connection by SNI."""

    def __init__(self, config: TlsConfig, hostname: str, data_dir: Path) -> None:
        self.config = config
        self.hostname = hostname.lower().rstrip(".")
        self.data_dir = Path(data_dir)
        self._current: _Contexts | None = None

    def load(self) -> None:
        """Read every certificate now; raises ConfigError naming the file that is wrong."""
        self._current = self._read()
        log.info("TLS certificates loaded for {names}", names=", ".join(self.names()))

    def reload(self) -> bool:
        """Re-read the files; True if the certificates changed. Never raises: bad files are
        logged and the old certificates kept."""
        try:
            new = self._read()
        except ConfigError as e:
            log.error("TLS certificates not reloaded, still serving the old ones: {error}",
                      error=str(e))
            return False
        except Exception:  # a LoopingCall stops on an exception: never let one out
            log.failure("TLS certificates not reloaded, still serving the old ones")
            return False
        if self._current is not None and new.digest == self._current.digest:
            return False
        self._current = new
        log.info("TLS certificates reloaded for {names}", names=", ".join(self.names()))
        return True

    def names(self) -> list[str]:
        """The host names (wildcards included) the certificates cover, default certificate first."""
        seen: dict[str, None] = {}
        for loaded in self._contexts().certificates:
            seen.update(dict.fromkeys(loaded.names))
        return list(seen)

    def watched_files(self) -> list[Path]:
        """Every file a reload reads."""
        pairs = [self._default_files(), *self.config.sni]
        return [p for pair in pairs for p in (pair.cert, pair.key)]

    def file_stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        """A cheap fingerprint of the files (mtime, size, inode; None if missing) for polling."""
        return tuple(_stamp(path) for path in self.watched_files())

    def context_for(self, server_name: str | None) -> SSL.Context:
        """The context whose certificate names `server_name` (exact, then a one-label `*.`
        wildcard), or the default one."""
        current = self._contexts()
        return current.contexts[current.pick(server_name)]

    def certificate_for(self, server_name: str | None) -> LoadedCertificate:
        """The certificate a client asking for `server_name` gets (as `context_for`)."""
        current = self._contexts()
        return current.certificates[current.pick(server_name)]

    def server_creator(self) -> IOpenSSLServerConnectionCreator:
        """A connection creator for `TLSMemoryBIOFactory` and `transport.startTLS` that always
        uses the current certificates."""
        return _ServerConnectionCreator(self)

    def _contexts(self) -> _Contexts:
        if self._current is None:
            raise RuntimeError("CertStore.load() has not been called")
        return self._current

    def _default_files(self) -> TlsCertificate:
        """The configured cert and key, or where the self-signed ones live (data_dir/tls/)."""
        if self.config.cert is not None and self.config.key is not None:
            return TlsCertificate(cert=self.config.cert, key=self.config.key)
        return TlsCertificate(self.data_dir / "tls" / "cert.pem", self.data_dir / "tls" / "key.pem")

    def _read(self) -> _Contexts:
        if self.config.cert is not None and self.config.key is not None:
            default = read_certificate(self._default_files(), "[tls]")
        else:
            default = self._self_signed(self._default_files())
        loaded = [default] + [read_certificate(sni, f"[tls.sni.{i}]")
                              for i, sni in enumerate(self.config.sni)]
        contexts = tuple(self._context(certificate) for certificate in loaded)
        contexts[0].set_tlsext_servername_callback(self._on_server_name)
        exact: dict[str, int] = {}
        wildcard: dict[str, int] = {}
        for index, certificate in enumerate(loaded):
            for name in certificate.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], index)
                else:
                    exact.setdefault(name, index)
        digest = hashlib.sha256(b"".join(c.digest for c in loaded)).digest()
        return _Contexts(contexts, tuple(loaded), exact, wildcard, digest)

    def _context(self, certificate: LoadedCertificate) -> SSL.Context:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(MIN_VERSIONS.get(self.config.min_version, SSL.TLS1_2_VERSION))
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                            | getattr(SSL, "OP_NO_RENEGOTIATION", 0))
        context.set_cipher_list(CIPHERS.encode("ascii"))
        # An idle connection (IMAP IDLE, thousands of them) then holds no 2 x 17 KB of record
        # buffers: OpenSSL frees them between records.
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        context.set_session_id(b"cloudmail")
        try:
            context.use_certificate(certificate.chain[0])
            for intermediate in certificate.chain[1:]:
                context.add_extra_chain_cert(intermediate)
            context.use_privatekey(certificate.key)  # type: ignore[arg-type]
            context.check_privatekey()
        except SSL.Error as e:
            raise ConfigError(f"{certificate.files.cert}: OpenSSL refused the certificate: {e}")
        return context

    def _on_server_name(self, connection: SSL.Connection) -> None:
        """rfc 6066:3: switch to the certificate that names the requested host, if another does."""
        raw = connection.get_servername()
        name = raw.decode("ascii", "replace") if raw else None
        context = self.context_for(name)
        if context is not connection.get_context():
            connection.set_context(context)

    def _self_signed(self, files: TlsCertificate) -> LoadedCertificate:
        if files.cert.exists() and files.key.exists():
            try:
                loaded = read_certificate(files, "[tls] self-signed")
            except ConfigError as e:
                log.warn("making a new self-signed certificate: {error}", error=str(e))
            else:
                fresh = loaded.chain[0].not_valid_after_utc - _now() > SELF_SIGNED_RENEW
                if fresh and self.hostname in loaded.names:
                    return loaded
        try:
            make_self_signed(self.hostname, files)
        except OSError as e:
            raise ConfigError(f"{e.filename or files.cert}: [tls] self-signed: cannot write: "
                              f"{e.strerror}")
        log.info("made a self-signed certificate for {hostname} in {cert}",
                 hostname=self.hostname, cert=str(files.cert))
        return read_certificate(files, "[tls] self-signed")


@implementer(IOpenSSLServerConnectionCreator)
class _ServerConnectionCreator:
    """Builds each server-side TLS connection from the store's contexts of the moment."""

    def __init__(self, store: CertStore) -> None:
        self.store = store

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.store.context_for(None), None)


def read_certificate(files: TlsCertificate, table: str) -> LoadedCertificate:
    """Read a PEM chain (leaf first) and its key, checking they belong together.

    Every error is a ConfigError whose line starts with the file at fault and the config table.
    """
    cert_data = _read_file(files.cert, f"{table} cert")
    key_data = _read_file(files.key, f"{table} key")
    if b"-----BEGIN CERTIFICATE-----" not in cert_data:
        raise ConfigError(f"{files.cert}: {table} cert: not a PEM certificate "
                          "(no BEGIN CERTIFICATE block)")
    try:
        chain = tuple(x509.load_pem_x509_certificates(cert_data))
    except ValueError as e:
        raise ConfigError(f"{files.cert}: {table} cert: not a valid PEM certificate: {e}")
    if b"PRIVATE KEY-----" not in key_data:
        raise ConfigError(f"{files.key}: {table} key: not a PEM private key "
                          "(no BEGIN PRIVATE KEY block)")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ConfigError(f"{files.key}: {table} key: encrypted with a passphrase; "
                          "give the key unencrypted (mode 0600)")
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{files.key}: {table} key: not a valid PEM private key: {e}")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, public)
            != chain[0].public_key().public_bytes(serialization.Encoding.DER, public)):
        raise ConfigError(f"{files.key}: {table} key: does not match the certificate {files.cert}"
                          " (the first certificate in the file must be the server's own)")
    leaf = chain[0]
    if leaf.not_valid_after_utc < _now():
        log.warn("{cert}: {table} cert: expired on {date}", cert=str(files.cert), table=table,
                 date=leaf.not_valid_after_utc.isoformat())
    digest = hashlib.sha256(cert_data + b"\0" + key_data).digest()
    return LoadedCertificate(files, chain, key, certificate_names(leaf), digest)


def certificate_names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate is for: its SAN DNS names, or its CN if it has no SAN."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(n.lower().rstrip(".") for n in names))


def make_self_signed(hostname: str, files: TlsCertificate) -> None:
    """Write a new self-signed RSA 2048 certificate for `hostname` (SAN), valid ~10 years.

    RSA rather than EC because some old MTAs still offer only RSA suites. The key is written first,
    mode 0600; each file is replaced atomically (temporary file, fsync, rename).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    files.cert.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomically(files.key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600)
    _write_atomically(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what}: no such file")
    except OSError as e:
        raise ConfigError(f"{path}: {what}: cannot read: {e.strerror}")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class CertReloadService(Service):
    """Reloads the store when its files change (polled every `interval` s; 0 = off) or on SIGHUP."""

    def __init__(self, store: CertStore, interval: float, clock: object = None) -> None:
        self.store = store
        self.interval = interval
        self.clock = clock
        self._stamps = store.file_stamps()
        self._loop: LoopingCall | None = None
        self._unregister: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()
        self._unregister = on_sighup(self.reload)
        if self.interval > 0:
            self._loop = LoopingCall(self.check)
            if self.clock is not None:
                self._loop.clock = self.clock  # type: ignore[assignment]
            self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._unregister is not None:
            self._unregister()
        self._loop = self._unregister = None
        super().stopService()

    def check(self) -> bool:
        """Reload if any file's mtime, size or inode moved since the last look."""
        stamps = self.store.file_stamps()
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        return self.store.reload()

    def reload(self) -> bool:
        """Reload now (the SIGHUP path), whatever the files' stamps say."""
        self._stamps = self.store.file_stamps()
        return self.store.reload()
