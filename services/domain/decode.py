"""Finding the certificates in one Secret value, whatever the layout. Pure: no I/O.

Reads PEM (bundles and chains, anything else in the value ignored), DER, base64 applied twice (as
some tools store it), PKCS#12 keystores (the password from another Secret, a sibling key, else
empty) and Java keystores (JKS, JCEKS: services/domain/jks.py; their certificates need no password,
one that is known is checked). Returns certificates only, as PEM text; private keys are never returned.
Work per value is bounded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

from services.domain.jks import KeystoreError, is_java_keystore, read_java_keystore
from services.domain.kubeconfig import KubeconfigError, embedded_certificates, looks_like_kubeconfig

MAX_VALUE_BYTES = 1 << 20  # a value larger than this is reported, not read
MAX_CERTS_PER_VALUE = 1000

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n([A-Za-z0-9+/=\r\n\t ]+?)-----END CERTIFICATE-----")
_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/=\r\n]+$")
KEYSTORE_SUFFIXES = (".p12", ".pfx")
JAVA_KEYSTORE_SUFFIXES = (".jks", ".jceks")
# Sibling keys that may hold a keystore's password, tried in this order (then the empty password).
PASSWORD_KEYS = (
    "{key}.password",
    "{stem}.password",
    "password",
    "keystore-password",
    "keystorePassword",
    "keystore.password",
    "pkcs12-password",
    "truststore-password",
)


@dataclass(frozen=True)
class Found:
    pem: tuple[str, ...] = ()
    error: str | None = None
    origins: tuple[str, ...] = ()  # where in the value each certificate is (a kubeconfig's), or ()


def _pem(body_base64: bytes) -> str:
    body = b"".join(body_base64.split())
    lines = [body[i : i + 64].decode("ascii") for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def pem_blocks(value: bytes) -> list[str]:
    return [_pem(match.group(1)) for match in _PEM_CERT.finditer(value)][: MAX_CERTS_PER_VALUE + 1]


def _der_to_pem(value: bytes) -> str | None:
    if not value or value[0] != 0x30:  # a DER certificate is an ASN.1 SEQUENCE
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the evaluator reports what is odd about it
            cert = x509.load_der_x509_certificate(value)
            return cert.public_bytes(Encoding.PEM).decode("ascii")
    except Exception:  # cryptography raises InvalidVersion and others besides ValueError
        return None


def is_keystore_key(key: str) -> bool:
    lowered = key.lower()
    return lowered.endswith(KEYSTORE_SUFFIXES + JAVA_KEYSTORE_SUFFIXES) or (
        lowered.startswith(("keystore", "truststore")) and not _is_password_key(lowered)
    )


def _is_password_key(key: str) -> bool:
    return "password" in key.lower()


def keystore_passwords(key: str, data: Mapping[str, bytes]) -> list[bytes]:
    stem = key.rsplit(".", 1)[0]
    candidates = [name.format(key=key, stem=stem) for name in PASSWORD_KEYS]
    passwords = [data[name].strip() for name in dict.fromkeys(candidates) if name in data]
    return [*passwords, b""]


# Keystore results by a digest of (keystore, passwords): opening one with an RSA key costs ~30 ms (key
# validation, unavoidable). Keyed by digest, so the cache holds neither the values nor the passwords.
_KEYSTORES: OrderedDict[str, Found] = OrderedDict()
_KEYSTORES_CACHED = 4096


def _open_keystore_cached(value: bytes, passwords: tuple[bytes, ...]) -> Found:
    digest = hashlib.sha256(b"\0".join((value, *passwords))).hexdigest()
    found = _KEYSTORES.get(digest)
    if found is None:
        found = _open_keystore(value, passwords)
        _KEYSTORES[digest] = found
        if len(_KEYSTORES) > _KEYSTORES_CACHED:
            _KEYSTORES.popitem(last=False)
    return found


def _open_keystore(value: bytes, passwords: tuple[bytes, ...]) -> Found:
    wrong_password = False
    for password in passwords:
        try:
            _key, cert, extra = pkcs12.load_key_and_certificates(value, password or None)
        except ValueError as exc:
            wrong_password = wrong_password or "password" in str(exc).lower() or "mac" in str(exc).lower()
            continue
        except Exception as exc:  # unsupported algorithms and the like
            return Found(error=f"unreadable PKCS#12 keystore: {type(exc).__name__}")
        certs = ([cert] if cert else []) + list(extra or [])
        if not certs:
            return Found(error="PKCS#12 keystore holds no certificate")
        return Found(pem=tuple(c.public_bytes(Encoding.PEM).decode("ascii") for c in certs))
    if wrong_password:
        return Found(error="PKCS#12 keystore: wrong or missing password (tried the password keys and empty)")
    return Found(error="not a readable PKCS#12 keystore")


def _kubeconfig(key: str, value: bytes) -> Found:
    try:
        found = list(itertools.islice(embedded_certificates(value), MAX_CERTS_PER_VALUE + 1))
    except KubeconfigError as exc:
        return Found(error=f"key {key}: {exc}")
    if len(found) > MAX_CERTS_PER_VALUE:
        return Found(error=f"key {key} holds more than {MAX_CERTS_PER_VALUE} certificates")
    if not found:
        return Found(error=f"key {key}: a kubeconfig that embeds no certificate")
    return Found(pem=tuple(e.pem for e in found), origins=tuple(e.origin for e in found))


def find_certificates(
    key: str, value: bytes, data: Mapping[str, bytes], first_passwords: tuple[bytes, ...] = ()
) -> Found:
    """The certificates in one decoded Secret value.

    ``data`` holds every decoded value of the Secret (for sibling password keys); ``first_passwords``
    are tried before those (a password from another Secret).
    """
    if len(value) > MAX_VALUE_BYTES:
        return Found(error=f"key {key} is too large ({len(value)} bytes, limit {MAX_VALUE_BYTES})")
    if not value.strip():
        return Found(error=f"key {key} is empty")
    java = is_java_keystore(value) or key.lower().endswith(JAVA_KEYSTORE_SUFFIXES)
    if not java and not is_keystore_key(key):
        return _certificates(key, value, depth=0)
    passwords = tuple(dict.fromkeys((*first_passwords, *keystore_passwords(key, data))))
    return _open_java_keystore(value, passwords) if java else _open_keystore_cached(value, passwords)


def _open_java_keystore(value: bytes, passwords: tuple[bytes, ...]) -> Found:
    """A JKS or JCEKS keystore's certificates; a wrong password (every one known fails the keystore's
    integrity check) is reported. Without any password the certificates are read unchecked."""
    try:
        keystore = read_java_keystore(value)
    except KeystoreError as exc:
        return Found(error=str(exc) if is_java_keystore(value) else "not a Java keystore (JKS or JCEKS)")
    known = [p for p in passwords if p]
    if known and not any(keystore.password_matches(p) for p in known):
        return Found(
            error=f"{keystore.kind} keystore: wrong password, or altered since it was written "
            "(its integrity check fails with every password found)"
        )
    if not keystore.certificates:
        return Found(error=f"{keystore.kind} keystore holds no certificate")
    if len(keystore.certificates) > MAX_CERTS_PER_VALUE:
        return Found(error=f"{keystore.kind} keystore holds more than {MAX_CERTS_PER_VALUE} certificates")
    return Found(pem=tuple(_pem(base64.b64encode(der)) for _, der in keystore.certificates))


def _certificates(key: str, value: bytes, depth: int) -> Found:
    blocks = pem_blocks(value)
    if len(blocks) > MAX_CERTS_PER_VALUE:
        return Found(error=f"key {key} holds more than {MAX_CERTS_PER_VALUE} certificates")
    if blocks:
        return Found(pem=tuple(blocks))
    if depth == 0 and looks_like_kubeconfig(value):
        return _kubeconfig(key, value)
    der = _der_to_pem(value)
    if der:
        return Found(pem=(der,))
    if depth == 0 and _BASE64_TEXT.match(value.strip()):
        try:
            inner = base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            inner = b""
        if inner:
            found = _certificates(key, inner, depth=1)
            if found.pem:
                return found
    if b"-----BEGIN CERTIFICATE-----" in value:
        return Found(error=f"key {key} holds a truncated or corrupt PEM certificate")
    return Found(error=f"no certificate in key {key} (not PEM, DER or PKCS#12)")
