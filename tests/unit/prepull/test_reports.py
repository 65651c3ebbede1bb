"""Per-node progress of Layers mode: which nodes a PrePull wants, the agent's per-plan
pod conditions, and their reduction to status.nodes / status.failures."""

from __future__ import annotations

from typing import Any

import pytest

from imageward.prepull import model, nodes, reports, status

KEY = "0123456789abcdef"
NOW = "2026-01-02T03:04:05Z"
LINUX = {"kubernetes.io/os": "linux"}


def node(name: str, labels: dict[str, str] | None = None, *taints: nodes.Taint) -> nodes.NodeView:
    return nodes.NodeView(name, {**LINUX, **(labels or {})}, tuple(taints))


@pytest.mark.parametrize(
    ("toleration", "taint", "tolerated"),
    [
        (
            model.Toleration(key="gpu", operator="Exists"),
            nodes.Taint("gpu", "x", "NoSchedule"),
            True,
        ),
        (model.Toleration(operator="Exists"), nodes.Taint("anything", "x", "NoExecute"), True),
        (model.Toleration(key="gpu", value="a"), nodes.Taint("gpu", "a", "NoSchedule"), True),
        (model.Toleration(key="gpu", value="a"), nodes.Taint("gpu", "b", "NoSchedule"), False),
        (
            model.Toleration(key="gpu", operator="Exists", effect="NoExecute"),
            nodes.Taint("gpu", "", "NoSchedule"),
            False,
        ),
        (
            model.Toleration(key="other", operator="Exists"),
            nodes.Taint("gpu", "", "NoSchedule"),
            False,
        ),
    ],
)
def test_tolerations_match_taints_as_kubernetes_does(
    toleration: model.Toleration, taint: nodes.Taint, tolerated: bool
) -> None:
    assert nodes.evaluate_toleration(toleration, taint) is tolerated


def test_a_node_is_selected_as_a_daemonset_pod_would_be_placed() -> None:
    tolerate_gpu = [model.Toleration(key="gpu", operator="Exists")]
    plain = node("a")
    gpu = node("b", {"pool": "gpu"}, nodes.Taint("gpu", "true", "NoSchedule"))
    assert nodes.evaluate_node_selected(plain, LINUX, ())
    assert not nodes.evaluate_node_selected(gpu, LINUX, ())
    assert nodes.evaluate_node_selected(gpu, LINUX, tolerate_gpu)
    assert not nodes.evaluate_node_selected(plain, {**LINUX, "pool": "gpu"}, tolerate_gpu)
    # PreferNoSchedule only steers; the taints a DaemonSet tolerates by itself repel nothing.
    soft = node("c", {}, nodes.Taint("busy", "", "PreferNoSchedule"))
    cordoned = node("d", {}, nodes.Taint("node.kubernetes.io/unschedulable", "", "NoSchedule"))
    assert nodes.evaluate_node_selected(soft, LINUX, ())
    assert nodes.evaluate_node_selected(cordoned, LINUX, ())
    windows = nodes.NodeView("w", {"kubernetes.io/os": "windows"})
    assert not nodes.evaluate_node_selected(windows, nodes.build_effective_selector(()), ())


def test_nodes_parse_with_a_cap_on_taints() -> None:
    body = {
        "metadata": {"name": "n1", "labels": {"a": "b"}},
        "spec": {"taints": [{"key": f"t{i}", "effect": "NoSchedule"} for i in range(500)]},
    }
    parsed = nodes.parse_node(body)
    assert parsed.name == "n1" and parsed.labels == {"a": "b"}
    assert len(parsed.taints) == nodes.MAX_TAINTS


def test_conditions_round_trip_and_name_their_plan() -> None:
    condition = reports.build_report_condition(
        KEY, plan_hash="abc123", ready=False, reason="Fetching", message="1 of 3 layers", now=NOW
    )
    assert condition == {
        "type": f"prepull.imageward.io/{KEY}",
        "status": "False",
        "reason": "Fetching",
        "message": "plan abc123: 1 of 3 layers",
        "lastTransitionTime": NOW,
    }
    assert reports.parse_report(condition) == reports.Report(
        "abc123", False, "Fetching", "1 of 3 layers"
    )
    later = reports.build_report_condition(
        KEY,
        plan_hash="abc123",
        ready=False,
        reason="Fetching",
        message="2 of 3",
        now="2026-01-02T03:09:00Z",
        previous=condition,
    )
    assert later["lastTransitionTime"] == NOW  # the status did not move
    assert reports.parse_report({"type": "x", "message": "free text"}) is None
    long = reports.build_report_condition(
        KEY, plan_hash="h", ready=False, reason="FetchFailed", message="x" * 5000, now=NOW
    )
    assert len(long["message"]) <= reports.MAX_MESSAGE


def test_the_status_patch_touches_only_our_conditions() -> None:
    kubelet = [
        {"type": "Ready", "status": "True"},
        {"type": "prepull.imageward.io/gone000000000000", "status": "True", "message": "plan a: x"},
        {
            "type": f"prepull.imageward.io/{KEY}",
            "status": "False",
            "reason": "Fetching",
            "message": "plan h: 1 of 2",
        },
    ]
    wanted = {
        f"prepull.imageward.io/{KEY}": reports.build_report_condition(
            KEY, plan_hash="h", ready=True, reason="Held", message="2 of 2", now=NOW
        )
    }
    patch = reports.build_report_patch(kubelet, wanted)
    assert patch == {
        "status": {
            "conditions": [
                wanted[f"prepull.imageward.io/{KEY}"],
                {"type": "prepull.imageward.io/gone000000000000", "$patch": "delete"},
            ]
        }
    }
    assert (
        reports.build_report_patch([kubelet[0], wanted[f"prepull.imageward.io/{KEY}"]], wanted)
        is None
    )


def agent_pod(
    name: str, node_name: str | None, **conditions: tuple[str, bool, str]
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": node_name},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}]
            + [
                reports.build_report_condition(
                    key,
                    plan_hash=plan_hash,
                    ready=ready,
                    reason=reason,
                    message=f"{reason}!",
                    now=NOW,
                )
                for key, (plan_hash, ready, reason) in conditions.items()
            ]
        },
    }


def test_layers_progress_counts_selected_nodes_by_their_agents_reports() -> None:
    views = [
        node("n1"),
        node("n2"),
        node("n3"),
        node("n4"),
        node("gpu", {"pool": "gpu"}, nodes.Taint("gpu", "", "NoSchedule")),
    ]
    pods = [
        reports.parse_agent_pod(agent_pod("agent-1", "n1", **{KEY: ("h2", True, "Held")})),
        # Still on the previous plan: not ready.
        reports.parse_agent_pod(agent_pod("agent-2", "n2", **{KEY: ("h1", True, "Held")})),
        reports.parse_agent_pod(agent_pod("agent-3", "n3", **{KEY: ("h2", False, "FetchFailed")})),
        # n4 has no agent pod; the gpu node is not selected (its taint is not tolerated).
        reports.parse_agent_pod(agent_pod("agent-5", "gpu", **{KEY: ("h2", True, "Held")})),
        reports.parse_agent_pod(agent_pod("agent-6", None)),
    ]
    result = reports.build_layers_node_status(
        pods, views, key=KEY, plan_hash="h2", node_selector=LINUX, tolerations=()
    )
    assert (result.desired, result.ready, result.failed, result.unserved) == (4, 1, 1, 1)
    assert result.failures == (status.Failure("n3", "", "FetchFailed", "FetchFailed!"),)
    conditions = status.build_conditions(result, generation=1, now=NOW)
    ready = next(c for c in conditions if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PullFailed"
    assert "1 of 4 nodes are ready (1 node has no node-agent pod)" in ready["message"]


def test_an_agent_pod_with_hostile_conditions_stays_bounded() -> None:
    body = {
        "metadata": {"name": "a"},
        "spec": {"nodeName": "n"},
        "status": {
            "conditions": [
                {
                    "type": f"prepull.imageward.io/{i:016x}",
                    "status": "True",
                    "message": f"plan h: {i}",
                }
                for i in range(reports.MAX_REPORTS + 100)
            ]
        },
    }
    assert len(reports.parse_agent_pod(body).reports) == reports.MAX_REPORTS


def test_no_agent_on_any_selected_node_is_a_problem_naming_the_fix() -> None:
    def missing(desired: int, unserved: int) -> status.Problem | None:
        return reports.evaluate_agents_missing(
            status.NodeStatus(desired, 0, 0, unserved=unserved),
            namespace="imageward-system",
            selector="app.kubernetes.io/name=imageward-agent",
        )

    problem = missing(3, 3)
    assert problem is not None and problem.reason == "AgentNotRunning"
    assert "imageward-system labelled app.kubernetes.io/name=imageward-agent" in problem.message
    assert "agent.enabled" in problem.message
    assert missing(3, 1) is None  # some nodes are served: progress, not a problem
    assert missing(0, 0) is None
