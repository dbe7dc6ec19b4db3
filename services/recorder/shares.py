"""Recording a ClusterCertCheck's shares: each share's last result goes into a key-value bucket shared by
the recorder's replicas (``<ClusterCertCheck>.<namespace>``), and the status merged from all of them is
written with a compare-and-set on the ClusterCertCheck's resourceVersion.

Any replica may merge at any time: a merge reads every share as of one revision of the bucket, and a
status already merging a newer revision is never overwritten by an older one, so the last write merges
the last results. A result is acknowledged once its share is stored and a merge that read it is written:
a crash in between leaves the result to be delivered again (storing it again is a no-op).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from schemas.messages import CertCheckRemoved, ClusterCertCheckStatus, EvaluationResult
from schemas.streams import CLUSTER_SHARES_BUCKET
from services.common.bus import Bus
from services.common.kube_writer import KubeWriter
from services.domain.clusterchecks import cluster_check_of
from services.recorder.clusterstatus import Share, merged_status, same_status, share_of

log = logging.getLogger(__name__)

MERGE_ATTEMPTS = 5  # compare-and-set conflicts in a row before the result is retried with backoff
READ_IDLE_SECONDS = 5.0
merges = Counter("certcheck_recorder_cluster_merges_total", "ClusterCertCheck status merges", ["outcome"])

_share_decoder = msgspec.json.Decoder(Share)
_status_decoder = msgspec.json.Decoder(ClusterCertCheckStatus | None)
_encode = msgspec.json.Encoder().encode


def _key(check: str, namespace: str) -> str:
    return f"{check}.{namespace}"


def _decoded_status(raw: msgspec.Raw) -> ClusterCertCheckStatus | None:
    try:
        return _status_decoder.decode(raw)
    except msgspec.MsgspecError:
        return None  # anyone may edit a status: one unreadable is written anew


class Coalesced:
    """Runs ``work(name)`` once for everyone who asked while it had not started yet: a burst of shares'
    results makes one merge, and each caller returns once a merge begun after its call is done."""

    def __init__(self, work: Callable[[str], Awaitable[None]]) -> None:
        self._work = work
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._running: set[str] = set()

    async def __call__(self, name: str) -> None:
        future = self._waiting.get(name)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[name] = future
            if name not in self._running:
                asyncio.get_running_loop().create_task(self._drive(name), name=f"merge-{name}")
        await asyncio.shield(future)

    async def _drive(self, name: str) -> None:
        self._running.add(name)
        try:
            while (future := self._waiting.pop(name, None)) is not None:
                try:
                    await self._work(name)
                except Exception as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(None)
        finally:
            self._running.discard(name)


class ClusterStatuses:
    def __init__(
        self, bus: Bus, shares: KeyValue, writer: KubeWriter, call: Callable[..., Awaitable[Any]]
    ) -> None:
        self._bus = bus
        self._shares = shares
        self._writer = writer
        self._call = call
        self.merge = Coalesced(self._merge)

    async def record(self, result: EvaluationResult) -> None:
        check = cluster_check_of(result.name)
        assert check is not None
        await self._store(_key(check, result.namespace), share_of(result))
        await self.merge(check)

    async def remove(self, removed: CertCheckRemoved) -> None:
        check = cluster_check_of(removed.name)
        assert check is not None
        key = _key(check, removed.namespace)
        try:
            entry = await self._shares.get(key)
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            held = _share_decoder.decode(entry.value)
            if held.uid == removed.uid and held.view_seq <= removed.view_seq:
                await self._shares.delete(key, last=entry.revision)
        await self.merge(check)

    async def _store(self, key: str, share: Share) -> None:
        """Keep the share's result, unless the bucket holds a newer one (or this one already)."""
        while True:
            try:
                entry = await self._shares.get(key)
            except KeyNotFoundError:
                entry = None
            held = _share_decoder.decode(entry.value) if entry is not None and entry.value else None
            if held is not None and held.uid == share.uid and held.view_seq >= share.view_seq:
                return
            if held is not None and msgspec.structs.replace(held, view_seq=share.view_seq) == share:
                return  # the same as stored: a re-evaluation that changed nothing
            try:
                if entry is None:
                    await self._shares.create(key, _encode(share))
                else:
                    await self._shares.update(key, _encode(share), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another replica stored one meanwhile: look again

    async def _read(self, check: str) -> tuple[list[Share], int]:
        """Every share of the ClusterCertCheck, and the bucket's revision they are as of."""
        bucket = CLUSTER_SHARES_BUCKET
        stream = f"KV_{bucket}"
        subject = f"$KV.{bucket}.{check}.*"
        info = await self._bus.js.stream_info(stream, subjects_filter=subject)
        if not info.state.subjects:
            return [], 0
        sub = await self._bus.js.subscribe(
            subject,
            stream=stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        shares: list[Share] = []
        revision = 0
        try:
            while True:
                msg = await sub.next_msg(timeout=READ_IDLE_SECONDS)
                revision = max(revision, msg.metadata.sequence.stream)
                operation = (msg.headers or {}).get("KV-Operation")
                if operation is None and msg.data:
                    try:
                        shares.append(_share_decoder.decode(msg.data))
                    except msgspec.MsgspecError:
                        log.warning("an unreadable share on %s is left out of the merge", msg.subject)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return shares, revision

    async def _last_revision(self) -> int:
        info = await self._bus.js.stream_info(f"KV_{CLUSTER_SHARES_BUCKET}")
        return int(info.state.last_seq)

    async def _merge(self, check: str) -> None:
        shares, revision = await self._read(check)
        for _ in range(MERGE_ATTEMPTS):
            read = await self._call(self._writer.read_cluster_check, check)
            if read is None:
                merges.labels("gone").inc()
                return
            current = _decoded_status(read.status)
            # Merged from as new results or newer, unless from a revision the bucket never reached (a hand
            # edit, made by no merge: replaced).
            if current is not None and revision <= current.merged_revision <= await self._last_revision():
                merges.labels("newer").inc()
                return
            own = [share for share in shares if share.uid == read.uid]  # not a namesake's before it
            status = merged_status(own, read.generation, current, revision, datetime.now(UTC))
            if current is not None and same_status(current, status):
                merges.labels("unchanged").inc()
                return
            if await self._call(self._writer.replace_cluster_status, check, read, status):
                merges.labels("written").inc()
                return
            merges.labels("conflict").inc()
        raise RuntimeError(f"ClusterCertCheck {check}: the status changed under {MERGE_ATTEMPTS} merges")
