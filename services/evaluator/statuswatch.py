"""Whether each CertCheck's status says what its last result told.

A status is written by the recorder and then left alone: a status-only update triggers no evaluation
(most are certcheck's own writes coming back). So a status that stops saying what was told (a late write
of an older result landing after a newer one, a write lost, an edit by hand) would stay wrong until the
resync. This keeps, per CertCheck, a digest of the status its last result told, and asks for a check a
while after a result that changes the status, and whenever the status alone changes into something not
told. The evaluator then looks: once the recorder applied that result and the status is still not as
told, the CertCheck is evaluated again, which writes it again; while the recorder is behind, it looks
again later. The annotations are level-triggered the same way (``_annotations_to_put_back``).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from schemas.messages import CertCheckStatus, encoder
from services.domain.view import CertCheckKey

CHECK_CAP_SECONDS = 300.0  # checks that keep finding the recorder behind, or the status put back again


def status_digest(status: CertCheckStatus | None) -> bytes:
    """What a status says, the notifier's own field aside (the recorder never writes it)."""
    if status is None:
        return b""
    plain = msgspec.structs.replace(status, notification_failures=None)
    return hashlib.blake2b(encoder.encode(plain), digest_size=16).digest()


@dataclass(slots=True)
class Told:
    """What a CertCheck's last result told of its status."""

    seq: int  # the result's stream sequence (the recorder's applied mark reaches it once applied)
    uid: str
    digest: bytes
    check: asyncio.TimerHandle | None = None
    misses: int = 0  # checks since the status was last seen as told

    def as_told(self, uid: str, observed: CertCheckStatus | None) -> bool:
        return uid != self.uid or status_digest(observed) == self.digest


class StatusWatch:
    """The statuses told and the checks due; ``wake`` is called when a check comes due."""

    def __init__(self, wake: Callable[[], None], delay: float) -> None:
        self._wake = wake
        self._delay = delay
        self._told: dict[CertCheckKey, Told] = {}
        self._due: set[CertCheckKey] = set()

    def told(self, key: CertCheckKey, seq: int, uid: str, status: CertCheckStatus, changed: bool) -> None:
        """A result was published: a status it changes is checked in a while (later while the checks
        before it kept finding the status not as told)."""
        before = self._told.get(key)
        misses = before.misses if before is not None and before.uid == uid else 0
        self.forget(key)
        told = self._told[key] = Told(seq, uid, status_digest(status), misses=misses)
        if changed:
            self._arm(key, told)

    def came_back(self, key: CertCheckKey, uid: str, observed: CertCheckStatus | None) -> None:
        """The status alone changed: as told, nothing is due; otherwise a check is, unless one is."""
        told = self._told.get(key)
        if told is None:
            return
        if told.as_told(uid, observed):
            self._settle(key, told)
        elif told.check is None and key not in self._due:
            self._arm(key, told)

    def take_due(self) -> dict[CertCheckKey, Told]:
        due, self._due = self._due, set()
        return {key: self._told[key] for key in due if key in self._told}

    def confirmed(self, key: CertCheckKey, told: Told) -> None:
        """The status was found as told."""
        self._settle(key, told)

    def check_again(self, key: CertCheckKey, told: Told) -> None:
        """Not as told yet (the recorder behind), or written again: look later, and less often."""
        if self._told.get(key) is told:
            told.misses += 1
            self._arm(key, told)

    def forget(self, key: CertCheckKey) -> None:
        told = self._told.pop(key, None)
        if told is not None and told.check is not None:
            told.check.cancel()
        self._due.discard(key)

    def close(self) -> None:
        for key in list(self._told):
            self.forget(key)

    def __len__(self) -> int:
        return len(self._told)

    def _settle(self, key: CertCheckKey, told: Told) -> None:
        told.misses = 0
        if told.check is not None:
            told.check.cancel()
            told.check = None
        self._due.discard(key)

    def _arm(self, key: CertCheckKey, told: Told) -> None:
        if told.check is not None:
            told.check.cancel()
        delay = min(CHECK_CAP_SECONDS, self._delay * 2**told.misses)
        told.check = asyncio.get_running_loop().call_later(delay, self._fire, key, told)

    def _fire(self, key: CertCheckKey, told: Told) -> None:
        told.check = None
        if self._told.get(key) is told:
            self._due.add(key)
            self._wake()
