"""Dividing a fixed number of partitions among the live replicas of a group (the evaluators, the
exporters), with leases in a NATS key-value bucket.

Each replica keeps a membership record alive (key ``<group>.members.<instance>``, a lease only it
writes) and computes, from the live records, the same assignment as every other replica (``assign``:
balanced to within one partition, and stable: a replica joining or leaving moves few partitions). It
claims the partitions assigned to it, each a lease of its own (key ``<group>.partitions.<n>``, see
services/common/lease.py), works on a partition only while it holds that lease, and releases the
ones assigned elsewhere once its work on them has stopped, so their new owner takes them at once. A
dead replica's membership and leases run out after the lease duration; its partitions are then
claimed by the replicas they are assigned to. Replicas that briefly disagree on who is alive only
delay a handover: a partition is never worked on by two holders, because its lease has one holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Gauge

from services.common.lease import Lease, LeaseRecord

log = logging.getLogger(__name__)

owned_partitions = Gauge("certcheck_partitions_owned", "Partitions this replica holds", ["group"])
live_members = Gauge("certcheck_partition_members", "Live replicas of the group, as this one sees", ["group"])

SETTLE_SECONDS = 1.0  # between rounds while the assignment is not reached yet
_decoder = msgspec.json.Decoder(LeaseRecord)


def _score(member: str, partition: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}/{partition}".encode(), digest_size=8).digest(), "big")


def assign(partitions: int, members: Iterable[str]) -> dict[str, set[int]]:
    """Which partitions each member owns: every partition exactly one member, shares that differ by
    one at most. Rendezvous hashing with room: the (member, partition) pairs are taken
    best score first, each partition by the first member ranking it that still has room, so the result
    depends on the set of members alone and a member joining or leaving moves few others' partitions."""
    ranked_members = sorted(set(members))
    owned: dict[str, set[int]] = {member: set() for member in ranked_members}
    if not ranked_members:
        return owned
    # Each member takes floor(partitions / members); the first ones to reach that take one more
    # while the remainder lasts.
    share, extra = divmod(partitions, len(ranked_members))
    pairs = sorted(
        (
            (_score(member, partition), member, partition)
            for member in ranked_members
            for partition in range(partitions)
        ),
        reverse=True,
    )
    taken: set[int] = set()
    for _, member, partition in pairs:
        if partition in taken or len(owned[member]) > share:
            continue
        if len(owned[member]) == share:
            if not extra:
                continue
            extra -= 1
        owned[member].add(partition)
        taken.add(partition)
    return owned


class PartitionOwner:
    """Claims and releases this replica's share of the partitions, for as long as ``run`` runs.

    ``claim(n)`` starts the work on partition n (it returns once that work is under way) and
    ``release(n)`` stops it (it returns once nothing of it runs any more); neither may raise."""

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        bucket: str,
        group: str,
        instance: str,
        partitions: int,
        duration: float,
        claim: Callable[[int], Awaitable[None]],
        release: Callable[[int], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.js, self.kv, self.bucket = js, kv, bucket
        self.group, self.instance, self.partitions = group, instance, partitions
        self.duration = duration
        self._claim, self._release, self._clock = claim, release, clock
        self._member = Lease(kv, f"{group}.members.{instance}", instance, duration, clock, reported=False)
        self._leases = {
            n: Lease(kv, f"{group}.partitions.{n}", instance, duration, clock, reported=False)
            for n in range(partitions)
        }
        self.owned: set[int] = set()
        self.settled = asyncio.Event()  # set once this replica holds exactly its assigned share

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until ``stop``: keep the membership alive, release, renew and claim; then give up
        every partition, so the others take them over at once."""
        try:
            await self._member.try_acquire()
            # A moment for the replicas starting together to see each other, rather than one
            # claiming everything and handing most of it over again a second later.
            await _wait(stop, min(SETTLE_SECONDS, self.duration / 3))
            while not stop.is_set():
                try:
                    reached = await self._round()
                except Exception as exc:  # the bus unreachable: what cannot be renewed is fenced below
                    log.warning("partition round of %s failed: %r", self.group, exc)
                    reached = False
                await self._fence()
                await _wait(stop, self.duration / 3 if reached else SETTLE_SECONDS)
        finally:
            for partition in sorted(self.owned):
                await self._give_up(partition)
            await self._member.release()
            owned_partitions.labels(self.group).set(0)

    async def live(self) -> list[str]:
        """The members whose record was renewed within its duration (this one always counts)."""
        # The subjects of the bucket's stream, not kv.keys(): that creates a consumer every round.
        prefix = f"$KV.{self.bucket}."
        info = await self.js.stream_info(
            f"KV_{self.bucket}", subjects_filter=f"{prefix}{self.group}.members.*"
        )
        keys = [subject.removeprefix(prefix) for subject in info.state.subjects or {}]
        found = {self.instance}
        now = self._clock()
        for key in keys:
            with contextlib.suppress(KeyNotFoundError, msgspec.DecodeError):
                entry = await self.kv.get(key)
                record = _decoder.decode(entry.value or b"")
                if record.renewed_at > 0 and now - record.renewed_at <= record.duration:
                    found.add(record.holder)
        return sorted(found)

    async def _round(self) -> bool:
        """One round; True when this replica holds exactly its share afterwards."""
        if not await self._member.renew() and not await self._member.try_acquire():
            log.warning(
                "%s membership record of %s taken by another: claiming it back", self.group, self.instance
            )
        members = await self.live()
        live_members.labels(self.group).set(len(members))
        mine = assign(self.partitions, members).get(self.instance, set())
        for partition in sorted(self.owned - mine):
            log.info("%s partition %d: assigned to another replica, handing it over", self.group, partition)
            await self._give_up(partition)
        for partition in sorted(self.owned & mine):
            if not await self._leases[partition].renew():
                log.warning("%s partition %d: lease taken by another replica", self.group, partition)
                await self._stop_working(partition)
        for partition in sorted(mine - self.owned):
            if await self._leases[partition].try_acquire():
                log.info("%s partition %d: claimed", self.group, partition)
                self.owned.add(partition)
                await self._claim(partition)
        owned_partitions.labels(self.group).set(len(self.owned))
        reached = self.owned == mine
        if reached:
            self.settled.set()
        return reached

    async def _fence(self) -> None:
        """Stop working on any partition whose lease could not be renewed in time: another replica
        may take it over soon."""
        for partition in sorted(self.owned):
            if self._leases[partition].fenced():
                log.warning("%s partition %d: lease not renewed in time, stopping", self.group, partition)
                await self._stop_working(partition)

    async def _stop_working(self, partition: int) -> None:
        self.owned.discard(partition)
        await self._release(partition)

    async def _give_up(self, partition: int) -> None:
        await self._stop_working(partition)
        await self._leases[partition].release()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
