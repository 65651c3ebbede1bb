"""Documents Go's encoding/json (containerd) would read otherwise than imageward: refused.

Found reviewing what the manifest and config fuzz targets accept: Go matches keys to
struct fields case-insensitively and the last match wins, so each of these was checked
from one spelling and would be pulled or run from the other.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from imageward import errors
from imageward.localcluster import images
from imageward.registry import auth, gojson, manifests

UNSIGNED = {
    "mediaType": manifests.OCI_MANIFEST,
    "digest": "sha256:" + "b" * 64,
    "size": 500,
    "platform": {"os": "linux", "architecture": "amd64"},
}


def index_document() -> dict[str, Any]:
    result: dict[str, Any] = images.multiarch_index("gojson", attestations=False).document
    return result


def image_document() -> dict[str, Any]:
    result: dict[str, Any] = images.small_image("gojson").document
    return result


def refused(document: dict[str, Any]) -> str:
    with pytest.raises(manifests.ManifestError) as excinfo:
        manifests.parse_manifest(json.dumps(document).encode(), content_type=None)
    return str(excinfo.value)


def test_an_index_with_a_second_manifests_list_is_refused() -> None:
    # imageward checked the (signed) `manifests`; containerd selects from `Manifests`.
    document = index_document()
    document["Manifests"] = [UNSIGNED]
    assert refused(document) == (
        "manifest has key 'Manifests', which Go's encoding/json (containerd) reads as "
        "'manifests': ambiguous document"
    )


def test_an_entry_whose_platform_go_reads_otherwise_is_refused() -> None:
    # An arm64 entry that containerd reads as amd64 (the last `architecture` wins).
    document = index_document()
    document["manifests"][1]["platform"]["Architecture"] = "amd64"
    assert "manifest.manifests[1].platform has key 'Architecture'" in refused(document)


def test_a_manifest_with_a_second_layers_list_is_refused() -> None:
    # maxCompressedSize measured the small `layers`; containerd pulls `Layers`.
    document = image_document()
    document["Layers"] = [dict(UNSIGNED, size=5 * 2**30)]
    assert "manifest has key 'Layers'" in refused(document)


def test_a_long_s_folds_like_go() -> None:
    document = image_document()
    document["config"]["\u017fize"] = 1  # LATIN SMALL LETTER LONG S: Go reads `size`
    assert "manifest.config has key '\u017fize'" in refused(document)


@pytest.mark.parametrize(
    "body",
    [
        b'{"config": {"User": "65532", "user": "0"}}',
        b'{"config": {"User": "65532"}, "Config": {"User": "0"}}',
        b'{"config": {"User": "65532", "USER": "root"}}',
    ],
)
def test_a_config_user_go_reads_otherwise_is_refused(body: bytes) -> None:
    # forbidRootUser saw 65532; containerd runs the container as root.
    with pytest.raises(manifests.ManifestError, match="ambiguous document"):
        manifests.parse_config(body)


def test_real_documents_and_map_keys_pass() -> None:
    for manifest in (
        images.small_image("a"),
        images.small_image("a", format="docker"),
        images.multiarch_index("a"),
        images.build_index([images.small_image("a", format="docker")], format="docker"),
    ):
        manifests.parse_manifest(manifest.body, content_type=manifest.media_type)
        assert manifest.config is None or manifests.parse_config(manifest.config.data)
    # Annotations and labels are Go maps: their keys are compared exactly, by Go too.
    config = b'{"config": {"Labels": {"a": "1", "A": "2"}}, "container_config": {"User": "0"}}'
    assert manifests.parse_config(config).labels == (("A", "2"), ("a", "1"))
    assert gojson.fold("\u212a") == gojson.fold("k") == "K"


@pytest.mark.parametrize(
    "config",
    [
        {"Auths": {"ghcr.io": {"auth": "dTpw"}}},
        {"auths": {"ghcr.io": {"Username": "u", "Password": "p"}}},
        {"auths": {"ghcr.io": {"AUTH": "dTpw"}}},
    ],
)
def test_docker_config_fields_are_read_in_any_case_as_kubelet_does(config: Any) -> None:
    # Before: no credentials at all (an `Auths` file read as a legacy .dockercfg), while
    # kubelet pulls with them; imageward's anonymous lookup then failed as `lookup`.
    parsed = auth.parse_docker_config(json.dumps(config), source="Secret shop/pull")
    (entry,) = parsed.entries
    assert (entry.host, entry.credentials.username, entry.credentials.password) == (
        "ghcr.io",
        "u",
        "p",
    )


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"auths": {}, "Auths": {}}, "keys 'auths', 'Auths' are one field to kubelet"),
        (
            {"auths": {"x.io": {"username": "a", "Username": "b"}}},
            "entry 'x.io': keys 'username', 'Username' are one field to kubelet",
        ),
    ],
)
def test_docker_config_fields_spelled_twice_are_refused(config: Any, reason: str) -> None:
    with pytest.raises(errors.CredentialsError) as excinfo:
        auth.parse_docker_config(json.dumps(config), source="Secret shop/pull")
    assert excinfo.value.reason == reason


def test_ascii_keys_fold_as_every_rune_lowered_then_raised() -> None:
    # fold() takes a shortcut for ASCII keys; it must agree with Go's rune-by-rune rule.
    every = "".join(chr(code) for code in range(128))
    assert gojson.fold(every) == "".join(c.lower().upper() for c in every)
    assert gojson.fold("s\u0131ze") == "SIZE"  # a dotless i is not ASCII: Go's own rule
