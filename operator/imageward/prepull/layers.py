"""Layers mode's effects in the operator's namespace: the plan ConfigMap of each PrePull,
the key that seals pull credentials for the node agent, and the removal of what a
PrePull no longer needs (its plan when it goes or turns to Images mode, its own
DaemonSet when it turns to Layers mode).

Owner references cannot cross namespaces, so nothing here is garbage-collected for us:
the operator deletes a plan when it sees its PrePull deleted, and `sweep_plans` removes
the plans of PrePulls deleted while no operator was watching.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from imageward import constants, kube
from imageward.prepull import daemonset, inventory, plans, sealing

logger = logging.getLogger(__name__)

KEY_FIELD = "key"
_KEY_TTL = 60.0  # seconds a read key is reused before the Secret is read again


class AgentKey:
    """The sealing key, kept in Secret `name` of `namespace` (made when missing)."""

    def __init__(self, client: kube.Kube, namespace: str, name: str) -> None:
        self.kube = client
        self.namespace = namespace
        self.name = name
        self._key: bytes | None = None
        self._read_at = 0.0

    async def get(self) -> bytes:
        if self._key is not None and time.monotonic() - self._read_at < _KEY_TTL:
            return self._key
        secret = await self.kube.read_secret(self.namespace, self.name)
        if secret is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "labels": {
                        constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
                        plans.LABEL_NAME: plans.APP_NAME,
                        plans.LABEL_COMPONENT: "agent-key",
                    },
                },
                "type": "Opaque",
                "data": {KEY_FIELD: base64.b64encode(sealing.generate_key()).decode()},
            }
            if not await self.kube.create_secret(self.namespace, body):
                logger.info("agent key Secret %s was made meanwhile (another replica)", self.name)
            secret = await self.kube.read_secret(self.namespace, self.name)
            if secret is None:
                raise kube.KubeError(
                    f"get Secret {self.namespace}/{self.name}", 404, "made, then gone"
                )
        value = (secret.get("data") or {}).get(KEY_FIELD)
        try:
            raw = base64.b64decode(value or "", validate=True)
        except ValueError as e:
            raise sealing.SealError(
                f"Secret {self.namespace}/{self.name}: {KEY_FIELD} is not base64"
            ) from e
        self._key = sealing.parse_key(raw, source=f"Secret {self.namespace}/{self.name}")
        self._read_at = time.monotonic()
        return self._key


async def apply_plan(
    client: kube.Kube,
    *,
    namespace: str,
    document: Mapping[str, Any],
    plan_text: str,
    credentials: Mapping[str, Any] | None,
    agent_key: AgentKey,
) -> str:
    """Create or replace the plan ConfigMap when what the agent reads would change;
    returns "created", "replaced" or "unchanged". Raises kube.KubeError (a refusal:
    400/403/422; a conflict with a concurrent write: 409) and sealing.SealError."""
    credentials_text = None
    key: bytes | None = None
    if credentials is not None:
        credentials_text = json.dumps(credentials, sort_keys=True, separators=(",", ":"))
        key = await agent_key.get()
    key_id = sealing.build_key_id(key) if key is not None else None
    content_hash = plans.build_content_hash(plan_text, credentials_text, key_id)
    identity = document["prepull"]
    prepull_key = plans.build_prepull_key(identity["namespace"], identity["name"], identity["uid"])
    name = plans.build_plan_name(prepull_key)
    current = await client.read_config_map(namespace, name)
    current_hash = (
        ((current or {}).get("metadata") or {})
        .get("annotations", {})
        .get(plans.ANNOTATION_CONTENT_HASH)
    )
    if current is not None and current_hash == content_hash:
        return "unchanged"
    sealed = None
    if credentials_text is not None and key is not None:
        sealed = sealing.seal(key, credentials_text.encode(), context=prepull_key)
    body = plans.build_plan_configmap(
        document,
        namespace=namespace,
        plan_text=plan_text,
        sealed_credentials=sealed,
        content_hash=content_hash,
    )
    if current is None:
        await client.create_config_map(namespace, body)
        return "created"
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    await client.replace_config_map(namespace, name, body)
    return "replaced"


async def delete_plan(client: kube.Kube, namespace: str, prepull_key: str) -> bool:
    return await client.delete_config_map(namespace, plans.build_plan_name(prepull_key))


async def delete_own_daemonset(client: kube.Kube, namespace: str, name: str, uid: str) -> bool:
    """Delete the PrePull's DaemonSet in its namespace, if there is one it owns: what an
    Images-mode PrePull turned Layers (or a Layers one made before the node agent moved
    to the operator's namespace) leaves behind."""
    resource = daemonset.build_resource_name(name)
    current = await client.call(
        f"get DaemonSet {namespace}/{resource}",
        client.apps.read_namespaced_daemon_set,
        resource,
        namespace,
    )
    owners = ((current or {}).get("metadata") or {}).get("ownerReferences") or []
    if not any(owner.get("uid") == uid for owner in owners):
        return False
    return await client.delete_daemon_set(namespace, resource)


def evaluate_orphan(record: inventory.PlanRecord, prepull: Mapping[str, Any] | None) -> bool:
    """Whether a plan's PrePull is gone: deleted, re-created (another uid) or no longer in
    Layers mode. A paused PrePull keeps what it made."""
    if prepull is None:
        return True
    metadata = prepull.get("metadata") or {}
    if metadata.get("uid") != record.uid:
        return True
    if (metadata.get("annotations") or {}).get(constants.ANNOTATION_PAUSED) == "true":
        return False
    return (prepull.get("spec") or {}).get("mode") != "Layers"


async def sweep_plans(
    client: kube.Kube, namespace: str, records: Mapping[str, inventory.PlanRecord]
) -> list[str]:
    """Delete the plans whose PrePull is gone (each checked with a fresh read, so a
    PrePull made since the cache was filled keeps its plan); returns their names."""
    deleted = []
    for key, record in sorted(records.items()):
        prepull = await client.read_namespaced_custom_object(
            constants.GROUP,
            constants.VERSION,
            constants.PREPULL_PLURAL,
            record.namespace,
            record.name,
        )
        if evaluate_orphan(record, prepull) and await delete_plan(client, namespace, key):
            logger.info(
                "deleted plan %s of PrePull %s/%s (uid %s): the PrePull is gone",
                plans.build_plan_name(key),
                record.namespace,
                record.name,
                record.uid,
            )
            deleted.append(plans.build_plan_name(key))
    return deleted
