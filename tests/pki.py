"""Certificates for the hygiene checks: CAs, chains in and out of order, weak keys, SHA-1 and MD5
signatures. ``cryptography`` refuses to sign with SHA-1 or MD5, so those are re-signed by hand: the
TBSCertificate's algorithm identifier is swapped for one of the same length, then signed for real."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from tests.hostile import seq, tlv

Key = CertificateIssuerPrivateKeyTypes

_SHA256_RSA = bytes.fromhex("300d06092a864886f70d01010b0500")
_BY_HASH = {
    "sha1": (bytes.fromhex("300d06092a864886f70d0101050500"), hashes.SHA1()),
    "md5": (bytes.fromhex("300d06092a864886f70d0101040500"), hashes.MD5()),
}


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, bits)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    common_name: str,
    key: Key,
    issuer: tuple[x509.Certificate, Key] | None = None,
    ca: bool = False,
    days: float = 90,
    dns_names: list[str] | None = None,
) -> x509.Certificate:
    """A certificate for ``key``, issued by ``issuer`` (certificate, key), or self-signed."""
    now = datetime.now(UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (_name(common_name), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    eddsa = isinstance(signer, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return builder.sign(signer, None if eddsa else hashes.SHA256())


def ca(common_name: str, issuer: tuple[x509.Certificate, Key] | None = None) -> tuple[x509.Certificate, Key]:
    key = ec_key()
    return issue(common_name, key, issuer, ca=True, days=3650), key


def resigned(cert: x509.Certificate, signer: rsa.RSAPrivateKey, hash_name: str) -> x509.Certificate:
    """``cert`` (signed by ``signer`` with SHA-256 and RSA) signed again with ``hash_name``."""
    algorithm, digest = _BY_HASH[hash_name]
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(_SHA256_RSA) == 1, "the certificate must be signed with sha256WithRSAEncryption"
    tbs = tbs.replace(_SHA256_RSA, algorithm)
    signature = signer.sign(tbs, padding.PKCS1v15(), digest)
    return x509.load_der_x509_certificate(seq(tbs, algorithm, tlv(0x03, b"\x00" + signature)))


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
