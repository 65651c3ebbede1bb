from __future__ import annotations

import pytest

from imageward import constants
from imageward.admission import messages, patches, workloads
from imageward.policy import evaluate
from imageward.registry import model as registry_model

from . import samples


def violation(
    image: str = "ghcr.io/acme/web:1.4",
    rule: str = constants.RULE_MAX_COMPRESSED_SIZE,
    policy: str = "prod-images",
    text: str | None = None,
) -> evaluate.Violation:
    return evaluate.Violation(
        policy=policy,
        rule=rule,
        image=image,
        digest=None,
        message=text or f"ImagePolicy {policy}: {image} breaks {rule}",
    )


def denied(*violations: evaluate.Violation) -> evaluate.Decision:
    return evaluate.Decision(allowed=False, violations=violations)


def warned(*warnings: str) -> evaluate.Decision:
    return evaluate.Decision(allowed=True, warnings=warnings)


# ---------------------------------------------------------------------------- refusals


def test_one_violation_is_one_line() -> None:
    text = messages.build_refusal_message(denied(violation()), kind="Pod", name="web")
    assert text == "Pod web: ImagePolicy prod-images: ghcr.io/acme/web:1.4 breaks maxCompressedSize"


def test_several_violations_one_per_line_in_a_stable_order() -> None:
    found = [
        violation("b:1", constants.RULE_SIGNATURES),
        violation("a:1", constants.RULE_LOOKUP),
        violation("a:1", constants.RULE_ALLOWED_REGISTRIES),
        violation("a:1", constants.RULE_MAX_LAYERS, policy="base"),
        violation("b:1", constants.RULE_SIGNATURES),  # the same image in a second container
    ]
    text = messages.build_refusal_message(denied(*found), kind="Deployment", name="shop/web")
    assert text.splitlines() == [
        "Deployment shop/web: 4 ImagePolicy violations:",
        "ImagePolicy base: a:1 breaks maxLayers",
        "ImagePolicy prod-images: a:1 breaks allowedRegistries",
        "ImagePolicy prod-images: a:1 breaks lookup",
        "ImagePolicy prod-images: b:1 breaks signatures",
    ]
    reversed_text = messages.build_refusal_message(
        denied(*reversed(found)), kind="Deployment", name="shop/web"
    )
    assert reversed_text == text


def test_newlines_in_a_violation_do_not_break_lines() -> None:
    found = violation(text="ImagePolicy p: x lookup failed: 500\nInternal\r\nError\x00")
    text = messages.build_refusal_message(denied(found), kind="Pod", name="web")
    assert "\n" not in text and "\x00" not in text
    assert text.endswith("lookup failed: 500 Internal  Error")


def test_refusal_is_capped_with_and_n_more() -> None:
    found = [violation(f"ghcr.io/acme/image-{index:03}:1.0") for index in range(200)]
    text = messages.build_refusal_message(denied(*found), kind="Pod", name="web")
    assert len(text.encode()) <= messages.MAX_MESSAGE_BYTES
    lines = text.splitlines()
    assert lines[0] == "Pod web: 200 ImagePolicy violations:"
    shown = len(lines) - 2
    assert shown > 10
    assert lines[-1] == f"and {200 - shown} more"
    assert lines[1].startswith("ImagePolicy prod-images: ghcr.io/acme/image-000:1.0")


@pytest.mark.parametrize("max_bytes", [200, 300, 512, 1000, 4096])
def test_cap_holds_for_any_size_and_multibyte_text(max_bytes: int) -> None:
    found = [
        violation(f"img-{index}:1", text=f"ImagePolicy p: img-{index}:1 ünïcödé … " * 3)
        for index in range(50)
    ]
    text = messages.build_refusal_message(
        denied(*found), kind="Pod", name="web", max_bytes=max_bytes
    )
    assert len(text.encode()) <= max_bytes
    assert len(text.splitlines()) >= 3  # header, at least one violation, the remainder
    assert text.splitlines()[-1].startswith("and ")


def test_one_huge_violation_is_cut_not_dropped() -> None:
    found = [violation(text="ImagePolicy p: x " + "y" * 10_000), violation("z:1")]
    text = messages.build_refusal_message(denied(*found), kind="Pod", name="web", max_bytes=600)
    assert len(text.encode()) <= 600
    lines = text.splitlines()
    assert lines[0] == "Pod web: 2 ImagePolicy violations:"
    assert lines[1].startswith("ImagePolicy p: x yyy") and lines[1].endswith("…")
    assert len(lines[1]) <= messages.MAX_LINE_CHARS


def test_single_violation_is_capped_too() -> None:
    found = violation(text="ImagePolicy p: " + "é" * 5000)
    text = messages.build_refusal_message(denied(found), kind="Pod", name="web")
    assert len(text.encode()) <= messages.MAX_MESSAGE_BYTES
    assert text.endswith("…")


def test_no_violations_and_no_name() -> None:
    text = messages.build_refusal_message(denied(), kind="Pod", name="")
    assert text == "Pod: refused by ImagePolicy"


# ---------------------------------------------------------------------------- warnings


def test_warnings_pass_through_sorted_and_unique() -> None:
    decision = warned("ImagePolicy b: x", "ImagePolicy a: y", "ImagePolicy b: x", "", "  ")
    assert messages.build_warnings(decision) == ["ImagePolicy a: y", "ImagePolicy b: x"]


def test_no_warnings() -> None:
    assert messages.build_warnings(evaluate.Decision(allowed=True)) == []


def test_warning_control_characters_are_replaced() -> None:
    # The apiserver drops a warning with a control character instead of sending it.
    (text,) = messages.build_warnings(warned("ImagePolicy a: lookup failed:\n502\tBad\x7fGateway"))
    assert text == "ImagePolicy a: lookup failed: 502 Bad Gateway"


def test_lone_surrogates_are_replaced() -> None:
    (text,) = messages.build_warnings(warned("ImagePolicy a: \ud800 odd"))
    text.encode("utf-8")  # valid UTF-8 now


def test_each_warning_at_most_256_runes() -> None:
    (text,) = messages.build_warnings(warned("ImagePolicy a: " + "ü" * 1000))
    assert len(text) == messages.WARNING_MAX_RUNES
    assert text.endswith("…")


def test_warnings_stay_inside_the_budget_with_and_n_more() -> None:
    decision = warned(*(f"ImagePolicy p{index:03}: " + "x" * 200 for index in range(100)))
    found = messages.build_warnings(decision)
    assert sum(len(text) for text in found) <= messages.WARNINGS_BUDGET_RUNES
    assert messages.WARNINGS_BUDGET_RUNES < messages.WARNINGS_MAX_TOTAL_RUNES
    assert all(len(text) <= messages.WARNING_MAX_RUNES for text in found)
    kept = len(found) - 1
    assert found[-1] == f"and {100 - kept} more ImagePolicy warnings"
    assert found[0].startswith("ImagePolicy p000:")


def test_warnings_exactly_at_the_budget_are_all_kept() -> None:
    decision = warned("a" * 100, "b" * 100)
    assert messages.build_warnings(decision, budget=200) == ["a" * 100, "b" * 100]
    assert messages.build_warnings(decision, budget=199) == [
        "a" * 100,
        "and 1 more ImagePolicy warnings",
    ]


def test_clean_text() -> None:
    assert messages.build_clean_text(" a\nb\u0085c ") == "a b c"


def _unpinned(old: dict[str, object] | None, new: dict[str, object]) -> str:
    view = workloads.parse_pod_view(new)
    digest = registry_model.Digest(samples.DIGEST)
    pins = {container.image: digest for container in view.containers}
    operations = patches.build_pin_patch(
        view, pins, only=workloads.build_new_containers(old, view, "Pod")
    )
    return messages.build_unpinned_message(view, operations, "imageward")


def test_an_unpinned_pod_is_told_each_image_as_written_once_with_its_digest() -> None:
    body = samples.pod(
        containers=[{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx"}],
        initContainers=[{"name": "init", "image": f"redis:7@{samples.DIGEST}"}],  # pinned
        ephemeralContainers=[{"name": "dbg", "image": "busybox:1"}],
    )
    text = _unpinned(None, body)
    assert text.startswith("imageward: pinDigest: admitted by the policies, but not pinned")
    assert "(MutatingWebhookConfiguration imageward)" in text
    assert "Send the request again" in text
    assert text.endswith(f"Unpinned: nginx (to {samples.DIGEST}); busybox:1 (to {samples.DIGEST})")


def test_an_update_is_told_only_the_images_it_brings() -> None:
    old = samples.pod(containers=[{"name": "a", "image": "nginx:1"}], initContainers=None)
    new = samples.pod(
        containers=[{"name": "a", "image": "nginx:1"}],
        initContainers=None,
        ephemeralContainers=[{"name": "dbg", "image": "busybox:1"}],
    )
    assert _unpinned(old, new).endswith(f"Unpinned: busybox:1 (to {samples.DIGEST})")


def test_the_unpinned_message_is_capped() -> None:
    containers = [{"name": f"c{i}", "image": f"ghcr.io/acme/app-{i}:1"} for i in range(200)]
    text = _unpinned(None, samples.pod(containers=containers, initContainers=None))
    assert len(text.encode()) <= messages.MAX_MESSAGE_BYTES
    assert "ghcr.io/acme/app-0:1" in text
