"""Unpacking's pure parts: chain IDs, the planned prefix, the plan's `images` and the
image config's diff IDs (hostile configs are refused, naming why)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from imageward.prepull import unpack
from imageward.registry import model, reference

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest(char: str) -> model.Digest:
    return model.Digest("sha256:" + char * 64)


def layer(char: str, size: int = 10) -> model.Layer:
    return model.Layer(digest(char), size, GZIP)


def image(count: int = 3, listed: int = 2) -> unpack.UnpackImage:
    return unpack.UnpackImage(
        image="registry.example:5000/team/web:1.0",
        manifest=digest("m"),
        config=digest("c"),
        layer_count=count,
        layers=tuple(layer(c) for c in "abcdef"[:listed]),
        sources=(("registry.example:5000", "team/web"),),
    )


def config(diff_ids: Any, **extra: Any) -> bytes:
    return json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}, **extra}).encode()


def test_chain_ids_follow_the_oci_definition() -> None:
    a, b, c = digest("1"), digest("2"), digest("3")
    second = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {c}".encode()).hexdigest()
    assert unpack.build_chain_ids([a, b, c]) == (a, second, third)
    assert unpack.build_chain_ids([]) == ()
    # The value containerd computes for these two diff IDs (identity.ChainID).
    assert unpack.build_chain_ids([digest("a"), digest("b")])[1] == (
        "sha256:" + hashlib.sha256(f"{digest('a')} {digest('b')}".encode()).hexdigest()
    )


def test_the_prefix_stops_at_the_first_unplanned_layer() -> None:
    layers = [layer("a"), layer("b"), layer("c"), layer("d")]
    planned = {digest("a"), digest("b"), digest("d")}
    assert unpack.build_planned_prefix(layers, planned) == (layer("a"), layer("b"))
    assert unpack.build_planned_prefix(layers, {digest("b")}) == ()
    assert unpack.evaluate_held_prefix(image(listed=2), {digest("a")}) == 1
    assert unpack.evaluate_held_prefix(image(listed=2), {digest("b")}) == 0
    assert unpack.evaluate_held_prefix(image(listed=2), {digest("a"), digest("b")}) == 2


def test_entries_list_images_with_a_config_and_a_planned_first_layer() -> None:
    web = reference.parse_reference("registry.example:5000/team/web:1.0")
    api = reference.parse_reference("registry.example:5000/team/api:1.0")
    entries = unpack.build_unpack_entries(
        [
            (
                "registry.example:5000/team/web:1.0",
                digest("1"),
                digest("c"),
                [layer("a"), layer("b")],
            ),
            ("registry.example:5000/team/api:1.0", digest("2"), digest("d"), [layer("b")]),
            ("registry.example:5000/team/web:1.0", digest("3"), None, [layer("a")]),
        ],
        {digest("a")},
        {web.original or "registry.example:5000/team/web:1.0": web, "x": api},
    )
    assert entries == [
        {
            "image": "registry.example:5000/team/web:1.0",
            "manifest": digest("1"),
            "config": digest("c"),
            "layerCount": 2,
            "layers": [{"digest": digest("a"), "size": 10, "mediaType": GZIP}],
            "sources": [{"registry": "registry.example:5000", "repository": "team/web"}],
        }
    ]
    (parsed,) = unpack.parse_unpack_images(entries)
    assert parsed == unpack.UnpackImage(
        image="registry.example:5000/team/web:1.0",
        manifest=digest("1"),
        config=digest("c"),
        layer_count=2,
        layers=(layer("a"),),
        sources=(("registry.example:5000", "team/web"),),
    )
    assert unpack.parse_unpack_images(None) == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layers": []}, "layerCount: 1 for 0 listed layers"),
        ({"layerCount": 0}, "layerCount: 0 for 1 listed layers"),
        ({"layerCount": 5000}, "layerCount: 5000"),
        ({"config": "sha256:zz"}, "invalid digest"),
        ({"sources": []}, "sources: empty"),
        ({"layers": [{"digest": "sha256:" + "a" * 64, "size": -1, "mediaType": GZIP}]}, "size"),
        ({"layers": [{"digest": "sha256:" + "a" * 64, "size": 1}]}, "mediaType: expected str"),
    ],
)
def test_unusable_entries_are_refused_naming_the_field(
    change: dict[str, Any], message: str
) -> None:
    entry: dict[str, Any] = {
        "image": "x",
        "manifest": digest("1"),
        "config": digest("c"),
        "layerCount": 1,
        "layers": [{"digest": digest("a"), "size": 1, "mediaType": GZIP}],
        "sources": [{"registry": "r", "repository": "p"}],
    }
    entry.update(change)
    with pytest.raises(ValueError, match="images\\[0\\]") as caught:
        unpack.parse_unpack_images([entry])
    assert message in str(caught.value)


def test_diff_ids_are_read_from_the_config() -> None:
    ids = [digest("1"), digest("2"), digest("3")]
    assert unpack.parse_diff_ids(config(ids), image=image(), max_bytes=1 << 20) == tuple(ids)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"x" * 2000, "2000 bytes, over the 1024-byte limit"),
        (b"{", "not JSON"),
        (b"[" * 900 + b"]" * 900, "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b"{}", "no rootfs object"),
        (json.dumps({"rootfs": {"type": "none", "diff_ids": []}}).encode(), "rootfs.type"),
        (json.dumps({"rootfs": {"type": "layers", "diff_ids": "x"}}).encode(), "not a list"),
        (config([digest("1")]), "lists 1 layers, the manifest 3"),
        (config([digest("1"), digest("2"), "sha512:ab"]), "diff_ids[2] is not a sha256"),
        (config([digest("1"), digest("2"), 3]), "diff_ids[2] is not a sha256"),
        # Go's encoding/json would read RootFS as rootfs: refused as ambiguous.
        (config([digest("1")] * 3, RootFS={"type": "layers"}), "'RootFS'"),
        (
            json.dumps(
                {"rootfs": {"type": "layers", "diff_ids": [digest("1")] * 3, "DIFF_IDS": []}}
            ).encode(),
            "'DIFF_IDS'",
        ),
    ],
)
def test_hostile_or_oversized_configs_are_refused_naming_why(body: bytes, message: str) -> None:
    limit = 1024 if len(body) == 2000 else 1 << 20
    with pytest.raises(unpack.UnpackError) as caught:
        unpack.parse_diff_ids(body, image=image(), max_bytes=limit)
    text = str(caught.value)
    assert text.startswith(f"image registry.example:5000/team/web:1.0: config {digest('c')}: ")
    assert message in text


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    body = b'{"rootfs":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(unpack.UnpackError, match=r"not JSON|no rootfs"):
        unpack.parse_diff_ids(body, image=image(), max_bytes=1 << 20)


def test_snapshot_keys_and_labels_name_the_chain_id() -> None:
    key = unpack.build_snapshot_key(digest("a"), "0123")
    assert key == f"imageward-extract-0123 {digest('a')}"
    assert unpack.build_snapshot_labels(digest("a")) == {"containerd.io/snapshot.ref": digest("a")}
