"""A test PKI like Let's Encrypt's: a root CA, an intermediate, and leaf certificates."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudmail.config import TlsCertificate

def build_cert(cn, public_key, signing_key, issuer=None, *, ca=False, names=(), days=30):
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
        critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    """A root CA and an intermediate; `write()` makes a Let's Encrypt-like fullchain + privkey."""

    def __init__(self):
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = build_cert("Test Root CA", self.root_key.public_key(), self.root_key, ca=True,
                           days=3650)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = build_cert("Test Intermediate R1", self.inter_key.public_key(), self.root_key,
                            self.root, ca=True, days=1000)
        self.root_pem = pem(self.root).decode("ascii")

    def leaf(self, *names, use_rsa=False):
        key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if use_rsa
               else ec.generate_private_key(ec.SECP256R1()))
        return build_cert(names[0], key.public_key(), self.inter_key, self.inter, names=names), key

    def write(self, folder: Path, *names, use_rsa=False) -> TlsCertificate:
        cert, key = self.leaf(*names, use_rsa=use_rsa)
        folder.mkdir(parents=True, exist_ok=True)
        files = TlsCertificate(cert=folder / "fullchain.pem", key=folder / "privkey.pem")
        replace(files.cert, pem(cert) + pem(self.inter))
        replace(files.key, key_pem(key))
        return files


def replace(path: Path, data: bytes) -> None:
    """Swap a file's content in by rename, as certbot's symlink swap does: a new inode, so the
    change is seen even when two writes fall in one tick of the file system's clock."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)
