"""ImagePolicyExceptions: parsing, and which violations they waive (pure)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from imageward.exceptions import evaluate, model
from imageward.policy import evaluate as policy_evaluate
from imageward.policy import model as policy_model
from imageward.registry import reference as registry_reference

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
LATER = "2026-12-31T00:00:00Z"
EARLIER = "2026-11-30T00:00:00Z"


def body(namespace: str = "shop", name: str = "legacy", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "policies": [{"name": "signed-only"}],
        "images": ["registry.acme/legacy/**"],
        "reason": "vendor image, ticket SEC-1",
        "expires": LATER,
    }
    base.update(spec)
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicyException",
        "metadata": {"name": name, "namespace": namespace, "uid": "u1", "generation": 1},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


def result(
    policy: str = "signed-only",
    rules: tuple[str, ...] = ("signatures",),
    image: str = "registry.acme/legacy/web:1.0",
    mode: policy_model.Mode = policy_model.Mode.ENFORCE,
) -> policy_evaluate.PolicyResult:
    return policy_evaluate.PolicyResult(
        policy=policy,
        mode=mode,
        failure_policy=policy_model.FailurePolicy.FAIL,
        violations=tuple(
            policy_evaluate.Violation(
                policy=policy, rule=rule, image=image, digest=None, message=f"{policy} {rule}"
            )
            for rule in rules
        ),
    )


def apply(
    results: list[policy_evaluate.PolicyResult],
    exceptions: list[model.PolicyException],
    *,
    image: str = "registry.acme/legacy/web:1.0",
    namespace: str = "shop",
    pod_labels: dict[str, str] | None = None,
    allows: dict[str, bool] | None = None,
    now: datetime.datetime = NOW,
) -> tuple[list[policy_evaluate.PolicyResult], list[evaluate.Use]]:
    return evaluate.apply_exceptions(
        results,
        reference=registry_reference.parse_reference(image),
        image=image,
        namespace=namespace,
        pod_labels=pod_labels if pod_labels is not None else {"app": "web"},
        exceptions=exceptions,
        allows=allows if allows is not None else {"signed-only": True, "sizes": True},
        now=now,
    )


def test_parse_keeps_what_was_written() -> None:
    parsed = model.parse_exception(
        body(
            policies=[{"name": "signed-only", "rules": ["signatures", "signatures"]}],
            podSelector={"matchLabels": {"app": "web"}},
        )
    )
    assert parsed.key == "shop/legacy"
    assert parsed.policies == (model.PolicyRef("signed-only", ("signatures",)),)
    assert parsed.images is not None and parsed.images[0].text == "registry.acme/legacy/**"
    assert parsed.pod_selector is not None
    assert parsed.expires == datetime.datetime(2026, 12, 31, tzinfo=datetime.UTC)
    assert parsed.reason == "vendor image, ticket SEC-1"
    assert not parsed.deleting


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"policies": []}, "spec.policies: required"),
        ({"policies": [{"name": "Bad Name"}]}, "spec.policies[0].name: 'Bad Name' is not"),
        ({"policies": [{"name": "p", "rules": ["signature"]}]}, "spec.policies[0].rules[0]"),
        ({"policies": [{"name": "p"}, {"name": "p"}]}, "names a policy twice"),
        ({"images": None}, "spec: name images, a podSelector, or both"),
        ({"images": []}, "spec.images: empty"),
        ({"images": ["ghcr.io/[x"]}, "spec.images[0]"),
        ({"reason": " "}, "spec.reason: required"),
        ({"expires": None}, "spec.expires: required"),
        ({"expires": "tomorrow"}, "spec.expires: required"),
        ({"podSelector": {"matchLabels": {"a b": "c"}}}, "spec.podSelector.matchLabels"),
        ({"extra": 1}, "spec.extra: unknown field"),
    ],
)
def test_parse_refuses_what_cannot_be_used(spec: dict[str, Any], complaint: str) -> None:
    with pytest.raises(model.ExceptionError) as caught:
        model.parse_exception(body(**spec))
    assert complaint in str(caught.value)
    projected = model.project_exception(body(**spec))
    assert isinstance(projected, model.InvalidException)
    assert complaint in projected.reason


def test_waives_the_named_policy_for_matching_images_only() -> None:
    exception = model.parse_exception(body())
    results, uses = apply([result(), result("sizes", ("maxLayers",))], [exception])
    assert results[0].violations == ()
    assert [v.rule for v in results[1].violations] == ["maxLayers"]  # another policy
    (use,) = uses
    assert (use.state, use.policy, use.rules) == ("applied", "signed-only", ("signatures",))
    assert "ImagePolicyException shop/legacy waives ImagePolicy signed-only (signatures)" in (
        evaluate.build_message(use)
    )
    assert "until 2026-12-31T00:00:00Z: vendor image, ticket SEC-1" in evaluate.build_message(use)

    other = "registry.acme/new/web:1.0"
    results, uses = apply([result(image=other)], [exception], image=other)
    assert results[0].violations and not uses


def test_listed_rules_only() -> None:
    exception = model.parse_exception(
        body(policies=[{"name": "signed-only", "rules": ["maxLayers"]}])
    )
    results, uses = apply([result(rules=("signatures", "maxLayers"))], [exception])
    assert [v.rule for v in results[0].violations] == ["signatures"]
    assert uses[0].rules == ("maxLayers",)


def test_never_crosses_namespaces() -> None:
    elsewhere = model.parse_exception(body(namespace="other"))
    results, uses = apply([result()], [elsewhere])
    assert results[0].violations and not uses
    # Even handed one by mistake, and whatever namespace the caller names.
    results, uses = apply([result()], [elsewhere], namespace="")
    assert results[0].violations and not uses


def test_expiry_is_decided_at_decision_time() -> None:
    exception = model.parse_exception(body(expires="2026-12-01T12:00:00Z"))
    before = NOW - datetime.timedelta(seconds=1)
    results, uses = apply([result()], [exception], now=before)
    assert results[0].violations == () and uses[0].state == "applied"
    results, uses = apply([result()], [exception], now=NOW)
    assert results[0].violations and uses[0].state == "expired"
    assert "expired at 2026-12-01T12:00:00Z" in evaluate.build_message(uses[0])


def test_a_policy_that_forbids_exceptions_ignores_them() -> None:
    exception = model.parse_exception(body())
    results, uses = apply([result()], [exception], allows={"signed-only": False})
    assert results[0].violations
    assert uses[0].state == "forbidden"
    assert "allowExceptions: false" in evaluate.build_message(uses[0])


def test_an_unusable_policy_is_never_waived() -> None:
    exception = model.parse_exception(body())
    results, uses = apply([result()], [exception], allows={})
    assert results[0].violations and not uses


def test_pod_selector() -> None:
    exception = model.parse_exception(
        body(images=None, podSelector={"matchLabels": {"app": "legacy"}})
    )
    results, _ = apply([result()], [exception], pod_labels={"app": "web"})
    assert results[0].violations
    results, uses = apply([result()], [exception], pod_labels={"app": "legacy"})
    assert results[0].violations == () and uses[0].state == "applied"


def test_a_tag_glob_never_waives_a_digest() -> None:
    exception = model.parse_exception(body(images=["registry.acme/legacy/web:1.*"]))
    pinned = "registry.acme/legacy/web:1.0@sha256:" + "a" * 64
    results, uses = apply([result(image=pinned)], [exception], image=pinned)
    assert results[0].violations and not uses


def test_a_deleting_exception_no_longer_applies() -> None:
    raw = body()
    raw["metadata"]["deletionTimestamp"] = "2026-12-01T11:00:00Z"
    results, uses = apply([result()], [model.parse_exception(raw)])
    assert results[0].violations and not uses


def test_at_most_so_many_per_namespace_in_name_order() -> None:
    many = [
        model.parse_exception(body(name=f"e{i:04d}")) for i in range(evaluate.MAX_PER_NAMESPACE + 5)
    ]
    chosen = evaluate.select_namespace([*reversed(many), model.parse_exception(body("x"))], "shop")
    assert len(chosen) == evaluate.MAX_PER_NAMESPACE
    assert chosen[0].name == "e0000"
