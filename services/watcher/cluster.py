"""ClusterCertChecks and the cluster-scoped sources, as the watcher publishes them. Pure but for a lock.

A ClusterCertCheck is published as one *share* per namespace its ``namespaceSelector`` selects, plus one
share in subjects.CLUSTER_NAMESPACE (see services/domain/clusterchecks.py): each a CertCheckObserved of
that namespace, so the partition of the namespace evaluates it like any CertCheck there. ``Shares`` holds
the namespaces' labels and the ClusterCertChecks (both always listed in full, they are few) and says
which shares to publish or remove when either changes.

Webhook configurations, APIServices and CRDs are published only while they hold a CA bundle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from schemas import subjects
from schemas.messages import CertCheckObserved, CertSource, ClusterSourceObserved, LabelSelector
from services.domain.clusterchecks import BY_KIND, share_name
from services.domain.selector import matches, requirements_error
from services.watcher.extract import (
    ObjectMeta,
    RawCertCheck,
    RawCertCheckSpec,
    bounded_sources,
    certcheck_observed,
    read_cert_source,
)
from services.watcher.publisher import Change, Delete, Listed, Upsert

SHARES_SCOPE = "clustercertcheck"  # the scope shares are published under (a CertCheck's is "certcheck")


# --- the Kubernetes objects, as much of them as certcheck reads -----------------------------------------


class RawNamespace(msgspec.Struct):
    metadata: ObjectMeta


class RawClusterCertCheckSpec(RawCertCheckSpec):
    namespaceSelector: LabelSelector | None = None
    sources: list[str] | None = None  # Kubernetes kinds (ValidatingWebhookConfiguration, ...)


class RawClusterCertCheck(msgspec.Struct):
    metadata: ObjectMeta
    spec: RawClusterCertCheckSpec = msgspec.field(default_factory=RawClusterCertCheckSpec)


class _ClientConfig(msgspec.Struct):
    caBundle: str | None = None


class _Webhook(msgspec.Struct):
    name: str = ""
    clientConfig: _ClientConfig = msgspec.field(default_factory=_ClientConfig)


class RawWebhookConfiguration(msgspec.Struct):
    metadata: ObjectMeta
    webhooks: list[_Webhook] | None = None


class _APIServiceSpec(msgspec.Struct):
    caBundle: str | None = None


class RawAPIService(msgspec.Struct):
    metadata: ObjectMeta
    spec: _APIServiceSpec = msgspec.field(default_factory=_APIServiceSpec)


class _ConversionWebhook(msgspec.Struct):
    clientConfig: _ClientConfig = msgspec.field(default_factory=_ClientConfig)


class _Conversion(msgspec.Struct):
    webhook: _ConversionWebhook | None = None


class _CRDSpec(msgspec.Struct):
    conversion: _Conversion | None = None


class RawCRD(msgspec.Struct):
    metadata: ObjectMeta
    spec: _CRDSpec = msgspec.field(default_factory=_CRDSpec)


RawClusterSource = RawWebhookConfiguration | RawAPIService | RawCRD
APISERVICE_KEY = "caBundle"
MAX_WEBHOOKS = 500  # per configuration (they hold a handful): the rest is reported, not read
CRD_KEY = "conversion"


def _bundles(raw: RawClusterSource) -> list[tuple[str, str]]:
    """(key, base64 CA bundle) of every bundle the object holds."""
    if isinstance(raw, RawWebhookConfiguration):
        webhooks = (raw.webhooks or [])[:MAX_WEBHOOKS]
        return [(w.name or f"webhooks[{i}]", w.clientConfig.caBundle or "") for i, w in enumerate(webhooks)]
    if isinstance(raw, RawAPIService):
        return [(APISERVICE_KEY, raw.spec.caBundle or "")]
    webhook = raw.spec.conversion.webhook if raw.spec.conversion else None
    return [(CRD_KEY, webhook.clientConfig.caBundle or "")] if webhook else []


def cluster_source_observed(token: str, raw: RawClusterSource) -> ClusterSourceObserved | None:
    """The object's CA bundles, or None when it holds none (it is then not published)."""
    bundles = [(key, bundle) for key, bundle in _bundles(raw) if bundle]
    if not bundles:
        return None
    sources: list[CertSource] = [read_cert_source(key, bundle) for key, bundle in bundles]
    if isinstance(raw, RawWebhookConfiguration) and len(raw.webhooks or ()) > MAX_WEBHOOKS:
        unread = len(raw.webhooks or ()) - MAX_WEBHOOKS
        sources.append(CertSource(f"webhooks[{MAX_WEBHOOKS}:]", error=f"{unread} more webhooks not read"))
    meta = raw.metadata
    return ClusterSourceObserved(
        object_kind=token,
        namespace=subjects.CLUSTER_NAMESPACE,
        name=meta.name,
        uid=meta.uid,
        resource_version=meta.resourceVersion,
        labels=dict(meta.labels or {}),
        sources=bounded_sources(sources),
    )


# --- shares ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Namespace:
    labels: dict[str, str]
    resource_version: str


@dataclass(frozen=True)
class _Check:
    template: CertCheckObserved  # the share, but for its namespace
    namespace_selector: LabelSelector | None
    selectable: bool  # its namespace selector can be applied (else it selects no namespace)

    def selects(self, labels: dict[str, str]) -> bool:
        selector = self.namespace_selector
        return self.selectable and (selector is None or matches(selector, labels))


NAMESPACES = "namespaces"
CHECKS = "clustercertchecks"


def _check(raw: RawClusterCertCheck) -> _Check:
    spec = raw.spec
    observed = certcheck_observed(RawCertCheck(raw.metadata, spec))
    tokens = sorted({BY_KIND[kind].token for kind in spec.sources or () if kind in BY_KIND})
    template = msgspec.structs.replace(
        observed,
        name=share_name(raw.metadata.name),
        status=msgspec.Raw(b"null"),  # the ClusterCertCheck's own status is no share's diff base
        cluster_sources=tokens or None,
        namespace_selector=spec.namespaceSelector,
    )
    selector = spec.namespaceSelector
    usable = selector is None or requirements_error("namespaceSelector", selector) is None
    return _Check(template, spec.namespaceSelector, usable)


def _same_spec(a: CertCheckObserved, b: CertCheckObserved) -> bool:
    """Equal in all a share carries but the resourceVersion (a status write changes nothing)."""
    return msgspec.structs.replace(a, resource_version="") == msgspec.structs.replace(b, resource_version="")


class Shares:
    """Which shares of which ClusterCertChecks to publish, kept up to date from the watches of
    Namespaces and ClusterCertChecks (each in its own thread: hence the lock)."""

    def __init__(self, put: Callable[[Change], None]) -> None:
        self._put = put
        self._lock = threading.Lock()
        self._namespaces: dict[str, _Namespace] = {}
        self._checks: dict[str, _Check] = {}
        self._shares: dict[tuple[str, str], CertCheckObserved] = {}  # (namespace, share name) -> share
        self._listed: set[str] = set()

    def namespace(self, raw: RawNamespace, deleted: bool = False) -> None:
        meta = raw.metadata
        with self._lock:
            if deleted:
                self._namespaces.pop(meta.name, None)
            else:
                self._namespaces[meta.name] = _Namespace(dict(meta.labels or {}), meta.resourceVersion)
            for check in self._checks.values():
                self._sync(check, meta.name)

    def check(self, raw: RawClusterCertCheck, deleted: bool = False) -> None:
        name = raw.metadata.name
        with self._lock:
            if deleted:
                gone = self._checks.pop(name, None)
                if gone is not None:
                    self._remove_all(gone.template.name)
                return
            check = _check(raw)
            previous = self._checks.get(name)
            if (
                previous is not None
                and _same_spec(previous.template, check.template)
                and previous.namespace_selector == check.namespace_selector
            ):
                return  # its status written, say: no share changes
            if previous is not None and previous.template.uid != check.template.uid:
                self._remove_all(previous.template.name)
            self._checks[name] = check
            for namespace in [subjects.CLUSTER_NAMESPACE, *self._namespaces]:
                self._sync(check, namespace)

    def listed(self, which: str, keys: set[tuple[str, str]]) -> None:
        """A LIST of Namespaces or ClusterCertChecks returned ``keys``: what it did not is gone. Once both
        have listed, the shares of this run are all there are: the others are removed."""
        names = {name for _, name in keys}
        with self._lock:
            if which == NAMESPACES:
                for name in set(self._namespaces) - names:
                    del self._namespaces[name]
                    for check in self._checks.values():
                        self._sync(check, name)
            else:
                for name in set(self._checks) - names:
                    self._remove_all(self._checks.pop(name).template.name)
            self._listed.add(which)
            if self._listed >= {NAMESPACES, CHECKS}:
                self._put(Listed(subjects.KIND_CERTCHECK, set(self._shares), SHARES_SCOPE))

    def _desired(self, check: _Check, namespace: str) -> CertCheckObserved | None:
        if namespace == subjects.CLUSTER_NAMESPACE:
            return msgspec.structs.replace(check.template, namespace=namespace)
        held = self._namespaces.get(namespace)
        if held is None or not check.selects(held.labels):
            return None
        # The namespace's resourceVersion in the share's own: a share published again after it was
        # removed is a new message, never taken for a repeat of the first.
        version = f"{check.template.resource_version}.{held.resource_version}"
        return msgspec.structs.replace(
            check.template, namespace=namespace, resource_version=version, cluster_sources=None
        )

    def _sync(self, check: _Check, namespace: str) -> None:
        key = (namespace, check.template.name)
        desired = self._desired(check, namespace)
        held = self._shares.get(key)
        if desired is None:
            if held is not None:
                del self._shares[key]
                self._put(Delete(subjects.KIND_CERTCHECK, namespace, key[1], held.uid, "", SHARES_SCOPE))
            return
        if held is not None and _same_spec(held, desired):
            return
        self._shares[key] = desired
        self._put(Upsert(subjects.KIND_CERTCHECK, desired, SHARES_SCOPE))

    def _remove_all(self, share: str) -> None:
        for key in [key for key in self._shares if key[1] == share]:
            held = self._shares.pop(key)
            self._put(Delete(subjects.KIND_CERTCHECK, key[0], share, held.uid, "", SHARES_SCOPE))
