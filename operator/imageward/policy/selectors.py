"""Kubernetes LabelSelector (matchLabels + matchExpressions) parsing and evaluation.

Semantics follow apimachinery's `labels.Selector`: requirements are ANDed, an empty
selector matches everything, `NotIn` and `DoesNotExist` match when the key is absent.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

from imageward import errors, records

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import Any

# apimachinery validation: qualified names and label values.
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)
_MAX_NAME = 63
_MAX_PREFIX = 253


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class SelectorError(errors.ImagewardError):
    """A selector that cannot be used; `path` names the bad field."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class Operator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class Requirement(records.Record):
    """One label selector requirement: a key, an operator and its values."""

    __slots__ = ("key", "operator", "values")
    key: str
    operator: Operator
    values: frozenset[str]

    def __init__(
        self,
        key: str,
        operator: Operator,
        values: frozenset[str] = frozenset(),
    ) -> None:
        _set(self, "key", key)
        _set(self, "operator", operator)
        _set(self, "values", values)


class LabelSelector(records.Record):
    """matchLabels entries become `In` requirements with one value, as apimachinery does."""

    __slots__ = ("requirements",)
    requirements: tuple[Requirement, ...]

    def __init__(
        self,
        requirements: tuple[Requirement, ...] = (),
    ) -> None:
        _set(self, "requirements", requirements)

    @property
    def is_empty(self) -> bool:
        return not self.requirements


EMPTY = LabelSelector()


def _validate_key(path: str, key: object) -> str:
    if not isinstance(key, str) or not key:
        raise SelectorError(path, "label key must be a non-empty string")
    prefix, slash, name = key.rpartition("/")
    if slash and (
        not prefix or len(prefix) > _MAX_PREFIX or not _DNS_SUBDOMAIN_RE.fullmatch(prefix)
    ):
        raise SelectorError(path, f"label key {key!r}: prefix must be a DNS subdomain")
    if len(name) > _MAX_NAME or not _NAME_RE.fullmatch(name):
        raise SelectorError(
            path,
            f"label key {key!r}: name must be at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric",
        )
    return key


def _validate_value(path: str, value: object) -> str:
    if not isinstance(value, str):
        # YAML turns `enabled: true` or `tier: 1` into a bool or int; Kubernetes refuses
        # them too, so say how to fix it.
        raise SelectorError(path, f"label value {value!r} must be a string (quote it)")
    if value and (len(value) > _MAX_NAME or not _NAME_RE.fullmatch(value)):
        raise SelectorError(
            path,
            f"label value {value!r} must be at most 63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric",
        )
    return value


def _parse_expression(path: str, expression: object) -> Requirement:
    if not isinstance(expression, Mapping):
        raise SelectorError(path, "must be an object with key, operator and values")
    unknown = set(expression) - {"key", "operator", "values"}
    if unknown:
        raise SelectorError(path, f"unknown field {sorted(unknown)[0]!r}")
    key = _validate_key(f"{path}.key", expression.get("key"))
    operator_text = expression.get("operator")
    try:
        operator = Operator(operator_text)
    except ValueError:
        raise SelectorError(
            f"{path}.operator",
            f"{operator_text!r} is not one of In, NotIn, Exists, DoesNotExist",
        ) from None
    raw_values = expression.get("values")
    if raw_values is None:
        raw_values = []
    if not isinstance(raw_values, list):
        raise SelectorError(f"{path}.values", "must be a list of strings")
    values = frozenset(
        _validate_value(f"{path}.values[{index}]", value) for index, value in enumerate(raw_values)
    )
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        raise SelectorError(f"{path}.values", f"must be non-empty for operator {operator.value}")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        raise SelectorError(f"{path}.values", f"must be empty for operator {operator.value}")
    return Requirement(key=key, operator=operator, values=values)


def parse_label_selector(obj: Mapping[str, Any] | None, *, path: str = "selector") -> LabelSelector:
    """Parse a LabelSelector object; None and {} are the empty (match-all) selector."""
    if obj is None:
        return EMPTY
    if not isinstance(obj, Mapping):
        raise SelectorError(path, "must be an object with matchLabels and/or matchExpressions")
    unknown = set(obj) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(path, f"unknown field {sorted(unknown)[0]!r}")
    requirements: list[Requirement] = []
    match_labels = obj.get("matchLabels")
    if match_labels is None:
        match_labels = {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError(f"{path}.matchLabels", "must be a map of label keys to values")
    for key, value in match_labels.items():
        entry = f"{path}.matchLabels[{key}]"
        requirements.append(
            Requirement(
                key=_validate_key(entry, key),
                operator=Operator.IN,
                values=frozenset({_validate_value(entry, value)}),
            )
        )
    expressions = obj.get("matchExpressions")
    if expressions is None:
        expressions = []
    if not isinstance(expressions, list):
        raise SelectorError(f"{path}.matchExpressions", "must be a list")
    for index, expression in enumerate(expressions):
        requirements.append(_parse_expression(f"{path}.matchExpressions[{index}]", expression))
    return LabelSelector(requirements=tuple(requirements))


def evaluate_requirement(requirement: Requirement, labels: Mapping[str, str]) -> bool:
    present = requirement.key in labels
    match requirement.operator:
        case Operator.IN:
            return present and labels[requirement.key] in requirement.values
        case Operator.NOT_IN:
            return not present or labels[requirement.key] not in requirement.values
        case Operator.EXISTS:
            return present
        case Operator.DOES_NOT_EXIST:
            return not present


def evaluate_label_selector(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    return all(evaluate_requirement(requirement, labels) for requirement in selector.requirements)
