"""The exporter's series: computed from the same view, with the same rules, as the status."""

from __future__ import annotations

from datetime import UTC, datetime

from devcluster.certs import expiring_in
from schemas.messages import CertCheckObserved, LabelSelector, SecretObserved
from services.domain.view import View
from services.evaluator import core
from services.exporter.collector import families
from tests.sources import facts_source

NOW = datetime.now(UTC)


def _series(view: View, family: str) -> list[tuple[dict[str, str], float]]:
    found = next(f for f in families([view], NOW) if f.name == family)
    return [(sample.labels, sample.value) for sample in found.samples]


def test_the_metrics_count_the_certificates_the_status_counts_when_spec_keys_picks_some() -> None:
    app, _ = expiring_in(10, "app.test")
    other, _ = expiring_in(100, "other.test")
    view = View()
    view.apply(
        1,
        CertCheckObserved(
            namespace="ns",
            name="check",
            uid="uid-check",
            resource_version="1",
            generation=1,
            threshold_days=30,
            selector=LabelSelector(match_labels={"app": "x"}),
            keys=["app.pem"],
        ),
    )
    view.apply(
        2,
        SecretObserved(
            namespace="ns",
            name="bundle",
            uid="uid-bundle",
            resource_version="2",
            type="Opaque",
            labels={"app": "x"},
            sources=[facts_source("app.pem", app), facts_source("other.pem", other)],
        ),
    )
    entry = view.certcheck(("ns", "check"))
    assert entry is not None
    secrets, coverage = view.inputs(("ns", "check"))
    status = core.evaluate(entry.spec, secrets, coverage, None, NOW).status
    assert [c.key for c in status.certificates] == ["app.pem"]
    not_after = _series(view, "certcheck_certificate_not_after_timestamp_seconds")
    assert [labels["secret_key"] for labels, _ in not_after] == ["app.pem"]
    assert [value for _, value in _series(view, "certcheck_certcheck_targets")] == [status.target_certs_count]
