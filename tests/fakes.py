"""In-memory stand-ins for the notifier's adapters: a JetStream KV bucket with revisions and
compare-and-set, notification channels that record what they were asked to send, a Secret reader and a
Kubernetes writer that record what they were asked to do."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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

    async def purge(self, key: str) -> None:
        await asyncio.sleep(0)
        self.entries.pop(key, None)

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
