"""The legacy `.sig` format, through the `verify` entry point with key authorities."""

from __future__ import annotations

import json

import pytest

from imageward.registry import model as registry_model
from imageward.signatures import legacy, verify

from . import build


def _verify(
    digest: registry_model.Digest,
    manifest: bytes,
    blobs: dict[str, bytes],
    authority: verify.Authority,
) -> verify.AuthorityOutcome:
    signatures = verify.SignatureSet(legacy_manifests=(manifest,), blobs=blobs)
    result = verify.verify(digest, signatures, [authority], threshold=1)
    assert len(result.outcomes) == 1
    return result.outcomes[0]


@pytest.mark.parametrize("kind", ["p256", "p384", "p521", "rsa", "ed25519"])
def test_valid_signature_verifies(
    private_keys: dict[str, build.PrivateKey], kind: str, digest: registry_model.Digest
) -> None:
    key = private_keys[kind]
    manifest, blobs = build.legacy_manifest(build.legacy_layer(key, digest))
    outcome = _verify(digest, manifest, blobs, build.key_authority("release-key", key))
    assert outcome.verified and outcome.reason == "" and outcome.format == "legacy"


def test_wrong_key(
    release_authority: verify.KeyAuthority,
    attacker_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    manifest, blobs = build.legacy_manifest(build.legacy_layer(attacker_key, digest))
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert not outcome.verified
    assert outcome.reason == "signature does not verify with key release-key"


def test_signature_copied_from_another_image(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    # A genuine signature of another image, pushed to this image's .sig tag.
    manifest, blobs = build.legacy_manifest(build.legacy_layer(release_key, other_digest))
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert not outcome.verified
    assert outcome.reason == f"signed payload names another digest {other_digest}"


def test_tampered_payload(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    layer = build.legacy_layer(release_key, digest)
    manifest, blobs = build.legacy_manifest(layer)
    (layer_digest,) = (d for d, blob in blobs.items() if blob == layer.payload)
    blobs[layer_digest] = layer.payload.replace(b"web", b"evil")
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert outcome.reason.startswith("tampered payload: digest mismatch")


def test_payload_rewritten_with_its_digest_no_longer_verifies(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    # The attacker edits the payload to name this image and fixes up the layer digest:
    # the signature over the original bytes no longer matches.
    original = build.legacy_layer(release_key, other_digest)
    forged = build.LegacyLayer(build.simplesigning_payload(digest), original.signature)
    manifest, blobs = build.legacy_manifest(forged)
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert outcome.reason == "signature does not verify with key release-key"


def test_old_cosign_capitalised_key_is_accepted(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    payload = build.simplesigning_payload(digest, key="Docker-manifest-digest")
    layer = build.LegacyLayer(payload, build.sign(release_key, payload))
    manifest, blobs = build.legacy_manifest(layer)
    assert _verify(digest, manifest, blobs, release_authority).verified


def test_keys_differing_only_by_case_are_refused(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "r"},
                "image": {"docker-manifest-digest": digest, "Docker-manifest-digest": other_digest},
                "type": "cosign container image signature",
            }
        }
    ).encode()
    manifest, blobs = build.legacy_manifest(
        build.LegacyLayer(payload, build.sign(release_key, payload))
    )
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert not outcome.verified and "differing only by case" in outcome.reason


def test_duplicate_keys_are_refused(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    payload = (
        b'{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"'
        + other_digest.encode()
        + b'","docker-manifest-digest":"'
        + digest.encode()
        + b'"},"type":"cosign container image signature"},"optional":null}'
    )
    manifest, blobs = build.legacy_manifest(
        build.LegacyLayer(payload, build.sign(release_key, payload))
    )
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert not outcome.verified and "duplicate key" in outcome.reason


def test_payload_of_another_type(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    payload = build.simplesigning_payload(digest).replace(
        b"cosign container image signature", b"atomic container signature"
    )
    manifest, blobs = build.legacy_manifest(
        build.LegacyLayer(payload, build.sign(release_key, payload))
    )
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert outcome.reason == (
        "signed payload is of type 'atomic container signature', "
        "not 'cosign container image signature'"
    )


def test_docker_reference_is_not_enforced(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    # Signed at the build registry, admitted from a mirror: the digest binds, not the name.
    payload = build.simplesigning_payload(digest, reference="build.internal/acme/web")
    manifest, blobs = build.legacy_manifest(
        build.LegacyLayer(payload, build.sign(release_key, payload))
    )
    assert _verify(digest, manifest, blobs, release_authority).verified


def test_certificate_in_signature_is_ignored_for_key_authorities(
    release_authority: verify.KeyAuthority,
    attacker_key: build.PrivateKey,
    sigstore: object,
    digest: registry_model.Digest,
) -> None:
    # Key material carried by the signature (here the attacker's certificate) never counts.
    layer = build.legacy_layer(
        attacker_key,
        digest,
        **{legacy.CERTIFICATE_ANNOTATION: build.public_pem(attacker_key)},
    )
    manifest, blobs = build.legacy_manifest(layer)
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert outcome.reason == "signature does not verify with key release-key"


def test_layer_without_signature_annotation(
    release_authority: verify.KeyAuthority,
    digest: registry_model.Digest,
) -> None:
    layer = build.LegacyLayer(build.simplesigning_payload(digest), None)
    manifest, blobs = build.legacy_manifest(layer)
    outcome = _verify(digest, manifest, blobs, release_authority)
    assert "has no dev.cosignproject.cosign/signature annotation" in outcome.reason


def test_payload_blob_not_fetched(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    manifest, _ = build.legacy_manifest(build.legacy_layer(release_key, digest))
    outcome = _verify(digest, manifest, {}, release_authority)
    assert outcome.reason.startswith("payload blob sha256:") and "was not fetched" in outcome.reason


def test_foreign_layers_are_not_signatures(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    layer = build.legacy_layer(release_key, digest)
    layer.media_type = "application/vnd.oci.image.layer.v1.tar+gzip"
    manifest, blobs = build.legacy_manifest(layer)
    assert _verify(digest, manifest, blobs, release_authority).reason == "no signature found"


def test_unreadable_manifest(
    release_authority: verify.KeyAuthority, digest: registry_model.Digest
) -> None:
    outcome = _verify(digest, b"<html>", {}, release_authority)
    assert outcome.reason.startswith("legacy signature manifest is not valid JSON")


def test_one_good_signature_among_bad_ones(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    attacker_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    manifest, blobs = build.legacy_manifest(
        build.legacy_layer(attacker_key, digest), build.legacy_layer(release_key, digest)
    )
    assert _verify(digest, manifest, blobs, release_authority).verified


def test_parse_keeps_keyless_annotations_as_written(
    release_key: build.PrivateKey, digest: registry_model.Digest
) -> None:
    layer = build.legacy_layer(
        release_key,
        digest,
        **{legacy.CHAIN_ANNOTATION: "chain", legacy.REKOR_BUNDLE_ANNOTATION: "{}"},
    )
    manifest, _ = build.legacy_manifest(layer)
    (parsed,) = legacy.parse_signature_manifest(manifest)
    assert parsed.chain == "chain" and parsed.rekor_bundle == "{}" and parsed.certificate is None
    assert parsed.layer_digest == build.digest_of(layer.payload)
