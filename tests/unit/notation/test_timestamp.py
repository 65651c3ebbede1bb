"""RFC 3161 countersignatures: a timestamp lets a signature outlive its signing
certificate, when it verifies against the timestampTrustStore and its time lies within
the chain's validity."""

from __future__ import annotations

import base64
import datetime
import json

import pytest

from imageward.notation import timestamp, trust
from imageward.registry import model as registry_model
from imageward.signatures import model, verify
from tests.unit.notation import build, pki, tsa

DIGEST = registry_model.Digest("sha256:" + "ab" * 32)
NOW = datetime.datetime.now(datetime.UTC)
TARGET = model.Target(build.MANIFEST_TYPE, 555)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_token_gives_the_signature_its_time() -> None:
    authority = tsa.Authority()
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    token = authority.token_for(b"the signature")
    after = datetime.datetime.now(datetime.UTC)
    stamp = timestamp.verify_token(token, b"the signature", [authority.root.cert])
    # genTime (whole seconds) of the moment the token was made, ± the 1 s accuracy
    assert before - datetime.timedelta(seconds=1) <= stamp.lower <= after
    assert before <= stamp.upper <= after + datetime.timedelta(seconds=1)
    assert stamp.upper - stamp.lower == datetime.timedelta(seconds=2)  # accuracy 1 s
    with pytest.raises(model.Refused, match="does not verify with the timestampTrustStore"):
        timestamp.verify_token(token, b"another signature", [authority.root.cert])
    with pytest.raises(model.Refused, match="does not verify with the timestampTrustStore"):
        timestamp.verify_token(token, b"the signature", [pki.ca().cert])
    with pytest.raises(model.Refused, match="cannot be read"):
        timestamp.verify_token(b"\x30\x03\x02\x01\x00", b"the signature", [authority.root.cert])


def _timestamped(
    expired_leaf: pki.Issued, root: pki.Issued, authority: tsa.Authority, at: datetime.datetime
) -> bytes:
    envelope = json.loads(build.jws(expired_leaf, [root], build.payload(DIGEST), signing_time=at))
    signature = _b64url_decode(envelope["signature"])
    token = authority.token(__import__("hashlib").sha256(signature).digest(), gen_time=at)
    envelope["header"]["io.cncf.notary.timestampSignature"] = base64.b64encode(token).decode()
    return json.dumps(envelope).encode()


def _authority(
    root: pki.Issued, tsa_root: pki.Issued | None, **options: object
) -> verify.NotationAuthority:
    policy = trust.build_policy(
        authority="acme",
        ca=trust.Store((root.der,)),
        tsa=trust.Store((tsa_root.der,)) if tsa_root else trust.EMPTY,
        identities=["*"],
        **options,  # type: ignore[arg-type]
    )
    return verify.NotationAuthority(name="acme", policy=policy)


def _run(envelope: bytes, authority: verify.NotationAuthority) -> verify.VerificationResult:
    found = verify.SignatureSet(
        bundle_manifests=(build.signature_manifest(envelope, DIGEST),),
        blobs={build.digest_of(envelope): envelope},
    )
    return verify.verify(DIGEST, found, [authority], 1, target=TARGET)


def test_an_expired_certificate_with_a_valid_timestamp_verifies() -> None:
    root, authority = pki.ca(), tsa.Authority()
    signed_at = NOW - datetime.timedelta(days=3)
    expired = pki.leaf(
        root,
        not_before=NOW - datetime.timedelta(days=5),
        not_after=NOW - datetime.timedelta(days=1),
    )
    envelope = _timestamped(expired, root, authority, signed_at)
    assert _run(envelope, _authority(root, authority.root)).passed
    # afterCertExpiry: only needed once expired, and it is
    assert _run(
        envelope, _authority(root, authority.root, verify_timestamp="afterCertExpiry")
    ).passed
    # without a timestampTrustStore the timestamp is not read: the chain must be valid now
    refused = _run(envelope, _authority(root, None))
    assert "(no timestampTrustStore to check its timestamp with)" in refused.outcomes[0].reason
    # a TSA nobody trusts
    refused = _run(envelope, _authority(root, pki.ca()))
    assert "does not verify with the timestampTrustStore" in refused.outcomes[0].reason


def test_a_timestamp_outside_the_certificate_validity_refuses() -> None:
    root, authority = pki.ca(), tsa.Authority()
    expired = pki.leaf(
        root,
        not_before=NOW - datetime.timedelta(days=5),
        not_after=NOW - datetime.timedelta(days=1),
    )
    late = _timestamped(expired, root, authority, NOW - datetime.timedelta(hours=12))
    reason = _run(late, _authority(root, authority.root)).outcomes[0].reason
    assert reason.startswith("signature expired: timestamp ")
    assert "is outside the validity of certificate CN=release" in reason


def test_a_timestamp_store_requires_the_countersignature() -> None:
    root, authority = pki.ca(), tsa.Authority()
    signer = pki.leaf(root)
    plain = build.jws(signer, [root], build.payload(DIGEST))
    reason = _run(plain, _authority(root, authority.root)).outcomes[0].reason
    assert reason == "no timestamp countersignature, which the timestampTrustStore requires"
    assert _run(plain, _authority(root, authority.root, verify_timestamp="afterCertExpiry")).passed
