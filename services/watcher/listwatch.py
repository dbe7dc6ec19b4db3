"""LIST then WATCH one resource, for ever: bookmarks, resume from the last resourceVersion, re-list on
410 Gone, reconnect with jittered backoff. Runs in a thread (the Kubernetes client is synchronous) and
hands what it sees to a sink.

Responses are decoded with msgspec straight from the raw bytes into structs holding only what certcheck
needs, page by page, so a LIST of tens of thousands of Secrets never sits in memory as client models.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

T = TypeVar("T")
RELIST_AFTER_FAILURES = 4  # consecutive watch failures after which the watch starts over with a LIST

watch_restarts = Counter(
    "certcheck_watch_restarts_total", "Watch (re)connections by resource and cause", ["resource", "cause"]
)
skipped_objects = Counter(
    "certcheck_watch_skipped_objects_total", "Objects skipped because they could not be read", ["resource"]
)
kube_connected = Gauge(
    "certcheck_kubernetes_connected", "1 while the watch of a resource is up", ["resource"]
)


class _ListMeta(msgspec.Struct):
    resourceVersion: str = ""
    continue_: str | None = msgspec.field(default=None, name="continue")


class _Status(msgspec.Struct):
    code: int = 0
    message: str = ""
    reason: str = ""


class _WatchHead(msgspec.Struct):
    type: str
    object: msgspec.Raw


class _BookmarkMeta(msgspec.Struct):
    resourceVersion: str = ""


class _Bookmark(msgspec.Struct):
    metadata: _BookmarkMeta


class _NamedMeta(msgspec.Struct):
    name: str = ""
    namespace: str = ""


class _Named(msgspec.Struct):
    metadata: _NamedMeta = msgspec.field(default_factory=_NamedMeta)


class GoneError(Exception):
    """The resourceVersion is too old: the watch must start over from a fresh LIST."""


class RelistError(Exception):
    """The server cannot serve a watch from this resourceVersion (e.g. "too large resource version",
    after an etcd restore): start over from a fresh LIST, after a backoff."""


class RetryLater(Exception):
    """Raised by a sink when handing an object over failed for a passing reason (the API server busy):
    the watch restarts from before that object, with backoff, so it is handed over again."""


@dataclass
class Sink(Generic[T]):
    """Where a ListWatch delivers: every object of a LIST, the end of a LIST, and each watch event."""

    upsert: Callable[[T], None]
    delete: Callable[[T], None]
    listed: Callable[[set[tuple[str, str]]], None]  # (namespace, name) of everything the LIST returned
    progress: Callable[[str], None]  # every change up to this resourceVersion has been handed over


ListCall = Callable[..., Any]


class ListWatch(Generic[T]):
    def __init__(
        self,
        resource: str,
        call: ListCall,
        item_type: type[T],
        key: Callable[[T], tuple[str, str]],
        sink: Sink[T],
        page_size: int = 500,
        watch_timeout_seconds: int = 300,
        resume_from: str | None = None,
    ) -> None:
        self.resource = resource
        self._call = call
        self._item_type = item_type
        self._key = key
        self._sink = sink
        self._page_size = page_size
        self._watch_timeout = watch_timeout_seconds
        self._list_decoder = msgspec.json.Decoder(_make_list_type(item_type))
        self._item_decoder = msgspec.json.Decoder(item_type)
        self._stop = threading.Event()
        self._relist = threading.Event()
        # Where a previous run stopped: watch from there; a LIST only if the server answers 410 Gone.
        self.resource_version: str | None = resume_from
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.resource}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def request_relist(self) -> None:
        """Start over with a LIST at the next opportunity (e.g. after the bus lost a publish)."""
        self._relist.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if self.resource_version is None or self._relist.is_set():
                    self._list()  # the request to re-list stands until a LIST went through
                    self._relist.clear()
                    watch_restarts.labels(self.resource, "list").inc()
                self._watch()
                failures = 0
            except GoneError:
                log.info("resourceVersion expired, re-listing", extra={"resource": self.resource})
                watch_restarts.labels(self.resource, "gone").inc()
                self.resource_version = None
            except Exception as exc:
                kube_connected.labels(self.resource).set(0)
                failures += 1
                if isinstance(exc, RelistError) or failures >= RELIST_AFTER_FAILURES:
                    self._relist.set()  # as client-go does: a watch that keeps failing starts over
                delay = min(30.0, 0.2 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)
                log.warning(
                    "watch failed, retrying in %.1fs: %s", delay, exc, extra={"resource": self.resource}
                )
                watch_restarts.labels(self.resource, "error").inc()
                self._stop.wait(delay)

    def _list(self) -> None:
        seen: set[tuple[str, str]] = set()
        continue_token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self._page_size, "_preload_content": False}
            if continue_token:
                kwargs["_continue"] = continue_token
            response = self._call(**kwargs)
            try:
                page = self._list_decoder.decode(response.data)
            finally:
                response.release_conn()
            for raw in page.items or []:
                item = self._decode_item(raw)
                if item is not None:
                    seen.add(self._key(item))
                    self._deliver(self._sink.upsert, item)
            continue_token = page.metadata.continue_
            if not continue_token:
                self.resource_version = page.metadata.resourceVersion
                break
        kube_connected.labels(self.resource).set(1)
        self._sink.listed(seen)
        self._sink.progress(self.resource_version)

    def _watch(self) -> None:
        try:
            response = self._call(
                watch=True,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _preload_content=False,
                _request_timeout=(10, self._watch_timeout + 30),
            )
        except ApiException as exc:
            _raise_watch_error(exc.status or 0, str(exc.reason or ""), str(exc.body or ""))
            raise
        kube_connected.labels(self.resource).set(1)
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set() or self._relist.is_set():
                    return
                self._handle(line)
        finally:
            response.release_conn()

    def _decode_item(self, raw: msgspec.Raw) -> T | None:
        """One object, or None (logged, counted) if it does not have the shape certcheck reads: a single
        odd object never stops the watch of all the others."""
        try:
            return self._item_decoder.decode(raw)
        except msgspec.ValidationError as exc:
            where = "?"
            try:
                meta = msgspec.json.decode(raw, type=_Named).metadata
                where = f"{meta.namespace}/{meta.name}"
            except msgspec.MsgspecError:
                pass
            log.error("skipping %s %s: %s", self.resource, where, exc, extra={"resource": self.resource})
            skipped_objects.labels(self.resource).inc()
            return None

    def _deliver(self, call: Callable[[T], None], item: T) -> None:
        """Hand one object to the sink. A failure that may pass is raised (the watch restarts from before
        the object); any other is that object's alone: logged, counted, and the others keep flowing."""
        try:
            call(item)
        except RetryLater:
            raise
        except Exception:
            meta = item.metadata  # type: ignore[attr-defined]
            log.exception(
                "skipping %s %s/%s",
                self.resource,
                meta.namespace,
                meta.name,
                extra={"resource": self.resource},
            )
            skipped_objects.labels(self.resource).inc()

    def _handle(self, line: str | bytes) -> None:
        head = msgspec.json.decode(line, type=_WatchHead)
        if head.type == "ERROR":
            status = msgspec.json.decode(head.object, type=_Status)
            _raise_watch_error(status.code, status.reason, status.message)
            raise RuntimeError(f"watch error {status.code} {status.reason}: {status.message}")
        if head.type == "BOOKMARK":
            self.resource_version = msgspec.json.decode(head.object, type=_Bookmark).metadata.resourceVersion
            self._sink.progress(self.resource_version)
            return
        item = self._decode_item(head.object)
        if item is None:
            self.resource_version = msgspec.json.decode(head.object, type=_Bookmark).metadata.resourceVersion
            return
        self._deliver(self._sink.delete if head.type == "DELETED" else self._sink.upsert, item)
        # Only once handed over: a RetryLater above resumes the watch from before this object.
        self.resource_version = item.metadata.resourceVersion  # type: ignore[attr-defined]
        self._sink.progress(self.resource_version)


def _raise_watch_error(code: int, reason: str, message: str) -> None:
    """Raise what a watch error means: 410 Gone re-lists now; a resourceVersion the server cannot serve
    ("too large resource version", 504) re-lists after a backoff."""
    if code == 410 or reason == "Expired" or reason == "Gone":
        raise GoneError(message)
    if "too large resource version" in message.lower() or "too large resource version" in reason.lower():
        raise RelistError(f"{code} {reason}: {message}")


def _make_list_type(item_type: type[T]) -> type[Any]:
    return msgspec.defstruct(
        f"{item_type.__name__}List",
        [
            ("metadata", _ListMeta, msgspec.field(default_factory=_ListMeta)),
            ("items", list[msgspec.Raw] | None, None),
        ],
    )
