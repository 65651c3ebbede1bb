"""The PrePull controller's effects: resolve images, plan, put the plan where the nodes
get it, and report progress. Decisions come from the pure modules (`model`, `planner`,
`daemonset`, `plans`, `reports`, `workloads`, `status`); this module fetches and applies.

- Images mode: one DaemonSet in the PrePull's namespace, owned by it (its pods meet the
  `restricted` Pod Security level); progress from its pods.
- Layers mode: one plan ConfigMap in the operator's namespace (`layers`), served by the
  one node-agent DaemonSet there; nothing at all in the PrePull's namespace, so no
  privileged pod is ever created on a tenant's behalf. Progress from the agent pods'
  per-plan conditions (`reports`).

What a reconcile found (its problems) is kept in a `Findings`, which the handlers keep in
Kopf's per-object memo, so the progress refreshes between two reconciles report the same
problems instead of forgetting them.
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

from imageward import errors, kube, metrics
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


class PrePullState:
    """The PrePull controller's own state next to the shared `Runtime`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.inventory = inventory.Inventory(runtime.kube, runtime.settings)
        self.agent_key = layers.AgentKey(
            runtime.kube, runtime.settings.namespace, runtime.settings.prepull.agent_key_secret
        )
        self._sweeper: asyncio.Task[None] | None = None

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
    node_count = len(await state.inventory.nodes())
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
) -> tuple[list[ResolvedEntry], list[status.Problem]]:
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
    return entries, notes


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
    """Resolve, plan and apply; returns the status to write and what was found."""
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
    entries, notes = await resolve_images(state, namespace, spec, secrets)
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
    progress = await node_progress(
        state,
        body,
        spec,
        images_status,
        findings,
        previous_conditions,
    )
    result.update(progress)
    return result, findings


async def node_progress(
    state: PrePullState,
    body: Mapping[str, Any],
    spec: model.PrePullSpec,
    images_status: Sequence[Mapping[str, Any]],
    findings: Findings,
    previous_conditions: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Nodes desired/ready/failed and the conditions: from the DaemonSet's pods (Images
    mode) or the node agents' reports (Layers mode), with the findings of the last
    reconcile."""
    metadata = body["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    problems = list(findings.problems)
    if spec.mode is model.Mode.LAYERS:
        pending = "the plan has not been written yet"
        nodes_status = await _layers_progress(state, body, spec, findings, problems)
    else:
        nodes_status, pending = await _images_progress(state, name, namespace, images_status)
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
    state: PrePullState, name: str, namespace: str, images_status: Sequence[Mapping[str, Any]]
) -> tuple[status.NodeStatus | None, str]:
    """The nodes' progress; None and why while there is none to read."""
    client = state.runtime.kube
    resource = daemonset.build_resource_name(name)
    stored = await client.call(
        f"get DaemonSet {namespace}/{resource}",
        client.apps.read_namespaced_daemon_set,
        resource,
        namespace,
    )
    if stored is None:
        return None, "the DaemonSet has not been created yet"
    uncounted = status.evaluate_daemonset_pending(stored)
    if uncounted is not None:
        return None, uncounted
    selector = ",".join(f"{k}={v}" for k, v in daemonset.build_selector(name).items())
    pods = await client.call(
        f"list pods of {namespace}/{resource}",
        client.core.list_namespaced_pod,
        namespace,
        label_selector=selector,
    )
    desired = int((stored.get("status") or {}).get("desiredNumberScheduled") or 0)
    current_hash = (
        (stored["spec"]["template"].get("metadata") or {}).get("annotations") or {}
    ).get(daemonset.ANNOTATION_DIGEST_HASH)
    pinned_to_image = {
        daemonset.build_pinned_reference(i["image"], i["digest"]): i["image"]
        for i in images_status
        if i.get("digest")
    }
    nodes_status = status.build_node_status(
        (pods or {}).get("items") or [], desired, current_hash=current_hash, images=pinned_to_image
    )
    return nodes_status, ""


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
    """Whether a progress tick must reconcile (resolve tags, re-apply) instead of only
    reading progress: no findings (the operator restarted), another generation, the
    refresh interval passed, or the last attempt was refused (tried again every
    REFUSED_RETRY, so a fixed policy or quota takes effect without waiting an hour)."""
    if findings is None or findings.generation != generation:
        return True
    if not findings.applied and not any(
        p.reason == status.REASON_INVALID_SPEC for p in findings.problems
    ):
        return refresh_due(REFUSED_RETRY, last_resolved)
    return refresh_due(spec.refresh_interval, last_resolved)


async def forget(state: PrePullState, namespace: str, name: str, uid: str | None) -> None:
    """A PrePull is gone: its plan (if any) and its metrics go too."""
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
    if not last_resolved:
        return True
    try:
        then = datetime.datetime.strptime(last_resolved, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        return True
    return datetime.datetime.now(datetime.UTC) - then >= spec_refresh
