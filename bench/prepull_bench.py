"""Benchmark of PrePull Layers mode: pull times cold, after the agent, after whole images.

    .venv/bin/python bench/prepull_bench.py [--images 4] [--layer-mib 7.5] [--mbit 100]

A real registry holds `--images` images of about 30 MiB each: two base layers every
image shares (half of each image) and two layers of its own, all incompressible. A proxy
in its own process stands for the link to the registry: every answer body goes through
one shared budget of `--mbit` Mbit/s, and it counts the requests and bytes it sends.
The plan is what the controller would make for a PrePull of all the images with a node
budget of the shared layers plus half of the images' own bytes (`planner.build_plan`,
`daemonset.build_plan_document`), so some images are fully planned and some half.

Scenarios, each in a containerd with an empty content store (as the kubelet pulls:
`ctr images pull`, which fetches and unpacks):

- cold: each image pulled into a store of its own (nothing of it on the node);
- layers: `imageward agent --once` puts the planned blobs in, then each image is pulled;
- images: every image pulled once (what Images mode does), then each image again.

Printed per image and scenario: pull time and the bytes fetched through the proxy during
the pull (layer blobs, and manifests + config), next to the image's unplanned layer
bytes; and the pre-pull's own time and bytes. Goals: the layer bytes fetched at pull
time are exactly the unplanned bytes; a fully planned image pulls at least 90% faster
than cold. Runs in about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "operator"))

from imageward.localcluster import containerd, faultproxy, images, registries
from imageward.prepull import daemonset, planner
from imageward.registry import model, reference

MiB = 1024 * 1024
BLOB_PATH = re.compile(r"^/v2/.+/blobs/(?P<digest>sha256:[0-9a-f]{64})$")


@dataclasses.dataclass(frozen=True, slots=True)
class Image:
    reference: str
    manifest: images.Manifest

    @property
    def layer_digests(self) -> set[str]:
        return {layer.digest for layer in self.manifest.layers}

    @property
    def bytes(self) -> int:
        return sum(layer.size for layer in self.manifest.layers)


@dataclasses.dataclass(frozen=True, slots=True)
class Pull:
    seconds: float
    layer_bytes: int  # layer blobs sent by the proxy
    other_bytes: int  # manifests and config


def build_images(count: int, layer_size: int) -> list[images.Manifest]:
    base = [images.random_layer(layer_size, seed=f"bench-base-{i}") for i in range(2)]
    return [
        images.build_image(
            [
                *base,
                images.random_layer(layer_size, seed=f"bench-own-{n}-0"),
                images.random_layer(layer_size, seed=f"bench-own-{n}-1"),
            ],
            user=images.NONROOT_USER,
            labels={"org.opencontainers.image.title": f"bench-{n}"},
        )
        for n in range(count)
    ]


def measure(
    proxy: faultproxy.ProxyProcess, layers: set[str], action: Sequence[str] | None = None
) -> tuple[float, int, int]:
    """Run `action`; seconds, and the layer / other body bytes the proxy sent meanwhile."""
    proxy.reset_counts()
    started = time.perf_counter()
    if action is not None:
        subprocess.run(action, check=True, capture_output=True, timeout=600)
    seconds = time.perf_counter() - started
    layer_bytes = other = 0
    for _method, path, size in proxy.sent():
        match = BLOB_PATH.match(path)
        if match and match["digest"] in layers:
            layer_bytes += size
        else:
            other += size
    return seconds, layer_bytes, other


def pull(daemon: containerd.Containerd, proxy: faultproxy.ProxyProcess, image: Image) -> Pull:
    proxy.reset_counts()
    started = time.perf_counter()
    daemon.pull(image.reference)
    seconds = time.perf_counter() - started
    layer_bytes = other = 0
    for _method, path, size in proxy.sent():
        match = BLOB_PATH.match(path)
        if match and match["digest"] in image.layer_digests:
            layer_bytes += size
        else:
            other += size
    return Pull(seconds, layer_bytes, other)


@contextlib.contextmanager
def fresh_containerd() -> Iterator[containerd.Containerd]:
    with containerd.Containerd() as daemon:
        yield daemon


def agent_argv(plan: pathlib.Path, daemon: containerd.Containerd, proxy_host: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imageward",
        "agent",
        "--once",
        "--plan",
        str(plan),
        "--containerd-socket",
        str(daemon.socket),
        "--insecure-registry",
        proxy_host,
    ]


def mib(size: float) -> str:
    return f"{size / MiB:6.1f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--layer-mib", type=float, default=7.5, help="size of each layer")
    parser.add_argument("--mbit", type=float, default=100.0, help="link to the registry")
    args = parser.parse_args(argv)
    layer_size = int(args.layer_mib * MiB)
    rate = args.mbit * 1e6 / 8
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWARD_")}
    os.environ.clear()
    os.environ.update(env)

    with (
        tempfile.TemporaryDirectory(prefix="iw-bench-") as workdir,
        registries.start_anonymous(workdir=pathlib.Path(workdir) / "registry") as registry,
        faultproxy.ProxyProcess(registry.url, rate=rate) as proxy,
    ):
        manifests = build_images(args.images, layer_size)
        pusher = registry.client()
        bench_images = []
        for n, manifest in enumerate(manifests):
            pusher.push(f"bench/app-{n}", manifest, tag="1.0")
            bench_images.append(Image(f"{proxy.host}/bench/app-{n}:1.0", manifest))
        all_layers = set().union(*(image.layer_digests for image in bench_images))

        plan_images = [
            planner.PlanImage(
                image=image.reference,
                digest=model.Digest(image.manifest.digest),
                layers=tuple(
                    model.Layer(model.Digest(layer.digest), layer.size, images.OCI_LAYER_GZIP)
                    for layer in image.manifest.layers
                ),
            )
            for image in bench_images
        ]
        shared_bytes = 2 * layer_size
        budget = shared_bytes + args.images * layer_size + 64 * 1024
        plan = planner.build_plan(plan_images, budget=budget)
        planned = {layer.digest for layer in plan.layers}
        references = {
            image.reference: reference.parse_reference(image.reference) for image in bench_images
        }
        plan_path = pathlib.Path(workdir) / "plan.json"
        plan_path.write_text(
            json.dumps(daemonset.build_plan_document("bench", "bench", "uid", plan, references))
        )

        print(
            f"PrePull Layers mode benchmark: {args.images} images "
            f"behind a {args.mbit:g} Mbit/s link"
        )
        for image in bench_images:
            unplanned = sum(
                layer.size for layer in image.manifest.layers if layer.digest not in planned
            )
            print(
                f"  {image.reference.split('/', 1)[1]:16} {mib(image.bytes)} in "
                f"{len(image.manifest.layers)} layers, unplanned {mib(unplanned)}"
            )
        print(
            f"  plan: {len(plan.layers)} layers, {mib(plan.bytes)} under a budget of "
            f"{mib(budget)} (saved {mib(plan.saved_bytes)} of {mib(plan.total_bytes)})"
        )

        cold: list[Pull] = []
        for image in bench_images:
            with fresh_containerd() as daemon:
                cold.append(pull(daemon, proxy, image))

        with fresh_containerd() as daemon:
            layers_prepull = measure(proxy, all_layers, agent_argv(plan_path, daemon, proxy.host))
            after_layers = [pull(daemon, proxy, image) for image in bench_images]

        with fresh_containerd() as daemon:
            proxy.reset_counts()
            started = time.perf_counter()
            for image in bench_images:
                daemon.pull(image.reference)
            whole_seconds = time.perf_counter() - started
            whole_bytes = sum(size for _m, _p, size in proxy.sent())
            after_images = [pull(daemon, proxy, image) for image in bench_images]

        print()
        print(
            f"  pre-pull: layers (agent) {layers_prepull[0]:6.2f} s, {mib(layers_prepull[1])}; "
            f"whole images {whole_seconds:6.2f} s, {mib(whole_bytes)}"
        )
        print()
        header = (
            f"  {'image':10} {'planned':>8} | {'cold':>8} | {'layers':>8} {'faster':>7} "
            f"{'layer bytes':>12} {'unplanned':>12} {'manifest+config':>16} | "
            f"{'images':>8} {'faster':>7}"
        )
        print(header)
        print("  " + "-" * (len(header) - 2))
        exact = True
        fully_planned_ok = True
        any_fully_planned = False
        for image, c, lay, whole in zip(
            bench_images, cold, after_layers, after_images, strict=True
        ):
            unplanned = sum(
                layer.size for layer in image.manifest.layers if layer.digest not in planned
            )
            planned_share = 1 - unplanned / image.bytes
            faster = 1 - lay.seconds / c.seconds
            exact = exact and lay.layer_bytes == unplanned
            if unplanned == 0:
                any_fully_planned = True
                fully_planned_ok = fully_planned_ok and faster >= 0.90
            print(
                f"  {image.reference.split('/')[-1]:10} {planned_share:8.0%} | "
                f"{c.seconds:6.2f} s | "
                f"{lay.seconds:6.2f} s {faster:7.0%} {mib(lay.layer_bytes):>12} "
                f"{mib(unplanned):>12} {lay.other_bytes / 1024:12.1f} KiB | "
                f"{whole.seconds:6.2f} s {1 - whole.seconds / c.seconds:7.0%}"
            )
        print()
        print(
            "  goal: layer bytes at pull time == unplanned bytes for every image: "
            + ("met" if exact else "MISSED")
        )
        print(
            "  goal: a fully planned image pulls >= 90% faster than cold: "
            + (
                ("met" if fully_planned_ok else "MISSED")
                if any_fully_planned
                else "no fully planned image in this plan"
            )
        )
        print(f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        return 0 if exact and fully_planned_ok else 1


if __name__ == "__main__":
    sys.exit(main())
