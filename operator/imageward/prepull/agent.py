"""The node agent of PrePull Layers mode: planned blobs into containerd, held by a lease.

One agent per node serves every Layers-mode PrePull. In a cluster it runs from the
chart's DaemonSet in the operator's namespace (`imageward agent --from-cluster`, see
`prepull.supervisor`): it watches the plan ConfigMaps there, applies those whose
nodeSelector and tolerations select its node, and reports each plan's progress as one
condition of its own pod's status (`prepull.reports`). `imageward agent --plan FILE`
applies plan files instead (benchmarks, tests, a node outside Kubernetes).

For every planned layer it makes sure the blob is in containerd's content store
(namespace `containerdNamespace`, `k8s.io` for the kubelet), labelled
`containerd.io/distribution.source.<registry>=<repositories>` exactly as containerd's
own pulls label them (the registry's host without its port, a comma-separated list of
repositories, merged with what is there), and held by the PrePull's lease. A later pull
of any planned image then finds those blobs and downloads only its other layers.

Per blob: the lease takes the digest first (AddResource: from then on the GC keeps it
if it is there), then Info. A blob containerd has only gets its source label merged in;
a missing one is streamed from the registry (`RegistryClient.fetch_blob_to`, hashed on
the way, with the PrePull's pull secrets) into a content Write under the lease, with the
ingest ref containerd's own pulls use (`layer-<digest>`): a kubelet pull of the same
layer at the same moment waits for our write instead of downloading it again, and we
wait for its. At most `--concurrency` blobs are fetched at once and all of them, for
every plan, share `--max-bytes-per-second`.

The lease (one per PrePull and plan; see `build_lease_id`):
- its id holds a key of the PrePull's namespace/name/uid, the plan hash and its creation
  time; labels repeat them (`imageward.io/prepull`, `imageward.io/plan-hash`, ...);
- it carries `containerd.io/gc.expire` = creation + `--lease-ttl` (24h; 0: never). The
  agent renews it while it serves the plan: once half the TTL has passed it makes a new
  lease, has it take every planned blob, then deletes the old one. So blobs stay held
  across agent restarts, node reboots and upgrades of the agent. SIGTERM never deletes
  a lease (a rollout or a drain is not a deleted PrePull);
- when the plan changes, the new lease takes the new plan's blobs; once it holds every
  one, the leases of the same PrePull with another plan hash (and those of an earlier
  PrePull of the same namespace/name, another uid: it was deleted) are deleted with
  `sync`, so containerd collects the blobs no lease or image needs any more at once.
  While a blob of the new plan is missing, the old lease stays;
- when a plan goes away while the agent serves it (its PrePull deleted, or its node no
  longer selected), the agent deletes that PrePull's leases at once; leases of PrePulls
  deleted while no agent ran expire by their `gc.expire`, or are deleted by the
  cluster agent's start-up sweep of the leases it made (`LABEL_SCOPE`);
- leases of other PrePulls are never touched.

Unpacking (`unpack`): once the blobs are held, for each image the plan lists under
`images` the agent unpacks the longest prefix of its layers whose blobs are held into
committed snapshots named by chain ID (namespace `containerdNamespace`, snapshotter
`overlayfs`, the CRI's), so the kubelet's unpacker skips them at pod start. It fetches
the image config (at most the registry settings' `max_config_bytes`, hashed) for its
diff IDs; per layer: a committed snapshot of that chain ID is left as it is (the lease
takes it); otherwise Prepare (labelled with the chain ID it is for, parent: the previous
layer's) under the lease, the Diff service's Apply of the held blob onto its mounts, a
check that Apply produced the config's diff ID, and Commit as the chain ID under the
lease. A failed layer's active snapshot is removed; a Commit that finds the chain ID
taken (the kubelet unpacked it meanwhile) removes ours and keeps that one. So the
PrePull's lease holds its snapshots as it holds its blobs: they go when the lease goes
(a new lease takes them before an old one is deleted). Unpacking is best effort: an
image whose config is missing, oversized or unusable, or a layer that fails, is reported
(`unpack` in the progress JSON, the condition's message) and leaves the blobs held; the
plan is Ready once every blob is held and every image's unpack has been tried.

`--once` applies one plan file, prints the progress JSON and exits (0 all held, 1 some
blob failed, 2 unusable plan or options).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import enum
import json
import logging
import pathlib
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from imageward import constants, errors, metrics, settings
from imageward.prepull import containerd, nodes, plans, unpack
from imageward.prepull import model as prepull_model
from imageward.registry import auth, client, model, reference

logger = logging.getLogger(__name__)

PLAN_FORMAT_VERSION = 1
DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_LEASE_TTL = 24 * 3600.0

LABEL_PREPULL = constants.LABEL_PREPULL  # the identity key (namespace/name/uid hashed)
LABEL_PREPULL_NAMESPACE = "imageward.io/prepull-namespace"
LABEL_PREPULL_NAME = "imageward.io/prepull-name"
LABEL_PREPULL_UID = "imageward.io/prepull-uid"
LABEL_PLAN_HASH = "imageward.io/plan-hash"
#: On leases the cluster agent makes: the namespace its plans come from, so its start-up
#: sweep deletes only leases of plans it served (never those of a `--plan` agent).
LABEL_SCOPE = "imageward.io/plans-namespace"
LEASE_PREFIX = "imageward"

#: Slowest transfer rate a blob's deadline allows for (bytes/s), plus a fixed margin.
_FLOOR_RATE = 256 * 1024
_DEADLINE_MARGIN = 120.0
#: How long to wait for another writer (a kubelet pull) holding the same ingest ref.
_LOCKED_WAIT = 600.0
_RETRY_FIRST, _RETRY_MAX = 5.0, 300.0
_MAX_FAILURES_SHOWN = 20
_ID_PART_RE = re.compile(r"[^A-Za-z0-9]")


class PlanFileError(errors.ImagewardError):
    """A plan file that cannot be used; names the file and the field."""


# ------------------------------------------------------------------------------ the plan


@dataclasses.dataclass(frozen=True, slots=True)
class PrePullIdentity:
    namespace: str
    name: str
    uid: str

    @property
    def display(self) -> str:
        """`namespace/name`: the metric label value and what logs say."""
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    registry: str
    repository: str


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedBlob:
    digest: model.Digest
    size: int
    sources: tuple[Source, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PullSecret:
    name: str
    path: str | None = None
    """A directory holding the Secret's .dockerconfigjson (plan files written by hand);
    None when the credentials come with the plan (sealed in its ConfigMap)."""

    found: bool = True
    """False when the operator could not read the Secret in the PrePull's namespace."""


@dataclasses.dataclass(frozen=True, slots=True)
class AgentPlan:
    prepull: PrePullIdentity
    hash: str
    containerd_namespace: str
    bytes: int
    blobs: tuple[PlannedBlob, ...]
    pull_secrets: tuple[PullSecret, ...]
    node_selector: Mapping[str, str] | None = None
    """None: every node (a plan file written by hand)."""

    tolerations: tuple[prepull_model.Toleration, ...] = ()
    unpack: tuple[unpack.UnpackImage, ...] = ()
    """The images whose first layers to unpack once held (`images` in the document)."""

    @property
    def key(self) -> str:
        return build_prepull_key(self.prepull)

    def selects(self, node: nodes.NodeView) -> bool:
        """Whether this plan is for `node` (its nodeSelector and tolerations)."""
        if self.node_selector is None:
            return True
        return nodes.evaluate_node_selected(node, self.node_selector, self.tolerations)


def _require(document: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = document.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{where}{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def parse_plan(data: bytes | str, *, source: str) -> AgentPlan:
    """The plan document `daemonset.build_plan_document` writes (version 1)."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PlanFileError(f"plan {source}: not JSON: {e}") from e
    try:
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        version = document.get("version")
        if version != PLAN_FORMAT_VERSION:
            raise ValueError(f"version {version!r} is not {PLAN_FORMAT_VERSION}")
        identity = _require(document, "prepull", dict, "")
        prepull = PrePullIdentity(
            namespace=_require(identity, "namespace", str, "prepull."),
            name=_require(identity, "name", str, "prepull."),
            uid=_require(identity, "uid", str, "prepull."),
        )
        if not (prepull.namespace and prepull.name and prepull.uid):
            raise ValueError("prepull: namespace, name and uid must not be empty")
        plan_hash = _require(document, "hash", str, "")
        if not _ID_PART_RE.sub("", plan_hash):
            raise ValueError(f"hash {plan_hash!r} has no letters or digits")
        namespace = document.get("containerdNamespace", "k8s.io")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("containerdNamespace: expected a non-empty string")
        blobs: dict[str, PlannedBlob] = {}
        for index, layer in enumerate(_require(document, "layers", list, "")):
            where = f"layers[{index}]."
            if not isinstance(layer, dict):
                raise ValueError(f"layers[{index}]: expected an object")
            digest = reference.parse_digest(_require(layer, "digest", str, where))
            size = _require(layer, "size", int, where)
            if size < 0:
                raise ValueError(f"{where}size: {size} is negative")
            sources = []
            for j, item in enumerate(_require(layer, "sources", list, where)):
                if not isinstance(item, dict):
                    raise ValueError(f"{where}sources[{j}]: expected an object")
                sources.append(
                    Source(
                        registry=_require(item, "registry", str, f"{where}sources[{j}]."),
                        repository=_require(item, "repository", str, f"{where}sources[{j}]."),
                    )
                )
            if not sources:
                raise ValueError(f"{where}sources: empty; nowhere to fetch {digest} from")
            previous = blobs.get(digest)
            if previous is not None and previous.size != size:
                raise ValueError(
                    f"{where}size: {digest} listed with sizes {previous.size} and {size}"
                )
            blobs[digest] = PlannedBlob(digest, size, tuple(sources))
        secrets = []
        for index, item in enumerate(document.get("pullSecrets") or []):
            where = f"pullSecrets[{index}]."
            if not isinstance(item, dict):
                raise ValueError(f"pullSecrets[{index}]: expected an object")
            path = item.get("path")
            if path is not None and not isinstance(path, str):
                raise ValueError(f"{where}path: expected str, got {type(path).__name__}")
            found = item.get("found", True)
            if not isinstance(found, bool):
                raise ValueError(f"{where}found: expected bool, got {type(found).__name__}")
            secrets.append(PullSecret(_require(item, "name", str, where), path, found))
        selector = document.get("nodeSelector")
        if selector is not None and (
            not isinstance(selector, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in selector.items())
        ):
            raise ValueError("nodeSelector: expected an object of strings")
        tolerations = nodes.parse_tolerations_json(document.get("tolerations"), where="tolerations")
        images = unpack.parse_unpack_images(document.get("images"))
        for image in images:
            for layer in image.layers:
                if layer.digest not in blobs:
                    raise ValueError(f"images: {image.image} lists {layer.digest}, not planned")
        total = document.get("bytes")
        return AgentPlan(
            prepull=prepull,
            hash=plan_hash,
            containerd_namespace=namespace,
            bytes=total if isinstance(total, int) else sum(b.size for b in blobs.values()),
            blobs=tuple(blobs.values()),
            pull_secrets=tuple(secrets),
            node_selector=dict(selector) if selector is not None else None,
            tolerations=tolerations,
            unpack=images,
        )
    except ValueError as e:
        raise PlanFileError(f"plan {source}: {e}") from e


# ------------------------------------------------------------------------------ leases


def build_prepull_key(prepull: PrePullIdentity) -> str:
    """16 hex characters naming one PrePull object (a re-created one gets another)."""
    return plans.build_prepull_key(prepull.namespace, prepull.name, prepull.uid)


def build_lease_id(plan: AgentPlan, created: datetime.datetime) -> str:
    """`imageward.<prepull key>.<plan hash>.<UTC creation time>`: at most 65 characters,
    within containerd's identifier rules (letters and digits joined by `.`, at most 76)."""
    plan_part = _ID_PART_RE.sub("", plan.hash)[:16]
    stamp = created.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{LEASE_PREFIX}.{build_prepull_key(plan.prepull)}.{plan_part}.{stamp}"


def format_expiry(moment: datetime.datetime) -> str:
    """RFC 3339 as containerd parses `containerd.io/gc.expire` (Go's time.RFC3339)."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expiry(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def build_lease_labels(
    plan: AgentPlan, *, created: datetime.datetime, ttl: float, scope: str | None = None
) -> dict[str, str]:
    labels = {
        constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
        LABEL_PREPULL: build_prepull_key(plan.prepull),
        LABEL_PREPULL_NAMESPACE: plan.prepull.namespace,
        LABEL_PREPULL_NAME: plan.prepull.name,
        LABEL_PREPULL_UID: plan.prepull.uid,
        LABEL_PLAN_HASH: plan.hash,
    }
    if scope:
        labels[LABEL_SCOPE] = scope
    if ttl > 0:
        labels[containerd.LABEL_GC_EXPIRE] = format_expiry(
            created + datetime.timedelta(seconds=ttl)
        )
    return labels


class LeaseRole(enum.Enum):
    CURRENT = "current"  # this PrePull and plan, and not due for renewal
    STALE = "stale"  # this PrePull and plan, but half its TTL is gone: renew
    OBSOLETE = "obsolete"  # this PrePull's earlier plan, or a deleted PrePull of that name
    FOREIGN = "foreign"  # anything else: never touched


def evaluate_lease(
    lease: containerd.Lease, plan: AgentPlan, *, now: datetime.datetime, ttl: float
) -> LeaseRole:
    labels = lease.labels
    if labels.get(constants.LABEL_MANAGED_BY) != constants.MANAGER_NAME:
        return LeaseRole.FOREIGN
    same_name = (
        labels.get(LABEL_PREPULL_NAMESPACE) == plan.prepull.namespace
        and labels.get(LABEL_PREPULL_NAME) == plan.prepull.name
    )
    if not same_name:
        return LeaseRole.FOREIGN
    if labels.get(LABEL_PREPULL) != build_prepull_key(plan.prepull):
        return LeaseRole.OBSOLETE  # the same name, another uid: that PrePull was deleted
    if labels.get(LABEL_PLAN_HASH) != plan.hash:
        return LeaseRole.OBSOLETE
    expires = parse_expiry(labels.get(containerd.LABEL_GC_EXPIRE))
    if ttl <= 0:
        return LeaseRole.CURRENT if expires is None else LeaseRole.STALE
    if expires is None or expires - now < datetime.timedelta(seconds=ttl / 2):
        return LeaseRole.STALE
    return LeaseRole.CURRENT


def build_source_host(registry: str) -> str:
    """The registry part of a distribution-source label key: the host without its port,
    as containerd writes it (Go's `url.Hostname()`: `127.0.0.1:5000` -> `127.0.0.1`,
    `[::1]:5000` -> `::1`), so containerd finds the labels it reads."""
    if registry.startswith("["):
        return registry[1:].partition("]")[0]
    host, sep, port = registry.rpartition(":")
    return host if sep and port.isdigit() else registry


def build_source_labels(sources: Iterable[Source], existing: Mapping[str, str]) -> dict[str, str]:
    """The distribution-source labels to set so they name every source (merged with what
    containerd's pulls already wrote: a comma-separated list of repositories per
    registry). Empty when nothing is missing."""
    wanted: dict[str, set[str]] = {}
    for source in sources:
        wanted.setdefault(build_source_host(source.registry), set()).add(source.repository)
    changes: dict[str, str] = {}
    for registry, repositories in sorted(wanted.items()):
        key = containerd.LABEL_DISTRIBUTION_SOURCE + registry
        present = [item for item in existing.get(key, "").split(",") if item]
        missing = sorted(repositories - set(present))
        if missing:
            changes[key] = ",".join([*present, *missing])
    return changes


def build_ingest_ref(digest: str) -> str:
    """The ingest ref containerd's pulls use for a layer (remotes.MakeRefKey)."""
    return f"layer-{digest}"


# ------------------------------------------------------------------------------ pacing


class RateLimiter:
    """Bytes per second shared by every fetch of the agent; None means unlimited."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._free_at = 0.0

    async def acquire(self, size: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self._free_at = max(self._free_at, now) + size / self.rate
        delay = self._free_at - now
        if delay > 0.001:
            await asyncio.sleep(delay)


# ------------------------------------------------------------------------------ progress


class BlobState(enum.Enum):
    PENDING = "pending"
    FETCHING = "fetching"
    HELD = "held"
    FAILED = "failed"


class UnpackState(enum.Enum):
    PENDING = "pending"
    DONE = "done"  # every held layer of the prefix is a committed snapshot
    FAILED = "failed"


@dataclasses.dataclass(slots=True)
class UnpackProgress:
    """One image's unpacking: `snapshots` of its `layers` listed layers are committed
    (`made` by this agent, the others found)."""

    state: UnpackState = UnpackState.PENDING
    layers: int = 0
    snapshots: int = 0
    made: int = 0
    reason: str | None = None


@dataclasses.dataclass(slots=True)
class Progress:
    """What /readyz reports; the latest plan's state, replaced when the plan changes."""

    node: str | None = None
    plan: AgentPlan | None = None
    lease: str | None = None
    states: dict[str, BlobState] = dataclasses.field(default_factory=dict)
    reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    fetched_bytes: int = 0
    error: str | None = None
    unpacks: dict[str, UnpackProgress] = dataclasses.field(default_factory=dict)
    """By image, for the plan's `unpack` images."""

    diff_ids: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Diff IDs by config digest, read once per plan (a lease renewal reads none)."""

    @property
    def held(self) -> bool:
        return all(state is BlobState.HELD for state in self.states.values())

    @property
    def unpacking(self) -> bool:
        """Some image's unpack not tried yet."""
        return any(item.state is UnpackState.PENDING for item in self.unpacks.values())

    @property
    def ready(self) -> bool:
        return self.plan is not None and self.error is None and self.held and not self.unpacking

    def start(self, plan: AgentPlan) -> None:
        """A new plan starts from nothing; the same plan again (a resync, a lease
        renewal) keeps what is known, so readiness does not flap while it is checked."""
        self.error = None
        if plan == self.plan:
            for digest, state in self.states.items():
                if state is BlobState.FAILED:
                    self.states[digest] = BlobState.PENDING
            return
        self.plan = plan
        self.lease = None
        self.states = {blob.digest: BlobState.PENDING for blob in plan.blobs}
        self.reasons = {}
        self.fetched_bytes = 0
        self.unpacks = {image.image: UnpackProgress() for image in plan.unpack}
        self.diff_ids = {}

    def set(self, digest: str, state: BlobState, reason: str | None = None) -> None:
        self.states[digest] = state
        if reason is None:
            self.reasons.pop(digest, None)
        else:
            self.reasons[digest] = reason

    def summary(self) -> tuple[bool, str, str]:
        """(ready, reason, message) for this plan's condition on the agent's pod."""
        total = len(self.states)
        counts = {state: 0 for state in BlobState}
        for state in self.states.values():
            counts[state] += 1
        held_bytes = 0
        if self.plan is not None:
            sizes: dict[str, int] = {blob.digest: blob.size for blob in self.plan.blobs}
            held_bytes = sum(sizes.get(d, 0) for d, s in self.states.items() if s is BlobState.HELD)
        held = f"{counts[BlobState.HELD]} of {total} layers held ({held_bytes} bytes)"
        if self.unpacks:
            snapshots = sum(item.snapshots for item in self.unpacks.values())
            held += f", {snapshots} unpacked"
            failed = sorted(
                (image, item.reason or "")
                for image, item in self.unpacks.items()
                if item.state is UnpackState.FAILED
            )
            if failed:
                held += f"; unpacking {failed[0][0]} failed: {failed[0][1]}"
                if len(failed) > 1:
                    held += f" ({len(failed) - 1} more images)"
        if self.error is not None:
            return False, "FetchFailed", f"{held}; {self.error}"
        if self.ready:
            return True, "Held", held
        if self.held and self.unpacking:
            return False, "Unpacking", held
        if counts[BlobState.FAILED] and not (
            counts[BlobState.PENDING] or counts[BlobState.FETCHING]
        ):
            digest, reason = sorted(self.reasons.items())[0] if self.reasons else ("", "")
            return (
                False,
                "FetchFailed",
                f"{held}; {counts[BlobState.FAILED]} failed, e.g. {digest}: {reason}",
            )
        if counts[BlobState.FETCHING] or counts[BlobState.HELD]:
            return False, "Fetching", f"{held}, {counts[BlobState.FETCHING]} fetching"
        return False, "Pending", held

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        sizes: dict[str, int] = {blob.digest: blob.size for blob in plan.blobs} if plan else {}
        counts = {state.value: 0 for state in BlobState}
        for state in self.states.values():
            counts[state.value] += 1
        held = sum(sizes.get(d, 0) for d, s in self.states.items() if s is BlobState.HELD)
        return {
            "ready": self.ready,
            "node": self.node,
            "prepull": dataclasses.asdict(plan.prepull) if plan else None,
            "planHash": plan.hash if plan else None,
            "lease": self.lease,
            "layers": {"total": len(self.states), **counts},
            "bytes": {
                "total": sum(sizes.values()),
                "held": held,
                "fetched": self.fetched_bytes,
            },
            "failures": [
                {"digest": digest, "reason": reason}
                for digest, reason in sorted(self.reasons.items())
            ][:_MAX_FAILURES_SHOWN],
            "unpack": [
                {
                    "image": image,
                    "state": item.state.value,
                    "layers": item.layers,
                    "snapshots": item.snapshots,
                    "made": item.made,
                    **({"reason": item.reason} if item.reason else {}),
                }
                for image, item in sorted(self.unpacks.items())
            ][:_MAX_FAILURES_SHOWN],
            "error": self.error,
        }


# ------------------------------------------------------------------------------ the work


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Where the cluster agent's plans come from and where it reports."""

    namespace: str
    """The operator's namespace: plan ConfigMaps are read, and the agent's pod lives, there."""

    pod: str | None
    """The agent's own pod (its status gets one condition per plan); None: no reports."""

    key_path: pathlib.Path
    """The sealing key (a file of the mounted key Secret)."""

    kubeconfig: str | None = None
    node_refresh: float = 300.0
    report_interval: float = 10.0
    max_plans: int = settings.MAX_AGENT_PLANS


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    plan_paths: tuple[pathlib.Path, ...] = ()
    cluster: ClusterOptions | None = None
    socket: str = DEFAULT_SOCKET
    concurrency: int = 3
    max_bytes_per_second: float | None = None
    listen: str = "0.0.0.0:8081"
    once: bool = False
    poll_interval: float = 5.0
    resync_interval: float = 600.0
    lease_ttl: float = DEFAULT_LEASE_TTL
    node: str | None = None
    snapshotter: str = unpack.DEFAULT_SNAPSHOTTER
    registry: settings.RegistrySettings = dataclasses.field(
        default_factory=settings.RegistrySettings
    )


class _WriterSink:
    """transport.BodySink into a containerd write, paced and counted."""

    def __init__(
        self,
        writer: containerd.ContentWriter,
        limiter: RateLimiter,
        progress: Progress,
        prepull: str,
    ) -> None:
        self.writer = writer
        self.limiter = limiter
        self.progress = progress
        self.counter = metrics.agent_fetched_bytes.labels(prepull=prepull)

    async def begin(self) -> None:
        await self.writer.restart()

    async def write(self, chunk: bytes) -> None:
        await self.limiter.acquire(len(chunk))
        await self.writer.write(chunk)
        self.counter.inc(len(chunk))
        self.progress.fetched_bytes += len(chunk)


def read_pull_secrets(
    secrets: Sequence[PullSecret],
) -> tuple[list[auth.DockerConfig], list[str]]:
    """Docker configs of pull secrets kept in directories (plan files written by hand),
    and the names of those missing or unreadable."""
    configs: list[auth.DockerConfig] = []
    missing: list[str] = []
    for secret in secrets:
        if not secret.path:
            missing.append(secret.name)
            continue
        directory = pathlib.Path(secret.path)
        for key in (".dockerconfigjson", ".dockercfg"):
            path = directory / key
            if path.is_file():
                try:
                    configs.append(
                        auth.parse_docker_config(
                            path.read_bytes(), source=f"pull secret {secret.name}"
                        )
                    )
                except (OSError, errors.CredentialsError) as e:
                    logger.warning("pull secret %s unusable: %s", secret.name, e)
                    missing.append(secret.name)
                break
        else:
            missing.append(secret.name)
    return configs, missing


class Agent:
    """Applies plans to one containerd; the clients are made and closed by `run`."""

    def __init__(
        self,
        options: Options,
        ctr: containerd.Client,
        registry: client.RegistryClient,
        progress: Progress | None = None,
        *,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.options = options
        self.ctr = ctr
        self.registry = registry
        self.progress = progress or Progress(node=options.node)
        self.limiter = limiter or RateLimiter(options.max_bytes_per_second)
        self.lease_expires: datetime.datetime | None = None

    @property
    def scope(self) -> str | None:
        return self.options.cluster.namespace if self.options.cluster else None

    async def apply(
        self, plan: AgentPlan, credentials: Sequence[auth.DockerConfig] | None = None
    ) -> bool:
        """Make every planned blob held by the PrePull's lease; True when all are.

        `credentials`: the plan's pull secrets as the operator sealed them; None reads
        them from the plan's pull-secret paths (plan files)."""
        if plan.containerd_namespace != self.ctr.namespace:
            raise PlanFileError(
                f"plan namespace {plan.containerd_namespace!r} differs from the client's "
                f"{self.ctr.namespace!r}"
            )
        progress = self.progress
        progress.start(plan)
        lease_id, others = await self._ensure_lease(plan)
        progress.lease = lease_id
        missing = [secret.name for secret in plan.pull_secrets if not secret.found]
        if credentials is None:
            credentials, unreadable = read_pull_secrets(
                [secret for secret in plan.pull_secrets if secret.path]
            )
            missing += unreadable
        semaphore = asyncio.Semaphore(max(1, self.options.concurrency))

        async def one(blob: PlannedBlob) -> None:
            async with semaphore:
                try:
                    await self._hold(plan, lease_id, blob, credentials)
                    progress.set(blob.digest, BlobState.HELD)
                except (errors.ImagewardError, OSError) as e:
                    reason = str(e)
                    if missing and isinstance(e, errors.UnauthorizedError):
                        reason += f" (pull secrets not found: {', '.join(missing)})"
                    logger.warning("blob %s of %s: %s", blob.digest, plan.prepull.display, reason)
                    progress.set(blob.digest, BlobState.FAILED, reason)
                except Exception as e:
                    # A bug or an answer nothing anticipated: fail this blob, not the others.
                    logger.exception("blob %s of %s", blob.digest, plan.prepull.display)
                    progress.set(
                        blob.digest, BlobState.FAILED, f"unexpected {type(e).__name__}: {e}"
                    )

        async with asyncio.TaskGroup() as group:
            for blob in plan.blobs:
                group.create_task(one(blob))
        complete = all(state is BlobState.HELD for state in progress.states.values())
        # Before an older lease goes: this one takes the snapshots it held.
        for image in plan.unpack:
            progress.unpacks[image.image] = await self._unpack_image(
                plan, lease_id, image, credentials
            )
        if complete:
            for lease in others:
                sync = lease.labels.get(LABEL_PLAN_HASH) != plan.hash or (
                    lease.labels.get(LABEL_PREPULL) != build_prepull_key(plan.prepull)
                )
                logger.info("deleting lease %s (sync=%s), replaced by %s", lease.id, sync, lease_id)
                with contextlib.suppress(errors.ContainerdNotFoundError):
                    await self.ctr.delete_lease(lease.id, sync=sync)
        return complete

    async def _ensure_lease(self, plan: AgentPlan) -> tuple[str, list[containerd.Lease]]:
        """The lease to hold this plan's blobs (reused or made), and the leases it replaces."""
        now = datetime.datetime.now(datetime.UTC)
        ttl = self.options.lease_ttl
        current: containerd.Lease | None = None
        replaced: list[containerd.Lease] = []
        for lease in await self.ctr.list_leases():
            role = evaluate_lease(lease, plan, now=now, ttl=ttl)
            if role is LeaseRole.CURRENT and current is None:
                current = lease
            elif role is not LeaseRole.FOREIGN:
                replaced.append(lease)
        if current is None:
            lease_id = build_lease_id(plan, now)
            labels = build_lease_labels(plan, created=now, ttl=ttl, scope=self.scope)
            current = await self.ctr.create_lease(lease_id, labels)
            logger.info(
                "lease %s created for %s (plan %s, expires %s)",
                lease_id,
                plan.prepull.display,
                plan.hash,
                labels.get(containerd.LABEL_GC_EXPIRE, "never"),
            )
        self.lease_expires = parse_expiry(current.labels.get(containerd.LABEL_GC_EXPIRE))
        return current.id, replaced

    async def _hold(
        self,
        plan: AgentPlan,
        lease_id: str,
        blob: PlannedBlob,
        credentials: Sequence[auth.DockerConfig],
    ) -> None:
        # Lease first: from this moment on a GC keeps the blob if containerd has it.
        await self.ctr.add_resource(lease_id, blob.digest)
        deadline = time.monotonic() + _LOCKED_WAIT
        while True:
            info = await self.ctr.find(blob.digest)
            if info is not None:
                changes = build_source_labels(blob.sources, info.labels)
                if changes:
                    await self.ctr.update_labels(blob.digest, changes)
                return
            try:
                await self._fetch(plan, lease_id, blob, credentials)
                return
            except errors.ContainerdAlreadyExistsError:
                continue  # someone else committed it meanwhile: label it, done
            except errors.ContainerdUnavailableError as e:
                # The ingest ref is held by another writer (a kubelet pull of the same
                # layer, or the agent of another PrePull): wait for it to finish.
                if time.monotonic() > deadline:
                    raise
                logger.info("blob %s: %s; waiting", blob.digest, e.message)
                await asyncio.sleep(1.0)

    async def _fetch(
        self,
        plan: AgentPlan,
        lease_id: str,
        blob: PlannedBlob,
        credentials: Sequence[auth.DockerConfig],
    ) -> None:
        progress = self.progress
        prepull = plan.prepull.display
        rate: float = _FLOOR_RATE
        if self.options.max_bytes_per_second:
            rate = min(rate, self.options.max_bytes_per_second / max(1, self.options.concurrency))
        deadline = _DEADLINE_MARGIN + blob.size / rate
        labels = build_source_labels(blob.sources, {})
        failures: list[errors.RegistryError] = []
        for source in blob.sources:
            ref = model.ImageReference(
                registry=source.registry, repository=source.repository, digest=blob.digest
            )
            started = time.perf_counter()
            progress.set(blob.digest, BlobState.FETCHING)
            async with self.ctr.writer(
                build_ingest_ref(blob.digest), expected=blob.digest, total=blob.size, lease=lease_id
            ) as writer:
                sink = _WriterSink(writer, self.limiter, progress, prepull)
                try:
                    await self.registry.fetch_blob_to(
                        ref,
                        blob.digest,
                        sink,
                        max_bytes=blob.size,
                        credentials=credentials,
                        deadline=deadline,
                    )
                except errors.RegistryError as e:
                    failures.append(e)  # the next source may have it
                    continue
                await writer.commit(labels)
            metrics.agent_fetch_duration.labels(prepull=prepull).observe(
                time.perf_counter() - started
            )
            logger.info("blob %s (%d bytes) fetched from %s", blob.digest, blob.size, ref.name)
            return
        raise build_fetch_error(failures)

    # -- unpacking ------------------------------------------------------------------

    async def _unpack_image(
        self,
        plan: AgentPlan,
        lease_id: str,
        image: unpack.UnpackImage,
        credentials: Sequence[auth.DockerConfig],
    ) -> UnpackProgress:
        """Unpack the held prefix of one image's layers; never raises but a cancel."""
        held = {d for d, state in self.progress.states.items() if state is BlobState.HELD}
        count = unpack.evaluate_held_prefix(image, held)
        result = UnpackProgress(layers=count)
        if count == 0:
            result.state = UnpackState.DONE
            return result
        try:
            diff_ids = await self._diff_ids(image, credentials)
            chain = unpack.build_chain_ids(diff_ids[:count])
            parent = ""
            for layer, diff_id, chain_id in zip(image.layers, diff_ids, chain, strict=False):
                if await self._unpack_layer(lease_id, layer, diff_id, chain_id, parent):
                    result.made += 1
                result.snapshots += 1
                parent = chain_id
        except (errors.ImagewardError, OSError) as e:
            result.state, result.reason = UnpackState.FAILED, str(e)
            logger.warning("unpacking %s of %s: %s", image.image, plan.prepull.display, e)
            return result
        except Exception as e:
            logger.exception("unpacking %s of %s", image.image, plan.prepull.display)
            result.state, result.reason = UnpackState.FAILED, f"unexpected {type(e).__name__}: {e}"
            return result
        result.state = UnpackState.DONE
        logger.info(
            "image %s of %s: %d layers unpacked (%d made, %d found)",
            image.image,
            plan.prepull.display,
            result.snapshots,
            result.made,
            result.snapshots - result.made,
        )
        return result

    async def _diff_ids(
        self, image: unpack.UnpackImage, credentials: Sequence[auth.DockerConfig]
    ) -> tuple[str, ...]:
        known = self.progress.diff_ids.get(image.config)
        if known is not None and len(known) == image.layer_count:
            return known
        limit = self.options.registry.max_config_bytes
        failures: list[errors.RegistryError] = []
        for registry, repository in image.sources:
            ref = model.ImageReference(
                registry=registry, repository=repository, digest=image.config
            )
            try:
                body = await self.registry.fetch_blob(
                    ref, image.config, max_bytes=limit, credentials=credentials
                )
            except errors.RegistryError as e:
                failures.append(e)
                continue
            diff_ids = unpack.parse_diff_ids(body, image=image, max_bytes=limit)
            self.progress.diff_ids[image.config] = diff_ids
            return diff_ids
        raise build_fetch_error(failures)

    async def _unpack_layer(
        self, lease_id: str, layer: model.Layer, diff_id: str, chain_id: str, parent: str
    ) -> bool:
        """Make `chain_id` a committed snapshot held by the lease; True when made here,
        False when it was there (or another unpacker made it meanwhile)."""
        ctr, snapshotter = self.ctr, self.options.snapshotter
        resource = containerd.build_snapshot_resource(snapshotter)
        found = await ctr.stat_snapshot(snapshotter, chain_id)
        if found is not None and found.committed:
            await ctr.add_resource(lease_id, chain_id, resource)
            return False
        key = unpack.build_snapshot_key(chain_id, uuid.uuid4().hex[:16])
        labels = {
            **unpack.build_snapshot_labels(chain_id),
            constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
        }
        try:
            mounts = await ctr.prepare_snapshot(
                snapshotter, key, parent, labels=labels, lease=lease_id
            )
        except errors.ContainerdAlreadyExistsError:
            # The chain ID exists now (its ref label says so): keep that one.
            await ctr.add_resource(lease_id, chain_id, resource)
            return False
        try:
            applied = await ctr.apply_diff(
                media_type=layer.media_type,
                digest=layer.digest,
                size=layer.size,
                mounts=mounts,
                seconds=_DEADLINE_MARGIN + layer.size / _FLOOR_RATE,
            )
            if applied != diff_id:
                raise unpack.UnpackError(
                    f"layer {layer.digest} unpacks to {applied}, the config says {diff_id}"
                )
            try:
                await ctr.commit_snapshot(snapshotter, chain_id, key, labels=labels, lease=lease_id)
            except errors.ContainerdAlreadyExistsError:
                await self._remove_snapshot(key)
                await ctr.add_resource(lease_id, chain_id, resource)
                return False
        except BaseException:
            await self._remove_snapshot(key)
            raise
        logger.info("layer %s unpacked as snapshot %s", layer.digest, chain_id)
        return True

    async def _remove_snapshot(self, key: str) -> None:
        """Remove an active snapshot; bounded, and run even while being cancelled."""
        with contextlib.suppress(errors.ContainerdError, TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(self.ctr.remove_snapshot(self.options.snapshotter, key)), 10
            )


def build_fetch_error(failures: Sequence[errors.RegistryError]) -> errors.RegistryError:
    """The error of the last source tried, naming what the others said too."""
    last = failures[-1]
    if len(failures) == 1:
        return last
    combined = "; ".join(str(e) for e in failures[:-1])
    return type(last)(
        f"{last.message} (other sources: {combined})",
        registry=last.registry,
        repository=last.repository,
        reference=last.reference,
        status=last.status,
        retry_after=last.retry_after,
    )


# ------------------------------------------------------------------- leases of gone plans


def evaluate_releasable(lease: containerd.Lease, key: str) -> bool:
    """A lease imageward made for the PrePull with this key (any plan of it)."""
    labels = lease.labels
    return (
        labels.get(constants.LABEL_MANAGED_BY) == constants.MANAGER_NAME
        and labels.get(LABEL_PREPULL) == key
    )


def evaluate_sweepable(lease: containerd.Lease, *, scope: str, keep: Iterable[str]) -> bool:
    """A lease the cluster agent of `scope` made for a PrePull it no longer serves."""
    labels = lease.labels
    return (
        labels.get(constants.LABEL_MANAGED_BY) == constants.MANAGER_NAME
        and labels.get(LABEL_SCOPE) == scope
        and labels.get(LABEL_PREPULL) not in set(keep)
    )


async def release_leases(ctr: containerd.Client, key: str, *, display: str) -> list[str]:
    """Delete every lease of one PrePull (its plan went away): containerd collects the
    blobs nothing else holds at once (`sync`). Returns the ids deleted."""
    deleted = []
    for lease in await ctr.list_leases():
        if evaluate_releasable(lease, key):
            with contextlib.suppress(errors.ContainerdNotFoundError):
                await ctr.delete_lease(lease.id, sync=True)
            logger.info("lease %s of %s released: its plan is gone", lease.id, display)
            deleted.append(lease.id)
    return deleted


async def sweep_leases(ctr: containerd.Client, *, scope: str, keep: Iterable[str]) -> list[str]:
    """Delete the leases this cluster agent made for plans that are gone (deleted while
    no agent ran on this node). Returns the ids deleted."""
    kept = set(keep)
    deleted = []
    for lease in await ctr.list_leases():
        if evaluate_sweepable(lease, scope=scope, keep=kept):
            with contextlib.suppress(errors.ContainerdNotFoundError):
                await ctr.delete_lease(lease.id, sync=True)
            logger.info("lease %s swept: no plan in %s needs it any more", lease.id, scope)
            deleted.append(lease.id)
    return deleted


# ------------------------------------------------------------------------------ serving


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


#: A plan file or ConfigMap larger than this is refused unread (a ConfigMap holds 1 MiB).
MAX_PLAN_FILE = 1024 * 1024


def read_plan(path: pathlib.Path) -> tuple[bytes, AgentPlan]:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_PLAN_FILE + 1)
    except OSError as e:
        raise PlanFileError(f"plan {path}: {e.strerror or e}") from e
    if len(data) > MAX_PLAN_FILE:
        raise PlanFileError(f"plan {path}: over {MAX_PLAN_FILE} bytes")
    return data, parse_plan(data, source=str(path))


async def run_once(options: Options) -> tuple[bool, Progress]:
    """Apply one plan file once (raises PlanFileError for an unusable plan)."""
    if len(options.plan_paths) != 1:
        raise PlanFileError("--once applies exactly one --plan file")
    _, plan = read_plan(options.plan_paths[0])
    async with (
        containerd.Client(options.socket, plan.containerd_namespace) as ctr,
        client.RegistryClient(options.registry) as registry,
    ):
        agent = Agent(options, ctr, registry)
        complete = await agent.apply(plan)
        return complete, agent.progress
