"""Object bodies as the apiserver sends them, one per supported kind."""

from __future__ import annotations

import copy
from typing import Any

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


def pod_spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": "web",
        "imagePullSecrets": [{"name": "ghcr"}, {"name": "acme"}],
        "nodeSelector": {"kubernetes.io/arch": "arm64", "kubernetes.io/os": "linux"},
        "initContainers": [{"name": "migrate", "image": "ghcr.io/acme/migrate:2"}],
        "containers": [
            {"name": "web", "image": "ghcr.io/acme/web:1.4"},
            {"name": "sidecar", "image": "envoyproxy/envoy:v1.30"},
        ],
    }
    spec.update(extra)
    return spec


def template(**extra: Any) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "web", "tier": "front"}}, "spec": pod_spec(**extra)}


def pod(**extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web", "tier": "front"}},
        "spec": pod_spec(**extra),
    }


def workload(kind: str, **extra: Any) -> dict[str, Any]:
    api_version = {
        "Deployment": "apps/v1",
        "ReplicaSet": "apps/v1",
        "StatefulSet": "apps/v1",
        "DaemonSet": "apps/v1",
        "Job": "batch/v1",
        "CronJob": "batch/v1",
        "ReplicationController": "v1",
    }[kind]
    body: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "web", "namespace": "shop", "labels": {"owner": "team-a"}},
    }
    if kind == "CronJob":
        body["spec"] = {
            "schedule": "*/5 * * * *",
            "jobTemplate": {"spec": {"template": template(**extra)}},
        }
    else:
        body["spec"] = {"replicas": 2, "template": template(**extra)}
    return body


SPEC_POINTERS = {
    "Pod": "/spec",
    "Deployment": "/spec/template/spec",
    "ReplicaSet": "/spec/template/spec",
    "StatefulSet": "/spec/template/spec",
    "DaemonSet": "/spec/template/spec",
    "Job": "/spec/template/spec",
    "ReplicationController": "/spec/template/spec",
    "CronJob": "/spec/jobTemplate/spec/template/spec",
}


def body_of(kind: str, **extra: Any) -> dict[str, Any]:
    return pod(**extra) if kind == "Pod" else workload(kind, **extra)


def review(**request: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "web",
        "namespace": "shop",
        "operation": "CREATE",
        "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:masters"]},
        "object": pod(),
        "oldObject": None,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    base.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base}


def clone(value: Any) -> Any:
    return copy.deepcopy(value)
