"""What an Images-mode PrePull puts in its namespace: one DaemonSet.

Pure builders returning plain dicts (Kubernetes manifests); the controller applies them.
Everything is derived from its arguments only, in a canonical order, so the same PrePull
and the same digests always build the same objects: a template that does not change
does not roll out, and the pod-template annotation `imageward.io/digest-hash` changes
exactly when a resolved digest or the layer plan does.

Images mode, pullMethod InitContainer: the kubelet pulls every image of an init
container, and pulls them one after another (a pod's images are never pulled in
parallel), which keeps each node's registry traffic steady. The images may hold no
shell or any executable at all (scratch, distroless), so the first init container
copies a static helper into an emptyDir and every image's init container runs that
helper, which exits at once. The long-lived container is a pause container.

Images mode, pullMethod ImageVolume: the images are `image` volumes of the pause
container (Kubernetes 1.33+ with the ImageVolume feature); nothing of them runs.

Layers mode has no DaemonSet per PrePull: the one node agent of the operator's namespace
serves every Layers-mode PrePull from a plan ConfigMap there (see `plans`), so a
PrePull's namespace never holds a privileged pod.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from imageward import constants
from imageward.prepull import model, nodes, planner, plans
from imageward.registry import model as registry_model

ANNOTATION_DIGEST_HASH = "imageward.io/digest-hash"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
APP_NAME = "imageward"

CONTAINERD_SOCKET = "/run/containerd/containerd.sock"

HELPER_DIR = "/iw"
HELPER_PATH = f"{HELPER_DIR}/imageward-helper"
HELPER_SOURCE = "/imageward-helper"
IMAGE_VOLUMES_DIR = "/images"

# The node agent serves /readyz, /healthz and /metrics on this port (the chart's agent
# DaemonSet probes it).
AGENT_PORT = 8081

NONROOT_UID = 65532
LINUX_LABEL = "kubernetes.io/os"

_TINY_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "1m", "memory": "8Mi"},
    "limits": {"memory": "16Mi"},
}
_NAME_PREFIX = "prepull-"
_MAX_NAME = 63
_LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _short_hash(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def build_resource_name(prepull_name: str) -> str:
    """Name of the DaemonSet and ConfigMap of a PrePull: `prepull-<name>`.

    Kept a DNS label of at most 63 characters (pod names and hostnames derive from it);
    a longer or dotted name is cut and suffixed with a hash of the whole name, so two
    PrePulls never share a DaemonSet.
    """
    name = _NAME_PREFIX + prepull_name
    if len(name) <= _MAX_NAME and _DNS_LABEL_RE.fullmatch(name):
        return name
    cleaned = re.sub(r"[^a-z0-9-]", "-", name.lower())[: _MAX_NAME - 9].rstrip("-")
    return f"{cleaned}-{_short_hash(prepull_name)}"


def build_selector_value(prepull_name: str) -> str:
    """The `imageward.io/prepull` label value: the name, or a cut one with a hash suffix."""
    if len(prepull_name) <= _MAX_NAME and _LABEL_VALUE_RE.fullmatch(prepull_name):
        return prepull_name
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", prepull_name)[: _MAX_NAME - 9].rstrip("-_.")
    return f"{cleaned}-{_short_hash(prepull_name)}"


def build_selector(prepull_name: str) -> dict[str, str]:
    return {constants.LABEL_PREPULL: build_selector_value(prepull_name)}


def build_selector_text() -> str:
    """The label selector of every pre-pull DaemonSet and pod imageward makes (the
    controller's one cluster-wide watch of each)."""
    return (
        f"{constants.LABEL_PREPULL},{LABEL_COMPONENT}=prepull,"
        f"{constants.LABEL_MANAGED_BY}={constants.MANAGER_NAME}"
    )


def build_pinned_reference(image: str, digest: str) -> str:
    """`repository@digest`: the tag is dropped, so a re-tag to the same digest changes nothing.

    ("registry:5000/team/web:1.4" and sha256:x give "registry:5000/team/web@sha256:x".)
    """
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}@{digest}"


def build_pinned_references(images: Sequence[model.ResolvedImage]) -> list[str]:
    """Distinct pinned references in sorted order: the images the nodes get, canonically."""
    return sorted({build_pinned_reference(image.image, image.digest) for image in images})


def build_digest_hash(
    images: Sequence[model.ResolvedImage], *, plan_hash: str | None = None
) -> str:
    """Hash of the pinned images (and the plan): equal exactly when the nodes need nothing new.

    Independent of the order of `images`, of duplicates and of tags.
    """
    canonical = {"images": build_pinned_references(images), "plan": plan_hash}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_owner_reference(prepull_name: str, uid: str) -> dict[str, Any]:
    """Makes the PrePull the controller of what it made, so deleting it deletes them.

    blockOwnerDeletion needs `update` on prepulls/finalizers in the operator's RBAC when
    the OwnerReferencesPermissionEnforcement admission plugin is on.
    """
    return {
        "apiVersion": constants.API_VERSION,
        "kind": model.KIND,
        "name": prepull_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_labels(prepull_name: str, labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's labels plus ours; ours win, the selector label above all."""
    return {
        **(labels or {}),
        LABEL_NAME: APP_NAME,
        LABEL_COMPONENT: "prepull",
        constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
        **build_selector(prepull_name),
    }


def _metadata(
    prepull_name: str,
    namespace: str,
    uid: str,
    labels: Mapping[str, str] | None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": build_resource_name(prepull_name),
        "namespace": namespace,
        "labels": build_labels(prepull_name, labels),
        "ownerReferences": [build_owner_reference(prepull_name, uid)],
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


def _restricted_security_context() -> dict[str, Any]:
    # Meets the "restricted" Pod Security Standard: the pods run in any namespace.
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(template: Mapping[str, Any]) -> dict[str, Any]:
    return {key: dict(value) for key, value in template.items()}


def build_tolerations(tolerations: Sequence[model.Toleration]) -> list[dict[str, Any]]:
    return nodes.build_tolerations_json(tolerations)


def _node_selector(spec: model.PrePullSpec) -> dict[str, str]:
    # The helper and pause images are Linux binaries: never schedule on Windows.
    return nodes.build_effective_selector(spec.node_selector)


def _pod_spec_common(spec: model.PrePullSpec, *, grace_seconds: int) -> dict[str, Any]:
    pod: dict[str, Any] = {
        # The pods talk to nothing in the cluster: no token, no service variables.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace_seconds,
        "nodeSelector": _node_selector(spec),
    }
    if spec.tolerations:
        pod["tolerations"] = build_tolerations(spec.tolerations)
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    return pod


def _pause_container(pause_image: str, mounts: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "pause",
        "image": pause_image,
        "imagePullPolicy": "IfNotPresent",
        "resources": _resources(_TINY_RESOURCES),
        "securityContext": _restricted_security_context(),
    }
    if mounts:
        container["volumeMounts"] = [dict(mount) for mount in mounts]
    return container


def _init_container_pod(
    spec: model.PrePullSpec, pinned: Sequence[str], *, helper_image: str, pause_image: str
) -> dict[str, Any]:
    helper_mount = {"name": "helper", "mountPath": HELPER_DIR}
    init_containers: list[dict[str, Any]] = [
        {
            "name": "install-helper",
            "image": helper_image,
            "imagePullPolicy": "IfNotPresent",
            "command": [HELPER_SOURCE, "copy", HELPER_PATH],
            "volumeMounts": [helper_mount],
            "resources": _resources(_TINY_RESOURCES),
            "securityContext": _restricted_security_context(),
        }
    ]
    for index, reference in enumerate(pinned):
        init_containers.append(
            {
                "name": f"pull-{index}",
                "image": reference,
                "imagePullPolicy": "IfNotPresent",
                "command": [HELPER_PATH],
                # The image's WORKDIR may not exist or be closed to our uid; "/" always works.
                "workingDir": "/",
                "volumeMounts": [{**helper_mount, "readOnly": True}],
                "resources": _resources(_TINY_RESOURCES),
                "securityContext": _restricted_security_context(),
            }
        )
    return {
        **_pod_spec_common(spec, grace_seconds=0),
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": init_containers,
        "containers": [_pause_container(pause_image)],
        # Memory-backed: the helper is a few hundred KiB and the node's disk stays untouched.
        "volumes": [{"name": "helper", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}],
    }


def _image_volume_pod(
    spec: model.PrePullSpec, pinned: Sequence[str], *, pause_image: str
) -> dict[str, Any]:
    volumes = [
        {"name": f"image-{index}", "image": {"reference": reference, "pullPolicy": "IfNotPresent"}}
        for index, reference in enumerate(pinned)
    ]
    mounts = [
        {"name": f"image-{index}", "mountPath": f"{IMAGE_VOLUMES_DIR}/{index}", "readOnly": True}
        for index in range(len(pinned))
    ]
    pod = {
        **_pod_spec_common(spec, grace_seconds=0),
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_pause_container(pause_image, mounts)],
    }
    if volumes:
        pod["volumes"] = volumes
    return pod


def build_plan_document(
    prepull_name: str,
    namespace: str,
    uid: str,
    plan: planner.Plan,
    references: Mapping[str, registry_model.ImageReference],
    *,
    pull_secrets: Sequence[str] = (),
    images: Sequence[planner.PlanImage] = (),
) -> dict[str, Any]:
    """The node agent's plan document (`plans.build_plan_document`, every node); kept for
    callers that build a plan file by hand (benchmarks, `imageward agent --plan`)."""
    return plans.build_plan_document(
        prepull_name, namespace, uid, plan, references, pull_secrets=pull_secrets, images=images
    )


def build_daemonset(
    prepull_name: str,
    namespace: str,
    uid: str,
    spec: model.PrePullSpec,
    images: Sequence[model.ResolvedImage],
    *,
    helper_image: str,
    pause_image: str,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The one DaemonSet of an Images-mode PrePull (its pods meet the `restricted` Pod
    Security Standard). Layers mode has none: raises ValueError."""
    if spec.mode is model.Mode.LAYERS:
        raise ValueError("Layers mode has no DaemonSet per PrePull (see prepull.plans)")
    pinned = build_pinned_references(images)
    if spec.pull_method is model.PullMethod.IMAGE_VOLUME:
        pod_spec = _image_volume_pod(spec, pinned, pause_image=pause_image)
    else:
        pod_spec = _init_container_pod(
            spec, pinned, helper_image=helper_image, pause_image=pause_image
        )
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]

    pod_labels = build_labels(prepull_name, labels)
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _metadata(prepull_name, namespace, uid, labels),
        "spec": {
            "selector": {"matchLabels": build_selector(prepull_name)},
            "updateStrategy": {
                "type": "RollingUpdate",
                # No surge: two pre-pull pods on one node would only pull twice as much.
                "rollingUpdate": {"maxUnavailable": spec.max_unavailable, "maxSurge": 0},
            },
            "revisionHistoryLimit": 2,
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {ANNOTATION_DIGEST_HASH: build_digest_hash(images)},
                },
                "spec": pod_spec,
            },
        },
    }


def evaluate_missing_image_volumes(
    applied: Mapping[str, Any], images: Sequence[model.ResolvedImage]
) -> list[str]:
    """Pinned references missing from the image volumes of a DaemonSet as the API stored it.

    An API server without the ImageVolume feature silently drops `image` volumes (and
    their mounts), leaving a pause-only pod that turns Ready without pulling anything.
    Call this on the object the API server returned; a non-empty answer means
    pullMethod ImageVolume is not available in this cluster.
    """
    pod = applied.get("spec", {}).get("template", {}).get("spec", {})
    present = {
        volume["image"].get("reference")
        for volume in pod.get("volumes") or []
        if isinstance(volume.get("image"), Mapping)
    }
    return [reference for reference in build_pinned_references(images) if reference not in present]
