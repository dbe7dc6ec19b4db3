"""Kubernetes client set-up, shared by every service."""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

from kubernetes import client, config

CERTCHECK_GROUP = "certcheck.dev"
CERTCHECK_VERSION = "v1alpha1"
CERTCHECK_PLURAL = "certchecks"
MERGE_PATCH = "application/merge-patch+json"


def api_client(kubeconfig: str = "", pool_size: int = 16) -> client.ApiClient:
    """An ApiClient from a kubeconfig path, else in-cluster config, else ~/.kube/config."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
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
