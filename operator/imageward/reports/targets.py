"""What a background scan checks: running Pods and workload templates, grouped by the
workload a report names. Pure.

Each Pod and workload is kept by its watch as a small projection: its kind, owner and a
`View` (the inputs admission would use for its pod or pod template: namespace, labels,
service account, pull secrets, node platform, images). Views are interned, so the pods
of one ReplicaSet share one. `build_targets` then groups:

- a Deployment, StatefulSet, DaemonSet, CronJob, a Job no CronJob owns, and a ReplicaSet
  no Deployment owns are each a target, with their template's view;
- a Pod joins the target of its controller (a ReplicaSet's Deployment, a Job's CronJob),
  adding its own view when it differs (a pod of an older ReplicaSet still running an old
  image); a Pod without a known controller is a target of its own;
- a Job's template joins its CronJob; finished Jobs (Complete or Failed) are left out.

Pods that ended (Succeeded, Failed) or are being deleted are not running: left out.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Final

from imageward import errors
from imageward.admission import workloads

KIND_API_VERSIONS: Final[Mapping[str, str]] = {
    "Pod": "v1",
    "Deployment": "apps/v1",
    "ReplicaSet": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}
#: Workload kinds with their own watch (ReplicaSets are watched for their owner only).
WORKLOAD_KINDS: Final = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


@dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
class View:
    """What a check of one pod (template) needs, besides its namespace's labels."""

    namespace: str
    labels: tuple[tuple[str, str], ...]
    service_account: str
    pull_secrets: tuple[str, ...]
    node_os: str | None
    node_arch: str | None
    images: tuple[str, ...]

    @property
    def pod_labels(self) -> dict[str, str]:
        return dict(self.labels)

    def pod_view(self) -> workloads.PodView:
        """As admission's PodView (for credentials and the platform choice)."""
        return workloads.PodView(
            kind="Pod",
            name="",
            namespace=self.namespace,
            spec_pointer="/spec",
            labels=self.labels,
            service_account=self.service_account,
            image_pull_secrets=self.pull_secrets,
            node_arch=self.node_arch,
            node_os=self.node_os,
            containers=(),
        )


_VIEWS: weakref.WeakValueDictionary[View, View] = weakref.WeakValueDictionary()


def _intern(view: View) -> View:
    found = _VIEWS.get(view)
    if found is not None:
        return found
    _VIEWS[view] = view
    return view


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    kind: str
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    """A Pod or workload as its watch keeps it."""

    kind: str
    namespace: str
    name: str
    uid: str
    owner: Owner | None
    view: View | None
    """None for a ReplicaSet a Deployment owns (only its owner matters) or a template
    that cannot be read."""

    finished: bool = False
    """A Job that completed or failed."""


TargetKey = tuple[str, str, str]  # namespace, kind, name


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    kind: str
    name: str
    uid: str
    views: frozenset[View]

    @property
    def key(self) -> TargetKey:
        return (self.namespace, self.kind, self.name)

    @property
    def api_version(self) -> str:
        return KIND_API_VERSIONS.get(self.kind, "v1")


def build_view(body: Mapping[str, Any], kind: str) -> View | None:
    """The view of a Pod or pod template; None when it has no image or cannot be read
    (admission refused such an object already)."""
    try:
        parsed = workloads.parse_pod_view(body, kind=kind)
    except errors.MalformedObjectError:
        return None
    if not parsed.images or not parsed.namespace:
        return None
    return _intern(
        View(
            namespace=parsed.namespace,
            labels=parsed.labels,
            service_account=parsed.service_account,
            pull_secrets=parsed.image_pull_secrets,
            node_os=parsed.node_os,
            node_arch=parsed.node_arch,
            images=parsed.images,
        )
    )


def _controller(metadata: Mapping[str, Any]) -> Owner | None:
    for ref in metadata.get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind"):
            return Owner(str(ref["kind"]), str(ref.get("name") or ""))
    return None


def _base(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, str, str] | None:
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, Mapping) or metadata.get("deletionTimestamp"):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not namespace:
        return None
    return metadata, namespace, name, str(metadata.get("uid") or "")


def project_pod(body: Mapping[str, Any]) -> Record | None:
    """A running (or pending) Pod; None for one that ended or is being deleted."""
    base = _base(body)
    if base is None:
        return None
    phase = (body.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return None
    metadata, namespace, name, uid = base
    return Record("Pod", namespace, name, uid, _controller(metadata), build_view(body, "Pod"))


def project_replica_set(body: Mapping[str, Any]) -> Record | None:
    base = _base(body)
    if base is None:
        return None
    metadata, namespace, name, uid = base
    owner = _controller(metadata)
    view = build_view(body, "ReplicaSet") if owner is None else None
    return Record("ReplicaSet", namespace, name, uid, owner, view)


def _job_finished(body: Mapping[str, Any]) -> bool:
    for condition in (body.get("status") or {}).get("conditions") or []:
        if (
            isinstance(condition, Mapping)
            and condition.get("type") in ("Complete", "Failed")
            and condition.get("status") == "True"
        ):
            return True
    return False


def project_workload(kind: str, body: Mapping[str, Any]) -> Record | None:
    base = _base(body)
    if base is None:
        return None
    metadata, namespace, name, uid = base
    owner = _controller(metadata) if kind == "Job" else None
    return Record(
        kind,
        namespace,
        name,
        uid,
        owner,
        build_view(body, kind),
        finished=kind == "Job" and _job_finished(body),
    )


def build_targets(
    pods: Iterable[Record],
    replica_sets: Iterable[Record],
    workloads_: Iterable[Record],
    *,
    excluded: frozenset[str] = frozenset(),
) -> dict[TargetKey, Target]:
    """Group the running pods and workload templates by the workload a report names."""
    views: dict[TargetKey, set[View]] = {}
    uids: dict[TargetKey, str] = {}
    by_key: dict[TargetKey, Record] = {}
    for record in workloads_:
        if record.namespace not in excluded:
            by_key[(record.namespace, record.kind, record.name)] = record
    sets = {(r.namespace, r.name): r for r in replica_sets if r.namespace not in excluded}

    def target_of(record: Record) -> TargetKey:
        """The key of the target a Job or Pod's controller chain ends in."""
        owner = record.owner
        namespace = record.namespace
        if owner is None:
            return (namespace, record.kind, record.name)
        if owner.kind == "ReplicaSet":
            rs = sets.get((namespace, owner.name))
            if rs is None:
                return (namespace, record.kind, record.name)
            if rs.owner is not None and rs.owner.kind == "Deployment":
                key = (namespace, "Deployment", rs.owner.name)
                return key if key in by_key else (namespace, record.kind, record.name)
            key = (namespace, "ReplicaSet", rs.name)
            views.setdefault(key, set())
            uids[key] = rs.uid
            if rs.view is not None:
                views[key].add(rs.view)
            return key
        if owner.kind == "Job":
            job = by_key.get((namespace, "Job", owner.name))
            if job is None:
                return (namespace, record.kind, record.name)
            return target_of(job)
        key = (namespace, owner.kind, owner.name)
        if owner.kind in WORKLOAD_KINDS and key in by_key:
            return key
        return (namespace, record.kind, record.name)

    for key, record in by_key.items():
        if record.finished:
            continue
        target = target_of(record)
        if target == key:
            uids[key] = record.uid
        views.setdefault(target, set())
        if record.view is not None:
            views[target].add(record.view)
    for pod in pods:
        if pod.namespace in excluded or pod.view is None:
            continue
        target = target_of(pod)
        if target == (pod.namespace, "Pod", pod.name):
            uids[target] = pod.uid
        views.setdefault(target, set()).add(pod.view)
    for key in views:
        if key not in uids and key in by_key:
            uids[key] = by_key[key].uid
    return {
        key: Target(key[0], key[1], key[2], uids.get(key, ""), frozenset(found))
        for key, found in views.items()
        if found
    }
