"""The raw requests that replace the generated client's API classes: the query a list or watch sends,
its timeouts, and errors raised as the generated client raises them."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from services.common.kube import as_timeout, collection, request


@dataclass
class _Response:
    status: int
    data: bytes = b""
    reason: str = ""
    released: bool = False

    def release_conn(self) -> None:
        self.released = True


@dataclass
class _Pool:
    answer: _Response
    calls: list[dict[str, Any]] = field(default_factory=list)

    def request(self, method: str, url: str, **kwargs: Any) -> _Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        return self.answer


def _api(answer: _Response) -> tuple[client.ApiClient, _Pool]:
    configuration = client.Configuration(host="https://kube.test")
    configuration.proxy = "http://proxy.test:3128"  # what only urllib3's pool reaches (kube_http.supported)
    configuration.api_key = {"authorization": "token"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    api = client.ApiClient(configuration)
    pool = _Pool(answer)
    api.rest_client.pool_manager = pool  # type: ignore[assignment]
    return api, pool


def test_a_watch_waits_for_reads_as_long_as_asked_with_no_total_limit() -> None:
    timeout = as_timeout((10, 330))
    assert (timeout.connect_timeout, timeout.read_timeout, timeout.total) == (10, 330, None)


def test_a_watch_sends_the_generated_clients_arguments_as_query_parameters() -> None:
    api, pool = _api(_Response(200))
    watch = collection(api, "/api/v1/secrets", field_selector="type=kubernetes.io/tls")
    response = watch(
        watch=True,
        resource_version="42",
        allow_watch_bookmarks=True,
        timeout_seconds=300,
        _preload_content=False,
        _request_timeout=(10, 330),
    )
    assert response is pool.answer and not pool.answer.released  # the caller streams it
    call = pool.calls[0]
    url = urllib.parse.urlsplit(call["url"])
    assert (call["method"], url.netloc, url.path) == ("GET", "kube.test", "/api/v1/secrets")
    assert dict(urllib.parse.parse_qsl(url.query)) == {
        "fieldSelector": "type=kubernetes.io/tls",
        "watch": "true",
        "resourceVersion": "42",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
    }
    assert call["headers"]["authorization"] == "Bearer token"
    assert call["preload_content"] is False
    assert isinstance(call["timeout"], urllib3.Timeout) and call["timeout"].read_timeout == 330


def test_a_list_page_leaves_out_what_is_not_set() -> None:
    api, pool = _api(_Response(200))
    collection(api, "/api/v1/namespaces")(limit=500, _continue=None, _preload_content=False)
    assert urllib.parse.urlsplit(pool.calls[0]["url"]).query == "limit=500"


def test_an_error_status_raises_as_the_generated_client_does_and_frees_the_connection() -> None:
    answer = _Response(410, b'{"reason":"Expired"}', "Gone")
    api, _ = _api(answer)
    with pytest.raises(ApiException) as raised:
        collection(api, "/api/v1/secrets")(watch=True)
    assert (raised.value.status, raised.value.reason, raised.value.body) == (
        410,
        "Gone",
        '{"reason":"Expired"}',
    )
    assert answer.released


def test_a_request_through_urllib3_reads_the_whole_answer_and_frees_the_connection() -> None:
    answer = _Response(404, b"not found")
    api, pool = _api(answer)
    assert request(api, "GET", "/api/v1/namespaces/n/secrets/s") == (404, b"not found")
    assert answer.released and pool.calls[0]["body"] is None
