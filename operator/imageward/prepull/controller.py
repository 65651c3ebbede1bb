"""The PrePull controller's effects: resolve images, plan, put the plan where the nodes
get it, and report progress. Decisions come from the pure modules (`model`, `planner`,
`daemonset`, `plans`, `reports`, `workloads`, `status`); this module fetches and applies.

- Images mode: one DaemonSet in the PrePull's namespace, owned by it (its pods meet the
  `restricted` Pod Security level); progress from its pods.
- Layers mode: one plan ConfigMap in the operator's namespace (`layers`), served by the
  one node-agent DaemonSet there; nothing at all in the PrePull's namespace, so no
  privileged pod is ever created on a tenant's behalf. Progress from the agent pods'
  per-plan conditions (`reports`).

Status follows change, not time. Everything progress is computed from is in watch-fed
caches (`inventory`): Images mode's DaemonSets and pods, the agent pods' per-plan
conditions, nodes. Each PrePull has a `Tracker`; a cache update wakes only the trackers
it concerns (a pod of PrePull x wakes x; an agent pod's changed condition wakes the
PrePull of that plan), and the PrePull's follower (a Kopf daemon, `follow`) recomputes
its status from memory and writes it only when it differs, at most once per
`status_interval`. A timer is left only for what cannot be watched: a registry's tags
(re-resolved every `refreshInterval`) and the retry of a refused DaemonSet or plan.

What a reconcile found (its problems) is kept in the tracker's `Findings`, so status
written between two reconciles reports the same problems instead of forgetting them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from imageward import constants, errors, kube, metrics
from imageward.prepull import (
    daemonset,
    inventory,
    layers,
    model,
    nodes,
    planner,
    plans,
    reports,
    sealing,
    status,
    workloads,
)
from imageward.registry import auth as registry_auth
from imageward.registry import model as registry_model
from imageward.registry import reference as registry_reference
from imageward.runtime import Runtime

logger = logging.getLogger(__name__)

REASON_REFUSED = status.REASON_DAEMONSET_REFUSED
#: Most images resolved for one PrePull (spec.images and fromWorkloads together), the
#: heaviest first; fromWorkloads over a big namespace could otherwise name thousands.
MAX_RESOLVED_IMAGES = 1024
#: How soon a PrePull whose DaemonSet or plan was refused is tried again.
REFUSED_RETRY = datetime.timedelta(seconds=30)
#: How often plans whose PrePull is gone are looked for.
SWEEP_INTERVAL = 600.0


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedEntry:
    image: str
    weight: int
    reference: registry_model.ImageReference | None
    facts: registry_model.ImageFacts | None
    error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Findings:
    """What the last reconcile of one PrePull found, for the refreshes after it."""

    generation: int
    problems: tuple[status.Problem, ...] = ()
    """Keep the PrePull from being Ready (e.g. DaemonSetRefused, ResolveFailed)."""

    notes: tuple[status.Problem, ...] = ()
    """Make it Degraded only (e.g. CrossNamespaceNotAllowed)."""

    applied: bool = True
    """False when nothing reached the nodes (refused, invalid): retried sooner."""

    plan_hash: str | None = None
    """Layers mode: the plan the agents must report holding."""

    inputs: tuple[tuple[str, int], ...] | None = None
    """fromWorkloads: the (image, weight) pairs taken from workloads (None without)."""

    pinned: tuple[tuple[str, str], ...] = ()
    """Images mode: (pinned reference the pods pull, image as written), for failures."""


@dataclasses.dataclass(eq=False, slots=True)
class Tracker:
    """One PrePull as its status follower knows it (in memory; rebuilt after a restart by
    the resume handler's reconcile)."""

    namespace: str
    name: str
    uid: str
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    spec: model.PrePullSpec | None = None
    """The spec of the last reconcile; None before one, or when it was invalid."""

    findings: Findings | None = None
    resolved: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The last reconcile's own status fields (observedGeneration, images, plan,
    lastResolved; conditions too when the spec is invalid)."""

    inputs_changed: bool = False
    """A workload or namespace changed since: compare, and reconcile if the images did."""

    written: tuple[str, dict[str, Any]] | None = None
    """(resourceVersion, status) after our last write, until the watch shows it."""

    last_write: float = float("-inf")
    """Event-loop time of the last status write."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def plan_key(self) -> str:
        return plans.build_prepull_key(self.namespace, self.name, self.uid)

    def current_status(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """The PrePull's status as stored: the body's, or what we last wrote when the
        body (fed by Kopf's watch) has not caught up with our write yet."""
        seen: Mapping[str, Any] = body.get("status") or {}
        if self.written is None:
            return seen
        version, status_written = self.written
        if evaluate_caught_up(
            str((body.get("metadata") or {}).get("resourceVersion") or ""), version
        ):
            self.written = None
            return seen
        return status_written


def evaluate_caught_up(seen: str, written: str) -> bool:
    """Whether a body at resourceVersion `seen` includes a write that produced
    `written`. resourceVersions are opaque; etcd's are integers, compared as such."""
    if seen == written:
        return True
    try:
        return int(seen) > int(written)
    except ValueError:
        return False


class PrePullState:
    """The PrePull controller's own state next to the shared `Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.inventory = inventory.Inventory(
            runtime.kube, runtime.settings, on_update=self._on_cache_update
        )
        self.agent_key = layers.AgentKey(
            runtime.kube, runtime.settings.namespace, runtime.settings.prepull.agent_key_secret
        )
        self._sweeper: asyncio.Task[None] | None = None
        self.trackers: dict[tuple[str, str], Tracker] = {}
        self._by_group: dict[tuple[str, str], Tracker] = {}
        self._by_daemonset: dict[tuple[str, str], Tracker] = {}
        self._by_plan: dict[str, Tracker] = {}

    # -- trackers ------------------------------------------------------------------------

    def track(self, body: Mapping[str, Any]) -> Tracker:
        """The tracker of this PrePull, made on first use (a new uid makes a new one)."""
        metadata = body["metadata"]
        namespace, name, uid = metadata["namespace"], metadata["name"], metadata.get("uid", "")
        tracker = self.trackers.get((namespace, name))
        if tracker is not None and tracker.uid == uid:
            return tracker
        if tracker is not None:
            self.untrack(tracker)
        tracker = Tracker(namespace, name, uid)
        self.trackers[tracker.key] = tracker
        self._by_group[inventory.build_group(namespace, name)] = tracker
        self._by_daemonset[(namespace, daemonset.build_resource_name(name))] = tracker
        self._by_plan[tracker.plan_key] = tracker
        return tracker

    def untrack(self, tracker: Tracker) -> None:
        if self.trackers.get(tracker.key) is not tracker:
            return
        del self.trackers[tracker.key]
        for index, key in (
            (self._by_group, inventory.build_group(tracker.namespace, tracker.name)),
            (self._by_daemonset, (tracker.namespace, daemonset.build_resource_name(tracker.name))),
        ):
            if index.get(key) is tracker:
                del index[key]
        if self._by_plan.get(tracker.plan_key) is tracker:
            del self._by_plan[tracker.plan_key]
        tracker.wake.set()  # a follower waiting on it looks again (and finds it gone)

    def _on_cache_update(self, cache: str, key: str, before: Any, after: Any) -> None:
        """Wake the trackers a cached projection concerns (nothing else happens here)."""
        for tracker in self.concerned(cache, before, after):
            tracker.wake.set()

    def concerned(self, cache: str, before: Any, after: Any) -> list[Tracker]:
        """Which trackers a change of one cached projection concerns (fromWorkloads ones
        are told their inputs may have changed)."""
        view = after if after is not None else before
        if cache == inventory.CACHE_PODS:
            found = self._by_group.get((view.namespace, view.prepull))
            return [found] if found is not None else []
        if cache == inventory.CACHE_DAEMONSETS:
            found = self._by_daemonset.get((view.namespace, view.name))
            return [found] if found is not None else []
        if cache == inventory.CACHE_AGENTS:
            if (
                before is None
                or after is None
                or before.node != after.node
                or before.deleting != after.deleting
            ):
                return self._layers_trackers()  # which nodes are served changed
            kinds = {
                kind
                for kind in set(before.reports) | set(after.reports)
                if before.reports.get(kind) != after.reports.get(kind)
            }
            keys = {kind.removeprefix(reports.CONDITION_PREFIX) for kind in kinds}
            return [self._by_plan[key] for key in keys if key in self._by_plan]
        if cache == inventory.CACHE_NODES:
            return self._layers_trackers()
        if cache in (inventory.CACHE_WORKLOADS, inventory.CACHE_NAMESPACES):
            concerned = []
            for tracker in self.trackers.values():
                if tracker.spec is not None and tracker.spec.from_workloads is not None:
                    tracker.inputs_changed = True
                    concerned.append(tracker)
            return concerned
        return []

    def _layers_trackers(self) -> list[Tracker]:
        return [
            t
            for t in self.trackers.values()
            if t.spec is not None and t.spec.mode is model.Mode.LAYERS
        ]

    # -- plan sweeping -------------------------------------------------------------------

    def start_sweeping(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="prepull plan sweep")

    async def _sweep_forever(self) -> None:
        while True:
            try:
                records = await self.inventory.plans()
                await layers.sweep_plans(self.runtime.kube, self.settings.namespace, records)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # logged and tried again: the sweep is a safety net
                logger.warning("sweeping plans of deleted PrePulls failed: %s", e)
            await asyncio.sleep(SWEEP_INTERVAL)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.inventory.close()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _platform(spec: model.PrePullSpec, default: str) -> registry_model.Platform:
    selected = dict(spec.node_selector)
    os_name, _, arch = default.partition("/")
    return registry_model.Platform(
        selected.get("kubernetes.io/os", os_name), selected.get("kubernetes.io/arch", arch)
    )


async def _workload_images(
    state: PrePullState, namespace: str, spec: model.PrePullSpec
) -> tuple[list[tuple[str, int]], list[status.Problem]]:
    """The images of the workloads fromWorkloads selects (from the watch-fed cache), and
    notes on what was not honoured."""
    source = spec.from_workloads
    if source is None:
        return [], []
    config = state.settings
    honoured = source.namespace_selector is not None and workloads.evaluate_cross_namespace(
        namespace, operator_namespace=config.namespace, allowed=config.prepull.cross_namespace
    )
    scope = workloads.evaluate_namespace_scope(
        namespace,
        source,
        operator_namespace=config.namespace,
        allowed=config.prepull.cross_namespace,
        namespace_labels=await state.inventory.namespace_labels() if honoured else None,
    )
    notes = []
    if scope.note:
        notes.append(status.Problem(status.REASON_CROSS_NAMESPACE, scope.note))
    views, full = await state.inventory.workloads(source.kinds)
    if full:
        notes.append(
            status.Problem(
                status.REASON_RESOLVE_FAILED,
                f"the operator's cache holds at most {config.prepull.cache_max_objects} "
                f"objects per kind; some {', '.join(full)}s were left out "
                "(IMAGEWARD_PREPULL_CACHE_MAX_OBJECTS)",
            )
        )
    wanted = set(scope.namespaces)
    # DaemonSets weigh by the node count; no other kind needs the nodes' watch.
    node_count = (
        len(await state.inventory.nodes()) if model.WorkloadKind.DAEMON_SET in source.kinds else 0
    )
    images = workloads.build_images_from_views(
        (view for view in views if view.namespace in wanted),
        source.kinds,
        label_selector=source.label_selector,
        node_count=node_count,
    )
    return images, notes


async def _read_pull_secrets(
    state: PrePullState, namespace: str, names: Sequence[str]
) -> tuple[list[tuple[str, registry_auth.DockerConfig]], list[str]]:
    """The PrePull's pull secrets (of its own namespace only), and those missing or unusable."""
    found: list[tuple[str, registry_auth.DockerConfig]] = []
    missing: list[str] = []
    for name in names:
        secret = await state.runtime.kube.read_secret(namespace, name)
        if secret is None:
            missing.append(name)
            continue
        try:
            found.append((name, registry_auth.parse_pull_secret(secret)))
        except errors.ImagewardError as e:
            logger.warning("pull secret %s/%s is unusable: %s", namespace, name, e)
            missing.append(name)
    return found, missing


async def resolve_images(
    state: PrePullState,
    namespace: str,
    spec: model.PrePullSpec,
    secrets: Sequence[tuple[str, registry_auth.DockerConfig]],
) -> tuple[list[ResolvedEntry], list[status.Problem], list[tuple[str, int]]]:
    """The resolved images, notes on what was not honoured, and the (image, weight)
    pairs fromWorkloads contributed."""
    from_workloads, notes = await _workload_images(state, namespace, spec)
    weights = status.build_image_weights(
        [(entry.image, entry.weight) for entry in spec.images], from_workloads
    )
    if len(weights) > MAX_RESOLVED_IMAGES:
        notes.append(
            status.Problem(
                status.REASON_RESOLVE_FAILED,
                f"{len(weights)} images named; only the first {len(spec.images)} of "
                f"spec.images and the heaviest of fromWorkloads, {MAX_RESOLVED_IMAGES} in "
                "all, are pre-pulled",
            )
        )
        weights = weights[:MAX_RESOLVED_IMAGES]
    credentials = [config for _, config in secrets] + list(state.runtime.operator_credentials)
    platform = _platform(spec, state.settings.prepull.default_platform)
    source = state.runtime.source

    async def one(image: str, weight: int) -> ResolvedEntry:
        try:
            reference = registry_reference.parse_reference(image)
        except errors.InvalidReferenceError as e:
            return ResolvedEntry(image, weight, None, None, str(e))
        try:
            facts = await source.client.fetch_facts(
                reference, platform=platform, credentials=credentials
            )
        except errors.ImagewardError as e:
            return ResolvedEntry(image, weight, reference, None, str(e))
        if not facts.images:
            return ResolvedEntry(image, weight, reference, None, f"{image} has no {platform} image")
        return ResolvedEntry(image, weight, reference, facts)

    entries = list(await asyncio.gather(*(one(image, weight) for image, weight in weights)))
    return entries, notes, from_workloads


def build_plan_images(entries: Sequence[ResolvedEntry]) -> list[planner.PlanImage]:
    return [
        planner.PlanImage(
            image=entry.image,
            digest=entry.facts.digest,
            layers=entry.facts.images[0].layers,
            weight=float(entry.weight),
            config=entry.facts.images[0].config_digest,
        )
        for entry in entries
        if entry.facts is not None
    ]


def build_plan(entries: Sequence[ResolvedEntry], spec: model.PrePullSpec) -> planner.Plan:
    images = build_plan_images(entries)
    budget = spec.layers.budget_per_node.bytes if spec.layers.budget_per_node else None
    return planner.build_plan(images, budget=budget, min_share=spec.layers.min_share)


_OBJECT_HASH = "imageward.io/object-hash"


def _with_hash(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body with a hash of itself, so an unchanged object is never rewritten."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    metadata = dict(body["metadata"])
    metadata["annotations"] = {**(metadata.get("annotations") or {}), _OBJECT_HASH: digest}
    return {**body, "metadata": metadata}


async def _apply_daemonset(
    client: kube.Kube, body: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """Create, or replace when what we would write differs from what is stored."""
    body = _with_hash(body)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    where = f"DaemonSet {namespace}/{name}"
    current = await client.call(
        f"get {where}", client.apps.read_namespaced_daemon_set, name, namespace
    )
    if current is None:
        created: dict[str, Any] = await client.call(
            f"create {where}", client.apps.create_namespaced_daemon_set, namespace, body
        )
        return created, "created"
    if (current["metadata"].get("annotations") or {}).get(_OBJECT_HASH) == body["metadata"][
        "annotations"
    ][_OBJECT_HASH]:
        return dict(current), "unchanged"
    replacement = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
    }
    replaced: dict[str, Any] = await client.call(
        f"replace {where}",
        client.apps.replace_namespaced_daemon_set,
        name,
        namespace,
        replacement,
    )
    return replaced, "replaced"


def _refused(error: kube.KubeError) -> bool:
    # Refused for good (an admission policy, a quota, validation): say so in status
    # instead of retrying blindly. Anything else (5xx, conflicts) Kopf retries.
    return error.status in (400, 403, 422)


async def _apply_images_mode(
    state: PrePullState,
    body: Mapping[str, Any],
    spec: model.PrePullSpec,
    resolved: Sequence[model.ResolvedImage],
) -> tuple[list[status.Problem], bool]:
    """The DaemonSet in the PrePull's namespace; (problems, applied)."""
    metadata = body["metadata"]
    name, namespace, uid = metadata["name"], metadata["namespace"], metadata["uid"]
    client = state.runtime.kube
    # A PrePull that was in Layers mode leaves its plan behind otherwise.
    key = plans.build_prepull_key(namespace, name, uid)
    if key in await state.inventory.plans():
        await layers.delete_plan(client, state.settings.namespace, key)
    if not resolved:
        return [], False
    prepull = state.settings.prepull
    ds_body = daemonset.build_daemonset(
        name,
        namespace,
        uid,
        spec,
        resolved,
        helper_image=prepull.helper_image,
        pause_image=prepull.pause_image,
    )
    try:
        stored, action = await _apply_daemonset(client, ds_body)
    except kube.KubeError as e:
        if not _refused(e):
            raise
        return [status.Problem(REASON_REFUSED, str(e))], False
    # What we wrote is what the watch will bring: the cache has it at once (status
    # computed right after this reconcile then knows the new template).
    state.inventory.note_daemonset(stored)
    if action != "unchanged":
        _event(
            state,
            body,
            "DaemonSetCreated" if action == "created" else "RolloutStarted",
            f"{action} DaemonSet {ds_body['metadata']['name']} for {len(resolved)} image(s)",
            "Normal",
        )
    problems = []
    if spec.pull_method is model.PullMethod.IMAGE_VOLUME and (
        daemonset.evaluate_missing_image_volumes(stored, resolved)
    ):
        problems.append(
            status.Problem(
                status.REASON_IMAGE_VOLUME_UNSUPPORTED,
                "the apiserver dropped the image volumes (ImageVolume feature off); "
                "use pullMethod InitContainer",
            )
        )
    return problems, True


async def _apply_layers_mode(
    state: PrePullState,
    body: Mapping[str, Any],
    spec: model.PrePullSpec,
    entries: Sequence[ResolvedEntry],
    plan: planner.Plan,
    secrets: Sequence[tuple[str, registry_auth.DockerConfig]],
    missing_secrets: Sequence[str],
) -> tuple[list[status.Problem], str | None]:
    """The plan ConfigMap in the operator's namespace; (problems, plan hash written)."""
    metadata = body["metadata"]
    name, namespace, uid = metadata["name"], metadata["namespace"], metadata["uid"]
    config = state.settings
    client = state.runtime.kube
    key = plans.build_prepull_key(namespace, name, uid)
    # Images mode (or an earlier version of Layers mode) left a DaemonSet here.
    if await layers.delete_own_daemonset(client, namespace, name, uid):
        _event(
            state, body, "DaemonSetDeleted", "Layers mode runs no pod in this namespace", "Normal"
        )
    if not config.prepull.agent_enabled:
        return [
            status.Problem(
                status.REASON_AGENT_DISABLED,
                "Layers mode needs the node agent, which this installation leaves out "
                "(chart value agent.enabled, IMAGEWARD_AGENT_ENABLED); use mode Images",
            )
        ], None
    others = [r for k, r in (await state.inventory.plans()).items() if k != key]
    same_namespace = sum(1 for r in others if r.namespace == namespace)
    if len(others) >= config.prepull.max_layers_prepulls or (
        same_namespace >= config.prepull.max_layers_prepulls_per_namespace
    ):
        return [
            status.Problem(
                status.REASON_TOO_MANY_PLANS,
                f"{len(others)} Layers-mode PrePulls are served already ({same_namespace} in "
                f"{namespace}), the most this installation serves is "
                f"{config.prepull.max_layers_prepulls} "
                f"({config.prepull.max_layers_prepulls_per_namespace} per namespace; "
                "IMAGEWARD_PREPULL_MAX_LAYERS, IMAGEWARD_PREPULL_MAX_LAYERS_PER_NAMESPACE)",
            )
        ], None
    references = {e.image: e.reference for e in entries if e.reference is not None and e.facts}
    document = plans.build_plan_document(
        name,
        namespace,
        uid,
        plan,
        references,
        pull_secrets=spec.image_pull_secrets,
        missing_pull_secrets=missing_secrets,
        node_selector=nodes.build_effective_selector(spec.node_selector),
        tolerations=spec.tolerations,
        images=build_plan_images(entries),
    )
    try:
        plan_text = plans.build_plan_text(document)
    except plans.PlanTooLargeError as e:
        return [status.Problem(status.REASON_PLAN_TOO_LARGE, str(e))], None
    held = sum(record.size for record in others)
    if held + len(plan_text) > config.prepull.max_plan_bytes_total:
        return [
            status.Problem(
                status.REASON_TOO_MANY_PLANS,
                f"this plan ({len(plan_text)} bytes) and the {len(others)} served already "
                f"({held} bytes) are over the {config.prepull.max_plan_bytes_total} bytes "
                "every node agent keeps (IMAGEWARD_PREPULL_MAX_PLAN_BYTES_TOTAL); plan fewer "
                "layers (layers.budgetPerNode, layers.minShare)",
            )
        ], None
    sources = {
        (source["registry"], source["repository"])
        for layer in document["layers"]
        for source in layer["sources"]
    }
    credentials = plans.build_credentials_document(secrets, sources)
    try:
        action = await layers.apply_plan(
            client,
            namespace=config.namespace,
            document=document,
            plan_text=plan_text,
            credentials=credentials,
            agent_key=state.agent_key,
        )
    except kube.KubeError as e:
        if not _refused(e):
            raise
        return [status.Problem(status.REASON_PLAN_REFUSED, str(e))], None
    except sealing.SealError as e:
        return [status.Problem(status.REASON_PLAN_REFUSED, str(e))], None
    if action != "unchanged":
        _event(
            state,
            body,
            "PlanWritten" if action == "created" else "RolloutStarted",
            f"{action} plan {config.namespace}/{plans.build_plan_name(key)}: "
            f"{len(plan.layers)} layer(s), {plan.bytes} bytes per node, for the node agent",
            "Normal",
        )
    return [], str(document["hash"])


async def reconcile(
    state: PrePullState, body: Mapping[str, Any], *, previous_status: Mapping[str, Any]
) -> tuple[dict[str, Any], Findings]:
    """Resolve, plan and apply; returns the status fields of its own (observedGeneration,
    images, plan, lastResolved; the conditions too for an invalid spec) and what was
    found. Progress (nodes, failures, conditions) is `node_progress`'s, from the caches."""
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    generation = int(metadata.get("generation") or 0)
    previous_conditions = list(previous_status.get("conditions") or [])
    try:
        spec = model.parse_prepull(body)
    except model.PrePullError as e:
        findings = Findings(
            generation, problems=(status.Problem(status.REASON_INVALID_SPEC, str(e)),)
        )
        return {
            "observedGeneration": generation,
            "conditions": status.build_conditions(
                None,
                generation=generation,
                now=_now(),
                problems=findings.problems,
                previous=previous_conditions,
            ),
        }, findings

    secrets, missing_secrets = await _read_pull_secrets(state, namespace, spec.image_pull_secrets)
    entries, notes, from_workloads = await resolve_images(state, namespace, spec, secrets)
    problems = [
        status.Problem(status.REASON_RESOLVE_FAILED, entry.error)
        for entry in entries
        if entry.error
    ]
    try:
        plan = build_plan(entries, spec)
    except planner.PlanError as e:
        problems.append(status.Problem(status.REASON_PLAN_FAILED, str(e)))
        plan = planner.build_plan([], budget=None)
    resolved = [
        model.ResolvedImage(entry.image, entry.facts.digest)
        for entry in entries
        if entry.facts is not None
    ]
    plan_hash: str | None = None
    if spec.mode is model.Mode.LAYERS:
        found, plan_hash = await _apply_layers_mode(
            state, body, spec, entries, plan, secrets, missing_secrets
        )
        applied = plan_hash is not None
    else:
        found, applied = await _apply_images_mode(state, body, spec, resolved)
    problems.extend(found)
    findings = Findings(
        generation,
        problems=tuple(problems),
        notes=tuple(notes),
        applied=applied,
        plan_hash=plan_hash,
        inputs=tuple(from_workloads) if spec.from_workloads is not None else None,
        pinned=tuple(
            (daemonset.build_pinned_reference(r.image, r.digest), r.image) for r in resolved
        ),
    )

    images_status = [
        {
            "image": entry.image,
            "weight": entry.weight,
            **(
                {
                    "digest": entry.facts.digest,
                    "bytes": entry.facts.images[0].compressed_size,
                    "layers": len(entry.facts.images[0].layers),
                }
                if entry.facts is not None
                else {"error": entry.error or "unresolved"}
            ),
        }
        for entry in entries
    ]
    plan_status = {
        "layers": len(plan.layers),
        "bytes": plan.bytes,
        "savedBytes": plan.saved_bytes,
        "totalBytes": plan.total_bytes,
    }
    metrics.prepull_planned_bytes.labels(namespace=namespace, prepull=name).set(plan.bytes)
    metrics.prepull_saved_bytes.labels(namespace=namespace, prepull=name).set(plan.saved_bytes)
    result: dict[str, Any] = {
        "observedGeneration": generation,
        "images": images_status[: model.MAX_STATUS_IMAGES],
        "plan": plan_status,
        "lastResolved": _now(),
    }
    said = "; ".join(p.message for p in (*problems, *notes))
    ready_before: Mapping[str, Any] = next(
        (c for c in previous_conditions if c.get("type") == "Ready"), {}
    )
    degraded_before: Mapping[str, Any] = next(
        (c for c in previous_conditions if c.get("type") == "Degraded"), {}
    )
    if said and said not in (ready_before.get("message"), degraded_before.get("message")):
        first = (problems or notes)[0]
        _event(state, body, first.reason, said, "Warning")
    return result, findings


async def node_progress(
    state: PrePullState,
    body: Mapping[str, Any],
    spec: model.PrePullSpec,
    findings: Findings,
    previous_conditions: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Nodes desired/ready/failed and the conditions: from the DaemonSet's pods (Images
    mode) or the node agents' reports (Layers mode), with the findings of the last
    reconcile."""
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    problems = list(findings.problems)
    pending = (
        "the DaemonSet has not been created yet"
        if not findings.applied
        else "the DaemonSet controller has not counted the nodes yet"
    )
    if spec.mode is model.Mode.LAYERS:
        pending = "the plan has not been written yet"
        nodes_status = await _layers_progress(state, body, spec, findings, problems)
    else:
        nodes_status = await _images_progress(state, name, namespace, dict(findings.pinned))
    conditions = status.build_conditions(
        nodes_status,
        generation=findings.generation,
        now=_now(),
        problems=problems,
        notes=findings.notes,
        previous=previous_conditions,
        pending=pending,
    )
    if nodes_status is None:
        return {"conditions": conditions}
    for state_name, value in (
        ("desired", nodes_status.desired),
        ("ready", nodes_status.ready),
        ("failed", nodes_status.failed),
    ):
        metrics.prepull_nodes.labels(namespace=namespace, prepull=name, state=state_name).set(value)
    return {**status.build_status_fields(nodes_status), "conditions": conditions}


async def _images_progress(
    state: PrePullState, name: str, namespace: str, pinned: Mapping[str, str]
) -> status.NodeStatus | None:
    """From the watch-fed cache of pre-pull DaemonSets and pods: no API call."""
    stored = await state.inventory.prepull_daemonset(namespace, name)
    if stored is None or not stored.counted:
        return None
    pods = await state.inventory.prepull_pods(namespace, name)
    return status.build_node_status_from_views(
        pods, stored.desired, current_hash=stored.template_hash, images=pinned
    )


async def _layers_progress(
    state: PrePullState,
    body: Mapping[str, Any],
    spec: model.PrePullSpec,
    findings: Findings,
    problems: list[status.Problem],
) -> status.NodeStatus | None:
    if findings.plan_hash is None:
        return None
    metadata = body["metadata"]
    key = plans.build_prepull_key(metadata["namespace"], metadata["name"], metadata["uid"])
    agents = await state.inventory.agent_pods()
    nodes_status = reports.build_layers_node_status(
        agents,
        await state.inventory.nodes(),
        key=key,
        plan_hash=findings.plan_hash,
        node_selector=nodes.build_effective_selector(spec.node_selector),
        tolerations=spec.tolerations,
    )
    missing = reports.evaluate_agents_missing(
        nodes_status,
        namespace=state.settings.namespace,
        selector=state.settings.prepull.agent_selector,
    )
    if missing is not None:
        problems.append(missing)
    return nodes_status


def evaluate_refresh_due(
    spec: model.PrePullSpec,
    findings: Findings | None,
    last_resolved: str | None,
    generation: int,
) -> bool:
    """Whether the PrePull must reconcile (resolve tags, re-apply) instead of only
    reporting progress: no findings (the operator restarted), another generation, the
    refresh interval passed, or the last attempt was refused (tried again every
    REFUSED_RETRY, so a fixed policy or quota takes effect without waiting an hour)."""
    delay = evaluate_refresh_delay(spec, findings, last_resolved, generation, now=_utcnow())
    return delay is not None and delay <= 0


def evaluate_refresh_delay(
    spec: model.PrePullSpec,
    findings: Findings | None,
    last_resolved: str | None,
    generation: int,
    *,
    now: datetime.datetime,
) -> float | None:
    """Seconds until the next reconcile is due (0 or less: now); None: not until the
    spec changes (an invalid spec)."""
    if findings is None or findings.generation != generation:
        return 0.0
    interval = spec.refresh_interval
    if not findings.applied:
        if any(p.reason == status.REASON_INVALID_SPEC for p in findings.problems):
            return None
        interval = REFUSED_RETRY
    then = _parse_time(last_resolved)
    if then is None:
        return 0.0
    return (then + interval - now).total_seconds()


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


# -- following: status from the caches, written when it differs ---------------------------

#: Progress fields of status (the rest comes from the last reconcile).
PROGRESS_FIELDS = ("nodes", "readyText", "failures", "conditions")
#: How long a new follower waits for the create / resume handler's reconcile before it
#: reconciles itself (a PrePull whose paused annotation was just removed has none).
_FIRST_RECONCILE_WAIT = 5.0
_RETRY_FIRST, _RETRY_MAX = 1.0, 60.0


def evaluate_status_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields of `wanted` that differ from `current` (a merge patch;
    empty when nothing would change)."""
    return {key: value for key, value in wanted.items() if current.get(key) != value}


async def _reconcile_into(state: PrePullState, tracker: Tracker, body: Mapping[str, Any]) -> None:
    previous = tracker.current_status(body)
    fields, findings = await reconcile(state, body, previous_status=previous)
    try:
        tracker.spec = model.parse_prepull(body)
    except model.PrePullError:
        tracker.spec = None
    tracker.findings = findings
    tracker.inputs_changed = False
    own = ("observedGeneration", "images", "plan", "lastResolved")
    tracker.resolved = {
        k: v for k, v in fields.items() if k in own or (tracker.spec is None and k == "conditions")
    }


async def publish(state: PrePullState, tracker: Tracker, body: Mapping[str, Any]) -> bool:
    """Compute the PrePull's status from the caches and the last reconcile; write what
    differs from what is stored. True when something was written."""
    if tracker.findings is None:
        return False
    current = tracker.current_status(body)
    wanted = dict(tracker.resolved)
    if tracker.spec is not None:
        wanted.update(
            await node_progress(
                state, body, tracker.spec, tracker.findings, current.get("conditions") or []
            )
        )
    patch = evaluate_status_patch(current, wanted)
    if not patch:
        return False
    answer = await state.runtime.kube.patch_namespaced_custom_status(
        constants.GROUP,
        constants.VERSION,
        constants.PREPULL_PLURAL,
        tracker.namespace,
        tracker.name,
        {"status": patch},
    )
    tracker.last_write = asyncio.get_running_loop().time()
    metrics.prepull_status_writes.inc()
    if answer is None:  # the PrePull is gone
        return False
    version = str((answer.get("metadata") or {}).get("resourceVersion") or "")
    tracker.written = (version, dict(answer.get("status") or {**current, **patch}))
    return True


async def changed(state: PrePullState, body: Mapping[str, Any]) -> None:
    """The create / update / resume handlers: reconcile, then write status."""
    tracker = state.track(body)
    async with tracker.lock:
        await _reconcile_into(state, tracker, body)
        await publish(state, tracker, body)
    tracker.wake.set()  # the follower plans its next refresh from these findings


async def _sleep(
    stop: asyncio.Event, seconds: float | None, also: asyncio.Event | None = None
) -> None:
    """Sleep `seconds` (None: forever) unless `stop` (or `also`) is set first."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if also is not None:
        waiters.append(asyncio.ensure_future(also.wait()))
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def follow(state: PrePullState, body: Mapping[str, Any], *, stop: asyncio.Event) -> None:
    """Keep one PrePull's status current until `stop` (a Kopf daemon per PrePull; `body`
    is Kopf's live view of the object).

    Sleeps until a cache update concerning the PrePull wakes it, or until the next tag
    refresh (or refused retry) is due; then waits `status_settle` for changes arriving
    together, and at least `status_interval` after its last write; then recomputes and
    writes what differs. Nothing is read from the API server to do so.
    """
    config = state.settings.prepull
    loop = asyncio.get_running_loop()
    tracker = state.track(body)
    backoff = _RETRY_FIRST
    handlers_first = loop.time() + _FIRST_RECONCILE_WAIT
    try:
        while not stop.is_set():
            if state.trackers.get(tracker.key) is not tracker:
                tracker = state.track(body)  # forgotten (deleted and made again)
            if tracker.findings is None and loop.time() < handlers_first:
                # The create / resume handler reconciles first; if none has (a PrePull
                # no longer paused), this follower does.
                await _sleep(stop, handlers_first - loop.time(), tracker.wake)
                tracker.wake.clear()
                continue
            delay = _next_refresh(tracker, body)
            if delay is None or delay > 0:
                await _sleep(stop, delay, tracker.wake)
            if stop.is_set():
                return
            tracker.wake.clear()
            pause = max(
                config.status_settle, tracker.last_write + config.status_interval - loop.time()
            )
            if pause > 0:
                await _sleep(stop, pause)
                if stop.is_set():
                    return
            try:
                async with tracker.lock:
                    await _step(state, tracker, body)
                backoff = _RETRY_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as e:  # logged and tried again with a backoff
                logger.warning(
                    "PrePull %s/%s: status refresh failed (again in %.0fs): %s",
                    tracker.namespace,
                    tracker.name,
                    backoff,
                    e,
                )
                await _sleep(stop, backoff)
                backoff = min(backoff * 2, _RETRY_MAX)
                tracker.wake.set()
    finally:
        state.untrack(tracker)


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


def _next_refresh(tracker: Tracker, body: Mapping[str, Any]) -> float | None:
    """Seconds until this follower must reconcile (None: not by itself)."""
    findings = tracker.findings
    if findings is None:
        return 0.0  # nobody reconciled: the follower does
    if findings.generation != _generation(body):
        return None  # the update handler reconciles the new spec
    if tracker.spec is None:
        return None  # an invalid spec stays invalid until it changes
    last = tracker.resolved.get("lastResolved") or tracker.current_status(body).get("lastResolved")
    return evaluate_refresh_delay(tracker.spec, findings, last, findings.generation, now=_utcnow())


async def _step(state: PrePullState, tracker: Tracker, body: Mapping[str, Any]) -> None:
    delay = _next_refresh(tracker, body)
    if delay is not None and delay <= 0:
        await _reconcile_into(state, tracker, body)
    elif tracker.inputs_changed and tracker.spec is not None:
        tracker.inputs_changed = False
        images, _ = await _workload_images(state, tracker.namespace, tracker.spec)
        before = tracker.findings.inputs if tracker.findings is not None else None
        if tuple(images) != before:
            logger.info(
                "PrePull %s/%s: the images of its workloads changed; resolving again",
                tracker.namespace,
                tracker.name,
            )
            await _reconcile_into(state, tracker, body)
    await publish(state, tracker, body)


async def forget(state: PrePullState, namespace: str, name: str, uid: str | None) -> None:
    """A PrePull is gone: its tracker, its plan (if any) and its metrics go too."""
    tracker = state.trackers.get((namespace, name))
    if tracker is not None and (uid is None or tracker.uid == uid):
        state.untrack(tracker)
    forget_metrics(namespace, name)
    if uid:
        key = plans.build_prepull_key(namespace, name, uid)
        if await layers.delete_plan(state.runtime.kube, state.settings.namespace, key):
            logger.info("deleted plan %s of deleted PrePull %s/%s", key, namespace, name)


def _event(
    state: PrePullState, body: Mapping[str, Any], reason: str, message: str, type_: str
) -> None:
    metadata = body["metadata"]
    state.runtime.post_event(
        namespace=metadata["namespace"],
        involved={
            "apiVersion": body.get("apiVersion", "imageward.io/v1alpha1"),
            "kind": "PrePull",
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata.get("uid", ""),
        },
        reason=reason,
        message=message,
        type_=type_,
    )


def forget_metrics(namespace: str, name: str) -> None:
    for gauge in (metrics.prepull_planned_bytes, metrics.prepull_saved_bytes):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    for state_name in ("desired", "ready", "failed"):
        with contextlib.suppress(KeyError):
            metrics.prepull_nodes.remove(namespace, name, state_name)


def refresh_due(spec_refresh: datetime.timedelta, last_resolved: str | None) -> bool:
    then = _parse_time(last_resolved)
    return then is None or _utcnow() - then >= spec_refresh
