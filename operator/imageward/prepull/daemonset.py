"""What a PrePull puts in the cluster: one DaemonSet, plus one ConfigMap in Layers mode.

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

Layers mode: the node agent (`imageward agent`) reads the plan from the ConfigMap and
puts the planned blobs into containerd's content store through its socket.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from imageward import constants
from imageward.prepull import model, planner
from imageward.registry import model as registry_model

ANNOTATION_DIGEST_HASH = "imageward.io/digest-hash"
ANNOTATION_PLAN_HASH = "imageward.io/plan-hash"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
APP_NAME = "imageward"

PLAN_KEY = "plan.json"
# The plan and the pull secrets are sibling mounts: a mount inside the read-only
# ConfigMap volume would need its mount point made in that read-only tree (runc's mkdir
# fails with EROFS and the pod never starts).
PLAN_DIR = "/etc/imageward/plan"
PLAN_PATH = f"{PLAN_DIR}/{PLAN_KEY}"
PLAN_FORMAT_VERSION = 1
PULL_SECRETS_DIR = "/etc/imageward/pull-secrets"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CONTAINERD_NAMESPACE = "k8s.io"

HELPER_DIR = "/iw"
HELPER_PATH = f"{HELPER_DIR}/imageward-helper"
HELPER_SOURCE = "/imageward-helper"
IMAGE_VOLUMES_DIR = "/images"

# The agent serves /readyz (200 once every planned blob is in containerd and leased) and
# /metrics on this port; the readiness probe is how a node counts as ready.
AGENT_PORT = 8081
# On SIGTERM the agent aborts the writes in flight and stops; its lease stays (it cannot
# tell a deleted PrePull from a rollout or a drain; the lease expires unless an agent
# renews it, see prepull/agent.py). The Images-mode pods stop at once.
AGENT_GRACE_SECONDS = 30

NONROOT_UID = 65532
LINUX_LABEL = "kubernetes.io/os"

_TINY_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "1m", "memory": "8Mi"},
    "limits": {"memory": "16Mi"},
}
_AGENT_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "10m", "memory": "64Mi"},
    "limits": {"memory": "256Mi"},
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


def build_plan_hash(plan: planner.Plan) -> str:
    """Hash of what the plan puts on a node (digests and sizes), not of why."""
    layers = sorted((layer.digest, layer.size) for layer in plan.layers)
    return hashlib.sha256(json.dumps(layers, separators=(",", ":")).encode()).hexdigest()[:16]


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


def _agent_security_context() -> dict[str, Any]:
    # Root only because containerd's socket is root-owned (0660, no group to join by
    # default); as its owner, uid 0 connects without any capability, so all are dropped.
    return {
        "runAsNonRoot": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(template: Mapping[str, Any]) -> dict[str, Any]:
    return {key: dict(value) for key, value in template.items()}


def build_tolerations(tolerations: Sequence[model.Toleration]) -> list[dict[str, Any]]:
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


def _node_selector(spec: model.PrePullSpec) -> dict[str, str]:
    selector = dict(spec.node_selector)
    # The helper, pause and agent images are Linux binaries: never schedule on Windows.
    selector.setdefault(LINUX_LABEL, "linux")
    return selector


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


def _agent_pod(
    spec: model.PrePullSpec,
    configmap_name: str,
    *,
    agent_image: str,
    agent_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "plan",
            "configMap": {"name": configmap_name, "items": [{"key": PLAN_KEY, "path": PLAN_KEY}]},
        },
        {
            "name": "containerd",
            "hostPath": {"path": CONTAINERD_SOCKET, "type": "Socket"},
        },
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
        {"name": "containerd", "mountPath": CONTAINERD_SOCKET},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    # The agent gets the pull secrets as files: it has no ServiceAccount token to read
    # them through the API. Optional, so a missing Secret shows up as an authentication
    # error of the agent (with the Secret's name) instead of a pod stuck in creation.
    for index, secret in enumerate(spec.image_pull_secrets):
        volumes.append(
            {"name": f"pull-secret-{index}", "secret": {"secretName": secret, "optional": True}}
        )
        mounts.append(
            {
                "name": f"pull-secret-{index}",
                "mountPath": f"{PULL_SECRETS_DIR}/{secret}",
                "readOnly": True,
            }
        )
    container = {
        "name": "agent",
        "image": agent_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["imageward", "agent", "--plan", PLAN_PATH],
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            # The operator's registry settings (plain-HTTP hosts, CA, mirrors), so the
            # agent reaches registries the way the operator does.
            *({"name": k, "value": v} for k, v in sorted((agent_env or {}).items())),
        ],
        "ports": [{"name": "http", "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 1,
        },
        "volumeMounts": mounts,
        "resources": _resources(_AGENT_RESOURCES),
        "securityContext": _agent_security_context(),
    }
    return {
        **_pod_spec_common(spec, grace_seconds=AGENT_GRACE_SECONDS),
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }


def build_plan_document(
    prepull_name: str,
    namespace: str,
    uid: str,
    plan: planner.Plan,
    references: Mapping[str, registry_model.ImageReference],
    *,
    pull_secrets: Sequence[str] = (),
) -> dict[str, Any]:
    """The agent's input: the blobs to fetch, where from, and with which credentials.

    `references` maps each image as written (PlannedLayer.images) to its parsed
    reference; every repository holding a layer is listed, so the agent can fall back
    to another when one refuses, and labels the blob for each
    (containerd.io/distribution.source.<registry>=<repository>).
    """
    layers: list[dict[str, Any]] = []
    for layer in plan.layers:
        sources: set[tuple[str, str]] = set()
        for image in layer.images:
            reference = references.get(image)
            if reference is None:
                raise ValueError(f"layer {layer.digest}: no reference for image {image!r}")
            sources.add((reference.registry, reference.repository))
        layers.append(
            {
                "digest": layer.digest,
                "size": layer.size,
                "sources": [
                    {"registry": registry, "repository": repository}
                    for registry, repository in sorted(sources)
                ],
            }
        )
    return {
        "version": PLAN_FORMAT_VERSION,
        "prepull": {"namespace": namespace, "name": prepull_name, "uid": uid},
        "hash": build_plan_hash(plan),
        "containerdNamespace": CONTAINERD_NAMESPACE,
        "bytes": plan.bytes,
        "layers": layers,
        "pullSecrets": [
            {"name": secret, "path": f"{PULL_SECRETS_DIR}/{secret}"} for secret in pull_secrets
        ],
    }


def build_plan_configmap(
    prepull_name: str,
    namespace: str,
    uid: str,
    plan: planner.Plan,
    references: Mapping[str, registry_model.ImageReference],
    *,
    pull_secrets: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ConfigMap holding the plan as JSON (key plan.json), owned by the PrePull.

    Its `imageward.io/plan-hash` annotation is what build_daemonset folds into the pod
    template, because a changed ConfigMap alone does not restart the agents.
    """
    document = build_plan_document(
        prepull_name, namespace, uid, plan, references, pull_secrets=pull_secrets
    )
    # Compact: a ConfigMap holds at most 1 MiB.
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            prepull_name, namespace, uid, labels, {ANNOTATION_PLAN_HASH: document["hash"]}
        ),
        "data": {PLAN_KEY: text},
    }


def build_daemonset(
    prepull_name: str,
    namespace: str,
    uid: str,
    spec: model.PrePullSpec,
    images: Sequence[model.ResolvedImage],
    *,
    helper_image: str,
    pause_image: str,
    agent_image: str,
    agent_env: Mapping[str, str] | None = None,
    plan_configmap: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The one DaemonSet of a PrePull. Layers mode needs `plan_configmap` (from
    build_plan_configmap); Images mode ignores it."""
    pinned = build_pinned_references(images)
    plan_hash: str | None = None
    if spec.mode is model.Mode.LAYERS:
        if plan_configmap is None:
            raise ValueError("Layers mode needs the plan ConfigMap (build_plan_configmap)")
        metadata = plan_configmap["metadata"]
        plan_hash = metadata.get("annotations", {}).get(ANNOTATION_PLAN_HASH)
        if not plan_hash:
            raise ValueError(f"ConfigMap {metadata['name']} has no {ANNOTATION_PLAN_HASH}")
        pod_spec = _agent_pod(spec, metadata["name"], agent_image=agent_image, agent_env=agent_env)
    elif spec.pull_method is model.PullMethod.IMAGE_VOLUME:
        pod_spec = _image_volume_pod(spec, pinned, pause_image=pause_image)
    else:
        pod_spec = _init_container_pod(
            spec, pinned, helper_image=helper_image, pause_image=pause_image
        )
    if spec.image_pull_secrets and spec.mode is model.Mode.IMAGES:
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
                    "annotations": {
                        ANNOTATION_DIGEST_HASH: build_digest_hash(images, plan_hash=plan_hash)
                    },
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
