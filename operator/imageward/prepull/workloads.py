"""fromWorkloads: which workloads a PrePull may read, and the images they weigh. Pure.

The controller keeps one watch per workload kind, cluster-wide, holding only
`WorkloadView`s (namespace, name, kind, labels, pod-template images, replicas); a
refresh reads that cache instead of listing per namespace and kind.

Cross-namespace selection is something a cluster admin grants, never a tenant: anyone
who may create a PrePull in one namespace would otherwise learn every other namespace's
images (their digests land in the PrePull's status) and have them pulled onto nodes.
`fromWorkloads.namespaceSelector` is honoured only for PrePulls in the operator's own
namespace and in the namespaces an admin lists (`IMAGEWARD_PREPULL_CROSS_NAMESPACE`,
chart value `prepull.crossNamespace.namespaces`); any other PrePull reads its own
namespace only and says so in a Degraded condition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from imageward import constants
from imageward.policy import selectors
from imageward.prepull import model

#: Images kept per workload (containers and init containers of its pod template).
MAX_IMAGES_PER_WORKLOAD = 64


@dataclasses.dataclass(frozen=True, slots=True)
class WorkloadView:
    kind: model.WorkloadKind
    namespace: str
    name: str
    labels: Mapping[str, str]
    images: tuple[str, ...]
    replicas: int | None
    """spec.replicas (Deployment, StatefulSet); None for the other kinds or when unset."""

    prepull_owned: bool = False
    """imageward's own pre-pull DaemonSet (labelled imageward.io/prepull): never an input,
    whose pinned images would otherwise feed back into the plan."""


def _template_images(template: Mapping[str, Any]) -> tuple[str, ...]:
    spec = template.get("spec") or {}
    images: list[str] = []
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            image = container.get("image") if isinstance(container, Mapping) else None
            if isinstance(image, str) and image and image not in images:
                images.append(image)
    return tuple(images[:MAX_IMAGES_PER_WORKLOAD])


def project_workload(kind: model.WorkloadKind, body: Mapping[str, Any]) -> WorkloadView | None:
    """The fields fromWorkloads needs; None for a workload being deleted."""
    metadata = body.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return None
    spec = body.get("spec") or {}
    if kind is model.WorkloadKind.CRON_JOB:
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    else:
        template = spec.get("template") or {}
    replicas = spec.get("replicas")
    labels = metadata.get("labels") or {}
    return WorkloadView(
        kind=kind,
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        labels={str(k): str(v) for k, v in labels.items()},
        images=_template_images(template),
        replicas=replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else None,
        prepull_owned=constants.LABEL_PREPULL in labels,
    )


def build_images_from_views(
    views: Iterable[WorkloadView],
    kinds: Collection[model.WorkloadKind],
    *,
    label_selector: selectors.LabelSelector,
    node_count: int,
) -> list[tuple[str, int]]:
    """The images of the selected workloads, weighted by how many pods run them.

    Deployment and StatefulSet: spec.replicas, at least 1 (a workload scaled to zero is
    about to scale up, which is when a slow pull hurts most). DaemonSet: `node_count`
    (at least 1). CronJob: 1. An image used by several workloads gets the sum; within one
    workload it counts once. imageward's own pre-pull DaemonSets are skipped. Sorted
    heaviest first, then by image.
    """
    weights: dict[str, int] = {}
    for view in views:
        if view.kind not in kinds or view.prepull_owned:
            continue
        if not selectors.evaluate_label_selector(label_selector, view.labels):
            continue
        if view.kind is model.WorkloadKind.CRON_JOB:
            weight = 1
        elif view.kind is model.WorkloadKind.DAEMON_SET:
            weight = max(1, node_count)
        else:
            weight = max(1, view.replicas) if view.replicas is not None else 1
        for image in view.images:
            weights[image] = weights.get(image, 0) + weight
    return sorted(weights.items(), key=lambda item: (-item[1], item[0]))


@dataclasses.dataclass(frozen=True, slots=True)
class NamespaceScope:
    """The namespaces a PrePull reads workloads from, and why not more when it asked."""

    namespaces: tuple[str, ...]
    note: str | None = None
    """Why a namespaceSelector was not honoured (for a Degraded condition)."""


def evaluate_cross_namespace(
    prepull_namespace: str, *, operator_namespace: str, allowed: Collection[str]
) -> bool:
    """Whether PrePulls of this namespace may read other namespaces' workloads."""
    return prepull_namespace == operator_namespace or prepull_namespace in allowed


def evaluate_namespace_scope(
    prepull_namespace: str,
    source: model.FromWorkloads,
    *,
    operator_namespace: str,
    allowed: Collection[str],
    namespace_labels: Mapping[str, Mapping[str, str]] | None,
) -> NamespaceScope:
    """Own namespace only, unless a namespaceSelector is set on a PrePull of the
    operator's namespace or an `allowed` one. `namespace_labels` (every namespace's
    labels) is only read when the selector is honoured; None then means unknown yet."""
    if source.namespace_selector is None:
        return NamespaceScope((prepull_namespace,))
    if not evaluate_cross_namespace(
        prepull_namespace, operator_namespace=operator_namespace, allowed=allowed
    ):
        grantable = ", ".join([operator_namespace, *sorted(allowed)])
        return NamespaceScope(
            (prepull_namespace,),
            "fromWorkloads.namespaceSelector is ignored: only PrePulls in namespaces a "
            f"cluster admin allows ({grantable}; IMAGEWARD_PREPULL_CROSS_NAMESPACE, chart "
            "value prepull.crossNamespace.namespaces) may read other namespaces' "
            f"workloads; this one reads {prepull_namespace} only",
        )
    selected = sorted(
        name
        for name, labels in (namespace_labels or {}).items()
        if selectors.evaluate_label_selector(source.namespace_selector, labels)
    )
    return NamespaceScope(tuple(selected))


def build_images_from_workloads(
    workloads: Sequence[Mapping[str, Any]],
    kinds: Collection[model.WorkloadKind],
    *,
    node_count: int,
) -> list[tuple[str, int]]:
    """build_images_from_views over workload objects as the API returns them, each with
    its `kind` (list responses leave it out of their items; the caller knows it)."""
    views = []
    for workload in workloads:
        kind = workload.get("kind")
        if not isinstance(kind, str):
            raise ValueError(
                f"workload {(workload.get('metadata') or {}).get('name')!r} has no kind"
            )
        try:
            parsed = model.WorkloadKind(kind)
        except ValueError:
            continue
        view = project_workload(parsed, workload)
        if view is not None:
            views.append(view)
    return build_images_from_views(
        views, kinds, label_selector=selectors.EMPTY, node_count=node_count
    )
