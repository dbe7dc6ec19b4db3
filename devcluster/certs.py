"""Making test and demo certificates quickly (EC keys: a fresh RSA key costs ~34 ms)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())
_ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certcheck test CA")])


def make_cert(
    common_name: str,
    not_after: datetime,
    not_before: datetime | None = None,
    dns_names: tuple[str, ...] = (),
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for a leaf signed by a shared test CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(_ISSUER)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or min(datetime.now(UTC), not_after) - timedelta(days=1))
        .not_valid_after(not_after)
    )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
    cert = builder.sign(_ISSUER_KEY, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def tls_secret_data(cert_pem: bytes, key_pem: bytes) -> dict[str, bytes | str]:
    return {
        "tls.crt": base64.b64encode(cert_pem).decode(),
        "tls.key": base64.b64encode(key_pem).decode(),
    }


def expiring_in(days: float, common_name: str = "example.test") -> tuple[bytes, bytes]:
    return make_cert(common_name, datetime.now(UTC) + timedelta(days=days))
