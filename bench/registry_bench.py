"""Benchmark of the registry client: image facts through a slow link, cold and warm.

    .venv/bin/python bench/registry_bench.py [--images 50] [--latency 0.02] [--warm 200000]

A real local registry (Debian's distribution) holds `--images` single-platform images and
as many multi-arch indexes; a proxy in its own process adds `--latency` seconds to every
request, like a registry some distance away. Printed per set:

- the registry's own floor: the same requests sent one after the other straight to it
  (it serves them about one at a time here, so they bound any client's wall time);
- the harness: the same requests replayed all at once through the proxy, no client
  logic (the registry and the proxy serve only so many per second on a small machine);
- cold: facts (digest, manifests, layers, config) of every image at once with empty
  caches: wall time next to the sequential round trips on the critical path (manifest
  then config; index then platform manifests then configs) and the requests sent; then
  one image after the other (time per image against its critical path);
- warm: cached lookups per second;
- the same images with `skopeo inspect` (manifest and config, what a pull needs to
  start) and, when built, `crane manifest --insecure` (the manifest only), one after the
  other and all at once.

Goals: cold within one round trip of the critical path per image; warm above 20,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import aiohttp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "operator"))

from imageward import settings
from imageward.localcluster import faultproxy, images, registries
from imageward.registry import client, manifests, model, reference

CRANE = pathlib.Path.home() / ".cache" / "imageward" / "bin" / "crane"


@dataclasses.dataclass(frozen=True, slots=True)
class Workload:
    name: str
    refs: tuple[str, ...]  # "repo:tag", without host
    critical_path: int  # sequential round trips per image, cold, anonymous


def push(registry: registries.Registry, count: int) -> list[Workload]:
    pusher = registry.client()
    single, multi = [], []
    for i in range(count):
        single.append(pusher.push(f"bench/single-{i}", images.small_image(f"s{i}"), tag="1.0"))
        multi.append(pusher.push(f"bench/multi-{i}", images.multiarch_index(f"m{i}"), tag="1.0"))
    return [
        Workload("single-platform images", tuple(f"{p.repository}:1.0" for p in single), 2),
        Workload(
            "multi-arch indexes (2 platforms + 2 attestations)",
            tuple(f"{p.repository}:1.0" for p in multi),
            3,
        ),
    ]


def parse_refs(host: str, workload: Workload) -> list[model.ImageReference]:
    return [reference.parse_reference(f"{host}/{text}") for text in workload.refs]


async def measure_floor(registry: registries.Registry, paths: Sequence[str]) -> float:
    """Seconds the registry takes for `paths` sent one by one on a warm connection."""
    async with aiohttp.ClientSession() as session:

        async def get(path: str) -> None:
            headers = {"Accept": manifests.ACCEPT}
            async with session.get(registry.url + path, headers=headers) as response:
                await response.read()

        await get(paths[0])
        started = time.perf_counter()
        for path in paths:
            await get(path)
        return time.perf_counter() - started


async def measure_replay(
    proxy: faultproxy.ProxyProcess, requests: Sequence[tuple[str, str, str]]
) -> float:
    """Seconds to send `requests` all at once through the proxy, ignoring what depends
    on what: the fastest the registry and proxy serve that many, whatever the client."""
    async with aiohttp.ClientSession() as session:

        async def send(method: str, path: str, query: str) -> None:
            url = f"{proxy.url}{path}" + (f"?{query}" if query else "")
            headers = {"Accept": manifests.ACCEPT}
            async with session.request(method, url, headers=headers) as response:
                await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(send(*request) for request in requests))
        return time.perf_counter() - started


async def measure_client(
    proxy: faultproxy.ProxyProcess, workload: Workload, warm_lookups: int
) -> dict[str, float]:
    config = settings.RegistrySettings(insecure_registries=(proxy.host,), lookup_deadline=30.0)
    refs = parse_refs(proxy.host, workload)
    figures: dict[str, float] = {}

    proxy.reset_counts()
    async with client.RegistryClient(config) as registry_client:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(registry_client.fetch_facts(ref) for ref in refs))
        figures["cold_concurrent"] = time.perf_counter() - started
        figures["cold_cpu_per_image"] = (time.process_time() - cpu) / len(refs)
        figures["requests"] = proxy.count()
        seen = proxy.seen()
        figures["harness_all_at_once"] = await measure_replay(proxy, seen)

        proxy.reset_counts()
        started = time.perf_counter()
        done = 0
        while done < warm_lookups:
            for ref in refs:
                await registry_client.fetch_facts(ref)
            done += len(refs)
        figures["warm_per_second"] = done / (time.perf_counter() - started)
        figures["warm_requests"] = proxy.count()

    async with client.RegistryClient(config) as registry_client:
        started = time.perf_counter()
        for ref in refs:
            await registry_client.fetch_facts(ref)
        figures["cold_sequential_per_image"] = (time.perf_counter() - started) / len(refs)
    return figures


def run_tool(argv: Sequence[str]) -> None:
    result = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.decode()[:500]}")


def measure_tool(
    proxy: faultproxy.ProxyProcess,
    workload: Workload,
    argv_for: Callable[[str], list[str]],
) -> dict[str, float]:
    commands = [argv_for(f"{proxy.host}/{text}") for text in workload.refs]
    proxy.reset_counts()
    started = time.perf_counter()
    for argv in commands:
        run_tool(argv)
    sequential = (time.perf_counter() - started) / len(commands)
    requests = proxy.count() / len(commands)
    started = time.perf_counter()
    processes = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for argv in commands
    ]
    for process in processes:
        process.wait(timeout=120)
    concurrent = time.perf_counter() - started
    return {"sequential_per_image": sequential, "concurrent": concurrent, "requests": requests}


def report_tool(label: str, figures: dict[str, float], n: int) -> None:
    print(
        f"{label:30}{figures['sequential_per_image'] * 1000:7.1f} ms per image one by one "
        f"({figures['requests']:.1f} requests each); all {n} at once "
        f"{figures['concurrent'] * 1000:.0f} ms"
    )


def skopeo_argv(skopeo: str) -> Callable[[str], list[str]]:
    return lambda image: [skopeo, "inspect", "--tls-verify=false", f"docker://{image}"]


def crane_argv(image: str) -> list[str]:
    return [str(CRANE), "manifest", "--insecure", image]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added per request")
    parser.add_argument("--warm", type=int, default=200_000, help="warm lookups to time")
    args = parser.parse_args()
    rtt = args.latency * 1000

    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs (figures are noisy when it is high)")
    with registries.start_anonymous() as registry:
        print(f"pushing {args.images} single-platform images and {args.images} indexes …")
        workloads = push(registry, args.images)
        with faultproxy.ProxyProcess(registry.url, latency=args.latency) as proxy:
            print(f"registry {registry.host}; proxy {proxy.host} adds {rtt:.0f} ms per request\n")
            for workload in workloads:
                n, crit = len(workload.refs), workload.critical_path
                ours = asyncio.run(measure_client(proxy, workload, args.warm))
                print(f"== {n} {workload.name}")
                # The floor: the paths our client requested, straight to the registry.
                paths = [f"/v2/{text.replace(':', '/manifests/')}" for text in workload.refs]
                floor = asyncio.run(measure_floor(registry, paths))
                per_request = floor / len(paths)
                print(
                    f"{'registry floor':30}{per_request * 1000:7.2f} ms per request served "
                    f"(one at a time): {ours['requests'] * per_request * 1000:.0f} ms "
                    f"for the {ours['requests']:.0f} requests below"
                )
                print(
                    f"{'harness, same requests at once':30}"
                    f"{ours['harness_all_at_once'] * 1000:7.1f} ms (registry + proxy throughput: "
                    f"no dependencies, no parsing; the bound for any client)"
                )
                print(
                    f"{'imageward cold, all at once':30}{ours['cold_concurrent'] * 1000:7.1f} ms "
                    f"wall; critical path {crit} round trips = {crit * rtt:.0f} ms; "
                    f"{ours['requests']:.0f} requests ({ours['requests'] / n:.1f} per image); "
                    f"client CPU {ours['cold_cpu_per_image'] * 1000:.2f} ms per image"
                )
                print(
                    f"{'imageward cold, one by one':30}"
                    f"{ours['cold_sequential_per_image'] * 1000:7.1f} ms per image "
                    f"(critical path {crit * rtt:.0f} ms; goal ≤ {(crit + 1) * rtt:.0f} ms)"
                )
                print(
                    f"{'imageward warm':30}{ours['warm_per_second']:9,.0f} lookups/s "
                    f"(goal > 20,000); {ours['warm_requests']:.0f} requests"
                )
                skopeo = shutil.which("skopeo")
                if skopeo:
                    report_tool(
                        "skopeo inspect", measure_tool(proxy, workload, skopeo_argv(skopeo)), n
                    )
                if CRANE.exists() and os.access(CRANE, os.X_OK):
                    report_tool(
                        "crane manifest (no config)", measure_tool(proxy, workload, crane_argv), n
                    )
                print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
