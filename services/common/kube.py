"""Kubernetes client set-up, shared by every service."""

from __future__ import annotations

import os

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
    return client.ApiClient(configuration)
