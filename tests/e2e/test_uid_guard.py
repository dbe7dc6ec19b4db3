"""Every write carries the uid of the object it was computed for: a result for a deleted object never
lands on a namesake created since (the API server refuses the patch, the recorder drops it)."""

from __future__ import annotations

import pytest
from kubernetes import client

from devcluster.certs import expiring_in
from schemas.messages import AnnotationPatch, CertCheckStatus
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION
from services.common.kube_writer import Gone, KubeWriter
from tests.conftest import Cluster, wait_for


def test_a_result_for_a_deleted_object_never_lands_on_its_recreated_namesake(
    cluster: Cluster, namespace: str, api: client.ApiClient
) -> None:
    writer = KubeWriter(api, "recorder")
    old_check = cluster.create_certcheck(namespace, "c", {"matchLabels": {"x": "y"}})
    cert, key = expiring_in(10)
    old_secret = cluster.create_tls_secret(namespace, "s", cert, key)
    cluster.custom.delete_namespaced_custom_object(
        CERTCHECK_GROUP, CERTCHECK_VERSION, namespace, CERTCHECK_PLURAL, "c"
    )
    cluster.core.delete_namespaced_secret("s", namespace)
    new_check = cluster.create_certcheck(namespace, "c", {"matchLabels": {"x": "y"}})
    cluster.create_tls_secret(namespace, "s", cert, key)
    assert new_check["metadata"]["uid"] != old_check["metadata"]["uid"]

    with pytest.raises(Gone):
        writer.patch_status(namespace, "c", old_check["metadata"]["uid"], CertCheckStatus(valid_count=7))
    with pytest.raises(Gone):
        writer.patch_annotations(
            AnnotationPatch(namespace, "s", old_secret.metadata.uid, {"certcheck.dev/state": "Expired"})
        )
    # The pipeline evaluates the namesake too; the stale write's values are nowhere.
    assert cluster.status(namespace, "c").get("validCount") != 7
    assert cluster.annotations(namespace, "s").get("certcheck.dev/state") != "Expired"


def test_a_status_write_after_the_first_is_one_request_that_still_refuses_a_namesake(
    cluster: Cluster, namespace: str, api: client.ApiClient
) -> None:
    sent: list[str] = []

    class CountingWriter(KubeWriter):
        def _send(self, method: str, path: str, body: object, content_type: str) -> tuple[int, bytes]:
            sent.append(content_type)
            return super()._send(method, path, body, content_type)

    writer = CountingWriter(api, "recorder")
    # The CertCheck selects nothing, so the pipeline writes its status once and then leaves it alone.
    old_check = cluster.create_certcheck(namespace, "c", {"matchLabels": {"nothing": "here"}})
    wait_for(lambda: cluster.status(namespace, "c").get("observedGeneration"), what="a first status")
    uid = old_check["metadata"]["uid"]
    first = CertCheckStatus(valid_count=1, earliest_not_after="2030-01-01T00:00:00Z")
    written = writer.patch_status(namespace, "c", uid, first)
    assert len(sent) == 2  # the uid test, then the merge patch: what the status holds is not known yet
    assert written.resource_version == cluster.certcheck(namespace, "c")["metadata"]["resourceVersion"]
    sent.clear()
    second = CertCheckStatus(valid_count=2)  # earliestNotAfter gone
    written = writer.patch_status(namespace, "c", uid, second, written.holds)
    assert sent == ["application/json-patch+json"]
    assert written.resource_version == cluster.certcheck(namespace, "c")["metadata"]["resourceVersion"]
    present = written.holds
    status = cluster.status(namespace, "c")
    assert status["validCount"] == 2 and "earliestNotAfter" not in status

    cluster.custom.delete_namespaced_custom_object(
        CERTCHECK_GROUP, CERTCHECK_VERSION, namespace, CERTCHECK_PLURAL, "c"
    )
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"nothing": "here"}})
    wait_for(lambda: cluster.status(namespace, "c").get("observedGeneration"), what="the namesake's status")
    with pytest.raises(Gone):
        writer.patch_status(namespace, "c", uid, CertCheckStatus(valid_count=7), present)
    assert cluster.status(namespace, "c").get("validCount") != 7
