"""Per-node progress of Layers-mode PrePulls: one condition per plan on each agent pod.

The node agent patches only its own pod's `status.conditions` (it may patch
`pods/status` and never `pods`: a pod's spec in the operator's namespace is what would
let it run code as someone else), one condition per plan it serves:

    type:    prepull.imageward.io/<key>          (plans.build_prepull_key)
    status:  "True" once every planned blob is held by the PrePull's lease (and the
             plan's images have been unpacked as far as they are held)
    reason:  Held | Pending | Fetching | Unpacking | FetchFailed | PlanUnusable
    message: "plan <plan hash>: <what happened>"

The operator watches the agent pods (one watch, one label selector) and reduces them to
each PrePull's status.nodes and status.failures here. Pure: pods and nodes in, counts
out. A report counts only for the plan hash it names, so a node still holding the
previous plan is not ready.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from imageward.prepull import model, nodes, status

CONDITION_PREFIX = "prepull.imageward.io/"
REASON_HELD = "Held"
REASON_PENDING = "Pending"
REASON_FETCHING = "Fetching"
REASON_UNPACKING = "Unpacking"
REASON_FETCH_FAILED = "FetchFailed"
REASON_PLAN_UNUSABLE = "PlanUnusable"
FAILED_REASONS = frozenset({REASON_FETCH_FAILED, REASON_PLAN_UNUSABLE})
#: Conditions one agent pod carries at most (the agent serves at most this many plans;
#: the operator refuses Layers-mode PrePulls beyond it).
MAX_REPORTS = 256
MAX_MESSAGE = 512
_MESSAGE_RE = re.compile(r"^plan (?P<hash>[A-Za-z0-9]{1,64}): (?P<text>.*)$", re.DOTALL)


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    plan_hash: str
    ready: bool
    reason: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class AgentPod:
    name: str
    node: str | None
    deleting: bool
    reports: Mapping[str, Report]
    """By condition type."""


def build_condition_type(key: str) -> str:
    return CONDITION_PREFIX + key


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_report_condition(
    key: str,
    *,
    plan_hash: str,
    ready: bool,
    reason: str,
    message: str,
    now: str,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One plan's condition; lastTransitionTime moves only when the status does."""
    text = "True" if ready else "False"
    since = now
    if previous and previous.get("status") == text and previous.get("lastTransitionTime"):
        since = str(previous["lastTransitionTime"])
    return {
        "type": build_condition_type(key),
        "status": text,
        "reason": reason,
        "message": _shorten(f"plan {plan_hash}: {message}", MAX_MESSAGE),
        "lastTransitionTime": since,
    }


def evaluate_condition_changed(
    current: Mapping[str, Any] | None, wanted: Mapping[str, Any]
) -> bool:
    if current is None:
        return True
    return any(current.get(k) != wanted.get(k) for k in ("status", "reason", "message"))


def build_report_patch(
    current: Sequence[Mapping[str, Any]], wanted: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """A strategic merge patch of the pod's status: set the `wanted` conditions (by type)
    that differ, delete ours (the prefix) that are no longer wanted; None when nothing
    changes. Conditions of other types (the kubelet's) are never touched."""
    by_type = {str(c.get("type")): c for c in current if isinstance(c, Mapping)}
    items: list[dict[str, Any]] = []
    for kind, condition in sorted(wanted.items()):
        if evaluate_condition_changed(by_type.get(kind), condition):
            items.append(dict(condition))
    for kind in sorted(by_type):
        if kind.startswith(CONDITION_PREFIX) and kind not in wanted:
            items.append({"type": kind, "$patch": "delete"})
    if not items:
        return None
    return {"status": {"conditions": items}}


def parse_report(condition: Mapping[str, Any]) -> Report | None:
    match = _MESSAGE_RE.match(str(condition.get("message") or ""))
    if match is None:
        return None
    return Report(
        plan_hash=match["hash"],
        ready=condition.get("status") == "True",
        reason=str(condition.get("reason") or ""),
        message=match["text"],
    )


def parse_agent_pod(body: Mapping[str, Any]) -> AgentPod:
    """An agent pod as the API returns it, reduced to its node and its reports."""
    metadata = body.get("metadata") or {}
    reports: dict[str, Report] = {}
    for condition in (body.get("status") or {}).get("conditions") or []:
        if not isinstance(condition, Mapping):
            continue
        kind = str(condition.get("type") or "")
        if not kind.startswith(CONDITION_PREFIX) or len(reports) >= MAX_REPORTS:
            continue
        report = parse_report(condition)
        if report is not None:
            # Only a failure's message is ever shown (status.failures): the operator keeps
            # nothing else of the others, so thousands of nodes cost little memory.
            message = (
                _shorten(report.message, status.MAX_FAILURE_MESSAGE)
                if report.reason in FAILED_REASONS
                else ""
            )
            reports[kind] = dataclasses.replace(report, message=message)
    node = (body.get("spec") or {}).get("nodeName")
    return AgentPod(
        name=str(metadata.get("name") or ""),
        node=node if isinstance(node, str) and node else None,
        deleting=bool(metadata.get("deletionTimestamp")),
        reports=reports,
    )


def build_layers_node_status(
    agents: Sequence[AgentPod],
    node_views: Sequence[nodes.NodeView],
    *,
    key: str,
    plan_hash: str,
    node_selector: Mapping[str, str],
    tolerations: Sequence[model.Toleration],
) -> status.NodeStatus:
    """Nodes desired (selected by the PrePull), ready (their agent holds this plan) and
    failed (their agent reports a failure for this plan). A selected node without an
    agent pod is neither ready nor failed: it is counted in `unserved`."""
    kind = build_condition_type(key)
    by_node: dict[str, AgentPod] = {}
    for pod in sorted(agents, key=lambda p: p.name):
        if pod.deleting or pod.node is None:
            continue
        # Two pods on one node (an agent rollout): the one that reports this plan wins.
        if pod.node not in by_node or kind in pod.reports:
            by_node[pod.node] = pod
    desired = ready = failed = unserved = 0
    failures: list[status.Failure] = []
    for node in node_views:
        if not nodes.evaluate_node_selected(node, node_selector, tolerations):
            continue
        desired += 1
        served = by_node.get(node.name)
        if served is None:
            unserved += 1
            continue
        report = served.reports.get(kind)
        if report is None or report.plan_hash != plan_hash:
            continue
        if report.ready:
            ready += 1
        elif report.reason in FAILED_REASONS:
            failed += 1
            failures.append(
                status.Failure(
                    node=node.name,
                    image="",
                    reason=report.reason,
                    message=_shorten(report.message, status.MAX_FAILURE_MESSAGE),
                )
            )
    return status.NodeStatus(
        desired=desired,
        ready=ready,
        failed=failed,
        failures=status.select_failures(failures),
        unserved=unserved,
    )


def evaluate_agents_missing(
    nodes_status: status.NodeStatus, *, namespace: str, selector: str
) -> status.Problem | None:
    """A problem when no selected node has a node-agent pod: the DaemonSet is missing, or
    its nodeSelector and tolerations leave these nodes out."""
    if not nodes_status.desired or nodes_status.unserved < nodes_status.desired:
        return None
    return status.Problem(
        status.REASON_AGENT_NOT_RUNNING,
        f"no node-agent pod runs on the {nodes_status.desired} selected node(s) (pods in "
        f"{namespace} labelled {selector}); Layers mode needs the chart's agent DaemonSet "
        "(agent.enabled), and its nodeSelector and tolerations must cover these nodes",
    )
