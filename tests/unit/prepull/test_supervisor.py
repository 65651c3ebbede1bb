"""The cluster agent's pure parts: plan ConfigMaps as it reads them, and what each plan's
condition says. The agent against a real apiserver and containerd is in tests/cluster."""

from __future__ import annotations

import json
from typing import Any

from imageward.prepull import agent, planner, plans, supervisor
from imageward.registry import model, reference

UID = "uid-1"


def digest(char: str) -> model.Digest:
    return model.Digest("sha256:" + char * 64)


def configmap(**document_changes: Any) -> dict[str, Any]:
    image = planner.PlanImage(
        "registry.example:5000/team/web:1.0",
        digest("1"),
        (model.Layer(digest("a"), 10, "application/vnd.oci.image.layer.v1.tar+gzip"),),
    )
    plan = planner.build_plan([image], budget=None)
    document = plans.build_plan_document(
        "web",
        "shop",
        UID,
        plan,
        {image.image: reference.parse_reference(image.image)},
        node_selector={"kubernetes.io/os": "linux"},
    )
    document.update(document_changes)
    return plans.build_plan_configmap(
        document,
        namespace="imageward-system",
        plan_text=json.dumps(document),
        sealed_credentials="iw1.x.y.z",
        content_hash="h",
    )


def test_a_plan_configmap_parses_with_its_sealed_credentials() -> None:
    item = supervisor.project_plan_object(configmap())
    assert item is not None
    assert item.key == plans.build_prepull_key("shop", "web", UID)
    assert item.plan is not None and item.plan.prepull.display == "shop/web"
    assert item.sealed == "iw1.x.y.z"
    assert item.error is None


def test_an_unusable_plan_is_kept_with_its_reason_and_others_are_not_plans() -> None:
    broken = configmap()
    broken["data"]["plan.json"] = "{"
    item = supervisor.project_plan_object(broken)
    assert item is not None and item.plan is None
    assert item.error is not None and "not JSON" in item.error
    # A document naming another PrePull than its ConfigMap is refused.
    moved_body = configmap()
    other = configmap(prepull={"namespace": "bank", "name": "vault", "uid": "u9"})
    moved_body["data"]["plan.json"] = other["data"]["plan.json"]
    moved = supervisor.project_plan_object(moved_body)
    assert moved is not None and moved.plan is None
    assert moved.error is not None and "names PrePull bank/vault" in moved.error
    assert supervisor.project_plan_object({"metadata": {"name": "kube-root-ca.crt"}}) is None


def test_plan_conditions_say_how_far_the_node_is() -> None:
    plan = agent.parse_plan(configmap()["data"]["plan.json"], source="p")
    progress = agent.Progress(node="n1")
    progress.start(plan)
    assert progress.summary() == (False, "Pending", "0 of 1 layers held (0 bytes)")
    progress.set(digest("a"), agent.BlobState.FETCHING)
    assert progress.summary()[1] == "Fetching"
    progress.set(digest("a"), agent.BlobState.FAILED, "registry.example:5000/team/web: denied")
    ready, reason, message = progress.summary()
    assert (ready, reason) == (False, "FetchFailed")
    assert "1 failed, e.g. sha256:aaaa" in message and "denied" in message
    progress.set(digest("a"), agent.BlobState.HELD)
    assert progress.summary() == (True, "Held", "1 of 1 layers held (10 bytes)")
