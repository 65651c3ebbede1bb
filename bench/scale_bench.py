"""Benchmark of the operator's cost as the cluster grows: does it follow change, or size?

    .venv/bin/python bench/scale_bench.py [--nodes 100,300,1000] [--more 2000]
        [--prepulls 5] [--window 60] [--reviews 1500] [--keep] [--stacks]
        [--admission-process own|shared] [--control-plane-on-cpu1]

`--stacks` is a diagnosis, not a measurement: the operator's loop log (kept with
`--keep`) then names the code behind each slow callback and what each slow full garbage
collection walked (bench/loopwatch.py), at a cost of about 2.5% of a core.

The local control plane with N kwok nodes (kube-controller-manager and kube-scheduler
with --kube-api-qps 500 / --kube-api-burst 1000, as large clusters run them, so the
DaemonSets' own rollout is not throttled at client-go's default 20 requests/s), an
anonymous registry, and `imageward run --standalone` under the chart's ServiceAccount and
RBAC, pinned to CPU 0 with taskset (this script and everything else on CPU 1); its
admission process (`--admission-process own`, the chart's default) shares CPU 0 with it,
and the operator's CPU and memory figures include it. The apiserver writes an audit log
of the operator's ServiceAccount only (Metadata level).

Per N, with a fresh operator:

- idle admission: warm AdmissionReviews of a 3-container pod, sequential, from a child
  process (as in admission_bench.py): p50/p99;
- rollout: P Images-mode PrePulls of two small images each, created at once; the time
  until each DaemonSet reports every node ready (the DaemonSet controller's own
  figure), the time until each PrePull reports it (status.nodes.ready == desired == N,
  Ready=True), and the lag between the two; admission p99 while it rolls out;
- steady state (`--window` seconds, nothing changing): operator CPU (% of one core),
  RSS (and peak), operator API requests/s (audit log, by requestReceivedTimestamp),
  PrePull status writes per minute, apiserver CPU; then the same window with the
  operator stopped: apiserver CPU without it;
- failure: the node "kwok-unpullable" joins (kwok plays it as a node that cannot reach
  the registry: its pre-pull pods report ErrImagePull); time from the pod reporting it
  to every PrePull naming the node in status.failures.

Then the growth from the smallest to the largest N, and the goals of issue 15 against the
figures. The machine is shared: the load average is printed, and CPU figures are only
as quiet as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import multiprocessing
import multiprocessing.synchronize
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import kubernetes

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.unit.chart import chart

from bench import admission_bench, harness
from imageward import kube
from imageward.localcluster import controlplane, images, peers, registries

NAMESPACE = PREPULL_NS = "prepulls"  # where the PrePulls and their pods are
REVIEWED_NS = admission_bench.NAMESPACE  # the namespace of the reviews the bench sends
OPERATOR_NS = harness.OPERATOR_NAMESPACE
FAILING_NODE = "kwok-unpullable"
CLIENT_LIMITS = ["--kube-api-qps=500", "--kube-api-burst=1000"]
# kwok renews 1,000 nodes' leases from one process; on a loaded machine it falls behind,
# the node lifecycle controller then marks the nodes' pods NotReady, and kwok never makes
# them Ready again. The benchmark measures imageward, not kwok's heartbeats.
NODE_GRACE = ["--node-monitor-grace-period=1h"]
# The 5 s polling design this replaced (main before issue 15), measured with this harness
# (5 Images-mode PrePulls of two small images, steady state): N -> (operator CPU % of a
# core, apiserver CPU % the operator added). Printed beside today's figures; not re-run
# here, since that code no longer exists on this branch.
POLLING = {100: (3.8, 2.3), 300: (12.5, 3.4), 1000: (39.7, 13.4)}
_CHART_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


# -- the operator's identity and the audit log ----------------------------------------------


def install_operator_identity(
    plane: controlplane.ControlPlane, workdir: pathlib.Path
) -> tuple[pathlib.Path, str]:
    """The chart's ServiceAccount and RBAC; a kubeconfig with its token, and its user name."""
    manifests = chart.render(
        {"replicaCount": 1, "podDisruptionBudget": {"enabled": False}},
        namespace=OPERATOR_NS,
    )
    plane.apply(
        *(m for m in manifests if m["kind"] in _CHART_KINDS and chart.component_of(m) is None)
    )
    account = chart.find(manifests, "ServiceAccount")["metadata"]["name"]
    user = f"system:serviceaccount:{OPERATOR_NS}:{account}"
    # The chart renders the webhook configurations and lets the operator only patch
    # them; here the operator makes them itself (its URL is known only once it runs).
    plane.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "bench-webhooks"},
            "rules": [
                {
                    "apiGroups": ["admissionregistration.k8s.io"],
                    "resources": [
                        "validatingwebhookconfigurations",
                        "mutatingwebhookconfigurations",
                    ],
                    "verbs": ["get", "create", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "bench-webhooks"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "bench-webhooks",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": OPERATOR_NS}],
        },
    )
    path = workdir / "operator-kubeconfig"
    plane.write_token_kubeconfig(
        path, plane.service_account_token(OPERATOR_NS, account, seconds=86400), user
    )
    return path, user


def audit_policy(user: str) -> dict[str, Any]:
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [{"level": "Metadata", "users": [user]}, {"level": "None"}],
    }


@dataclasses.dataclass(frozen=True, slots=True)
class Requests:
    total: int
    status_writes: int
    by_kind: dict[str, int]


def _timestamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_json_lines(path: pathlib.Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a log written while it is read (the audit log, loopwatch's):
    a line not yet complete is skipped, a file not yet there has none."""
    with contextlib.suppress(FileNotFoundError), path.open() as lines:
        for line in lines:
            try:
                yield json.loads(line)
            except ValueError:
                continue


def audited(path: pathlib.Path, start: float, end: float) -> Requests:
    """The operator's requests received in [start, end) (wall clock), from the audit log."""
    seen: dict[str, dict[str, Any]] = {}
    for event in read_json_lines(path):
        received = event.get("requestReceivedTimestamp")
        if not received or not start <= _timestamp(received) < end:
            continue
        seen.setdefault(event["auditID"], event)
    by_kind: dict[str, int] = {}
    writes = 0
    for event in seen.values():
        ref = event.get("objectRef") or {}
        kind = f"{event.get('verb')} {ref.get('resource', '?')}"
        if ref.get("subresource"):
            kind += f"/{ref['subresource']}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
        if ref.get("resource") == "prepulls" and ref.get("subresource") == "status":
            writes += event.get("verb") in ("patch", "update")
    return Requests(len(seen), writes, dict(sorted(by_kind.items(), key=lambda kv: -kv[1])))


# -- process figures --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """The process's CPU seconds, its live children's included (the operator's admission
    process)."""
    return peers.process_cpu_seconds(pid)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB, the process's children's included."""
    rss, peak = peers.process_memory(pid)
    return rss / 2**20, peak / 2**20


# -- admission sampling in a child process ----------------------------------------------------


def _sample(
    url: str, body: bytes, count: int, stop: multiprocessing.synchronize.Event, out: Any
) -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})
    client = admission_bench.Client(url)
    latencies: list[float] = []
    try:
        client.review(body)
        while (count and len(latencies) < count) or (not count and not stop.is_set()):
            started = time.perf_counter()
            client.review(body)
            latencies.append(time.perf_counter() - started)
            time.sleep(0.005)  # ~150/s: a steady trickle, not a flood
    finally:
        client.close()
        out.put(latencies)


class Sampler:
    """Sequential reviews from a child process (its own GIL), until stopped or `count`."""

    def __init__(self, url: str, body: bytes, count: int = 0) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.out = context.Queue()
        self.process = context.Process(
            target=_sample, args=(url, body, count, self.stop, self.out), daemon=True
        )
        self.process.start()

    def result(self) -> list[float]:
        self.stop.set()
        latencies: list[float] = self.out.get(timeout=600)
        self.process.join(30)
        return latencies


def handler_buckets(operator: harness.Operator) -> tuple[float, float]:
    """(reviews, reviews within 5 ms) as the operator itself timed its handler
    (imageward_admission_duration_seconds for pods): no client, no network in it."""
    total = fast = 0.0
    for line in operator.metrics().splitlines():
        if (
            not line.startswith("imageward_admission_duration_seconds_")
            or 'resource="pods"' not in line
        ):
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith("imageward_admission_duration_seconds_count"):
            total += value
        elif 'le="0.005"' in line:
            fast += value
    return total, fast


def slow_share(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Percent of the reviews between two readings whose handler took over 5 ms."""
    total, fast = after[0] - before[0], after[1] - before[1]
    return (total - fast) / total * 100 if total else 0.0


#: Callbacks that are admission's own work: aiohttp's request tasks, TLS reads, and the
#: tasks a review gathers (one per image, registry lookups). The background scanner's
#: image checks run under the same names, so they count as admission's here; its own
#: outer tasks still count as the controllers'.
_ADMISSION_CALLBACKS = (
    "RequestHandler",
    "_read_ready",
    "SSLProtocol",
    "serve",
    "_check_image",
    "RegistryClient",
)


@dataclasses.dataclass(frozen=True, slots=True)
class LoopFigures:
    """Event-loop callbacks of the controllers (not admission's own) in a window, in CPU
    seconds of the loop's thread: how long a review may wait behind one, on a quiet core."""

    longest: float = 0.0
    longest_what: str = ""
    over_1ms: int = 0
    over_5ms: int = 0
    controllers_cpu: float = 0.0  # s of loop CPU in callbacks over 0.5 ms, not admission's
    threads_cpu: float = 0.0  # s of CPU of the other threads (watches, API calls)
    collections: int = 0  # garbage collections over 0.5 ms in the loop's thread
    longest_collection: float = 0.0  # s (wall: the collector holds the GIL throughout)

    def text(self) -> str:
        return (
            f"longest controller callback {self.longest * 1000:.1f} ms CPU ({self.longest_what}), "
            f"{self.over_1ms} over 1 ms, {self.over_5ms} over 5 ms; other threads "
            f"{self.threads_cpu:.2f} s CPU; {self.collections} garbage collections over "
            f"0.5 ms on the loop, longest {self.longest_collection * 1000:.1f} ms"
        )


def loop_figures(path: pathlib.Path, start: float, end: float) -> LoopFigures:
    """From bench/loopwatch.py's log, the monotonic window [start, end)."""
    callbacks: list[dict[str, Any]] = []
    threads: list[tuple[float, float]] = []
    collections: list[float] = []
    for item in read_json_lines(path):
        if "threads_cpu" in item:
            threads.append((item["t"], item["threads_cpu"]))
        elif "gc" in item:
            if start <= item["t"] < end and item.get("loop_thread"):
                collections.append(item["gc"])
        elif start <= item["t"] < end and not any(
            mark in item["what"] for mark in _ADMISSION_CALLBACKS
        ):
            callbacks.append(item)
    inside = [cpu for t, cpu in threads if start <= t < end]
    longest = max(callbacks, key=lambda c: c["cpu"], default=None)
    return LoopFigures(
        longest=longest["cpu"] if longest else 0.0,
        longest_what=longest["what"] if longest else "",
        over_1ms=sum(c["cpu"] > 0.001 for c in callbacks),
        over_5ms=sum(c["cpu"] > 0.005 for c in callbacks),
        controllers_cpu=sum(c["cpu"] for c in callbacks),
        threads_cpu=(inside[-1] - inside[0]) if len(inside) > 1 else 0.0,
        collections=len(collections),
        longest_collection=max(collections, default=0.0),
    )


# -- watching the cluster from this process ---------------------------------------------------


class Watch:
    """One list + watch in a thread, calling `seen(obj, now)` for every version."""

    def __init__(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        seen: Callable[[dict[str, Any], float], None],
        **kwargs: Any,
    ) -> None:
        self.fn, self.args, self.kwargs, self.seen = fn, args, kwargs, seen
        self.watcher = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        self.thread = threading.Thread(target=self._run, name=f"watch {what}", daemon=True)
        self.stopped = False
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                for event in self.watcher.stream(  # type: ignore[no-untyped-call]
                    self.fn, *self.args, deserialize=False, timeout_seconds=300, **self.kwargs
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.seen(event["object"], time.monotonic())
            except Exception:  # the bench's own watch: start again
                time.sleep(0.5)

    def close(self) -> None:
        self.stopped = True
        self.watcher.stop()  # type: ignore[no-untyped-call]


@dataclasses.dataclass(slots=True)
class Rollout:
    n: int
    started: float
    ds_ready: dict[str, float] = dataclasses.field(default_factory=dict)
    pp_ready: dict[str, float] = dataclasses.field(default_factory=dict)
    failure_seen: dict[str, float] = dataclasses.field(default_factory=dict)
    failure_pod: float | None = None

    def daemonset(self, body: dict[str, Any], now: float) -> None:
        status, meta = body.get("status") or {}, body["metadata"]
        name = meta["name"].removeprefix("prepull-")
        if name in self.ds_ready:
            return
        n = self.n
        if (
            status.get("desiredNumberScheduled") == n
            and status.get("numberReady") == n
            and status.get("updatedNumberScheduled") == n
            and status.get("observedGeneration") == meta.get("generation")
        ):
            self.ds_ready[name] = now

    def prepull(self, body: dict[str, Any], now: float) -> None:
        name = body["metadata"]["name"]
        status = body.get("status") or {}
        nodes = status.get("nodes") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if (
            name not in self.pp_ready
            and nodes.get("desired") == self.n
            and nodes.get("ready") == self.n
            and ready
        ):
            self.pp_ready[name] = now
        if name not in self.failure_seen and any(
            f.get("node") == FAILING_NODE for f in status.get("failures") or []
        ):
            self.failure_seen[name] = now

    def pod(self, body: dict[str, Any], now: float) -> None:
        if self.failure_pod is not None:
            return
        for container in (body.get("status") or {}).get("initContainerStatuses") or []:
            if ((container.get("state") or {}).get("waiting") or {}).get(
                "reason"
            ) == "ErrImagePull":
                self.failure_pod = now


# -- one size ---------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Figures:
    n: int
    idle_p50: float = 0.0
    idle_p99: float = 0.0
    idle_slow: float = 0.0  # % of reviews whose handler (operator-side) took > 5 ms
    rollout_slow: float = 0.0
    idle_loop: LoopFigures = dataclasses.field(default_factory=LoopFigures)
    rollout_loop: LoopFigures = dataclasses.field(default_factory=LoopFigures)
    rollout_p50: float = 0.0
    rollout_p99: float = 0.0
    rollout_reviews: int = 0
    ds_rollout: float = 0.0  # slowest DaemonSet to report every node ready, s after create
    pp_rollout: float = 0.0  # slowest PrePull to report it
    lag_max: float = 0.0  # PrePull reported ready after its DaemonSet did, worst
    lag_median: float = 0.0
    rollout_cpu: float = 0.0  # operator CPU % during the rollout
    cpu: float = 0.0  # steady operator CPU %
    rss: float = 0.0
    rss_peak: float = 0.0
    requests: float = 0.0  # steady operator requests/s
    writes_per_minute: float = 0.0
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    apiserver_with: float = 0.0
    apiserver_without: float = 0.0
    failure_lag_max: float = float("nan")
    failure_lag_median: float = float("nan")
    rollout_requests: float = 0.0
    rollout_writes: int = 0


def prepull_body(name: str, refs: Sequence[str]) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "PrePull",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"images": list(refs)},
    }


def wait(what: str, probe: Callable[[], Any], timeout: float, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def measure_size(
    n: int,
    args: argparse.Namespace,
    plane: controlplane.ControlPlane,
    api: kubernetes.client.ApiClient,
    identity: pathlib.Path,
    registry: registries.Registry,
    image_sets: Sequence[Sequence[str]],
    review: bytes,
    workdir: pathlib.Path,
) -> Figures:
    figures = Figures(n)
    apps = kubernetes.client.AppsV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    custom = kubernetes.client.CustomObjectsApi(api)
    apiserver = plane.process("kube-apiserver").pid
    assert apiserver is not None
    names = [f"pp{i}" for i in range(args.prepulls)]
    loop_log = workdir / f"loop-{n}.jsonl"
    with harness.running_operator(
        plane,
        insecure_registries=[registry.host],
        workdir=workdir,
        loopwatch=loop_log,
        env={
            "KUBECONFIG": str(identity),
            "IMAGEWARD_AGENT_ENABLED": "false",
            "IMAGEWARD_ADMISSION_PROCESS": args.admission_process,
            # By default the apiserver does not send the rollout's own pods to the
            # webhook: admission latency then shows what the controllers cost it.
            "IMAGEWARD_EXCLUDED_NAMESPACES": (
                "kube-system" if args.webhook_sees_rollout else f"kube-system,{NAMESPACE}"
            ),
        },
    ) as operator:
        harness.wait_policies_ready(plane, ["bench-warm"])
        time.sleep(3)
        marks = handler_buckets(operator)
        since = time.monotonic()
        idle = Sampler(operator.webhook_url, review, count=args.reviews).result()
        time.sleep(1.5)  # the loop log is written once a second
        figures.idle_loop = loop_figures(loop_log, since, time.monotonic() - 1.5)
        figures.idle_slow = slow_share(marks, handler_buckets(operator))
        figures.idle_p50 = harness.percentile(idle, 0.5) * 1000
        figures.idle_p99 = harness.percentile(idle, 0.99) * 1000
        print(
            f"  idle admission: {harness.describe_ms(idle)} ({len(idle)} reviews); handler "
            f"over 5 ms (operator's own timing): {figures.idle_slow:.1f}%\n"
            f"    event loop: {figures.idle_loop.text()}",
            flush=True,
        )

        rollout = Rollout(n, time.monotonic())
        watches = [
            Watch("daemonsets", apps.list_namespaced_daemon_set, NAMESPACE, seen=rollout.daemonset),
            Watch(
                "prepulls",
                custom.list_namespaced_custom_object,
                "imageward.io",
                "v1alpha1",
                NAMESPACE,
                "prepulls",
                seen=rollout.prepull,
            ),
            Watch(
                "failing pods",
                core.list_namespaced_pod,
                NAMESPACE,
                field_selector=f"spec.nodeName={FAILING_NODE}",
                seen=rollout.pod,
            ),
        ]
        try:
            marks = handler_buckets(operator)
            sampler = Sampler(operator.webhook_url, review)
            cpu0, wall0 = cpu_seconds(operator.pid), time.time()
            rollout.started = time.monotonic()
            plane.apply(
                *(prepull_body(name, refs) for name, refs in zip(names, image_sets, strict=False))
            )
            try:
                wait(
                    "every PrePull and DaemonSet to report every node ready",
                    lambda: (
                        len(rollout.pp_ready) == len(names) and len(rollout.ds_ready) == len(names)
                    ),
                    timeout=args.rollout_timeout,
                )
            except TimeoutError:
                print(describe_cluster(plane), flush=True)
                raise
            busy = time.time() - wall0
            figures.rollout_cpu = (cpu_seconds(operator.pid) - cpu0) / busy * 100
            during = sampler.result()
            figures.rollout_slow = slow_share(marks, handler_buckets(operator))
            ended = time.monotonic()
            time.sleep(1.5)
            figures.rollout_loop = loop_figures(loop_log, rollout.started, ended)
            figures.rollout_reviews = len(during)
            figures.rollout_p50 = harness.percentile(during, 0.5) * 1000
            figures.rollout_p99 = harness.percentile(during, 0.99) * 1000
            rollout_audit = audited(plane.audit_log, wall0, time.time())
            figures.rollout_requests = rollout_audit.total / busy
            figures.rollout_writes = rollout_audit.status_writes
            figures.ds_rollout = max(rollout.ds_ready.values()) - rollout.started
            figures.pp_rollout = max(rollout.pp_ready.values()) - rollout.started
            lags = [rollout.pp_ready[k] - rollout.ds_ready[k] for k in names]
            figures.lag_max, figures.lag_median = max(lags), statistics.median(lags)
            print(
                f"  rollout: DaemonSets ready after {figures.ds_rollout:.1f}s, PrePulls report it "
                f"after {figures.pp_rollout:.1f}s (lag median {figures.lag_median:+.2f}s, worst "
                f"{figures.lag_max:+.2f}s); admission during it: {harness.describe_ms(during)} "
                f"({len(during)} reviews; handler over 5 ms: {figures.rollout_slow:.1f}%); "
                f"operator CPU {figures.rollout_cpu:.0f}%, "
                f"{figures.rollout_requests:.1f} requests/s, "
                f"{figures.rollout_writes} status writes\n"
                f"    event loop: {figures.rollout_loop.text()}",
                flush=True,
            )

            time.sleep(args.settle)
            cpu0, api0, wall0 = cpu_seconds(operator.pid), cpu_seconds(apiserver), time.time()
            time.sleep(args.window)
            wall1 = time.time()
            span = wall1 - wall0
            figures.cpu = (cpu_seconds(operator.pid) - cpu0) / span * 100
            figures.apiserver_with = (cpu_seconds(apiserver) - api0) / span * 100
            figures.rss, figures.rss_peak = memory_mib(operator.pid)
            time.sleep(2)  # the audit log is written in 1 s batches
            steady = audited(plane.audit_log, wall0, wall1)
            figures.requests = steady.total / span
            figures.writes_per_minute = steady.status_writes / span * 60
            figures.by_kind = steady.by_kind
            print(
                f"  steady {span:.0f}s: operator CPU {figures.cpu:.2f}%, RSS {figures.rss:.0f} MiB "
                f"(peak {figures.rss_peak:.0f}), {figures.requests:.3f} requests/s "
                f"({steady.by_kind or 'none'}), {figures.writes_per_minute:.1f} status writes/min, "
                f"apiserver CPU {figures.apiserver_with:.1f}%",
                flush=True,
            )

            plane.apply(controlplane.build_kwok_node(FAILING_NODE))
            try:
                wait(
                    "every PrePull to report the failing node",
                    lambda: (
                        len(rollout.failure_seen) == len(names) and rollout.failure_pod is not None
                    ),
                    timeout=120,
                )
                assert rollout.failure_pod is not None
                lags = [t - rollout.failure_pod for t in rollout.failure_seen.values()]
                figures.failure_lag_max, figures.failure_lag_median = (
                    max(lags),
                    statistics.median(lags),
                )
                print(
                    f"  failure: a pod reports ErrImagePull; PrePulls name the node "
                    f"{figures.failure_lag_median:.2f}s later "
                    f"(median; worst {figures.failure_lag_max:.2f}s)",
                    flush=True,
                )
            finally:
                plane.kubectl(
                    "delete",
                    "node",
                    FAILING_NODE,
                    "--ignore-not-found",
                    "--wait=false",
                    check=False,
                )
        finally:
            for watch in watches:
                watch.close()

    # The operator is stopped: the same window, for the apiserver alone.
    api0, wall0 = cpu_seconds(apiserver), time.time()
    time.sleep(args.window)
    figures.apiserver_without = (cpu_seconds(apiserver) - api0) / (time.time() - wall0) * 100
    print(f"  without the operator: apiserver CPU {figures.apiserver_without:.1f}%", flush=True)
    return figures


def clean_up(
    plane: controlplane.ControlPlane,
    core: kubernetes.client.CoreV1Api,
    prepulls: int,
    timeout: float,
) -> None:
    """Delete the PrePulls and wait for their pods, for the next size (the finalizers are
    the stopped operator's, so they are removed by hand)."""
    for name in (f"pp{i}" for i in range(prepulls)):
        plane.kubectl(
            "patch",
            "prepull",
            name,
            "-n",
            NAMESPACE,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":[]}}',
            check=False,
        )
    plane.kubectl("delete", "prepulls", "--all", "-n", NAMESPACE, "--wait=false", check=False)
    wait(
        "the pre-pull pods to be gone",
        lambda: not core.list_namespaced_pod(NAMESPACE, limit=1).items,
        timeout=timeout,
        step=2,
    )


def describe_cluster(plane: controlplane.ControlPlane) -> str:
    """What is not ready, when a rollout takes too long."""
    lines = [plane.kubectl("get", "ds,prepulls", "-n", NAMESPACE, check=False).stdout]
    pods = plane.get_json("pods", "-n", NAMESPACE)["items"]
    counts: dict[tuple[Any, ...], int] = {}
    for pod in pods:
        ready = [c["status"] for c in pod["status"].get("conditions") or [] if c["type"] == "Ready"]
        key = (pod["status"].get("phase"), ready[0] if ready else None)
        counts[key] = counts.get(key, 0) + 1
    lines.append(f"pods by (phase, Ready): {counts}")
    nodes = plane.get_json("nodes")["items"]
    ready_nodes = sum(
        any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        for n in nodes
    )
    lines.append(f"nodes Ready: {ready_nodes} of {len(nodes)}")
    return "\n".join(lines)


# -- the report -------------------------------------------------------------------------------


COLUMNS = (
    "nodes",
    "DaemonSets ready",
    "PrePulls report it",
    "lag median / worst",
    "admission p99 idle / rollout (handler > 5 ms)",
    "operator CPU steady (rollout)",
    "RSS (peak)",
    "API req/s steady",
    "status writes/min",
    "apiserver CPU with / without",
    "failure shown after",
    "longest controller callback idle / rollout (CPU)",
)


def row(f: Figures) -> list[str]:
    return [
        f"{f.n:,}",
        f"{f.ds_rollout:.1f} s",
        f"{f.pp_rollout:.1f} s",
        f"{f.lag_median:+.2f} / {f.lag_max:+.2f} s",
        f"{f.idle_p99:.2f} / {f.rollout_p99:.2f} ms ({f.idle_slow:.1f}% / {f.rollout_slow:.1f}%)",
        f"{f.cpu:.2f}% ({f.rollout_cpu:.0f}%)",
        f"{f.rss:.0f} MiB ({f.rss_peak:.0f})",
        f"{f.requests:.3f}",
        f"{f.writes_per_minute:.1f}",
        f"{f.apiserver_with:.1f}% / {f.apiserver_without:.1f}%",
        f"{f.failure_lag_max:.2f} s",
        f"{f.idle_loop.longest * 1000:.1f} / {f.rollout_loop.longest * 1000:.1f} ms",
    ]


def table(rows: Sequence[Figures]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(f)) + " |" for f in rows]
    return "\n".join(lines)


def goals(
    rows: Sequence[Figures], prepulls: int, admission_process: str = "own"
) -> list[tuple[str, str, bool]]:
    small, large = rows[0], rows[-1]
    verdicts = []
    worst_cpu = max(f.cpu for f in rows)
    verdicts.append(
        (
            "steady operator CPU <= 1% of a core at every N",
            f"at most {worst_cpu:.2f}%",
            worst_cpu <= 1.0,
        )
    )
    per_prepull = max(f.requests / prepulls for f in rows)
    verdicts.append(
        (
            "steady API requests <= 0.1/s per PrePull at every N",
            f"at most {per_prepull:.4f}/s per PrePull",
            per_prepull <= 0.1,
        )
    )
    flat = large.cpu - small.cpu
    verdicts.append(
        (
            f"flat, not linear: steady CPU at {large.n:,} nodes like at {small.n:,}",
            f"{small.cpu:.2f}% -> {large.cpu:.2f}% "
            f"({flat:+.2f} points; nodes x{large.n / small.n:.0f})",
            flat <= 0.5,
        )
    )
    lag = max(f.lag_max for f in rows)
    verdicts.append(
        ("all nodes ready shown within 2 s of the DaemonSet", f"worst {lag:+.2f} s", lag <= 2.0)
    )
    failure = max(f.failure_lag_max for f in rows)
    verdicts.append(
        ("a node's pull failure shown within 5 s", f"worst {failure:.2f} s", failure <= 5.0)
    )
    growth = large.rss / small.rss - 1
    verdicts.append(
        (
            f"RSS at {large.n:,} nodes <= 20% above {small.n:,}",
            f"{small.rss:.0f} -> {large.rss:.0f} MiB ({growth * 100:+.0f}%; "
            f"peak {small.rss_peak:.0f} -> {large.rss_peak:.0f})",
            growth <= 0.2,
        )
    )
    p99 = max(f.rollout_p99 for f in rows)
    idle99 = max(f.idle_p99 for f in rows)
    verdicts.append(
        (
            "admission p99 <= 5 ms during a rollout (wall clock, shared machine)",
            f"worst {p99:.2f} ms during rollouts, {idle99:.2f} ms idle",
            p99 <= 5.0,
        )
    )
    added = max(f.rollout_slow - f.idle_slow for f in rows)
    verdicts.append(
        (
            "the controllers push no review past 5 ms: reviews whose handler took over "
            "5 ms (its own timing) at most 0.5 points more during a rollout than idle",
            ", ".join(f"{f.idle_slow:.1f}% idle, {f.rollout_slow:.1f}% rollout" for f in rows),
            added <= 0.5,
        )
    )
    longest = max(f.rollout_loop.longest for f in rows)
    if admission_process == "own":
        verdicts.append(
            (
                "no controller callback holds the webhook's event loop 5 ms (CPU)",
                f"the webhook has a process of its own; the controllers' longest callback "
                f"{longest * 1000:.1f} ms runs on theirs",
                True,
            )
        )
    else:
        verdicts.append(
            (
                "no controller callback holds the webhook's event loop 5 ms (CPU)",
                f"longest {longest * 1000:.1f} ms",
                longest <= 0.005,
            )
        )
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--nodes", default="100,300,1000", help="comma-separated node counts, ascending"
    )
    parser.add_argument(
        "--more", type=int, action="append", default=[], help="more node counts (e.g. 2000)"
    )
    parser.add_argument("--prepulls", type=int, default=5)
    parser.add_argument(
        "--window", type=float, default=60.0, help="seconds of steady state measured"
    )
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds after the rollout before the window"
    )
    parser.add_argument("--reviews", type=int, default=1500, help="idle admission reviews")
    parser.add_argument("--rollout-timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    parser.add_argument(
        "--stacks",
        action="store_true",
        help="sample the loop's stack during slow callbacks into the loop log (a diagnosis: "
        "costs the operator about 2.5%% of a core, so CPU figures are not comparable)",
    )
    parser.add_argument(
        "--webhook-sees-rollout",
        action="store_true",
        help="the webhook also reviews the pre-pull pods (2 reviews per pod) during rollouts",
    )
    parser.add_argument(
        "--admission-process",
        choices=("own", "shared"),
        default="own",
        help="where the operator serves the webhook (IMAGEWARD_ADMISSION_PROCESS): own, "
        "beside the controllers' process (the chart's default), or shared, on their loop",
    )
    parser.add_argument(
        "--control-plane-on-cpu1",
        action="store_true",
        help="start the control plane on CPU 1 as well, so the operator (and its admission "
        "process) has CPU 0 to itself: what delays a review is then the operator's own "
        "work; the rollout is slower and the sampler's wall-clock figures noisier",
    )
    args = parser.parse_args(argv)
    sizes = sorted({int(x) for x in args.nodes.split(",") if x} | set(args.more))
    if args.stacks:
        os.environ["LOOPWATCH_STACKS"] = "1"  # the operator inherits this environment

    print(harness.load_note(), flush=True)
    print(
        f"admission process: {args.admission_process}; control plane on "
        f"{'CPU 1' if args.control_plane_on_cpu1 else 'both CPUs'}",
        flush=True,
    )
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="imageward-scale-"))
    started = time.monotonic()
    rows: list[Figures] = []
    loads: list[float] = [os.getloadavg()[0]]
    with contextlib.ExitStack() as stack:
        if args.keep:
            print(f"logs in {workdir}", flush=True)
        else:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        user = f"system:serviceaccount:{OPERATOR_NS}:imageward"
        if args.control_plane_on_cpu1 and (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {1})  # inherited by every control-plane process
        plane = stack.enter_context(
            controlplane.ControlPlane(
                nodes=0,
                startup_timeout=180,
                extra_args={
                    "kube-controller-manager": CLIENT_LIMITS + NODE_GRACE,
                    "kube-scheduler": CLIENT_LIMITS,
                },
                audit_policy=audit_policy(user),
            )
        )
        registry = stack.enter_context(registries.start_anonymous())
        # The control plane (started above) uses both CPUs; this script, its watches and
        # the admission sampler stay on CPU 1, the operator alone is pinned to CPU 0.
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {1})
        plane.create_namespace(NAMESPACE)
        plane.create_namespace(REVIEWED_NS)
        plane.create_namespace(OPERATOR_NS)
        harness.install_crds(plane)
        identity, actual = install_operator_identity(plane, workdir)
        assert actual == user, actual
        client = registry.client()
        image_sets = []
        for i in range(args.prepulls):
            refs = []
            for j in range(2):
                repository = f"scale/pp{i}-{j}"
                client.push(
                    repository,
                    images.small_image(f"{repository}-{uuid.uuid4().hex[:6]}"),
                    tag="1.0",
                )
                refs.append(f"{registry.host}/{repository}:1.0")
            image_sets.append(refs)
        warm = []
        for i in range(3):
            client.push(f"warm/app-{i}", images.nonroot_image(f"warm-{i}"), tag="1.0")
            warm.append(f"{registry.host}/warm/app-{i}:1.0")
        harness.apply_policy(
            plane,
            "bench-warm",
            {"match": {"images": ["**/warm/**"]}, "rules": admission_bench.FACTS_RULES},
        )
        review = admission_bench.pod_review(warm)
        api = kube.build_api_client(str(plane.kubeconfig))
        stack.callback(api.close)
        print(
            f"control plane, registry and images ready in {time.monotonic() - started:.0f}s",
            flush=True,
        )

        have = 0
        for index, n in enumerate(sizes):
            if index:  # not after the last size: the control plane is thrown away
                clean_up(
                    plane, kubernetes.client.CoreV1Api(api), args.prepulls, args.rollout_timeout
                )
            t = time.monotonic()
            plane.add_nodes(n - have, start=have)
            have = n
            print(
                f"\n== {n:,} nodes ({time.monotonic() - t:.0f}s to add); {harness.load_note()}",
                flush=True,
            )
            rows.append(
                measure_size(n, args, plane, api, identity, registry, image_sets, review, workdir)
            )
            loads.append(os.getloadavg()[0])

    print(
        f"\n== {args.prepulls} Images-mode PrePulls x 2 images; steady window {args.window:.0f}s; "
        + (
            "the webhook reviews the rollout's pods too"
            if args.webhook_sees_rollout
            else "the rollout's pods bypass the webhook (admission p99 = the controllers' cost)"
        )
    )
    print(
        f"load average during the run: {min(loads):.1f}-{max(loads):.1f} on "
        f"{os.cpu_count()} CPUs (shared machine: CPU figures are noisy)\n"
    )
    print(table(rows))
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        factor = large.n / small.n
        print(
            f"\ngrowth {small.n:,} -> {large.n:,} nodes (x{factor:.0f}):\n"
            f"  steady operator CPU {small.cpu:.2f}% -> {large.cpu:.2f}%\n"
            f"  steady API requests/s {small.requests:.3f} -> {large.requests:.3f}\n"
            f"  RSS {small.rss:.0f} -> {large.rss:.0f} MiB (x{large.rss / small.rss:.2f})\n"
            f"  status writes/min {small.writes_per_minute:.1f} -> {large.writes_per_minute:.1f}\n"
            f"  report lag {small.lag_max:+.2f} -> {large.lag_max:+.2f} s\n"
            f"  operator CPU during the rollout {small.rollout_cpu:.0f}% -> "
            f"{large.rollout_cpu:.0f}%"
        )
    compared = [f for f in rows if f.n in POLLING]
    if compared:
        print("\nsteady state beside the 5 s polling design (issue 15's figures, same harness):")
        for f in compared:
            cpu, added = POLLING[f.n]
            print(
                f"  {f.n:,} nodes: operator CPU {f.cpu:.2f}% (polling {cpu:.1f}%), apiserver CPU "
                f"added by the operator {f.apiserver_with - f.apiserver_without:+.1f} points "
                f"(polling +{added:.1f})"
            )
    print("\ngoals (issue 15):")
    for goal, figure, met in goals(rows, args.prepulls, args.admission_process):
        print(f"  [{'met' if met else 'MISSED'}] {goal}: {figure}")
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
