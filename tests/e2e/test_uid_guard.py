"""Every write carries the uid of the object it was computed for: a result for a deleted object never
lands on a namesake created since (the API server refuses the patch, the recorder drops it)."""

from __future__ import annotations

import pytest
from kubernetes import client

from devcluster.certs import expiring_in
from schemas.messages import AnnotationPatch, CertCheckStatus
from services.common.kube import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION
from services.common.kube_writer import Gone, KubeWriter
from tests.conftest import Cluster


def test_a_result_for_a_deleted_object_never_lands_on_its_recreated_namesake(
    cluster: Cluster, namespace: str, api: client.ApiClient
) -> None:
    writer = KubeWriter(api)
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
