"""Pure builders of imageward's webhook configurations.

Kopf's `settings.admission.managed` rewrites the whole `webhooks:` list with a fixed
timeout and no namespaceSelector, so imageward builds its own: excluded namespaces,
its own timeout and failure policy, service or URL client configs. The Helm chart renders
the same shape; the operator creates them where they are missing (dev, tests) and keeps
their caBundle current.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from typing import Any

VALIDATE_ID = "imageward-validate"
PIN_DIGEST_ID = "imageward-pin-digest"
VALIDATING_KIND = "ValidatingWebhookConfiguration"
MUTATING_KIND = "MutatingWebhookConfiguration"

_WORKLOAD_RULES: tuple[dict[str, Any], ...] = (
    {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["pods"],
        "scope": "Namespaced",
    },
    {
        # Ephemeral containers are added through this subresource, by UPDATE only.
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["UPDATE"],
        "resources": ["pods/ephemeralcontainers"],
        "scope": "Namespaced",
    },
    {
        "apiGroups": ["apps"],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"],
        "scope": "Namespaced",
    },
    {
        "apiGroups": ["batch"],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["jobs", "cronjobs"],
        "scope": "Namespaced",
    },
)

#: What the mutating (pinDigest) webhook is sent: pods as created, images an UPDATE
#: changes, ephemeral containers added (`kubectl debug`).
_MUTATED_RULES = _WORKLOAD_RULES[:2]


def _resources(rules: tuple[dict[str, Any], ...]) -> frozenset[str]:
    """The resources `rules` send (a subresource's review names its resource)."""
    return frozenset(resource.split("/")[0] for rule in rules for resource in rule["resources"])


#: The resources the webhooks are sent.
RESOURCES = _resources(_WORKLOAD_RULES)
#: The resources the mutating webhook is sent: the validating one asks their pins.
MUTATED_RESOURCES = _resources(_MUTATED_RULES)


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the apiserver reaches the webhook server: a URL base or a Service."""

    url: str | None = None  # e.g. "https://127.0.0.1:9443" (local apiserver, no cluster DNS)
    service_name: str | None = None
    service_namespace: str | None = None
    service_port: int = 443

    def client_config(self, handler_id: str, ca_bundle: bytes) -> dict[str, Any]:
        config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
        if self.url:
            config["url"] = f"{self.url.rstrip('/')}/{handler_id}"
        else:
            config["service"] = {
                "name": self.service_name,
                "namespace": self.service_namespace,
                "port": self.service_port,
                "path": f"/{handler_id}",
            }
        return config


def _namespace_selector(excluded: Sequence[str]) -> dict[str, Any]:
    return {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": sorted(set(excluded)),
            }
        ]
    }


def _configuration(
    kind: str,
    name: str,
    labels: dict[str, str] | None,
    webhook: dict[str, Any],
    *,
    excluded_namespaces: Sequence[str],
    timeout_seconds: int,
    failure_policy: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "labels": labels or {}},
        "webhooks": [
            {
                **webhook,
                "namespaceSelector": _namespace_selector(excluded_namespaces),
                "failurePolicy": failure_policy,
                "sideEffects": "NoneOnDryRun",
                "timeoutSeconds": timeout_seconds,
                "admissionReviewVersions": ["v1"],
                "matchPolicy": "Equivalent",
            }
        ],
    }


def build_validating_configuration(
    name: str,
    endpoint: Endpoint,
    ca_bundle: bytes,
    *,
    excluded_namespaces: Sequence[str],
    timeout_seconds: int,
    failure_policy: str = "Fail",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    webhook = {
        "name": "validate.imageward.io",
        "clientConfig": endpoint.client_config(VALIDATE_ID, ca_bundle),
        "rules": [dict(rule) for rule in _WORKLOAD_RULES],
    }
    return _configuration(
        VALIDATING_KIND,
        name,
        labels,
        webhook,
        excluded_namespaces=excluded_namespaces,
        timeout_seconds=timeout_seconds,
        failure_policy=failure_policy,
    )


def build_mutating_configuration(
    name: str,
    endpoint: Endpoint,
    ca_bundle: bytes,
    *,
    excluded_namespaces: Sequence[str],
    timeout_seconds: int,
    failure_policy: str = "Fail",
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    webhook = {
        "name": "pin-digest.imageward.io",
        "clientConfig": endpoint.client_config(PIN_DIGEST_ID, ca_bundle),
        # Each new image is pinned, never one already running.
        "rules": [dict(rule) for rule in _MUTATED_RULES],
        # A pin changes the pod; other mutating webhooks may change images after it.
        "reinvocationPolicy": "IfNeeded",
    }
    return _configuration(
        MUTATING_KIND,
        name,
        labels,
        webhook,
        excluded_namespaces=excluded_namespaces,
        timeout_seconds=timeout_seconds,
        failure_policy=failure_policy,
    )


def build_ca_bundle_patch(configuration: dict[str, Any], ca_bundle: bytes) -> list[dict[str, Any]]:
    """JSONPatch setting every webhook's caBundle; empty when all are current already."""
    encoded = base64.b64encode(ca_bundle).decode()
    return [
        {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded}
        for index, webhook in enumerate(configuration.get("webhooks") or [])
        if (webhook.get("clientConfig") or {}).get("caBundle") != encoded
    ]
