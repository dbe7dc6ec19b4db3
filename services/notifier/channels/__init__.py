"""Notification channels as plug-ins: one module per kind of receiver (slack.py, webhook.py, ...).

A channel module defines `channel(settings) -> Channel`. The registry finds every module of this package
whose name does not start with an underscore, and maps the NotificationTarget field each channel reads
(`slack`, `webhook`) to it: a target is sent through the channel whose field it sets. docs/notifications.md
("Adding a channel") says what a new module must provide.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import msgspec

from schemas.messages import TARGET_FIELDS, ExpiryNotification, NotificationTarget, SecretKeyRef, SecretRef
from services.common.settings import Settings

# A channel's settings on a target (SlackTarget, WebhookTarget, ...).
ConfigT_contra = TypeVar("ConfigT_contra", contravariant=True)

CredentialRef = SecretKeyRef | SecretRef  # one key of a Secret, or every key of it


@dataclass
class DeliveryError(Exception):
    """A delivery that failed: why (never quoting a credential), whether trying again can help, and
    when the receiver asked to be tried again (Retry-After, seconds)."""

    reason: str
    retryable: bool
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Credentials:
    """The Secret values a channel asked for, read from the CertCheck's namespace by the notifier."""

    keys: Mapping[SecretKeyRef, bytes] = field(default_factory=dict)
    secrets: Mapping[SecretRef, Mapping[str, bytes]] = field(default_factory=dict)

    def value(self, ref: SecretKeyRef) -> bytes:
        return self.keys[ref]

    def values(self, ref: SecretRef) -> Mapping[str, bytes]:
        return self.secrets[ref]


class Channel(Protocol[ConfigT_contra]):
    """One kind of receiver. `render` is pure; `send` blocks (the notifier runs it in a thread) and
    raises DeliveryError for a failure it understands (any other exception is told by its type only)."""

    @property
    def name(self) -> str:
        """The channel's name in metrics and logs."""
        ...

    @property
    def field(self) -> str:
        """The field of a target in the CertCheck that selects this channel and holds its settings."""
        ...

    @property
    def settings_type(self) -> type[Any]:
        """What its settings are read into (a msgspec struct, camelCase as in the CRD)."""
        ...

    @property
    def defaults(self) -> tuple[tuple[str, Any], ...]:
        """NotificationTarget fields it needs set when a target leaves them unset (Alertmanager: resolved
        notices, and repeats before its alerts would time out)."""
        ...

    def credentials(self, config: ConfigT_contra) -> list[CredentialRef]:
        """The Secrets (in the CertCheck's namespace) to read before sending."""
        ...

    def render(self, config: ConfigT_contra, notification: ExpiryNotification) -> bytes:
        """The body to send: the same for every attempt of one delivery."""
        ...

    def send(self, config: ConfigT_contra, body: bytes, delivery_id: str, credentials: Credentials) -> None:
        """Deliver the body; raise DeliveryError when that failed."""
        ...


@dataclass(frozen=True)
class Selected:
    channel: Channel[Any]
    config: Any  # the target's settings for that channel


@dataclass(frozen=True)
class Registry:
    by_field: Mapping[str, Channel[Any]]  # NotificationTarget field -> the channel it selects

    def find(self, target: NotificationTarget) -> Selected | DeliveryError:
        """The channel a target names, with its settings read; or why it cannot be sent (a retry
        cannot fix that)."""
        for name, channel in self.by_field.items():
            settings = target.channels.get(name)
            if settings is None:
                continue
            try:
                return Selected(channel, msgspec.convert(settings, channel.settings_type))
            except msgspec.ValidationError as exc:
                return DeliveryError(
                    f"the {name} settings of target {target.name} are not valid: {exc}", False
                )
        return DeliveryError("target names no channel (one of " + ", ".join(self.by_field) + ")", False)


def effective(registry: Registry, target: NotificationTarget) -> NotificationTarget:
    """The target with its channel's defaults where it leaves them unset."""
    selected = next((c for name, c in registry.by_field.items() if name in target.channels), None)
    unset = {
        name: value for name, value in (selected.defaults if selected else ()) if not getattr(target, name)
    }
    return msgspec.structs.replace(target, **unset) if unset else target


def load(settings: Settings) -> Registry:
    """Every channel module of this package, by the target field that selects it (in module order)."""
    channels: dict[str, Channel[Any]] = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda found: found.name):
        if module.name.startswith("_"):
            continue  # helpers shared by channels, not channels
        made: Channel[Any] = importlib.import_module(f"{__name__}.{module.name}").channel(settings)
        if made.field in channels or made.field in TARGET_FIELDS:
            raise ValueError(f"channel {module.name}: field {made.field!r} is taken")
        channels[made.field] = made
    return Registry(channels)
