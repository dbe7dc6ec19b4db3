"""The evaluator's bus adapter: follows the objects stream into the view, takes work from durable
consumers, evaluates with the pure core, and publishes results, clean-ups and schedules."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge, Histogram

from schemas import subjects
from schemas.messages import (
    AnnotationCleanup,
    AnnotationPatch,
    CertCheckRemoved,
    Due,
    EvaluationResult,
    EventIntent,
    due_decoder,
    encoder,
    result_decoder,
)
from schemas.streams import (
    DEADLETTER,
    EVENT_SLOTS_BUCKET,
    HDR_DEAD_STREAM_SEQ,
    HDR_EXPECTED_LAST_SUBJECT_SEQ,
    HDR_MSG_ID,
    HDR_MSG_TTL,
    HDR_SCHEDULE,
    HDR_SCHEDULE_TARGET,
    HDR_VIEW_SEQ,
    RECORDER_APPLIED_BUCKET,
    RESULTS,
    SCHEDULE_HORIZON,
    TRIGGERS,
    AppliedMark,
    evaluator_due_consumer,
)
from services.common.bus import Bus, key_value, publish_pipelined
from services.common.consume import (
    FETCH_WAIT_SECONDS,
    DurablePull,
    Policy,
    dead_letter,
    decoded,
    durable_consumer,
    fetch_batch,
    park,
    settle,
)
from services.common.logs import object_ref, trace
from services.common.runtime import backoff
from services.common.settings import Settings
from services.domain.certs import describe
from services.domain.clusterchecks import cluster_check_of
from services.domain.follow import ViewFollower
from services.domain.lifecycle import Slot
from services.domain.provenance import due_refusal
from services.domain.reminders import reminder_offsets
from services.domain.times import parse_rfc3339, rfc3339
from services.domain.view import CertCheckKey, Effects, SecretKey, View
from services.evaluator import core
from services.evaluator.incremental import evaluate_in_view
from services.evaluator.lifecycle import LifecycleEvents, removal_reason
from services.evaluator.slots import found_slots
from services.evaluator.status import notable_entries
from services.evaluator.statuswatch import StatusWatch

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071
BATCH = 500
MAX_REFUSED_KEPT = 10_000  # object messages the view could not apply, waiting to be dead-lettered
MAX_EVALUATION_ATTEMPTS = 10  # retries of an evaluation that raised, 1 s doubling to 5 min apart
RETRY_CAP_SECONDS = 300.0
PUBLISH_TIMEOUT_SECONDS = 10.0
# A schedule this evaluator left pending is taken as still pending (not read and written again) only
# while its moment is at least this far ahead: it cannot have fired, whatever the clocks' drift.
PENDING_MARGIN = timedelta(minutes=5)
CANCEL_MARKER_TTL_SECONDS = 7 * 24 * 3600  # the marker of a cancelled schedule, kept for the compare-and-set
# A clean-up (a patch on its own, or a released Secret's removal) expires from the results stream after a
# day: kept for ever, a recorder consumer created anew would write every one again, old values over
# newer ones. One not applied by then is derived again by the resync (every 10 hours by default), as
# long as the Secret's annotations still say otherwise.
CLEANUP_TTL_SECONDS = 24 * 3600
RESULT_HEADROOM_BYTES = 64 << 10  # under the server's max_payload: headers, and room to spare
# A patch that did not fit its result is not sent again while the same one went out on its own this
# recently, with nothing published on its subject since: the recorder is still applying that one (its
# retries last ~15 minutes before a dead letter), so sending it again would only be applied again.
OVERFLOW_RESEND_SECONDS = 300.0
OVERFLOW_MEMORY = 100_000  # subjects remembered, the oldest forgotten first
# A result with at most this many annotation patches is encoded whole first (it nearly always fits); one
# with more has its patches encoded once, to measure and to lay into the payload (a 5,000-Secret
# CertCheck's result was encoded whole, then patch by patch, then whole again).
FIT_WHOLE_UP_TO = 64
# The results published last, kept as built: the next evaluation of the same CertCheck (soon, for a large
# one during a cold start) starts from it without decoding what it published (up to ~1 MiB).
TOLD_MEMORY = 16
# A CertCheck over which this many objects changed, certcheck's own annotations coming back mostly, is
# evaluated once the work consumer has nothing waiting: each costs the next evaluation a little, and
# after a cold start or a mass rotation thousands would hold up the next change by a few 100 ms.
REFRESH_AFTER_CHANGES = 256
# The work of a batch is never given up: evaluating one CertCheck cannot fail it (a failure becomes its
# EvaluationFailed status), so only publishing can, which retrying cures and giving up would not.
DUE_POLICY = Policy("due evaluations", max_deliveries=None)


evaluations = Counter("certcheck_evaluations_total", "CertCheck evaluations", ["trigger"])
evaluation_seconds = Histogram(
    "certcheck_evaluation_duration_seconds",
    "Time to evaluate one CertCheck",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
sweeps = Counter("certcheck_sweeps_total", "Full evaluations that went through", ["trigger"])
failed_evaluations = Counter(
    "certcheck_evaluation_failures_total", "Evaluations that raised (recorded as EvaluationFailed)"
)
statuses_put_back = Counter(
    "certcheck_evaluator_statuses_put_back_total",
    "CertChecks evaluated again: their status not what their last result told once the recorder applied "
    "it (set back since, or its write not seen yet)",
)
stale_results = Counter("certcheck_stale_results_dropped_total", "Results dropped: a newer one was published")
bad_messages = Counter(
    "certcheck_evaluator_bad_messages_total", "Messages that could not be decoded", ["stream"]
)
changes_waiting = Gauge(
    "certcheck_evaluator_changes_waiting",
    "Partitions held with object messages received and not yet acted on (0: every change evaluated)",
)
schedule_lag = Histogram(
    "certcheck_schedule_lag_seconds",
    "How late a due re-evaluation ran after its due time",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 60),
)


def _with_ttl(headers: dict[str, str], ttl: float | None) -> dict[str, str]:
    return headers if ttl is None else {**headers, HDR_MSG_TTL: str(int(ttl))}


def _not_seen_yet(written: str, seen: str) -> bool:
    """Whether the view has yet to see the status write that made resourceVersion ``written``: it holds
    an older version of the CertCheck. resourceVersions are compared as numbers, as etcd makes them;
    one that is not a number (another storage) cannot tell, and the status counts as seen."""
    if not (written.isdigit() and seen.isdigit()):
        return False
    return int(seen) < int(written)


class PublishFailed(Exception):
    """Some of a batch's publishes failed (the others went out): the batch is to be redelivered."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _as_last(seq: int, view_seq: int, data: bytes) -> LastResult:
    try:
        decoded = result_decoder.decode(data)
    except msgspec.DecodeError:  # anyone on the bus could have put it there: only its seq counts
        decoded = None
    return LastResult(
        seq,
        view_seq,
        decoded if isinstance(decoded, EvaluationResult) else None,
        decoded.uid if isinstance(decoded, CertCheckRemoved) else None,
    )


@dataclass(frozen=True, slots=True)
class LastResult:
    """The message a CertCheck's result subject holds now: the compare-and-set base of the next one."""

    seq: int
    view_seq: int
    result: EvaluationResult | None  # None: none yet, or not an evaluation (a removal, undecodable)
    removed_uid: str | None = None  # a removal: of the CertCheck with this uid


class Evaluator:
    """The evaluation of one partition: its view, its work consumers, its results and schedules. A
    replica runs one per partition it holds (see replica.py)."""

    def __init__(self, bus: Bus, settings: Settings, partition: int) -> None:
        self.bus = bus
        self.settings = settings
        self.partition = partition
        self.view = View()
        self.follower = ViewFollower(
            bus, self.view, subjects.objects_of(partition), on_applied=self._applied, on_refused=self._refused
        )
        # What the messages the view applied since the last evaluation ask for (the work of
        # work_objects), and the messages it could not apply (to dead-letter).
        self._changes = Effects()
        self._changed = asyncio.Event()
        self._refused_messages: list[tuple[Msg, str]] = []
        self._park_failures = 0
        self._acting = False
        # Per result subject, what this evaluator published there last: (seq, view seq, payload).
        self._published: dict[str, tuple[int, int, bytes]] = {}
        # Per result subject, of the last TOLD_MEMORY published: (its stream sequence, the result as built).
        self._told: OrderedDict[str, tuple[int, EvaluationResult]] = OrderedDict()
        # Per cleanup subject, the patch last sent there because it did not fit its result: (the patch,
        # the stream sequence it went out as, when).
        self._overflow_sent: OrderedDict[str, tuple[AnnotationPatch, int, float]] = OrderedDict()
        # Per CertCheck, the due moment this evaluator last left pending (None: nothing pending), so
        # that an evaluation that moves nothing does not read and rewrite its schedule.
        self._scheduled: dict[CertCheckKey, datetime | None] = {}
        self._lifecycle: LifecycleEvents | None = None
        # The CertChecks covering Secrets whose annotations came back since the consumer was last idle.
        self._echoed: set[CertCheckKey] = set()
        # Whether each status says what its last result told (statuswatch.py); and the recorder's marks.
        self._statuses = StatusWatch(self._changed.set, settings.status_check_seconds)
        self._recorder_marks: KeyValue | None = None

    async def follow_objects(self) -> None:
        await self.follower.run()

    async def catch_up(self) -> None:
        await self.follower.catch_up()

    # --- work ------------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what waits to be written (what each CertCheck told), before the partition is handed over."""
        self._statuses.close()
        if self._lifecycle is not None:
            await self._lifecycle.flush()

    async def lifecycle(self) -> LifecycleEvents:
        """The public expiry events of this partition's CertChecks (opened on first use)."""
        if self._lifecycle is None:
            bucket = await key_value(self.bus, EVENT_SLOTS_BUCKET, "what each CertCheck told in the events")
            self._lifecycle = LifecycleEvents(self.bus, bucket, self.settings.cluster_name)
        return self._lifecycle

    async def consumers(self) -> None:
        """Create the durable consumer of due evaluations before reading the view, so nothing falls
        between."""
        await self._due_consumer()

    async def _due_consumer(self) -> DurablePull:
        return await durable_consumer(
            self.bus,
            TRIGGERS.name,
            evaluator_due_consumer(self.partition),
            subjects.due_of(self.partition),
            new_only=True,
            on_recreated=self._missed_while_gone,
        )

    async def _missed_while_gone(self) -> None:
        """The due consumer was deleted and is created again for new messages only: what came while it
        was gone is caught by evaluating everything, as at start."""
        await self.sweep("consumer-recreated")

    async def sweep(self, trigger: str) -> None:
        """Evaluate every CertCheck and release every Secret nobody covers (start-up and resync), each
        from scratch: what evaluations kept to start the next from is dropped, so that the safety net
        does not rest on it."""
        effects = Effects(
            evaluate=set(self.view.all_certchecks()), released=set(self.view.uncovered_annotated())
        )
        # What the view applied until now is covered by evaluating everything from it, but for the
        # CertChecks deleted, which the sweep no longer sees.
        self._changes = Effects(removed=self._changes.removed)
        for key in effects.evaluate:
            entry = self.view.certcheck(key)
            if entry is not None:
                entry.take()
        self._scheduled.clear()
        log.info("full evaluation (%s) of %d CertChecks", trigger, len(effects.evaluate))
        await self.act(effects, trigger)
        sweeps.labels(trigger).inc()

    def _applied(self, seq: int, effects: Effects) -> None:
        """The view applied a message: what it asks for is done with the next evaluations."""
        for key in effects.statuses:
            entry = self.view.certcheck(key)
            if entry is not None:
                self._statuses.came_back(key, entry.spec.uid, entry.observed)
        if effects.evaluate or effects.removed or effects.released or effects.annotated:
            self._changes.merge(effects)
            self._changed.set()

    def _refused(self, msg: Msg, reason: str) -> None:
        if len(self._refused_messages) < MAX_REFUSED_KEPT:
            self._refused_messages.append((msg, reason))
            self._changed.set()

    @property
    def changes_waiting(self) -> bool:
        """Whether object messages were received (or are known to be on their way) and not acted on."""
        return bool(self._changed.is_set() or self._acting or self.follower.buffered or self.follower.behind)

    async def work_objects(self) -> None:
        """Act on what the messages the view applied ask for, all that came since the last time at once.
        Nothing here is durable, and needs not be: a process that dies before acting leaves it to its
        successor's start-up evaluation of everything (and a failed publish is tried again)."""
        failures = 0
        while True:
            await self._changed.wait()
            self._changed.clear()
            await self._dead_letter_refused()
            effects, self._changes = self._changes, Effects()
            effects.evaluate |= self._annotations_to_put_back(effects.annotated, utcnow())
            effects.evaluate |= await self._statuses_to_put_back()
            self._acting = True
            try:
                await self.act(effects, "change")
            except Exception as exc:
                effects.merge(self._changes)  # the later ones after: removals stay in order
                self._changes = effects
                failures += 1
                delay = backoff(failures, RETRY_CAP_SECONDS)
                log.warning("acting on object changes failed, again in %.1fs: %s", delay, exc)
                self._changed.set()
                await asyncio.sleep(delay)
                continue
            finally:
                self._acting = False
            failures = 0
            self._note_echoes(effects.annotated)
            if not self.changes_waiting:  # nothing more came meanwhile, nor is on its way
                self._acting = True
                try:
                    await self.refresh_echoed()
                finally:
                    self._acting = False

    async def _dead_letter_refused(self) -> None:
        """Park each object message the view could not apply, once: one parked before (by this
        partition's holder before a restart) is found in the dead-letter stream and left."""
        while self._refused_messages:
            msg, reason = self._refused_messages[0]
            seq = msg.metadata.sequence.stream
            try:
                if not await self._parked_already(msg.subject, seq):
                    await park(self.bus, msg.subject, msg.data, reason, "undecodable", seq)
            except Exception as exc:  # the bus unreachable: tried again later, change or not
                self._park_failures += 1
                delay = backoff(self._park_failures, RETRY_CAP_SECONDS)
                log.warning("dead-lettering object message %d failed, again in %.1fs: %s", seq, delay, exc)
                asyncio.get_running_loop().call_later(delay, self._changed.set)
                return
            self._park_failures = 0
            self._refused_messages.pop(0)

    async def _parked_already(self, subject: str, seq: int) -> bool:
        try:
            last = await self.bus.js.get_last_msg(DEADLETTER.name, subjects.deadletter_subject(subject))
        except NotFoundError:
            return False
        return (last.headers or {}).get(HDR_DEAD_STREAM_SEQ) == str(seq)

    def _note_echoes(self, annotated: Iterable[SecretKey]) -> None:
        for namespace, name in annotated:
            entry = self.view.secret((namespace, name))
            if entry is not None:
                self._echoed.update((namespace, certcheck) for certcheck in entry.covered_by)

    async def refresh_echoed(self) -> None:
        """Evaluate the CertChecks that many annotations came back to since their last evaluation (with
        nothing waiting: their changes are due to no one), so that the next change evaluates few."""
        echoed, self._echoed = self._echoed, set()
        due = {key for key in echoed if self.view.pending_changes(key) >= REFRESH_AFTER_CHANGES}
        if not due:
            return
        try:
            await self.act(Effects(evaluate=due), "refresh")
        except Exception as exc:  # nothing is lost: the next change or resync evaluates them
            log.warning("evaluating %d CertChecks whose annotations came back: %s", len(due), exc)

    def _annotations_to_put_back(self, annotated: Iterable[SecretKey], now: datetime) -> set[CertCheckKey]:
        """The CertChecks to evaluate again because a Secret's annotations no longer say what they
        should (someone edited them by hand); certcheck's own writes coming back call for nothing."""
        wanted: set[CertCheckKey] = set()
        for namespace, name in annotated:
            entry = self.view.secret((namespace, name))
            if entry is None or not entry.covered_by:
                continue
            desired = core.desired_annotations(entry.view, self.view.coverage(namespace, name), now)
            if core.annotation_patch(entry.view, desired):
                wanted |= {(namespace, certcheck) for certcheck in entry.covered_by}
        return wanted

    async def _statuses_to_put_back(self) -> set[CertCheckKey]:
        """The CertChecks whose status, checked as due (statuswatch.py), is not what their last result
        told although the recorder applied that result: evaluated again, which writes it again. One the
        recorder has yet to apply is checked again later."""
        not_as_told: dict[CertCheckKey, tuple[int, str]] = {}  # the result's seq, the view's version
        for key, told in self._statuses.take_due().items():
            entry = self.view.certcheck(key)
            if entry is None or told.as_told(entry.spec.uid, entry.observed):
                if entry is not None:
                    self._statuses.confirmed(key, told)
                continue
            self._statuses.check_again(key, told)  # until it comes back as told
            not_as_told[key] = (told.seq, entry.spec.resource_version)
        marks = await asyncio.gather(*(self._recorder_applied(key) for key in not_as_told))
        wanted = {
            key
            for (key, (seq, seen)), mark in zip(not_as_told.items(), marks, strict=True)
            if mark.seq >= seq and not _not_seen_yet(mark.status_version, seen)
        }
        for key in sorted(wanted):
            statuses_put_back.inc()
            log.info("CertCheck %s/%s: its status is not what its last result told: written again", *key)
        return wanted

    async def _recorder_applied(self, key: CertCheckKey) -> AppliedMark:
        """What the recorder applied last for this CertCheck (sequence 0: nothing, or unknown)."""
        try:
            if self._recorder_marks is None:  # the recorder's bucket, read only
                self._recorder_marks = await self.bus.js.key_value(RECORDER_APPLIED_BUCKET)
            entry = await self._recorder_marks.get(subjects.applied_mark(subjects.result_subject(*key)))
            return AppliedMark.decode(entry.value)
        except (KeyNotFoundError, BucketNotFoundError):
            return AppliedMark(0)
        except Exception as exc:  # the bus unreachable, or a mark that is no number: looked at later
            log.warning("reading the recorder's mark for %s/%s: %r", *key, exc)
            return AppliedMark(0)

    async def work_due(self) -> None:
        sub = await self._due_consumer()
        while True:
            msgs = await fetch_batch(sub, BATCH, wait=FETCH_WAIT_SECONDS)
            due: dict[CertCheckKey, int] = {}
            settled = []
            for msg in msgs:
                fired = await decoded(self.bus, msg, due_decoder.decode, DUE_POLICY)
                if fired is None:
                    bad_messages.labels(TRIGGERS.name).inc()
                    continue
                refusal = due_refusal(msg.subject, fired)
                if refusal is not None:
                    bad_messages.labels(TRIGGERS.name).inc()
                    await dead_letter(self.bus, msg, f"refused due evaluation: {refusal}", "refused")
                    continue
                settled.append(msg)
                due_at = parse_rfc3339(fired.due_at)
                if due_at is not None:
                    schedule_lag.observe(max((utcnow() - due_at).total_seconds(), 0.0))
                key = (fired.namespace, fired.name)
                due[key] = max(due.get(key, 0), fired.attempt)
                self._scheduled.pop(key, None)  # it fired: nothing is pending any more
            if settled:
                await settle(self.bus, settled, self.act(Effects(evaluate=set(due)), "due", due), DUE_POLICY)

    async def start(self) -> None:
        """The start-up sweep, retried until it went through: a bus failure delays it, never ends it."""
        failures = 0
        while True:
            try:
                await self.sweep("start")
                return
            except Exception as exc:
                failures += 1
                delay = backoff(failures, 30.0)
                log.warning("start-up evaluation incomplete, again in %.0fs: %s", delay, exc)
                await asyncio.sleep(delay)

    async def resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval_seconds)
            try:
                await self.sweep("resync")
            except Exception as exc:  # the next resync (and every change) tries again
                log.warning("resync incomplete: %s", exc)

    # --- acting ---------------------------------------------------------------------------------

    async def act(
        self, effects: Effects, trigger: str, attempts: dict[CertCheckKey, int] | None = None
    ) -> None:
        """Publish what ``effects`` call for. Each CertCheck and Secret is its own unit: one that fails
        never keeps the others from being published; bus failures are raised after the rest was tried,
        so the batch is redelivered (every publish is a compare-and-set, so a repeat is harmless)."""
        now = utcnow()
        view_seq = self.view.seq
        failures: list[str] = []

        async def isolated(what: str, work: Awaitable[None]) -> None:
            try:
                await work
            except Exception as exc:
                log.warning("publishing for %s failed: %s", what, exc)
                failures.append(f"{what}: {exc!r}")

        for namespace, name, uid in effects.removed:
            await isolated(f"{namespace}/{name}", self._removed(namespace, name, uid, view_seq))
        for key in sorted(effects.evaluate):
            if self.view.certcheck(key) is not None:
                attempt = (attempts or {}).get(key, 0)
                await isolated("/".join(key), self.evaluate(key, now, view_seq, trigger, attempt))
        for namespace, name in sorted(effects.released):
            await isolated(f"Secret {namespace}/{name}", self._release(namespace, name, view_seq))
        if failures:
            raise PublishFailed(f"{len(failures)} publishes failed, first {failures[0]}")

    async def _removed(self, namespace: str, name: str, uid: str, view_seq: int) -> None:
        """Tell that the CertCheck is gone, unless its subject says so already (a view reading the
        stream again after a restart applies every deletion still in it); what follows the removal is
        done again either way, as it may not have been (telling what was told is harmless)."""
        subject = subjects.result_subject(namespace, name)
        last = await self._last_result(subject)
        removed = CertCheckRemoved(namespace=namespace, name=name, uid=uid, view_seq=view_seq)
        self._statuses.forget((namespace, name))
        if last.removed_uid == uid or await self.publish_result(
            subject, encoder.encode(removed), view_seq, last
        ):
            await (await self.lifecycle()).certcheck_removed(namespace, name, utcnow())
            await self.schedule((namespace, name), None, view_seq=view_seq)

    async def _tell_lifecycle(
        self, key: CertCheckKey, threshold_days: int, evaluation: core.Evaluation, now: datetime
    ) -> None:
        def exists(slot: Slot) -> bool:
            index = self.view.sources.get(slot.object_kind.lower())
            found = index.get(key[0], slot.object_name) if index else None
            return found is not None and found.view.uid == slot.object_uid

        gone = removal_reason(evaluation.selected_uids, exists)
        found = evaluation.found if evaluation.found is not None else found_slots(evaluation.certificates)
        lifecycle = await self.lifecycle()
        await lifecycle.after_evaluation(
            key[0], key[1], threshold_days, found, gone, now, evaluation.found_since
        )

    async def _release(self, namespace: str, name: str, view_seq: int) -> None:
        secret = self.view.secret((namespace, name))
        if secret is None or secret.covered_by:
            return
        patch = core.cleanup_patch(secret.view)
        if patch:
            message = AnnotationCleanup(view_seq=view_seq, patch=patch)
            await self.publish_result(
                subjects.cleanup_subject(namespace, name),
                encoder.encode(message),
                view_seq,
                ttl=CLEANUP_TTL_SECONDS,
            )

    def _evaluation(
        self, key: CertCheckKey, now: datetime, last: LastResult
    ) -> tuple[core.Evaluation, str | None, Callable[[], None] | None]:
        """The evaluation of one CertCheck, or, if evaluating it raised, the failure to record and why;
        and, for an evaluation that worked, how to keep what it built for the next one (to call once
        its result stood). It starts from what the last evaluation kept, when that still fits, and
        re-rates only what the view says changed since (services/evaluator/incremental.py)."""
        entry = self.view.certcheck(key)
        assert entry is not None
        told = last.result if last.result and last.result.uid == entry.spec.uid else None
        refresh = self.settings.status_refresh_seconds or self.settings.resync_interval_seconds
        refresh_after = timedelta(seconds=refresh)
        try:
            basis = core.Basis(
                now,
                self.settings.status_cap,
                refresh_after,
                told=told.status if told else None,
                told_patches=told.annotation_patches if told else (),
                reminders=reminder_offsets(entry.notification),
            )
            evaluation, keep = evaluate_in_view(self.view, key, basis)
            return evaluation, None, keep
        except Exception as exc:
            log.exception("evaluating CertCheck %s/%s failed", *key)
            error = describe(exc)
            failed_evaluations.inc()
            failed = core.failed_evaluation(entry.spec, entry.observed, error, now, refresh_after)
            return failed, error, None

    async def evaluate(
        self, key: CertCheckKey, now: datetime, view_seq: int, trigger: str, attempt: int = 0
    ) -> None:
        entry = self.view.certcheck(key)
        assert entry is not None
        subject = subjects.result_subject(*key)
        last = await self._last_result(subject)
        started = time.perf_counter()
        evaluation, error, keep = self._evaluation(key, now, last)
        evaluation_seconds.observe(time.perf_counter() - started)
        evaluations.labels(trigger).inc()
        result = EvaluationResult(
            namespace=key[0],
            name=key[1],
            uid=entry.spec.uid,
            generation=entry.spec.generation,
            evaluated_at=rfc3339(now),
            view_seq=view_seq,
            resource_version=entry.spec.resource_version,
            status=evaluation.status,
            status_changed=evaluation.status_changed,
            annotation_patches=evaluation.annotation_patches,
            next_due=rfc3339(evaluation.next_due) if evaluation.next_due else None,
            notification=entry.notification,
            threshold_days=entry.spec.threshold_days,
            notable=(
                notable_entries(evaluation.certificates, now)
                if error is None and entry.notification is not None and entry.notification.targets
                else None
            ),
        )
        # The Events first, on their own stream: a result superseded before the recorder applied it, or
        # one whose writes fail, never takes an Event that was due along with it.
        await self.publish_events(evaluation.events)
        result, payload = await self._fit(result)
        if not await self.publish_result(subject, payload, view_seq, last):
            trace(log, "evaluator", object_ref(*key, entry.spec.resource_version), "a newer result is there")
            return  # a newer evaluation owns the schedule
        self._remember_told(subject, result)
        if cluster_check_of(key[1]) is None:  # a ClusterCertCheck's share has no status of its own
            seq = self._published[subject][0]
            self._statuses.told(key, seq, result.uid, result.status, result.status_changed)
        if log.isEnabledFor(logging.DEBUG):
            self._trace(result, len(evaluation.events), trigger)
        if error is None:
            # After the result: facts are told only from an evaluation that stood (not a stale one);
            # a crash before this derives them again, under the same ids.
            await self._tell_lifecycle(key, entry.spec.threshold_days, evaluation, now)
            if keep is not None:
                # Its result stood and was told (telling reads what it keeps): the next evaluation
                # starts from what this one built.
                keep()
            await self.schedule(key, evaluation.next_due, view_seq=view_seq)
        elif attempt + 1 < MAX_EVALUATION_ATTEMPTS:
            retry_at = now + timedelta(seconds=min(RETRY_CAP_SECONDS, 2.0**attempt))
            await self.schedule(key, retry_at, attempt + 1, view_seq=view_seq)
        else:
            reason = f"evaluation failed {MAX_EVALUATION_ATTEMPTS} times, last: {error}"
            await park(self.bus, subjects.result_subject(*key), b"", reason, "evaluation-failed")
            await self.schedule(key, None, view_seq=view_seq)  # the next change or resync tries again

    @staticmethod
    def _trace(result: EvaluationResult, events: int, trigger: str) -> None:
        ref = object_ref(result.namespace, result.name, result.resource_version)
        trace(
            log,
            "evaluator",
            ref,
            "evaluated (%s, view message %d): status %s, %d Events, next due %s",
            trigger,
            result.view_seq,
            "to write" if result.status_changed else "unchanged",
            events,
            result.next_due,
        )
        for patch in result.annotation_patches:
            secret = object_ref(patch.namespace, patch.name, patch.resource_version)
            trace(
                log,
                "evaluator",
                secret,
                "Secret to annotate (in the result of %s): %s",
                ref,
                patch.annotations,
            )

    async def _fit(self, result: EvaluationResult) -> tuple[EvaluationResult, bytes]:
        """The result, within what the bus carries, and encoded: the annotation patches that do not fit
        (a CertCheck over thousands of Secrets not annotated yet) go out first, one message per Secret."""
        budget = self.bus.nc.max_payload - RESULT_HEADROOM_BYTES
        patches = result.annotation_patches
        if len(patches) <= FIT_WHOLE_UP_TO:
            payload = encoder.encode(result)
            if len(payload) <= budget:
                return result, payload
        # Many patches: encoded at once (one JSON document a line: a newline inside one is escaped),
        # measured, and laid into the payload as they are.
        encoded = encoder.encode_lines(patches).split(b"\n")[: len(patches)]
        room = budget - len(encoder.encode(msgspec.structs.replace(result, annotation_patches=[])))
        kept: list[AnnotationPatch] = []
        kept_encoded: list[msgspec.Raw] = []
        overflow: list[AnnotationPatch] = []
        for patch, raw in zip(patches, encoded, strict=True):
            if len(raw) + 1 <= room:
                kept.append(patch)
                kept_encoded.append(msgspec.Raw(raw))
                room -= len(raw) + 1
            else:
                overflow.append(patch)
        fitted = msgspec.structs.replace(result, annotation_patches=kept) if overflow else result
        payload = encoder.encode(msgspec.structs.replace(result, annotation_patches=kept_encoded))
        if not overflow:
            return fitted, payload
        log.info(
            "result of %s/%s split: %d annotation patches sent on their own",
            result.namespace,
            result.name,
            len(overflow),
        )
        for patch in overflow:
            subject = subjects.cleanup_subject(patch.namespace, patch.name)
            if self._overflow_sent_lately(subject, patch):
                continue
            message = AnnotationCleanup(view_seq=result.view_seq, patch=patch)
            cleanup = encoder.encode(message)
            if await self.publish_result(subject, cleanup, result.view_seq, ttl=CLEANUP_TTL_SECONDS):
                self._overflow_sent[subject] = (patch, self._published[subject][0], time.monotonic())
                self._overflow_sent.move_to_end(subject)
                if len(self._overflow_sent) > OVERFLOW_MEMORY:
                    self._overflow_sent.popitem(last=False)
        return fitted, payload

    def _overflow_sent_lately(self, subject: str, patch: AnnotationPatch) -> bool:
        """Whether this very patch went out on its own lately and is still the subject's last message."""
        sent = self._overflow_sent.get(subject)
        if sent is None:
            return False
        sent_patch, seq, at = sent
        last = self._published.get(subject)
        return (
            sent_patch == patch
            and last is not None
            and last[0] == seq
            and time.monotonic() - at < OVERFLOW_RESEND_SECONDS
        )

    async def publish_events(self, events: list[EventIntent]) -> None:
        """Queue each Event for the recorder, once per occurrence (the server drops a repeat of the same
        ``Nats-Msg-Id`` within its window; the recorder treats a later one as the duplicate it is)."""
        acks = [
            await publish_pipelined(
                self.bus,
                subjects.kube_event_subject(event.namespace, event.dedup_key),
                encoder.encode(event),
                {HDR_MSG_ID: f"{event.dedup_key}/{event.occurrence}"},
            )
            for event in events
        ]
        if acks:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await asyncio.gather(*acks)

    async def _last_result(self, subject: str) -> LastResult:
        """What the subject holds now: what this evaluator published there last, if it did (it is the
        only one publishing there while it holds the partition; if another did, the compare-and-set
        of the next publish fails and the subject is read), else the stream's last message."""
        mine = self._published.get(subject)
        if mine is not None:
            told = self._told.get(subject)
            if told is not None and told[0] == mine[0]:
                return LastResult(mine[0], mine[1], told[1])
            return _as_last(*mine)
        try:
            last = await self.bus.js.get_last_msg(RESULTS.name, subject)
        except NotFoundError:
            return LastResult(0, 0, None)
        return _as_last(last.seq or 0, int((last.headers or {}).get(HDR_VIEW_SEQ, "0")), last.data or b"")

    def _remember_told(self, subject: str, result: EvaluationResult) -> None:
        self._told[subject] = (self._published[subject][0], result)
        self._told.move_to_end(subject)
        if len(self._told) > TOLD_MEMORY:
            self._told.popitem(last=False)

    async def publish_result(
        self,
        subject: str,
        payload: bytes,
        view_seq: int,
        last: LastResult | None = None,
        ttl: float | None = None,
    ) -> bool:
        """Publish unless a result from a newer view is already there (compare-and-set per subject,
        against ``last`` when it was just read), to expire after ``ttl`` seconds if given. False when a
        newer one was there."""
        while True:
            last = last or await self._last_result(subject)
            if last.view_seq > view_seq:
                stale_results.inc()
                return False
            headers = {HDR_EXPECTED_LAST_SUBJECT_SEQ: str(last.seq), HDR_VIEW_SEQ: str(view_seq)}
            try:
                ack = await self.bus.js.publish(
                    subject, payload, stream=RESULTS.name, headers=_with_ttl(headers, ttl)
                )
            except APIError as exc:
                self._published.pop(subject, None)
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
                last = None
                continue
            self._published[subject] = (ack.seq, view_seq, payload)
            return True

    async def schedule(
        self, key: CertCheckKey, due: datetime | None, attempt: int = 0, view_seq: int | None = None
    ) -> None:
        """One pending schedule per CertCheck: replaced by the next due time, or cancelled, under the
        same compare-and-set as results: the schedule of an evaluation from a newer view is never
        replaced by an older one. A due time past what the bus can schedule is not scheduled (the
        resync evaluates such a CertCheck anyway). Cancelling publishes a plain message on the
        subject: nats-server drops the pending schedule, and the message keeps the view it came from."""
        subject = subjects.schedule_subject(self.partition, *key)
        view_seq = self.view.seq if view_seq is None else view_seq
        cancel = due is None or due >= SCHEDULE_HORIZON
        wanted = None if cancel else due
        if attempt == 0 and self._still_pending(key, wanted):
            return
        self._scheduled.pop(key, None)
        while True:
            try:
                last = await self.bus.js.get_last_msg(TRIGGERS.name, subject)
                last_seq = last.seq or 0
                last_headers = last.headers or {}
            except NotFoundError:
                last_seq, last_headers = 0, {}
            if int(last_headers.get(HDR_VIEW_SEQ, "0")) > view_seq:
                stale_results.inc()
                return
            if cancel and (last_seq == 0 or HDR_SCHEDULE not in last_headers):
                self._scheduled[key] = None
                return  # nothing pending
            headers = {HDR_EXPECTED_LAST_SUBJECT_SEQ: str(last_seq), HDR_VIEW_SEQ: str(view_seq)}
            payload = b""
            ttl: float | None = CANCEL_MARKER_TTL_SECONDS
            if due is not None and not cancel:
                due_at = rfc3339(due)
                headers[HDR_SCHEDULE] = f"@at {due_at}"
                headers[HDR_SCHEDULE_TARGET] = subjects.due_subject(self.partition, *key)
                payload = encoder.encode(Due(namespace=key[0], name=key[1], due_at=due_at, attempt=attempt))
                ttl = None
            try:
                await self.bus.js.publish(
                    subject, payload, stream=TRIGGERS.name, headers=_with_ttl(headers, ttl)
                )
            except APIError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
            else:
                if attempt == 0:
                    self._scheduled[key] = wanted
                return

    def _still_pending(self, key: CertCheckKey, due: datetime | None) -> bool:
        """Whether what this evaluator last left pending for ``key`` is ``due`` (None: nothing) and cannot
        have fired yet. Another replica writing the schedule meanwhile holds the partition only while
        this one is losing it; the start-up sweep and every resync read every schedule again."""
        if key not in self._scheduled or self._scheduled[key] != due:
            return False
        return due is None or due - utcnow() > PENDING_MARGIN
