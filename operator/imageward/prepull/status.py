"""A PrePull's status from what the cluster reports: pure aggregation, no API calls.

The controller's watch-fed cache keeps each pre-pull pod as a `PodView` (its node,
readiness, template hash and the failures of its containers, nothing else) and each
pre-pull DaemonSet as a `DaemonSetView`; `project_pod` / `project_daemonset` make them
from the API's JSON, and `build_node_status_from_views` aggregates them. Everything
here reads only documented pod status fields, so recorded pods make the tests.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from imageward import constants
from imageward.prepull import daemonset, model
from imageward.prepull import workloads as workloads_module

# The kubelet's reasons for a container that cannot start because of its image
# (pkg/kubelet/images/types.go) or its configuration, and a crash loop.
FAILURE_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "ImageInspectError",
        "RegistryUnavailable",
        "SignatureValidationFailed",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)
MAX_FAILURES = model.MAX_STATUS_FAILURES
MAX_FAILURE_MESSAGE = 240
MAX_CONDITION_MESSAGE = 2048
_GRPC_PREFIX_RE = re.compile(r"^rpc error: code = \w+ desc = ")

CONDITION_READY = "Ready"
CONDITION_PROGRESSING = "Progressing"
CONDITION_DEGRADED = "Degraded"

REASON_ALL_NODES_READY = "AllNodesReady"
REASON_NO_MATCHING_NODES = "NoMatchingNodes"
REASON_ROLLING_OUT = "RollingOut"
REASON_PENDING = "Pending"
REASON_COMPLETE = "Complete"
REASON_STALLED = "Stalled"
REASON_PULL_FAILED = "PullFailed"
REASON_AS_EXPECTED = "AsExpected"
# Reasons of Problems the controller reports (so they read the same everywhere).
REASON_INVALID_SPEC = "InvalidSpec"
REASON_RESOLVE_FAILED = "ResolveFailed"
REASON_PLAN_FAILED = "PlanFailed"
REASON_IMAGE_VOLUME_UNSUPPORTED = "ImageVolumeUnsupported"
REASON_DAEMONSET_REFUSED = "DaemonSetRefused"
REASON_CROSS_NAMESPACE = "CrossNamespaceNotAllowed"
REASON_AGENT_DISABLED = "AgentDisabled"
REASON_AGENT_NOT_RUNNING = "AgentNotRunning"
REASON_PLAN_TOO_LARGE = "PlanTooLarge"
REASON_PLAN_REFUSED = "PlanRefused"
REASON_TOO_MANY_PLANS = "TooManyLayersPrePulls"


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    node: str
    image: str
    """The image as written when the caller could map it back, else the pod's reference."""

    reason: str
    message: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class NodeStatus:
    desired: int
    ready: int
    """Nodes with a Ready pod of the current template (the current images or plan)."""

    failed: int
    """Nodes without such a pod and with a pod whose container cannot start."""

    failures: tuple[Failure, ...] = ()
    """At most MAX_FAILURES, one per distinct (image, reason) first; by node, then image."""

    unserved: int = 0
    """Layers mode: desired nodes without a node-agent pod (neither ready nor failed)."""

    @property
    def ready_text(self) -> str:
        return f"{self.ready}/{self.desired}"


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """Something that keeps the PrePull from being carried out in full.

    With no DaemonSet (nodes=None in build_conditions) it blocks everything, e.g. an
    invalid spec; otherwise it is partial, e.g. one image of several could not be resolved.
    """

    reason: str
    message: str


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    # The CRI's gRPC wrapper says nothing the reason does not; the rest names the cause.
    text = _GRPC_PREFIX_RE.sub("", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
    )


def _container_images(pod: Mapping[str, Any]) -> dict[str, str]:
    spec = pod.get("spec") or {}
    return {
        container.get("name", ""): container.get("image", "")
        for key in ("initContainers", "containers")
        for container in spec.get(key) or []
    }


def _volume_images(pod: Mapping[str, Any]) -> list[str]:
    return [
        volume["image"].get("reference", "")
        for volume in (pod.get("spec") or {}).get("volumes") or []
        if isinstance(volume.get("image"), Mapping)
    ]


def _failed_state(status: Mapping[str, Any]) -> tuple[str, str] | None:
    state = status.get("state") or {}
    waiting = state.get("waiting")
    if waiting and waiting.get("reason") in FAILURE_REASONS:
        return waiting["reason"], waiting.get("message") or ""
    terminated = state.get("terminated")
    if terminated and terminated.get("exitCode", 0) != 0:
        message = terminated.get("message") or f"exited with code {terminated['exitCode']}"
        return terminated.get("reason") or "Error", message
    return None


def _pod_failures(pod: Mapping[str, Any], node: str) -> list[Failure]:
    container_images = _container_images(pod)
    volume_images = _volume_images(pod)
    failures: list[Failure] = []
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            failed = _failed_state(container)
            if failed is None:
                continue
            reason, message = failed
            image = container_images.get(container.get("name", ""), container.get("image", ""))
            # An image volume that cannot be pulled holds up the container mounting it;
            # the kubelet's message names the volume's reference.
            for reference in volume_images:
                if reference and reference in message:
                    image = reference
                    break
            failures.append(
                Failure(
                    node=node,
                    image=image,
                    reason=reason,
                    message=_shorten(message, MAX_FAILURE_MESSAGE),
                )
            )
    return failures


#: Failures kept per pod (one per failing container, the first ones).
MAX_POD_FAILURES = MAX_FAILURES


@dataclasses.dataclass(frozen=True, slots=True)
class PodView:
    """A pre-pull pod as the cache keeps it: what the status is computed from."""

    namespace: str
    prepull: str
    """Its imageward.io/prepull label (the PrePull's selector value)."""

    owner: str
    """The name of the DaemonSet that controls it ("" when none does)."""

    node: str | None
    ready: bool
    template_hash: str | None
    deleting: bool
    failures: tuple[Failure, ...] = ()
    """Per failing container: node, the pod's image reference, reason, short message."""


@dataclasses.dataclass(frozen=True, slots=True)
class DaemonSetView:
    """A pre-pull DaemonSet as the cache keeps it."""

    namespace: str
    name: str
    desired: int
    template_hash: str | None
    counted: bool = True
    """The DaemonSet controller has seen its current generation (status.observedGeneration
    reached metadata.generation): before, desired is 0 (or the old spec's count) because
    nobody counted the nodes, not because none matches."""

    resource_version: str = dataclasses.field(default="", compare=False)
    """Not compared: a status change that leaves these fields alone changes nothing."""


def project_pod(body: Mapping[str, Any]) -> PodView | None:
    """The fields status needs of a pre-pull pod; None without the prepull label."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    prepull = labels.get(constants.LABEL_PREPULL)
    if not isinstance(prepull, str):
        return None
    return _build_view(body, prepull)


def _build_view(body: Mapping[str, Any], prepull: str) -> PodView:
    metadata = body.get("metadata") or {}
    owner = ""
    for reference in metadata.get("ownerReferences") or []:
        if (
            isinstance(reference, Mapping)
            and reference.get("controller")
            and reference.get("kind") == "DaemonSet"
        ):
            owner = str(reference.get("name") or "")
    node = (body.get("spec") or {}).get("nodeName")
    node = node if isinstance(node, str) and node else None
    annotations = metadata.get("annotations") or {}
    template_hash = annotations.get(daemonset.ANNOTATION_DIGEST_HASH)
    return PodView(
        namespace=str(metadata.get("namespace") or ""),
        prepull=prepull,
        owner=owner,
        node=node,
        ready=_is_ready(body),
        template_hash=template_hash if isinstance(template_hash, str) else None,
        deleting=bool(metadata.get("deletionTimestamp")),
        failures=tuple(_pod_failures(body, node or "")[:MAX_POD_FAILURES]),
    )


def project_daemonset(body: Mapping[str, Any]) -> DaemonSetView | None:
    metadata = body.get("metadata") or {}
    template = ((body.get("spec") or {}).get("template") or {}).get("metadata") or {}
    template_hash = (template.get("annotations") or {}).get(daemonset.ANNOTATION_DIGEST_HASH)
    found = body.get("status") or {}
    desired = found.get("desiredNumberScheduled")
    return DaemonSetView(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        desired=desired if isinstance(desired, int) and not isinstance(desired, bool) else 0,
        template_hash=template_hash if isinstance(template_hash, str) else None,
        counted=evaluate_daemonset_pending(body) is None,
        resource_version=str(metadata.get("resourceVersion") or ""),
    )


def select_failures(failures: Sequence[Failure]) -> tuple[Failure, ...]:
    # Deterministic, and varied: each distinct (image, reason) gets a slot before a
    # second node with the same problem does, so 500 nodes failing one image do not hide
    # the other image that fails on one node.
    ordered = sorted(failures, key=lambda f: (f.node, f.image, f.reason, f.message))
    chosen: list[Failure] = []
    seen: set[tuple[str, str]] = set()
    for failure in ordered:
        if len(chosen) >= MAX_FAILURES:
            break
        if (failure.image, failure.reason) not in seen:
            seen.add((failure.image, failure.reason))
            chosen.append(failure)
    for failure in ordered:
        if len(chosen) >= MAX_FAILURES:
            break
        if failure not in chosen:
            chosen.append(failure)
    return tuple(sorted(chosen, key=lambda f: (f.node, f.image, f.reason, f.message)))


def evaluate_daemonset_pending(daemonset: Mapping[str, Any]) -> str | None:
    """Why the DaemonSet's counts cannot be read yet (None: they can).

    Until the DaemonSet controller has seen the current generation, its status says 0
    desired nodes, which would read as "no node matches": a PrePull made a moment ago
    must not be Ready for that."""
    generation = int((daemonset.get("metadata") or {}).get("generation") or 0)
    observed = (daemonset.get("status") or {}).get("observedGeneration")
    if observed is None or int(observed) < generation:
        return "the DaemonSet controller has not counted the nodes yet"
    return None


def build_node_status(
    pods: Sequence[Mapping[str, Any]],
    desired: int,
    *,
    current_hash: str | None = None,
    images: Mapping[str, str] | None = None,
) -> NodeStatus:
    """Aggregate the DaemonSet's pods (as the API returns them) per node: see
    `build_node_status_from_views`, which the controller uses on its cache."""
    views = [_build_view(pod, "") for pod in pods]
    return build_node_status_from_views(views, desired, current_hash=current_hash, images=images)


def build_node_status_from_views(
    pods: Iterable[PodView],
    desired: int,
    *,
    current_hash: str | None = None,
    images: Mapping[str, str] | None = None,
) -> NodeStatus:
    """Aggregate the DaemonSet's pods per node.

    `desired` is the DaemonSet's status.desiredNumberScheduled. With `current_hash` (the
    template's imageward.io/digest-hash), only pods of that template count as ready: a
    node still running the previous pod does not hold the new digests. `images` maps a
    pod's image reference (pinned) back to the image as the user wrote it.
    Pods being deleted and pods not yet bound to a node are not counted.
    """
    by_node: dict[str, list[PodView]] = {}
    for pod in pods:
        if pod.deleting or not pod.node:
            continue
        by_node.setdefault(pod.node, []).append(pod)

    ready = failed = 0
    failures: list[Failure] = []
    for node_pods in by_node.values():
        if any(
            pod.ready and (current_hash is None or pod.template_hash == current_hash)
            for pod in node_pods
        ):
            ready += 1
            continue
        node_failures = [f for pod in node_pods for f in pod.failures]
        if node_failures:
            failed += 1
            if images is not None:
                node_failures = [
                    dataclasses.replace(f, image=images.get(f.image, f.image))
                    for f in node_failures
                ]
            failures.extend(node_failures)
    return NodeStatus(
        desired=desired, ready=ready, failed=failed, failures=select_failures(failures)
    )


def build_status_fields(nodes: NodeStatus) -> dict[str, Any]:
    """The status.nodes, status.readyText and status.failures fields, to merge into a patch."""
    failures: list[dict[str, Any]] = []
    for failure in nodes.failures:
        item = {"node": failure.node, "image": failure.image, "reason": failure.reason}
        if failure.message:
            item["message"] = failure.message
        failures.append(item)
    return {
        "nodes": {"desired": nodes.desired, "ready": nodes.ready, "failed": nodes.failed},
        "readyText": nodes.ready_text,
        "failures": failures,
    }


def _describe_failures(nodes: NodeStatus) -> str:
    first = nodes.failures[0] if nodes.failures else None
    noun = "node fails" if nodes.failed == 1 else "nodes fail"
    text = f"{nodes.failed} {noun}"
    if first is not None:
        detail = f"{first.node}: {first.image}: {first.reason}"
        if first.message:
            detail += f": {first.message}"
        text += f", e.g. {detail}"
    return text


def _condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int,
    now: str,
    previous: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    text = "True" if status else "False"
    before = previous.get(kind)
    # The transition time moves only when the status does (Kubernetes convention).
    if before is not None and before.get("status") == text and before.get("lastTransitionTime"):
        since = before["lastTransitionTime"]
    else:
        since = now
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": _shorten(message, MAX_CONDITION_MESSAGE),
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def build_conditions(
    nodes: NodeStatus | None,
    *,
    generation: int,
    now: str,
    problems: Sequence[Problem] = (),
    notes: Sequence[Problem] = (),
    previous: Sequence[Mapping[str, Any]] = (),
    pending: str = "the DaemonSet has not been created yet",
) -> list[dict[str, Any]]:
    """Ready, Progressing and Degraded, each with a reason and a message.

    `nodes` is None when there is nothing on the nodes to report on (a blocking problem,
    or not made yet: `pending` says what). `problems` keep the PrePull from being Ready;
    `notes` are things it does differently from what was asked (e.g. a namespaceSelector
    it may not use) and only make it Degraded. `now` is an RFC 3339 timestamp;
    `previous` the current status.conditions, so that lastTransitionTime only moves when
    a condition's status does.
    """
    before = {c.get("type", ""): c for c in previous if isinstance(c, Mapping)}
    problem_text = "; ".join(f"{p.message}" for p in problems)
    note_text = "; ".join(f"{n.message}" for n in notes)
    args: dict[str, Any] = {"generation": generation, "now": now, "previous": before}

    if nodes is None:
        reason = problems[0].reason if problems else REASON_PENDING
        message = problem_text or pending
        is_degraded = bool(problems or notes)
        degraded_reason = problems[0].reason if problems else (notes[0].reason if notes else reason)
        degraded_message = "; ".join(t for t in (problem_text, note_text) if t) or message
        return [
            _condition(CONDITION_READY, False, reason, message, **args),
            _condition(CONDITION_PROGRESSING, False, reason, message, **args),
            _condition(CONDITION_DEGRADED, is_degraded, degraded_reason, degraded_message, **args),
        ]

    done = nodes.ready >= nodes.desired
    progress = f"{nodes.ready} of {nodes.desired} nodes are ready"
    if nodes.unserved:
        noun = "node has" if nodes.unserved == 1 else "nodes have"
        progress += f" ({nodes.unserved} {noun} no node-agent pod)"
    if problems:
        ready = _condition(CONDITION_READY, False, problems[0].reason, problem_text, **args)
    elif nodes.desired == 0:
        ready = _condition(
            CONDITION_READY,
            True,
            REASON_NO_MATCHING_NODES,
            "no node matches the nodeSelector and tolerations",
            **args,
        )
    elif done:
        ready = _condition(CONDITION_READY, True, REASON_ALL_NODES_READY, progress, **args)
    elif nodes.failed:
        message = f"{progress}; {_describe_failures(nodes)}"
        ready = _condition(CONDITION_READY, False, REASON_PULL_FAILED, message, **args)
    else:
        ready = _condition(CONDITION_READY, False, REASON_ROLLING_OUT, progress, **args)

    waiting = nodes.desired - nodes.ready - nodes.failed
    if done:
        progressing = _condition(CONDITION_PROGRESSING, False, REASON_COMPLETE, progress, **args)
    elif waiting > 0:
        progressing = _condition(CONDITION_PROGRESSING, True, REASON_ROLLING_OUT, progress, **args)
    else:
        message = f"{progress}; every other node fails"
        progressing = _condition(CONDITION_PROGRESSING, False, REASON_STALLED, message, **args)

    if problems or notes:
        message = "; ".join(t for t in (problem_text, note_text) if t)
        if nodes.failed:
            message += f"; {_describe_failures(nodes)}"
        reason = (problems or notes)[0].reason
        degraded = _condition(CONDITION_DEGRADED, True, reason, message, **args)
    elif nodes.failed:
        degraded = _condition(
            CONDITION_DEGRADED, True, REASON_PULL_FAILED, _describe_failures(nodes), **args
        )
    else:
        degraded = _condition(CONDITION_DEGRADED, False, REASON_AS_EXPECTED, "no failures", **args)
    return [ready, progressing, degraded]


def build_images_from_workloads(
    workloads: Sequence[Mapping[str, Any]],
    kinds: Collection[model.WorkloadKind],
    *,
    node_count: int,
) -> list[tuple[str, int]]:
    """The images of workload objects weighted by replicas (see
    `workloads.build_images_from_views`, which the controller uses on its cache)."""
    return workloads_module.build_images_from_workloads(workloads, kinds, node_count=node_count)


def build_image_weights(*lists: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Merge (image, weight) lists, summing the weights of an image listed more than once.

    Images keep the order in which they first appear (pass spec.images first): an image
    both named in spec.images and used by workloads gets both weights.
    """
    weights: dict[str, int] = {}
    for entries in lists:
        for image, weight in entries:
            weights[image] = weights.get(image, 0) + weight
    return list(weights.items())
