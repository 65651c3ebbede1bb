"""imageward next to Kyverno and sigstore policy-controller: same cluster, images, policies.

    .venv/bin/python bench/peers_bench.py [--reviews 1000] [--concurrency 16]
        [--cold-samples 5] [--latency 0.02] [--controllers imageward,kyverno,policy-controller]
        [--scenarios legacy,bundle,size] [--skip-cli] [--skip-admission] [--profile FILE]

Needs `make peer-tools` (the peers' binaries and manifests in the tool cache); without
them it says so and exits 0, so `make bench` runs on a machine that lacks them.

One local control plane (etcd, kube-apiserver, controllers, one kwok node), one
anonymous registry behind two fault proxies (one adding `--latency` per request, one
adding nothing), and small 3-container pods whose images are signed by real cosign with
one key. Each controller in turn runs as the admission webhook of the real apiserver
(pinned to CPU 0; the apiserver, etcd and this script on CPU 1), set up as its release
sets it up (`imageward.localcluster.peers`), with the same policy in its own spelling:

- `legacy`: images signed in cosign's legacy format (`.sig` tag); policy: a signature by
  the key, and the image pinned to its digest;
- `bundle`: images signed as Sigstore bundles (cosign v3's default), the same policy;
- `size`: legacy-signed images, the same policy plus a size limit (Kyverno: its sample
  `block-large-images` rule, an `imageRegistry` context summing the layer sizes).

A controller that cannot express a scenario gets "cannot" in the table, with why, and
the first of them is tried once to show what happens. Figures per controller:

- cold: a pod create through the apiserver (request sent -> response read) with three
  images the controller has never seen, every registry request +`--latency`; registry
  requests per pod and round trips in sequence (as in `admission_bench.py`);
- warm: the same pod again and again (`generateName`, never scheduled): p50/p99 and
  pods/s with 1 and `--concurrency` creates in flight, the controller's CPU seconds per
  pod admission (all its webhook calls), registry requests per warm pod, peak RSS;
- `apiserver alone`: the same creates with no webhook at all, the floor under all three;
- imageward runs with its background scanner off (`IMAGEWARD_SCAN_ENABLED=false`), as
  Kyverno's policy here has `background: false` and policy-controller has no background
  scans; `--imageward-scans` leaves it on (each burst of creates then wakes a scan pass
  in the operator process, on the same core as the webhook);
- the CLIs (`imageward check`, `kubectl-kyverno apply`, policy-controller's `tester`) on
  the same 10 legacy-signed images, all in one process and one process per image.

Ratios are imageward / the best peer (for latency and CPU lower is better, for pods/s
higher). The load average is printed before and after: other work on the machine shows
in every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import http.client
import itertools
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import harness
from bench.admission_bench import TimedProxy, critical_path
from imageward.localcluster import (
    controlplane,
    cosign,
    faultproxy,
    images,
    peers,
    registries,
    tools,
)

NAMESPACE = "bench"
UNSCHEDULED = "imageward-bench-unscheduled"  # no scheduler binds these pods: no kwok work
MAX_SIZE = "2Gi"  # block-large-images' limit; every bench image is far below it
CONTROLLERS = ("imageward", peers.KYVERNO, peers.POLICY_CONTROLLER)


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    legacy: bool
    size: bool


SCENARIOS = (
    Scenario("legacy", "legacy signatures (.sig), key + digest pinning", legacy=True, size=False),
    Scenario(
        "bundle", "Sigstore bundles (cosign v3), key + digest pinning", legacy=False, size=False
    ),
    Scenario("size", "legacy signatures + size rule (block-large-images)", legacy=True, size=True),
)

#: What a peer cannot express, and why (the table says so instead of leaving a gap).
CANNOT = {
    (peers.POLICY_CONTROLLER, "bundle"): "bundles only for keyless authorities (0.15.1)",
    (peers.POLICY_CONTROLLER, "size"): "no size rule",
}


# -- images ----------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class ImageSet:
    """Repositories (no host) of one scenario: warm, cold (3 per sample), an unsigned one."""

    warm: list[str]
    cold: list[list[str]]
    unsigned: str


def prepare_images(
    registry: registries.Registry,
    tool: cosign.Cosign,
    key: cosign.KeyPair,
    scenarios: Sequence[Scenario],
    cold_samples: int,
    controllers: int,
) -> dict[str, ImageSet]:
    """Push and sign every image the run needs, signing in parallel (cosign is slow)."""
    client = registry.client()
    sets: dict[str, ImageSet] = {}
    to_sign: list[tuple[str, bool]] = []

    def push(repository: str) -> str:
        pushed = client.push(repository, images.nonroot_image(repository), tag="1.0")
        return pushed.pinned

    for scenario in scenarios:
        prefix = f"bench/{scenario.name}"
        warm = [f"{prefix}/warm-{i}" for i in range(3)]
        cold = [
            [f"{prefix}/cold-{c}-{s}-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
            for c, s in itertools.product(range(controllers), range(cold_samples))
        ]
        unsigned = f"{prefix}/unsigned"
        push(unsigned)
        for repository in [*warm, *itertools.chain.from_iterable(cold)]:
            to_sign.append((push(repository), scenario.legacy))
        sets[scenario.name] = ImageSet(warm, cold, unsigned)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda item: tool.sign(item[0], key, legacy=item[1]), to_sign))
    return sets


# -- pod creates through the apiserver -------------------------------------------------------


def pod_body(refs: Sequence[str]) -> bytes:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "bench-", "namespace": NAMESPACE},
        "spec": {
            "schedulerName": UNSCHEDULED,
            "automountServiceAccountToken": False,
            "containers": [
                {"name": f"c{i}", "image": ref, "resources": {}} for i, ref in enumerate(refs)
            ],
        },
    }
    return json.dumps(pod).encode()


class Api:
    """Pod creates on one keep-alive HTTPS connection, as the admin user (reconnecting
    once when the apiserver closed it while idle)."""

    def __init__(self, plane: controlplane.ControlPlane) -> None:
        self.plane = plane
        self.context = plane.ssl_context()
        self.connection = self._connect()

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.plane.port, context=self.context, timeout=60
        )

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                self.connection.close()
                self.connection = self._connect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def create(self, body: bytes, *, dry_run: bool = False) -> tuple[int, dict[str, Any]]:
        path = f"/api/v1/namespaces/{NAMESPACE}/pods" + ("?dryRun=All" if dry_run else "")
        status, payload = self.call("POST", path, body)
        return status, json.loads(payload) if payload else {}

    def delete_pods(self) -> None:
        """Delete every bench pod (one deletecollection) and wait until none is left."""
        self.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods")

        def gone() -> bool:
            _, payload = self.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?limit=1")
            items: list[Any] = json.loads(payload).get("items", [])
            return not items

        try:
            self.plane.wait_for("bench pods deleted", gone, timeout=600)
        except controlplane.ControlPlaneError as e:  # slow, not wrong: the next run goes on
            print(f"  warning: {e}", flush=True)

    def close(self) -> None:
        self.connection.close()


def pinned_images(pod: dict[str, Any]) -> list[str]:
    return [c["image"] for c in pod.get("spec", {}).get("containers", [])]


def refusal(answer: dict[str, Any]) -> str:
    text = " ".join(str(answer.get("message") or answer.get("reason") or answer).split())
    return text if len(text) <= 240 else text[:80] + " … " + text[-150:]


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    latencies: list[float]
    wall: float
    cpu: float

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.wall

    @property
    def cpu_per_review(self) -> float:
        return self.cpu / len(self.latencies)


def sequential(api: Api, body: bytes, count: int, cpu: Callable[[], float]) -> Run:
    latencies = []
    before = cpu()
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        status, answer = api.create(body)
        latencies.append(time.perf_counter() - t)
        if status != 201:
            raise RuntimeError(f"warm pod refused ({status}): {refusal(answer)}")
    return Run(latencies, time.perf_counter() - started, cpu() - before)


async def _concurrent(
    plane: controlplane.ControlPlane, body: bytes, count: int, concurrency: int
) -> tuple[list[float], float]:
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=plane.ssl_context())
    url = f"{plane.server}/api/v1/namespaces/{NAMESPACE}/pods"
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    remaining = count
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post() -> float:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.read()
                if response.status != 201:
                    raise RuntimeError(f"warm pod refused ({response.status}): {text[:300]!r}")
            return time.perf_counter() - started

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                latencies.append(await post())

        await asyncio.gather(*(post() for _ in range(concurrency)))  # open the connections
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - started


def concurrent_run(
    plane: controlplane.ControlPlane,
    body: bytes,
    count: int,
    concurrency: int,
    cpu: Callable[[], float],
) -> Run:
    before = cpu()
    latencies, wall = asyncio.run(_concurrent(plane, body, count, concurrency))
    return Run(latencies, wall, cpu() - before)


# -- the controllers -------------------------------------------------------------------------


class Subject:
    """One controller under test: start it, give it a scenario's policy, take it away."""

    name = ""
    version = ""

    def __init__(self, plane: controlplane.ControlPlane, key: cosign.KeyPair) -> None:
        self.plane = plane
        self.key = key
        self.pid = 0

    def start(self, stack: contextlib.ExitStack, workdir: pathlib.Path) -> None:
        raise NotImplementedError

    def policy(self, scenario: Scenario) -> dict[str, Any]:
        raise NotImplementedError

    def wait_policy(self, policy: dict[str, Any]) -> None:
        """Until the controller says the policy is in force (then a probe confirms)."""

    def cpu_seconds(self) -> float:
        return peers.process_cpu_seconds(self.pid)

    def peak_rss(self) -> int:
        return peers.process_peak_rss(self.pid)

    def apply(self, scenario: Scenario) -> dict[str, Any]:
        policy = self.policy(scenario)
        self.plane.apply(policy)
        self.wait_policy(policy)
        return policy

    def remove(self, policy: dict[str, Any]) -> None:
        self.plane.kubectl(
            "delete",
            f"{policy['kind'].lower()}.{policy['apiVersion'].split('/')[0]}",
            policy["metadata"]["name"],
            "--ignore-not-found",
        )


class Imageward(Subject):
    name = "imageward"

    def __init__(
        self,
        plane: controlplane.ControlPlane,
        key: cosign.KeyPair,
        insecure: Sequence[str],
        profile: pathlib.Path | None,
        scans: bool = False,
    ) -> None:
        super().__init__(plane, key)
        self.insecure = insecure
        self.profile = profile
        self.scans = scans
        from imageward import __version__

        self.version = __version__

    def start(self, stack: contextlib.ExitStack, workdir: pathlib.Path) -> None:
        harness.install_crds(self.plane)
        operator = stack.enter_context(
            harness.running_operator(
                self.plane,
                insecure_registries=self.insecure,
                workdir=workdir,
                cpu=0,
                profile=self.profile,
                # Kyverno's policy here says `background: false` and policy-controller
                # has no background scans: imageward's scanner would be work they skip.
                env={"IMAGEWARD_SCAN_ENABLED": "true" if self.scans else "false"},
            )
        )
        self.pid = operator.pid

    def policy(self, scenario: Scenario) -> dict[str, Any]:
        return peers.build_imagepolicy(
            f"bench-{scenario.name}",
            f"bench/{scenario.name}",
            self.key.public_pem,
            max_size=MAX_SIZE if scenario.size else None,
        )

    def wait_policy(self, policy: dict[str, Any]) -> None:
        harness.wait_policies_ready(self.plane, [policy["metadata"]["name"]])


class Kyverno(Subject):
    name = peers.KYVERNO

    def start(self, stack: contextlib.ExitStack, workdir: pathlib.Path) -> None:
        controller = stack.enter_context(peers.Kyverno(self.plane, workdir, cpu=0))
        self.version = controller.version
        self.pid = controller.pid

    def policy(self, scenario: Scenario) -> dict[str, Any]:
        return peers.build_kyverno_policy(
            f"bench-{scenario.name}",
            f"bench/{scenario.name}",
            self.key.public_pem,
            bundle=not scenario.legacy,
            max_size=MAX_SIZE if scenario.size else None,
        )

    def wait_policy(self, policy: dict[str, Any]) -> None:
        name = policy["metadata"]["name"]

        def ready() -> bool:
            status = self.plane.get_json("clusterpolicy", name).get("status") or {}
            return any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )

        self.plane.wait_for(f"ClusterPolicy {name} Ready", ready, timeout=120)


class PolicyController(Subject):
    name = peers.POLICY_CONTROLLER

    def start(self, stack: contextlib.ExitStack, workdir: pathlib.Path) -> None:
        controller = stack.enter_context(peers.PolicyController(self.plane, workdir, cpu=0))
        self.version = controller.version
        self.pid = controller.pid

    def policy(self, scenario: Scenario) -> dict[str, Any]:
        policy = peers.build_cluster_image_policy(
            f"bench-{scenario.name}", f"bench/{scenario.name}", self.key.public_pem
        )
        if not scenario.legacy:  # what a user would try for bundles; it refuses keys
            policy["spec"]["authorities"][0]["signatureFormat"] = "bundle"
        return policy


def probe(
    api: Api, subject: Subject, signed: Sequence[str], unsigned: str, *, timeout: float = 120
) -> None:
    """Until the webhook is in force: an unsigned image refused, signed ones admitted and
    pinned to their digest (dry-run creates, so nothing is stored)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status, answer = api.create(pod_body([unsigned]), dry_run=True)
        if status == 201:
            last = "an unsigned image was admitted"
        else:
            status, answer = api.create(pod_body(signed), dry_run=True)
            if status == 201 and all("@sha256:" in i for i in pinned_images(answer)):
                return
            last = f"signed images: {status} {refusal(answer) if status != 201 else answer}"
        time.sleep(1)
    raise RuntimeError(f"{subject.name}: the webhook is not in force after {timeout}s: {last}")


# -- figures ---------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Cold:
    seconds: list[float] = dataclasses.field(default_factory=list)
    requests: list[int] = dataclasses.field(default_factory=list)
    trips: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Figures:
    """One controller in one scenario (or why not)."""

    cannot: str | None = None
    evidence: str | None = None
    cold: Cold | None = None
    sequential: Run | None = None
    concurrent: Run | None = None
    warm_requests: float | None = None


def measure_scenario(
    subject: Subject,
    scenario: Scenario,
    sets: ImageSet,
    api: Api,
    direct: TimedProxy,
    slow: TimedProxy,
    args: argparse.Namespace,
    cold_offset: int,
) -> Figures:
    figures = Figures()
    warm = [f"{direct.host}/{r}:1.0" for r in sets.warm]
    policy = subject.apply(scenario)
    try:
        probe(api, subject, warm, f"{direct.host}/{sets.unsigned}:1.0")
        if not args.skip_cold:
            figures.cold = Cold()
            for sample in range(args.cold_samples):
                refs = [f"{slow.host}/{r}:1.0" for r in sets.cold[cold_offset + sample]]
                slow.take()
                sent = time.monotonic()
                status, answer = api.create(pod_body(refs))
                received = time.monotonic()
                seen = slow.take()
                if status != 201:
                    raise RuntimeError(f"{subject.name}: cold pod refused: {refusal(answer)}")
                figures.cold.seconds.append(received - sent)
                figures.cold.requests.append(len(seen))
                figures.cold.trips.append(len(critical_path(seen)))
        body = pod_body(warm)
        for _ in range(3):  # facts, tags and signatures cached; connections open
            api.create(body)
        direct.take()
        figures.sequential = sequential(api, body, args.reviews, subject.cpu_seconds)
        figures.concurrent = concurrent_run(
            api.plane, body, args.reviews, args.concurrency, subject.cpu_seconds
        )
        figures.warm_requests = len(direct.take()) / (2 * args.reviews)
    finally:
        subject.remove(policy)
        api.delete_pods()
    return figures


def try_cannot(
    subject: Subject, scenario: Scenario, sets: ImageSet, api: Api, host: str
) -> str | None:
    """What happens when the peer is asked anyway (bundles: the policy a user would write)."""
    if scenario.size:
        return None
    policy = subject.policy(scenario)
    try:
        subject.plane.apply(policy)
    except controlplane.ControlPlaneError as e:
        return f"the policy is refused: {str(e)[-300:]}"
    try:
        time.sleep(3)  # let the controller compile the policy
        status, answer = api.create(pod_body([f"{host}/{r}:1.0" for r in sets.warm]), dry_run=True)
        return "admitted" if status == 201 else f"refused: {refusal(answer)}"
    finally:
        subject.remove(policy)


def measure_baseline(api: Api, direct: TimedProxy, args: argparse.Namespace) -> Figures:
    """The same creates with no webhook: what the apiserver itself costs."""
    body = pod_body([f"{direct.host}/bench/legacy/warm-{i}:1.0" for i in range(3)])
    for _ in range(3):
        api.create(body)
    figures = Figures()
    figures.sequential = sequential(api, body, args.reviews, lambda: 0.0)
    figures.concurrent = concurrent_run(
        api.plane, body, args.reviews, args.concurrency, lambda: 0.0
    )
    api.delete_pods()
    return figures


# -- CLIs ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CliFigure:
    seconds: float | None
    requests: int | None = None
    note: str = ""


def run_commands(
    commands: Sequence[Sequence[str]],
    env: dict[str, str],
    proxy: faultproxy.ProxyProcess | None,
    repeat: int,
    *,
    expect: Callable[[subprocess.CompletedProcess[str]], bool],
) -> CliFigure:
    times = []
    requests = None
    # One untimed run first: page cache, and the bytecode an installed package has.
    subprocess.run(commands[0], capture_output=True, env=env, timeout=300, check=False)
    for _ in range(repeat):
        if proxy is not None:
            proxy.reset_counts()
        started = time.perf_counter()
        for argv in commands:
            result = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=300, check=False
            )
            if not expect(result):
                raise RuntimeError(
                    f"{argv[0]} … exited {result.returncode}:\n{result.stdout[-600:]}"
                    f"\n{result.stderr[-900:]}"
                )
        times.append(time.perf_counter() - started)
        if proxy is not None:
            requests = proxy.count()
    return CliFigure(statistics.median(times), requests)


def measure_clis(
    registry: registries.Registry,
    key: cosign.KeyPair,
    repositories: Sequence[str],
    workdir: pathlib.Path,
    args: argparse.Namespace,
) -> dict[str, dict[str, CliFigure]]:
    """Rows (floor, one process, one per image; per latency) x the three CLIs."""
    env = {
        **os.environ,
        "HOME": str(workdir),
        "DOCKER_CONFIG": str(workdir / "docker"),
        "TUF_ROOT": str(workdir / "tuf"),
        "KYVERNO_EXPERIMENTAL": "false",
    }
    # An installed imageward has bytecode; a session that forbids writing it would make
    # every run compile the sources again (a third of the floor).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    script = pathlib.Path(sys.executable).with_name("imageward")
    imageward = [str(script) if script.exists() else sys.executable]
    if not script.exists():
        imageward += ["-m", "imageward"]
    if args.imageward_tree:  # another checkout's imageward (a before/after comparison)
        env["PYTHONPATH"] = str(args.imageward_tree.resolve() / "operator")
    files = workdir / "cli"
    files.mkdir(parents=True, exist_ok=True)
    iw_policy = files / "imagepolicy.yaml"
    iw_policy.write_text(
        yaml.safe_dump(peers.build_imagepolicy("bench-cli", "bench", key.public_pem))
    )
    ky_policy = files / "clusterpolicy.yaml"
    ky_policy.write_text(
        yaml.safe_dump(peers.build_kyverno_policy("bench-cli", "bench", key.public_pem))
    )
    pc_policy = files / "clusterimagepolicy.yaml"
    pc_policy.write_text(
        yaml.safe_dump(peers.build_cluster_image_policy("bench-cli", "bench", key.public_pem))
    )

    def pods_file(name: str, refs: Sequence[str]) -> pathlib.Path:
        path = files / f"{name}.yaml"
        docs = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p{i}", "namespace": "default"},
                "spec": {"containers": [{"name": "c", "image": ref}]},
            }
            for i, ref in enumerate(refs)
        ]
        path.write_text(yaml.safe_dump_all(docs))
        return path

    kyverno = [
        str(tools.find("kubectl-kyverno")),
        "apply",
        str(ky_policy),
        "--registry",  # verifyImages needs the registry
        "--remove-color",
    ]
    tester = [str(tools.find("policy-tester")), "--policy", str(pc_policy), "--log-level=error"]
    ok: Callable[[subprocess.CompletedProcess[str]], bool] = lambda r: r.returncode == 0  # noqa: E731

    def kyverno_ok(result: subprocess.CompletedProcess[str]) -> bool:
        # `apply` exits 0 with failures listed; a pass says "pass: N, fail: 0".
        return result.returncode == 0 and "fail: 0" in result.stdout

    rows: dict[str, dict[str, CliFigure]] = {}
    nomatch = "example.invalid/elsewhere/app:1.0"
    floor_pods = pods_file("floor", [nomatch])
    rows["imageward check --help / kyverno apply --help / tester --help"] = {
        "imageward": run_commands(
            [[*imageward, "check", "--help"]], env, None, args.repeat, expect=ok
        ),
        peers.KYVERNO: run_commands(
            [[kyverno[0], "apply", "--help"]], env, None, args.repeat, expect=ok
        ),
        peers.POLICY_CONTROLLER: run_commands(
            [[tester[0], "--help"]], env, None, args.repeat, expect=lambda r: True
        ),
    }
    rows["floor (nothing to look up)"] = {
        "imageward": run_commands(
            [[*imageward, "check", "--policy", str(iw_policy), nomatch]],
            env,
            None,
            args.repeat,
            expect=ok,
        ),
        peers.KYVERNO: run_commands(
            [[*kyverno, "--resource", str(floor_pods)]],
            env,
            None,
            args.repeat,
            expect=lambda r: r.returncode == 0,
        ),
        peers.POLICY_CONTROLLER: run_commands(
            [[str(tools.find("policy-tester")), "--version"]], env, None, args.repeat, expect=ok
        ),
    }
    for latency in args.cli_latency:
        with faultproxy.ProxyProcess(registry.url, latency=latency) as proxy:
            refs = [f"{proxy.host}/{r}:1.0" for r in repositories]
            ours = [
                *imageward,
                "check",
                "--policy",
                str(iw_policy),
                "--insecure-registry",
                proxy.host,
            ]
            label = f"+{latency * 1000:.0f} ms"
            all_pods = pods_file(f"all-{int(latency * 1000)}", refs)
            rows[f"{len(refs)} images, one process, {label}"] = {
                "imageward": run_commands([[*ours, *refs]], env, proxy, args.repeat, expect=ok),
                peers.KYVERNO: run_commands(
                    [[*kyverno, "--resource", str(all_pods)]],
                    env,
                    proxy,
                    args.repeat,
                    expect=kyverno_ok,
                ),
                peers.POLICY_CONTROLLER: CliFigure(None, note="cannot (1 image/run)"),
            }
            one_pod = [
                pods_file(f"one-{int(latency * 1000)}-{i}", [ref]) for i, ref in enumerate(refs)
            ]
            rows[f"{len(refs)} images, one process each, {label}"] = {
                "imageward": run_commands(
                    [[*ours, ref] for ref in refs], env, proxy, args.repeat, expect=ok
                ),
                peers.KYVERNO: run_commands(
                    [[*kyverno, "--resource", str(p)] for p in one_pod],
                    env,
                    proxy,
                    args.repeat,
                    expect=kyverno_ok,
                ),
                peers.POLICY_CONTROLLER: run_commands(
                    [[*tester, "--image", ref] for ref in refs], env, proxy, args.repeat, expect=ok
                ),
            }
    return rows


# -- the table -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    label: str
    values: dict[str, float | str | None]
    lower_is_better: bool = True
    unit: str = ""
    digits: int = 1


def cell(value: float | str | None, unit: str, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}{unit}"


def ratio(row: Row, names: Sequence[str]) -> str:
    mine = row.values.get("imageward")
    theirs = [
        v for n, v in row.values.items() if n != "imageward" and isinstance(v, int | float) and v
    ]
    if not isinstance(mine, int | float) or not theirs:
        return ""
    best = min(theirs) if row.lower_is_better else max(theirs)
    return f"{mine / best:.2f}"


def print_table(title: str, rows: Sequence[Row], names: Sequence[str]) -> None:
    width = max(len(r.label) for r in rows) + 2
    columns = [*names, "iw ÷ best peer"]
    col = 23
    print(f"\n{title}")
    print(f"{'':{width}}" + "".join(f"{c:>{col}}" for c in columns))
    for row in rows:
        values = [cell(row.values.get(n), row.unit, row.digits) for n in names]
        direction = " (↓)" if row.lower_is_better else " (↑)"
        mark = ratio(row, names)
        label = row.label + (direction if mark else "")
        line = f"{label:{width}}" + "".join(f"{v:>{col}}" for v in values)
        print(line + f"{mark:>{col}}")


def admission_rows(
    results: dict[str, dict[str, Figures]],
    names: Sequence[str],
    scenario: Scenario,
    rss: dict[str, int],
) -> list[Row]:
    def each(get: Callable[[Figures], float | None]) -> dict[str, float | str | None]:
        values: dict[str, float | str | None] = {}
        for name in names:
            figures = results.get(name, {}).get(scenario.name)
            if figures is None:
                values[name] = None
            elif figures.cannot is not None:
                values[name] = "cannot"
            else:
                values[name] = get(figures)
        return values

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000

    rows = [
        Row(
            "cold pod create, median",
            each(lambda f: ms(statistics.median(f.cold.seconds)) if f.cold else None),
            unit=" ms",
        ),
        Row(
            "  registry requests per cold pod",
            each(lambda f: statistics.median(f.cold.requests) if f.cold else None),
            digits=0,
        ),
        Row(
            "  registry round trips in sequence",
            each(lambda f: statistics.median(f.cold.trips) if f.cold else None),
            digits=0,
        ),
    ]
    for label, pick in (
        ("1 in flight", "sequential"),
        (f"{ARGS.concurrency} in flight", "concurrent"),
    ):

        def run_of(f: Figures, pick: str = pick) -> Run | None:
            run: Run | None = getattr(f, pick)
            return run

        rows += [
            Row(
                f"warm p50, {label}",
                each(
                    lambda f, r=run_of: (
                        ms(harness.percentile(r(f).latencies, 0.5)) if r(f) else None
                    )
                ),
                unit=" ms",
                digits=2,
            ),
            Row(
                f"warm p99, {label}",
                each(
                    lambda f, r=run_of: (
                        ms(harness.percentile(r(f).latencies, 0.99)) if r(f) else None
                    )
                ),
                unit=" ms",
                digits=2,
            ),
            Row(
                f"warm pods/s, {label}",
                each(lambda f, r=run_of: r(f).per_second if r(f) else None),
                lower_is_better=False,
                digits=0,
            ),
            Row(
                f"controller CPU per pod, {label}",
                each(lambda f, r=run_of: ms(r(f).cpu_per_review) if r(f) else None),
                unit=" ms",
                digits=2,
            ),
        ]
    rows += [
        Row(
            "pods per controller CPU-second (16 in flight)",
            each(
                lambda f: (
                    1 / f.concurrent.cpu_per_review if f.concurrent and f.concurrent.cpu else None
                )
            ),
            lower_is_better=False,
            digits=0,
        ),
        Row("registry requests per warm pod", each(lambda f: f.warm_requests), digits=2),
    ]
    if rss:
        rows.append(
            Row(
                "peak RSS of the controller (whole run)",
                {n: (rss[n] / 2**20 if n in rss else None) for n in names},
                unit=" MiB",
                digits=0,
            )
        )
    return rows


SCENARIOS_BY_NAME = {s.name: s for s in SCENARIOS}
ARGS = argparse.Namespace(concurrency=16)


# -- main ------------------------------------------------------------------------------------


def peer_tools_missing(names: Sequence[str], *, cli: bool) -> list[str]:
    """What `make peer-tools` builds that this run needs and is not there."""
    needed = {
        peers.KYVERNO: ["kyverno"] + (["kubectl-kyverno"] if cli else []),
        peers.POLICY_CONTROLLER: ["policy-webhook"] + (["policy-tester"] if cli else []),
    }
    missing = []
    for name in names:
        for tool in needed.get(name, []):
            try:
                tools.find(tool)
            except tools.ToolMissingError:
                missing.append(tool)
        if name in needed and not (peers.kit_dir(name) / "version").exists():
            missing.append(f"{name} kit")
    return missing


@contextlib.contextmanager
def pinned_to(cpu: int) -> Iterator[None]:
    previous = os.sched_getaffinity(0)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reviews", type=int, default=1000, help="warm pod creates per run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cold-samples", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per registry request")
    parser.add_argument("--controllers", default=",".join(CONTROLLERS))
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--skip-admission", action="store_true")
    parser.add_argument("--cli-images", type=int, default=10)
    parser.add_argument(
        "--cli-latency", type=float, action="append", help="seconds per request (repeatable)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="CLI runs per figure (median)")
    parser.add_argument(
        "--profile", type=pathlib.Path, help="run imageward under pyinstrument, text report here"
    )
    parser.add_argument(
        "--imageward-scans",
        action="store_true",
        help="leave imageward's background scanner on (the peers run without background scans)",
    )
    parser.add_argument(
        "--imageward-tree",
        type=pathlib.Path,
        help="run the CLI of the imageward in this checkout (PYTHONPATH), e.g. an older one",
    )
    args = parser.parse_args(argv)
    args.cli_latency = args.cli_latency or [0.0, args.latency]
    ARGS.concurrency = args.concurrency
    names = [n for n in args.controllers.split(",") if n]
    scenarios = [SCENARIOS_BY_NAME[n] for n in args.scenarios.split(",") if n]

    cli = not args.skip_cli and set(names) >= set(CONTROLLERS)
    missing = peer_tools_missing(names, cli=cli)
    if missing:
        print(f"peers_bench: skipped, not built: {', '.join(missing)} (run `make peer-tools`)")
        return 0
    print(harness.load_note())
    started = time.monotonic()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="imageward-peers-bench-"))
    results: dict[str, dict[str, Figures]] = {}
    versions: dict[str, str] = {}
    rss: dict[str, int] = {}
    baseline: Figures | None = None
    cli_rows: dict[str, dict[str, CliFigure]] = {}
    with contextlib.ExitStack() as stack, pinned_to(1):
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        registry = stack.enter_context(registries.start_anonymous())
        direct = stack.enter_context(TimedProxy(registry.url))
        slow = stack.enter_context(TimedProxy(registry.url, latency=args.latency))
        tool = cosign.Cosign(workdir / "cosign")
        key = tool.generate_key_pair("release")
        sets = prepare_images(registry, tool, key, scenarios, args.cold_samples, len(names))
        print(f"images pushed and signed in {time.monotonic() - started:.0f}s")

        if not args.skip_admission:
            plane = stack.enter_context(controlplane.ControlPlane(nodes=1))
            plane.create_namespace(NAMESPACE, labels={peers.POLICY_INCLUDE_LABEL: "true"})
            plane.create_namespace(harness.OPERATOR_NAMESPACE)
            api = Api(plane)
            stack.callback(api.close)
            baseline = measure_baseline(api, direct, args)
            print(f"control plane ready; apiserver alone measured ({harness.load_note()})")
            for index, name in enumerate(names):
                subject: Subject
                if name == "imageward":
                    subject = Imageward(
                        plane,
                        key,
                        [direct.host, slow.host],
                        args.profile,
                        scans=args.imageward_scans,
                    )
                elif name == peers.KYVERNO:
                    subject = Kyverno(plane, key)
                else:
                    subject = PolicyController(plane, key)
                with contextlib.ExitStack() as controller_stack:
                    t0 = time.monotonic()
                    subject.start(controller_stack, workdir / name)
                    versions[name] = subject.version
                    print(f"\n== {name} {subject.version}: up in {time.monotonic() - t0:.0f}s")
                    results[name] = {}
                    for scenario in scenarios:
                        reason = CANNOT.get((name, scenario.name))
                        if reason is not None:
                            evidence = try_cannot(
                                subject, scenario, sets[scenario.name], api, direct.host
                            )
                            results[name][scenario.name] = Figures(cannot=reason, evidence=evidence)
                            print(
                                f"  {scenario.name}: cannot ({reason})"
                                + (f"; asked anyway: {evidence}" if evidence else "")
                            )
                            continue
                        t1 = time.monotonic()
                        try:
                            figures = measure_scenario(
                                subject,
                                scenario,
                                sets[scenario.name],
                                api,
                                direct,
                                slow,
                                args,
                                index * args.cold_samples,
                            )
                        except Exception as e:  # one failed cell, not a lost run
                            print(f"  {scenario.name}: FAILED: {e}", flush=True)
                            results[name][scenario.name] = Figures(cannot=f"failed: {e}"[:60])
                            continue
                        results[name][scenario.name] = figures
                        seq, conc = figures.sequential, figures.concurrent
                        assert seq is not None and conc is not None
                        print(
                            f"  {scenario.name}: {time.monotonic() - t1:.0f}s; warm p50 "
                            f"{harness.percentile(seq.latencies, 0.5) * 1000:.2f} ms, "
                            f"{conc.per_second:.0f} pods/s at {args.concurrency}; "
                            f"CPU {conc.cpu_per_review * 1000:.2f} ms/pod ({harness.load_note()})"
                        )
                    rss[name] = subject.peak_rss()
        if cli:
            print(f"\n== CLIs ({harness.load_note()})")
            legacy = sets.get("legacy") or next(iter(sets.values()))
            repositories = list(itertools.chain.from_iterable(legacy.cold))[: args.cli_images]
            cli_rows = measure_clis(registry, key, repositories, workdir, args)

    print(f"\n######## imageward {versions.get('imageward', '')} vs the peers")
    print(
        "Versions: "
        + ", ".join(f"{n} {versions.get(n, '?')}" for n in names)
        + f". Pods of 3 containers, cold registry +{args.latency * 1000:.0f} ms per request; "
        f"{args.reviews} warm creates per run. {harness.load_note()}"
    )
    for scenario in scenarios if results else []:
        print_table(
            f"-- {scenario.name}: {scenario.title}",
            admission_rows(results, names, scenario, rss if scenario is scenarios[0] else {}),
            names,
        )
        if baseline is not None and baseline.sequential and baseline.concurrent:
            print(
                f"   apiserver alone (no webhook), the floor under all: p50 "
                f"{harness.percentile(baseline.sequential.latencies, 0.5) * 1000:.2f} ms at 1 in "
                f"flight, {harness.percentile(baseline.concurrent.latencies, 0.5) * 1000:.2f} ms"
                f" and {baseline.concurrent.per_second:,.0f} pods/s at {args.concurrency}"
            )
        for name in names:
            figures = results.get(name, {}).get(scenario.name)
            if figures is not None and figures.cannot:
                print(
                    f"   {name} cannot: {figures.cannot}"
                    + (f" (asked anyway: {figures.evidence})" if figures.evidence else "")
                )
    if cli_rows:
        rows = []
        for label, by_tool in cli_rows.items():
            rows.append(
                Row(
                    label + " (wall ms)",
                    {
                        n: (f.note or None) if f.seconds is None else f.seconds * 1000
                        for n, f in by_tool.items()
                    },
                    digits=0,
                )
            )
            if any(f.requests is not None for f in by_tool.values()):
                rows.append(
                    Row(
                        "  registry requests",
                        {n: f.requests for n, f in by_tool.items()},
                        digits=0,
                    )
                )
        print_table(
            "-- CLIs: imageward check / kubectl-kyverno apply / policy-tester (median of "
            f"{args.repeat})",
            rows,
            list(CONTROLLERS),
        )
    print(f"\ntotal {time.monotonic() - started:.0f}s; {harness.load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
