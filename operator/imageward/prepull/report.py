"""What `imageward plan` prints: the JSON contract of product.md and a table for people.

Pure: both take the images the plan was built from and the `Plan`, and return data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from imageward.prepull import planner


class LayerJSON(TypedDict):
    digest: str
    size: int


class ImageJSON(TypedDict):
    image: str
    digest: str
    bytes: int
    layers: list[LayerJSON]


class PlannedLayerJSON(TypedDict):
    digest: str
    size: int
    images: list[str]


class PlanBodyJSON(TypedDict):
    layers: list[PlannedLayerJSON]
    bytes: int
    budget: int | None


class PlanJSON(TypedDict):
    images: list[ImageJSON]
    plan: PlanBodyJSON
    savedBytes: int
    totalBytes: int


def build_plan_json(images: Sequence[planner.PlanImage], plan: planner.Plan) -> PlanJSON:
    """`imageward plan --output json`: keys and meaning exactly as product.md names them.

    Each image lists its distinct layers in manifest order, and `bytes` is their sum, so
    the figures add up to `totalBytes` (see `planner` for why a repeated layer counts once).
    """
    return {
        "images": [
            {
                "image": image.image,
                "digest": image.digest,
                "bytes": planner.image_bytes(image),
                "layers": [
                    {"digest": layer.digest, "size": layer.size}
                    for layer in planner.distinct_layers(image)
                ],
            }
            for image in images
        ],
        "plan": {
            "layers": [
                {"digest": layer.digest, "size": layer.size, "images": list(layer.images)}
                for layer in plan.layers
            ],
            "bytes": plan.bytes,
            "budget": plan.budget,
        },
        "savedBytes": plan.saved_bytes,
        "totalBytes": plan.total_bytes,
    }


def render_plan_text(
    images: Sequence[planner.PlanImage], plan: planner.Plan, *, max_layers: int = 20
) -> str:
    """A terminal report: per-image share planned, the most shared layers, the totals."""
    planned = {layer.digest for layer in plan.layers}
    rows = [["IMAGE", "DIGEST", "WEIGHT", "BYTES", "PLANNED", "PLANNED%"]]
    for image in images:
        layers = planner.distinct_layers(image)
        total = sum(layer.size for layer in layers)
        saved = sum(layer.size for layer in layers if layer.digest in planned)
        rows.append(
            [
                image.image,
                _short_digest(image.digest),
                f"{image.weight:g}",
                format_bytes(total),
                format_bytes(saved),
                _percent(saved, plan_total=total),
            ]
        )
    rows.append(
        [
            f"all {len(images)} images",
            "",
            "",
            format_bytes(plan.total_bytes),
            format_bytes(plan.saved_bytes),
            _percent(plan.saved_bytes, plan_total=plan.total_bytes),
        ]
    )
    lines = _table(rows, right_aligned={2, 3, 4, 5})

    if plan.layers:
        lines.append("")
        rows = [["PLANNED LAYER", "SIZE", "IMAGES", "USED BY"]]
        for layer in plan.layers[:max_layers]:
            names = ", ".join(layer.images[:3])
            if len(layer.images) > 3:
                names += f", +{len(layer.images) - 3} more"
            rows.append(
                [
                    _short_digest(layer.digest),
                    format_bytes(layer.size),
                    str(len(layer.images)),
                    names,
                ]
            )
        lines += _table(rows, right_aligned={1, 2})
        rest = plan.layers[max_layers:]
        if rest:
            rest_bytes = format_bytes(sum(layer.size for layer in rest))
            lines.append(f"... and {len(rest)} more layers ({rest_bytes})")

    lines.append("")
    budget = (
        f"of the {format_bytes(plan.budget)} budget per node"
        f" ({_percent(plan.bytes, plan_total=plan.budget)})"
        if plan.budget is not None
        else "per node, no budget"
    )
    lines.append(
        f"Plan: {len(plan.layers)} layers, {format_bytes(plan.bytes)} {budget},"
        f" minShare {plan.min_share}."
    )
    quality = "optimal"
    if not plan.optimal and plan.upper_bound > 0:
        gap = (plan.upper_bound - plan.expected_saved) / plan.upper_bound * 100
        quality = f"within {gap:.2g}% of the upper bound"
    lines.append(
        f"Pulls download {format_bytes(plan.saved_bytes)} less of {format_bytes(plan.total_bytes)}"
        f" ({_percent(plan.saved_bytes, plan_total=plan.total_bytes)}); weighted by image:"
        f" {format_bytes(plan.expected_saved)}, {quality}."
    )
    return "\n".join(lines) + "\n"


def format_bytes(count: float) -> str:
    """Binary units with one decimal, as Kubernetes quantities read: 812.4MiB."""
    value = float(count)
    if abs(value) < 1024:
        return f"{value:.0f}B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "PiB":
            break
    return f"{value:.1f}{unit}"


def _short_digest(digest: str) -> str:
    algorithm, _, hexdigits = digest.partition(":")
    return f"{algorithm}:{hexdigits[:12]}" if hexdigits else digest


def _percent(part: int, *, plan_total: int) -> str:
    return f"{part / plan_total:.1%}" if plan_total else "-"


def _table(rows: list[list[str]], *, right_aligned: set[int]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
