"""What `imageward dev --real-node` changes in the sample PrePulls before applying them."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from imageward.commands import dev

EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples" / "prepulls"
TOLERATION = {"key": "imageward.io/real-node", "operator": "Exists", "effect": "NoSchedule"}
SELECTOR = {"imageward.io/node": "real"}


def _sample(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return body


def test_images_mode_samples_also_run_on_the_real_node() -> None:
    body = _sample("web-tier.yaml")
    placed = dev.build_real_node_prepull(body, toleration=TOLERATION, node_selector=SELECTOR)
    assert placed["spec"]["tolerations"] == [TOLERATION]
    assert "nodeSelector" not in placed["spec"]
    assert placed["spec"]["images"] == body["spec"]["images"]
    assert "tolerations" not in body["spec"]


def test_layers_mode_samples_go_to_the_real_node_only() -> None:
    placed = dev.build_real_node_prepull(
        _sample("shared-layers.yaml"), toleration=TOLERATION, node_selector=SELECTOR
    )
    assert placed["spec"]["nodeSelector"] == SELECTOR
    assert placed["spec"]["tolerations"] == [TOLERATION]


def test_other_objects_are_left_alone() -> None:
    policy = {"kind": "ImagePolicy", "spec": {"mode": "Enforce"}}
    assert dev.build_real_node_prepull(policy, toleration=TOLERATION, node_selector=SELECTOR) == (
        policy
    )
