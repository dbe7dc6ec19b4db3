"""Java keystores (JKS and JCEKS): their certificates, read without the password. Pure: no I/O.

The format (OpenJDK's ``sun.security.provider.JavaKeyStore``): a magic number, a version, a count of
entries, each a trusted certificate or a private key with its certificate chain, then a SHA-1 digest of
the password (UTF-16BE), the words "Mighty Aphrodite" and everything before it. Certificates are stored
in clear, so they are read whatever the password; the private keys are encrypted and skipped unread. A
known password is checked against the digest, so a wrong one, or a keystore altered since it was
written, is reported. JCEKS secret-key entries are serialized Java objects with no length before them:
a keystore holding one is reported, not guessed at.

No library is used: ``pyjks``, the only one, has had no release since 2020, and this is the part of it
certcheck needs. Every length is checked against what is left, so hostile input ends in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

JKS_MAGIC = 0xFEEDFEED
JCEKS_MAGIC = 0xCECECECE
_PRIVATE_KEY, _TRUSTED_CERT, _SECRET_KEY = 1, 2, 3
MAX_ENTRIES = 10_000
DIGEST_BYTES = 20
_WHITENER = b"Mighty Aphrodite"


class KeystoreError(ValueError):
    pass


def is_java_keystore(value: bytes) -> bool:
    return len(value) >= 4 and struct.unpack(">I", value[:4])[0] in (JKS_MAGIC, JCEKS_MAGIC)


@dataclass(frozen=True)
class JavaKeystore:
    kind: str  # JKS or JCEKS
    certificates: tuple[tuple[str, bytes], ...]  # (alias, DER), in the keystore's order
    body: bytes  # what the digest covers
    digest: bytes

    def password_matches(self, password: bytes) -> bool:
        """Whether the keystore was written with ``password`` (the UTF-8 text a Secret holds)."""
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return False
        expected = hashlib.sha1(text.encode("utf-16-be") + _WHITENER + self.body).digest()
        return hmac.compare_digest(expected, self.digest)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.at + count > len(self.data):
            raise KeystoreError("truncated Java keystore")
        chunk = self.data[self.at : self.at + count]
        self.at += count
        return chunk

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def utf(self) -> str:
        return self.take(self.u16()).decode("utf-8", "replace")  # Java's modified UTF-8, near enough


def _certificate(reader: _Reader, version: int) -> bytes:
    if version == 2:
        kind = reader.utf()
        if kind != "X.509":
            raise KeystoreError(f"Java keystore holds a certificate of type {kind[:40]!r}, not X.509")
    return reader.take(reader.u32())


def read_java_keystore(value: bytes) -> JavaKeystore:
    """The certificates of a JKS or JCEKS keystore, or KeystoreError saying why they cannot be read."""
    reader = _Reader(value)
    magic, version, count = reader.u32(), reader.u32(), reader.u32()
    kind = "JKS" if magic == JKS_MAGIC else "JCEKS" if magic == JCEKS_MAGIC else None
    if kind is None:
        raise KeystoreError("not a Java keystore")
    if version not in (1, 2):
        raise KeystoreError(f"{kind} keystore of unknown version {version}")
    if count > MAX_ENTRIES:
        raise KeystoreError(f"{kind} keystore claims {count} entries (at most {MAX_ENTRIES} are read)")
    certificates: list[tuple[str, bytes]] = []
    for _ in range(count):
        tag = reader.u32()
        if tag not in (_PRIVATE_KEY, _TRUSTED_CERT, _SECRET_KEY):
            raise KeystoreError(f"{kind} keystore holds an entry of unknown type {tag}")
        alias = reader.utf()
        reader.take(8)  # the entry's creation time
        if tag == _TRUSTED_CERT:
            certificates.append((alias, _certificate(reader, version)))
        elif tag == _PRIVATE_KEY:
            reader.take(reader.u32())  # the encrypted private key: never read
            chain = reader.u32()
            if chain > MAX_ENTRIES:
                raise KeystoreError(f"{kind} keystore entry {alias[:40]!r} claims a chain of {chain}")
            certificates += [(alias, _certificate(reader, version)) for _ in range(chain)]
        else:  # a secret key: a serialized Java object, its length nowhere
            raise KeystoreError(f"{kind} keystore holds a secret-key entry, which certcheck cannot read past")
    body_end = reader.at
    digest = reader.take(DIGEST_BYTES)
    if reader.at != len(value):
        raise KeystoreError(f"{kind} keystore has {len(value) - reader.at} bytes after its digest")
    return JavaKeystore(kind, tuple(certificates), value[:body_end], digest)
