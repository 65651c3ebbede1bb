"""The image builders are deterministic and produce what registries and runtimes expect."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from imageward.localcluster import images


def tar_members(layer: images.Layer) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer.data)), mode="r:") as tar:
        return tar.getmembers()


def test_layer_is_deterministic_whatever_the_insertion_order() -> None:
    first = images.layer_from_files({"b/two": b"2", "a/one": (b"1", 0o755)})
    second = images.layer_from_files({"a/one": (b"1", 0o755), "b/two": b"2"})

    assert first == second
    assert first.digest == images.sha256_digest(first.data)
    assert first.size == len(first.data)


def test_layer_changes_with_content_mode_and_mtime() -> None:
    base = images.layer_from_files({"f": b"x"})

    assert images.layer_from_files({"f": b"y"}).digest != base.digest
    assert images.layer_from_files({"f": (b"x", 0o755)}).digest != base.digest
    assert images.layer_from_files({"f": b"x"}, mtime=1).digest != base.digest


def test_layer_diff_id_is_the_digest_of_the_uncompressed_tar() -> None:
    layer = images.layer_from_files({"etc/hello": b"hello"})
    tar = gzip.decompress(layer.data)

    assert layer.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert layer.uncompressed_size == len(tar)
    assert layer.data[4:8] == b"\0\0\0\0"  # gzip header mtime
    assert layer.data[3] & 0x08 == 0  # no FNAME field: nothing from the build host


def test_layer_tar_is_sorted_with_parent_directories_and_root_owner() -> None:
    layer = images.layer_from_files({"/usr/bin/tool": (b"#!", 0o755), "./etc/conf": b"c"})
    members = tar_members(layer)

    assert [m.name for m in members] == ["etc", "etc/conf", "usr", "usr/bin", "usr/bin/tool"]
    assert [m.isdir() for m in members] == [True, False, True, True, False]
    by_name = {m.name: m for m in members}
    assert by_name["usr/bin/tool"].mode == 0o755
    assert by_name["etc/conf"].mode == 0o644
    assert by_name["usr"].mode == 0o755
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", 0)}


@pytest.mark.parametrize("path", ["", "/", "a/../b", "."])
def test_layer_refuses_bad_paths(path: str) -> None:
    with pytest.raises(ValueError):
        images.layer_from_files({path: b""})


def test_layer_refuses_a_path_used_as_file_and_directory() -> None:
    with pytest.raises(ValueError, match="both as file and directory"):
        images.layer_from_files({"a": b"", "a/b": b""})


def test_random_layer_is_seeded_incompressible_and_about_the_size_asked() -> None:
    layer = images.random_layer(1 * images.MiB, seed="x")

    assert images.random_layer(1 * images.MiB, seed="x").digest == layer.digest
    assert images.random_layer(1 * images.MiB, seed="y").digest != layer.digest
    assert images.random_layer(1 * images.MiB, seed=1).digest != (
        images.random_layer(1 * images.MiB, seed="1").digest
    )
    assert images.MiB <= layer.size < images.MiB + 32 * 1024
    assert len(gzip.compress(gzip.decompress(layer.data))) > images.MiB  # incompressible


def test_image_is_deterministic_and_carries_its_config() -> None:
    layers = [images.layer_from_files({"a": b"a"}), images.layer_from_files({"b": b"b"})]

    image = images.build_image(layers, user="1000", labels={"team": "x"}, cmd=["/a"])
    again = images.build_image(layers, user="1000", labels={"team": "x"}, cmd=["/a"])

    assert image == again
    assert image.digest == images.sha256_digest(image.body)
    assert image.media_type == images.OCI_MANIFEST
    manifest = image.document
    assert manifest["mediaType"] == images.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == images.OCI_CONFIG
    assert [d["digest"] for d in manifest["layers"]] == [layer.digest for layer in layers]
    assert [d["size"] for d in manifest["layers"]] == [layer.size for layer in layers]
    assert {d["mediaType"] for d in manifest["layers"]} == {images.OCI_LAYER_GZIP}
    assert image.config is not None
    config = json.loads(image.config.data)
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["config"]["User"] == "1000"
    assert config["config"]["Labels"] == {"team": "x"}
    assert config["config"]["Cmd"] == ["/a"]
    assert config["rootfs"] == {"type": "layers", "diff_ids": [x.diff_id for x in layers]}
    assert image.compressed_size == sum(layer.size for layer in layers)
    assert image.blobs[0] == image.config


def test_docker_format_uses_docker_media_types() -> None:
    image = images.build_image([images.layer_from_files({"a": b"a"})], format="docker")

    manifest = image.document
    assert image.media_type == manifest["mediaType"] == images.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == images.DOCKER_CONFIG
    assert manifest["layers"][0]["mediaType"] == images.DOCKER_LAYER_GZIP
    with pytest.raises(ValueError):
        images.build_image([], format="docker", annotations={"a": "b"})


def test_different_config_gives_a_different_digest() -> None:
    layer = images.layer_from_files({"a": b"a"})

    digests = {
        images.build_image([layer]).digest,
        images.build_image([layer], user="1").digest,
        images.build_image([layer], platform=images.LINUX_ARM64).digest,
        images.build_image([layer], created="2025-01-01T00:00:00Z").digest,
    }
    assert len(digests) == 4


def test_multiarch_index_lists_platforms_and_attestations() -> None:
    index = images.multiarch_index()

    assert index == images.multiarch_index()
    assert index.is_index and index.media_type == images.OCI_INDEX
    entries = index.document["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == [
        "amd64",
        "unknown",
        "arm64",
        "unknown",
    ]
    assert [e["digest"] for e in entries] == [child.digest for child in index.children]
    amd64, amd64_attestation = index.children[0], index.children[1]
    assert entries[1]["annotations"] == {
        "vnd.docker.reference.digest": amd64.digest,
        "vnd.docker.reference.type": "attestation-manifest",
    }
    assert amd64_attestation.document["layers"][0]["mediaType"] == images.IN_TOTO
    assert index.children[0].digest != index.children[2].digest


def test_index_without_attestations_and_docker_list() -> None:
    index = images.multiarch_index(attestations=False)
    assert len(index.document["manifests"]) == 2

    docker = images.build_index([images.small_image(format="docker")], format="docker")
    assert docker.media_type == docker.document["mediaType"] == images.DOCKER_MANIFEST_LIST


def test_ready_made_images() -> None:
    assert images.root_image().document != images.nonroot_image().document
    assert images.nonroot_image().config is not None
    assert json.loads(images.nonroot_image().config.data)["config"]["User"] == "65532:65532"  # type: ignore[union-attr]
    assert json.loads(images.root_image().config.data)["config"]["User"] == "root"  # type: ignore[union-attr]
    assert len(images.many_layer_image(count=60).layers) == 60
    assert len({layer.digest for layer in images.many_layer_image(count=60).layers}) == 60
    large = images.large_image(size=2 * images.MiB)
    assert large.largest_layer_size > 2 * images.MiB


def test_shared_base_images_share_exactly_their_base() -> None:
    shared = images.shared_base_images(3, base_layers=2, base_layer_size=1024, top_layer_size=512)

    assert len(shared) == 3
    bases = {tuple(layer.digest for layer in image.layers[:2]) for image in shared}
    tops = {image.layers[2].digest for image in shared}
    assert len(bases) == 1 and len(tops) == 3


def test_scratch_image_holds_only_the_executable() -> None:
    image = images.scratch_image(b"\x7fELF binary", path="/bin/helper")

    members = tar_members(image.layers[0])
    assert [(m.name, m.isdir(), m.mode) for m in members] == [
        ("bin", True, 0o755),
        ("bin/helper", False, 0o755),
    ]
    assert image.config is not None
    config = json.loads(image.config.data)["config"]
    assert config["Entrypoint"] == ["/bin/helper"]
    assert config["Env"] == []


def test_artifact_manifest_with_subject() -> None:
    subject = images.small_image()
    payload = images.Blob.of(b"{}", "application/vnd.dev.sigstore.bundle.v0.3+json")

    artifact = images.build_artifact(
        [payload],
        artifact_type="application/vnd.dev.sigstore.bundle.v0.3+json",
        subject=subject,
        annotations={"a": "b"},
    )

    document = artifact.document
    assert document["subject"] == {
        "mediaType": images.OCI_MANIFEST,
        "digest": subject.digest,
        "size": subject.size,
    }
    assert document["config"]["mediaType"] == images.EMPTY_JSON
    assert document["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert document["annotations"] == {"a": "b"}
    assert artifact.blobs[1] == payload
    entry = images.build_index([artifact]).document["manifests"][0]
    assert entry["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert entry["annotations"] == {"a": "b"}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="http://127.0.0.1:5/token",service="svc",scope="repository:a/b:pull"',
            (
                "bearer",
                {
                    "realm": "http://127.0.0.1:5/token",
                    "service": "svc",
                    "scope": "repository:a/b:pull",
                },
            ),
        ),
        (
            'Bearer realm="r",scope="repository:a:pull,push repository:b:pull",error="x"',
            (
                "bearer",
                {"realm": "r", "scope": "repository:a:pull,push repository:b:pull", "error": "x"},
            ),
        ),
        ('Basic realm="imageward-local"', ("basic", {"realm": "imageward-local"})),
        ("Basic realm=plain", ("basic", {"realm": "plain"})),
    ],
)
def test_parse_challenge(header: str, expected: tuple[str, dict[str, str]]) -> None:
    assert images.parse_challenge(header) == expected
