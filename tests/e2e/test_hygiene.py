"""Problems before expiry, end to end: a weak key, a SHA-1 signature and a broken chain reach the
CertCheck's conditions and status, the Secrets' annotations, a Warning Event each and the exporter's
series; a policy that allows them clears all of it."""

from __future__ import annotations

import base64

from kubernetes import client

from devcluster.stack import Stack
from schemas import annotations as ann
from tests import pki
from tests.conftest import CERTCHECK_GROUP, CERTCHECK_PLURAL, CERTCHECK_VERSION, Cluster, wait_for
from tests.e2e.test_metrics import scrape, series


def tls(cluster: Cluster, namespace: str, name: str, data: dict[str, bytes]) -> None:
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels={"app": "hygiene"}),
            type="kubernetes.io/tls",
            data={k: base64.b64encode(v).decode() for k, v in data.items()},
        ),
    )


def conditions(cluster: Cluster, namespace: str) -> dict[str, tuple[str, str]]:
    status = cluster.status(namespace, "c")
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions", [])}


def test_weak_keys_sha1_and_broken_chains_are_reported_and_a_lenient_policy_clears_them(
    cluster: Cluster, namespace: str, stack: Stack
) -> None:
    weak_key = pki.rsa_key(1024)
    weak = pki.resigned(pki.issue("weak.test", weak_key), weak_key, "sha1")
    tls(cluster, namespace, "weak", {"tls.crt": pki.pem(weak), "tls.key": pki.key_pem(weak_key)})
    root = pki.ca("root")
    leaf_key = pki.ec_key()
    leaf = pki.issue("leaf.test", leaf_key, pki.ca("intermediate", root))
    wrong_intermediate = pki.ca("another intermediate", root)[0]
    tls(
        cluster,
        namespace,
        "broken",
        {
            "tls.crt": pki.pem(leaf, wrong_intermediate),
            "tls.key": pki.key_pem(leaf_key),
            "ca.crt": pki.pem(root[0]),
        },
    )
    fine_key = pki.ec_key()
    tls(
        cluster,
        namespace,
        "fine",
        {"tls.crt": pki.pem(pki.issue("fine.test", fine_key)), "tls.key": pki.key_pem(fine_key)},
    )
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "hygiene"}})

    status = cluster.wait_status(namespace, "c", timeout=30, weakCount=1, brokenChainCount=1)
    assert conditions(cluster, namespace)["Weak"] == ("True", "WeakCertificates")
    assert conditions(cluster, namespace)["ChainInvalid"] == ("True", "BrokenChains")
    entries = {(e["name"], e["index"]): e for e in status["certificates"] if e["key"] == "tls.crt"}
    assert entries[("weak", 0)]["keySize"] == 1024
    assert entries[("weak", 0)]["signatureAlgorithm"] == "sha1WithRSAEncryption"
    assert entries[("weak", 0)]["problems"] == [
        "RSA key of 1024 bits, below 2048",
        "signed with sha1WithRSAEncryption, a weak hash",
    ]
    assert entries[("broken", 0)]["problems"][0].startswith(
        "chain broken: not issued by the next certificate"
    )
    assert "problems" not in entries[("fine", 0)]

    problems = wait_for(
        lambda: (
            all(cluster.annotations(namespace, n).get(ann.PROBLEMS) for n in ("weak", "broken"))
            and {n: cluster.annotations(namespace, n).get(ann.PROBLEMS) for n in ("weak", "broken", "fine")}
        ),
        what="the problems annotations",
    )
    assert problems["weak"].startswith("tls.crt[0]: RSA key of 1024 bits") and problems["fine"] is None
    warnings = wait_for(
        lambda: (
            len(found := [e for e in cluster.events(namespace, "Secret") if e.type == "Warning"]) >= 2
            and found
        ),
        what="Warnings on the Secrets",
    )
    assert sorted((e.involved_object.name, e.reason, e.count) for e in warnings) == [
        ("broken", "ChainInvalid", 1),
        ("weak", "Weak", 1),
    ]
    text = wait_for(
        lambda: (
            (t := scrape(stack))
            and series(t, "certcheck_certificate_problem", secret_namespace=namespace)
            and t
        ),
        what="problem series",
    )
    reasons = sorted(
        (line.split('secret_name="')[1].split('"')[0], line.split('reason="')[1].split('"')[0])
        for line in series(text, "certcheck_certificate_problem", secret_namespace=namespace)
    )
    assert reasons == [("broken", "BrokenChain"), ("weak", "KeyTooSmall"), ("weak", "WeakSignature")]

    cluster.custom.patch_namespaced_custom_object(
        CERTCHECK_GROUP,
        CERTCHECK_VERSION,
        namespace,
        CERTCHECK_PLURAL,
        "c",
        {
            "spec": {
                "policy": {"minimumRSAKeySize": 1024, "weakSignatureHashes": ["MD5"], "verifyChains": False}
            }
        },
    )
    cluster.wait_status(namespace, "c", timeout=30, weakCount=0, brokenChainCount=0)
    assert conditions(cluster, namespace)["Weak"] == ("False", "NoWeakCertificates")
    assert conditions(cluster, namespace)["ChainInvalid"] == ("False", "NotChecked")
    wait_for(
        lambda: not any(cluster.annotations(namespace, n).get(ann.PROBLEMS) for n in ("weak", "broken")),
        what="the problems annotations removed",
    )
    assert len([e for e in cluster.events(namespace, "Secret") if e.type == "Warning"]) == 2
