"""ListWatch against a scripted API: one object that fails is that object's alone, a passing failure
resumes the watch from before the object, and watch errors the server cannot recover from re-list."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from services.watcher import listwatch
from services.watcher.extract import RawSecret
from services.watcher.listwatch import ListWatch, RetryLater, Sink


@dataclass
class Response:
    data: bytes = b""
    lines: list[bytes] = field(default_factory=list)

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        return iter(self.lines)

    def release_conn(self) -> None:
        pass


def item(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}", "resourceVersion": rv}}


def page(rv: str, *items: dict[str, Any]) -> Response:
    return Response(data=json.dumps({"metadata": {"resourceVersion": rv}, "items": list(items)}).encode())


def events(*pairs: tuple[str, dict[str, Any]]) -> Response:
    return Response(lines=[json.dumps({"type": t, "object": o}).encode() + b"\n" for t, o in pairs])


@dataclass
class Script:
    """Answers each call with the next entry (a Response, or an exception to raise); records the calls."""

    answers: list[Response | Exception]
    calls: list[dict[str, Any]] = field(default_factory=list)
    watch: ListWatch[RawSecret] | None = None

    def __call__(self, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if not self.answers:
            assert self.watch is not None
            self.watch.stop()
            raise RuntimeError("script done")
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def kinds(self) -> list[str]:
        return [f"watch@{c['resource_version']}" if c.get("watch") else "list" for c in self.calls]


def run(
    script: Script, upsert: Callable[[RawSecret], None], resume_from: str | None = None, relist: bool = False
) -> None:
    watch = ListWatch(
        "secrets",
        script,
        RawSecret,
        key=lambda s: (s.metadata.namespace, s.metadata.name),
        sink=Sink(upsert=upsert, delete=upsert, listed=lambda keys: None, progress=lambda rv: None),
        resume_from=resume_from,
    )
    script.watch = watch
    if relist:
        watch.request_relist()
    watch._run()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listwatch.random, "uniform", lambda a, b: 0.0)


def test_an_object_the_sink_fails_on_is_skipped_and_the_others_are_delivered() -> None:
    seen: list[str] = []

    def upsert(secret: RawSecret) -> None:
        if secret.metadata.name == "bad":
            raise ValueError("a bug met by this object only")
        seen.append(secret.metadata.name)

    script = Script(
        [page("10", item("a", "1"), item("bad", "2"), item("c", "3")), events(("ADDED", item("d", "11")))]
    )
    run(script, upsert)
    assert seen == ["a", "c", "d"]


def test_a_passing_failure_resumes_the_watch_from_before_the_object_so_it_is_delivered_again() -> None:
    seen: list[str] = []
    refused: list[str] = []

    def upsert(secret: RawSecret) -> None:
        if secret.metadata.name == "b" and not refused:
            refused.append("b")
            raise RetryLater("password Secret unreadable for now")
        seen.append(secret.metadata.name)

    script = Script(
        [
            events(("ADDED", item("a", "11")), ("ADDED", item("b", "12"))),
            events(("ADDED", item("b", "12"))),
        ]
    )
    run(script, upsert, resume_from="10")
    assert script.kinds()[:2] == ["watch@10", "watch@11"]
    assert seen == ["a", "b"]


def test_a_relist_that_fails_is_retried_as_a_list_not_dropped_for_a_watch() -> None:
    script = Script([ApiException(status=500), page("20", item("a", "21"))])
    run(script, lambda s: None, resume_from="5", relist=True)
    assert script.kinds()[:3] == ["list", "list", "watch@20"]


@pytest.mark.parametrize(
    "failure",
    [
        events(("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})),
        ApiException(status=410, reason="Gone"),
        events(
            (
                "ERROR",
                {
                    "kind": "Status",
                    "code": 504,
                    "reason": "Timeout",
                    "message": "Too large resource version: 99999, current: 12",
                },
            )
        ),
    ],
    ids=["410 event", "410 response", "too large resource version"],
)
def test_a_watch_the_server_cannot_serve_from_its_resource_version_starts_over_with_a_list(
    failure: Any,
) -> None:
    script = Script([failure, page("12", item("a", "1"))])
    run(script, lambda s: None, resume_from="99999")
    assert script.kinds()[:2] == ["watch@99999", "list"]
