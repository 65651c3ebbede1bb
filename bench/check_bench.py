"""Benchmark of `imageward check` against `cosign verify --key` on the same signed images.

    .venv/bin/python bench/check_bench.py [--images 10] [--latency 0 --latency 0.02]
        [--repeat 3]

A local registry (Debian's distribution) holds `--images` small images, each signed by
real cosign with a generated key (cosign v3: a Sigstore bundle found through the
`sha256-<hex>` referrers tag, as against this registry). Both tools run as
subprocesses, as a CI step would run them, against the registry directly and through
a proxy process adding `--latency` per request:

- `imageward check --policy P IMAGE...` (one ImagePolicy with the same public key);
- `cosign verify --key cosign.pub --insecure-ignore-tlog IMAGE...` (no transparency
  log is reachable offline, so the signatures carry none);

each once for all images in one process, and once per image (one process each, one
after the other). Printed: wall time (median of `--repeat`), registry requests, and the
ratio imageward / cosign. Also the floor of each: a run that needs no registry at all
(imageward: an image no policy matches; cosign: `cosign version`), which is the cost of
starting the program.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import harness
from imageward.localcluster import cosign, faultproxy, images, registries, tools


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    seconds: float
    requests: int


def run(argv: Sequence[str], env: dict[str, str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[:4]}… exited {result.returncode}: {result.stderr[-800:]}")


def measure(
    commands: Sequence[Sequence[str]],
    env: dict[str, str],
    proxy: faultproxy.ProxyProcess | None,
    repeat: int,
) -> Figure:
    """Median wall time of running `commands` one after the other; requests of one round."""
    times = []
    requests = 0
    for _ in range(repeat):
        if proxy is not None:
            proxy.reset_counts()
        started = time.perf_counter()
        for argv in commands:
            run(argv, env)
        times.append(time.perf_counter() - started)
        if proxy is not None:
            requests = proxy.count()
    return Figure(statistics.median(times), requests)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--latency", type=float, action="append", help="seconds per request")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    latencies: list[float] = args.latency or [0.0, 0.02]

    print(harness.load_note())
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="imageward-check-bench-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)  # nothing stays in /tmp
    tool = cosign.Cosign(workdir / "cosign")
    key = tool.generate_key_pair("release")
    policy = workdir / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "imageward.io/v1alpha1",
                "kind": "ImagePolicy",
                "metadata": {"name": "signed"},
                "spec": {
                    "match": {"images": ["**/bench/**"]},
                    "rules": {
                        "signatures": {
                            "authorities": [{"name": "release", "key": {"pem": key.public_pem}}]
                        }
                    },
                },
            }
        )
    )
    # Both tools get a HOME of their own: no developer credentials or caches leak in.
    env = {
        **os.environ,
        "HOME": str(workdir),
        "DOCKER_CONFIG": str(workdir / "docker"),
        "TUF_ROOT": str(workdir / "tuf"),
    }
    imageward = [sys.executable, "-m", "imageward", "check", "--policy", str(policy)]
    cosign_verify = [
        str(tools.find("cosign")),
        "verify",
        "--key",
        str(key.public_key),
        "--insecure-ignore-tlog=true",
        "--allow-http-registry",
        "--allow-insecure-registry",
        "--output=json",
    ]
    with registries.start_anonymous() as registry:
        client = registry.client()
        repositories = []
        started = time.monotonic()
        for i in range(args.images):
            pushed = client.push(f"bench/app-{i}", images.nonroot_image(f"check-{i}"), tag="1.0")
            tool.sign(pushed.pinned, key)
            repositories.append(f"bench/app-{i}:1.0")
        print(
            f"{args.images} images pushed and signed by cosign in {time.monotonic() - started:.0f}s"
        )
        floor_imageward = measure(
            [[*imageward, "--insecure-registry", registry.host, "example.invalid/x:1"]],
            env,
            None,
            args.repeat,
        )
        floor_cosign = measure([[str(tools.find("cosign")), "version"]], env, None, args.repeat)
        print(
            f"start-up floor: imageward check {floor_imageward.seconds * 1000:.0f} ms "
            f"(no lookup), cosign {floor_cosign.seconds * 1000:.0f} ms (cosign version)\n"
        )
        for latency in latencies:
            proxy = faultproxy.ProxyProcess(registry.url, latency=latency)
            with proxy:
                refs = [f"{proxy.host}/{ref}" for ref in repositories]
                ours = [*imageward, "--insecure-registry", proxy.host]
                print(f"== registry +{latency * 1000:.0f} ms per request ({len(refs)} images)")
                rows = [
                    ("all images in one process", [[*ours, *refs]], [[*cosign_verify, *refs]]),
                    (
                        "one process per image",
                        [[*ours, ref] for ref in refs],
                        [[*cosign_verify, ref] for ref in refs],
                    ),
                ]
                for label, ours_commands, theirs_commands in rows:
                    mine = measure(ours_commands, env, proxy, args.repeat)
                    theirs = measure(theirs_commands, env, proxy, args.repeat)
                    work = mine.seconds - floor_imageward.seconds * len(ours_commands)
                    print(
                        f"  {label:28} imageward {mine.seconds * 1000:6.0f} ms "
                        f"({mine.requests} requests; {work * 1000:.0f} ms beyond start-up)   "
                        f"cosign {theirs.seconds * 1000:6.0f} ms ({theirs.requests} requests)   "
                        f"ratio {mine.seconds / theirs.seconds:.2f}"
                    )
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
