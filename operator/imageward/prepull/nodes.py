"""Which nodes a PrePull is for: its nodeSelector and tolerations against a node's labels
and taints, decided the way the scheduler places a DaemonSet's pods.

Pure. Layers mode has no DaemonSet per PrePull (one node agent serves every PrePull), so
the operator (to count the nodes a PrePull wants) and each node's agent (to decide
whether a plan is for its node) ask this module the same question and get the same
answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from imageward.prepull import model

#: Taints a DaemonSet's pods tolerate without asking: the DaemonSet controller adds these
#: tolerations to every DaemonSet pod (pkg/controller/daemon/util), so a pre-pull pod
#: would run on such a node too.
DAEMONSET_TOLERATED = frozenset(
    {
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/pid-pressure",
        "node.kubernetes.io/unschedulable",
        "node.kubernetes.io/network-unavailable",
    }
)
#: Effects that keep a pod off a node (PreferNoSchedule only steers the scheduler).
_REPELLING = frozenset({"NoSchedule", "NoExecute"})
LINUX_LABEL = "kubernetes.io/os"
MAX_TAINTS = 128


@dataclasses.dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeView:
    """What placement needs of a Node: its name, labels and taints."""

    name: str
    labels: Mapping[str, str]
    taints: tuple[Taint, ...] = ()


def parse_node(body: Mapping[str, Any]) -> NodeView:
    """A Node as the API returns it (at most MAX_TAINTS taints are kept)."""
    metadata = body.get("metadata") or {}
    taints = []
    for item in ((body.get("spec") or {}).get("taints") or [])[:MAX_TAINTS]:
        if isinstance(item, Mapping) and isinstance(item.get("key"), str):
            taints.append(
                Taint(
                    key=item["key"],
                    value=str(item.get("value") or ""),
                    effect=str(item.get("effect") or ""),
                )
            )
    labels = metadata.get("labels") or {}
    return NodeView(
        name=str(metadata.get("name") or ""),
        labels={str(k): str(v) for k, v in labels.items()},
        taints=tuple(taints),
    )


def build_effective_selector(node_selector: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The PrePull's nodeSelector with `kubernetes.io/os: linux` unless it names an OS
    (the helper, pause and agent images are Linux binaries)."""
    selector = dict(node_selector)
    selector.setdefault(LINUX_LABEL, "linux")
    return selector


def evaluate_toleration(toleration: model.Toleration, taint: Taint) -> bool:
    """Kubernetes' ToleratesTaint: effect (empty tolerates every effect), key (empty with
    Exists tolerates every key), then Exists or an equal value."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    if toleration.key and toleration.key != taint.key:
        return False
    if toleration.operator == "Exists":
        return True
    return bool(toleration.key) and toleration.value == taint.value


def evaluate_node_selected(
    node: NodeView,
    node_selector: Mapping[str, str],
    tolerations: Sequence[model.Toleration],
) -> bool:
    """True when a pod with this nodeSelector and these tolerations (plus a DaemonSet's
    own) would run on the node."""
    if any(node.labels.get(key) != value for key, value in node_selector.items()):
        return False
    for taint in node.taints:
        if taint.effect not in _REPELLING or taint.key in DAEMONSET_TOLERATED:
            continue
        if not any(evaluate_toleration(t, taint) for t in tolerations):
            return False
    return True


def build_tolerations_json(tolerations: Sequence[model.Toleration]) -> list[dict[str, Any]]:
    """Tolerations as a pod spec (and a plan document) writes them."""
    result: list[dict[str, Any]] = []
    for toleration in tolerations:
        item: dict[str, Any] = {"operator": toleration.operator}
        if toleration.key:
            item["key"] = toleration.key
        if toleration.value:
            item["value"] = toleration.value
        if toleration.effect:
            item["effect"] = toleration.effect
        if toleration.toleration_seconds is not None:
            item["tolerationSeconds"] = toleration.toleration_seconds
        result.append(item)
    return result


def parse_tolerations_json(items: object, *, where: str) -> tuple[model.Toleration, ...]:
    """The inverse of build_tolerations_json; raises ValueError naming `where`."""
    if items is None:
        return ()
    if not isinstance(items, list) or len(items) > model.MAX_TOLERATIONS:
        raise ValueError(f"{where}: expected a list of at most {model.MAX_TOLERATIONS}")
    parsed = []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}[{index}]: expected an object")
        operator = item.get("operator") or "Equal"
        if operator not in ("Exists", "Equal"):
            raise ValueError(f"{where}[{index}].operator: {operator!r} is not Exists or Equal")
        values = {key: item.get(key) or "" for key in ("key", "value", "effect")}
        if not all(isinstance(value, str) for value in values.values()):
            raise ValueError(f"{where}[{index}]: key, value and effect must be strings")
        seconds = item.get("tolerationSeconds")
        parsed.append(
            model.Toleration(
                key=values["key"],
                operator=operator,
                value=values["value"],
                effect=values["effect"],
                toleration_seconds=seconds if isinstance(seconds, int) else None,
            )
        )
    return tuple(parsed)
