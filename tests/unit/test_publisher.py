"""The watcher's publisher: unique tombstones, publishes retried until acknowledged, progress never saved
past a publish that did not land, and objects too large for the bus cut down. The bus is a fake here;
tests/e2e/test_restarts.py runs the same paths against nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.messages import CertCheckObserved, CertSource, SecretObserved, object_decoder
from schemas.streams import HDR_DIGEST, HDR_MSG_ID
from services.common.bus import Bus
from services.watcher.publisher import TOMBSTONE, Delete, Listed, Progress, Published, Publisher, Upsert
from tests import subjects as test_subjects


@dataclass
class FakeNats:
    max_payload: int = 1 << 20


@dataclass
class FakeJetStream:
    sent: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    _publish_async_futures: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    _publish_async_pending_semaphore: asyncio.Semaphore = field(default_factory=asyncio.Semaphore)
    refuse: bool = False

    async def publish_async(self, subject: str, payload: bytes, headers: Any = None, **_: Any) -> Any:
        if self.refuse:
            raise ConnectionError("not connected")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((subject, payload, dict(headers)))
        self.futures.append(future)
        return future

    def ack_all(self) -> None:
        for future in self.futures:
            if not future.done():
                future.set_result(None)


@dataclass
class FakeKeyValue:
    values: dict[str, bytes] = field(default_factory=dict)

    async def put(self, key: str, value: bytes) -> None:
        self.values[key] = value


def secret(name: str, labels: dict[str, str] | None = None, rv: str = "1", pem: str = "x") -> SecretObserved:
    return SecretObserved(
        namespace="ns",
        name=name,
        uid=f"uid-{name}",
        resource_version=rv,
        type="kubernetes.io/tls",
        labels=labels or {"app": "a"},
        sources=[CertSource("tls.crt", pem=[pem])],
    )


def run(
    test: Callable[[Publisher, FakeJetStream, FakeKeyValue], Awaitable[None]],
    ack_timeout: float = 30.0,
    **known: Published,
) -> None:
    async def main() -> None:
        js, kv = FakeJetStream(), FakeKeyValue()
        bus = Bus(nc=FakeNats(), js=js)  # type: ignore[arg-type]
        objects = {("secret", "ns", k): v for k, v in known.items()}
        publisher = Publisher(bus, objects, kv, ack_timeout=ack_timeout)  # type: ignore[arg-type]
        await test(publisher, js, kv)

    asyncio.run(main())


async def drain(publisher: Publisher, seconds: float = 0.0) -> None:
    """Handle everything queued (including retries coming due within ``seconds``)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        while not publisher.queue.empty():
            await publisher._handle(publisher.queue.get_nowait())
        if asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(0.02)
        publisher._expire(time.monotonic())


def test_every_object_a_relist_finds_gone_gets_its_own_tombstone() -> None:
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        await publisher._handle(Listed("secret", set(), "secret.all"))
        ids = [headers[HDR_MSG_ID] for _, _, headers in js.sent]
        assert len(ids) == 50 and len(set(ids)) == 50

    run(test, **{f"s{i}": Published(f"d{i}", "secret.all", str(100 + i)) for i in range(50)})


def test_a_publish_that_fails_is_sent_again_until_acknowledged_and_only_then_progress_is_saved() -> None:
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        js.refuse = True
        await publisher._handle(Upsert("secret", secret("a", rv="5"), "secret.all"))
        await publisher._handle(Progress("secret", "5", "secret.all"))
        await publisher._save_progress()
        assert kv.values == {} and publisher.pending("secret.all") == 1
        js.refuse = False
        await drain(publisher, 0.5)
        assert [s for s, _, _ in js.sent] == [test_subjects.object_subject("secret", "ns", "a")]
        await publisher._save_progress()
        assert kv.values == {}  # sent, not yet acknowledged
        js.ack_all()
        await asyncio.sleep(0)
        await publisher._save_progress()
        assert kv.values == {"rv.secret.all": b"5"}

    run(test)


def test_an_acknowledgement_that_never_comes_times_out_and_the_same_message_is_sent_again() -> None:
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        await publisher._handle(Upsert("secret", secret("a", rv="5"), "secret.all"))
        await drain(publisher, 1.0)
        assert len(js.sent) >= 2
        assert len({headers[HDR_MSG_ID] for _, _, headers in js.sent}) == 1  # the server drops repeats
        assert js.futures[0].cancelled()  # its pipeline slot is freed

    run(test, ack_timeout=0.2)


def test_a_retry_never_overwrites_a_newer_change_of_the_same_object() -> None:
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        js.refuse = True
        await publisher._handle(Upsert("secret", secret("a", rv="5", pem="old"), "secret.all"))
        js.refuse = False
        await publisher._handle(Upsert("secret", secret("a", rv="6", pem="new"), "secret.all"))
        js.ack_all()
        await drain(publisher, 0.5)
        js.ack_all()
        payloads = [object_decoder.decode(p) for _, p, _ in js.sent]
        assert [p.resource_version for p in payloads] == ["6"]  # type: ignore[union-attr]
        assert publisher.pending("secret.all") == 0

    run(test)


def test_progress_waits_for_the_oldest_unacknowledged_publish_of_its_scope_only() -> None:
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        await publisher._handle(Upsert("secret", secret("a", rv="5"), "secret.all"))
        await publisher._handle(Progress("secret", "5", "secret.all"))
        await publisher._handle(Upsert("secret", secret("b", rv="6"), "secret.all"))
        await publisher._handle(Progress("secret", "6", "secret.all"))
        await publisher._handle(Progress("certcheck", "9", "certcheck"))
        js.futures[1].set_result(None)  # b acknowledged, a not yet
        await asyncio.sleep(0)
        await publisher._save_progress()
        assert kv.values == {"rv.certcheck": b"9"}
        js.futures[0].set_result(None)
        await asyncio.sleep(0)
        await publisher._save_progress()
        assert kv.values["rv.secret.all"] == b"6"

    run(test)


def test_a_deletion_seen_by_the_watch_and_one_found_by_a_relist_never_share_a_message_id() -> None:
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        await publisher._handle(Delete("secret", "ns", "a", "uid-a", "50", "secret.all"))
        await publisher._handle(Upsert("secret", secret("a", rv="51"), "secret.all"))
        await publisher._handle(Listed("secret", set(), "secret.all"))
        ids = [headers[HDR_MSG_ID] for _, _, headers in js.sent]
        assert len(ids) == 3 and len(set(ids)) == 3

    run(test, a=Published("d", "secret.all", "40"))


def test_an_object_too_large_for_the_bus_is_published_without_its_certificates_and_counted() -> None:
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        huge = secret("big", pem="-" * (2 << 20))
        await publisher._handle(Upsert("secret", huge, "secret.all"))
        labels_only = secret("labels", labels={f"k{i}": "v" * 60 for i in range(20_000)})
        await publisher._handle(Upsert("secret", labels_only, "secret.all"))
        check = CertCheckObserved("ns", "c", "u", "1", 1, 30)
        await publisher._handle(Upsert("certcheck", check, "certcheck"))
        sent = {s.rsplit(".", 1)[1]: object_decoder.decode(p) for s, p, _ in js.sent}
        assert all(len(p) < (1 << 20) for _, p, _ in js.sent)
        big = sent["big"]
        assert isinstance(big, SecretObserved) and big.labels == {"app": "a"}
        assert big.sources[0].error and "too large" in big.sources[0].error
        assert sent["labels"].labels == {}  # type: ignore[union-attr]

    run(test)


def tombstoned(js: FakeJetStream) -> set[str]:
    return {subject.rsplit(".", 1)[1] for subject, _, headers in js.sent if headers[HDR_DIGEST] == TOMBSTONE}


def test_after_a_settings_change_an_object_one_scope_watched_come_survives_another_scopes_listing() -> None:
    # The Opaque watch listed before "fresh" was created, and its watch delivered it; the bundle watch
    # listed after. Neither LIST holds "fresh": it is still not gone (the flake of test_watch_settings).
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        done: list[bool] = []

        async def then() -> None:
            done.append(True)

        publisher.expect_full_listing({"secret": {"secret.Opaque", "secret.bundle"}}, then)
        await publisher._handle(Listed("secret", {("ns", "listed")}, "secret.Opaque"))
        await publisher._handle(Upsert("secret", secret("fresh", rv="7"), "secret.Opaque"))
        await publisher._handle(Listed("secret", set(), "secret.bundle"))
        assert tombstoned(js) == {"old"}
        js.ack_all()
        await drain(publisher, 0.5)
        assert done == [True]

    run(
        test,
        listed=Published("d1", "secret.all", "3"),  # published under the old scope, listed again
        old=Published("d2", "secret.all", "4"),  # under the old scope, no LIST has it: gone
    )


def test_after_a_settings_change_a_scope_tombstones_what_it_published_and_no_longer_lists() -> None:
    async def test(publisher: Publisher, js: FakeJetStream, kv: FakeKeyValue) -> None:
        publisher.expect_full_listing({"secret": {"secret.Opaque", "secret.bundle"}}, _nothing)
        await publisher._handle(Listed("secret", set(), "secret.Opaque"))
        assert tombstoned(js) == {"unlabelled"}  # at once: its own scope's LIST is the whole truth
        await publisher._handle(Listed("secret", set(), "secret.bundle"))
        assert tombstoned(js) == {"unlabelled"}

    run(test, unlabelled=Published("d1", "secret.Opaque", "3"))


async def _nothing() -> None:
    return None
