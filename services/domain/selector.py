"""Kubernetes label selector semantics (matchLabels + matchExpressions). Pure: no I/O."""

from __future__ import annotations

from schemas.messages import LabelSelector

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def selector_error(
    selector: LabelSelector | None,
    configmap_selector: LabelSelector | None = None,
    namespace_selector: LabelSelector | None = None,
    cluster_sources: bool = False,
) -> str | None:
    """Why a CertCheck's selectors are unusable, or None. The CRD schema checks shapes; this the rest.

    ``spec.selector`` picks Secrets and ``spec.configMapSelector`` ConfigMaps; at least one is needed,
    unless (a ClusterCertCheck) ``spec.sources`` names cluster-scoped sources. A ClusterCertCheck's
    ``spec.namespaceSelector`` is checked too.
    """
    if selector is None and configmap_selector is None and not cluster_sources:
        return "spec.selector is missing"
    for field_name, present in (
        ("selector", selector),
        ("configMapSelector", configmap_selector),
        ("namespaceSelector", namespace_selector),
    ):
        error = requirements_error(field_name, present) if present else None
        if error:
            return error
    return None


def requirements_error(field_name: str, selector: LabelSelector) -> str | None:
    for i, req in enumerate(selector.match_expressions):
        where = f"spec.{field_name}.matchExpressions[{i}]"
        if req.operator not in OPERATORS:
            return f"{where}: unknown operator {req.operator!r}"
        if req.operator in ("In", "NotIn") and not req.values:
            return f"{where}: operator {req.operator} needs at least one value"
        if req.operator in ("Exists", "DoesNotExist") and req.values:
            return f"{where}: operator {req.operator} takes no values"
    return None


def matches(selector: LabelSelector, labels: dict[str, str]) -> bool:
    """Whether labels satisfy the selector. An empty selector matches everything (as in Kubernetes)."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In":
            if not present or labels[req.key] not in req.values:
                return False
        elif req.operator == "NotIn":
            if present and labels[req.key] in req.values:
                return False
        elif req.operator == "Exists":
            if not present:
                return False
        elif req.operator == "DoesNotExist":
            if present:
                return False
        else:
            return False
    return True
