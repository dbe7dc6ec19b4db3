"""A leader lease in a NATS key-value bucket: one active replica of a service, the others on standby.

The holder renews the lease every third of its duration with a compare-and-set on the key's revision; a
standby takes it over (again by compare-and-set) once it has not been renewed for a whole duration. A
holder that cannot renew stops acting before a standby may take over (it fences itself at two thirds of
the duration), so two replicas never act at once as long as clocks agree within a third of a duration.
On a clean stop the holder releases the lease, so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Gauge

log = logging.getLogger(__name__)

leader = Gauge("certcheck_leader", "1 while this replica holds its service's lease", ["lease"])


class LeaseRecord(msgspec.Struct):
    holder: str
    renewed_at: float  # Unix seconds; 0 when released
    duration: float  # the holder's: standbys judge expiry by it, so replicas need not agree on it


class LeaseLostError(RuntimeError):
    """This replica no longer holds its lease: it must stop acting (and stand by again)."""


_encode = msgspec.json.encode
_decoder = msgspec.json.Decoder(LeaseRecord)


class Lease:
    def __init__(
        self,
        kv: KeyValue,
        name: str,
        holder: str,
        duration: float,
        clock: Callable[[], float] = time.time,
        reported: bool = True,  # shown as certcheck_leader (a leader's lease, not one of many partitions')
    ) -> None:
        self.kv = kv
        self._reported = reported
        self.name = name
        self.holder = holder
        self.duration = duration
        self._clock = clock
        self._revision = 0
        self._renewed = 0.0  # monotonic time of the last successful acquisition or renewal

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours."""
        record = self._record()
        try:
            entry = await self.kv.get(self.name)
        except KeyNotFoundError:
            return await self._write(record, create=True)
        current = _decoder.decode(entry.value) if entry.value else None
        expired = current is None or self._clock() - current.renewed_at > current.duration
        if current is not None and current.holder != self.holder and not expired:
            return False
        self._revision = entry.revision or 0
        return await self._write(record)

    async def renew(self) -> bool:
        return await self._write(self._record())

    def _record(self, renewed_at: float | None = None) -> LeaseRecord:
        return LeaseRecord(self.holder, self._clock() if renewed_at is None else renewed_at, self.duration)

    async def release(self, timeout: float = 1.0) -> None:
        try:
            record = _encode(self._record(renewed_at=0.0))
            await asyncio.wait_for(self.kv.update(self.name, record, last=self._revision), timeout)
        except Exception as exc:  # a standby takes over after the duration anyway
            log.info("could not release the %s lease: %s", self.name, exc)
        self._report(0)

    def _report(self, value: int) -> None:
        if self._reported:
            leader.labels(self.name).set(value)

    def fenced(self) -> bool:
        """Whether the last renewal is so old that a standby may soon take over: stop acting."""
        return self._until_fenced() <= 0

    def _until_fenced(self) -> float:
        return self._renewed + self.duration * 2 / 3 - time.monotonic()

    async def _write(self, record: LeaseRecord, create: bool = False) -> bool:
        try:
            if create:
                self._revision = await self.kv.create(self.name, _encode(record))
            else:
                self._revision = await self.kv.update(self.name, _encode(record), last=self._revision)
        except KeyWrongLastSequenceError:
            return False
        self._renewed = time.monotonic()
        self._report(1)
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait on standby until the lease is ours (True) or we are asked to stop (False)."""
        self._report(0)
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    return True
            except Exception as exc:  # the bus is down or re-electing: keep waiting
                log.warning("lease %s: %s", self.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.duration / 3)
        return False

    async def hold(self) -> None:
        """Renew for as long as the lease is ours; raise LeaseLostError when it is lost or fenced."""
        while True:
            await asyncio.sleep(self.duration / 3)
            try:
                # A renewal that gets no answer must not outlast the fence (the bus's request timeout
                # may be longer than what is left of the lease).
                renewed = await asyncio.wait_for(self.renew(), max(0.05, self._until_fenced()))
                if not renewed:
                    self._report(0)
                    raise LeaseLostError(f"another replica took the {self.name} lease")
            except LeaseLostError:
                raise
            except Exception as exc:
                log.warning("could not renew the %s lease: %s", self.name, exc)
            if self.fenced():
                self._report(0)
                raise LeaseLostError(f"could not renew the {self.name} lease in time: stepping down")
