"""The evaluator's view: a change is mapped to exactly the CertChecks it concerns."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
import pytest

from devcluster.certs import expiring_in
from schemas import subjects
from schemas.messages import (
    CertCheckObserved,
    CertSource,
    ConfigMapObserved,
    LabelSelector,
    ObjectDeleted,
    SecretObserved,
)
from services.domain import model
from services.domain.view import Effects, View
from services.evaluator import core
from tests.sources import facts_source

NOW = datetime.now(UTC)
CERT, _ = expiring_in(10)


def secret(
    name: str,
    labels: dict[str, str],
    rv: str = "1",
    annotations: dict[str, str] | None = None,
    namespace: str = "ns",
    cert: bytes = CERT,
) -> SecretObserved:
    return SecretObserved(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        resource_version=rv,
        type="kubernetes.io/tls",
        labels=labels,
        annotations=annotations or {},
        sources=[facts_source("tls.crt", cert)],
    )


def certcheck(
    name: str,
    match: dict[str, str],
    threshold: int = 30,
    generation: int = 1,
    rv: str = "1",
    namespace: str = "ns",
) -> CertCheckObserved:
    return CertCheckObserved(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        resource_version=rv,
        generation=generation,
        threshold_days=threshold,
        selector=LabelSelector(match_labels=match),
    )


def fold(view: View, *events: object) -> list[object]:
    return [view.apply(i + 1 + view.seq, e) for i, e in enumerate(events)]  # type: ignore[arg-type]


def test_secret_change_maps_to_every_certcheck_that_selects_it_and_no_other() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}), certcheck("b", {"team": "t"}), certcheck("c", {"app": "other"}))
    [effects] = fold(view, secret("s", {"app": "x", "team": "t"}))
    assert effects.evaluate == {("ns", "a"), ("ns", "b")}


def test_unselected_secret_triggers_nothing() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}))
    [effects] = fold(view, secret("s", {"app": "nope"}))
    assert effects.evaluate == set()


def test_certcheck_in_another_namespace_is_never_affected() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}, namespace="other"))
    [effects] = fold(view, secret("s", {"app": "x"}))
    assert effects.evaluate == set()


def test_label_change_out_of_a_selector_affects_the_certcheck_it_left() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}), secret("s", {"app": "x"}))
    [effects] = fold(view, secret("s", {"app": "y"}, rv="2", annotations={"certcheck.dev/state": "Valid"}))
    assert effects.evaluate == {("ns", "a")}
    assert effects.released == {("ns", "s")}


def test_only_our_annotations_changing_back_triggers_nothing() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}), secret("s", {"app": "x"}))
    inputs, coverage = view.inputs(("ns", "a"))

    desired = core.desired_annotations(inputs[0], coverage["s"], NOW)
    written = {k: v for k, v in desired.items() if v is not None}
    [effects] = fold(view, secret("s", {"app": "x"}, rv="2", annotations=written))
    assert effects.evaluate == set()


def test_older_resource_version_arriving_late_is_ignored() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}), secret("s", {"app": "x"}, rv="5"))
    [effects] = fold(view, secret("s", {"app": "y"}, rv="4"))
    assert effects.evaluate == set()
    entry = view.secret(("ns", "s"))
    assert entry is not None and entry.view.labels == {"app": "x"}


def test_status_only_update_of_a_certcheck_evaluates_nothing_and_asks_for_its_status_to_be_checked() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}))
    updated = msgspec.structs.replace(
        certcheck("a", {"app": "x"}, rv="2"), status=msgspec.Raw(b'{"validCount":1}')
    )
    [effects] = fold(view, updated)
    assert effects.evaluate == set()
    assert effects.statuses == {("ns", "a")}
    entry = view.certcheck(("ns", "a"))
    assert entry is not None and entry.observed is not None and entry.observed.valid_count == 1


def test_a_spec_change_replaced_in_the_stream_before_the_view_read_it_still_asks_for_an_evaluation() -> None:
    """The stream keeps one message per object: the new spec (message 2) was replaced by certcheck's
    status write for it (message 3) before the view got to it. Message 3 holds the whole object, so the
    view sees the spec change from what it held (message 1)."""
    view = View()
    view.apply(1, certcheck("a", {"app": "x"}))
    status_write = msgspec.structs.replace(
        certcheck("a", {"app": "x"}, generation=2, rv="3", threshold=7),
        status=msgspec.Raw(b'{"validCount":1}'),
    )
    assert view.apply(3, status_write).evaluate == {("ns", "a")}


def test_deleting_a_certcheck_releases_secrets_nobody_else_covers_and_reevaluates_the_others() -> None:
    view = View()
    fold(
        view,
        certcheck("a", {"app": "x"}),
        certcheck("b", {"tier": "web"}),
        secret("only-a", {"app": "x"}, annotations={"certcheck.dev/state": "Valid"}),
        secret("both", {"app": "x", "tier": "web"}),
    )
    [effects] = fold(view, ObjectDeleted(subjects.KIND_CERTCHECK, "ns", "a", "uid-a", "9"))
    assert effects.removed == [("ns", "a", "uid-a")]
    assert effects.released == {("ns", "only-a")}
    assert effects.evaluate == {("ns", "b")}


def test_threshold_change_reevaluates_neighbours_sharing_secrets() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}), certcheck("b", {"app": "x"}), secret("s", {"app": "x"}))
    [effects] = fold(view, certcheck("a", {"app": "x"}, threshold=60, generation=2, rv="3"))
    assert effects.evaluate == {("ns", "a"), ("ns", "b")}
    assert view.coverage("ns", "s").max_threshold_days == 60


def test_deleted_secret_reevaluates_its_certchecks() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}), secret("s", {"app": "x"}))
    [effects] = fold(view, ObjectDeleted(subjects.KIND_SECRET, "ns", "s", "uid-s", "3"))
    assert effects.evaluate == {("ns", "a")}
    assert view.inputs(("ns", "a"))[0] == []


def test_a_message_of_an_older_watcher_holding_pem_is_read_as_the_same_facts() -> None:
    view = View()
    fold(view, certcheck("a", {"app": "x"}), secret("new", {"app": "x"}))
    older = msgspec.structs.replace(
        secret("old", {"app": "x"}), sources=[CertSource("tls.crt", pem=[CERT.decode()])]
    )
    fold(view, older)
    by_name = {s.name: s.entries for s in view.inputs(("ns", "a"))[0]}
    assert by_name["old"] == by_name["new"] and len(by_name["old"]) == 1


def test_unparsable_pem_of_an_older_watcher_becomes_an_invalid_entry() -> None:
    view = View()
    bad = base64.b64encode(b"garbage").decode()
    pem = f"-----BEGIN CERTIFICATE-----\n{bad}\n-----END CERTIFICATE-----\n"
    event = SecretObserved(
        "ns", "s", "u", "1", "kubernetes.io/tls", {"app": "x"}, {}, [CertSource("tls.crt", pem=[pem])]
    )
    fold(view, certcheck("a", {"app": "x"}), event)
    [entry] = view.inputs(("ns", "a"))[0][0].entries
    assert type(entry.parsed).__name__ == "CertError"


def configmap(name: str, labels: dict[str, str], rv: str = "1", cert: bytes = CERT) -> ConfigMapObserved:
    return ConfigMapObserved(
        namespace="ns",
        name=name,
        uid=f"uid-cm-{name}",
        resource_version=rv,
        labels=labels,
        sources=[facts_source("ca.crt", cert)],
    )


def bundle_check(
    name: str, match: dict[str, str], secrets: dict[str, str] | None = None
) -> CertCheckObserved:
    return msgspec.structs.replace(
        certcheck(name, {}),
        selector=LabelSelector(match_labels=secrets) if secrets is not None else None,
        configmap_selector=LabelSelector(match_labels=match),
    )


def test_configmap_change_maps_only_to_certchecks_whose_configmap_selector_matches() -> None:
    view = View()
    fold(view, bundle_check("bundles", {"trust": "yes"}), certcheck("secrets-only", {"trust": "yes"}))
    [effects] = fold(view, configmap("ca", {"trust": "yes"}))
    assert effects.evaluate == {("ns", "bundles")}


def test_a_configmap_and_a_secret_of_the_same_name_are_two_separate_sources() -> None:
    view = View()
    fold(
        view,
        bundle_check("both", {"trust": "yes"}, secrets={"trust": "yes"}),
        secret("ca", {"trust": "yes"}),
        configmap("ca", {"trust": "yes"}),
    )
    inputs, coverage = view.inputs(("ns", "both"))
    assert sorted((v.kind, v.name) for v in inputs) == [("ConfigMap", "ca"), ("Secret", "ca")]
    assert list(coverage) == ["ca"]  # annotations are for the Secret only
    [effects] = fold(view, ObjectDeleted(subjects.KIND_CONFIGMAP, "ns", "ca", "uid-cm-ca", "5"))
    assert effects.evaluate == {("ns", "both")}
    assert [(v.kind, v.name) for v in view.inputs(("ns", "both"))[0]] == [("Secret", "ca")]


def test_certcheck_created_after_its_configmaps_covers_them_and_deleting_it_uncovers_them() -> None:
    view = View()
    fold(view, configmap("ca", {"trust": "yes"}), configmap("other", {"trust": "no"}))
    fold(view, bundle_check("bundles", {"trust": "yes"}))
    assert [v.name for v in view.inputs(("ns", "bundles"))[0]] == ["ca"]
    fold(view, ObjectDeleted(subjects.KIND_CERTCHECK, "ns", "bundles", "uid-bundles", "9"))
    [effects] = fold(view, configmap("ca", {"trust": "yes"}, rv="2", cert=expiring_in(3)[0]))
    assert effects.evaluate == set()


def test_configmap_relabelled_out_of_the_selector_is_dropped_from_the_certcheck() -> None:
    view = View()
    fold(view, bundle_check("bundles", {"trust": "yes"}), configmap("ca", {"trust": "yes"}))
    [effects] = fold(view, configmap("ca", {"trust": "no"}, rv="2"))
    assert effects.evaluate == {("ns", "bundles")}
    assert view.inputs(("ns", "bundles"))[0] == []


def test_a_certcheck_with_neither_selector_is_invalid_and_with_only_a_configmap_selector_is_not() -> None:
    view = View()
    fold(
        view,
        bundle_check("bundles", {"trust": "yes"}),
        msgspec.structs.replace(certcheck("none", {}), selector=None),
    )
    bundles, none = view.certcheck(("ns", "bundles")), view.certcheck(("ns", "none"))
    assert bundles is not None and bundles.spec.selector_error is None
    assert none is not None and none.spec.selector_error == "spec.selector is missing"


def test_a_secrets_coverage_follows_a_threshold_change_of_a_certcheck_covering_it() -> None:
    view = View()
    fold(view, certcheck("short", {"app": "x"}, threshold=30), secret("a", {"app": "x"}))
    assert view.coverage("ns", "a").max_threshold_days == 30
    fold(view, certcheck("short", {"app": "x"}, threshold=90, generation=2, rv="2"))
    assert view.coverage("ns", "a").max_threshold_days == 90


def test_a_secrets_coverage_follows_certchecks_created_and_deleted_beside_it() -> None:
    view = View()
    fold(view, certcheck("one", {"app": "x"}), secret("a", {"app": "x"}))
    assert view.coverage("ns", "a").certchecks == ("one",)
    fold(view, certcheck("two", {"app": "x"}, threshold=60))
    assert view.coverage("ns", "a") == model.Coverage(("one", "two"), 60)
    fold(view, ObjectDeleted(subjects.KIND_CERTCHECK, "ns", "two", "uid-two", "2"))
    assert view.coverage("ns", "a") == model.Coverage(("one",), 30)


SourceMaker = Callable[..., SecretObserved | ConfigMapObserved]
CheckMaker = Callable[[str, dict[str, str]], CertCheckObserved]
EITHER_KIND = pytest.mark.parametrize(
    ("kind", "source", "check"),
    [(subjects.KIND_SECRET, secret, certcheck), (subjects.KIND_CONFIGMAP, configmap, bundle_check)],
)


@EITHER_KIND
def test_either_kind_is_covered_relabelled_and_deleted_through_the_same_index(
    kind: str, source: SourceMaker, check: CheckMaker
) -> None:
    view = View()
    fold(view, source("s", {"app": "x"}), check("c", {"app": "x"}))
    index = view.sources[kind]
    entry = index.get("ns", "s")
    assert entry is not None and entry.covered_by == {"c"}
    assert [v.name for v in view.inputs(("ns", "c"))[0]] == ["s"]

    [effects] = fold(view, source("s", {"app": "y"}, rv="2"))
    assert effects.evaluate == {("ns", "c")}
    assert view.inputs(("ns", "c"))[0] == []

    fold(view, source("s", {"app": "x"}, rv="3"))
    [effects] = fold(view, ObjectDeleted(kind, "ns", "s", "uid", "4"))
    assert effects.evaluate == {("ns", "c")}
    assert view.inputs(("ns", "c"))[0] == [] and view.size()[kind] == 0


def test_a_configmap_is_never_annotated_nor_released_where_a_secret_would_be() -> None:
    view = View()
    fold(
        view,
        bundle_check("bundles", {"trust": "yes"}, secrets={"trust": "yes"}),
        configmap("ca", {"trust": "yes"}),
        secret("ca", {"trust": "yes"}),
    )
    [configmap_again, secret_again] = fold(
        view, configmap("ca", {"trust": "yes"}, rv="2"), secret("ca", {"trust": "yes"}, rv="2")
    )
    assert configmap_again == Effects()
    assert secret_again.annotated == {("ns", "ca")}

    fold(view, secret("ca", {"trust": "yes"}, rv="3", annotations={"certcheck.dev/state": "Valid"}))
    [deleted] = fold(view, ObjectDeleted(subjects.KIND_CERTCHECK, "ns", "bundles", "uid-bundles", "9"))
    assert deleted.released == {("ns", "ca")}  # the Secret only: annotations are the Secret's
    assert list(view.uncovered_annotated()) == [("ns", "ca")]
    [relabelled] = fold(view, configmap("ca", {"trust": "no"}, rv="3"))
    assert relabelled == Effects()


def test_a_configmaps_labels_count_only_for_who_selects_it_and_a_secrets_for_its_certchecks_too() -> None:
    view = View()
    fold(
        view,
        bundle_check("bundles", {"trust": "yes"}, secrets={"app": "x"}),
        configmap("ca", {"trust": "yes"}),
        secret("s", {"app": "x"}),
    )
    [configmap_relabelled, secret_relabelled] = fold(
        view,
        configmap("ca", {"trust": "yes", "extra": "1"}, rv="2"),
        secret("s", {"app": "x", "extra": "1"}, rv="2"),
    )
    assert configmap_relabelled.evaluate == set()
    assert secret_relabelled.evaluate == {("ns", "bundles")}


def test_a_certcheck_whose_configmap_selector_changes_recovers_configmaps_only() -> None:
    view = View()
    fold(
        view,
        bundle_check("both", {"trust": "yes"}, secrets={"app": "x"}),
        certcheck("neighbour", {"app": "x"}),
        secret("s", {"app": "x"}),
        configmap("ca", {"trust": "yes"}),
        configmap("other", {"trust": "other"}),
    )
    # The same spec but for the selector of ConfigMaps (and the resourceVersion): not a status update.
    moved = bundle_check("both", {"trust": "other"}, secrets={"app": "x"})
    [effects] = fold(view, msgspec.structs.replace(moved, resource_version="2"))

    assert effects.evaluate == {("ns", "both")}  # the Secret's coverage is the same: not its neighbour
    assert effects.released == set()
    inputs, coverage = view.inputs(("ns", "both"))
    assert [(v.kind, v.name) for v in inputs] == [("Secret", "s"), ("ConfigMap", "other")]
    assert coverage == {"s": model.Coverage(("both", "neighbour"), 30)}
    configmaps = view.sources[subjects.KIND_CONFIGMAP]
    ca, other = configmaps.get("ns", "ca"), configmaps.get("ns", "other")
    assert ca is not None and ca.covered_by == set()
    assert other is not None and other.covered_by == {"both"}


def test_a_secret_gaining_a_key_without_a_certificate_reevaluates_a_certcheck_that_names_it() -> None:
    view = View()
    fold(
        view, msgspec.structs.replace(certcheck("a", {"app": "x"}), keys=["extra"]), secret("s", {"app": "x"})
    )
    [effects] = fold(view, msgspec.structs.replace(secret("s", {"app": "x"}, rv="2"), other_keys=["extra"]))
    assert effects.evaluate == {("ns", "a")}
