"""ClusterCertCheck, end to end: one object covers the Secrets of every namespace its namespaceSelector
selects (annotations, Events, a status summarising per namespace), follows namespaces as their labels
change, and reads the CA bundles of webhook configurations, APIServices and CRD conversion webhooks."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.stack import Stack
from schemas import annotations as ann
from schemas.messages import State
from schemas.streams import CLUSTER_SHARES_BUCKET
from services.common import bus as bus_mod
from services.common.kube import api_client
from services.common.kube_writer import KubeWriter
from services.domain.clusterchecks import share_name
from services.recorder.shares import ClusterStatuses
from tests import pki
from tests.conftest import CERTCHECK_GROUP, CERTCHECK_VERSION, Cluster, wait_for
from tests.e2e.test_metrics import scrape, series
from tests.sources import share_entry, share_result

PLURAL = "clustercertchecks"


class ClusterChecks:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.created: list[str] = []

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{CERTCHECK_GROUP}/{CERTCHECK_VERSION}",
            "kind": "ClusterCertCheck",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.cluster.custom.create_cluster_custom_object(CERTCHECK_GROUP, CERTCHECK_VERSION, PLURAL, body)
        self.created.append(name)

    def delete(self, name: str) -> None:
        self.cluster.custom.delete_cluster_custom_object(CERTCHECK_GROUP, CERTCHECK_VERSION, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        found = self.cluster.custom.get_cluster_custom_object(
            CERTCHECK_GROUP, CERTCHECK_VERSION, PLURAL, name
        )
        return found.get("status") or {}

    def wait_status(self, name: str, timeout: float = 30.0, **expected: Any) -> dict[str, Any]:
        wanted = ", ".join(f"{k}={v!r}" for k, v in expected.items())
        return wait_for(
            lambda: (s := self.status(name)) and all(s.get(k) == v for k, v in expected.items()) and s,
            timeout=timeout,
            what=f"status of ClusterCertCheck {name} with {wanted}",
        )

    def events(self, name: str) -> list[Any]:
        return [
            e
            for e in self.cluster.core.list_namespaced_event("default").items
            if e.involved_object.kind == "ClusterCertCheck" and e.involved_object.name == name
        ]


@pytest.fixture
def checks(cluster: Cluster) -> Iterator[ClusterChecks]:
    made = ClusterChecks(cluster)
    yield made
    for name in made.created:
        try:
            made.delete(name)
        except ApiException as exc:
            assert exc.status == 404


@pytest.fixture
def namespaces(cluster: Cluster) -> Iterator[list[str]]:
    made = [f"t-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    for name in made:
        cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield made
    for name in made:
        cluster.core.delete_namespace(name)


def label_namespace(cluster: Cluster, namespace: str, labels: dict[str, str | None]) -> None:
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": labels}})


def tls(cluster: Cluster, namespace: str, name: str, days: float) -> None:
    key = pki.ec_key()
    cert = pki.issue(f"{name}.test", key, days=days)
    cluster.create_tls_secret(namespace, name, pki.pem(cert), pki.key_pem(key), labels={"app": "web"})


def entry(status: dict[str, Any], **fields: Any) -> dict[str, Any] | None:
    return next(
        (e for e in status.get("certificates", []) if all(e.get(k) == v for k, v in fields.items())), None
    )


def test_a_cluster_check_covers_the_namespaces_it_selects_and_follows_their_labels(
    cluster: Cluster, checks: ClusterChecks, namespaces: list[str], stack: Stack
) -> None:
    team = uuid.uuid4().hex[:8]
    first, second, third = namespaces
    tls(cluster, first, "web", days=5)
    tls(cluster, second, "api", days=200)
    tls(cluster, third, "other", days=3)
    for namespace in (first, second):
        label_namespace(cluster, namespace, {"team": team})
    name = f"fleet-{team}"
    checks.create(
        name,
        {"namespaceSelector": {"matchLabels": {"team": team}}, "selector": {"matchLabels": {"app": "web"}}},
    )

    status = checks.wait_status(name, namespacesCount=2, targetCertsCount=2, expiringSoonCount=1)
    assert [n["namespace"] for n in status["namespaces"]] == [first, second]  # the most urgent first
    assert status["namespaces"][0]["expiringSoonCount"] == 1
    assert entry(status, namespace=first, name="web", state="ExpiringSoon")
    assert status["earliestCertificate"] == f"{first}/web/tls.crt[0]"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["ExpiringSoon"]["status"] == "True"
    assert conditions["ExpiringSoon"]["message"].startswith(f"{first}: 1 certificates expiring")
    annotations = wait_for(lambda: (a := cluster.annotations(first, "web")).get(ann.STATE) and a)
    assert annotations[ann.STATE] == "ExpiringSoon"
    assert annotations[ann.CHECKED_BY] == f"clustercertcheck/{name}"
    assert wait_for(lambda: cluster.annotations(second, "api").get(ann.STATE)) == "Valid"
    warnings = wait_for(lambda: [e for e in checks.events(name) if e.reason == "ExpiringSoon"])
    assert warnings[0].type == "Warning"
    assert warnings[0].message.startswith(f"namespace {first}: 1 certificates newly expiring")
    assert ann.STATE not in cluster.annotations(third, "other")
    expiring = wait_for(
        lambda: series(scrape(stack), "certcheck_certificate_expiring", certcheck=f"clustercertcheck/{name}"),
        what="the exporter's series",
    )
    assert {line.split('secret_name="')[1].split('"')[0]: v for line, v in expiring.items()} == {
        "web": 1,
        "api": 0,
    }

    label_namespace(cluster, third, {"team": team})  # a namespace comes to be selected
    status = checks.wait_status(name, namespacesCount=3, targetCertsCount=3, expiringSoonCount=2)
    assert status["namespaces"][0]["namespace"] == third  # expiring soonest
    assert wait_for(lambda: cluster.annotations(third, "other").get(ann.STATE)) == "ExpiringSoon"

    label_namespace(cluster, first, {"team": None})  # and one no longer is
    checks.wait_status(name, namespacesCount=2, targetCertsCount=2, expiringSoonCount=1)
    wait_for(lambda: ann.STATE not in cluster.annotations(first, "web"), what="annotations removed")

    checks.delete(name)
    wait_for(lambda: ann.STATE not in cluster.annotations(second, "api"), what="annotations removed")
    wait_for(lambda: ann.STATE not in cluster.annotations(third, "other"), what="annotations removed")


def _webhook_configuration(
    name: str, bundles: dict[str, bytes], kind: str = "ValidatingWebhookConfiguration"
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": webhook,
                "clientConfig": {
                    "url": "https://127.0.0.1:9/never",
                    "caBundle": base64.b64encode(bundle).decode(),
                },
                # Never called: it matches only a resource that does not exist.
                "rules": [
                    {
                        "apiGroups": ["certcheck-test.invalid"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["nothings"],
                    }
                ],
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }
            for webhook, bundle in bundles.items()
        ],
    }


def _crd_with_conversion(group: str, bundle: bytes) -> dict[str, Any]:
    version = {
        "served": True,
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [
                {"name": "v1", "storage": True, **version},
                {"name": "v2", "storage": False, **version},
            ],
            "conversion": {
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": ["v1"],
                    "clientConfig": {
                        "url": "https://127.0.0.1:9/convert",
                        "caBundle": base64.b64encode(bundle).decode(),
                    },
                },
            },
        },
    }


def _api_service(group: str, bundle: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": f"v1.{group}"},
        "spec": {
            "group": group,
            "version": "v1",
            "service": {"namespace": "default", "name": "nowhere", "port": 443},
            "caBundle": base64.b64encode(bundle).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }


def test_a_cluster_check_reads_the_ca_bundles_of_webhooks_apiservices_and_crd_conversions(
    cluster: Cluster, checks: ClusterChecks, api: client.ApiClient
) -> None:
    suffix = uuid.uuid4().hex[:8]
    admission = client.AdmissionregistrationV1Api(api)
    extensions = client.ApiextensionsV1Api(api)
    expiring_ca = pki.issue("webhook CA", pki.ec_key(), ca=True, days=5)
    expired_ca = pki.issue("conversion CA", pki.ec_key(), ca=True, days=-1)
    webhooks = f"guard-{suffix}"
    admission.create_validating_webhook_configuration(
        _webhook_configuration(webhooks, {"a.guard.test": pki.pem(expiring_ca), "b.guard.test": b"not a CA"})
    )
    group = f"c{suffix}.certcheck.test"
    extensions.create_custom_resource_definition(_crd_with_conversion(group, pki.pem(expired_ca)))
    mutating = f"mutate-{suffix}"
    admission.create_mutating_webhook_configuration(
        _webhook_configuration(
            mutating, {"m.guard.test": pki.pem(expiring_ca)}, "MutatingWebhookConfiguration"
        )
    )
    registration = client.ApiregistrationV1Api(api)
    # Unavailable (no such Service) and deleted at the end: no client here discovers the API meanwhile.
    registration.create_api_service(_api_service(f"a{suffix}.certcheck.test", b"not a CA"))
    name = f"cluster-{suffix}"
    try:
        checks.create(
            name,
            {
                "namespaceSelector": {"matchLabels": {"none": suffix}},
                "sources": [
                    "ValidatingWebhookConfiguration",
                    "MutatingWebhookConfiguration",
                    "APIService",
                    "CustomResourceDefinition",
                ],
            },
        )
        status = wait_for(
            lambda: (
                (s := checks.status(name))
                and entry(s, kind="ValidatingWebhookConfiguration", name=webhooks, key="a.guard.test")
                and entry(s, kind="CustomResourceDefinition", name=f"widgets.{group}")
                and entry(s, kind="MutatingWebhookConfiguration", name=mutating, key="m.guard.test")
                and entry(s, kind="APIService", name=f"v1.a{suffix}.certcheck.test", key="caBundle")
                and s
            ),
            timeout=30,
            what="the CA bundles in the status",
        )
        assert status["namespacesCount"] == 0
        webhook = entry(status, name=webhooks, key="a.guard.test")
        assert webhook is not None and webhook["state"] == "ExpiringSoon" and "namespace" not in webhook
        unreadable = entry(status, name=webhooks, key="b.guard.test")
        assert unreadable is not None and unreadable["state"] == "Invalid" and unreadable["reason"]
        conversion = entry(status, name=f"widgets.{group}")
        assert (
            conversion is not None and conversion["state"] == "Expired" and conversion["key"] == "conversion"
        )
        assert entry(status, name=mutating, state="ExpiringSoon")
        assert entry(status, kind="APIService", state="Invalid")
        warnings = wait_for(lambda: [e for e in checks.events(name) if e.reason == "Expired"])
        assert warnings[0].message.startswith("cluster-scoped sources: 1 certificates newly expired")

        renewed = pki.issue("webhook CA", pki.ec_key(), ca=True, days=365)
        replacement = _webhook_configuration(webhooks, {"a.guard.test": pki.pem(renewed)})
        current = admission.read_validating_webhook_configuration(webhooks)
        replacement["metadata"]["resourceVersion"] = current.metadata.resource_version
        admission.replace_validating_webhook_configuration(webhooks, replacement)
        wait_for(
            lambda: (
                (s := checks.status(name))
                and entry(s, name=webhooks, key="a.guard.test", state="Valid")
                and not entry(s, name=webhooks, key="b.guard.test")
            ),
            timeout=30,
            what="the renewed webhook CA",
        )
    finally:
        admission.delete_validating_webhook_configuration(webhooks)
        admission.delete_mutating_webhook_configuration(mutating)
        registration.delete_api_service(f"v1.a{suffix}.certcheck.test")
        extensions.delete_custom_resource_definition(f"widgets.{group}")
    wait_for(
        lambda: (
            (s := checks.status(name))
            and not entry(s, name=webhooks)
            and not entry(s, name=f"widgets.{group}")
        ),
        timeout=30,
        what="the deleted objects gone from the status",
    )


def test_two_recorders_merging_at_once_leave_every_namespace_in_the_status(
    cluster: Cluster, checks: ClusterChecks, stack: Stack
) -> None:
    """Two recorder replicas store and merge shares of one ClusterCertCheck concurrently, each through
    its own connection and client: the compare-and-set leaves the last write merging every share."""
    suffix = uuid.uuid4().hex[:8]
    name = f"race-{suffix}"
    checks.create(name, {"namespaceSelector": {"matchLabels": {"none": suffix}}, "selector": {}})
    checks.wait_status(name, namespacesCount=0)
    found = cluster.custom.get_cluster_custom_object(CERTCHECK_GROUP, CERTCHECK_VERSION, PLURAL, name)
    uid = found["metadata"]["uid"]
    namespaces = [f"x{i:02}-{suffix}" for i in range(24)]

    async def replica() -> tuple[bus_mod.Bus, ClusterStatuses]:
        bus = await bus_mod.connect(stack.nats.url, "race-test")
        shares = await bus_mod.key_value(bus, CLUSTER_SHARES_BUCKET)
        writer = KubeWriter(api_client(str(stack.control_plane.kubeconfig)), "recorder")

        async def call(fn: Any, *args: Any) -> Any:
            return await asyncio.to_thread(fn, *args)

        return bus, ClusterStatuses(bus, shares, writer, call)

    async def main() -> None:
        replicas = [await replica(), await replica()]
        try:

            async def record(statuses: ClusterStatuses, namespace: str, index: int) -> None:
                share = share_result(namespace, share_entry("web", State.EXPIRING_SOON, 3 + index))
                await statuses.record(msgspec.structs.replace(share, name=share_name(name), uid=uid))

            await asyncio.gather(*(record(replicas[i % 2][1], ns, i) for i, ns in enumerate(namespaces)))
        finally:
            for bus, _ in replicas:
                await bus.close()

    asyncio.run(main())
    status = checks.wait_status(name, namespacesCount=24, expiringSoonCount=24)
    assert {n["namespace"] for n in status["namespaces"]} == set(namespaces)
    assert status["namespaces"][0]["namespace"] == namespaces[0]  # the soonest to expire first


def test_a_status_edited_by_hand_with_a_revision_no_merge_made_is_replaced_at_the_next_merge(
    cluster: Cluster, checks: ClusterChecks, namespace: str
) -> None:
    team = uuid.uuid4().hex[:8]
    label_namespace(cluster, namespace, {"team": team})
    tls(cluster, namespace, "web", days=200)
    name = f"edited-{team}"
    checks.create(
        name,
        {"namespaceSelector": {"matchLabels": {"team": team}}, "selector": {"matchLabels": {"app": "web"}}},
    )
    checks.wait_status(name, namespacesCount=1, targetCertsCount=1)
    cluster.custom.patch_cluster_custom_object_status(
        CERTCHECK_GROUP,
        CERTCHECK_VERSION,
        PLURAL,
        name,
        {"status": {"mergedRevision": 10**12, "targetCertsCount": 99}},
    )
    tls(cluster, namespace, "api", days=100)  # the next change merges, whatever the edit claimed
    status = checks.wait_status(name, namespacesCount=1, targetCertsCount=2)
    assert status["mergedRevision"] < 10**12
