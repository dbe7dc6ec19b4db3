"""ClusterCertChecks, unit by unit: the watcher's shares (one per selected namespace, and one for the
cluster-scoped sources), the CA bundles read from webhook configurations, APIServices and CRDs, the
view's selection of those, where a share's Events go, and the status the recorder merges."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from schemas import events, subjects
from schemas.messages import (
    CertCheckObserved,
    CertificateStatus,
    ClusterCertCheckStatus,
    ClusterSourceObserved,
    LabelSelector,
    SecretObserved,
    State,
)
from services.domain.clusterchecks import CLUSTER_SOURCES, cluster_check_of, share_name
from services.domain.events import certcheck_event
from services.domain.provenance import object_refusal
from services.domain.view import View
from services.recorder.clusterstatus import (
    CERTIFICATES_CAP,
    SHARE_CERTIFICATES,
    merged_status,
    same_status,
    share_of,
)
from services.watcher.cluster import (
    CHECKS,
    NAMESPACES,
    SHARES_SCOPE,
    RawAPIService,
    RawClusterCertCheck,
    RawCRD,
    RawNamespace,
    RawWebhookConfiguration,
    Shares,
    cluster_source_observed,
)
from services.watcher.publisher import Change, Delete, Listed, Upsert
from tests import pki
from tests.sources import facts_source, share_entry, share_result

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _decode(kind: type[Any], body: dict[str, Any]) -> Any:
    return msgspec.convert(body, kind)


def namespace(name: str, labels: dict[str, str] | None = None, rv: str = "1") -> RawNamespace:
    return _decode(
        RawNamespace,
        {"metadata": {"name": name, "uid": f"u-{name}", "resourceVersion": rv, "labels": labels}},
    )


def check(name: str = "fleet", uid: str = "c1", rv: str = "10", **spec: Any) -> RawClusterCertCheck:
    spec.setdefault("selector", {"matchLabels": {"app": "web"}})
    body = {"metadata": {"name": name, "uid": uid, "resourceVersion": rv, "generation": 1}, "spec": spec}
    return _decode(RawClusterCertCheck, body)


class TestShares:
    def setup_method(self) -> None:
        self.changes: list[Change] = []
        self.shares = Shares(self.changes.append)

    def take(self) -> list[Change]:
        taken, self.changes[:] = list(self.changes), []
        return taken

    def upserted(self, changes: list[Change]) -> dict[str, CertCheckObserved]:
        found = {}
        for change in changes:
            if isinstance(change, Upsert):
                assert change.scope == SHARES_SCOPE and change.kind == subjects.KIND_CERTCHECK
                assert isinstance(change.observed, CertCheckObserved)
                found[change.observed.namespace] = change.observed
        return found

    def deleted(self, changes: list[Change]) -> set[tuple[str, str]]:
        return {(c.namespace, c.name) for c in changes if isinstance(c, Delete)}

    def test_a_share_per_selected_namespace_and_one_for_the_cluster(self) -> None:
        self.shares.namespace(namespace("a", {"team": "x"}))
        self.shares.namespace(namespace("b", {"team": "y"}))
        self.shares.check(check(namespaceSelector={"matchLabels": {"team": "x"}}))
        published = self.upserted(self.take())
        assert set(published) == {"a", subjects.CLUSTER_NAMESPACE}
        share = published["a"]
        assert share.name == "clustercertcheck/fleet" and share.uid == "c1"
        assert share.selector is not None and share.selector.match_labels == {"app": "web"}
        assert share.status == msgspec.Raw(b"null")  # the ClusterCertCheck's status is no share's

    def test_without_a_namespace_selector_every_namespace_is_selected(self) -> None:
        self.shares.namespace(namespace("a"))
        self.shares.namespace(namespace("b", {"team": "y"}))
        self.shares.check(check())
        assert set(self.upserted(self.take())) == {"a", "b", subjects.CLUSTER_NAMESPACE}

    def test_only_the_cluster_share_reads_the_cluster_scoped_sources(self) -> None:
        self.shares.namespace(namespace("a"))
        self.shares.check(check(sources=["ValidatingWebhookConfiguration", "APIService"]))
        published = self.upserted(self.take())
        assert published[subjects.CLUSTER_NAMESPACE].cluster_sources == [
            subjects.KIND_APISERVICE,
            subjects.KIND_VALIDATING_WEBHOOK,
        ]
        assert published["a"].cluster_sources is None

    def test_a_namespace_relabelled_gains_or_loses_its_share(self) -> None:
        self.shares.check(check(namespaceSelector={"matchLabels": {"team": "x"}}))
        self.shares.namespace(namespace("a"))
        self.take()
        self.shares.namespace(namespace("a", {"team": "x"}, rv="2"))
        assert set(self.upserted(self.take())) == {"a"}
        self.shares.namespace(namespace("a", {"team": "x", "other": "label"}, rv="3"))
        assert self.take() == []  # still selected: nothing to publish
        self.shares.namespace(namespace("a", {}, rv="4"))
        assert self.deleted(self.take()) == {("a", "clustercertcheck/fleet")}
        self.shares.namespace(namespace("a", {"team": "x"}, rv="5"))
        again = self.upserted(self.take())["a"]
        # Published again after its removal: a new message, not a repeat of the first one.
        assert again.resource_version == "10.5"

    def test_a_status_write_publishes_nothing_and_a_spec_change_every_share(self) -> None:
        self.shares.namespace(namespace("a"))
        self.shares.check(check())
        self.take()
        self.shares.check(check(rv="11"))
        assert self.take() == []
        self.shares.check(check(rv="12", threshold=7))
        assert {s.threshold_days for s in self.upserted(self.take()).values()} == {7}

    def test_a_deleted_or_recreated_check_removes_its_shares(self) -> None:
        self.shares.namespace(namespace("a"))
        self.shares.check(check())
        self.take()
        self.shares.check(check(uid="c2", rv="20"))
        changes = self.take()
        assert self.deleted(changes) == {
            ("a", "clustercertcheck/fleet"),
            (subjects.CLUSTER_NAMESPACE, "clustercertcheck/fleet"),
        }
        assert {s.uid for s in self.upserted(changes).values()} == {"c2"}
        self.shares.check(check(uid="c2", rv="21"), deleted=True)
        assert len(self.deleted(self.take())) == 2

    def test_the_shares_are_listed_once_both_lists_are_in_and_what_a_list_misses_is_gone(self) -> None:
        self.shares.namespace(namespace("a"))
        self.shares.namespace(namespace("b"))
        self.shares.check(check())
        self.shares.listed(CHECKS, {("", "fleet")})
        assert not any(isinstance(c, Listed) for c in self.take())
        self.shares.listed(NAMESPACES, {("", "a")})  # b went while nobody watched
        changes = self.take()
        assert self.deleted(changes) == {("b", "clustercertcheck/fleet")}
        listed = [c for c in changes if isinstance(c, Listed)]
        assert listed[0].scope == SHARES_SCOPE
        assert listed[0].keys == {
            ("a", "clustercertcheck/fleet"),
            (subjects.CLUSTER_NAMESPACE, "clustercertcheck/fleet"),
        }

    def test_an_unusable_namespace_selector_selects_no_namespace_and_is_reported_by_the_cluster_share(
        self,
    ) -> None:
        self.shares.namespace(namespace("a"))
        selector = {"matchExpressions": [{"key": "team", "operator": "In", "values": []}]}
        self.shares.check(check(namespaceSelector=selector))
        published = self.upserted(self.take())
        assert set(published) == {subjects.CLUSTER_NAMESPACE}
        view = View()
        view.apply(1, published[subjects.CLUSTER_NAMESPACE])
        entry = view.certcheck((subjects.CLUSTER_NAMESPACE, "clustercertcheck/fleet"))
        assert entry is not None and entry.spec.selector_error is not None
        assert "namespaceSelector" in entry.spec.selector_error


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


META = {"name": "guard", "uid": "w1", "resourceVersion": "5"}


class TestClusterSources:
    def test_each_webhook_with_a_ca_bundle_is_a_source_named_by_the_webhook(self) -> None:
        ca = pki.issue("webhook CA", pki.ec_key(), ca=True)
        raw = _decode(
            RawWebhookConfiguration,
            {
                "metadata": META,
                "webhooks": [
                    {"name": "a.test", "clientConfig": {"caBundle": _b64(pki.pem(ca))}},
                    {"name": "b.test", "clientConfig": {"service": {"name": "x"}}},  # the system's trust
                    {"name": "c.test", "clientConfig": {"caBundle": _b64(b"garbage")}},
                ],
            },
        )
        observed = cluster_source_observed(subjects.KIND_VALIDATING_WEBHOOK, raw)
        assert observed is not None and observed.namespace == subjects.CLUSTER_NAMESPACE
        assert [s.key for s in observed.sources] == ["a.test", "c.test"]
        assert observed.sources[0].certs[0].subject_cn == "webhook CA"
        assert observed.sources[1].error

    @pytest.mark.parametrize(
        ("raw_type", "body"),
        [
            (RawWebhookConfiguration, {"metadata": META}),
            (RawWebhookConfiguration, {"metadata": META, "webhooks": [{"name": "a", "clientConfig": {}}]}),
            (RawAPIService, {"metadata": META, "spec": {"service": {"name": "x"}}}),
            (RawCRD, {"metadata": META, "spec": {"conversion": {"strategy": "None"}}}),
            (RawCRD, {"metadata": META, "spec": {}}),
        ],
    )
    def test_an_object_without_a_ca_bundle_is_not_published(
        self, raw_type: type[Any], body: dict[str, Any]
    ) -> None:
        assert cluster_source_observed(subjects.KIND_CRD, _decode(raw_type, body)) is None

    def test_an_apiservice_and_a_crd_conversion_have_one_bundle_each(self) -> None:
        bundle = _b64(pki.pem(pki.issue("CA", pki.ec_key(), ca=True)))
        service = _decode(RawAPIService, {"metadata": META, "spec": {"caBundle": bundle}})
        crd = _decode(
            RawCRD,
            {"metadata": META, "spec": {"conversion": {"webhook": {"clientConfig": {"caBundle": bundle}}}}},
        )
        assert [s.key for s in cluster_source_observed(subjects.KIND_APISERVICE, service).sources] == [
            "caBundle"
        ]  # type: ignore[union-attr]
        assert [s.key for s in cluster_source_observed(subjects.KIND_CRD, crd).sources] == ["conversion"]  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        "bundle",
        [
            "!!not base64!!",
            _b64(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            "A" * (4 << 20),
        ],
        ids=["not-base64", "truncated-pem", "huge"],
    )
    def test_a_hostile_bundle_is_an_invalid_source_not_a_failure(self, bundle: str) -> None:
        service = _decode(RawAPIService, {"metadata": META, "spec": {"caBundle": bundle}})
        observed = cluster_source_observed(subjects.KIND_APISERVICE, service)
        assert observed is not None
        source = observed.sources[0]
        assert source.error or (len(source.certs) == 1 and source.certs[0].error)

    def test_a_webhook_configuration_with_thousands_of_webhooks_is_bounded(self) -> None:
        bundle = _b64(pki.pem(pki.issue("CA", pki.ec_key(), ca=True)))
        webhooks = [{"name": f"w{i}.test", "clientConfig": {"caBundle": bundle}} for i in range(6000)]
        raw = _decode(RawWebhookConfiguration, {"metadata": META, "webhooks": webhooks})
        observed = cluster_source_observed(subjects.KIND_VALIDATING_WEBHOOK, raw)
        assert observed is not None and len(observed.sources) == 501
        assert observed.sources[-1].error == "5500 more webhooks not read"
        assert len(msgspec.json.encode(observed)) < 512 << 10


def cluster_source(
    name: str, pem: bytes, token: str = subjects.KIND_VALIDATING_WEBHOOK
) -> ClusterSourceObserved:
    return ClusterSourceObserved(
        token, subjects.CLUSTER_NAMESPACE, name, f"u-{name}", "1", sources=[facts_source("a.test", pem)]
    )


def share(namespace: str, sources: list[str] | None = None) -> CertCheckObserved:
    return CertCheckObserved(
        namespace=namespace,
        name=share_name("fleet"),
        uid="c1",
        resource_version="1",
        generation=1,
        threshold_days=30,
        cluster_sources=sources,
    )


class TestView:
    def test_the_cluster_share_selects_every_object_of_the_kinds_it_names(self) -> None:
        view = View()
        ca = pki.pem(pki.issue("CA", pki.ec_key(), ca=True))
        view.apply(1, cluster_source("guard", ca))
        view.apply(2, cluster_source("metrics", ca, subjects.KIND_APISERVICE))
        effects = view.apply(3, share(subjects.CLUSTER_NAMESPACE, [subjects.KIND_VALIDATING_WEBHOOK]))
        key = (subjects.CLUSTER_NAMESPACE, share_name("fleet"))
        assert effects.evaluate == {key}
        selected, _ = view.inputs(key)
        assert [(s.kind, s.name) for s in selected] == [("ValidatingWebhookConfiguration", "guard")]
        assert view.certcheck(key).spec.selector_error is None  # type: ignore[union-attr]
        assert view.apply(4, cluster_source("other", ca)).evaluate == {key}  # a new one is evaluated

    def test_a_share_of_a_namespace_selects_its_secrets_like_a_certcheck(self) -> None:
        view = View()
        secret = SecretObserved(
            "a",
            "web",
            "s1",
            "1",
            "kubernetes.io/tls",
            labels={"app": "web"},
            sources=[facts_source("tls.crt", pki.pem(pki.issue("web", pki.ec_key())))],
        )
        view.apply(1, secret)
        view.apply(
            2, msgspec.structs.replace(share("a"), selector=LabelSelector(match_labels={"app": "web"}))
        )
        selected, coverage = view.inputs(("a", share_name("fleet")))
        assert [s.name for s in selected] == ["web"]
        assert coverage["web"].certchecks == ("clustercertcheck/fleet",)


class TestProvenance:
    def test_a_cluster_scoped_object_is_only_taken_in_the_cluster_namespace(self) -> None:
        forged = msgspec.structs.replace(cluster_source("guard", b""), namespace="team")
        subject = subjects.object_subject(0, subjects.KIND_VALIDATING_WEBHOOK, "team", "guard")
        assert object_refusal(subject, forged) is not None
        real = cluster_source("guard", b"")
        subject = subjects.object_subject(
            0, subjects.KIND_VALIDATING_WEBHOOK, subjects.CLUSTER_NAMESPACE, "guard"
        )
        assert object_refusal(subject, real) is None

    def test_only_a_share_is_a_certcheck_of_the_cluster_namespace(self) -> None:
        cluster_share = share(subjects.CLUSTER_NAMESPACE)
        subject = subjects.object_subject(
            0, subjects.KIND_CERTCHECK, subjects.CLUSTER_NAMESPACE, cluster_share.name
        )
        assert object_refusal(subject, cluster_share) is None
        secret = SecretObserved(subjects.CLUSTER_NAMESPACE, "web", "s1", "1", "kubernetes.io/tls")
        subject = subjects.object_subject(0, subjects.KIND_SECRET, subjects.CLUSTER_NAMESPACE, "web")
        assert object_refusal(subject, secret) is not None


def test_a_shares_events_go_on_the_cluster_check_naming_the_namespace() -> None:
    first = certcheck_event(
        "a", share_name("fleet"), "c1", "Warning", "Expired", "1 certificates newly expired", "1", "web"
    )
    second = certcheck_event(
        "b", share_name("fleet"), "c1", "Warning", "Expired", "1 certificates newly expired", "1", "web"
    )
    assert (first.involved_kind, first.involved_name) == ("ClusterCertCheck", "fleet")
    assert first.message.startswith("namespace a: ")
    assert first.dedup_key != second.dedup_key  # the same change in two namespaces: two Events
    plain = certcheck_event("a", "web-check", "u", "Warning", "Expired", "m", "1", "web")
    assert (plain.involved_kind, plain.involved_name, plain.message) == ("CertCheck", "web-check", "m")
    assert cluster_check_of("web-check") is None and cluster_check_of(share_name("fleet")) == "fleet"


# --- the merged status --------------------------------------------------------------------------------


class TestMergedStatus:
    def test_totals_namespaces_and_certificates_most_urgent_first(self) -> None:
        shares = [
            share_of(share_result("b", share_entry("api", State.VALID, 200))),
            share_of(
                share_result(
                    "a", share_entry("web", State.EXPIRING_SOON, 5), share_entry("db", State.VALID, 100)
                )
            ),
            share_of(share_result(subjects.CLUSTER_NAMESPACE, share_entry("guard", State.INVALID, None))),
        ]
        status = merged_status(shares, 1, None, 42, NOW)
        assert (status.namespaces_count, status.target_certs_count, status.expiring_soon_count) == (2, 4, 1)
        assert (status.invalid_count, status.valid_count, status.merged_revision) == (1, 2, 42)
        assert [n.namespace for n in status.namespaces] == ["a", "b"]
        assert [(c.namespace, c.name) for c in status.certificates] == [
            ("a", "web"),
            (None, "guard"),
            ("a", "db"),
            ("b", "api"),
        ]
        assert status.earliest_certificate == "a/web/tls.crt[0]"
        conditions = {c.type: c for c in status.conditions}
        assert conditions["Ready"].status == "True"
        assert (
            conditions["ExpiringSoon"].status == "True"
            and conditions["ExpiringSoon"].message == "a: 1 expiring"
        )

    def test_ready_only_when_ready_in_every_namespace(self) -> None:
        shares = [share_of(share_result("a")), share_of(share_result("b", ready=False))]
        ready = {c.type: c for c in merged_status(shares, 1, None, 1, NOW).conditions}["Ready"]
        assert (ready.status, ready.reason, ready.message) == ("False", "InvalidSelector", "b: bad selector")

    def test_a_condition_keeps_its_transition_time_while_it_holds(self) -> None:
        shares = [share_of(share_result("a", share_entry("web", State.EXPIRING_SOON, 5)))]
        first = merged_status(shares, 1, None, 1, NOW)
        later = merged_status(shares, 1, first, 2, NOW + timedelta(hours=1))
        assert [c.last_transition_time for c in later.conditions] == [
            c.last_transition_time for c in first.conditions
        ]
        assert same_status(first, later)
        shares = [share_of(share_result("a", share_entry("web", State.VALID, 50)))]
        cleared = merged_status(shares, 1, later, 3, NOW + timedelta(hours=2))
        assert not same_status(later, cleared)
        expiring = {c.type: c for c in cleared.conditions}["ExpiringSoon"]
        assert expiring.status == "False" and expiring.last_transition_time != "2026-12-06T00:00:00Z"

    def test_observed_generation_is_the_oldest_a_namespace_reports(self) -> None:
        shares = [share_of(share_result("a", generation=2)), share_of(share_result("b", generation=1))]
        assert merged_status(shares, 2, None, 1, NOW).observed_generation == 1

    def test_the_lists_are_bounded(self) -> None:
        many = [
            share_of(
                share_result(f"ns-{i:03}", *(share_entry(f"s{j}", State.VALID, 100 + j) for j in range(30)))
            )
            for i in range(150)
        ]
        assert all(len(s.status.certificates) == SHARE_CERTIFICATES for s in many)
        status = merged_status(many, 1, None, 1, NOW)
        assert len(status.certificates) == CERTIFICATES_CAP
        assert status.certificates_omitted == 150 * 30 - CERTIFICATES_CAP
        assert len(status.namespaces) == 100 and status.namespaces_omitted == 50

    def test_no_share_no_namespace(self) -> None:
        status = merged_status([], 3, None, 0, NOW)
        assert (status.namespaces_count, status.target_certs_count, status.conditions) == (0, 0, [])


# --- the CRD ------------------------------------------------------------------------------------------

CRD_PATH = Path(__file__).resolve().parents[2] / "k8s" / "base" / "crd.yaml"


def _schemas() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(CRD_PATH.read_text()) if doc]
    return {
        doc["spec"]["names"]["kind"]: doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for doc in docs
    }


def _without_descriptions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_descriptions(v) for k, v in schema.items() if k != "description"}
    if isinstance(schema, list):
        return [_without_descriptions(v) for v in schema]
    return schema


def test_a_cluster_check_takes_every_field_of_a_certchecks_spec_as_it_is() -> None:
    schemas = _schemas()
    namespaced = schemas["CertCheck"]["properties"]["spec"]["properties"]
    cluster = schemas["ClusterCertCheck"]["properties"]["spec"]["properties"]
    for field, schema in namespaced.items():
        assert _without_descriptions(cluster[field]) == _without_descriptions(schema), field
    assert set(cluster) - set(namespaced) == {"namespaceSelector", "sources"}
    kinds = set(cluster["sources"]["items"]["enum"])
    assert kinds == {source.kind for source in CLUSTER_SOURCES}


def test_the_cluster_check_crd_declares_every_status_field_certcheck_writes() -> None:
    status = _schemas()["ClusterCertCheck"]["properties"]["status"]["properties"]
    written = msgspec.json.decode(msgspec.json.encode(ClusterCertCheckStatus()))
    assert set(written) <= set(status)
    entry_fields = msgspec.json.decode(
        msgspec.json.encode(
            CertificateStatus(
                "n", "k", 0, State.VALID, True, kind="APIService", namespace="a", problems=["p"]
            )
        )
    )
    assert set(entry_fields) <= set(status["certificates"]["items"]["properties"])


def test_a_shares_public_events_name_the_cluster_check_as_their_source() -> None:
    assert events.source("prod", "shop", share_name("fleet")) == "/clusters/prod/clustercertchecks/fleet"
    assert events.source("prod", "shop", "web") == "/clusters/prod/namespaces/shop/certchecks/web"
