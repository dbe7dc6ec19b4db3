"""Recording fakes of what the consume loop touches: messages, a pull subscription and JetStream."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


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
