"""What each Secret's values hold, remembered by a digest of those values. Pure: no I/O.

Most changes a Secret watch sees leave its values alone: certcheck's own annotations coming back after
the recorder wrote them (one per selected Secret at cold start, one per change after), labels, other
controllers' annotations. Reading the certificates again for those is most of the watcher's work, and a
cache keyed by certificate cannot hold them all in a large cluster (the annotation of a Secret listed
early comes back after every other Secret was read). So the watcher keeps, per Secret, a digest of its
values and what they were read into, encoded: a few hundred bytes a Secret, and no value in it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from services.watcher.extract import RawSecret, SecretContent, secret_content
from services.watcher.passwords import ReferencedPassword

SecretKey = tuple[str, str]  # (namespace, name)

_digest_encoder = msgspec.json.Encoder(order="deterministic")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SecretContent)


def values_digest(secret: RawSecret, referenced: ReferencedPassword | None) -> bytes:
    """A digest of everything a Secret's content is read from: its type, its data, the password it
    points at. It never leaves the process."""
    password = None if referenced is None else (referenced.ref.secret, referenced.ref.key)
    secret_inputs = (
        secret.type,
        secret.data or {},
        password,
        None if referenced is None else referenced.password,
        None if referenced is None else referenced.problem,
    )
    return hashlib.blake2b(_digest_encoder.encode(secret_inputs), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    secret_type: str
    content: bytes  # SecretContent, msgpack


class SecretMemo:
    """Each Secret's content by the digest of its values. Shared by the Secret watches, which run in
    threads: each Secret is in one watch only (its type), so entries never race."""

    def __init__(self) -> None:
        self._entries: dict[SecretKey, _Entry] = {}
        self._lock = threading.Lock()  # only for pruning, which walks the entries
        self.hits = 0
        self.misses = 0

    def content(self, secret: RawSecret, referenced: ReferencedPassword | None) -> SecretContent:
        meta = secret.metadata
        key = (meta.namespace, meta.name)
        digest = values_digest(secret, referenced)
        entry = self._entries.get(key)
        if entry is not None and entry.digest == digest:
            self.hits += 1
            return _decoder.decode(entry.content)
        self.misses += 1
        content = secret_content(secret.type, secret.data or {}, referenced)
        with self._lock:
            self._entries[key] = _Entry(digest, secret.type, _encoder.encode(content))
        return content

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._entries.pop((namespace, name), None)

    def listed(self, secret_type: str | None, keys: Iterable[SecretKey]) -> None:
        """A watch listed its Secrets (of ``secret_type``, or of every type): forget the others of it,
        gone while nobody watched."""
        listed = set(keys)
        with self._lock:
            gone = [
                key
                for key, entry in self._entries.items()
                if (secret_type is None or entry.secret_type == secret_type) and key not in listed
            ]
            for key in gone:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
