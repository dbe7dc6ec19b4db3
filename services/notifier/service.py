"""The notifier's bus adapter: results in, notifications out, exactly once per change per target.

Per result and target: plan the notices against the durable state (KV, compare-and-set), *claim* them
by writing the new state with the delivery pending, send, then clear the pending delivery. A replica that
loses the compare-and-set re-plans and finds nothing left to send, so replicas never double-send. A
failed send keeps the delivery pending and the result is nak'ed with a delay (Retry-After when given):
JetStream redelivers it and the same delivery (same id) is sent again. After too many attempts the
target is recorded as failing (status, Event, metric) and the delivery is dropped. The state machine
(planning a claim, settling an outcome, merging into another replica's write) is pure, in claims.py;
this module loads, compare-and-sets, sends and reports.

The guarantee: each change is notified once. The one exception is a notifier that dies after a
receiver accepted a message and before the KV write that records it; then that delivery is sent again
with the same X-Certcheck-Delivery id, which webhook receivers can use to drop the repeat.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from prometheus_client import Counter

from schemas import subjects
from schemas.messages import (
    CertCheckRemoved,
    EvaluationResult,
    NotificationFailure,
    NotificationTarget,
    ResultMessage,
    SecretKeyRef,
    SecretRef,
    encoder,
    result_decoder,
)
from schemas.streams import NOTIFIER_CONSUMER, RESULTS
from services.common.bus import Bus
from services.common.consume import Later, Policy, consume, durable_consumer
from services.common.kube_writer import Gone, KubeWriter
from services.common.logs import object_ref, trace
from services.common.settings import Settings
from services.domain.clusterchecks import cluster_check_of
from services.domain.events import certcheck_warning
from services.domain.provenance import result_refusal
from services.notifier import channels, claims, core
from services.notifier.channels import CredentialRef, Credentials, DeliveryError
from services.notifier.secrets import SecretReader

log = logging.getLogger(__name__)

deliveries = Counter("certcheck_notifications_total", "Notification deliveries", ["kind", "outcome"])
state_decoder = msgspec.json.Decoder(core.NotifyState)

MAX_ROUNDS = 3  # plan, send, settle; again if a delivery that blocked planning went out meanwhile
# A result whose handling keeps failing (the KV or the API server out of reach) is dead-lettered once
# it was delivered this often, the looks again at a delivery in flight or waiting out a Retry-After
# included (each a delivery: a minute's claim polled every 2 s is 30). What it left pending in the
# durable state is sent with the next result of its CertCheck.
POLICY = Policy("result", max_deliveries=100)


def _now() -> datetime:
    return datetime.now(UTC)


def _unexpected(exc: Exception) -> DeliveryError:
    retryable = isinstance(exc, OSError)  # a connection problem may pass; a bad value does not
    return DeliveryError(
        f"{type(exc).__name__} while sending (details withheld: they may quote a credential)", retryable
    )


class Notifier:
    def __init__(
        self,
        bus: Bus,
        kv: KeyValue,
        secrets: SecretReader,
        writer: KubeWriter,
        settings: Settings,
        channel_registry: channels.Registry | None = None,
    ) -> None:
        self.bus = bus
        self.kv = kv
        self.secrets = secrets
        self.writer = writer
        self.settings = settings
        self.channels = channel_registry or channels.load(settings)
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="notify")

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run(self) -> None:
        sub = await durable_consumer(self.bus, RESULTS.name, NOTIFIER_CONSUMER, subjects.RESULTS_ALL)
        # Of several results of one CertCheck in a batch only the newest is handled: never two at once.
        await consume(
            self.bus,
            sub,
            result_decoder.decode,
            self._handle,
            POLICY,
            batch=50,
            latest_only=True,
            admit=result_refusal,  # credentials are then read in the subject's namespace only
        )

    async def _handle(self, result: ResultMessage, msg: Msg) -> Later:
        if isinstance(result, EvaluationResult):
            return await self.process(result)
        if isinstance(result, CertCheckRemoved):
            await self._forget(result.namespace, result.name)
        return None

    # --- durable state ----------------------------------------------------------------------------

    @staticmethod
    def _key(namespace: str, name: str) -> str:
        return f"{namespace}.{name}"

    async def _load(self, key: str) -> tuple[core.NotifyState, int]:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return core.NotifyState(), 0
        if not entry.value:
            return core.NotifyState(), entry.revision or 0
        return state_decoder.decode(entry.value), entry.revision or 0

    async def _save(self, key: str, state: core.NotifyState, revision: int) -> int:
        payload = encoder.encode(state)
        if revision == 0:
            return int(await self.kv.create(key, payload))
        return int(await self.kv.update(key, payload, last=revision))

    async def _forget(self, namespace: str, name: str) -> None:
        """Drop the state of a CertCheck that is gone or has no targets any more (if there is any)."""
        key = self._key(namespace, name)
        _, revision = await self._load(key)
        if revision:
            await self.kv.purge(key)

    # --- one result -------------------------------------------------------------------------------

    async def process(self, result: EvaluationResult) -> float | None:
        """Notify what changed; returns a delay after which to look again, or None when done."""
        given = result.notification.targets if result.notification else []
        targets = {t.name: channels.effective(self.channels, t) for t in given}
        key = self._key(result.namespace, result.name)
        if not targets:
            await self._forget(result.namespace, result.name)
            return None
        retry_in: float | None = None
        for _ in range(MAX_ROUNDS):
            claim, revision = await self._claim(key, result, targets)
            state = claim.state
            retry_in = claims.earliest(retry_in, claim.elsewhere_until)  # another replica's claim: look again
            for name in sorted(claim.mine):
                target_state = state.targets[name]
                assert target_state.pending is not None
                outcome = await self._deliver(result, targets[name], target_state.pending)
                delay = claims.settle(target_state, outcome, _now(), self.settings.notify_max_attempts)
                retry_in = claims.earliest(retry_in, delay)
            await self._store_outcomes(key, claim, revision)
            # A target that had an earlier delivery pending was not planned against this result: now
            # that it went out (or was given up), plan it again, so a change seen meanwhile is sent too.
            if not claim.unblocked():
                break
        await self._reconcile_reports(key, result)
        return retry_in

    async def _claim(
        self, key: str, result: EvaluationResult, targets: dict[str, NotificationTarget]
    ) -> tuple[claims.Claim, int]:
        """Plan each target's notices and record them as pending, and claim the pending deliveries for
        this replica (one compare-and-set), before sending."""
        while True:
            loaded, revision = await self._load(key)
            claim = claims.plan_claim(loaded, result, targets, self.settings.instance_id, _now())
            try:
                revision = await self._save(key, claim.state, revision)
            except KeyWrongLastSequenceError:
                continue  # another replica got there first: plan again from what it recorded
            return claim, revision

    async def _deliver(
        self, result: EvaluationResult, target: NotificationTarget, pending: core.Pending
    ) -> DeliveryError | None:
        selected = self.channels.find(target)
        if isinstance(selected, DeliveryError):
            return selected
        channel, config = selected.channel, selected.config
        try:
            credentials = await self._credentials(result.namespace, channel.credentials(config))
            body = channel.render(config, pending.notification)
            await self._call(channel.send, config, body, pending.delivery_id, credentials)
        except Exception as exc:
            # Only a DeliveryError's text is certcheck's own; any other may quote a credential (urllib
            # rejecting a header quotes its value): its type alone is told.
            error = exc if isinstance(exc, DeliveryError) else _unexpected(exc)
            deliveries.labels(channel.name, "retryable" if error.retryable else "failed").inc()
            log.warning(
                "delivery %s to %s/%s target %s failed: %s",
                pending.delivery_id,
                result.namespace,
                result.name,
                target.name,
                error,
            )
            return error
        deliveries.labels(channel.name, "ok").inc()
        trace(
            log,
            "notifier",
            object_ref(result.namespace, result.name, result.resource_version),
            "delivery %s sent to target %s (%s): %d certificates",
            pending.delivery_id,
            target.name,
            channel.name,
            len(pending.notification.certificates),
        )
        return None

    async def _credentials(self, namespace: str, refs: list[CredentialRef]) -> Credentials:
        """Read the Secret values a channel asked for (a reader's DeliveryError says what is missing)."""
        keys: dict[SecretKeyRef, bytes] = {}
        secrets: dict[SecretRef, dict[str, bytes]] = {}
        for ref in refs:
            if isinstance(ref, SecretKeyRef):
                keys[ref] = await self._call(self.secrets.value, namespace, ref.name, ref.key)
            else:
                secrets[ref] = await self._call(self.secrets.values, namespace, ref.name)
        return Credentials(keys, secrets)

    async def _store_outcomes(self, key: str, claim: claims.Claim, revision: int) -> None:
        try:
            await self._save(key, claim.state, revision)
        except KeyWrongLastSequenceError:
            # Another replica wrote in between: merge our outcomes into what it wrote.
            current, current_revision = await self._load(key)
            await self._save(key, claims.merge_outcomes(current, claim), current_revision)

    @staticmethod
    def _failures(state: core.NotifyState) -> list[NotificationFailure]:
        return [
            NotificationFailure(target=name, reason=t.failure, since=t.failing_since or "")
            for name, t in sorted(state.targets.items())
            if t.failure
        ]

    async def _reconcile_reports(self, key: str, result: EvaluationResult) -> None:
        """Bring the status (and Events) in line with the failures in the durable state. Until that
        succeeded, the state says what was reported last, so a redelivery reports again."""
        while True:
            state, revision = await self._load(key)
            if state.uid != result.uid:
                return
            failures = self._failures(state)
            if failures == state.reported:
                return
            await self._report_failures(result, failures, state.reported)
            state.reported = failures
            try:
                await self._save(key, state, revision)
                return
            except KeyWrongLastSequenceError:
                continue

    async def _report_failures(
        self, result: EvaluationResult, failures: list[NotificationFailure], before: list[NotificationFailure]
    ) -> None:
        try:
            if cluster_check_of(result.name) is None:  # a ClusterCertCheck's are told by Events alone
                await self._call(
                    self.writer.patch_notification_failures,
                    result.namespace,
                    result.name,
                    result.uid,
                    failures,
                )
        except Gone:
            return
        for failure in failures:
            if failure in before:
                continue
            deliveries.labels("any", "gave_up").inc()
            await self._call(
                self.writer.emit_event,
                certcheck_warning(
                    result.namespace,
                    result.name,
                    result.uid,
                    "NotificationFailed",
                    f"notification target {failure.target}: {failure.reason}",
                    failure.since,
                    failure.target,
                    failure.since,
                ),
            )
