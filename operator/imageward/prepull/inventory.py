"""What the PrePull controller knows of the cluster, kept current by watches.

One watch per kind, each started the first time a PrePull needs it (a replica that never
runs the PrePull controller never watches):

- Deployments, StatefulSets, DaemonSets, CronJobs, cluster-wide, as `WorkloadView`s
  (fromWorkloads);
- namespaces' labels (a namespaceSelector, where one is honoured);
- nodes' labels and taints (which nodes a Layers-mode PrePull wants; DaemonSet weights);
- the node-agent pods in the operator's namespace, by the agent's label selector, as
  their per-plan reports;
- the plan ConfigMaps in the operator's namespace, as the PrePulls they are for;
- Images mode's DaemonSets and their pods, cluster-wide, by imageward's labels, as
  `status.DaemonSetView`s and `status.PodView`s grouped by (namespace, PrePull).

Every store is capped (`settings.prepull.cache_max_objects` objects per kind) and keeps
only the fields those uses read. `on_update(cache, key, before, after)` hears of every
projection that changed (the controller recomputes only the PrePulls it concerns).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from imageward import kube, settings
from imageward.prepull import daemonset, model, nodes, plans, reflector, reports, status, workloads

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


#: Told of every cached projection that changed: (cache, key, before, after).
Listener = Callable[[str, str, Any, Any], None]

CACHE_WORKLOADS = "workloads"
CACHE_NAMESPACES = "namespaces"
CACHE_NODES = "nodes"
CACHE_AGENTS = "agents"
CACHE_PLANS = "plans"
CACHE_DAEMONSETS = "prepull-daemonsets"
CACHE_PODS = "prepull-pods"

#: Pods are big (~5-25 KiB decoded each): listed 100 at a time.
_POD_PAGE = 100


def build_group(namespace: str, prepull_name: str) -> tuple[str, str]:
    """The index group of a PrePull's DaemonSet and pods."""
    return (namespace, daemonset.build_selector_value(prepull_name))


def _pod_group(view: status.PodView) -> tuple[str, str]:
    return (view.namespace, view.prepull)


_WORKLOAD_LISTS = {
    model.WorkloadKind.DEPLOYMENT: ("apps", "list_deployment_for_all_namespaces"),
    model.WorkloadKind.STATEFUL_SET: ("apps", "list_stateful_set_for_all_namespaces"),
    model.WorkloadKind.DAEMON_SET: ("apps", "list_daemon_set_for_all_namespaces"),
    model.WorkloadKind.CRON_JOB: ("batch", "list_cron_job_for_all_namespaces"),
}


class Inventory:
    """The caches, started on first use; `close()` stops every watch."""

    def __init__(
        self,
        client: kube.Kube,
        config: settings.Settings,
        *,
        on_update: Listener | None = None,
    ) -> None:
        self.kube = client
        self.settings = config
        limit = config.prepull.cache_max_objects

        def tell(cache: str) -> reflector.Listener | None:
            if on_update is None:
                return None
            return functools.partial(on_update, cache)

        self._workloads: dict[model.WorkloadKind, reflector.Reflector[workloads.WorkloadView]] = {}
        for kind, (group, method) in _WORKLOAD_LISTS.items():
            api = client.apps if group == "apps" else client.batch
            self._workloads[kind] = reflector.Reflector(
                client,
                what=f"{kind.value}s",
                list_fn=getattr(api, method),
                project=functools.partial(workloads.project_workload, kind),
                max_items=limit,
                on_update=tell(CACHE_WORKLOADS),
            )
        self._namespaces: reflector.Reflector[Mapping[str, str]] = reflector.Reflector(
            client,
            what="Namespaces",
            list_fn=client.core.list_namespace,
            project=project_namespace,
            max_items=limit,
            on_update=tell(CACHE_NAMESPACES),
        )
        self._nodes: reflector.Reflector[nodes.NodeView] = reflector.Reflector(
            client,
            what="Nodes",
            list_fn=client.core.list_node,
            project=nodes.parse_node,
            max_items=limit,
            on_update=tell(CACHE_NODES),
        )
        self._agents: reflector.Reflector[reports.AgentPod] = reflector.Reflector(
            client,
            what=f"node-agent pods in {config.namespace}",
            list_fn=client.core.list_namespaced_pod,
            args=(config.namespace,),
            label_selector=config.prepull.agent_selector,
            project=reports.parse_agent_pod,
            max_items=limit,
            on_update=tell(CACHE_AGENTS),
        )
        self._plans: reflector.Reflector[PlanRecord] = reflector.Reflector(
            client,
            what=f"plan ConfigMaps in {config.namespace}",
            list_fn=client.core.list_namespaced_config_map,
            args=(config.namespace,),
            label_selector=plans.build_selector_text(),
            project=project_plan,
            max_items=limit,
            on_update=tell(CACHE_PLANS),
        )
        selector = daemonset.build_selector_text()
        self._daemonsets: reflector.Reflector[status.DaemonSetView] = reflector.Reflector(
            client,
            what="pre-pull DaemonSets",
            list_fn=client.apps.list_daemon_set_for_all_namespaces,
            label_selector=selector,
            project=status.project_daemonset,
            max_items=limit,
            on_update=tell(CACHE_DAEMONSETS),
        )
        self._pods: reflector.Reflector[status.PodView] = reflector.Reflector(
            client,
            what="pre-pull pods",
            list_fn=client.core.list_pod_for_all_namespaces,
            label_selector=selector,
            project=status.project_pod,
            max_items=limit,
            index=_pod_group,
            on_update=tell(CACHE_PODS),
            page_size=_POD_PAGE,
        )

    def _all(self) -> list[reflector.Reflector[Any]]:
        return [
            *self._workloads.values(),
            self._namespaces,
            self._nodes,
            self._agents,
            self._plans,
            self._daemonsets,
            self._pods,
        ]

    def sizes(self) -> dict[str, int]:
        """Objects held per cache (for metrics and the benchmark)."""
        found = {f"workloads:{kind.value}": len(r.items) for kind, r in self._workloads.items()}
        found.update(
            {
                CACHE_NAMESPACES: len(self._namespaces.items),
                CACHE_NODES: len(self._nodes.items),
                CACHE_AGENTS: len(self._agents.items),
                CACHE_PLANS: len(self._plans.items),
                CACHE_DAEMONSETS: len(self._daemonsets.items),
                CACHE_PODS: len(self._pods.items),
            }
        )
        return found

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

    def note_daemonset(self, body: Mapping[str, Any]) -> None:
        """A pre-pull DaemonSet as an API answer returned it (create, replace): into the
        cache now, unless the cache holds a newer version already."""
        view = status.project_daemonset(body)
        if view is None:
            return
        cached = self._daemonsets.items.get(f"{view.namespace}/{view.name}")
        if cached is not None:
            try:
                if int(cached.resource_version) >= int(view.resource_version):
                    return
            except ValueError:
                return
        self._daemonsets.store.apply("MODIFIED", body)

    async def prepull_daemonset(
        self, namespace: str, prepull_name: str
    ) -> status.DaemonSetView | None:
        """The Images-mode DaemonSet of a PrePull, from the cache."""
        await self._daemonsets.start(wait=_START_TIMEOUT)
        return self._daemonsets.items.get(
            f"{namespace}/{daemonset.build_resource_name(prepull_name)}"
        )

    async def prepull_pods(self, namespace: str, prepull_name: str) -> list[status.PodView]:
        """The pods of a PrePull's DaemonSet, from the cache: labelled for it and
        controlled by its DaemonSet (a tenant's pod wearing the label is not counted)."""
        await self._pods.start(wait=_START_TIMEOUT)
        owner = daemonset.build_resource_name(prepull_name)
        group = self._pods.store.group(build_group(namespace, prepull_name))
        return [view for view in group.values() if view.owner == owner]
