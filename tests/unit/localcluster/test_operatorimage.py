"""`operatorimage` reads the OCI layout hack/build-image.sh writes, and hands it to the
harness's registry client unchanged (same digest, same blobs)."""

from __future__ import annotations

import json
import pathlib

import pytest

from imageward.localcluster import images, operatorimage


def write_layout(directory: pathlib.Path, manifest: images.Manifest, *, tag: str) -> None:
    """An OCI image layout as `buildah push oci:DIR:TAG` writes it."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for blob in manifest.blobs:
        (blobs / blob.digest.split(":")[1]).write_bytes(blob.data)
    (blobs / manifest.digest.split(":")[1]).write_bytes(manifest.body)
    (directory / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    entry = {
        **manifest.descriptor(),
        "annotations": {operatorimage.REF_NAME_ANNOTATION: tag},
    }
    entry.pop("platform", None)
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


@pytest.fixture
def source() -> images.Manifest:
    layers = [
        images.layer_from_files({"etc/os-release": b"ID=debian\n"}),
        images.layer_from_files({"imageward-helper": (b"\x7fELF", 0o755)}),
    ]
    return images.build_image(
        layers,
        user="65532:65532",
        entrypoint=["imageward"],
        cmd=["run"],
        labels={"org.opencontainers.image.title": "imageward"},
    )


@pytest.fixture
def layout(tmp_path: pathlib.Path, source: images.Manifest) -> pathlib.Path:
    directory = tmp_path / "imageward-0123456789abcdef0123"
    write_layout(directory, source, tag=operatorimage.LAYOUT_TAG)
    return directory


def test_load_reads_the_tagged_image_and_its_config(
    layout: pathlib.Path, source: images.Manifest
) -> None:
    image = operatorimage.load(layout)

    assert image.digest == source.digest
    assert image.key == "0123456789abcdef0123"
    assert image.user == "65532:65532"
    assert image.entrypoint == ["imageward"]
    assert image.cmd == ["run"]
    assert image.layer_sizes == [layer.size for layer in source.layers]
    assert image.compressed_size == source.compressed_size
    assert image.history == ["imageward localcluster layer 0", "imageward localcluster layer 1"]


def test_to_manifest_keeps_digest_blobs_and_layer_facts(
    layout: pathlib.Path, source: images.Manifest
) -> None:
    manifest = operatorimage.load(layout).to_manifest()

    assert manifest.digest == source.digest
    assert manifest.body == source.body
    assert [b.digest for b in manifest.blobs] == [b.digest for b in source.blobs]
    assert [b.data for b in manifest.blobs] == [b.data for b in source.blobs]
    assert [(lay.diff_id, lay.uncompressed_size) for lay in manifest.layers] == [
        (lay.diff_id, lay.uncompressed_size) for lay in source.layers
    ]
    assert manifest.platform == images.LINUX_AMD64


def test_a_blob_that_does_not_match_its_digest_is_refused(
    layout: pathlib.Path, source: images.Manifest
) -> None:
    image = operatorimage.load(layout)
    victim = source.layers[1].digest
    (layout / "blobs" / "sha256" / victim.split(":")[1]).write_bytes(b"tampered")

    with pytest.raises(operatorimage.OperatorImageError, match="does not match its digest"):
        image.blob(victim)


def test_load_needs_exactly_one_manifest_with_the_tag(layout: pathlib.Path) -> None:
    with pytest.raises(operatorimage.OperatorImageError, match="expected one manifest tagged"):
        operatorimage.load(layout, tag="other")


def test_the_checkout_holds_the_build_script() -> None:
    root = operatorimage.repository_root()

    assert (root / "hack" / "build-image.sh").is_file()
    assert (root / "Dockerfile").is_file()
