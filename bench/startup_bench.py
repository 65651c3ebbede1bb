"""Pod start time through a real kubelet: create -> Running of a Deployment's pod, cold and
after each kind of pre-pull.

    .venv/bin/python bench/startup_bench.py [--sizes 30,100,300] [--mbit 100] [--layers 6]
        [--repeat N] [--containerd containerd2 --feature-gates EventedPLEG=true]

Needs root (a real kubelet node, `realnode`; it waits for the machine's one real node if
another run holds it) and the operator image (`make image`). Not part of `make test`;
about seven minutes with the defaults (`make bench-startup`).

Everything is real: the local control plane, the real node (kubelet, containerd 1.6's
CRI, runc), `imageward run` (webhooks on, no policy), PrePulls reconciled by it, the
chart's node agent as a pod on the real node. The registry is behind a link of `--mbit`
Mbit/s: a proxy process on the node's address paces every answer body through one
shared budget and counts the bytes it sends per blob. The kubelet's pulls reach it
through containerd's hosts.toml, the agent's through its registry mirror (so a Layers
pre-pull crosses the same link). The operator image (agent and pre-pull helper) comes
from a second registry, not behind the link: it is the installation, not the workload.

For each size (MiB), a fresh image per scenario (nothing of it on the node before):
`--layers` equal random layers (incompressible, as compressed layers are) and a small
top layer with the pause binary, its entrypoint. Scenarios:

- cold: the Deployment alone;
- images: an Images-mode PrePull (pullMethod InitContainer) of the image is Ready first;
- layers 50%: a Layers-mode PrePull with budgetPerNode half the image's bytes (half its
  big layers planned) is Ready first;
- layers 100%: a Layers-mode PrePull planning every layer is Ready first;
- naive DaemonSet: a DaemonSet running the image itself (the whole image, as
  kube-fledged-style pre-pullers do) has its pod Running first.

Printed per size and scenario: the pre-pull's time and bytes over the link; the start
time (Deployment created -> its pod Running, seen by a watch) and its change from cold;
the pull's time as the kubelet reports it ("Successfully pulled image ... in X") and its
share of the start; when the app container's task started by containerd's own clock
(`ctr events`; the API shows it only to the second): what follows it is the kubelet
noticing the start (its generic PLEG relists every second) and reporting it; the layer
bytes fetched during the start against the image's unplanned bytes, and the manifest +
config bytes beside them. With `--repeat`, each scenario runs that many times (a fresh
image each) and the medians are printed too. Goals (on medians): with everything planned,
start time at least 90% lower than cold for the 100 MiB image; layer bytes fetched at
start equal to the unplanned bytes exactly, for every Layers scenario.

`--containerd containerd2 --feature-gates EventedPLEG=true` runs the node on containerd
2.x with the kubelet's evented PLEG (alpha in Kubernetes 1.34): the kubelet learns of a
container start from the runtime's CRI event stream instead of its next relist.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "operator"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import kubernetes

from bench import harness
from imageward.localcluster import (
    containerd,
    controlplane,
    faultproxy,
    images,
    nodeagent,
    operatorimage,
    realnode,
    registries,
    tools,
)

MiB = 1024 * 1024
NAMESPACE = "bench"
BLOB_PATH = re.compile(r"/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
PULLED = re.compile(r"Successfully pulled image \"[^\"]+\" in (?P<duration>[0-9.hmsµu]+) ")
_GO_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)(?P<unit>h|ms|m|s|µs|us|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
SCENARIOS = ("cold", "images", "layers 50%", "layers 100%", "naive DaemonSet")


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration as the kubelet prints it: `8.51s`, `512ms`, `1m2.5s`."""
    total, end = 0.0, 0
    for match in _GO_DURATION.finditer(text):
        if match.start() != end:
            break
        total += float(match["number"]) * _UNITS[match["unit"]]
        end = match.end()
    if end != len(text) or not text:
        raise ValueError(f"not a Go duration: {text!r}")
    return total


@dataclasses.dataclass(frozen=True, slots=True)
class BenchImage:
    ref: str
    repository: str
    digest: str
    layers: Mapping[str, int]  # digest -> size
    other: frozenset[str]  # config digest

    @property
    def bytes(self) -> int:
        return sum(self.layers.values())


@dataclasses.dataclass(frozen=True, slots=True)
class Start:
    seconds: float
    pull_seconds: float | None  # None: the kubelet found the image present
    layer_bytes: int
    other_bytes: int
    # Deployment created -> the app container's task started, by containerd's own clock
    # (None: its /tasks/start event was not seen); `seconds` minus this is the time the
    # kubelet took to notice and report it.
    container_seconds: float | None = None
    # Deployment created -> the pod's sandbox (pause) task started: the control plane's
    # share (Deployment, ReplicaSet, webhooks, scheduler) plus the kubelet's sandbox and CNI.
    sandbox_seconds: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    size_mib: int
    scenario: str
    image: BenchImage
    planned: int  # bytes of the image on the node before the start (by plan or pull)
    prepull_seconds: float | None
    prepull_bytes: int
    start: Start

    @property
    def unplanned(self) -> int:
        return self.image.bytes - self.planned


def build_image(
    size_mib: int, scenario: str, layer_count: int, run: str
) -> tuple[images.Manifest, dict[str, int]]:
    layer_size = size_mib * MiB // layer_count
    seed = f"{run}-{size_mib}-{scenario}"
    layers = [images.random_layer(layer_size, seed=f"{seed}-{i}") for i in range(layer_count)]
    top = images.layer_from_files(
        {"pause": (tools.find("imageward-pause").read_bytes(), 0o755), "id": (seed.encode(), 0o644)}
    )
    manifest = images.build_image(
        [*layers, top],
        platform=realnode.host_platform(),
        user=images.NONROOT_USER,
        env=(),
        entrypoint=["/pause"],
    )
    return manifest, {layer.digest: layer.size for layer in manifest.layers}


class Bench:
    def __init__(
        self,
        plane: controlplane.ControlPlane,
        node: realnode.RealNode,
        proxy: faultproxy.ProxyProcess,
        registry: registries.Registry,
        events: containerd.EventLog,
    ) -> None:
        self.plane = plane
        self.node = node
        self.proxy = proxy
        self.registry = registry
        self.events = events
        client = kubernetes.config.new_client_from_config(str(plane.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(client)
        self.apps = kubernetes.client.AppsV1Api(client)

    # -- what crossed the link ----------------------------------------------------------

    def link_bytes(self, image: BenchImage) -> tuple[int, int]:
        """Layer bytes of `image` and other bytes (manifests, configs) sent since reset."""
        layer_bytes = other = 0
        for _method, path, size in self.proxy.sent():
            match = BLOB_PATH.search(path)
            if match and match["digest"] in image.layers:
                layer_bytes += size
            else:
                other += size
        return layer_bytes, other

    # -- workloads --------------------------------------------------------------------------

    def pod_template(self, name: str, ref: str) -> dict[str, Any]:
        return {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "containers": [{"name": "app", "image": ref, "imagePullPolicy": "IfNotPresent"}],
                "dnsPolicy": "Default",  # no cluster DNS in the local cluster
                "terminationGracePeriodSeconds": 0,
                **self.node.placement,
            },
        }

    def start_deployment(self, name: str, image: BenchImage) -> Start:
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": self.pod_template(name, image.ref),
            },
        }
        watcher = kubernetes.watch.Watch()
        self.proxy.reset_counts()
        started = time.monotonic()
        created_at = time.time()  # containerd's events are stamped by the wall clock
        self.apps.create_namespaced_deployment(NAMESPACE, body)
        running_at = None
        pod_name = container_id = ""
        for event in watcher.stream(
            self.core.list_namespaced_pod,
            NAMESPACE,
            label_selector=f"app={name}",
            timeout_seconds=600,
        ):
            pod = event["object"]
            if pod.status and pod.status.phase == "Running":
                running_at = time.monotonic()
                pod_name = pod.metadata.name
                statuses = pod.status.container_statuses or []
                container_id = (statuses[0].container_id or "") if statuses else ""
                watcher.stop()
        if running_at is None:
            raise RuntimeError(f"the pod of Deployment {name} was not Running within 600 s")
        seconds = running_at - started
        layer_bytes, other = self.link_bytes(image)
        app = container_id.removeprefix("containerd://")
        # Task starts since the create: the app's, and the sandbox's, the first that is not
        # the app's (nothing else starts on the node meanwhile: the agent's pod is up).
        starts = [
            (event.time, event.body.get("container_id"))
            for event in self.events.events("/tasks/start")
            if event.time >= created_at
        ]
        app_starts = [at for at, started in starts if started == app]
        sandbox_starts = [at for at, started in starts if started != app]
        container_seconds = app_starts[-1] - created_at if app_starts else None
        sandbox_seconds = sandbox_starts[0] - created_at if sandbox_starts else None
        return Start(
            seconds,
            self.pull_seconds(pod_name),
            layer_bytes,
            other,
            container_seconds,
            sandbox_seconds,
        )

    def pull_seconds(self, pod: str) -> float | None:
        """The kubelet's own pull time for the pod's container (0 events: present)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            events = self.core.list_namespaced_event(
                NAMESPACE, field_selector=f"involvedObject.name={pod}"
            ).items
            for event in events:
                if event.reason == "Pulled":
                    match = PULLED.search(event.message or "")
                    if match:
                        return parse_go_duration(match["duration"])
                    if "already present" in (event.message or ""):
                        return None
            time.sleep(0.2)
        return None

    def delete_deployment(self, name: str) -> None:
        self.apps.delete_namespaced_deployment(name, NAMESPACE, propagation_policy="Foreground")
        self.wait_no_pods(f"app={name}")

    def wait_no_pods(self, selector: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not self.core.list_namespaced_pod(NAMESPACE, label_selector=selector).items:
                return
            time.sleep(0.3)
        raise RuntimeError(f"pods {selector} still there after 120 s")

    # -- pre-pulls --------------------------------------------------------------------------

    def prepull(self, name: str, image: BenchImage, **spec: Any) -> float:
        """Apply a PrePull of `image` for the real node; seconds until it is Ready."""
        started = time.monotonic()
        self.plane.apply(
            {
                "apiVersion": "imageward.io/v1alpha1",
                "kind": "PrePull",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "images": [image.ref],
                    "nodeSelector": self.node.node_selector,
                    "tolerations": [self.node.toleration],
                    **spec,
                },
            }
        )

        def ready() -> bool:
            status = self.plane.get_json("prepull", name, "-n", NAMESPACE).get("status") or {}
            conditions = {c["type"]: c for c in status.get("conditions") or []}
            return (
                conditions.get("Ready", {}).get("status") == "True"
                and (status.get("nodes") or {}).get("ready") == 1
            )

        harness.wait_until(f"PrePull {name} Ready", ready, timeout=900)
        return time.monotonic() - started

    def planned_bytes(self, name: str) -> int:
        status = self.plane.get_json("prepull", name, "-n", NAMESPACE).get("status") or {}
        return int((status.get("plan") or {}).get("bytes") or 0)

    def naive_daemonset(self, name: str, image: BenchImage) -> float:
        started = time.monotonic()
        self.plane.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "selector": {"matchLabels": {"app": name}},
                    "template": self.pod_template(name, image.ref),
                },
            }
        )

        def running() -> bool:
            pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=f"app={name}").items
            return any(p.status and p.status.phase == "Running" for p in pods)

        harness.wait_until(f"DaemonSet {name} Running", running, timeout=900)
        return time.monotonic() - started

    def forget(self, image: BenchImage) -> None:
        """Remove every reference to the image from the node (containerd collects it)."""
        listed = self.node.containerd.ctr("images", "ls", "-q").stdout.split()
        names = [
            ref for ref in listed if ref.startswith(f"{self.registry.host}/{image.repository}")
        ]
        if names:
            self.node.containerd.ctr("images", "rm", *names, check=False)

    # -- one scenario -------------------------------------------------------------------------

    def run(self, size_mib: int, scenario: str, image: BenchImage, label: str) -> Row:
        name = f"s{size_mib}-{label}"
        prepull_seconds: float | None = None
        planned = 0
        self.proxy.reset_counts()
        if scenario == "images":
            prepull_seconds = self.prepull(name, image, mode="Images")
            planned = image.bytes
        elif scenario.startswith("layers"):
            spec: dict[str, Any] = {"mode": "Layers"}
            if scenario == "layers 50%":
                spec["layers"] = {"budgetPerNode": str(image.bytes // 2)}
            prepull_seconds = self.prepull(name, image, **spec)
            planned = self.planned_bytes(name)
        elif scenario == "naive DaemonSet":
            prepull_seconds = self.naive_daemonset(f"{name}-ds", image)
            planned = image.bytes
        prepull_bytes = sum(size for _m, _p, size in self.proxy.sent())
        start = self.start_deployment(name, image)
        self.delete_deployment(name)
        if scenario in ("images", "layers 50%", "layers 100%"):
            self.plane.kubectl("delete", "prepull", name, "-n", NAMESPACE, "--wait=true")
        if scenario == "naive DaemonSet":
            self.plane.kubectl("delete", "daemonset", f"{name}-ds", "-n", NAMESPACE)
            self.wait_no_pods(f"app={name}-ds")
        self.wait_no_pods("imageward.io/prepull")
        self.forget(image)
        return Row(size_mib, scenario, image, planned, prepull_seconds, prepull_bytes, start)


def install_crds(plane: controlplane.ControlPlane) -> None:
    """The CRDs, waited for until Established (a wait right after the apply can find no
    status yet, which kubectl wait reports as an error: so poll)."""
    for crd in sorted(harness.CRDS.glob("*.yaml")):
        plane.kubectl("apply", "--server-side", "-f", str(crd))

        def established(path: pathlib.Path = crd) -> bool:
            conditions = plane.get_json("-f", str(path)).get("status", {}).get("conditions")
            return any(
                c["type"] == "Established" and c["status"] == "True" for c in conditions or []
            )

        harness.wait_until(f"{crd.name} Established", established, timeout=60)


def containerd_version(node: realnode.RealNode) -> str:
    """The server's version from `ctr version` (its last "Version:" line)."""
    lines = node.containerd.ctr("version").stdout.splitlines()
    versions = [line.split(":", 1)[1].strip() for line in lines if "Version:" in line]
    return versions[-1] if versions else "?"


def mib(size: float) -> str:
    return f"{size / MiB:.1f} MiB"


def seconds_text(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.2f} s"


def parse_feature_gates(text: str) -> dict[str, bool]:
    """`A=true,B=false` as a mapping; a clear error for anything else."""
    gates: dict[str, bool] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name or value.lower() not in ("true", "false"):
            raise ValueError(f"--feature-gates: {item!r} is not Name=true or Name=false")
        gates[name] = value.lower() == "true"
    return gates


def print_table(rows: Sequence[Row], *, mbit: float) -> bool:
    """Every run, then (with several runs) the median of each scenario; the goals are judged
    on medians, each change from cold against the median cold start of the same size."""
    cold = {
        size: statistics.median(
            [r.start.seconds for r in rows if r.size_mib == size and r.scenario == "cold"]
        )
        for size in {row.size_mib for row in rows}
    }
    print()
    print(
        f"pod start time, Deployment created -> pod Running, real kubelet, registry behind "
        f"{mbit:g} Mbit/s; 'sandbox up', 'container up': created -> the pod's sandbox, its "
        "app container started (containerd's clock)"
    )
    header = (
        f"| {'image':>7} | {'scenario':15} | {'pre-pull':>16} | {'start':>7} | "
        f"{'vs cold':>7} | {'sandbox up':>10} | {'container up':>12} | {'pull (share)':>14} | "
        f"{'layer bytes at start':>20} | {'unplanned':>10} | {'manifest+config':>15} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(part)) for part in header.split("|")[1:-1]) + "|")
    exact = True
    for row in rows:
        prepull = (
            f"{row.prepull_seconds:5.1f} s {mib(row.prepull_bytes):>9}"
            if row.prepull_seconds is not None
            else "-"
        )
        change = row.start.seconds / cold[row.size_mib] - 1
        versus = "" if row.scenario == "cold" else f"{change:+.0%}"
        pull = row.start.pull_seconds
        pull_text = "present" if pull is None else f"{pull:5.2f} s ({pull / row.start.seconds:.0%})"
        if row.scenario.startswith("layers"):
            exact = exact and row.start.layer_bytes == row.unplanned
        print(
            f"| {row.size_mib:>3} MiB | {row.scenario:15} | {prepull:>16} | "
            f"{row.start.seconds:5.2f} s | {versus:>7} | "
            f"{seconds_text(row.start.sandbox_seconds):>10} | "
            f"{seconds_text(row.start.container_seconds):>12} | "
            f"{pull_text:>14} | {mib(row.start.layer_bytes):>20} | {mib(row.unplanned):>10} | "
            f"{row.start.other_bytes / 1024:11.1f} KiB |"
        )
    groups: dict[tuple[int, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.size_mib, row.scenario), []).append(row)
    if any(len(group) > 1 for group in groups.values()):
        print()
        print("medians (min-max) over the runs of each scenario")
        print("| image | scenario | runs | start | vs cold | container up | vs cold |")
        print("|---|---|---|---|---|---|---|")
        for (size, scenario), group in groups.items():
            starts = [r.start.seconds for r in group]
            ups = [r.start.container_seconds for r in group if r.start.container_seconds]
            cold_ups = [
                r.start.container_seconds
                for r in groups.get((size, "cold"), [])
                if r.start.container_seconds
            ]
            versus = (
                "" if scenario == "cold" else f"{statistics.median(starts) / cold[size] - 1:+.0%}"
            )
            up_versus = (
                f"{statistics.median(ups) / statistics.median(cold_ups) - 1:+.0%}"
                if ups and cold_ups and scenario != "cold"
                else ""
            )
            up_text = (
                f"{statistics.median(ups):.2f} s ({min(ups):.2f}-{max(ups):.2f})" if ups else "?"
            )
            print(
                f"| {size} MiB | {scenario} | {len(group)} | {statistics.median(starts):.2f} s "
                f"({min(starts):.2f}-{max(starts):.2f}) | {versus} | {up_text} | {up_versus} |"
            )
    print()
    met = True
    goal = groups.get((100, "layers 100%"))
    if goal:
        seconds = statistics.median([r.start.seconds for r in goal])
        reduction = 1 - seconds / cold[100]
        met = reduction >= 0.90
        runs = f" (median of {len(goal)} runs)" if len(goal) > 1 else ""
        print(
            f"goal: 100 MiB image, everything planned: start time at least 90% lower than cold: "
            f"{reduction:.0%} lower{runs} ({seconds:.2f} s vs {cold[100]:.2f} s): "
            + ("met" if met else "MISSED")
        )
    print(
        "goal: layer bytes fetched at start == the unplanned bytes, every Layers scenario: "
        + ("met" if exact else "MISSED")
    )
    return met and exact


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="30,100,300", help="image sizes in MiB")
    parser.add_argument("--mbit", type=float, default=100.0, help="the link to the registry")
    parser.add_argument("--layers", type=int, default=6, help="big layers per image (even)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="which scenarios, comma-separated"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each scenario (a fresh image each)"
    )
    parser.add_argument(
        "--containerd",
        choices=("containerd", "containerd2"),
        default="containerd",
        help="the node's runtime: Debian's containerd 1.6, or the 2.x build of `make tools`",
    )
    parser.add_argument(
        "--feature-gates",
        default="",
        help="Kubernetes feature gates for the control plane and the kubelet, e.g. "
        "EventedPLEG=true (the kubelet learns of container starts from the runtime's CRI "
        "events instead of its 1 s relist; needs --containerd containerd2)",
    )
    args = parser.parse_args(argv)
    try:
        feature_gates = parse_feature_gates(args.feature_gates)
    except ValueError as e:
        parser.error(str(e))
    if os.geteuid() != 0:
        print("startup_bench needs root: a real kubelet node", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    scenarios = [s.strip() for s in args.scenarios.split(",")]
    if "cold" not in scenarios:
        scenarios.insert(0, "cold")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWARD_")}
    os.environ.clear()
    os.environ.update(env)
    address = controlplane.primary_address()
    if address is None:
        print("no address besides 127.0.0.1 for pods to reach", file=sys.stderr)
        return 2
    loads = [os.getloadavg()[0]]
    run_id = f"{time.time():.0f}"
    with contextlib.ExitStack() as stack:
        work = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="iw-start-")))
        image = operatorimage.ensure_built()
        plane = stack.enter_context(
            controlplane.ControlPlane(
                nodes=0,
                advertise_address=address,
                workdir=work / "plane",
                feature_gates=feature_gates,
            )
        )
        install_crds(plane)
        for namespace in (harness.OPERATOR_NAMESPACE, NAMESPACE):
            plane.create_namespace(namespace)
        registry = stack.enter_context(registries.start_anonymous(workdir=work / "registry"))
        infra = stack.enter_context(registries.start_anonymous(workdir=work / "infra"))
        proxy = stack.enter_context(
            faultproxy.ProxyProcess(registry.url, rate=args.mbit * 1e6 / 8, bind=address)
        )
        operator_image = operatorimage.push(image, infra, repository="imageward/operator")
        node = realnode.RealNode(
            plane, log_dir=work / "node", lock_timeout=3600, containerd_tool=args.containerd
        )
        node.add_registry(registry.host, endpoint=proxy.url)
        node.add_registry(infra.host)
        print("waiting for the real node (one per machine)...", flush=True)
        stack.enter_context(node)
        values = nodeagent.build_values(
            repository=operator_image.name,
            digest=operator_image.digest,
            containerd_socket=node.socket,
            node_selector=node.node_selector,
            tolerations=[node.toleration],
            insecure=[registry.host, proxy.host],
            mirrors={registry.host: proxy.host},
        )
        manifests = nodeagent.render_chart(values)
        stack.enter_context(
            harness.running_operator(
                plane,
                insecure_registries=[registry.host, infra.host, proxy.host],
                workdir=work / "operator",
                cpu=None,
                env={
                    "IMAGEWARD_HELPER_IMAGE": operator_image.pinned,
                    "IMAGEWARD_PAUSE_IMAGE": node.pause_image,
                    **nodeagent.select_operator_env(manifests),
                },
            )
        )
        objects = nodeagent.select_agent_objects(manifests)
        nodeagent.apply(plane, objects)
        nodeagent.wait_ready(plane, nodeagent.find_daemonset(objects), node=node.name)
        events = stack.enter_context(containerd.EventLog(node.socket, work / "events"))
        bench = Bench(plane, node, proxy, registry, events)
        gates = ", ".join(f"{k}={v}".lower() for k, v in feature_gates.items()) or "none"
        print(
            f"real node {node.name} ({node.node_ip}), agent Ready; registry {registry.host} "
            f"behind {args.mbit:g} Mbit/s ({proxy.host}); containerd "
            f"{containerd_version(node)}; feature gates: {gates}; {harness.load_note()}",
            flush=True,
        )
        rows: list[Row] = []
        runs = [
            (size, index, scenario, repetition)
            for size in sizes
            for repetition in range(args.repeat)
            for index, scenario in enumerate(scenarios)
        ]
        for size, index, scenario, repetition in runs:
            manifest, layers = build_image(size, f"{scenario}-{repetition}", args.layers, run_id)
            repository = f"bench/s{size}-{index}-r{repetition}"
            pushed = registry.client().push(repository, manifest, tag="1.0")
            assert manifest.config is not None
            bench_image = BenchImage(
                pushed.ref,
                repository,
                pushed.digest,
                layers,
                frozenset({manifest.config.digest}),
            )
            del manifest
            row = bench.run(size, scenario, bench_image, f"{index}-r{repetition}")
            rows.append(row)
            print(
                f"  {size} MiB {scenario} (run {repetition + 1}): start {row.start.seconds:.2f} s"
                f" (container up {seconds_text(row.start.container_seconds)}), "
                f"{mib(row.start.layer_bytes)} at start; load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            loads.append(os.getloadavg()[0])
        ok = print_table(rows, mbit=args.mbit)
        print(
            f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} during the run, on "
            f"{os.cpu_count()} CPUs; containerd {containerd_version(node)}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
