from __future__ import annotations

import pytest

from schemas.messages import LabelSelector, SelectorRequirement
from services.domain.selector import matches, selector_error


def req(key: str, operator: str, *values: str) -> SelectorRequirement:
    return SelectorRequirement(key=key, operator=operator, values=list(values))


@pytest.mark.parametrize(
    "selector,labels,expected",
    [
        (LabelSelector(match_labels={"app": "a"}), {"app": "a", "x": "y"}, True),
        (LabelSelector(match_labels={"app": "a"}), {"app": "b"}, False),
        (LabelSelector(), {}, True),
        (LabelSelector(match_expressions=[req("tier", "In", "web", "api")]), {"tier": "api"}, True),
        (LabelSelector(match_expressions=[req("tier", "In", "web")]), {}, False),
        (LabelSelector(match_expressions=[req("tier", "NotIn", "web")]), {}, True),
        (LabelSelector(match_expressions=[req("tier", "NotIn", "web")]), {"tier": "web"}, False),
        (LabelSelector(match_expressions=[req("tier", "Exists")]), {"tier": ""}, True),
        (LabelSelector(match_expressions=[req("tier", "DoesNotExist")]), {"tier": ""}, False),
        (
            LabelSelector(match_labels={"app": "a"}, match_expressions=[req("t", "Exists")]),
            {"app": "a"},
            False,
        ),
    ],
)
def test_label_selector_semantics(selector: LabelSelector, labels: dict[str, str], expected: bool) -> None:
    assert matches(selector, labels) is expected


def test_in_without_values_is_reported_with_its_position() -> None:
    error = selector_error(LabelSelector(match_expressions=[req("a", "Exists"), req("b", "In")]))
    assert error == "spec.selector.matchExpressions[1]: operator In needs at least one value"


def test_missing_selector_is_reported() -> None:
    assert selector_error(None) == "spec.selector is missing"
