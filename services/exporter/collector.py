"""A Prometheus collector over the view. Label names follow x509-certificate-exporter's where they mean
the same thing, so existing dashboards and alerts carry over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from schemas.messages import State
from services.domain import hygiene, model, states
from services.domain.certs import CertFacts
from services.domain.view import View

CERT_LABELS = [
    "secret_namespace",
    "secret_name",
    "secret_key",
    "chain_index",
    "certcheck",
    "subject_CN",
    "issuer_CN",
    "serial_number",
]
ERROR_LABELS = ["secret_namespace", "secret_name", "secret_key", "chain_index", "certcheck", "reason"]
PROBLEM_LABELS = [
    "secret_namespace",
    "secret_name",
    "secret_key",
    "chain_index",
    "certcheck",
    "kind",
    "reason",
]
CERTCHECK_LABELS = ["certcheck_namespace", "certcheck"]
# A ConfigMap's certificates carry configmap_* instead of secret_* labels (as x509-certificate-exporter's).
_OBJECT_LABELS = {
    model.KUBERNETES_KIND_SECRET: ("secret_namespace", "secret_name", "secret_key"),
    model.KUBERNETES_KIND_CONFIGMAP: ("configmap_namespace", "configmap_name", "configmap_key"),
}


# A cluster-scoped object's (a webhook configuration's CA bundle, say): its kind in place of a namespace.
_CLUSTER_OBJECT_LABELS = ("object_kind", "object_name", "object_key")


def _add(family: Metric, label_names: list[str], kind: str, values: list[str], value: float) -> None:
    """A sample with ``label_names``, the object's first three named after its kind."""
    object_labels = _OBJECT_LABELS.get(kind)
    if object_labels is None:
        object_labels, values = _CLUSTER_OBJECT_LABELS, [kind, *values[1:]]
    names = [*object_labels, *label_names[3:]]
    family.add_sample(family.name, dict(zip(names, values, strict=True)), value)


def families(views: Iterable[View], now: datetime) -> list[Metric]:
    """Every series, computed from the views (one per partition held) at ``now``. Pure: no I/O."""
    not_after = GaugeMetricFamily(
        "certcheck_certificate_not_after_timestamp_seconds",
        "The certificate's notAfter, as a Unix timestamp",
        labels=CERT_LABELS,
    )
    not_before = GaugeMetricFamily(
        "certcheck_certificate_not_before_timestamp_seconds",
        "The certificate's notBefore, as a Unix timestamp",
        labels=CERT_LABELS,
    )
    expired = GaugeMetricFamily(
        "certcheck_certificate_expired", "1 if the certificate has expired", labels=CERT_LABELS
    )
    expiring = GaugeMetricFamily(
        "certcheck_certificate_expiring",
        "1 if the certificate is within its CertCheck's threshold and not expired",
        labels=CERT_LABELS,
    )
    error = GaugeMetricFamily(
        "certcheck_certificate_error",
        "1 for a certificate entry that cannot be read, with the reason",
        labels=ERROR_LABELS,
    )
    threshold = GaugeMetricFamily(
        "certcheck_certcheck_threshold_seconds", "The CertCheck's threshold", labels=CERTCHECK_LABELS
    )
    targets = GaugeMetricFamily(
        "certcheck_certcheck_targets", "Certificates a CertCheck evaluates", labels=CERTCHECK_LABELS
    )
    by_state = GaugeMetricFamily(
        "certcheck_certcheck_certificates", "Certificates per state", labels=[*CERTCHECK_LABELS, "state"]
    )
    overdue = GaugeMetricFamily(
        "certcheck_certificate_renewal_overdue",
        "For a certificate cert-manager manages: 1 if it was not renewed an hour after two thirds of "
        "its lifetime",
        labels=CERT_LABELS,
    )
    problem = GaugeMetricFamily(
        "certcheck_certificate_problem",
        "1 for each problem the CertCheck's policy finds with a certificate: kind Weak (reason KeyTooSmall "
        "or WeakSignature) or Chain (reason BrokenChain)",
        labels=PROBLEM_LABELS,
    )
    with_problems = GaugeMetricFamily(
        "certcheck_certcheck_certificates_with_problems",
        "Certificates with a problem of this kind (Weak, Chain)",
        labels=[*CERTCHECK_LABELS, "kind"],
    )
    for view, key in sorted(((v, k) for v in views for k in v.all_certchecks()), key=lambda vk: vk[1]):
        entry = view.certcheck(key)
        assert entry is not None
        namespace, name = key
        days = entry.spec.threshold_days
        secrets, _ = view.inputs(key)
        counts = dict.fromkeys(State, 0)
        problem_counts = dict.fromkeys((hygiene.WEAK, hygiene.CHAIN), 0)
        for secret in secrets:
            for cert in model.selected_entries(secret, entry.spec.keys):  # what the status counts
                where = [namespace, secret.name, cert.key, str(cert.index), name]
                parsed = cert.parsed
                if not isinstance(parsed, CertFacts):
                    _add(error, ERROR_LABELS, secret.kind, [*where, parsed.reason[:200]], 1)
                    counts[State.INVALID] += 1
                    continue
                renew = model.renew_by(secret, cert)
                state = states.classify(parsed, days, now, renew)
                counts[state] += 1
                labels = [*where, parsed.subject_cn or "", parsed.issuer_cn or "", parsed.serial_number]
                _add(not_after, CERT_LABELS, secret.kind, labels, parsed.not_after.timestamp())
                _add(not_before, CERT_LABELS, secret.kind, labels, parsed.not_before.timestamp())
                _add(expired, CERT_LABELS, secret.kind, labels, 1 if state == State.EXPIRED else 0)
                _add(expiring, CERT_LABELS, secret.kind, labels, 1 if state == State.EXPIRING_SOON else 0)
                if renew is not None:
                    _add(
                        overdue, CERT_LABELS, secret.kind, labels, 1 if state == State.RENEWAL_OVERDUE else 0
                    )
                found = hygiene.problems(parsed, entry.spec.policy)
                for kind in {p.kind for p in found}:
                    problem_counts[kind] += 1
                for reason in sorted({(p.kind, p.reason) for p in found}):
                    _add(problem, PROBLEM_LABELS, secret.kind, [*where, *reason], 1)
        threshold.add_metric([namespace, name], days * 86400)
        targets.add_metric([namespace, name], sum(counts.values()))
        for state, count in counts.items():
            by_state.add_metric([namespace, name, str(state)], count)
        for kind, count in problem_counts.items():
            with_problems.add_metric([namespace, name, kind], count)
    return [
        not_after,
        not_before,
        expired,
        expiring,
        overdue,
        error,
        threshold,
        targets,
        by_state,
        problem,
        with_problems,
    ]


class ViewCollector(Collector):
    """Builds the families on the event loop that owns the views, so a scrape never sees one
    half-updated. ``views`` says which views to serve at the moment (the partitions held)."""

    def __init__(
        self,
        views: Callable[[], Iterable[View]],
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.views = views
        self.loop = loop
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        # The registry calls this on registration (on the loop's own thread): names only, no samples.
        yield from families([], self.clock())

    def collect(self) -> Iterator[Metric]:
        async def build() -> list[Metric]:
            return families(self.views(), self.clock())

        yield from asyncio.run_coroutine_threadsafe(build(), self.loop).result(timeout=30)
