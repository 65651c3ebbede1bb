"""The background scanner: what is running now, against today's policies.

Runs only in the replica that leads Kopf peering. `main.py` gives each ImagePolicy a
Kopf daemon that holds a lease here for as long as it runs; Kopf stops every daemon
when the replica pauses (another peer leads) and starts them again when it resumes, so
"some lease is held" is exactly "this replica runs the controllers". With no policy
there is nothing to scan: when the last one is deleted, one last pass clears the
reports, then the scanner stops and drops its caches.

What starts a scan:
- a policy created or changed (generation, or key material re-read from a Secret or
  ConfigMap): only the images it matches are checked, against it alone;
- the interval (`IMAGEWARD_SCAN_INTERVAL`): every running workload, every policy, tags
  resolved and signatures read again;
- a workload, pod or namespace label that changes: the views new to the scanner.

Everything is read from watch-fed caches (Pods, ReplicaSets, Deployments, StatefulSets,
DaemonSets, Jobs, CronJobs, Namespaces, imageward's own PolicyReports), never with a
GET per object; registry lookups go through `source.ScanSource` (once per scan, capped,
within budget). Writes happen only when what would be written differs from what the
caches hold: PolicyReports, the ClusterPolicyReport, ImagePolicy `status.violations`,
ImagePolicyException `status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import functools
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import kubernetes

from imageward import checker, constants, errors, kube, metrics, policystore, runtime
from imageward.admission import workloads
from imageward.exceptions import model as exceptions_model
from imageward.policy import evaluate
from imageward.prepull import reflector
from imageward.registry import auth as registry_auth
from imageward.reports import build, source, targets

logger = logging.getLogger(__name__)

#: Seconds one check of one view may take in a scan (each registry call keeps its own
#: deadline, IMAGEWARD_REGISTRY_LOOKUP_DEADLINE; budget waits happen before those).
SCAN_DEADLINE = 600.0
POLL = 1.0  # seconds between looks at the policy store (it has no change callback)
DEBOUNCE = 0.5  # seconds a burst of watch events is let settle before a pass
_START_TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True, slots=True)
class Existing:
    """A report imageward wrote, as its watch keeps it."""

    namespace: str | None
    name: str
    resource_version: str
    content: Mapping[str, Any]


def _content(body: Mapping[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    return {
        "labels": {k: v for k, v in (metadata.get("labels") or {}).items() if k in build.LABELS},
        "annotations": {k: v for k, v in annotations.items() if k == build.ANNOTATION_OMITTED},
        "summary": body.get("summary") or {},
        "results": body.get("results") or [],
    }


def project_report(body: Mapping[str, Any]) -> Existing | None:
    metadata = body.get("metadata") or {}
    if metadata.get("name") != build.REPORT_NAME:
        return None
    return Existing(
        namespace=metadata.get("namespace"),
        name=str(metadata["name"]),
        resource_version=str(metadata.get("resourceVersion") or ""),
        content=_content(body),
    )


def project_namespace(body: Mapping[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """A namespace's labels; None for one being deleted (nothing is written there: the
    API server refuses new objects in it, and its workloads are going)."""
    metadata = body.get("metadata") or {}
    if metadata.get("deletionTimestamp") or (body.get("status") or {}).get("phase") == (
        "Terminating"
    ):
        return None
    labels = metadata.get("labels") or {}
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


T = TypeVar("T")


class PagedReflector(reflector.Reflector[T]):
    """The scanner's name for the base Reflector, which projects each page of a list as
    it arrives (off the event loop): ten thousand Pods are about 170 MiB of parsed JSON
    when a whole list is kept until its last page."""


_WORKLOAD_LISTS = {
    "Deployment": ("apps", "list_deployment_for_all_namespaces"),
    "StatefulSet": ("apps", "list_stateful_set_for_all_namespaces"),
    "DaemonSet": ("apps", "list_daemon_set_for_all_namespaces"),
    "Job": ("batch", "list_job_for_all_namespaces"),
    "CronJob": ("batch", "list_cron_job_for_all_namespaces"),
}


class Inventory:
    """The scanner's watch-fed caches; every change wakes the scanner."""

    def __init__(self, client: kube.Kube, *, max_items: int, on_change: Any) -> None:
        def follow(what: str, list_fn: Any, project: Any, **kwargs: Any) -> Any:
            return PagedReflector(
                client,
                what=what,
                list_fn=list_fn,
                project=project,
                max_items=max_items,
                on_change=on_change,
                **kwargs,
            )

        self.pods: reflector.Reflector[targets.Record] = follow(
            "Pods (scan)", client.core.list_pod_for_all_namespaces, targets.project_pod
        )
        self.replica_sets: reflector.Reflector[targets.Record] = follow(
            "ReplicaSets (scan)",
            client.apps.list_replica_set_for_all_namespaces,
            targets.project_replica_set,
        )
        self.workloads: dict[str, reflector.Reflector[targets.Record]] = {}
        for kind, (group, method) in _WORKLOAD_LISTS.items():
            api = client.apps if group == "apps" else client.batch
            self.workloads[kind] = follow(
                f"{kind}s (scan)",
                getattr(api, method),
                functools.partial(targets.project_workload, kind),
            )
        self.namespaces: reflector.Reflector[tuple[tuple[str, str], ...]] = follow(
            "Namespaces (scan)", client.core.list_namespace, project_namespace
        )
        self.reports: reflector.Reflector[Existing] = follow(
            "PolicyReports",
            client.custom.list_cluster_custom_object,
            project_report,
            args=(build.REPORT_GROUP, build.REPORT_VERSION, build.POLICY_REPORTS),
            label_selector=build.SELECTOR,
        )
        self.cluster_reports: reflector.Reflector[Existing] = follow(
            "ClusterPolicyReports",
            client.custom.list_cluster_custom_object,
            project_report,
            args=(build.REPORT_GROUP, build.REPORT_VERSION, build.CLUSTER_POLICY_REPORTS),
            label_selector=build.SELECTOR,
        )

    def all(self) -> list[reflector.Reflector[Any]]:
        return [
            self.pods,
            self.replica_sets,
            *self.workloads.values(),
            self.namespaces,
            self.reports,
            self.cluster_reports,
        ]

    async def start(self) -> None:
        await asyncio.gather(*(r.start(wait=_START_TIMEOUT) for r in self.all()))

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.all()))

    def workload_version(self) -> tuple[int, ...]:
        followed: list[reflector.Reflector[Any]] = [
            self.pods,
            self.replica_sets,
            *self.workloads.values(),
            self.namespaces,
        ]
        return tuple(r.version for r in followed)

    def overflowed(self) -> list[str]:
        return [r.what for r in self.all() if r.store.overflowed]


@dataclasses.dataclass(slots=True)
class PassStats:
    """What one pass did (the last one is kept, for tests and the benchmark)."""

    trigger: str = ""
    targets: int = 0
    checks: int = 0
    images: int = 0
    lookups: int = 0
    shared: int = 0
    requests: int = 0
    budget_wait: float = 0.0
    writes: int = 0
    seconds: float = 0.0


def _address_free(text: str) -> str:
    return re.sub(r" at 0x[0-9a-f]+", "", text)


def _authority_print(authority: object) -> tuple[Any, ...]:
    """What identifies an authority's key material (a change means: scan again)."""
    name = getattr(authority, "name", "")
    key = getattr(authority, "key", None)
    if key is not None and hasattr(key, "spki"):
        return ("key", name, key.spki)
    identity = getattr(authority, "identity", None)
    if identity is not None:
        root = getattr(authority, "trusted_root", None)
        return ("keyless", name, str(identity), getattr(root, "digest", None))
    return ("other", name, _address_free(repr(authority)))


def build_fingerprint(loaded: policystore.LoadedPolicy) -> tuple[Any, ...]:
    """A policy as far as scan results depend on it: its generation, whether it could
    be loaded, and its resolved key material."""
    return (
        loaded.generation,
        loaded.usable,
        loaded.reason,
        tuple(_authority_print(a) for a in loaded.authorities),
        tuple(
            (entry.name, tuple(_authority_print(a) for a in entry.authorities))
            for entry in loaded.attestations
        ),
    )


_Job = tuple[build.CheckKey, Sequence[policystore.LoadedPolicy], Sequence[str]]


class Scanner:
    def __init__(self, state: runtime.Runtime) -> None:
        self.runtime = state
        self.settings = state.settings.scan
        self.excluded = frozenset(
            {state.settings.namespace, *state.settings.admission.excluded_namespaces}
        )
        self.budget = source.Budget(self.settings.registry_requests_per_minute)
        source.install_meter(state.source.client)
        self.inventory: Inventory | None = None
        self._kube: kube.Kube | None = None
        self.last: PassStats | None = None
        self.passes = 0
        self._leases: set[str] = set()
        self._deleted: set[str] = set()
        self._draining = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reset()

    def _reset(self) -> None:
        self._checks: dict[build.CheckKey, dict[str, build.ImageResult]] = {}
        self._prints: dict[str, tuple[Any, ...]] = {}
        self._targets: dict[targets.TargetKey, targets.Target] = {}
        self._versions: tuple[int, ...] = ()
        self._wanted: set[build.CheckKey] = set()
        self._inputs: tuple[Any, ...] = ()
        self._published: tuple[Any, ...] = ()
        self._rendered: build.Rendered | None = None
        self._first_seen: dict[build.SeenKey, int] = {}
        self._violations: dict[str, int] = {}
        self._gauges: set[tuple[str, str]] = set()
        self._modes: set[tuple[str, str]] = set()
        self._next_full = 0.0
        self._reports_missing_logged = False

    # -- leadership ------------------------------------------------------------------------

    @property
    def _client(self) -> kube.Kube:
        return self._kube or self.runtime.kube

    @property
    def leading(self) -> bool:
        return bool(self._leases)

    async def acquire(self, policy: str) -> None:
        """A policy's daemon runs: this replica leads; scan (starting if need be)."""
        self._leases.add(policy)
        self._deleted.discard(policy)
        if not self.settings.enabled:
            return
        self._draining = False
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="imageward background scans")
        self._wake.set()

    async def release(self, policy: str, *, deleted: bool) -> None:
        """A policy's daemon stops: the policy was deleted (forget its results), or the
        replica pauses or exits (every daemon stops: stop scanning at once)."""
        self._leases.discard(policy)
        if deleted:
            self._deleted.add(policy)
        if self._leases:
            self._wake.set()
        elif deleted and self._task is not None and not self._task.done():
            self._draining = True  # one last pass for what remains, then stop
            self._wake.set()
        else:
            await self.close()

    async def close(self) -> None:
        """Stop scanning now and drop every cache (the replica pauses or exits)."""
        self._closing = True
        try:
            task, self._task = self._task, None
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._shutdown()
        finally:
            self._closing = False

    async def _shutdown(self) -> None:
        if self.inventory is not None:
            await self.inventory.close()
            self.inventory = None
        if self._kube is not None:
            self._kube.close()
            self._kube = None
        # A replica that does not scan exports no scan gauges (the leader's are the truth).
        for policy, rule in self._gauges:
            with contextlib.suppress(KeyError):
                metrics.running_violations.remove(policy, rule)
        for policy, mode in self._modes:
            with contextlib.suppress(KeyError):
                metrics.policy_mode.remove(policy, mode)
        self._reset()

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.inventory is None:
                if self._kube is None:
                    self._kube = build_client(self.runtime.kube)
                inventory = Inventory(
                    self._kube,
                    max_items=self.settings.cache_max_objects,
                    on_change=self._wake.set,
                )
                try:
                    await inventory.start()
                except kube.KubeError as e:
                    logger.warning("background scans wait for their caches: %s", e)
                    await inventory.close()
                    await asyncio.sleep(10.0)
                    continue
                self.inventory = inventory
            await self._seed()
            self._next_full = time.monotonic()
            while True:
                try:
                    await self.run_pass()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("background scan pass failed; the next one retries")
                if self._draining and not self._leases:
                    break  # the last policy went: its results are cleared now
                await self._sleep()
        finally:
            if not self._closing:  # drained, not stopped by close()
                self._draining = False
                await self._shutdown()
                if self._leases and self.settings.enabled:  # a policy came back meanwhile
                    self._task = asyncio.create_task(self._run(), name="imageward background scans")

    async def _sleep(self) -> None:
        timeout = max(0.0, self._next_full - time.monotonic())
        rendered = self._rendered
        now = datetime.datetime.now(datetime.UTC)
        if rendered is not None and rendered.next_change is not None:
            timeout = min(timeout, max(0.0, (rendered.next_change - now).total_seconds()))
        expiring = self._next_expiry(now)
        if expiring is not None:
            timeout = min(timeout, max(0.0, (expiring - now).total_seconds()))
        timeout = min(timeout, POLL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        if self._wake.is_set():
            await asyncio.sleep(DEBOUNCE)  # let a burst of events settle
        self._wake.clear()

    def _next_expiry(self, now: datetime.datetime) -> datetime.datetime | None:
        times = [
            item.expires
            for item in self.runtime.exceptions.items.values()
            if isinstance(item, exceptions_model.PolicyException) and item.expires > now
        ]
        return min(times) if times else None

    async def _seed(self) -> None:
        """What was written before this replica led: report timestamps (so unchanged
        results keep theirs) and each policy's status.violations."""
        assert self.inventory is not None
        for existing in [*self.inventory.reports.items.values()]:
            self._first_seen.update(build.parse_first_seen(existing.content))
        for existing in self.inventory.cluster_reports.items.values():
            self._first_seen.update(
                build.parse_first_seen({"kind": "ClusterPolicyReport", **existing.content})
            )
        try:
            listing = await self.runtime.kube.call(
                "list ImagePolicies",
                self.runtime.kube.custom.list_cluster_custom_object,
                constants.GROUP,
                constants.VERSION,
                constants.IMAGEPOLICY_PLURAL,
            )
        except kube.KubeError as e:
            logger.warning("status.violations of every policy will be written again: %s", e)
            return
        for item in (listing or {}).get("items") or []:
            name = (item.get("metadata") or {}).get("name")
            value = (item.get("status") or {}).get("violations")
            if isinstance(name, str) and isinstance(value, int):
                self._violations[name] = value

    def _policies(self) -> list[policystore.LoadedPolicy]:
        current = self.runtime.store.snapshot()
        names = {p.name for p in current}
        self._deleted &= names  # gone from the store: nothing left to exclude
        return [p for p in current if p.name not in self._deleted]

    async def run_pass(self) -> PassStats:
        """One pass: find what needs checking, check it, build and write what changed."""
        inventory = self.inventory
        assert inventory is not None
        started = time.monotonic()
        policies = self._policies()
        prints = {p.name: build_fingerprint(p) for p in policies}
        if inventory.workload_version() != self._versions:
            self._versions = inventory.workload_version()
            namespaces = dict(inventory.namespaces.items)
            built = targets.build_targets(
                inventory.pods.items.values(),
                inventory.replica_sets.items.values(),
                [r for cache in inventory.workloads.values() for r in cache.items.values()],
                excluded=self.excluded,
            )
            # Namespaces being deleted (or not seen yet) are left out.
            self._targets = {k: t for k, t in built.items() if t.namespace in namespaces}
            self._wanted = {
                (view, namespaces.get(view.namespace, ()))
                for target in self._targets.values()
                for view in target.views
            }
            for key in [k for k in self._checks if k not in self._wanted]:
                del self._checks[key]
        removed = set(self._prints) - set(prints)
        if removed:
            for per_image in self._checks.values():
                for image, found in list(per_image.items()):
                    if removed & set(found.results):
                        per_image[image] = dataclasses.replace(
                            found,
                            results={k: v for k, v in found.results.items() if k not in removed},
                        )

        jobs: list[_Job] = []
        trigger = ""
        if policies and started >= self._next_full:
            trigger = "interval"
            jobs = [(key, policies, key[0].images) for key in self._wanted]
            self._next_full = started + self.settings.interval
        else:
            changed = [p for p in policies if self._prints.get(p.name) != prints[p.name]]
            if changed:
                trigger = "policy"
                for key in self._checks:
                    view, labels = key
                    for policy in changed:
                        jobs.append((key, [policy], _matched(policy, view, labels)))
            fresh = [key for key in self._wanted if key not in self._checks]
            if fresh and policies:
                trigger = trigger or "workload"
                jobs += [(key, policies, key[0].images) for key in fresh]
            else:
                for key in fresh:
                    self._checks[key] = {}
        self._prints = prints

        stats = PassStats(trigger=trigger or "none", targets=len(self._targets))
        if jobs:
            scan = source.ScanSource(
                self.runtime.source, self.budget, concurrency=self.settings.concurrency
            )
            waited = self.budget.waited
            await self._run_jobs(jobs, scan)
            stats.checks = len(jobs)
            stats.images = sum(len(images) for _, _, images in jobs)
            stats.lookups, stats.shared = scan.stats.lookups, scan.stats.shared
            stats.requests = scan.stats.requests
            stats.budget_wait = self.budget.waited - waited

        stats.writes = await self._publish(policies, scanned={key for key, _, _ in jobs})
        stats.seconds = time.monotonic() - started
        if jobs:
            metrics.scan_duration.labels(trigger=stats.trigger).observe(stats.seconds)
            logger.info(
                "scan (%s): %d workloads, %d checks of %d images, %d registry lookups "
                "(%d shared) sending %d requests (lookups waited %.1fs in all for budget), "
                "%d writes, %.2fs",
                stats.trigger,
                stats.targets,
                stats.checks,
                stats.images,
                stats.lookups,
                stats.shared,
                stats.requests,
                stats.budget_wait,
                stats.writes,
                stats.seconds,
            )
            overflowed = inventory.overflowed()
            if overflowed:
                logger.warning(
                    "scan caches full (IMAGEWARD_SCAN_CACHE_MAX_OBJECTS): %s; objects past "
                    "the cap are not scanned",
                    ", ".join(overflowed),
                )
        self.last = stats
        self.passes += 1
        return stats

    async def _run_jobs(self, jobs: Sequence[_Job], scan: source.ScanSource) -> None:
        queue: asyncio.Queue[_Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        credentials: dict[tuple[str, str, tuple[str, ...]], asyncio.Task[Any]] = {}

        async def credentials_for(view: targets.View) -> list[registry_auth.DockerConfig]:
            key = (view.namespace, view.service_account, view.pull_secrets)
            task = credentials.get(key)
            if task is None:
                task = asyncio.ensure_future(self.runtime.credentials_for(view.pod_view()))
                credentials[key] = task
            found: list[registry_auth.DockerConfig] = await asyncio.shield(task)
            return found

        async def worker() -> None:
            while True:
                try:
                    key, policies, images = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                view, labels = key
                previous = self._checks.get(key, {})
                if not images:
                    self._checks[key] = _merge(previous, {}, policies, view.images)
                    continue
                try:
                    context = checker.Context(
                        namespace_labels=dict(labels),
                        pod_labels=view.pod_labels,
                        platform=workloads.parse_platform(view.pod_view()),
                        credentials=await credentials_for(view),
                        namespace=view.namespace,
                        count_metrics=False,
                    )
                    outcome = await checker.check_images(
                        images, policies, context, source=scan, deadline=SCAN_DEADLINE
                    )
                except (kube.KubeError, errors.ImagewardError) as e:
                    logger.warning("scan of %s in %s skipped: %s", images, view.namespace, e)
                    continue
                found = {
                    item.image: build.ImageResult(
                        item.digest, {result.policy: result for result in item.results}
                    )
                    for item in outcome.images
                }
                self._checks[key] = _merge(previous, found, policies, view.images)

        workers = min(len(jobs), max(1, self.settings.concurrency * 4))
        for failure in await asyncio.gather(
            *(worker() for _ in range(workers)), return_exceptions=True
        ):
            if isinstance(failure, BaseException):
                logger.error("a scan worker failed", exc_info=failure)

    # -- writing ---------------------------------------------------------------------------

    async def _publish(
        self, policies: Sequence[policystore.LoadedPolicy], *, scanned: set[build.CheckKey]
    ) -> int:
        inventory = self.inventory
        assert inventory is not None
        now = datetime.datetime.now(datetime.UTC)
        infos = {p.name: build.build_policy_info(p.name, p.policy) for p in policies}
        exceptions = self.runtime.exceptions
        by_namespace = {
            namespace: exceptions.for_namespace(namespace)
            for namespace in {t.namespace for t in self._targets.values()}
        }
        rendered = self._rendered
        inputs = (
            id(self._targets),
            self._versions,
            tuple(sorted(infos.items(), key=lambda item: item[0])),
            exceptions.version,
        )
        expired = (
            rendered is not None
            and rendered.next_change is not None
            and (now >= rendered.next_change)
        )
        if rendered is None or scanned or inputs != self._inputs or expired:
            rendered = build.build_reports(
                self._targets,
                self._checks,
                dict(inventory.namespaces.items),
                infos,
                by_namespace,
                now=now,
                first_seen=self._first_seen,
                max_results=self.settings.report_max_results,
            )
            self._first_seen = rendered.first_seen
            self._inputs = inputs
            self._rendered = rendered
            if scanned:
                checked = {view for view, _ in scanned}
                for key, target in self._targets.items():
                    if target.views & checked:
                        result = rendered.worst.get(key, "none")
                        metrics.scan_workloads.labels(result=result).inc()
            self._set_gauges(rendered, infos)
        # Compared with what the caches hold only when something could differ: a new
        # build, a report changed by someone else (or our own write coming back), an
        # exception changed, or one reaching its expiry.
        expiry = self._next_expiry(now)
        published = (
            id(rendered),
            inventory.reports.version,
            inventory.cluster_reports.version,
            exceptions.version,
            expiry,
        )
        if published == self._published:
            return 0
        self._published = published
        writes = 0
        if self.settings.reports:
            writes += await self._write_reports(rendered)
        writes += await self._write_violations(rendered)
        writes += await self._write_exception_states(infos, now)
        return writes

    def _set_gauges(self, rendered: build.Rendered, infos: Mapping[str, build.PolicyInfo]) -> None:
        for key in self._gauges - set(rendered.running):
            with contextlib.suppress(KeyError):
                metrics.running_violations.remove(*key)
        for (policy, rule), count in rendered.running.items():
            metrics.running_violations.labels(policy=policy, rule=rule).set(count)
        self._gauges = set(rendered.running)
        modes = {(name, info.mode.value) for name, info in infos.items()}
        for key in self._modes - modes:
            with contextlib.suppress(KeyError):
                metrics.policy_mode.remove(*key)
        for policy, mode in modes:
            metrics.policy_mode.labels(policy=policy, mode=mode).set(1)
        self._modes = modes

    async def _write_reports(self, rendered: build.Rendered) -> int:
        inventory = self.inventory
        assert inventory is not None
        kube_api = self._client
        writes = 0
        existing = {e.namespace or "": e for e in inventory.reports.items.values()}
        live = inventory.namespaces.items
        try:
            for namespace, body in sorted(rendered.reports.items()):
                found = existing.get(namespace)
                if found is not None and found.content == _content(body):
                    continue
                if namespace not in live:
                    continue  # being deleted: the API server refuses new objects there
                writes += await self._put(
                    "PolicyReport",
                    body,
                    found,
                    create=functools.partial(
                        kube_api.custom.create_namespaced_custom_object,
                        build.REPORT_GROUP,
                        build.REPORT_VERSION,
                        namespace,
                        build.POLICY_REPORTS,
                    ),
                    replace=functools.partial(
                        kube_api.custom.replace_namespaced_custom_object,
                        build.REPORT_GROUP,
                        build.REPORT_VERSION,
                        namespace,
                        build.POLICY_REPORTS,
                        build.REPORT_NAME,
                    ),
                )
            for namespace in sorted(set(existing) - set(rendered.reports)):
                if namespace not in live:
                    continue  # the namespace controller deletes it with its namespace
                await kube_api.call(
                    f"delete PolicyReport {namespace}/{build.REPORT_NAME}",
                    kube_api.custom.delete_namespaced_custom_object,
                    build.REPORT_GROUP,
                    build.REPORT_VERSION,
                    namespace,
                    build.POLICY_REPORTS,
                    build.REPORT_NAME,
                )
                metrics.report_writes.labels(kind="PolicyReport", verb="delete").inc()
                writes += 1
            cluster = rendered.cluster
            found = next(iter(inventory.cluster_reports.items.values()), None)
            if cluster["results"]:
                if found is None or found.content != _content(cluster):
                    writes += await self._put(
                        "ClusterPolicyReport",
                        cluster,
                        found,
                        create=functools.partial(
                            kube_api.custom.create_cluster_custom_object,
                            build.REPORT_GROUP,
                            build.REPORT_VERSION,
                            build.CLUSTER_POLICY_REPORTS,
                        ),
                        replace=functools.partial(
                            kube_api.custom.replace_cluster_custom_object,
                            build.REPORT_GROUP,
                            build.REPORT_VERSION,
                            build.CLUSTER_POLICY_REPORTS,
                            build.REPORT_NAME,
                        ),
                    )
            elif found is not None:
                await kube_api.call(
                    "delete ClusterPolicyReport",
                    kube_api.custom.delete_cluster_custom_object,
                    build.REPORT_GROUP,
                    build.REPORT_VERSION,
                    build.CLUSTER_POLICY_REPORTS,
                    build.REPORT_NAME,
                )
                metrics.report_writes.labels(kind="ClusterPolicyReport", verb="delete").inc()
                writes += 1
        except _ReportsMissing:
            if not self._reports_missing_logged:
                logger.warning(
                    "the wgpolicyk8s.io PolicyReport CRDs are not installed: no reports are "
                    "written (status.violations and metrics still are)"
                )
                self._reports_missing_logged = True
        return writes

    async def _put(
        self,
        kind: str,
        body: Mapping[str, Any],
        found: Existing | None,
        *,
        create: Any,
        replace: Any,
    ) -> int:
        kube_api = self._client
        namespace = body["metadata"].get("namespace")
        where = f"{kind} {namespace + '/' if namespace else ''}{build.REPORT_NAME}"
        try:
            if found is None:
                answer = await kube_api.call(f"create {where}", create, body)
                verb = "create"
            else:
                updated = {
                    **body,
                    "metadata": {**body["metadata"], "resourceVersion": found.resource_version},
                }
                answer = await kube_api.call(f"replace {where}", replace, updated)
                verb = "update"
        except kube.KubeError as e:
            if e.status == 409:
                return 0  # someone else wrote it meanwhile: the watch brings it, try again
            if e.status == 403 and "being terminated" in str(e):
                return 0  # its namespace began terminating since the cache last said
            raise
        if answer is None:
            raise _ReportsMissing()
        metrics.report_writes.labels(kind=kind, verb=verb).inc()
        return 1

    async def _write_violations(self, rendered: build.Rendered) -> int:
        kube_api = self._client
        writes = 0
        for policy, count in sorted(rendered.violations.items()):
            if self._violations.get(policy) == count:
                continue
            answer = await kube_api.call(
                f"patch ImagePolicy {policy} status",
                kube_api.custom.patch_cluster_custom_object_status,
                constants.GROUP,
                constants.VERSION,
                constants.IMAGEPOLICY_PLURAL,
                policy,
                {"status": {"violations": count}},
                _content_type="application/merge-patch+json",
            )
            if answer is not None:
                self._violations[policy] = count
                metrics.report_writes.labels(kind="ImagePolicy", verb="patch").inc()
                writes += 1
        return writes

    async def _write_exception_states(
        self, infos: Mapping[str, build.PolicyInfo], now: datetime.datetime
    ) -> int:
        kube_api = self._client
        writes = 0
        live = self.inventory.namespaces.items if self.inventory is not None else {}
        for item in list(self.runtime.exceptions.items.values()):
            if isinstance(item, exceptions_model.PolicyException) and item.deleting:
                continue
            if item.namespace not in live:
                continue
            status = build.build_exception_status(item, infos, now)
            if dict(item.status) == status:
                continue
            answer = await kube_api.call(
                f"patch ImagePolicyException {item.key} status",
                kube_api.custom.patch_namespaced_custom_object_status,
                constants.GROUP,
                constants.VERSION,
                item.namespace,
                exceptions_model.PLURAL,
                item.name,
                {"status": status},
                _content_type="application/merge-patch+json",
            )
            if answer is None:
                continue
            metrics.report_writes.labels(kind="ImagePolicyException", verb="patch").inc()
            writes += 1
            if status["state"] == "Expired" and item.status.get("state") == "Active":
                self.runtime.post_event(
                    namespace=item.namespace,
                    involved={
                        "apiVersion": constants.API_VERSION,
                        "kind": exceptions_model.KIND,
                        "name": item.name,
                        "namespace": item.namespace,
                    },
                    reason="ImagePolicyExceptionExpired",
                    message=f"ImagePolicyException {item.key} {status['message']}",
                )
        return writes


def build_client(base: kube.Kube) -> kube.Kube:
    """A client of the scanner's own, with a connection pool its nine watches and its
    writes fit in (the shared client's pool is sized for admission's reads)."""
    configuration = copy.deepcopy(base.api_client.configuration)
    configuration.connection_pool_maxsize = 32
    return kube.Kube(kubernetes.client.ApiClient(configuration))


class _ReportsMissing(Exception):
    """The PolicyReport CRDs are not served (a create answered 404)."""


def _matched(policy: policystore.LoadedPolicy, view: targets.View, labels: Any) -> list[str]:
    """The view's images a policy matches (decided without any registry call)."""
    found = []
    for image in view.images:
        try:
            if evaluate.evaluate_match(
                policy.match,
                image,
                namespace_labels=dict(labels),
                pod_labels=view.pod_labels,
            ):
                found.append(image)
        except errors.InvalidReferenceError:
            found.append(image)  # the checker refuses it, naming why
    return found


def _merge(
    previous: Mapping[str, build.ImageResult],
    found: Mapping[str, build.ImageResult],
    policies: Sequence[policystore.LoadedPolicy],
    images: Sequence[str],
) -> dict[str, build.ImageResult]:
    """Results of `policies` replaced by what was `found` (for the images checked) or
    dropped (images these policies no longer match); other policies' results kept."""
    names = {p.name for p in policies}
    merged: dict[str, build.ImageResult] = {}
    for image in images:
        old = previous.get(image)
        kept = {k: v for k, v in (old.results if old else {}).items() if k not in names}
        new = found.get(image)
        if new is not None:
            kept.update(new.results)
        digest = new.digest if new is not None and new.digest else (old.digest if old else None)
        merged[image] = build.ImageResult(digest, kept)
    return merged
