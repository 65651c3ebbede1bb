"""What the PrePull controller knows of the cluster, kept current by watches.

One watch per kind, each started the first time a PrePull needs it (a replica that never
runs the PrePull controller never watches):

- Deployments, StatefulSets, DaemonSets, CronJobs, cluster-wide, as `WorkloadView`s
  (fromWorkloads);
- namespaces' labels (a namespaceSelector, where one is honoured);
- nodes' labels and taints (which nodes a Layers-mode PrePull wants; DaemonSet weights);
- the node-agent pods in the operator's namespace, by the agent's label selector, as
  their per-plan reports;
- the plan ConfigMaps in the operator's namespace, as the PrePulls they are for.

Every store is capped (`settings.prepull.cache_max_objects` objects per kind) and keeps
only the fields those uses read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from imageward import kube, settings
from imageward.prepull import model, nodes, plans, reflector, reports, workloads

_START_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class PlanRecord:
    """A plan ConfigMap of the operator's namespace: the PrePull it is for."""

    key: str
    namespace: str
    name: str
    uid: str
    plan_hash: str
    size: int = 0
    """Characters of its plan.json (what every agent parses and keeps)."""


def project_plan(body: Mapping[str, Any]) -> PlanRecord | None:
    identity = plans.parse_plan_identity(body)
    if identity is None:
        return None
    namespace, name, uid = identity
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = (body.get("data") or {}).get(plans.PLAN_KEY)
    return PlanRecord(
        key=plans.build_prepull_key(namespace, name, uid),
        namespace=namespace,
        name=name,
        uid=uid,
        plan_hash=str(annotations.get(plans.ANNOTATION_PLAN_HASH) or ""),
        size=len(text) if isinstance(text, str) else 0,
    )


def project_namespace(body: Mapping[str, Any]) -> Mapping[str, str]:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


_WORKLOAD_LISTS = {
    model.WorkloadKind.DEPLOYMENT: ("apps", "list_deployment_for_all_namespaces"),
    model.WorkloadKind.STATEFUL_SET: ("apps", "list_stateful_set_for_all_namespaces"),
    model.WorkloadKind.DAEMON_SET: ("apps", "list_daemon_set_for_all_namespaces"),
    model.WorkloadKind.CRON_JOB: ("batch", "list_cron_job_for_all_namespaces"),
}


class Inventory:
    """The caches, started on first use; `close()` stops every watch."""

    def __init__(self, client: kube.Kube, config: settings.Settings) -> None:
        self.kube = client
        self.settings = config
        limit = config.prepull.cache_max_objects
        self._workloads: dict[model.WorkloadKind, reflector.Reflector[workloads.WorkloadView]] = {}
        for kind, (group, method) in _WORKLOAD_LISTS.items():
            api = client.apps if group == "apps" else client.batch
            self._workloads[kind] = reflector.Reflector(
                client,
                what=f"{kind.value}s",
                list_fn=getattr(api, method),
                project=functools.partial(workloads.project_workload, kind),
                max_items=limit,
            )
        self._namespaces: reflector.Reflector[Mapping[str, str]] = reflector.Reflector(
            client,
            what="Namespaces",
            list_fn=client.core.list_namespace,
            project=project_namespace,
            max_items=limit,
        )
        self._nodes: reflector.Reflector[nodes.NodeView] = reflector.Reflector(
            client,
            what="Nodes",
            list_fn=client.core.list_node,
            project=nodes.parse_node,
            max_items=limit,
        )
        self._agents: reflector.Reflector[reports.AgentPod] = reflector.Reflector(
            client,
            what=f"node-agent pods in {config.namespace}",
            list_fn=client.core.list_namespaced_pod,
            args=(config.namespace,),
            label_selector=config.prepull.agent_selector,
            project=reports.parse_agent_pod,
            max_items=limit,
        )
        self._plans: reflector.Reflector[PlanRecord] = reflector.Reflector(
            client,
            what=f"plan ConfigMaps in {config.namespace}",
            list_fn=client.core.list_namespaced_config_map,
            args=(config.namespace,),
            label_selector=plans.build_selector_text(),
            project=project_plan,
            max_items=limit,
        )

    def _all(self) -> list[reflector.Reflector[Any]]:
        return [*self._workloads.values(), self._namespaces, self._nodes, self._agents, self._plans]

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self._all()))

    async def workloads(
        self, kinds: Collection[model.WorkloadKind]
    ) -> tuple[list[workloads.WorkloadView], list[str]]:
        """Every cached workload of these kinds, and the kinds whose cache is full."""
        found: list[workloads.WorkloadView] = []
        full: list[str] = []
        for kind in kinds:
            cache = self._workloads[kind]
            await cache.start(wait=_START_TIMEOUT)
            found.extend(cache.items.values())
            if cache.store.overflowed:
                full.append(kind.value)
        return found, full

    async def namespace_labels(self) -> Mapping[str, Mapping[str, str]]:
        await self._namespaces.start(wait=_START_TIMEOUT)
        return self._namespaces.items

    async def nodes(self) -> Sequence[nodes.NodeView]:
        await self._nodes.start(wait=_START_TIMEOUT)
        return list(self._nodes.items.values())

    async def agent_pods(self) -> Sequence[reports.AgentPod]:
        await self._agents.start(wait=_START_TIMEOUT)
        return list(self._agents.items.values())

    async def plans(self) -> Mapping[str, PlanRecord]:
        """Plan ConfigMaps by PrePull key."""
        await self._plans.start(wait=_START_TIMEOUT)
        return {record.key: record for record in self._plans.items.values()}
