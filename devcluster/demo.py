"""Demo objects for ``make up``: one CertCheck and three certificates (expired, expiring, healthy)."""

from __future__ import annotations

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.certs import expiring_in, tls_secret_data
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION

NAMESPACE = "demo"
DEMO_CERTS = {"expired-cert": -3, "expiring-cert": 10, "healthy-cert": 200}


def create_demo(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except ApiException as exc:
        if exc.status != 409:
            raise
    for name, days in DEMO_CERTS.items():
        cert, key = expiring_in(days, common_name=f"{name}.demo.test")
        secret = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels={"app": "demo"}),
            type="kubernetes.io/tls",
            data=tls_secret_data(cert, key),
        )
        try:
            core.create_namespaced_secret(NAMESPACE, secret)
        except ApiException as exc:
            if exc.status != 409:
                raise
    certcheck = {
        "apiVersion": f"{CERTCHECK_GROUP}/{CERTCHECK_VERSION}",
        "kind": "CertCheck",
        "metadata": {"name": "demo"},
        "spec": {"selector": {"matchLabels": {"app": "demo"}}, "threshold": 30},
    }
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            CERTCHECK_GROUP, CERTCHECK_VERSION, NAMESPACE, CERTCHECK_PLURAL, certcheck
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
