"""Random mutations of valid bodies: every outcome is a result or a typed error.

Mutating webhooks see objects before the apiserver validates them, and a webhook server
sees whatever bytes reach it, so any field may hold any JSON value. Seeds are fixed: a
failure reproduces, and the run stays fast.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import jsonpatch
import jsonpointer
import pytest

from imageward import errors
from imageward.admission import messages, patches, reviews, workloads
from imageward.policy import evaluate
from imageward.registry import model as registry_model

from . import samples

CASES = 1500
DIGEST = registry_model.Digest(samples.DIGEST)

_ALPHABET = "aZ09:/@.-_~ \n\t\x00\x7f\u0085é…\ud800\U0001f600"
_KEYS = [
    "containers",
    "image",
    "name",
    "spec",
    "template",
    "metadata",
    "labels",
    "kind",
    "nodeSelector",
    "kubernetes.io/arch",
    "affinity",
    "nodeAffinity",
    "values",
    "operator",
    "key",
    "a/b",
    "~1",
    "",
]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 12)))


def random_value(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randint(0, 11 if depth < 3 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-(2**63), 2**63)
    if choice == 3:
        return rng.choice([0.5, -0.0, float("inf"), float("nan")])
    if choice == 4:
        return random_text(rng)
    if choice == 5:
        return rng.choice(
            ["nginx", "ghcr.io/acme/web:1.4", f"a/b@{DIGEST}", "localhost:5000/x", "UPPER"]
        )
    if choice == 6:
        return []
    if choice == 7:
        return {}
    if choice <= 9:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(1, 3))]
    return {rng.choice(_KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(1, 3))}


def slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) in a JSON-like tree, to pick one to mutate."""
    found: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, item in current.items():
                found.append((current, key))
                stack.append(item)
        elif isinstance(current, list):
            for index, item in enumerate(current):
                found.append((current, index))
                stack.append(item)
    return found


def mutate(rng: random.Random, body: Any) -> Any:
    body = samples.clone(body)
    for _ in range(rng.randint(1, 3)):
        candidates = slots(body)
        if not candidates:
            return random_value(rng)
        container, key = rng.choice(candidates)
        action = rng.randint(0, 5)
        if action == 0 and isinstance(container, dict):
            del container[key]
        elif action == 1 and isinstance(container, dict):
            container[rng.choice(_KEYS)] = random_value(rng)
        elif action == 2:
            container[key] = [container[key]]
        elif action == 3 and isinstance(container, list):
            container.append(random_value(rng))
        else:
            container[key] = random_value(rng)
    if rng.random() < 0.02:
        return random_value(rng)
    return body


def check_view(view: workloads.PodView, body: Any) -> None:
    workloads.parse_platform(view)
    for container in view.containers:
        # Every pointer resolves to the image it was read from.
        assert jsonpointer.resolve_pointer(body, container.pointer) == container.image
    try:
        operations = patches.build_pin_patch(view, {image: DIGEST for image in view.images})
    except errors.InvalidReferenceError:
        return
    patched = jsonpatch.apply_patch(body, operations)
    assert not patches.build_pin_patch(
        workloads.parse_pod_view(patched, kind=view.kind), {image: DIGEST for image in view.images}
    )


@pytest.mark.parametrize("kind", list(samples.SPEC_POINTERS))
def test_mutated_objects(kind: str) -> None:
    rng = random.Random(f"objects-{kind}")
    original = samples.body_of(
        kind,
        ephemeralContainers=[{"name": "dbg", "image": "busybox"}],
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}
                            ]
                        }
                    ]
                }
            }
        },
        os={"name": "linux"},
    )
    parsed = failed = 0
    for _ in range(CASES // 4):
        body = mutate(rng, original)
        try:
            view = workloads.parse_pod_view(body, kind=kind)
        except errors.MalformedObjectError as error:
            assert str(error)
            failed += 1
        else:
            parsed += 1
            check_view(view, body)
        for old, new in ((original, body), (body, original), (body, body)):
            try:
                assert isinstance(workloads.images_changed(old, new, kind), bool)
            except errors.MalformedObjectError:
                assert new is body
    # Both outcomes are exercised, or the mutations are too mild or too wild.
    assert parsed > 20 and failed > 20


def test_mutated_reviews() -> None:
    rng = random.Random("reviews")
    original = samples.review(
        operation="UPDATE", oldObject=samples.pod(), subResource="ephemeralcontainers"
    )
    parsed = failed = 0
    for _ in range(CASES):
        body = mutate(rng, original)
        try:
            request = reviews.parse_review(body)
        except errors.MalformedReviewError as error:
            assert str(error)
            failed += 1
            continue
        parsed += 1
        assert isinstance(request["uid"], str) and request["uid"]
        assert request["operation"] in reviews.OPERATIONS
        obj = request["object"]
        if obj is not None:
            with contextlib.suppress(errors.MalformedObjectError):
                workloads.parse_pod_view(
                    obj, kind=request["kind"]["kind"], namespace=request["namespace"]
                )
    assert parsed > 100 and failed > 100


def test_random_texts_make_bounded_messages() -> None:
    rng = random.Random("messages")
    for _ in range(300):
        found = [
            evaluate.Violation(
                policy=random_text(rng),
                rule=rng.choice(["signatures", "lookup", "maxLayers", random_text(rng)]),
                image=random_text(rng),
                digest=None,
                message=random_text(rng) * rng.randint(0, 400),
            )
            for _ in range(rng.randint(0, 60))
        ]
        max_bytes = rng.randint(64, 8192)
        text = messages.build_refusal_message(
            evaluate.Decision(allowed=False, violations=tuple(found)),
            kind="Pod",
            name=random_text(rng),
            max_bytes=max_bytes,
        )
        assert len(text.encode("utf-8", "surrogatepass")) <= max_bytes
        warnings = messages.build_warnings(
            evaluate.Decision(allowed=True, warnings=tuple(v.message for v in found))
        )
        assert sum(len(w) for w in warnings) <= messages.WARNINGS_BUDGET_RUNES
        for warning in warnings:
            assert 0 < len(warning) <= messages.WARNING_MAX_RUNES
            warning.encode("utf-8")  # no lone surrogates left
            assert not any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in warning)
