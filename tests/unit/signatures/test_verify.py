"""The entry point: thresholds, per-authority reasons and per-attempt records."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from imageward.registry import model as registry_model
from imageward.signatures import keyless, verify

from . import build, fakesigstore


def test_threshold_two_of_three(
    private_keys: dict[str, build.PrivateKey],
    sigstore: fakesigstore.FakeSigstore,
    trusted_root: keyless.TrustedRoot,
    digest: registry_model.Digest,
) -> None:
    release, security, unused = private_keys["p256"], private_keys["rsa"], private_keys["ed25519"]
    authorities: list[verify.Authority] = [
        build.key_authority("release-key", release),
        build.keyless_authority(trusted_root, name="github-actions"),
        build.key_authority("security-team", security),
        build.key_authority("unused", unused),
    ]
    legacy_manifest, legacy_blobs = build.legacy_manifest(build.legacy_layer(release, digest))
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    keyless_manifest, keyless_blobs = build.referrer_manifest(
        build.keyless_bundle(sigstore, leaf, build.statement(digest)), digest
    )
    signatures = verify.SignatureSet(
        legacy_manifests=(legacy_manifest,),
        bundle_manifests=(keyless_manifest,),
        blobs={**legacy_blobs, **keyless_blobs},
    )
    result = verify.verify(digest, signatures, authorities[:3], threshold=2)
    assert result.passed
    assert result.verified == ("release-key", "github-actions")
    (failure,) = result.failures
    assert failure.authority == "security-team"
    assert failure.reason == "signature does not verify with key security-team"

    result = verify.verify(digest, signatures, [authorities[2], authorities[3]], threshold=2)
    assert not result.passed
    assert result.message == (
        "0 of 2 required authorities verified ("
        "security-team: signature does not verify with key security-team; "
        "unused: signature does not verify with key unused)"
    )


def test_no_signature_at_all(
    release_authority: verify.KeyAuthority,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    result = verify.verify(
        digest, verify.SignatureSet(), [release_authority, github_authority], threshold=1
    )
    assert not result.passed
    assert [(o.authority, o.kind, o.reason) for o in result.failures] == [
        ("release-key", "key", "no signature found"),
        ("github-actions", "keyless", "no signature found"),
    ]
    assert result.attempts == () and result.signatures_found == 0


def test_attempts_record_each_check_and_stop_at_success(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    attacker_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    bundle_manifest, bundle_blobs = build.referrer_manifest(
        build.key_bundle(build.envelope(build.statement(digest), attacker_key)), digest
    )
    legacy_manifest, legacy_blobs = build.legacy_manifest(
        build.legacy_layer(release_key, digest), build.legacy_layer(attacker_key, digest)
    )
    signatures = verify.SignatureSet(
        legacy_manifests=(legacy_manifest,),
        bundle_manifests=(bundle_manifest,),
        blobs={**bundle_blobs, **legacy_blobs},
    )
    result = verify.verify(digest, signatures, [release_authority], threshold=1)
    assert result.passed and result.signatures_found == 3
    assert [(a.authority, a.format, a.result) for a in result.attempts] == [
        ("release-key", "bundle", "invalid_signature"),
        ("release-key", "legacy", "verified"),  # the third signature is never needed
    ]
    assert result.attempts[0].signature.startswith("bundle sha256:")
    assert result.attempts[1].signature.startswith("legacy signature layer sha256:")
    assert result.outcomes[0].format == "legacy"


def test_the_most_telling_reason_wins(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    attacker_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    # A forged signature, an unreadable layer and a genuine one for another image:
    # "names another digest" tells the user what happened.
    broken = build.LegacyLayer(build.simplesigning_payload(digest), None)
    manifest, blobs = build.legacy_manifest(
        build.legacy_layer(attacker_key, digest),
        broken,
        build.legacy_layer(release_key, other_digest),
    )
    signatures = verify.SignatureSet(legacy_manifests=(manifest,), blobs=blobs)
    result = verify.verify(digest, signatures, [release_authority], threshold=1)
    assert [a.result for a in result.attempts] == ["invalid_signature", "malformed", "wrong_digest"]
    assert result.failures[0].reason == f"signed payload names another digest {other_digest}"


def test_unreadable_artifacts_count_as_attempts(
    release_authority: verify.KeyAuthority, digest: registry_model.Digest
) -> None:
    signatures = verify.SignatureSet(legacy_manifests=(b"not json",), bundle_manifests=(b"[]",))
    result = verify.verify(digest, signatures, [release_authority], threshold=1)
    assert [(a.format, a.result) for a in result.attempts] == [
        ("bundle", "malformed"),
        ("legacy", "malformed"),
    ]
    assert result.failures[0].reason == "referrer manifest is not a JSON object"


def test_threshold_must_be_positive(
    release_authority: verify.KeyAuthority, digest: registry_model.Digest
) -> None:
    with pytest.raises(ValueError, match="threshold must be at least 1, not 0"):
        verify.verify(digest, verify.SignatureSet(), [release_authority], threshold=0)


def test_authorities_are_frozen_values(
    release_key: build.PrivateKey, trusted_root: keyless.TrustedRoot
) -> None:
    assert build.key_authority("a", release_key) == build.key_authority("a", release_key)
    assert hash(build.key_authority("a", release_key)) == hash(
        build.key_authority("a", release_key)
    )
    assert verify.KeyAuthority.kind == "key" and verify.KeylessAuthority.kind == "keyless"
    assert build.keyless_authority(trusted_root) == build.keyless_authority(trusted_root)


def _mangle(rng: random.Random, data: bytes) -> bytes:
    mangled = bytearray(data)
    position = rng.randrange(len(mangled))
    if rng.random() < 0.5:
        mangled[position] = rng.randrange(256)
    else:
        del mangled[position:]
    return bytes(mangled)


def test_mangled_input_refuses_and_never_raises(
    sigstore: fakesigstore.FakeSigstore,
    release_authority: verify.KeyAuthority,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    # Whatever a registry serves, verify() answers with data: an exception could be
    # mistaken for a lookup failure, which `failurePolicy: Ignore` would admit.
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    layer = build.keyless_legacy_layer(sigstore, leaf, digest)
    signed_bundle = json.dumps(
        build.keyless_bundle(sigstore, leaf, build.statement(digest))
    ).encode()
    rng = random.Random(20240601)
    for round_ in range(160):
        legacy_layer, bundle_bytes = layer, signed_bundle
        if round_ % 4 == 0:  # the payload, re-addressed so that the parser meets it
            legacy_layer = dataclasses.replace(layer, payload=_mangle(rng, layer.payload))
        elif round_ % 4 == 1:  # the bundle, re-addressed likewise
            bundle_bytes = _mangle(rng, signed_bundle)
        legacy_manifest, legacy_blobs = build.legacy_manifest(legacy_layer)
        bundle_manifest, bundle_blobs = build.referrer_manifest(bundle_bytes, digest)
        if round_ % 4 == 2:  # the .sig manifest: annotations (certificate, SET...) and all
            legacy_manifest = _mangle(rng, legacy_manifest)
        elif round_ % 4 == 3:
            bundle_manifest = _mangle(rng, bundle_manifest)
        signatures = verify.SignatureSet(
            legacy_manifests=(legacy_manifest,),
            bundle_manifests=(bundle_manifest,),
            blobs={**legacy_blobs, **bundle_blobs},
        )
        result = verify.verify(digest, signatures, [release_authority, github_authority], 1)
        assert not result.outcomes[0].verified  # the key authority never signed


def test_rekor_time_out_of_range_is_malformed(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    layer = build.keyless_legacy_layer(sigstore, leaf, digest)
    annotation = json.loads(layer.annotations["dev.sigstore.cosign/bundle"])
    annotation["Payload"]["integratedTime"] = 10**30
    layer.annotations["dev.sigstore.cosign/bundle"] = json.dumps(annotation)
    manifest, blobs = build.legacy_manifest(layer)
    signatures = verify.SignatureSet(legacy_manifests=(manifest,), blobs=blobs)
    result = verify.verify(digest, signatures, [github_authority], threshold=1)
    assert result.failures[0].reason.startswith("Rekor integratedTime 1000000000000000")


# -- signers, not authority entries, meet a threshold (review finding 9) --------------------


def test_one_key_under_two_names_is_one_signer(
    release_key: build.PrivateKey, digest: registry_model.Digest
) -> None:
    manifest, blobs = build.legacy_manifest(build.legacy_layer(release_key, digest))
    signatures = verify.SignatureSet(legacy_manifests=(manifest,), blobs=blobs)
    twice = [build.key_authority("a", release_key), build.key_authority("b", release_key)]
    result = verify.verify(digest, signatures, twice, threshold=2)
    assert result.verified == ("a", "b")  # both entries verify...
    assert result.distinct_signers == 1  # ...but it is one signer
    assert not result.passed


def test_one_keyless_identity_accepted_twice_is_one_signer(
    sigstore: fakesigstore.FakeSigstore,
    trusted_root: keyless.TrustedRoot,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    manifest, blobs = build.referrer_manifest(
        build.keyless_bundle(sigstore, leaf, build.statement(digest)), digest
    )
    signatures = verify.SignatureSet(bundle_manifests=(manifest,), blobs=blobs)
    authorities = [
        build.keyless_authority(trusted_root, name="exact"),
        build.keyless_authority(trusted_root, name="also-exact"),
    ]
    result = verify.verify(digest, signatures, authorities, threshold=2)
    assert result.verified == ("exact", "also-exact")
    assert result.distinct_signers == 1
    (signer,) = result.outcomes[0].signers
    assert signer.startswith(f"keyless {build.GITHUB} ") and build.WORKFLOW in signer


@pytest.mark.parametrize(
    ("sets", "count"),
    [
        ([], 0),
        ([frozenset({"k1"}), frozenset({"k1"})], 1),
        ([frozenset({"k1"}), frozenset({"k2"})], 2),
        # An augmenting path: the first authority must give k1 up for the second.
        ([frozenset({"k1", "k2"}), frozenset({"k1"})], 2),
        ([frozenset({"x", "y"}), frozenset({"x", "y"}), frozenset({"x", "y"})], 2),
    ],
)
def test_count_signers_is_a_maximum_matching(sets: list[frozenset[str]], count: int) -> None:
    assert verify.count_signers(sets) == count


def test_problems_refuse_their_signature_and_say_why(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    good, good_blobs = build.legacy_manifest(build.legacy_layer(release_key, digest))
    layer = json.loads(good)["layers"][0]["digest"]
    # The payload blob was over the cap: never fetched, so the signature cannot count.
    broken = verify.SignatureSet(
        legacy_manifests=(good,), problems={layer: "is 9437184 bytes, over the limit"}
    )
    result = verify.verify(digest, broken, [release_authority], threshold=1)
    assert not result.passed
    assert "is 9437184 bytes, over the limit" in result.failures[0].reason
    # A problem elsewhere (the referrers list) does not hide a good legacy signature.
    mixed = verify.SignatureSet(
        legacy_manifests=(good,),
        blobs=good_blobs,
        problems={"referrers of x": "referrers list cannot be read"},
    )
    assert verify.verify(digest, mixed, [release_authority], threshold=1).passed
