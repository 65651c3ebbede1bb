"""The layer plan of a PrePull: which blobs to put on every node, under a byte budget.

Pure and synchronous. A layer on the node saves its bytes to every image that contains
it, so planning layer L is worth size(L) x (sum of the weights of the images holding L)
and costs size(L): a 0/1 knapsack whose value per byte is that weight sum. `knapsack`
solves it; this module turns images into items and the answer into a `Plan`.

Counting rules (the same for the objective, `saved_bytes` and `total_bytes`): a layer
listed twice by one image is downloaded once, so it counts once for that image, and the
image counts once towards the layer's `minShare`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from imageward import errors
from imageward.prepull import knapsack
from imageward.registry import model


class PlanError(errors.ImagewardError, ValueError):
    """Input the planner cannot use: a bad budget, minShare or weight, conflicting sizes."""


@dataclasses.dataclass(frozen=True, slots=True)
class PlanImage:
    image: str
    """The reference as the user wrote it (unique within one plan)."""

    digest: model.Digest
    """The platform manifest's digest the layers come from."""

    layers: tuple[model.Layer, ...]

    weight: float = 1.0
    """How much a saved byte of this image is worth relative to other images (>= 0)."""

    config: model.Digest | None = None
    """The image config's digest (the node agent reads its diff IDs to unpack the
    planned layers); None when not known. Planning does not read it."""


@dataclasses.dataclass(frozen=True, slots=True)
class PlannedLayer:
    digest: model.Digest
    size: int
    images: tuple[str, ...]
    """The images containing this layer, in input order."""


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    layers: tuple[PlannedLayer, ...]
    """Most shared first, then largest, then by digest."""

    bytes: int
    """Bytes planned on each node."""

    budget: int | None
    """budgetPerNode in bytes; None when unlimited."""

    saved_bytes: int
    """Sum over images of the planned bytes each image contains (unweighted)."""

    total_bytes: int
    """Sum over images of their bytes."""

    expected_saved: float
    """The objective: sum over images of weight x planned bytes in that image."""

    upper_bound: float
    """No plan within the budget can expect to save more (the LP relaxation's value)."""

    optimal: bool
    """Whether `expected_saved` is proven to be the best possible."""

    min_share: int = 1


def distinct_layers(image: PlanImage) -> tuple[model.Layer, ...]:
    """The image's layers, each digest once, in manifest order: what a pull downloads."""
    seen: set[str] = set()
    layers: list[model.Layer] = []
    for layer in image.layers:
        if layer.digest not in seen:
            seen.add(layer.digest)
            layers.append(layer)
    return tuple(layers)


def image_bytes(image: PlanImage) -> int:
    return sum(layer.size for layer in distinct_layers(image))


def build_plan(
    images: Sequence[PlanImage],
    *,
    budget: int | None,
    min_share: int = 1,
    node_limit: int = knapsack.DEFAULT_NODE_LIMIT,
) -> Plan:
    """Choose the layers maximising expected saved bytes within `budget` bytes per node.

    Only layers held by at least `min_share` images are eligible. Layers whose images all
    have weight 0 are worth nothing and never planned; free (empty) layers always are.
    The answer does not depend on the order of `images` (ties go to the smaller digest).
    """
    _check_arguments(images, budget, min_share)
    # Most layers belong to one image: keeping only the first holder's index for those
    # (no list per layer) spares the garbage collector a good part of the run time.
    sizes: dict[model.Digest, int] = {}
    first: dict[model.Digest, int] = {}
    others: dict[model.Digest, list[int]] = {}
    for index, image in enumerate(images):
        listed = image.layers
        if len({layer.digest for layer in listed}) != len(listed):
            listed = distinct_layers(image)
        for layer in listed:
            digest = layer.digest
            if digest not in first:
                first[digest] = index
                sizes[digest] = layer.size
                if layer.size < 0:
                    raise PlanError(f"image {image.image}: layer {digest} has a negative size")
                continue
            if sizes[digest] != layer.size:
                raise PlanError(
                    f"layer {digest} is {sizes[digest]} bytes in {images[first[digest]].image}"
                    f" but {layer.size} bytes in {image.image}"
                )
            if digest in others:
                others[digest].append(index)
            else:
                others[digest] = [index]

    weights = [float(image.weight) for image in images]
    ratios: dict[model.Digest, float] = {}
    if min_share == 1:
        ratios = {digest: weights[index] for digest, index in first.items()}
    for digest, more in others.items():
        if len(more) + 1 >= min_share:
            # fsum is exact, so a layer's ratio does not depend on the order of images.
            ratios[digest] = math.fsum([weights[first[digest]], *(weights[i] for i in more)])

    # Canonical order: ratio, then size, descending, then digest. Three stable sorts on
    # plain keys are about twice as fast as one sort on tuples.
    eligible = sorted(ratios)
    eligible.sort(key=sizes.__getitem__, reverse=True)
    eligible.sort(key=ratios.__getitem__, reverse=True)
    solution = knapsack.solve(
        [sizes[digest] for digest in eligible],
        [ratios[digest] for digest in eligible],
        budget,
        node_limit=node_limit,
    )

    layers = [
        PlannedLayer(
            digest=digest,
            size=sizes[digest],
            images=tuple(images[i].image for i in (first[digest], *others.get(digest, ()))),
        )
        for digest in (eligible[k] for k in solution.chosen)
    ]
    layers.sort(key=lambda layer: (-len(layer.images), -layer.size, layer.digest))
    return Plan(
        layers=tuple(layers),
        bytes=solution.cost,
        budget=budget,
        saved_bytes=sum(layer.size * len(layer.images) for layer in layers),
        total_bytes=sum(sizes.values()) + sum(sizes[d] * len(more) for d, more in others.items()),
        expected_saved=solution.value,
        upper_bound=solution.upper_bound,
        optimal=solution.optimal,
        min_share=min_share,
    )


def _check_arguments(images: Sequence[PlanImage], budget: int | None, min_share: int) -> None:
    if budget is not None and (isinstance(budget, bool) or budget < 0):
        raise PlanError(f"budgetPerNode must be a byte count >= 0, got {budget!r}")
    if isinstance(min_share, bool) or min_share < 1:
        raise PlanError(f"minShare must be an integer >= 1, got {min_share!r}")
    seen: set[str] = set()
    for image in images:
        if image.image in seen:
            raise PlanError(f"image {image.image} is listed twice; merge its entries first")
        seen.add(image.image)
        if not math.isfinite(image.weight) or image.weight < 0:
            raise PlanError(
                f"image {image.image}: weight must be a finite number >= 0, got {image.weight!r}"
            )
