"""AdmissionReview requests: the fields imageward reads, typed and checked.

Kopf parses reviews itself in its webhook server; `parse_review` is for the places that
see raw bodies: tests, the benchmark client, and defensive checks in front of a handler
(a fuzzed body must get a clear error, never an exception from deep inside). It returns
a normalised copy holding only the fields read, with absent optional fields filled in
the way the apiserver means them (no subresource is "", no dry run is False).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, TypedDict, cast

from imageward import errors

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]

OPERATIONS: Final[tuple[Operation, ...]] = ("CREATE", "UPDATE", "DELETE", "CONNECT")
API_VERSIONS: Final = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
KIND: Final = "AdmissionReview"


class GroupVersionKind(TypedDict):
    group: str
    """"" for the core group (Pods)."""
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class UserInfo(TypedDict):
    username: str
    uid: str
    groups: list[str]


class AdmissionRequest(TypedDict):
    uid: str
    """Echoed in the response; the apiserver matches answers to requests by it."""
    kind: GroupVersionKind
    resource: GroupVersionResource
    subResource: str
    """"" for the object itself; "ephemeralcontainers", "status", ... for subresources."""
    operation: Operation
    namespace: str
    """"" for cluster-scoped objects."""
    name: str
    """"" on CREATE with metadata.generateName (the name is not chosen yet)."""
    object: Mapping[str, Any] | None
    """The object as admitted; None for DELETE."""
    oldObject: Mapping[str, Any] | None
    """The stored object for UPDATE and DELETE; None for CREATE."""
    dryRun: bool
    """True when nothing will be persisted: the handler must have no side effects."""
    userInfo: UserInfo


class AdmissionReview(TypedDict):
    apiVersion: str
    kind: str
    request: AdmissionRequest


def build_json_type(value: object) -> str:
    """The JSON type name of a decoded value, for errors about malformed input."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _shown(value: object) -> str:
    """A bad value as the error shows it: strings quoted and cut, anything else by type."""
    return repr(value[:60]) if isinstance(value, str) else build_json_type(value)


def _mapping(value: object, path: str, *, required: bool) -> Mapping[str, Any] | None:
    if value is None:
        if required:
            raise errors.MalformedReviewError(path, "required")
        return None
    if type(value) is not dict and not isinstance(value, Mapping):  # dict: no ABC check
        raise errors.MalformedReviewError(path, f"must be an object, not {build_json_type(value)}")
    return value


def _string(obj: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise errors.MalformedReviewError(f"{path}.{key}", "required")
        return ""
    if not isinstance(value, str):
        raise errors.MalformedReviewError(
            f"{path}.{key}", f"must be a string, not {build_json_type(value)}"
        )
    if required and not value:
        raise errors.MalformedReviewError(f"{path}.{key}", "must not be empty")
    return value


def _parse_kind(obj: Mapping[str, Any], path: str) -> GroupVersionKind:
    found = _mapping(obj.get("kind"), f"{path}.kind", required=True)
    assert found is not None  # required=True
    return {
        "group": _string(found, "group", f"{path}.kind"),
        "version": _string(found, "version", f"{path}.kind", required=True),
        "kind": _string(found, "kind", f"{path}.kind", required=True),
    }


def _parse_resource(obj: Mapping[str, Any], path: str) -> GroupVersionResource:
    found = _mapping(obj.get("resource"), f"{path}.resource", required=True)
    assert found is not None  # required=True
    return {
        "group": _string(found, "group", f"{path}.resource"),
        "version": _string(found, "version", f"{path}.resource", required=True),
        "resource": _string(found, "resource", f"{path}.resource", required=True),
    }


def _parse_user(obj: Mapping[str, Any], path: str) -> UserInfo:
    path = f"{path}.userInfo"
    found = _mapping(obj.get("userInfo"), path, required=False) or {}
    raw_groups = found.get("groups")
    groups: list[str] = []
    if raw_groups is not None:
        if not isinstance(raw_groups, list | tuple):
            raise errors.MalformedReviewError(
                f"{path}.groups", f"must be an array, not {build_json_type(raw_groups)}"
            )
        for index, group in enumerate(raw_groups):
            if not isinstance(group, str):
                raise errors.MalformedReviewError(
                    f"{path}.groups[{index}]", f"must be a string, not {build_json_type(group)}"
                )
            groups.append(group)
    return {
        "username": _string(found, "username", path),
        "uid": _string(found, "uid", path),
        "groups": groups,
    }


def parse_request(obj: object, *, path: str = "request") -> AdmissionRequest:
    """Check and normalise the `request` of an AdmissionReview."""
    request = _mapping(obj, path, required=True)
    assert request is not None  # required=True
    operation = request.get("operation")
    if operation not in OPERATIONS:
        raise errors.MalformedReviewError(
            f"{path}.operation",
            f"must be one of {', '.join(OPERATIONS)}, not {_shown(operation)}",
        )
    body = _mapping(request.get("object"), f"{path}.object", required=False)
    if body is None and operation in ("CREATE", "UPDATE"):
        raise errors.MalformedReviewError(f"{path}.object", f"required for {operation}")
    dry_run = request.get("dryRun")
    if dry_run is not None and not isinstance(dry_run, bool):
        raise errors.MalformedReviewError(
            f"{path}.dryRun", f"must be a boolean, not {build_json_type(dry_run)}"
        )
    return {
        "uid": _string(request, "uid", path, required=True),
        "kind": _parse_kind(request, path),
        "resource": _parse_resource(request, path),
        "subResource": _string(request, "subResource", path),
        "operation": cast(Operation, operation),
        "namespace": _string(request, "namespace", path),
        "name": _string(request, "name", path),
        "object": body,
        "oldObject": _mapping(request.get("oldObject"), f"{path}.oldObject", required=False),
        "dryRun": bool(dry_run),
        "userInfo": _parse_user(request, path),
    }


def parse_review(body: object) -> AdmissionRequest:
    """Check an AdmissionReview body and return its normalised request.

    Raises errors.MalformedReviewError naming the field (`request.kind.kind`) and what
    is wrong with it; any input, including non-JSON Python values, gets that or a result.
    """
    review = _mapping(body, "AdmissionReview", required=True)
    assert review is not None  # required=True
    api_version = review.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise errors.MalformedReviewError(
            "apiVersion", f"must be one of {', '.join(API_VERSIONS)}, not {_shown(api_version)}"
        )
    if review.get("kind") != KIND:
        raise errors.MalformedReviewError(
            "kind", f"must be {KIND}, not {_shown(review.get('kind'))}"
        )
    return parse_request(review.get("request"))
