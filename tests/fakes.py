"""In-memory stand-ins for the adapters' collaborators: JetStream messages, a pull subscription and
the dead-letter publish (the consume loop's), a KV bucket with revisions and compare-and-set,
notification channels that record what they were asked to send, a Secret reader and a Kubernetes writer
that record what they were asked to do."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from schemas.messages import (
    EventIntent,
    ExpiryNotification,
    NotificationFailure,
    SecretKeyRef,
    encoder,
)
from services.notifier.channels import CredentialRef, Credentials, DeliveryError
from services.notifier.channels.webhook import WebhookTarget


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    revision: int


class FakeKeyValue:
    """A KV bucket: one revision counter for the bucket, `update` only over the latest revision, `create`
    only of a key that is not there. Each call yields to the event loop first, as a round trip does, so
    coroutines using it interleave. `before_write`, when set, runs once before the next create/update:
    the place to let another replica write in between."""

    def __init__(self) -> None:
        self.entries: dict[str, KvEntry] = {}
        self.revision = 0
        self.conflicts = 0  # writes refused for a stale revision
        self.before_write: Callable[[], Awaitable[object]] | None = None

    async def get(self, key: str) -> KvEntry:
        await asyncio.sleep(0)
        if key not in self.entries:
            raise KeyNotFoundError
        return self.entries[key]

    async def create(self, key: str, value: bytes) -> int:
        await self._before_write()
        if key in self.entries:
            self.conflicts += 1
            raise KeyWrongLastSequenceError
        return self._put(key, value)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        await self._before_write()
        current = self.entries.get(key)
        if current is None or current.revision != last:
            self.conflicts += 1
            raise KeyWrongLastSequenceError
        return self._put(key, value)

    async def put(self, key: str, value: bytes) -> int:
        await self._before_write()
        return self._put(key, value)

    async def purge(self, key: str) -> None:
        await asyncio.sleep(0)
        self.entries.pop(key, None)

    async def delete(self, key: str) -> None:
        await self.purge(key)

    async def _before_write(self) -> None:
        await asyncio.sleep(0)
        hook, self.before_write = self.before_write, None
        if hook is not None:
            await hook()

    def _put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.entries[key] = KvEntry(key, value, self.revision)
        return self.revision


@dataclass(frozen=True)
class Sent:
    delivery_id: str
    notification: ExpiryNotification
    credentials: Credentials


class RecordingChannel:
    """A channel selected by the `webhook` field: it records each send and fails as scripted (each
    scripted error is raised by one send, in order; then sends succeed)."""

    name = "recording"
    field = "webhook"
    settings_type = WebhookTarget
    defaults: tuple[tuple[str, object], ...] = ()

    def __init__(self, *failures: DeliveryError) -> None:
        self.failures: deque[DeliveryError] = deque(failures)
        self.sent: list[Sent] = []  # every attempt, failed or not
        self._lock = threading.Lock()  # sends run in the notifier's threads

    def credentials(self, config: WebhookTarget) -> list[CredentialRef]:
        return [config.signing_secret_ref] if config.signing_secret_ref else []

    def render(self, config: WebhookTarget, notification: ExpiryNotification) -> bytes:
        return encoder.encode(notification)

    def send(self, config: WebhookTarget, body: bytes, delivery_id: str, credentials: Credentials) -> None:
        with self._lock:
            notification = msgspec.json.decode(body, type=ExpiryNotification)
            self.sent.append(Sent(delivery_id, notification, credentials))
            if self.failures:
                raise self.failures.popleft()

    @property
    def delivery_ids(self) -> list[str]:
        return [sent.delivery_id for sent in self.sent]


@dataclass
class FakeSecretReader:
    values_by_name: dict[str, dict[str, bytes]] = field(default_factory=dict)
    reads: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)

    def values(self, namespace: str, name: str) -> dict[str, bytes]:
        self.reads.append((namespace, name))
        if name not in self.values_by_name:
            raise DeliveryError(f"Secret {namespace}/{name} not found", True)
        return self.values_by_name[name]

    def value(self, namespace: str, name: str, key: str) -> bytes:
        values = self.values(namespace, name)
        if key not in values:
            raise DeliveryError(f"key {key} not found in Secret {namespace}/{name}", True)
        return values[key]

    def holds(self, ref: SecretKeyRef, value: bytes) -> None:
        self.values_by_name.setdefault(ref.name, {})[ref.key] = value


@dataclass
class RecordingWriter:
    """What the notifier writes to Kubernetes: the failures on the CertCheck's status, and Events."""

    failures: list[list[NotificationFailure]] = field(default_factory=list)
    events: list[EventIntent] = field(default_factory=list)

    def patch_notification_failures(
        self, namespace: str, name: str, uid: str, failures: list[NotificationFailure]
    ) -> None:
        self.failures.append(failures)

    def emit_event(self, intent: EventIntent) -> str:
        self.events.append(intent)
        return intent.dedup_key


@dataclass
class FakeMsg:
    subject: str
    data: bytes
    seq: int = 1
    delivered: int = 1  # how often JetStream delivered it, this time included
    acked: bool = False
    naked: bool = False
    nak_delay: float | None = None
    termed: bool = False
    progress: int = 0  # in_progress calls
    pending: int = 0  # how many more messages the consumer holds, as JetStream tells with a delivery

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(
            sequence=SimpleNamespace(stream=self.seq), num_delivered=self.delivered, num_pending=self.pending
        )

    @property
    def is_acked(self) -> bool:
        return self.acked or self.naked or self.termed

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay: float | None = None) -> None:
        self.naked, self.nak_delay = True, delay

    async def term(self) -> None:
        self.termed = True

    async def in_progress(self) -> None:
        self.progress += 1


@dataclass
class FakeJetStream:
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.published.append((subject, data, headers or {}))


@dataclass
class FakeBus:
    js: FakeJetStream = field(default_factory=FakeJetStream)

    def dead_letters(self) -> list[tuple[str, str]]:
        """(subject, reason) of each message published to the dead-letter stream."""
        return [(s, h.get("Certcheck-Dead-Reason", "")) for s, _, h in self.js.published]


class FakeSubscription:
    """Hands out the batches it was given: the first message of a batch tells how many follow, so
    ``fetch_batch`` takes the rest at once; once all are handed out, a fetch waits for ever."""

    def __init__(self, *batches: list[FakeMsg]) -> None:
        self.batches = [list(batch) for batch in batches if batch]

    async def fetch(self, batch: int = 1, timeout: float | None = None) -> list[FakeMsg]:
        if not self.batches:
            await asyncio.Event().wait()
        current = self.batches[0]
        taken, rest = current[:batch], current[batch:]
        if rest:
            self.batches[0] = rest
            taken[-1].pending = len(rest)
        else:
            self.batches.pop(0)
        return taken
