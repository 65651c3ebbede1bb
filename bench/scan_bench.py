"""Benchmark of background scans at scale: registry requests, API server writes, memory.

    .venv/bin/python bench/scan_bench.py [--nodes 1000] [--images 200] [--pods-per-image 50]
        [--namespaces 20] [--interval 300] [--budget 600]

Starts the local control plane with `--nodes` kwok nodes, an anonymous registry holding
`--images` distinct images (half signed with real cosign, a quarter running as root),
and `--images` Deployments (replicas 0) with `--pods-per-image` pods each, created
straight through the API (the controller-manager's 20 requests/s would take minutes),
each pod controlled by its Deployment and labelled with its own name (so every pod is a
view of its own for the scanner: nothing is shared but the registry lookups). Then
`imageward run --standalone` and two ImagePolicies: `signed` (signatures, Enforce) and
`nonroot` (forbidRootUser, Audit).

Printed, not asserted:
- the cold full scan: duration, registry requests next to the bound (distinct images x
  the requests one cold admission of a signed image needs, measured at the end), API
  server writes next to the bound (one per report that changed: a PolicyReport per
  namespace, the ClusterPolicyReport, one status per policy), requests per minute next
  to the budget;
- the next interval scan (`--interval`), nothing having changed: requests (tags and
  signatures are read again) and writes (none expected);
- a policy change (nonroot: Audit -> Warn): what the partial scan checked and wrote;
- the operator's peak resident memory next to the chart's 512 MiB limit.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import harness
from imageward import kube
from imageward.localcluster import controlplane, cosign, images, registries

CHART_CRDS = harness.ROOT / "charts" / "imageward" / "policyreport-crds"
MEMORY_LIMIT = 512 * 1024 * 1024
SCAN_LINE = re.compile(
    r"scan \((?P<trigger>\w+)\): (?P<targets>\d+) workloads, (?P<checks>\d+) checks of "
    r"(?P<images>\d+) images, (?P<lookups>\d+) registry lookups \((?P<shared>\d+) shared\) "
    r"sending (?P<requests>\d+) requests \(lookups waited (?P<waited>[0-9.]+)s in all for "
    r"budget\), (?P<writes>\d+) writes, (?P<seconds>[0-9.]+)s"
)


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def peak_rss(pid: int) -> tuple[int, int]:
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    values = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M))
    return int(values["VmHWM"]) * 1024, int(values["VmRSS"]) * 1024


def scans(operator: harness.Operator) -> list[dict[str, Any]]:
    text = operator.process.log_path.read_text(errors="replace")
    return [
        {k: (float(v) if "." in v else int(v)) if k != "trigger" else v for k, v in m.items()}
        for m in (match.groupdict() for match in SCAN_LINE.finditer(text))
    ]


def wait_scan(
    operator: harness.Operator, seen: int, *, trigger: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = scans(operator)[seen:]
        for scan in found:
            if scan["trigger"] == trigger:
                return scan
        time.sleep(1.0)
    raise TimeoutError(f"no {trigger} scan within {timeout:.0f}s")


def install_crd(plane: controlplane.ControlPlane, path: pathlib.Path) -> None:
    """Apply a CRD and wait until it is served (`kubectl wait` fails outright, not after
    its timeout, when it asks before the API server wrote any condition)."""
    plane.kubectl("apply", "--server-side", "-f", str(path))
    deadline = time.monotonic() + 120
    while True:
        waited = plane.kubectl(
            "wait", "--for=condition=Established", "-f", str(path), "--timeout=30s", check=False
        )
        if waited.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} not Established: {waited.stderr}")
        time.sleep(1.0)


def add_nodes(plane: controlplane.ControlPlane, count: int, *, wait: float = 900.0) -> int:
    """Create kwok nodes in batches (one apply of a thousand takes longer than kubectl is
    given), then wait for them to be Ready; returns how many are."""
    for first in range(1, count + 1, 50):
        names = [f"kwok-node-{i}" for i in range(first, min(first + 50, count + 1))]
        plane.apply(*(controlplane.build_kwok_node(name) for name in names))
    deadline = time.monotonic() + wait
    while True:
        ready = sum(
            1
            for item in plane.get_json("nodes")["items"]
            if item["metadata"]["name"] != "kwok-node-0"
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in item.get("status", {}).get("conditions", [])
            )
        )
        if ready >= count or time.monotonic() > deadline:
            return ready
        time.sleep(5.0)


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def settle(operator: harness.Operator, seen: int, *, quiet: float = 10.0) -> dict[str, Any]:
    """The scans since `seen`, summed, once none has come for `quiet` seconds."""
    while True:
        count = len(scans(operator))
        time.sleep(quiet)
        if len(scans(operator)) == count:
            break
    found = [s for s in scans(operator)[seen:] if s["trigger"] != "none"]
    keys = ("checks", "images", "lookups", "shared", "requests", "waited", "writes", "seconds")
    total: dict[str, Any] = {key: sum(s[key] for s in found) for key in keys}
    total["targets"] = max(s["targets"] for s in found)
    total["passes"] = len(found)
    total["triggers"] = ", ".join(s["trigger"] for s in found)
    return total


def create_all(client: kube.Kube, bodies: Sequence[dict[str, Any]], *, workers: int = 16) -> None:
    def create(body: dict[str, Any]) -> None:
        namespace = body["metadata"]["namespace"]
        if body["kind"] == "Pod":
            fn = client.core.create_namespaced_pod
        else:
            fn = client.apps.create_namespaced_deployment
        response = fn(namespace, body, _preload_content=False)
        try:
            response.read()  # the whole answer, or the connection cannot be reused
        finally:
            response.release_conn()

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(create, body) for body in bodies]:
            future.result()


def deployment(namespace: str, name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def pod(namespace: str, owner: dict[str, Any], index: int, image: str) -> dict[str, Any]:
    name = f"{owner['metadata']['name']}-{index}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": owner["metadata"]["name"], "pod": name},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--pods-per-image", type=int, default=50)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--interval", type=int, default=300, help="IMAGEWARD_SCAN_INTERVAL")
    parser.add_argument("--budget", type=int, default=600, help="registry requests per minute")
    args = parser.parse_args(argv)
    pods_total = args.images * args.pods_per_image
    print(
        f"== scan benchmark: {args.nodes} kwok nodes, {pods_total} pods ({args.images} "
        f"Deployments x {args.pods_per_image} pods, each pod labelled with its own name), "
        f"{args.images} distinct images ({args.images // 2} signed, {args.images // 4} root), "
        f"{args.namespaces} namespaces; budget {args.budget} registry requests/min"
    )
    print(f"   {harness.load_note()}", flush=True)
    with contextlib.ExitStack() as stack:
        workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory()))
        started = time.monotonic()
        plane = stack.enter_context(controlplane.ControlPlane(nodes=1))
        for crd in [*sorted(harness.CRDS.glob("*.yaml")), *sorted(CHART_CRDS.glob("*.yaml"))]:
            install_crd(plane, crd)
        ready = add_nodes(plane, args.nodes - 1) + 1
        print(
            f"   {ready} of {args.nodes} nodes Ready in {time.monotonic() - started:.0f}s "
            "(pods are scanned whether scheduled or not)",
            flush=True,
        )
        registry = stack.enter_context(registries.start_anonymous(workdir=workdir / "registry"))
        plane.create_namespace(harness.OPERATOR_NAMESPACE)

        started = time.monotonic()
        tool = cosign.Cosign(workdir / "cosign")
        key = tool.generate_key_pair("scan-bench")
        client = registry.client()
        refs: list[str] = []
        to_sign: list[str] = []
        for i in range(args.images):
            manifest = (images.root_image if i % 4 == 3 else images.nonroot_image)(f"scan-{i}")
            repository = f"scan/app{i}"
            pushed = client.push(repository, manifest, tag="1.0")
            refs.append(f"{registry.host}/{repository}:1.0")
            if i % 2 == 0:
                to_sign.append(f"{registry.host}/{repository}@{pushed.digest}")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(tool.sign, ref, key, legacy=True) for ref in to_sign]:
                future.result()
        print(
            f"   {args.images} images pushed, {len(to_sign)} signed in "
            f"{time.monotonic() - started:.0f}s",
            flush=True,
        )

        started = time.monotonic()
        namespaces = [f"scan-{n:02d}" for n in range(args.namespaces)]
        for namespace in namespaces:
            plane.create_namespace(namespace)
        api = kube.Kube(kube.build_api_client(str(plane.kubeconfig)))
        owners = [
            deployment(namespaces[i % len(namespaces)], f"app{i}", ref)
            for i, ref in enumerate(refs)
        ]
        create_all(api, owners)
        for owner in owners:
            got = api.apps.read_namespaced_deployment(
                owner["metadata"]["name"], owner["metadata"]["namespace"]
            )
            owner["metadata"]["uid"] = got.metadata.uid
        pods = [
            pod(owner["metadata"]["namespace"], owner, j, refs[i])
            for i, owner in enumerate(owners)
            for j in range(args.pods_per_image)
        ]
        print(f"   namespaces and Deployments in {time.monotonic() - started:.0f}s", flush=True)
        started = time.monotonic()
        create_all(api, pods)
        print(f"   {len(pods)} pods created in {time.monotonic() - started:.0f}s", flush=True)

        env = {
            "IMAGEWARD_SCAN_INTERVAL": str(args.interval),
            "IMAGEWARD_SCAN_REGISTRY_REQUESTS_PER_MINUTE": str(args.budget),
            "IMAGEWARD_SIGNATURE_CACHE_TTL": "30",
        }
        with harness.running_operator(
            plane,
            insecure_registries=[registry.host],
            workdir=workdir / "operator",
            cpu=None,
            env=env,
        ) as operator:
            scope = {"images": [f"{registry.host}/scan/**"]}
            authority = {"name": "release", "key": {"pem": key.public_pem}}
            before = operator.metrics()
            applied = time.monotonic()
            signed = {"match": scope, "rules": {"signatures": {"authorities": [authority]}}}
            nonroot = {"mode": "Audit", "match": scope, "rules": {"forbidRootUser": True}}
            plane.apply(policy("signed", signed), policy("nonroot", nonroot))
            harness.wait_policies_ready(plane, ["signed", "nonroot"])
            wait_scan(operator, 0, trigger="interval", timeout=1800)
            # Both policies' results in (the second policy may come as a scan of its own).
            first = settle(operator, 0)
            after = operator.metrics()
            took = time.monotonic() - applied - 10.0  # settle() waits 10 s for quiet
            requests = metric_sum(after, "imageward_registry_requests_total") - metric_sum(
                before, "imageward_registry_requests_total"
            )
            writes = {
                kind: metric_sum(after, "imageward_report_writes_total", kind=kind)
                - metric_sum(before, "imageward_report_writes_total", kind=kind)
                for kind in ("PolicyReport", "ClusterPolicyReport", "ImagePolicy")
            }
            reports = plane.get_json("policyreports.wgpolicyk8s.io", "-A")["items"]
            summary = {
                key: sum(r["summary"][key] for r in reports) for key in ("pass", "fail", "skip")
            }
            listed = sum(len(r["results"]) for r in reports)
            largest = max(len(json.dumps(r)) for r in reports)
            hwm, rss = peak_rss(operator.pid)
            window = max(first["seconds"], 60.0)
            allowed = args.budget / 10 + args.budget / 60 * window
            print(
                f"\n== cold scans after both policies were applied ({first['passes']} passes: "
                f"{first['triggers']}): {first['seconds']:.1f}s scanning, about {took:.0f}s from "
                f"apply to the last report written; {first['targets']} workloads, "
                f"{first['checks']} checks of {first['images']} images"
            )
            print(
                f"   registry: {first['lookups']} lookups ({first['shared']} answered by the "
                f"scan's memo), {first['requests']} requests by the scan's meter, "
                f"{requests:.0f} by imageward_registry_requests_total, over "
                f"{first['seconds']:.0f}s (the budget allows {allowed:.0f} in {window:.0f}s; "
                f"lookups waited {first['waited']:.0f}s in all)"
            )
            by_kind = ", ".join(f"{kind} {count:.0f}" for kind, count in writes.items())
            print(
                f"   API server writes: {first['writes']} ({by_kind}); bound: "
                f"{len(namespaces)} PolicyReports + 1 ClusterPolicyReport + 2 ImagePolicy "
                "statuses"
            )
            print(
                f"   reports: {len(reports)} PolicyReports, summary {summary}, {listed} results "
                f"listed, largest {largest / 1024:.0f} KiB"
            )
            print(
                f"   operator memory: peak {hwm / 2**20:.0f} MiB, now {rss / 2**20:.0f} MiB "
                f"(chart limit {MEMORY_LIMIT / 2**20:.0f} MiB)",
                flush=True,
            )

            seen = len(scans(operator))
            before = operator.metrics()
            second = wait_scan(operator, seen, trigger="interval", timeout=args.interval + 1800)
            after = operator.metrics()
            requests = metric_sum(after, "imageward_registry_requests_total") - metric_sum(
                before, "imageward_registry_requests_total"
            )
            print(
                f"\n== next interval scan, nothing changed: {second['seconds']:.1f}s, "
                f"{second['lookups']} lookups, {second['requests']} registry requests "
                f"({requests:.0f} by the metric; tags and signatures read again, facts by "
                f"digest cached), {second['writes']} writes",
                flush=True,
            )

            seen = len(scans(operator))
            harness.apply_policy(
                plane,
                "nonroot",
                {"mode": "Warn", "match": scope, "rules": {"forbidRootUser": True}},
            )
            third = wait_scan(operator, seen, trigger="policy", timeout=600)
            hwm, _ = peak_rss(operator.pid)
            print(
                f"\n== policy change (nonroot Audit -> Warn): {third['seconds']:.1f}s, "
                f"{third['checks']} checks of {third['images']} images, {third['lookups']} "
                f"lookups, {third['requests']} registry requests, {third['writes']} writes "
                f"(the reports whose results changed, and none else)"
            )

            fresh = images.nonroot_image("scan-probe")
            pushed = client.push("scan/probe", fresh, tag="1.0")
            tool.sign(f"{registry.host}/scan/probe@{pushed.digest}", key, legacy=True)
            before = operator.metrics()
            probe = plane.kubectl(
                "run",
                "probe",
                "-n",
                namespaces[0],
                f"--image={registry.host}/scan/probe:1.0",
                "--dry-run=server",
                check=False,
            )
            after = operator.metrics()
            per_image = metric_sum(after, "imageward_registry_requests_total") - metric_sum(
                before, "imageward_registry_requests_total"
            )
            print(
                f"\n== one cold admission of a signed image: {per_image:.0f} registry requests "
                f"(admitted: {probe.returncode == 0}); bound for the cold scan: "
                f"{args.images} x {per_image:.0f} = {args.images * per_image:.0f}, measured "
                f"{first['requests']}"
            )
            print(f"   operator peak memory over the run: {hwm / 2**20:.0f} MiB")
            print(f"   {harness.load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
