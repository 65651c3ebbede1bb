"""Instances for planner tests: small random ones for brute force, large realistic fleets."""

from __future__ import annotations

import hashlib
import math
import random

from imageward.prepull import planner
from imageward.registry import model

MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest(name: str) -> model.Digest:
    return model.Digest("sha256:" + hashlib.sha256(name.encode()).hexdigest())


def layer(name: str, size: int) -> model.Layer:
    return model.Layer(digest=digest(name), size=size, media_type=MEDIA_TYPE)


def image(name: str, *layers: model.Layer, weight: float = 1.0) -> planner.PlanImage:
    return planner.PlanImage(
        image=name, digest=digest(f"manifest of {name}"), layers=layers, weight=weight
    )


def random_instance(
    rng: random.Random, *, max_layers: int
) -> tuple[list[planner.PlanImage], int | None, int]:
    """Random images over at most `max_layers` distinct layers, with the awkward cases on
    purpose: equal sizes, zero sizes, weight 0, repeated layers, budget 0 or above all."""
    count = rng.randint(0, max_layers)
    big = count <= 14 and rng.random() < 0.3  # large sizes only where brute force is cheap
    palette = [rng.randint(1, 40) for _ in range(3)]
    layers = []
    for k in range(count):
        roll = rng.random()
        if roll < 0.1:
            size = 0
        elif roll < 0.4:
            size = rng.choice(palette)  # ties in size (and often in ratio)
        elif big:
            size = rng.randint(1, 10**9)
        else:
            size = rng.randint(1, 40)
        layers.append(layer(f"layer-{k}", size))
    images: list[list[model.Layer]] = [[] for _ in range(rng.randint(1, 7))]
    for lay in layers:  # every layer is used at least once, most of them more
        for mine in rng.sample(images, rng.randint(1, len(images))):
            mine.append(lay)
    for mine in images:
        rng.shuffle(mine)
        if mine and rng.random() < 0.2:
            mine.append(rng.choice(mine))  # a layer listed twice by one manifest
    total = sum(lay.size for lay in layers)
    roll = rng.random()
    budget: int | None
    if roll < 0.2:
        budget = rng.choice([None, 0, total, total + 7])
    elif roll < 0.6:
        budget = rng.randint(0, total)
    else:
        budget = int(total * rng.uniform(0.2, 0.8))
    weights = [1.0, 1.0, 1.0, 2.0, 3.0, 0.0, 0.5, round(rng.uniform(0, 4), 3)]
    return (
        [
            image(f"registry.example/app-{i}:1", *mine, weight=rng.choice(weights))
            for i, mine in enumerate(images)
        ],
        budget,
        rng.choice([1, 1, 1, 2, 3]),
    )


def fleet(
    count: int, *, seed: int, layers_per_image: int = 20, mixed_weights: bool = False
) -> list[planner.PlanImage]:
    """A realistic fleet: OS bases, runtimes on them, in-house bases on those (a few
    hundred shared layers, Zipf-like popularity), topped by each image's own layers."""
    rng = random.Random(seed)

    def sized(name: str, median_mib: float, sigma: float) -> model.Layer:
        mean = math.log(median_mib * 2**20)
        return layer(f"{seed}-{name}", max(32, int(rng.lognormvariate(mean, sigma))))

    oses = [[sized(f"os-{o}-{k}", 25, 0.8) for k in range(rng.randint(1, 2))] for o in range(30)]
    runtimes = [
        rng.choice(oses) + [sized(f"rt-{r}-{k}", 30, 1.0) for k in range(rng.randint(2, 5))]
        for r in range(60)
    ]
    stacks = [
        rng.choice(runtimes) + [sized(f"co-{c}-{k}", 15, 1.2) for k in range(rng.randint(1, 3))]
        for c in range(120)
    ]
    popularity = [1 / (rank + 1) ** 0.9 for rank in range(len(stacks))]
    images = []
    for i in range(count):
        shared = rng.choices(stacks, weights=popularity)[0][: layers_per_image - 1]
        own = [sized(f"app-{i}-{k}", 4, 1.6) for k in range(layers_per_image - len(shared))]
        weight = 1.0
        if mixed_weights:
            weight = rng.choice([1.0, 1.0, 1.0, 2.0, 3.0, 5.0, 0.5, 10.0])
        images.append(image(f"registry.example/app-{i}:1", *shared, *own, weight=weight))
    return images
