"""Manifests, indexes and configs: bytes from the image builders (byte-for-byte what the
test registries serve) and hand-made hostile documents."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from imageward.localcluster import images
from imageward.registry import manifests, model, platforms, reference

# The shape Docker Hub serves for an official image (trimmed to three entries).
DOCKER_HUB_LIST = json.dumps(
    {
        "manifests": [
            {
                "digest": "sha256:" + "1" * 64,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "platform": {"architecture": "amd64", "os": "linux"},
                "size": 1570,
            },
            {
                "digest": "sha256:" + "2" * 64,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
                "size": 1570,
            },
            {
                "digest": "sha256:" + "3" * 64,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
                "size": 1570,
            },
        ],
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "schemaVersion": 2,
    },
    indent=3,
).encode()


def digest_of(body: bytes) -> model.Digest:
    return model.Digest("sha256:" + hashlib.sha256(body).hexdigest())


def test_oci_image_manifest() -> None:
    image = images.small_image("unit", user="1000")

    fetched = manifests.parse_manifest(
        image.body, content_type=images.OCI_MANIFEST, expected_digest=model.Digest(image.digest)
    )

    assert (fetched.digest, fetched.media_type, fetched.is_index) == (
        image.digest,
        images.OCI_MANIFEST,
        False,
    )
    content = fetched.content
    assert isinstance(content, manifests.ImageManifest) and content.is_image
    assert content.config.digest == image.config.digest  # type: ignore[union-attr]
    assert [(d.digest, d.size) for d in content.layers] == [
        (x.digest, x.size) for x in image.layers
    ]


def test_docker_manifest_list_as_docker_hub_serves_it() -> None:
    fetched = manifests.parse_manifest(
        DOCKER_HUB_LIST,
        content_type=manifests.DOCKER_MANIFEST_LIST,
        claimed_digest=digest_of(DOCKER_HUB_LIST),
    )
    assert isinstance(fetched.content, manifests.ImageIndex)
    entries = manifests.build_entries(fetched.content)

    def chosen(node: model.Platform) -> list[str]:
        return [
            fetched.content.manifests[e.position].digest[7]
            for e in platforms.select_entries(entries, node)
        ]  # type: ignore[union-attr]

    assert chosen(model.Platform("linux", "amd64")) == ["1"]
    assert chosen(model.Platform("linux", "arm")) == ["2"]  # arm means arm/v7
    assert chosen(model.Platform("linux", "aarch64")) == ["3"]  # aarch64 is arm64


def test_index_with_attestations_never_selects_them() -> None:
    index = images.multiarch_index("unit")
    fetched = manifests.parse_manifest(index.body, content_type=images.OCI_INDEX)
    assert isinstance(fetched.content, manifests.ImageIndex)
    entries = manifests.build_entries(fetched.content)
    selected = {
        str(fetched.content.manifests[e.position].platform)
        for node in platforms.build_node_platforms(platforms.ANY_NODE)
        for e in platforms.select_entries(entries, node)
    }
    assert len(fetched.content.manifests) == 4
    assert selected == {"linux/amd64", "linux/arm64/v8"}


@pytest.mark.parametrize(
    ("name", "cap"), [("manifests", manifests.MAX_INDEX_ENTRIES), ("layers", manifests.MAX_LAYERS)]
)
def test_lists_over_their_cap_are_refused_naming_it(name: str, cap: int) -> None:
    descriptor = {"mediaType": images.OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 1}
    if name == "manifests":
        document: dict[str, object] = {"schemaVersion": 2, "mediaType": images.OCI_INDEX}
    else:
        document = {"schemaVersion": 2, "mediaType": images.OCI_MANIFEST, "config": descriptor}
    document[name] = [descriptor] * (cap + 1)
    with pytest.raises(
        manifests.ManifestError, match=f"lists {cap + 1} {name}, over the limit of {cap}"
    ):
        manifests.parse_content(json.dumps(document).encode(), content_type=None)
    document[name] = [descriptor] * cap
    manifests.parse_content(json.dumps(document).encode(), content_type=None)


def test_generic_content_type_falls_back_on_the_document() -> None:
    image = images.small_image("unit")
    for content_type in (None, "", "application/json", "application/octet-stream"):
        assert manifests.parse_manifest(image.body, content_type=content_type).media_type == (
            images.OCI_MANIFEST
        )
    # An old OCI manifest without mediaType: the header, then the shape decides.
    document = dict(image.document)
    del document["mediaType"]
    body = json.dumps(document).encode()
    assert manifests.parse_content(body, content_type=None).media_type == images.OCI_MANIFEST
    assert (
        manifests.parse_content(body, content_type=images.DOCKER_MANIFEST).media_type
        == images.DOCKER_MANIFEST
    )


def test_digest_checks() -> None:
    body = images.small_image("unit").body
    other = model.Digest("sha256:" + "0" * 64)
    sha512 = model.Digest("sha512:" + hashlib.sha512(body).hexdigest())

    with pytest.raises(manifests.DigestMismatch, match="not the requested"):
        manifests.parse_manifest(body, content_type=None, expected_digest=other)
    with pytest.raises(manifests.DigestMismatch, match="registry says"):
        manifests.parse_manifest(body, content_type=None, claimed_digest=other)
    with pytest.raises(manifests.ManifestError, match="Docker-Content-Digest header"):
        manifests.parse_manifest(body, content_type=None, claimed_digest="md5:abc")
    assert (
        manifests.parse_manifest(body, content_type=None, expected_digest=sha512).digest == sha512
    )
    assert manifests.evaluate_digest(body, sha512)


def manifest_with(**changes: Any) -> bytes:
    document: dict[str, Any] = dict(images.small_image("unit").document)
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None}).encode()


LAYER = {"mediaType": images.OCI_LAYER_GZIP, "digest": "sha256:" + "b" * 64, "size": 10}


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"\xff\xfe", None, "not JSON"),
        (b'"text"', None, "not a JSON object"),
        (b'{"schemaVersion": 1, "fsLayers": []}', None, "Docker schema 1"),
        (b"{}", manifests.DOCKER_SCHEMA1_SIGNED, "Docker schema 1"),
        (manifest_with(schemaVersion=3), None, "schemaVersion is 3"),
        (manifest_with(), "text/html", "Content-Type 'text/html' is not a manifest media type"),
        (manifest_with(), images.OCI_INDEX, "but the document declares"),
        (manifest_with(mediaType="application/x-custom"), None, "unsupported manifest media type"),
        (manifest_with(manifests=[]), None, "ambiguous document"),
        (
            json.dumps(
                {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": [], "layers": []}
            ).encode(),
            None,
            "ambiguous document",
        ),
        (json.dumps({"schemaVersion": 2}).encode(), None, "neither a manifest nor an index"),
        (manifest_with(config=None), images.OCI_MANIFEST, "manifest has no config"),
        (manifest_with(layers={}), None, "layers is not a list"),
        (manifest_with(layers=[{**LAYER, "size": -1}]), None, "is not a non-negative integer"),
        (manifest_with(layers=[{**LAYER, "size": True}]), None, "is not a non-negative integer"),
        (manifest_with(layers=[{**LAYER, "size": 2**64}]), None, "is not a non-negative integer"),
        (manifest_with(layers=[{**LAYER, "digest": "sha256:XYZ"}]), None, "invalid digest"),
        (manifest_with(layers=[{**LAYER, "mediaType": None}]), None, "has no mediaType"),
        (manifest_with(layers=["x"]), None, "layers[0] is not an object"),
        (manifest_with(annotations={"a": 1}), None, "annotations are not a string map"),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": images.OCI_INDEX,
                    "manifests": [{**LAYER, "platform": {"os": "linux"}}],
                }
            ).encode(),
            None,
            "platform has no architecture",
        ),
    ],
)
def test_hostile_documents(body: bytes, content_type: str | None, reason: str) -> None:
    with pytest.raises(manifests.ManifestError) as error:
        manifests.parse_manifest(body, content_type=content_type)
    assert reason in str(error.value)


def test_config_facts() -> None:
    image = images.small_image("unit", user="65532:65532", labels={"team": "a"})
    assert image.config is not None

    config = manifests.parse_config(image.config.data)
    fetched = manifests.parse_manifest(image.body, content_type=None)
    platform_image = manifests.build_platform_image(fetched, platform=None, config=config)
    ref = reference.parse_reference("ghcr.io/acme/unit:1")
    facts = manifests.build_facts(ref, fetched, [platform_image])

    assert config.user == "65532:65532"
    assert (config.os, config.architecture, config.created) == (
        "linux",
        "amd64",
        images.DEFAULT_CREATED,
    )
    assert dict(config.labels) == {"org.opencontainers.image.title": "unit", "team": "a"}
    assert platform_image.platform == model.Platform("linux", "amd64")
    assert platform_image.compressed_size == image.compressed_size
    assert facts.digest == image.digest and facts.images == (platform_image,)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"nope", "image config is not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"config": []}', "config is not an object"),
        (b'{"config": {"Labels": {"a": 1}}}', "Labels is not a string map"),
        (b'{"config": {"User": 0}}', "User is not a string"),
    ],
)
def test_hostile_configs(body: bytes, reason: str) -> None:
    with pytest.raises(manifests.ManifestError, match=reason):
        manifests.parse_config(body)


def test_minimal_config_and_null_labels() -> None:
    config = manifests.parse_config(b'{"config": {"Labels": null}}')
    assert config == model.ImageConfig(user=None, os=None, architecture=None, created=None)


def test_artifacts_are_not_images() -> None:
    artifact = images.build_artifact(
        [images.Blob.of(b"sig", "application/vnd.dev.cosign.simplesigning.v1+json")],
        artifact_type="application/example",
    )
    fetched = manifests.parse_manifest(artifact.body, content_type=images.OCI_MANIFEST)
    assert isinstance(fetched.content, manifests.ImageManifest)
    assert not fetched.content.is_image
    assert fetched.content.artifact_type == "application/example"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", model.Platform("linux", "amd64")),
        ("linux/arm64/v8", model.Platform("linux", "arm64", "v8")),
        ("windows/amd64", model.Platform("windows", "amd64")),
    ],
)
def test_parse_platform(text: str, expected: model.Platform) -> None:
    assert manifests.parse_platform(text) == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d"])
def test_bad_platforms(text: str) -> None:
    with pytest.raises(ValueError, match="is not os/arch"):
        manifests.parse_platform(text)


def test_referrers_filtering() -> None:
    index = manifests.ImageIndex(
        images.OCI_INDEX,
        (
            manifests.Descriptor(
                images.OCI_MANIFEST, model.Digest("sha256:" + "a" * 64), 1, artifact_type="x"
            ),
            manifests.Descriptor(
                images.OCI_MANIFEST, model.Digest("sha256:" + "b" * 64), 1, artifact_type="y"
            ),
        ),
    )
    assert [d.artifact_type for d in manifests.build_referrers(index, artifact_type="y")] == ["y"]
    assert len(manifests.build_referrers(index, artifact_type="y", filtered=True)) == 2
    assert len(manifests.build_referrers(index, artifact_type=None)) == 2
