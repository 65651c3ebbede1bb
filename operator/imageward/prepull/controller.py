"""The PrePull controller's effects: resolve images, plan, own one DaemonSet (and at most
one ConfigMap), and report progress. Decisions come from the pure modules
(`model`, `planner`, `daemonset`, `status`); this module fetches and applies.
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
from imageward.policy import selectors
from imageward.prepull import daemonset, model, planner, status
from imageward.registry import auth as registry_auth
from imageward.registry import model as registry_model
from imageward.registry import reference as registry_reference
from imageward.runtime import Runtime

logger = logging.getLogger(__name__)

# Which client method lists a kind's workloads in one namespace.
_LISTS = {
    model.WorkloadKind.DEPLOYMENT: ("apps", "list_namespaced_deployment"),
    model.WorkloadKind.STATEFUL_SET: ("apps", "list_namespaced_stateful_set"),
    model.WorkloadKind.DAEMON_SET: ("apps", "list_namespaced_daemon_set"),
    model.WorkloadKind.CRON_JOB: ("batch", "list_namespaced_cron_job"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedEntry:
    image: str
    weight: int
    reference: registry_model.ImageReference | None
    facts: registry_model.ImageFacts | None
    error: str | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _platform(spec: model.PrePullSpec, default: str) -> registry_model.Platform:
    selected = dict(spec.node_selector)
    os_name, _, arch = default.partition("/")
    return registry_model.Platform(
        selected.get("kubernetes.io/os", os_name), selected.get("kubernetes.io/arch", arch)
    )


async def _workload_images(
    state: Runtime, namespace: str, spec: model.PrePullSpec
) -> list[tuple[str, int]]:
    source = spec.from_workloads
    if source is None:
        return []
    namespaces: list[str] | None = [namespace]
    if source.namespace_selector is not None:
        listing = await state.kube.call("list namespaces", state.kube.core.list_namespace)
        namespaces = [
            item["metadata"]["name"]
            for item in (listing or {}).get("items") or []
            if selectors.evaluate_label_selector(
                source.namespace_selector, (item["metadata"].get("labels") or {})
            )
        ]
    node_listing = await state.kube.call("list nodes", state.kube.core.list_node)
    node_count = len((node_listing or {}).get("items") or [])
    workloads: list[dict[str, Any]] = []
    for kind in source.kinds:
        group, namespaced = _LISTS[kind]
        api = state.kube.apps if group == "apps" else state.kube.batch
        for ns in namespaces or []:
            listing = await state.kube.call(
                f"list {kind.value}s in {ns}", getattr(api, namespaced), ns
            )
            for item in (listing or {}).get("items") or []:
                labels = (item.get("metadata") or {}).get("labels") or {}
                if selectors.evaluate_label_selector(source.label_selector, labels):
                    workloads.append({**item, "kind": kind.value})
    return status.build_images_from_workloads(workloads, source.kinds, node_count=node_count)


async def _pull_credentials(
    state: Runtime, namespace: str, names: Sequence[str]
) -> list[registry_auth.DockerConfig]:
    found = []
    for name in names:
        secret = await state.kube.read_secret(namespace, name)
        if secret is None:
            continue
        try:
            found.append(registry_auth.parse_pull_secret(secret))
        except errors.ImagewardError as e:
            logger.warning("pull secret %s/%s is unusable: %s", namespace, name, e)
    return found + list(state.operator_credentials)


async def resolve_images(
    state: Runtime, namespace: str, spec: model.PrePullSpec
) -> list[ResolvedEntry]:
    weights = status.build_image_weights(
        [(entry.image, entry.weight) for entry in spec.images],
        await _workload_images(state, namespace, spec),
    )
    credentials = await _pull_credentials(state, namespace, spec.image_pull_secrets)
    platform = _platform(spec, state.settings.prepull.default_platform)

    async def one(image: str, weight: int) -> ResolvedEntry:
        try:
            reference = registry_reference.parse_reference(image)
        except errors.InvalidReferenceError as e:
            return ResolvedEntry(image, weight, None, None, str(e))
        try:
            facts = await state.source.client.fetch_facts(
                reference, platform=platform, credentials=credentials
            )
        except errors.ImagewardError as e:
            return ResolvedEntry(image, weight, reference, None, str(e))
        if not facts.images:
            return ResolvedEntry(image, weight, reference, None, f"{image} has no {platform} image")
        return ResolvedEntry(image, weight, reference, facts)

    return list(await asyncio.gather(*(one(image, weight) for image, weight in weights)))


def build_plan(entries: Sequence[ResolvedEntry], spec: model.PrePullSpec) -> planner.Plan:
    images = [
        planner.PlanImage(
            image=entry.image,
            digest=entry.facts.digest,
            layers=entry.facts.images[0].layers,
            weight=float(entry.weight),
        )
        for entry in entries
        if entry.facts is not None
    ]
    budget = spec.layers.budget_per_node.bytes if spec.layers.budget_per_node else None
    return planner.build_plan(images, budget=budget, min_share=spec.layers.min_share)


_OBJECT_HASH = "imageward.io/object-hash"
REASON_REFUSED = "DaemonSetRefused"


def _with_hash(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body with a hash of itself, so an unchanged object is never rewritten."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    metadata = dict(body["metadata"])
    metadata["annotations"] = {**(metadata.get("annotations") or {}), _OBJECT_HASH: digest}
    return {**body, "metadata": metadata}


async def _apply(state: Runtime, kind: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Create, or replace when what we would write differs from what is stored."""
    body = _with_hash(body)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    read: Any
    create: Any
    replace: Any
    if kind == "DaemonSet":
        read, create, replace = (
            state.kube.apps.read_namespaced_daemon_set,
            state.kube.apps.create_namespaced_daemon_set,
            state.kube.apps.replace_namespaced_daemon_set,
        )
    else:
        read, create, replace = (
            state.kube.core.read_namespaced_config_map,
            state.kube.core.create_namespaced_config_map,
            state.kube.core.replace_namespaced_config_map,
        )
    where = f"{kind} {namespace}/{name}"
    current = await state.kube.call(f"get {where}", read, name, namespace)
    if current is None:
        created: dict[str, Any] = await state.kube.call(f"create {where}", create, namespace, body)
        return created, "created"
    if (current["metadata"].get("annotations") or {}).get(_OBJECT_HASH) == body["metadata"][
        "annotations"
    ][_OBJECT_HASH]:
        return dict(current), "unchanged"
    replacement = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
    }
    replaced: dict[str, Any] = await state.kube.call(
        f"replace {where}", replace, name, namespace, replacement
    )
    return replaced, "replaced"


async def reconcile(
    state: Runtime, body: Mapping[str, Any], *, previous_status: Mapping[str, Any]
) -> dict[str, Any]:
    """Resolve, plan and apply; returns the status to write."""
    metadata = body["metadata"]
    name, namespace, uid = metadata["name"], metadata["namespace"], metadata["uid"]
    generation = int(metadata.get("generation") or 0)
    previous_conditions = list(previous_status.get("conditions") or [])
    try:
        spec = model.parse_prepull(body)
    except model.PrePullError as e:
        problem = status.Problem(status.REASON_INVALID_SPEC, str(e))
        return {
            "observedGeneration": generation,
            "conditions": status.build_conditions(
                None,
                generation=generation,
                now=_now(),
                problems=[problem],
                previous=previous_conditions,
            ),
        }

    entries = await resolve_images(state, namespace, spec)
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
    settings = state.settings.prepull
    configmap = None
    if spec.mode is model.Mode.LAYERS:
        references = {e.image: e.reference for e in entries if e.reference is not None and e.facts}
        configmap = daemonset.build_plan_configmap(
            name, namespace, uid, plan, references, pull_secrets=spec.image_pull_secrets
        )
    ds_body = daemonset.build_daemonset(
        name,
        namespace,
        uid,
        spec,
        resolved,
        helper_image=settings.helper_image,
        pause_image=settings.pause_image,
        agent_image=settings.agent_image,
        agent_env=_agent_env(state),
        plan_configmap=configmap,
    )
    stored: dict[str, Any] | None = None
    if resolved or spec.mode is model.Mode.LAYERS:
        try:
            if configmap is not None:
                await _apply(state, "ConfigMap", configmap)
            stored, action = await _apply(state, "DaemonSet", ds_body)
            if action != "unchanged":
                _event(
                    state,
                    body,
                    "DaemonSetCreated" if action == "created" else "RolloutStarted",
                    f"{action} DaemonSet {ds_body['metadata']['name']} for "
                    f"{len(resolved)} image(s), {len(plan.layers)} planned layer(s)",
                    "Normal",
                )
        except kube.KubeError as e:
            if e.status not in (400, 403, 422):
                raise  # transient (5xx, conflicts): Kopf retries the handler
            # Refused for good (e.g. by an admission policy on its images): say so in
            # status instead of retrying blindly.
            problems.append(status.Problem(REASON_REFUSED, str(e)))
        if (
            stored is not None
            and spec.mode is model.Mode.IMAGES
            and spec.pull_method is model.PullMethod.IMAGE_VOLUME
        ):
            missing = daemonset.evaluate_missing_image_volumes(stored, resolved)
            if missing:
                problems.append(
                    status.Problem(
                        status.REASON_IMAGE_VOLUME_UNSUPPORTED,
                        "the apiserver dropped the image volumes (ImageVolume feature off); "
                        "use pullMethod InitContainer",
                    )
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
        "images": images_status[:2048],
        "plan": plan_status,
        "lastResolved": _now(),
    }
    ready_before: Mapping[str, Any] = next(
        (c for c in previous_conditions if c.get("type") == "Ready"), {}
    )
    if problems and ready_before.get("message") != "; ".join(p.message for p in problems):
        _event(state, body, problems[0].reason, "; ".join(p.message for p in problems), "Warning")
    progress = await node_progress(
        state,
        name,
        namespace,
        spec,
        [dict(i) for i in images_status],
        generation,
        problems,
        previous_conditions,
    )
    result.update(progress)
    return result


async def node_progress(
    state: Runtime,
    name: str,
    namespace: str,
    spec: model.PrePullSpec | None,
    images_status: Sequence[Mapping[str, Any]],
    generation: int,
    problems: Sequence[status.Problem],
    previous_conditions: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Nodes desired/ready/failed and the conditions, from the DaemonSet and its pods."""
    resource = daemonset.build_resource_name(name)
    stored = await state.kube.call(
        f"get DaemonSet {namespace}/{resource}",
        state.kube.apps.read_namespaced_daemon_set,
        resource,
        namespace,
    )
    if stored is None:
        return {
            "conditions": status.build_conditions(
                None,
                generation=generation,
                now=_now(),
                problems=problems,
                previous=previous_conditions,
            )
        }
    selector = ",".join(f"{k}={v}" for k, v in daemonset.build_selector(name).items())
    pods = await state.kube.call(
        f"list pods of {namespace}/{resource}",
        state.kube.core.list_namespaced_pod,
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
    nodes = status.build_node_status(
        (pods or {}).get("items") or [], desired, current_hash=current_hash, images=pinned_to_image
    )
    for state_name, value in (
        ("desired", nodes.desired),
        ("ready", nodes.ready),
        ("failed", nodes.failed),
    ):
        metrics.prepull_nodes.labels(namespace=namespace, prepull=name, state=state_name).set(value)
    return {
        **status.build_status_fields(nodes),
        "conditions": status.build_conditions(
            nodes,
            generation=generation,
            now=_now(),
            problems=problems,
            previous=previous_conditions,
        ),
    }


def _agent_env(state: Runtime) -> dict[str, str]:
    registry = state.settings.registry
    env = {}
    if registry.insecure_registries:
        env["IMAGEWARD_INSECURE_REGISTRIES"] = ",".join(registry.insecure_registries)
    if registry.mirrors:
        env["IMAGEWARD_REGISTRY_MIRRORS"] = ",".join(f"{k}={v}" for k, v in registry.mirrors)
    return env


def _event(state: Runtime, body: Mapping[str, Any], reason: str, message: str, type_: str) -> None:
    metadata = body["metadata"]
    state.post_event(
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
