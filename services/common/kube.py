"""Kubernetes client set-up, shared by every service."""

from __future__ import annotations

import math
import os
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import load_incluster_config

from services.common.kube_http import Connections, supported

CERTCHECK_GROUP = "certcheck.dev"
CERTCHECK_VERSION = "v1alpha1"
CERTCHECK_PLURAL = "certchecks"
MERGE_PATCH = "application/merge-patch+json"


def _headers(
    api: client.ApiClient, method: str, path: str, body: bytes | None, content_type: str
) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    api.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
    return headers


def _send(
    api: client.ApiClient,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "",
    timeout: float | tuple[float, float] = 30,
) -> urllib3.BaseHTTPResponse:
    return api.rest_client.pool_manager.request(
        method,
        api.configuration.host + path,
        body=body,
        headers=_headers(api, method, path, body, content_type),
        preload_content=False,
        timeout=as_timeout(timeout),
    )


def as_timeout(timeout: float | tuple[float, float]) -> urllib3.Timeout:
    """A timeout as the generated client takes it: seconds for connecting and for each read, or the two
    apart (a watch's reads wait up to its timeoutSeconds). Never a total: a watch lasts minutes."""
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    return urllib3.Timeout(connect=connect, read=read)


_connections: weakref.WeakKeyDictionary[client.ApiClient, Connections | None] = weakref.WeakKeyDictionary()
_connections_lock = threading.Lock()


def _connections_of(api: client.ApiClient) -> Connections | None:
    """The client's kept-alive connections (``kube_http``), or None where its configuration needs urllib3."""
    try:
        return _connections[api]
    except KeyError:
        with _connections_lock:
            if api not in _connections:
                configuration = api.configuration
                _connections[api] = Connections(configuration) if supported(configuration) else None
            return _connections[api]


def request(
    api: client.ApiClient, method: str, path: str, body: bytes | None = None, content_type: str = ""
) -> tuple[int, bytes]:
    """One request with the client's authentication, answered as its status and bytes: the generated API
    classes cost a process 20 MiB and half a second of CPU to import, and their models about 1 ms of
    CPU per request. It goes on a kept-alive connection of the calling thread (``kube_http``), or
    through the client's urllib3 pool where the configuration needs that (a proxy, say)."""
    connections = _connections_of(api)
    if connections is not None:
        return connections.request(method, path, body, _headers(api, method, path, body, content_type))
    response = _send(api, method, path, body, content_type)
    try:
        data = response.data  # read it all, or the connection cannot go back to the pool
    finally:
        response.release_conn()
    return response.status, data


def secret_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


def api_error(status: int, data: bytes) -> ApiException:
    """An error answer raised as the generated client raises it (its reason: the start of the body)."""
    return ApiException(status=status, reason=data[:300].decode(errors="replace"))


# The generated client's keyword arguments of a list or watch call, as query parameters.
_QUERY = {
    "limit": "limit",
    "_continue": "continue",
    "label_selector": "labelSelector",
    "field_selector": "fieldSelector",
    "watch": "watch",
    "resource_version": "resourceVersion",
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "timeout_seconds": "timeoutSeconds",
}


def collection(api: client.ApiClient, path: str, **fixed: Any) -> Callable[..., urllib3.BaseHTTPResponse]:
    """A LIST or WATCH of the collection at ``path`` (``/api/v1/secrets``), called as the generated
    client's ``list_*`` functions are with ``_preload_content=False``: the response unread, an
    ApiException for an error status."""

    def call(**kwargs: Any) -> urllib3.BaseHTTPResponse:
        arguments = {**fixed, **kwargs}
        arguments.pop("_preload_content", None)
        timeout = arguments.pop("_request_timeout", 60)
        query = {
            _QUERY[name]: str(value).lower() if isinstance(value, bool) else str(value)
            for name, value in arguments.items()
            if value is not None
        }
        response = _send(api, "GET", f"{path}?{urllib.parse.urlencode(query)}", timeout=timeout)
        if 200 <= response.status < 300:
            return response
        try:
            body = response.data
        finally:
            response.release_conn()
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body.decode(errors="replace")
        raise error

    return call


def api_client(kubeconfig: str = "", pool_size: int = 16) -> client.ApiClient:
    """An ApiClient from a kubeconfig path, else in-cluster config, else ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        # Imported only here: the kubeconfig loader brings requests, oauthlib and yaml (services/imports.py).
        from kubernetes.config.kube_config import load_kube_config

        load_kube_config(config_file=kubeconfig or None, client_configuration=configuration)
    else:
        load_incluster_config(client_configuration=configuration)
    # One pooled connection per writer thread, or urllib3 discards and reopens connections.
    configuration.connection_pool_maxsize = max(pool_size, 4)
    throttle_refresh(configuration)
    return client.ApiClient(configuration)


REFRESH_CHECK_SECONDS = 5.0


def throttle_refresh(configuration: client.Configuration) -> None:
    """Run the credentials' refresh hook at most every few seconds, not before every request.

    A kubeconfig's hook sets the whole configuration again at each call (the host setter reads every
    proxy variable of the environment): ~7% of the recorder's CPU. It only reloads a token once it
    has expired, which checking every few seconds still catches in time (kubeconfig and in-cluster
    tokens last minutes to an hour, and the API server answers an expired one with 401 anyway)."""
    last_check = -math.inf
    lock = threading.Lock()

    def refresh(target: client.Configuration) -> None:
        nonlocal last_check
        with lock:
            now = time.monotonic()
            if now - last_check < REFRESH_CHECK_SECONDS:
                return
            last_check = now
            wrapped[0](target)
            reinstalled = getattr(target, "refresh_api_key_hook", None)
            if reinstalled is not refresh and reinstalled is not None:  # the hook installs itself again
                wrapped[0] = reinstalled
                target.refresh_api_key_hook = refresh  # type: ignore[assignment]

    hook: Callable[[client.Configuration], None] | None = getattr(configuration, "refresh_api_key_hook", None)
    if hook is None:
        return
    wrapped = [hook]
    configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]
