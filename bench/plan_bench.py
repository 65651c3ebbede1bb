"""Benchmark of the layer planner against the LP bound and naive pre-pullers.

    .venv/bin/python bench/plan_bench.py [--images 10000] [--layers 20] [--seed 1]
        [--budget 20Gi]... [--min-share 1] [--weights ones|mixed|both] [--repeat 3]

The instances imitate a real fleet: a few dozen OS bases, language runtimes built on
them, in-house base images built on those (a few hundred shared layers, popularity
Zipf-like), and every image topped with its own application layers up to `--layers`.
Sizes are log-normal around what public images weigh.

Printed for each budget: the planner's wall time, planned layers and bytes, expected
(weighted) and unweighted saved bytes, the gap to the fractional (LP) upper bound, and
the same figures for
- greedy by ratio without fill (stop at the first layer that does not fit),
- greedy by ratio with fill (skip it and go on),
- whole images in weight order, first fit: what an image pre-puller such as
  kube-fledged does when the node's disk is the budget (it knows no minShare).

Baseline times count the choice alone, after the layers are grouped; the planner's time
is the whole `build_plan` call (grouping, sorting and building the Plan take most of
it). Timing is a figure to read, not a test: the goal is under one second for 10,000
images x 20 layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Sequence

from imageward.prepull import knapsack, planner
from imageward.registry import model

MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    seconds: float
    layers: int
    planned: int
    saved: int
    expected: float


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", action="append", type=parse_quantity)
    parser.add_argument("--min-share", type=int, default=1)
    parser.add_argument("--weights", choices=["ones", "mixed", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs (best is shown)")
    args = parser.parse_args(argv)
    budgets = args.budget or [5 * 2**30, 20 * 2**30, 100 * 2**30]
    modes = ["ones", "mixed"] if args.weights == "both" else [args.weights]

    for mode in modes:
        images = make_fleet(args.images, args.layers, seed=args.seed, mixed_weights=mode == "mixed")
        describe(images, mode)
        for budget in budgets:
            run(images, budget, min_share=args.min_share, repeat=args.repeat)


def run(images: list[planner.PlanImage], budget: int, *, min_share: int, repeat: int) -> None:
    timings = []
    cpu = []  # CPU time too: wall time swings when other work shares the machine
    plan: planner.Plan | None = None
    for _ in range(max(1, repeat)):
        started, started_cpu = time.perf_counter(), time.process_time()
        plan = planner.build_plan(images, budget=budget, min_share=min_share)
        timings.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    assert plan is not None
    outcomes = [
        Outcome(
            "imageward plan",
            min(timings),
            len(plan.layers),
            plan.bytes,
            plan.saved_bytes,
            plan.expected_saved,
        ),
        *baselines(images, budget, min_share=min_share),
    ]
    bound = plan.upper_bound
    print(
        f"\nbudget {gib(budget)} GiB, min share {min_share}: planner first run {timings[0]:.3f}s,"
        f" best of {len(timings)} {min(timings):.3f}s (CPU {min(cpu):.3f}s),"
        f" {'proven optimal' if plan.optimal else 'not proven optimal'}"
    )
    print(
        f"  {'method':<36}{'time':>8}{'layers':>8}{'planned GiB':>13}"
        f"{'saved GiB':>12}{'expected GiB':>14}{'gap to LP':>11}{'saved vs plan':>15}"
    )
    for outcome in outcomes:
        gap = (bound - outcome.expected) / bound * 100 if bound else 0.0
        versus = (
            (outcome.saved - plan.saved_bytes) / plan.saved_bytes * 100 if plan.saved_bytes else 0
        )
        print(
            f"  {outcome.name:<36}{outcome.seconds:>7.3f}s{outcome.layers:>8}"
            f"{gib(outcome.planned):>13}{gib(outcome.saved):>12}{gib(outcome.expected):>14}"
            f"{gap:>10.4f}%{versus:>14.2f}%"
        )
    print(f"  {'LP (fractional) upper bound':<36}{'':>8}{'':>8}{'':>13}{'':>12}{gib(bound):>14}")
    print(
        f"  all images pull {gib(plan.total_bytes)} GiB in total; the plan saves"
        f" {plan.saved_bytes / plan.total_bytes:.1%} of it"
    )


def baselines(images: list[planner.PlanImage], budget: int, *, min_share: int) -> list[Outcome]:
    sizes: dict[str, int] = {}
    holders: dict[str, list[int]] = {}
    for index, image in enumerate(images):
        for layer in planner.distinct_layers(image):
            sizes[layer.digest] = layer.size
            holders.setdefault(layer.digest, []).append(index)
    items = sorted(
        (-math.fsum(images[i].weight for i in users), -sizes[digest], digest)
        for digest, users in holders.items()
        if len(users) >= min_share
    )
    item_sizes = [-size for _, size, _ in items]
    item_ratios = [-ratio for ratio, _, _ in items]
    outcomes = []
    for fill, name in ((False, "greedy by ratio, no fill"), (True, "greedy by ratio + fill")):
        started = time.perf_counter()
        solution = knapsack.solve_greedy(item_sizes, item_ratios, budget, fill=fill)
        seconds = time.perf_counter() - started
        chosen = {items[k][2] for k in solution.chosen}
        outcomes.append(score(name, seconds, chosen, images, sizes))

    started = time.perf_counter()
    on_node: set[str] = set()
    room = budget
    for image in sorted(images, key=lambda image: -image.weight):  # stable: input order
        new = {layer.digest: layer.size for layer in image.layers if layer.digest not in on_node}
        if sum(new.values()) <= room:
            on_node.update(new)
            room -= sum(new.values())
    seconds = time.perf_counter() - started
    outcomes.append(score("whole images by weight, first fit", seconds, on_node, images, sizes))
    return outcomes


def score(
    name: str,
    seconds: float,
    chosen: set[str],
    images: list[planner.PlanImage],
    sizes: dict[str, int],
) -> Outcome:
    saved = 0
    expected = 0.0
    for image in images:
        mine = sum(layer.size for layer in planner.distinct_layers(image) if layer.digest in chosen)
        saved += mine
        expected += image.weight * mine
    return Outcome(name, seconds, len(chosen), sum(sizes[d] for d in chosen), saved, expected)


def make_fleet(
    count: int, layers_per_image: int, *, seed: int, mixed_weights: bool
) -> list[planner.PlanImage]:
    rng = random.Random(seed)

    def layer(name: str, median_mib: float, sigma: float) -> model.Layer:
        size = max(32, int(rng.lognormvariate(math.log(median_mib * 2**20), sigma)))
        digest = model.Digest("sha256:" + hashlib.sha256(name.encode()).hexdigest())
        return model.Layer(digest=digest, size=size, media_type=MEDIA_TYPE)

    # OS bases (a few versions each), runtimes on bases, in-house bases on runtimes.
    oses = [
        [layer(f"os-{o}-{v}-{k}", 25.0, 0.8) for k in range(rng.randint(1, 2))]
        for o in range(12)
        for v in range(3)
    ]
    runtimes = [
        rng.choice(oses) + [layer(f"rt-{r}-{k}", 30.0, 1.0) for k in range(rng.randint(2, 5))]
        for r in range(80)
    ]
    stacks = [
        rng.choice(runtimes) + [layer(f"co-{c}-{k}", 15.0, 1.2) for k in range(rng.randint(1, 3))]
        for c in range(150)
    ]
    popularity = [1 / (rank + 1) ** 0.9 for rank in range(len(stacks))]
    images = []
    for i in range(count):
        stack = rng.choices(stacks, weights=popularity)[0]
        shared = stack[: layers_per_image - 1]
        own = [
            layer(f"app-{i}-{k}", 4.0, 1.6) for k in range(max(1, layers_per_image - len(shared)))
        ]
        weight = 1.0
        if mixed_weights:
            weight = float(rng.choices([1, 2, 3, 5, 10], weights=[70, 12, 8, 6, 4])[0])
        images.append(
            planner.PlanImage(
                image=f"registry.example/team-{i % 97}/app-{i}:1.0",
                digest=model.Digest("sha256:" + hashlib.sha256(f"img-{i}".encode()).hexdigest()),
                layers=tuple(shared + own),
                weight=weight,
            )
        )
    return images


def describe(images: list[planner.PlanImage], mode: str) -> None:
    refs = sum(len(image.layers) for image in images)
    holders: dict[str, int] = {}
    for image in images:
        for layer in planner.distinct_layers(image):
            holders[layer.digest] = holders.get(layer.digest, 0) + 1
    shared = sum(1 for users in holders.values() if users > 1)
    print(
        f"\n=== {len(images)} images, {refs} layer references, {len(holders)} distinct layers"
        f" ({shared} shared by 2+ images), weights: {mode} ==="
    )


def parse_quantity(text: str) -> int:
    for suffix, factor in UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def gib(count: float) -> str:
    return f"{count / 2**30:.2f}"


if __name__ == "__main__":
    main()
