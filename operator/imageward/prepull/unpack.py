"""Unpacking what a Layers-mode PrePull holds: which snapshots to make, and their names.

Pure and synchronous; the agent (`agent.Agent`) makes the calls through
`containerd.Client`.

Holding a layer's blob saves its download; the kubelet still unpacks it at pod start.
containerd names a layer's unpacked snapshot by its chain ID and its unpacker skips a
layer whose chain-ID snapshot exists, so the agent unpacks, for each planned image, the
longest prefix of its layers whose blobs the PrePull's lease holds:

    chainID(L1) = diffID(L1)
    chainID(Ln) = sha256(chainID(Ln-1) + " " + diffID(Ln))

The diff IDs (digests of the uncompressed layers) are the image config's
`rootfs.diff_ids`: the plan names the config's digest, the agent fetches it (bounded
and hashed, `parse_diff_ids` refuses anything containerd would not read the same way)
and checks that containerd's Apply of each layer produced exactly that diff ID before
it commits the snapshot, so a snapshot is never named after content it does not hold.

Only a prefix helps: layer n's snapshot sits on layer n-1's, so the plan document lists,
per image, its layers up to the first unplanned one (`build_unpack_entries`). An image
whose first layer is unplanned has nothing to unpack and is left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

from imageward import errors
from imageward.registry import gojson, model, reference

#: containerd's CRI default; the kubelet's images are unpacked into it.
DEFAULT_SNAPSHOTTER = "overlayfs"
#: Prefix of the agent's active snapshot keys (containerd's own are `extract-...`).
KEY_PREFIX = "imageward-extract"
#: More layers than any runtime accepts (overlayfs stops well below); a config listing
#: more diff IDs is refused unread.
MAX_LAYERS = 1024
#: Label naming the committed snapshot a Prepare is for: when that exists, Prepare fails
#: with AlreadyExists and the call's lease takes it (how containerd's unpacker skips).
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"

_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ROOTFS = gojson.Fields(
    frozenset({"rootfs"}), objects={"rootfs": gojson.Fields(frozenset({"type", "diff_ids"}))}
)


class UnpackError(errors.ImagewardError):
    """An image config the agent will not unpack from; says which and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class UnpackImage:
    """One image of the plan, as far as it can be unpacked."""

    image: str
    """The reference as the PrePull names it (what logs and reports say)."""

    manifest: model.Digest
    config: model.Digest
    layer_count: int
    """Layers of the whole image: its config must list as many diff IDs."""

    layers: tuple[model.Layer, ...]
    """Its first layers, up to the first one the plan leaves out (at least one)."""

    sources: tuple[tuple[str, str], ...]
    """(registry, repository) the config can be fetched from."""


def build_chain_ids(diff_ids: Iterable[str]) -> tuple[str, ...]:
    """The chain ID of each prefix of the layers (OCI image spec, `identity.ChainID`)."""
    chain: list[str] = []
    for diff_id in diff_ids:
        if not chain:
            chain.append(diff_id)
        else:
            text = f"{chain[-1]} {diff_id}"
            chain.append("sha256:" + hashlib.sha256(text.encode()).hexdigest())
    return tuple(chain)


def build_planned_prefix(
    layers: Sequence[model.Layer], planned: Container[str]
) -> tuple[model.Layer, ...]:
    """The image's first layers up to (not including) the first one not planned."""
    prefix: list[model.Layer] = []
    for layer in layers:
        if layer.digest not in planned:
            break
        prefix.append(layer)
    return tuple(prefix)


def evaluate_held_prefix(image: UnpackImage, held: Container[str]) -> int:
    """How many of the image's listed layers, from the first, have their blob held."""
    count = 0
    for layer in image.layers:
        if layer.digest not in held:
            break
        count += 1
    return count


def build_unpack_entries(
    images: Iterable[tuple[str, model.Digest, model.Digest | None, Sequence[model.Layer]]],
    planned: Container[str],
    references: Mapping[str, model.ImageReference],
) -> list[dict[str, Any]]:
    """The plan document's `images`: (image, manifest digest, config digest, layers) in,
    one entry per image with a config and at least its first layer planned."""
    entries = []
    for image, manifest, config, layers in images:
        prefix = build_planned_prefix(layers, planned)
        ref = references.get(image)
        if config is None or not prefix or ref is None:
            continue
        entries.append(
            {
                "image": image,
                "manifest": manifest,
                "config": config,
                "layerCount": len(layers),
                "layers": [
                    {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type}
                    for layer in prefix
                ],
                "sources": [{"registry": ref.registry, "repository": ref.repository}],
            }
        )
    return entries


def build_unpack_hash_material(entries: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """What of the `images` entries changes the plan hash: what would be unpacked."""
    return sorted(
        [entry["manifest"], entry["config"], [layer["digest"] for layer in entry["layers"]]]
        for entry in entries
    )


def _field(document: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = document.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{where}{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _digest(document: Mapping[str, Any], key: str, where: str) -> model.Digest:
    text = _field(document, key, str, where)
    try:
        return reference.parse_digest(text)
    except ValueError as e:
        raise ValueError(f"{where}{key}: {e}") from e


def parse_unpack_images(value: object, *, where: str = "images") -> tuple[UnpackImage, ...]:
    """The plan document's `images` (absent in plans of earlier operators: nothing to
    unpack). Raises ValueError naming the field."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list")
    images = []
    for index, item in enumerate(value):
        at = f"{where}[{index}]."
        if not isinstance(item, dict):
            raise ValueError(f"{where}[{index}]: expected an object")
        layers = []
        for j, layer in enumerate(_field(item, "layers", list, at)):
            lat = f"{at}layers[{j}]."
            if not isinstance(layer, dict):
                raise ValueError(f"{at}layers[{j}]: expected an object")
            size = _field(layer, "size", int, lat)
            if size < 0:
                raise ValueError(f"{lat}size: {size} is negative")
            layers.append(
                model.Layer(
                    _digest(layer, "digest", lat),
                    size,
                    _field(layer, "mediaType", str, lat),
                )
            )
        count = _field(item, "layerCount", int, at)
        if not layers or count < len(layers) or count > MAX_LAYERS:
            raise ValueError(
                f"{at}layerCount: {count} for {len(layers)} listed layers "
                f"(1 to {MAX_LAYERS} layers, at least those listed)"
            )
        sources = []
        for j, source in enumerate(_field(item, "sources", list, at)):
            if not isinstance(source, dict):
                raise ValueError(f"{at}sources[{j}]: expected an object")
            sources.append(
                (
                    _field(source, "registry", str, f"{at}sources[{j}]."),
                    _field(source, "repository", str, f"{at}sources[{j}]."),
                )
            )
        if not sources:
            raise ValueError(f"{at}sources: empty; nowhere to fetch the config from")
        images.append(
            UnpackImage(
                image=_field(item, "image", str, at),
                manifest=_digest(item, "manifest", at),
                config=_digest(item, "config", at),
                layer_count=count,
                layers=tuple(layers),
                sources=tuple(sources),
            )
        )
    return tuple(images)


def parse_diff_ids(body: bytes, *, image: UnpackImage, max_bytes: int) -> tuple[str, ...]:
    """The config's `rootfs.diff_ids`, checked as containerd's unpacker needs them: as
    many as the image has layers, each a sha256 digest, read the same way Go reads them.
    UnpackError names the image and the problem."""

    def refuse(reason: str) -> UnpackError:
        return UnpackError(f"image {image.image}: config {image.config}: {reason}")

    if len(body) > max_bytes:
        raise refuse(f"{len(body)} bytes, over the {max_bytes}-byte limit")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise refuse(f"not JSON ({type(e).__name__})") from e
    if not isinstance(document, dict):
        raise refuse("not a JSON object")
    if problem := gojson.evaluate_field_spelling(document, _ROOTFS, "config"):
        raise refuse(problem)
    rootfs = document.get("rootfs")
    if not isinstance(rootfs, dict):
        raise refuse("no rootfs object")
    if rootfs.get("type") != "layers":
        raise refuse(f"rootfs.type is {rootfs.get('type')!r}, not 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise refuse("rootfs.diff_ids is not a list")
    if len(diff_ids) != image.layer_count:
        raise refuse(
            f"rootfs.diff_ids lists {len(diff_ids)} layers, the manifest {image.layer_count}"
        )
    for index, diff_id in enumerate(diff_ids):
        if not isinstance(diff_id, str) or not _DIGEST_RE.fullmatch(diff_id):
            raise refuse(f"rootfs.diff_ids[{index}] is not a sha256 digest")
    return tuple(diff_ids)


def build_snapshot_key(chain_id: str, unique: str) -> str:
    """The active snapshot a layer is unpacked into before it is committed as `chain_id`
    (containerd's unpacker: `extract-<unique> <chainID>`)."""
    return f"{KEY_PREFIX}-{unique} {chain_id}"


def build_snapshot_labels(chain_id: str) -> dict[str, str]:
    """Labels of the snapshot: the target it is for, so that containerd answers Prepare
    with AlreadyExists (and the lease takes the target) when it exists already."""
    return {LABEL_SNAPSHOT_REF: chain_id}
