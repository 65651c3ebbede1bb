"""Sigstore bundles (cosign v3) against key authorities."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from imageward.registry import model as registry_model
from imageward.signatures import bundle, model, verify

from . import build


def _outcome(
    digest: registry_model.Digest,
    authority: verify.Authority,
    *referrers: tuple[bytes, dict[str, bytes]],
) -> verify.AuthorityOutcome:
    blobs: dict[str, bytes] = {}
    for _, more in referrers:
        blobs.update(more)
    signatures = verify.SignatureSet(
        bundle_manifests=tuple(manifest for manifest, _ in referrers), blobs=blobs
    )
    (outcome,) = verify.verify(digest, signatures, [authority], threshold=1).outcomes
    return outcome


def _signed(
    digest: str, *signers: build.PrivateKey, **statement: Any
) -> tuple[bytes, dict[str, bytes]]:
    dsse = build.envelope(build.statement(digest, **statement), *signers)
    return build.referrer_manifest(build.key_bundle(dsse), digest)


def test_pae_is_byte_exact() -> None:
    assert bundle.pae("application/vnd.in-toto+json", b"hello") == (
        b"DSSEv1 28 application/vnd.in-toto+json 5 hello"
    )
    # Lengths count bytes, not characters.
    assert bundle.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


@pytest.mark.parametrize("kind", ["p256", "p384", "p521", "rsa", "ed25519"])
def test_valid_bundle_verifies(
    private_keys: dict[str, build.PrivateKey], kind: str, digest: registry_model.Digest
) -> None:
    key = private_keys[kind]
    outcome = _outcome(digest, build.key_authority("release-key", key), _signed(digest, key))
    assert outcome.verified and outcome.format == "bundle"


def test_wrong_key(
    release_authority: verify.KeyAuthority,
    attacker_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    outcome = _outcome(digest, release_authority, _signed(digest, attacker_key))
    assert outcome.reason == "signature does not verify with key release-key"


def test_bundle_carrying_its_own_key_is_refused(
    release_authority: verify.KeyAuthority,
    attacker_key: build.PrivateKey,
    sigstore: Any,
    digest: registry_model.Digest,
) -> None:
    # GHSA-fx35-mq7g-6g98: the bundle names the attacker's key (hint) and even carries a
    # certificate for it; only the policy's key may verify.
    dsse = build.envelope(build.statement(digest), attacker_key)
    forged = build.key_bundle(dsse, hint_key=attacker_key)
    leaf = sigstore.issue(subject="attacker@example.com", issuer="https://evil.test")
    forged["verificationMaterial"]["certificate"] = {"rawBytes": build.b64(leaf.der)}
    outcome = _outcome(digest, release_authority, build.referrer_manifest(forged, digest))
    assert outcome.reason == "signature does not verify with key release-key"


def test_signature_copied_from_another_image(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    # The genuine bundle of another image, attached to this one as a referrer.
    dsse = build.envelope(build.statement(other_digest), release_key)
    referrer = build.referrer_manifest(build.key_bundle(dsse), digest)
    outcome = _outcome(digest, release_authority, referrer)
    assert outcome.reason == f"signed payload names another digest {other_digest}"


def test_tampered_statement(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    dsse = build.envelope(build.statement(other_digest), release_key)
    dsse["payload"] = build.b64(build.statement(digest))  # re-pointed, signature kept
    referrer = build.referrer_manifest(build.key_bundle(dsse), digest)
    outcome = _outcome(digest, release_authority, referrer)
    assert outcome.reason == "signature does not verify with key release-key"


def test_tampered_bundle_blob(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    manifest, blobs = _signed(digest, release_key)
    for name, blob in blobs.items():
        if b"dsseEnvelope" in blob:
            blobs[name] = blob.replace(b'"keyid": ""', b'"keyid": "x"')
    outcome = _outcome(digest, release_authority, (manifest, blobs))
    assert outcome.reason.startswith("tampered payload: digest mismatch (bundle blob sha256:")


def test_one_of_several_dsse_signatures_is_enough(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    attacker_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    outcome = _outcome(digest, release_authority, _signed(digest, attacker_key, release_key))
    assert outcome.verified


def test_statement_v01_is_accepted(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    referrer = _signed(digest, release_key, statement_type="https://in-toto.io/Statement/v0.1")
    assert _outcome(digest, release_authority, referrer).verified


def test_signed_attestation_is_not_an_image_signature(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    # An SLSA attestation whose manifest does not announce its predicate type.
    dsse = build.envelope(
        build.statement(digest, predicate_type="https://slsa.dev/provenance/v1"), release_key
    )
    referrer = build.referrer_manifest(build.key_bundle(dsse), digest, predicate_type=None)
    outcome = _outcome(digest, release_authority, referrer)
    assert outcome.reason == (
        "bundle is an attestation of predicateType 'https://slsa.dev/provenance/v1', "
        "not an image signature (https://sigstore.dev/cosign/sign/v1)"
    )


def test_announced_attestations_are_skipped(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    dsse = build.envelope(
        build.statement(digest, predicate_type="https://slsa.dev/provenance/v1"), release_key
    )
    referrer = build.referrer_manifest(
        build.key_bundle(dsse), digest, predicate_type="https://slsa.dev/provenance/v1"
    )
    assert _outcome(digest, release_authority, referrer).reason == "no signature found"


def test_other_artifacts_are_skipped(
    release_authority: verify.KeyAuthority, digest: registry_model.Digest
) -> None:
    sbom = json.dumps(
        {"schemaVersion": 2, "artifactType": "application/spdx+json", "layers": []}
    ).encode()
    assert _outcome(digest, release_authority, (sbom, {})).reason == "no signature found"


def test_message_signature_bundle_is_refused(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    blob_bundle = {
        "mediaType": build.BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": ""}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": build.b64(b"\x00" * 32)},
            "signature": build.b64(build.sign(release_key, b"blob")),
        },
    }
    outcome = _outcome(digest, release_authority, build.referrer_manifest(blob_bundle, digest))
    assert outcome.reason == (
        "bundle holds a messageSignature (cosign sign-blob), not a DSSE image signature"
    )


def test_wrong_payload_type(
    release_authority: verify.KeyAuthority,
    release_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    dsse = build.envelope(build.statement(digest), release_key, payload_type="text/plain")
    outcome = _outcome(
        digest, release_authority, build.referrer_manifest(build.key_bundle(dsse), digest)
    )
    assert outcome.reason == "DSSE payload type is 'text/plain', not 'application/vnd.in-toto+json'"


def test_protobuf_json_variants_are_read(
    release_key: build.PrivateKey, digest: registry_model.Digest
) -> None:
    # snake_case field names and unpadded URL-safe base64 are both valid protobuf JSON.
    statement = build.statement(digest)
    signature = build.sign(release_key, build.pae(build.INTOTO, statement))
    raw = json.dumps(
        {
            "media_type": build.BUNDLE_V03,
            "dsse_envelope": {
                "payload": base64.urlsafe_b64encode(statement).decode().rstrip("="),
                "payload_type": build.INTOTO,
                "signatures": [{"sig": base64.urlsafe_b64encode(signature).decode()}],
            },
        }
    ).encode()
    parsed = bundle.parse_bundle(raw)
    assert parsed.envelope is not None and parsed.envelope.payload == statement
    key = build.key_authority("k", release_key).key
    assert bundle.verify_with_key(parsed, digest, key, authority="k") == model.VERIFIED


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[]", "bundle is not a JSON object"),
        (b'{"mediaType": "text/plain"}', "bundle has media type 'text/plain'"),
        (
            json.dumps({"mediaType": build.BUNDLE_V03}).encode(),
            "bundle has neither dsseEnvelope nor messageSignature",
        ),
        (
            json.dumps(
                {
                    "mediaType": build.BUNDLE_V03,
                    "dsseEnvelope": {"payloadType": "t", "payload": "%%"},
                }
            ).encode(),
            "DSSE payload is not valid base64",
        ),
        (
            json.dumps(
                {
                    "mediaType": build.BUNDLE_V03,
                    "dsseEnvelope": {"payloadType": "t", "payload": "", "signatures": []},
                }
            ).encode(),
            "DSSE payload is missing or not a base64 string",
        ),
    ],
)
def test_malformed_bundles(raw: bytes, reason: str) -> None:
    with pytest.raises(model.Refused) as caught:
        bundle.parse_bundle(raw)
    assert caught.value.check.result == "malformed"
    assert caught.value.check.reason.startswith(reason)
