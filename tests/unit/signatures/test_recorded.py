"""Signatures real cosign made, and an entry in the public-good Rekor log.

Recorded data, not fabricated, as published in public repositories: a `cosign sign
--key` (v2, legacy format) signature of `localhost:5000/demo@sha256:2f02…` with its
Rekor SET, and a cosign v3 key bundle. They check that the payloads, encodings and the
SET canonicalisation here match what cosign and Rekor really write.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import pytest

from imageward.registry import model as registry_model
from imageward.signatures import keyless, keys, model, verify

from . import build

SIGNED = registry_model.Digest(
    "sha256:2f0249ebb962c1281b791aafe68ec39caa2751eecad1c6a5042cbdc43548d764"
)
PAYLOAD = (
    b'{"critical":{"identity":{"docker-reference":"localhost:5000/demo"},'
    b'"image":{"docker-manifest-digest":"' + SIGNED.encode() + b'"},'
    b'"type":"cosign container image signature"},"optional":null}'
)
LAYER_DIGEST = "sha256:bc59dffae964a8135399a8bc1897d79ac216b01007f52cb8e96a053d04395613"
SIGNATURE = (
    "MEYCIQDXkREZ7yk7UEYMoYOhgl8LACNeEoWI3zIkc7EM54TolQIh"
    "ANYkfFQR7OTWRI0kE3w/T1niR8rfKRc4MVFqOeUgoET7"
)
PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEhc7sBROez+HYHd8oPGByXaS6A6xt
ULjNz8U5nGcCKRCPO/ClLWWJoHzgJiHuFkmlhyALCWCgj78R0nklX9Le2g==
-----END PUBLIC KEY-----
"""
REKOR_BODY = (
    "eyJhcGlWZXJzaW9uIjoiMC4wLjEiLCJraW5kIjoiaGFzaGVkcmVrb3JkIiwic3BlYyI6eyJkYXRhIjp7Imhhc2gi"
    "OnsiYWxnb3JpdGhtIjoic2hhMjU2IiwidmFsdWUiOiJiYzU5ZGZmYWU5NjRhODEzNTM5OWE4YmMxODk3ZDc5YWMy"
    "MTZiMDEwMDdmNTJjYjhlOTZhMDUzZDA0Mzk1NjEzIn19LCJzaWduYXR1cmUiOnsiY29udGVudCI6Ik1FWUNJUURY"
    "a1JFWjd5azdVRVlNb1lPaGdsOExBQ05lRW9XSTN6SWtjN0VNNTRUb2xRSWhBTllrZkZRUjdPVFdSSTBrRTN3L1Qx"
    "bmlSOHJmS1JjNE1WRnFPZVVnb0VUNyIsInB1YmxpY0tleSI6eyJjb250ZW50IjoiTFMwdExTMUNSVWRKVGlCUVZV"
    "Sk1TVU1nUzBWWkxTMHRMUzBLVFVacmQwVjNXVWhMYjFwSmVtb3dRMEZSV1VsTGIxcEplbW93UkVGUlkwUlJaMEZG"
    "YUdNM2MwSlNUMlY2SzBoWlNHUTRiMUJIUW5sWVlWTTJRVFo0ZEFwVlRHcE9lamhWTlc1SFkwTkxVa05RVHk5RGJF"
    "eFhWMHB2U0hwblNtbElkVVpyYld4b2VVRk1RMWREWjJvM09GSXdibXRzV0RsTVpUSm5QVDBLTFMwdExTMUZUa1Fn"
    "VUZWQ1RFbERJRXRGV1MwdExTMHRDZz09In19fX0="
)
REKOR_ANNOTATION = json.dumps(
    {
        "SignedEntryTimestamp": (
            "MEYCIQDbEDDWL1V1g8wFf0Z5FXiz/CW9v21uaINxQdBGOVRGcgIhAI/MzDV/qUx+d96qnhpx6smUQUfvvEhQRUfYlsIwQ3RR"
        ),
        "Payload": {
            "body": REKOR_BODY,
            "integratedTime": 1754488662,
            "logIndex": 357097618,
            "logID": "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d",
        },
    }
)
# The public-good Rekor's key, from Sigstore's trusted_root.json (tlogs[0]).
PUBLIC_GOOD_REKOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2G2Y+2tabdTV5BcGiBIx0a9fAFwrkBbm"
    "LSGtks4L3qX6yYY0zufBnhC8Ur/iy55GhWP/9A/bY2LhC30M9+RYtw=="
)


def _signatures() -> verify.SignatureSet:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "layers": [
            {
                "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "size": len(PAYLOAD),
                "digest": LAYER_DIGEST,
                "annotations": {
                    "dev.cosignproject.cosign/signature": SIGNATURE,
                    "dev.sigstore.cosign/bundle": REKOR_ANNOTATION,
                },
            }
        ],
    }
    return verify.SignatureSet(
        legacy_manifests=(json.dumps(manifest).encode(),), blobs={LAYER_DIGEST: PAYLOAD}
    )


def test_payload_is_what_cosign_wrote() -> None:
    assert build.digest_of(PAYLOAD) == LAYER_DIGEST
    assert build.simplesigning_payload(SIGNED, reference="localhost:5000/demo") == PAYLOAD


def test_real_cosign_signature_verifies() -> None:
    authority = verify.KeyAuthority(
        name="demo", key=keys.parse_public_key(PUBLIC_KEY, authority="demo")
    )
    result = verify.verify(SIGNED, _signatures(), [authority], threshold=1)
    assert result.passed, result.message
    other = registry_model.Digest(build.image_digest("other"))
    result = verify.verify(other, _signatures(), [authority], threshold=1)
    assert result.failures[0].reason == f"signed payload names another digest {SIGNED}"


@pytest.fixture
def public_good_tlog(trusted_root: keyless.TrustedRoot) -> keyless.TrustedRoot:
    der = base64.b64decode(PUBLIC_GOOD_REKOR_KEY)
    tlog = keyless.LogKey(
        key_id=bytes.fromhex("c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d"),
        key=keys.load_der_public_key(der, authority="public-good"),
        valid_from=None,
        valid_until=None,
    )
    return dataclasses.replace(trusted_root, tlogs=(tlog,))


def test_real_rekor_set_verifies(public_good_tlog: keyless.TrustedRoot) -> None:
    entry = keyless.verify_rekor_bundle(REKOR_ANNOTATION, public_good_tlog)
    assert int(entry.integrated_time.timestamp()) == 1754488662
    assert json.loads(entry.body)["kind"] == "hashedrekord"
    # The log id is sha256 of the log's DER key, as the root would declare it.
    assert hashlib.sha256(base64.b64decode(PUBLIC_GOOD_REKOR_KEY)).hexdigest() == (
        "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d"
    )


def test_real_rekor_set_does_not_cover_another_time(
    public_good_tlog: keyless.TrustedRoot,
) -> None:
    forged = REKOR_ANNOTATION.replace("1754488662", "1754488663")
    with pytest.raises(model.Refused) as caught:
        keyless.verify_rekor_bundle(forged, public_good_tlog)
    assert caught.value.check == model.Check(
        "untrusted", "Rekor SignedEntryTimestamp does not verify"
    )


# A cosign v3 `sign --key` bundle as published in another project's tests (captured
# from a real signing session): protojson with its irregular spaces after commas.
V3_DIGEST = registry_model.Digest(
    "sha256:5099b89d7666cc2186cad769ddc262ddc7c335b33f5fe79f9ffe50a01282b23e"
)
V3_BUNDLE = (
    b'{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial":'
    b'{"publicKey":{"hint":"h162TZsIBy5Y8U9qYWcmpVAp5dKpXhR7gnz8sNfZjV4="}}, "dsseEnvelope":'
    b'{"payload":"eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEiLCAic3ViamVjdCI6W3'
    b"siZGlnZXN0Ijp7InNoYTI1NiI6IjUwOTliODlkNzY2NmNjMjE4NmNhZDc2OWRkYzI2MmRkYzdjMzM1YjMzZjVm"
    b"ZTc5ZjlmZmU1MGEwMTI4MmIyM2UifSwgImFubm90YXRpb25zIjp7fX1dLCAicHJlZGljYXRlVHlwZSI6Imh0dH"
    b'BzOi8vc2lnc3RvcmUuZGV2L2Nvc2lnbi9zaWduL3YxIiwgInByZWRpY2F0ZSI6e319", '
    b'"payloadType":"application/vnd.in-toto+json", "signatures":[{"sig":"MEUCIBs2jKDupMmrqsjz'
    b'I3W2oiID2y0P7n4UKT/RZHFeUOuhAiEA4SWsNDZXQBFqaA1/npF+HOGAaG2iuA52mxgPFCpgQog="}]}}'
)
V3_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEoJmXprHRCRJdqHnRaPDkVssbQNO1
is6XUr+/ApqnDi8HvBCRPbwU2P8jgkgtOOggNUf03tvJe0/9eZOb04aDbQ==
-----END PUBLIC KEY-----
"""


def test_real_cosign_v3_bundle_verifies() -> None:
    authority = verify.KeyAuthority(
        name="v3", key=keys.parse_public_key(V3_PUBLIC_KEY, authority="v3")
    )
    manifest, blobs = build.referrer_manifest(V3_BUNDLE, V3_DIGEST)
    signatures = verify.SignatureSet(bundle_manifests=(manifest,), blobs=blobs)
    result = verify.verify(V3_DIGEST, signatures, [authority], threshold=1)
    assert result.passed, result.message
    other = registry_model.Digest(build.image_digest("other"))
    result = verify.verify(other, signatures, [authority], threshold=1)
    assert result.failures[0].reason == f"signed payload names another digest {V3_DIGEST}"
