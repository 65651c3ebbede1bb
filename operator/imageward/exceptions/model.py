"""A parsed ImagePolicyException: typed, frozen, validated once.

`parse_exception` accepts the object as the API server returns it and raises
`ExceptionError` naming the field and the reason. Only what is parsed can waive
anything: an exception that does not parse is reported (status `Invalid`) and never
applies, so a typo can only make imageward stricter.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping
from typing import Any, Final

from imageward import constants, errors
from imageward.policy import globs, model, selectors

KIND: Final = "ImagePolicyException"
PLURAL: Final = "imagepolicyexceptions"

# Bounds shared with crds/imagepolicyexceptions.yaml.
MAX_POLICIES = 16
MAX_RULES = 16
MAX_IMAGES = 64
MAX_REASON_LENGTH = 1024

#: Rule ids an exception may name (`policies[].rules`): every id a violation can carry.
RULE_IDS: Final = frozenset(
    {
        constants.RULE_ALLOWED_REGISTRIES,
        constants.RULE_FORBIDDEN_TAGS,
        constants.RULE_REQUIRE_DIGEST,
        constants.RULE_MAX_COMPRESSED_SIZE,
        constants.RULE_MAX_LAYERS,
        constants.RULE_MAX_LAYER_SIZE,
        constants.RULE_FORBID_ROOT_USER,
        constants.RULE_SIGNATURES,
        constants.RULE_ATTESTATIONS,
        constants.RULE_LOOKUP,
        constants.RULE_PIN_DIGEST,
    }
)

_DNS_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
)


class ExceptionError(errors.ImagewardError):
    """An ImagePolicyException that cannot be used; it never waives anything."""

    def __init__(self, namespace: str, name: str, reason: str) -> None:
        self.namespace = namespace
        self.name = name
        self.reason = reason
        super().__init__(f"ImagePolicyException {namespace}/{name}: {reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyRef:
    """A policy the exception waives, and which of its rules (empty: every rule)."""

    name: str
    rules: tuple[str, ...] = ()

    def covers(self, rule: str) -> bool:
        return not self.rules or rule in self.rules


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyException:
    namespace: str
    name: str
    uid: str
    policies: tuple[PolicyRef, ...]
    images: tuple[globs.ImagePattern, ...] | None
    """None: every image of the pods selected."""

    pod_selector: selectors.LabelSelector | None
    """None: every pod (of the images selected)."""

    reason: str
    expires: datetime.datetime
    generation: int = 0
    deleting: bool = False
    """metadata.deletionTimestamp is set: it no longer applies."""

    status: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """What the object's status says now (written by the scanning replica; never read
    for a decision)."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def policy(self, name: str) -> PolicyRef | None:
        for ref in self.policies:
            if ref.name == name:
                return ref
        return None

    def expired(self, now: datetime.datetime) -> bool:
        return now >= self.expires


@dataclasses.dataclass(frozen=True, slots=True)
class InvalidException:
    """An exception that did not parse: reported, never applied."""

    namespace: str
    name: str
    uid: str
    reason: str
    generation: int = 0
    status: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


Parsed = PolicyException | InvalidException


class _Invalid(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")


def _list(obj: Mapping[str, Any], key: str, path: str, *, max_items: int) -> list[Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Invalid(f"{path}.{key}", "must be a list")
    if len(value) > max_items:
        raise _Invalid(f"{path}.{key}", f"at most {max_items} entries")
    return value


def _check_fields(obj: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise _Invalid(
            f"{path}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(allowed))})"
        )


def _parse_policy_ref(obj: object, path: str) -> PolicyRef:
    if not isinstance(obj, Mapping):
        raise _Invalid(path, "must be an object with name and optional rules")
    _check_fields(obj, path, {"name", "rules"})
    name = obj.get("name")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(name):
        raise _Invalid(f"{path}.name", f"{name!r} is not an ImagePolicy name")
    rules: list[str] = []
    for index, rule in enumerate(_list(obj, "rules", path, max_items=MAX_RULES) or []):
        if rule not in RULE_IDS:
            raise _Invalid(
                f"{path}.rules[{index}]",
                f"{rule!r} is not a rule id ({', '.join(sorted(RULE_IDS))})",
            )
        rules.append(rule)
    return PolicyRef(name=name, rules=tuple(dict.fromkeys(rules)))


def _parse_spec(
    spec: Mapping[str, Any],
) -> tuple[
    tuple[PolicyRef, ...],
    tuple[globs.ImagePattern, ...] | None,
    selectors.LabelSelector | None,
    str,
    datetime.datetime,
]:
    _check_fields(spec, "spec", {"policies", "images", "podSelector", "reason", "expires"})
    raw_policies = _list(spec, "policies", "spec", max_items=MAX_POLICIES)
    if not raw_policies:
        raise _Invalid("spec.policies", "required: at least one policy")
    policies = tuple(
        _parse_policy_ref(entry, f"spec.policies[{index}]")
        for index, entry in enumerate(raw_policies)
    )
    names = [ref.name for ref in policies]
    if len(set(names)) != len(names):
        raise _Invalid("spec.policies", "names a policy twice")
    images: tuple[globs.ImagePattern, ...] | None = None
    raw_images = _list(spec, "images", "spec", max_items=MAX_IMAGES)
    if raw_images is not None:
        if not raw_images:
            raise _Invalid("spec.images", "empty: the exception would waive nothing (omit for all)")
        patterns = []
        for index, text in enumerate(raw_images):
            if not isinstance(text, str):
                raise _Invalid(f"spec.images[{index}]", "must be a string")
            try:
                patterns.append(globs.parse_image_pattern(text))
            except globs.PatternError as e:
                raise _Invalid(f"spec.images[{index}]", f"{text!r}: {e.reason}") from e
        images = tuple(patterns)
    pod_selector: selectors.LabelSelector | None = None
    if spec.get("podSelector") is not None:
        try:
            pod_selector = selectors.parse_label_selector(
                spec["podSelector"], path="spec.podSelector"
            )
        except selectors.SelectorError as e:
            raise _Invalid(e.path, e.reason) from e
    if images is None and pod_selector is None:
        raise _Invalid("spec", "name images, a podSelector, or both")
    reason = spec.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise _Invalid("spec.reason", "required: why the exception is granted")
    if len(reason) > MAX_REASON_LENGTH:
        raise _Invalid("spec.reason", f"longer than {MAX_REASON_LENGTH} characters")
    try:
        expires = model.parse_time(spec.get("expires"))
    except (ValueError, TypeError) as e:
        raise _Invalid("spec.expires", f"required: an RFC 3339 time ({e})") from None
    return policies, images, pod_selector, " ".join(reason.split()), expires


def parse_exception(obj: Mapping[str, Any]) -> PolicyException:
    """Validate an ImagePolicyException object; raises ExceptionError naming the field."""
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(metadata, Mapping):
        raise ExceptionError("", "<unnamed>", "metadata: required")
    namespace = str(metadata.get("namespace") or "")
    name = str(metadata.get("name") or "<unnamed>")
    if not namespace:
        raise ExceptionError(
            namespace, name, "metadata.namespace: required (the kind is namespaced)"
        )
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ExceptionError(namespace, name, "spec: required")
    try:
        policies, images, pod_selector, reason, expires = _parse_spec(spec)
    except _Invalid as e:
        raise ExceptionError(namespace, name, str(e)) from None
    generation = metadata.get("generation")
    return PolicyException(
        namespace=namespace,
        name=name,
        uid=str(metadata.get("uid") or ""),
        policies=policies,
        images=images,
        pod_selector=pod_selector,
        reason=reason,
        expires=expires,
        generation=generation if isinstance(generation, int) else 0,
        deleting=bool(metadata.get("deletionTimestamp")),
        status=_status(obj),
    )


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    status = obj.get("status")
    if not isinstance(status, Mapping):
        return {}
    return {k: status[k] for k in ("state", "message", "observedGeneration") if k in status}


def project_exception(obj: Mapping[str, Any]) -> Parsed | None:
    """What the watch-fed store keeps of an object: parsed, or why it is unusable."""
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, Mapping) or not metadata.get("name"):
        return None
    try:
        return parse_exception(obj)
    except ExceptionError as e:
        generation = metadata.get("generation")
        return InvalidException(
            namespace=e.namespace,
            name=e.name,
            uid=str(metadata.get("uid") or ""),
            reason=e.reason,
            generation=generation if isinstance(generation, int) else 0,
            status=_status(obj),
        )
