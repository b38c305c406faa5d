"""A real OpenLDAP slapd on loopback for the LDAP directory's integration tests.

`SlapdServer().start()` writes an old-style `slapd.conf` (back-mdb, the core/cosine/inetorgperson/
nis schemas), loads a small directory with `slapadd`, makes a test CA and a server certificate for
127.0.0.1/localhost, and runs `slapd -d 0` on two free loopback ports: plain LDAP (StartTLS
offered) and LDAPS. `stop()` ends it and removes the folder. Start-up takes well under a second.

The directory (base `dc=example,dc=com`):

- `cn=reader` — the service account searches run as (`READER_PASSWORD`).
- users under `ou=people`: alice (two mail values, RDN `uid=alice`), bob (RDN `cn=Bob Builder`, so
  his uid is not in his DN), carol, o'brien, and two entries both with uid `dup`.
- groups under `ou=groups`: groupOfNames `team` (alice's and bob's DNs, and the DN of an entry
  that does not exist), groupOfNames `admins` (alice), posixGroup `devs` (memberUid carol).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloudmail.config import LdapConfig

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")

BASE_DN = "dc=example,dc=com"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret"
READER_DN = f"cn=reader,{BASE_DN}"
READER_PASSWORD = "reader-secret"
PEOPLE = f"ou=people,{BASE_DN}"
GROUPS = f"ou=groups,{BASE_DN}"

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "o'brien": "obrien-pw",
             "dup": "dup-pw"}


def ssha(password: str) -> str:
    """An RFC 2307 `{SSHA}` hash that slapd checks natively."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _user(dn: str, uid: str, cn: str, sn: str, mails: list[str]) -> str:
    lines = [f"dn: {dn}", "objectClass: inetOrgPerson", f"uid: {uid}", f"cn: {cn}", f"sn: {sn}"]
    lines += [f"mail: {m}" for m in mails]
    lines.append(f"userPassword: {ssha(PASSWORDS[uid])}")
    return "\n".join(lines)


def test_ldif() -> str:
    """The test directory as LDIF."""
    entries = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example",
        (f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
         f"cn: reader\nuserPassword: {ssha(READER_PASSWORD)}"),
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: ou=others,{BASE_DN}\nobjectClass: organizationalUnit\nou: others",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
        _user(f"uid=alice,{PEOPLE}", "alice", "Alice Liddell", "Liddell",
              ["alice@example.com", "a.liddell@example.org"]),
        _user(f"cn=Bob Builder,{PEOPLE}", "bob", "Bob Builder", "Builder", ["bob@example.com"]),
        _user(f"uid=carol,{PEOPLE}", "carol", "Carol Danvers", "Danvers", ["carol@example.com"]),
        _user(f"uid=o'brien,{PEOPLE}", "o'brien", "Conan O'Brien", "O'Brien",
              ["obrien@example.com"]),
        _user(f"uid=dup,{PEOPLE}", "dup", "Dup One", "One", ["dup1@example.com"]),
        _user(f"uid=dup,ou=others,{BASE_DN}", "dup", "Dup Two", "Two", ["dup2@example.com"]),
        (f"dn: cn=team,{GROUPS}\nobjectClass: groupOfNames\ncn: team\n"
         f"member: uid=alice,{PEOPLE}\nmember: cn=Bob Builder,{PEOPLE}\n"
         f"member: cn=Nobody Here,{PEOPLE}"),
        (f"dn: cn=admins,{GROUPS}\nobjectClass: groupOfNames\ncn: admins\n"
         f"member: uid=alice,{PEOPLE}"),
        (f"dn: cn=devs,{GROUPS}\nobjectClass: posixGroup\ncn: devs\ngidNumber: 5000\n"
         "memberUid: carol"),
    ]
    return "\n\n".join(entries) + "\n"


test_ldif.__test__ = False  # a helper, not a test


def _cert(cn: str, key: Any, signer: Any, issuer: x509.Certificate | None, *, ca: bool,
          names: tuple[str, ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   signer.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if names:
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(signer, hashes.SHA256())


def write_pki(folder: Path) -> tuple[Path, Path, Path, Path]:
    """A test CA, a server certificate it signed (127.0.0.1, localhost), and an unrelated CA.

    Returns (ca_file, cert_file, key_file, other_ca_file).
    """
    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("cloudmail test LDAP CA", ca_key, ca_key, None, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("localhost", key, ca_key, ca, ca=False, names=("127.0.0.1", "localhost"))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("some other CA", other_key, other_key, None, ca=True)
    files = (folder / "ca.pem", folder / "server.pem", folder / "server.key",
             folder / "other-ca.pem")
    files[0].write_bytes(pem(ca))
    files[1].write_bytes(pem(cert))
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    files[3].write_bytes(pem(other))
    os.chmod(files[2], 0o600)
    return files


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlapdServer:
    """One slapd on loopback, with the test directory loaded; `start()`, then `stop()`."""

    base_dn = BASE_DN
    admin_dn = ADMIN_DN
    admin_password = ADMIN_PASSWORD
    reader_dn = READER_DN
    reader_password = READER_PASSWORD
    passwords = PASSWORDS

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="cloudmail-slapd-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.port = self.ldaps_port = 0
        self.ca_file, self.cert_file, self.key_file, self.other_ca_file = write_pki(self.folder)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def config(self, **overrides: Any) -> LdapConfig:
        """An `LdapConfig` for this server: plain LDAP, searching the whole tree as the reader."""
        base = LdapConfig(urls=(self.url,), bind_dn=READER_DN, bind_password=READER_PASSWORD,
                          user_base=BASE_DN, group_base=GROUPS, ca_file=self.ca_file,
                          connect_timeout=2.0, timeout=5.0, pool_size=2)
        return replace(base, **overrides)

    def _write_config(self) -> Path:
        db = self.folder / "db"
        db.mkdir(exist_ok=True)
        schemas = "\n".join(f"include {SCHEMA_DIR / name}.schema"
                            for name in ("core", "cosine", "inetorgperson", "nis"))
        conf = self.folder / "slapd.conf"
        conf.write_text(f"""{schemas}
pidfile {self.folder / "slapd.pid"}
argsfile {self.folder / "slapd.args"}
modulepath {MODULE_DIR}
moduleload back_mdb
TLSCertificateFile {self.cert_file}
TLSCertificateKeyFile {self.key_file}
TLSCACertificateFile {self.ca_file}

database mdb
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {db}
maxsize 10485760
access to attrs=userPassword
    by anonymous auth
    by * none
access to * by * read
""", encoding="utf-8")
        return conf

    def _load(self, conf: Path) -> None:
        ldif = self.folder / "test.ldif"
        ldif.write_text(test_ldif(), encoding="utf-8")
        done = subprocess.run([SLAPADD, "-q", "-f", str(conf), "-l", str(ldif)],
                              check=False, capture_output=True, text=True,
                              timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"slapadd failed ({done.returncode}):\n{done.stderr}")

    def start(self, attempts: int = 3) -> SlapdServer:
        """Load the directory and run slapd until both ports answer (retrying on a port race)."""
        conf = self._write_config()
        self._load(conf)
        error = ""
        for _ in range(attempts):
            self.port, self.ldaps_port = free_port(), free_port()
            stderr = self.folder / "slapd.stderr"
            with open(stderr, "wb") as err:
                self.process = subprocess.Popen(
                    [SLAPD, "-d", "0", "-h", f"{self.url}/ {self.ldaps_url}/", "-f", str(conf)],
                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            if self._wait_ready(deadline=time.monotonic() + 10):
                return self
            self._kill()
            error = stderr.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"slapd did not start; its stderr:\n{error}")

    def _wait_ready(self, deadline: float) -> bool:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if all(self._answers(port) for port in (self.port, self.ldaps_port)):
                return True
            time.sleep(0.02)
        return False

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def stop(self) -> None:
        """End slapd and remove its folder."""
        self._kill()
        shutil.rmtree(self.folder, ignore_errors=True)
