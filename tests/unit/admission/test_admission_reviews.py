from __future__ import annotations

from typing import Any

import pytest

from imageward import errors
from imageward.admission import reviews

from . import samples


def test_create_review() -> None:
    request = reviews.parse_review(samples.review())
    assert request == {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "subResource": "",
        "operation": "CREATE",
        "namespace": "shop",
        "name": "web",
        "object": samples.pod(),
        "oldObject": None,
        "dryRun": False,
        "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:masters"]},
    }


def test_ephemeral_containers_update_in_dry_run() -> None:
    request = reviews.parse_review(
        samples.review(
            operation="UPDATE",
            subResource="ephemeralcontainers",
            oldObject=samples.pod(),
            dryRun=True,
        )
    )
    assert request["subResource"] == "ephemeralcontainers"
    assert request["oldObject"] == samples.pod()
    assert request["dryRun"] is True


def test_delete_has_no_object() -> None:
    request = reviews.parse_review(
        samples.review(operation="DELETE", object=None, oldObject=samples.pod())
    )
    assert request["object"] is None


def test_optional_fields_default() -> None:
    body = samples.review()
    for key in ("subResource", "namespace", "name", "dryRun", "userInfo", "oldObject"):
        body["request"].pop(key, None)
    del body["request"]["kind"]["group"]
    request = reviews.parse_review(body)
    assert request["subResource"] == ""
    assert request["namespace"] == ""
    assert request["dryRun"] is False
    assert request["userInfo"] == {"username": "", "uid": "", "groups": []}
    assert request["kind"]["group"] == ""


def test_v1beta1_is_accepted() -> None:
    body = samples.review()
    body["apiVersion"] = "admission.k8s.io/v1beta1"
    assert reviews.parse_review(body)["uid"]


def _set(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    target: Any = body
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ("apiVersion", "v1", "apiVersion"),
        ("apiVersion", None, "apiVersion"),
        ("kind", "Review", "kind"),
        ("request", None, "request"),
        ("request", [], "request"),
        ("request.uid", KeyError, "request.uid"),
        ("request.uid", "", "request.uid"),
        ("request.uid", 7, "request.uid"),
        ("request.kind", "Pod", "request.kind"),
        ("request.kind", KeyError, "request.kind"),
        ("request.kind.kind", KeyError, "request.kind.kind"),
        ("request.kind.version", 1, "request.kind.version"),
        ("request.resource.resource", "", "request.resource.resource"),
        ("request.resource", None, "request.resource"),
        ("request.operation", "PATCH", "request.operation"),
        ("request.operation", ["CREATE"], "request.operation"),
        ("request.object", None, "request.object"),
        ("request.object", "{}", "request.object"),
        ("request.oldObject", [1], "request.oldObject"),
        ("request.dryRun", "true", "request.dryRun"),
        ("request.namespace", 3, "request.namespace"),
        ("request.subResource", {}, "request.subResource"),
        ("request.userInfo", "admin", "request.userInfo"),
        ("request.userInfo.groups", "system:masters", "request.userInfo.groups"),
        ("request.userInfo.groups", [None], "request.userInfo.groups[0]"),
        ("request.userInfo.username", 1, "request.userInfo.username"),
    ],
)
def test_malformed_reviews_name_the_field(path: str, value: Any, where: str) -> None:
    body = _set(samples.review(), path, value)
    with pytest.raises(errors.MalformedReviewError) as caught:
        reviews.parse_review(body)
    assert caught.value.path == where
    assert where in str(caught.value)


@pytest.mark.parametrize("body", [None, [], "x", 1, b"{}", {}])
def test_not_a_review(body: object) -> None:
    with pytest.raises(errors.MalformedReviewError):
        reviews.parse_review(body)


def test_long_bad_values_are_cut_in_the_message() -> None:
    body = _set(samples.review(), "request.operation", "X" * 10_000)
    with pytest.raises(errors.MalformedReviewError) as caught:
        reviews.parse_review(body)
    assert len(str(caught.value)) < 200
