"""The long-running node agent: every plan it serves, from plan files or from the cluster.

`imageward agent --from-cluster` (the chart's DaemonSet, in the operator's namespace):
- plans: the plan ConfigMaps of that namespace (one watch, one label selector; the
  agent's ServiceAccount may read ConfigMaps there, and no Secret anywhere). A plan is
  applied when its nodeSelector and tolerations select this node (the Node is read with
  `get nodes`, again every `--node-refresh`);
- credentials: sealed in the plan ConfigMap, opened with the key file of the mounted key
  Secret (`sealing`);
- reports: one condition per plan on this agent's own pod (`pods/status` patch only;
  `reports`), written when a status or reason changes, or the message after
  `--report-interval`;
- a plan that goes away (its PrePull deleted, its node no longer selected) has its
  leases released at once; at start-up, leases this agent made for plans that are gone
  are swept.

`imageward agent --plan FILE...` follows plan files (re-read every `--poll-interval`)
and reports on /readyz only.

/readyz: 200 when the agent serves (files: every plan held; cluster: plans listed and
the node read), JSON with every plan's progress either way; /healthz; /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import pathlib
import signal
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from imageward import errors, kube, metrics
from imageward.prepull import agent, containerd, nodes, plans, reflector, reports, sealing
from imageward.registry import auth, client

logger = logging.getLogger(__name__)

_RETRY_FIRST, _RETRY_MAX = 5.0, 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class PlanObject:
    """A plan ConfigMap as the cluster agent keeps it: parsed, or why it cannot be."""

    key: str
    name: str
    plan: agent.AgentPlan | None
    error: str | None = None
    sealed: str | None = None


def project_plan_object(body: Mapping[str, Any]) -> PlanObject | None:
    """Pure: a plan ConfigMap to a PlanObject; None for ConfigMaps that are not plans
    (no identity, or one that does not hash to its key label)."""
    identity = plans.parse_plan_identity(body)
    if identity is None:
        return None
    metadata = body.get("metadata") or {}
    name = f"{metadata.get('namespace')}/{metadata.get('name')}"
    key = plans.build_prepull_key(*identity)
    data = body.get("data") or {}
    text = data.get(plans.PLAN_KEY)
    sealed = data.get(plans.CREDENTIALS_KEY)
    if not isinstance(text, str):
        return PlanObject(key, name, None, f"ConfigMap {name} has no {plans.PLAN_KEY}")
    if len(text) > agent.MAX_PLAN_FILE:
        return PlanObject(
            key, name, None, f"ConfigMap {name}: plan over {agent.MAX_PLAN_FILE} bytes"
        )
    try:
        plan = agent.parse_plan(text, source=f"ConfigMap {name}")
    except agent.PlanFileError as e:
        return PlanObject(key, name, None, str(e))
    if plan.key != key:
        return PlanObject(
            key,
            name,
            None,
            f"ConfigMap {name}: the plan names PrePull {plan.prepull.display}, "
            "not the one its annotations name",
        )
    return PlanObject(key, name, plan, None, sealed if isinstance(sealed, str) else None)


@dataclasses.dataclass(frozen=True, slots=True)
class Wanted:
    """A plan to serve (or, with `error`, one that cannot be used as it is now)."""

    key: str
    plan: agent.AgentPlan | None
    credentials: tuple[auth.DockerConfig, ...] | None = None
    error: str | None = None


class Shared:
    """What every plan's work shares: containerd clients, the registry client, pacing."""

    def __init__(self, options: agent.Options) -> None:
        self.options = options
        self.limiter = agent.RateLimiter(options.max_bytes_per_second)
        self._ctr: dict[str, containerd.Client] = {}
        self._registry: client.RegistryClient | None = None

    def ctr(self, namespace: str) -> containerd.Client:
        if namespace not in self._ctr:
            self._ctr[namespace] = containerd.Client(self.options.socket, namespace)
        return self._ctr[namespace]

    @property
    def registry(self) -> client.RegistryClient:
        if self._registry is None:
            self._registry = client.RegistryClient(self.options.registry)
        return self._registry

    async def close(self) -> None:
        for ctr in self._ctr.values():
            await ctr.close()
        if self._registry is not None:
            await self._registry.close()


class PlanRunner:
    """One plan: (re)apply it when it changes, retry failures with backoff, come back to
    a held plan every `--resync-interval` and before its lease is due for renewal."""

    def __init__(self, key: str, shared: Shared) -> None:
        self.key = key
        self.shared = shared
        self.options = shared.options
        self.progress = agent.Progress(node=self.options.node)
        self.plan: agent.AgentPlan | None = None
        self.credentials: tuple[auth.DockerConfig, ...] | None = None
        self.error: str | None = None
        self.task: asyncio.Task[bool] | None = None
        self.task_plan: tuple[agent.AgentPlan, Any] | None = None
        self.agent: agent.Agent | None = None
        self.next_apply = 0.0
        self.backoff = _RETRY_FIRST

    def update(self, wanted: Wanted) -> None:
        self.error = wanted.error
        if wanted.plan is None:
            return  # keep holding what we hold (a plan being rewritten, a key not mounted)
        if wanted.plan == self.plan and wanted.credentials == self.credentials:
            return
        if wanted.plan != self.plan:
            logger.info(
                "plan %s for %s: %d layers, %d bytes",
                wanted.plan.hash,
                wanted.plan.prepull.display,
                len(wanted.plan.blobs),
                wanted.plan.bytes,
            )
        self.plan, self.credentials = wanted.plan, wanted.credentials
        self.next_apply = 0.0  # at once, replacing a running apply of an older plan
        self.backoff = _RETRY_FIRST
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def tick(self) -> None:
        if self.task is not None and self.task.done():
            self._finished(self.task)
            self.task = None
        if self.plan is not None and self.task is None and time.monotonic() >= self.next_apply:
            ctr = self.shared.ctr(self.plan.containerd_namespace)
            self.agent = agent.Agent(
                self.options, ctr, self.shared.registry, self.progress, limiter=self.shared.limiter
            )
            self.task = asyncio.create_task(
                self.agent.apply(self.plan, self.credentials), name=f"plan {self.key}"
            )
            self.task_plan = (self.plan, self.credentials)

    def _finished(self, task: asyncio.Task[bool]) -> None:
        now = time.monotonic()
        if task.cancelled() or self.task_plan != (self.plan, self.credentials):
            self.next_apply = 0.0  # replaced by a newer plan: apply that now
            return
        error = task.exception()
        if error is None and task.result():
            self.backoff = _RETRY_FIRST
            wait = self.options.resync_interval
            expires = self.agent.lease_expires if self.agent else None
            if expires is not None and self.options.lease_ttl > 0:
                renew_at = expires - datetime.timedelta(seconds=self.options.lease_ttl / 2)
                until = (renew_at - datetime.datetime.now(datetime.UTC)).total_seconds()
                wait = min(wait, max(until + 1, self.options.poll_interval))
            self.next_apply = now + wait
            return
        if error is not None:
            logger.error("applying plan %s failed: %s", self.key, error)
            self.progress.error = str(error)
        self.next_apply = now + self.backoff
        self.backoff = min(self.backoff * 2, _RETRY_MAX)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None

    @property
    def ready(self) -> bool:
        return self.error is None and self.progress.ready

    def summary(self) -> tuple[bool, str, str]:
        if self.error is not None:
            held = "no plan held" if self.plan is None else f"holding plan {self.plan.hash}"
            return False, reports.REASON_PLAN_UNUSABLE, f"{self.error} ({held})"
        return self.progress.summary()

    @property
    def plan_hash(self) -> str:
        return self.plan.hash if self.plan is not None else "none"

    def to_json(self) -> dict[str, Any]:
        return {**self.progress.to_json(), "key": self.key, "planError": self.error}


class FileSource:
    """Plan files, re-read every poll; a file that turns unreadable keeps its last plan."""

    def __init__(self, paths: tuple[pathlib.Path, ...]) -> None:
        self.paths = paths
        self.known: dict[pathlib.Path, agent.AgentPlan] = {}
        self.errors: dict[pathlib.Path, str] = {}
        self.logged: dict[pathlib.Path, str] = {}

    async def start(self) -> None:
        return None

    @property
    def ready(self) -> bool:
        return True

    @property
    def error(self) -> str | None:
        return None

    async def wanted(self) -> dict[str, Wanted]:
        result: dict[str, Wanted] = {}
        for path in self.paths:
            try:
                _, plan = agent.read_plan(path)
            except agent.PlanFileError as e:
                if self.logged.get(path) != str(e):
                    logger.error("%s", e)
                    self.logged[path] = str(e)
                known = self.known.get(path)
                if known is not None:
                    # Being rewritten, most likely: go on holding what it said last.
                    result[known.key] = Wanted(known.key, known)
                else:
                    result[f"file:{path}"] = Wanted(f"file:{path}", None, error=str(e))
                continue
            self.logged.pop(path, None)
            self.known[path] = plan
            result[plan.key] = Wanted(plan.key, plan)
        return result

    async def close(self) -> None:
        return None


class ClusterSource:
    """Plan ConfigMaps of the operator's namespace, for this node."""

    def __init__(self, options: agent.Options, cluster: agent.ClusterOptions, api: kube.Kube):
        self.options = options
        self.cluster = cluster
        self.kube = api
        self.changed = asyncio.Event()
        self.reflector: reflector.Reflector[PlanObject] = reflector.Reflector(
            api,
            what=f"plan ConfigMaps in {cluster.namespace}",
            list_fn=api.core.list_namespaced_config_map,
            args=(cluster.namespace,),
            label_selector=plans.build_selector_text(),
            project=project_plan_object,
            max_items=cluster.max_plans * 4,
            on_change=self.changed.set,
        )
        self.node: nodes.NodeView | None = None
        self.node_error: str | None = None
        self.node_read_at = 0.0
        self.key: bytes | None = None
        self.key_stamp: tuple[float, int] | None = None
        self.key_error: str | None = None

    async def start(self) -> None:
        with contextlib.suppress(kube.KubeError):
            await self.reflector.start(wait=0.1)

    @property
    def ready(self) -> bool:
        return self.reflector.synced.is_set() and self.node is not None

    @property
    def error(self) -> str | None:
        return self.node_error or self.reflector.error

    async def _read_node(self) -> None:
        name = self.options.node
        if not name:
            self.node_error = "no node name (--node or $NODE_NAME)"
            return
        if (
            self.node is not None
            and time.monotonic() - self.node_read_at < self.cluster.node_refresh
        ):
            return
        try:
            body = await self.kube.read_node(name)
        except kube.KubeError as e:
            self.node_error = f"cannot read Node {name}: {e}"
            logger.warning("%s", self.node_error)
            self.node_read_at = time.monotonic()  # try again after node_refresh, not at once
            return
        if body is None:
            self.node_error = f"Node {name} does not exist"
            return
        self.node = nodes.parse_node(body)
        self.node_error = None
        self.node_read_at = time.monotonic()

    def _read_key(self) -> bytes | None:
        path = self.cluster.key_path
        try:
            stat = path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if self.key is None or stamp != self.key_stamp:
                self.key = sealing.parse_key(path.read_bytes(), source=str(path))
                self.key_stamp = stamp
                self.key_error = None
        except OSError as e:
            self.key, self.key_error = None, f"key file {path}: {e.strerror or e}"
        except sealing.SealError as e:
            self.key, self.key_error = None, str(e)
        return self.key

    def _open(self, item: PlanObject) -> tuple[tuple[auth.DockerConfig, ...] | None, str | None]:
        if item.sealed is None:
            return (), None
        key = self._read_key()
        if key is None:
            return None, f"pull credentials cannot be opened: {self.key_error}"
        try:
            data = sealing.unseal(key, item.sealed, context=item.key)
            return tuple(plans.parse_credentials_document(data, source=item.name)), None
        except (sealing.SealError, errors.CredentialsError) as e:
            return None, f"pull credentials in {item.name}: {e}"

    async def wanted(self) -> dict[str, Wanted]:
        self.changed.clear()
        await self._read_node()
        if not self.reflector.synced.is_set() or self.node is None:
            return {}
        result: dict[str, Wanted] = {}
        for item in sorted(self.reflector.items.values(), key=lambda i: i.key):
            if item.plan is None:
                result[item.key] = Wanted(item.key, None, error=item.error)
            elif item.plan.selects(self.node):
                credentials, error = self._open(item)
                if error is not None:
                    result[item.key] = Wanted(item.key, None, error=error)
                else:
                    result[item.key] = Wanted(item.key, item.plan, credentials)
        if len(result) > self.cluster.max_plans:
            logger.warning(
                "%d plans select this node; serving the first %d (by key)",
                len(result),
                self.cluster.max_plans,
            )
            result = dict(list(result.items())[: self.cluster.max_plans])
        return result

    async def close(self) -> None:
        await self.reflector.close()


class Reporter:
    """This agent pod's per-plan conditions (strategic merge patches of pods/status)."""

    def __init__(self, api: kube.Kube, namespace: str, pod: str, interval: float) -> None:
        self.kube = api
        self.namespace = namespace
        self.pod = pod
        self.interval = interval
        self.current: list[dict[str, Any]] | None = None
        self.last = 0.0
        self.warned: str | None = None

    def _warn(self, text: str) -> None:
        if text != self.warned:
            logger.warning("%s", text)
            self.warned = text

    async def report(self, runners: Mapping[str, PlanRunner]) -> None:
        try:
            if self.current is None:
                pod = await self.kube.read_pod(self.namespace, self.pod)
                if pod is None:
                    self._warn(f"Pod {self.namespace}/{self.pod} not found: no reports")
                    return
                self.current = list((pod.get("status") or {}).get("conditions") or [])
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            by_type = {str(c.get("type")): c for c in self.current}
            wanted = {}
            for key, runner in runners.items():
                ready, reason, message = runner.summary()
                kind = reports.build_condition_type(key)
                wanted[kind] = reports.build_report_condition(
                    key,
                    plan_hash=runner.plan_hash,
                    ready=ready,
                    reason=reason,
                    message=message,
                    now=now,
                    previous=by_type.get(kind),
                )
            patch = reports.build_report_patch(self.current, wanted)
            if patch is None:
                return
            urgent = any(
                item.get("$patch") == "delete"
                or (by_type.get(item["type"]) or {}).get("status") != item.get("status")
                or (by_type.get(item["type"]) or {}).get("reason") != item.get("reason")
                for item in patch["status"]["conditions"]
            )
            if not urgent and time.monotonic() - self.last < self.interval:
                return
            result = await self.kube.patch_pod_status(self.namespace, self.pod, patch)
            self.last = time.monotonic()
            self.warned = None
            if result is None:
                self.current = None
                self._warn(f"Pod {self.namespace}/{self.pod} not found: no reports")
                return
            self.current = list((result.get("status") or {}).get("conditions") or [])
        except kube.KubeError as e:
            self.current = None  # read again: someone else may have changed them
            self._warn(f"reporting progress on Pod {self.namespace}/{self.pod} failed: {e}")


class Supervisor:
    """Serves every wanted plan with one PlanRunner each."""

    def __init__(
        self,
        options: agent.Options,
        source: FileSource | ClusterSource,
        reporter: Reporter | None = None,
    ) -> None:
        self.options = options
        self.source = source
        self.reporter = reporter
        self.shared = Shared(options)
        self.runners: dict[str, PlanRunner] = {}
        self.swept = False

    @property
    def ready(self) -> bool:
        if isinstance(self.source, ClusterSource):
            return self.source.ready
        return bool(self.runners) and all(r.ready for r in self.runners.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "node": self.options.node,
            "error": self.source.error,
            "plans": [self.runners[key].to_json() for key in sorted(self.runners)],
        }

    async def _forget(self, key: str) -> None:
        runner = self.runners.pop(key)
        await runner.close()
        if self.options.cluster is None or runner.plan is None:
            return
        try:
            await agent.release_leases(
                self.shared.ctr(runner.plan.containerd_namespace),
                key,
                display=runner.plan.prepull.display,
            )
        except errors.ContainerdError as e:
            logger.warning("releasing the leases of %s failed: %s", runner.plan.prepull.display, e)

    async def _sweep(self, keep: set[str]) -> None:
        cluster = self.options.cluster
        if cluster is None or self.swept:
            return
        try:
            await agent.sweep_leases(
                self.shared.ctr(plans.CONTAINERD_NAMESPACE), scope=cluster.namespace, keep=keep
            )
            self.swept = True
        except errors.ContainerdError as e:
            logger.warning("sweeping leases of gone plans failed: %s", e)

    async def step(self) -> None:
        wanted = await self.source.wanted()
        if not self.source.ready:
            # Plans not listed or the node not read yet: change nothing, above all never
            # release a lease because the API server did not answer.
            for runner in self.runners.values():
                runner.tick()
            return
        for key in [k for k in self.runners if k not in wanted]:
            await self._forget(key)
        for key, item in wanted.items():
            if key not in self.runners:
                self.runners[key] = PlanRunner(key, self.shared)
            runner = self.runners[key]
            runner.update(item)
            runner.tick()
        await self._sweep(set(wanted))
        if self.reporter is not None:
            await self.reporter.report(self.runners)

    async def run(self, stop: asyncio.Event) -> None:
        await self.source.start()
        changed = self.source.changed if isinstance(self.source, ClusterSource) else None
        while not stop.is_set():
            await self.step()
            waiters = [asyncio.ensure_future(stop.wait())]
            if changed is not None:
                waiters.append(asyncio.ensure_future(changed.wait()))
            _, pending = await asyncio.wait(
                waiters, timeout=self.options.poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending:
                waiter.cancel()

    async def close(self) -> None:
        for runner in self.runners.values():
            await runner.close()
        await self.source.close()
        await self.shared.close()


def build_app(supervisor: Supervisor) -> web.Application:
    async def readyz(request: web.Request) -> web.Response:
        return web.json_response(supervisor.to_json(), status=200 if supervisor.ready else 503)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def metrics_(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_)
    return app


def build_supervisor(options: agent.Options) -> Supervisor:
    cluster = options.cluster
    if cluster is None:
        return Supervisor(options, FileSource(options.plan_paths))
    api = kube.Kube(kube.build_api_client(cluster.kubeconfig))
    reporter = (
        Reporter(api, cluster.namespace, cluster.pod, cluster.report_interval)
        if cluster.pod
        else None
    )
    if reporter is None:
        logger.warning("no pod name ($POD_NAME): progress is served on /readyz only")
    return Supervisor(options, ClusterSource(options, cluster, api), reporter)


async def run_forever(options: agent.Options, *, stop: asyncio.Event | None = None) -> None:
    """Serve /readyz and /metrics and every plan until SIGTERM/SIGINT (or `stop`);
    leases stay in place (they expire unless an agent renews them)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    supervisor = build_supervisor(options)
    runner = web.AppRunner(build_app(supervisor), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = agent.parse_listen(options.listen)
    await web.TCPSite(runner, host, port).start()
    logger.info("agent serving /readyz and /metrics on %s:%d", host, port)
    try:
        await supervisor.run(stop)
    finally:
        await supervisor.close()
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
    logger.info("agent stopped; its leases stay (they expire unless an agent renews them)")
