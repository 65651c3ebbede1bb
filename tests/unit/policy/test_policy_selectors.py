from __future__ import annotations

from typing import Any

import pytest

from imageward.policy import selectors

LABELS = {"env": "prod", "team": "web", "example.com/tier": "1"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, True),
        ({}, True),
        ({"matchLabels": {"env": "prod"}}, True),
        ({"matchLabels": {"env": "prod", "team": "web"}}, True),
        ({"matchLabels": {"env": "dev"}}, False),
        ({"matchLabels": {"missing": ""}}, False),
        ({"matchLabels": {"example.com/tier": "1"}}, True),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev", "prod"]}]}, True),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]}, False),
        ({"matchExpressions": [{"key": "nope", "operator": "In", "values": ["x"]}]}, False),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}, True),
        ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}, False),
        # NotIn matches an absent key, as in Kubernetes.
        ({"matchExpressions": [{"key": "nope", "operator": "NotIn", "values": ["x"]}]}, True),
        ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "nope", "operator": "Exists", "values": []}]}, False),
        ({"matchExpressions": [{"key": "nope", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, False),
        (
            {
                "matchLabels": {"env": "prod"},
                "matchExpressions": [{"key": "team", "operator": "In", "values": ["api"]}],
            },
            False,
        ),
    ],
)
def test_evaluate(selector: dict[str, Any] | None, expected: bool) -> None:
    parsed = selectors.parse_label_selector(selector)
    assert selectors.evaluate_label_selector(parsed, LABELS) is expected


def test_empty_selector_matches_no_labels() -> None:
    assert selectors.evaluate_label_selector(selectors.parse_label_selector({}), {})
    assert selectors.parse_label_selector(None).is_empty


@pytest.mark.parametrize(
    ("selector", "path", "reason"),
    [
        ([], "sel", "must be an object with matchLabels and/or matchExpressions"),
        ({"matchLabel": {}}, "sel", "unknown field 'matchLabel'"),
        ({"matchLabels": []}, "sel.matchLabels", "must be a map of label keys to values"),
        (
            {"matchLabels": {"enabled": True}},
            "sel.matchLabels[enabled]",
            "label value True must be a string (quote it)",
        ),
        (
            {"matchLabels": {"bad key": "x"}},
            "sel.matchLabels[bad key]",
            "label key 'bad key': name must be at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric",
        ),
        (
            {"matchLabels": {"Example.com/x": "x"}},
            "sel.matchLabels[Example.com/x]",
            "label key 'Example.com/x': prefix must be a DNS subdomain",
        ),
        (
            {"matchLabels": {"a": "-x"}},
            "sel.matchLabels[a]",
            "label value '-x' must be at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric",
        ),
        ({"matchExpressions": {}}, "sel.matchExpressions", "must be a list"),
        (
            {"matchExpressions": [{"key": "a", "operator": "Is", "values": ["x"]}]},
            "sel.matchExpressions[0].operator",
            "'Is' is not one of In, NotIn, Exists, DoesNotExist",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In"}]},
            "sel.matchExpressions[0].values",
            "must be non-empty for operator In",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
            "sel.matchExpressions[0].values",
            "must be empty for operator Exists",
        ),
        (
            {"matchExpressions": [{"operator": "Exists"}]},
            "sel.matchExpressions[0].key",
            "label key must be a non-empty string",
        ),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
            "sel.matchExpressions[0].values",
            "must be a list of strings",
        ),
    ],
)
def test_invalid(selector: Any, path: str, reason: str) -> None:
    with pytest.raises(selectors.SelectorError) as excinfo:
        selectors.parse_label_selector(selector, path="sel")
    assert (excinfo.value.path, excinfo.value.reason) == (path, reason)
