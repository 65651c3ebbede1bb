"""Notation signatures through `signatures.verify`: each verdict and its message, the
verification levels, thresholds across cosign and Notation authorities, and hostile
envelopes (each a refusal of that signature, never an exception)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

import cbor2
import pytest
from cryptography.x509 import oid

from imageward.notation import revocation, trust
from imageward.registry import model as registry_model
from imageward.signatures import model, verify
from tests.unit.notation import build, pki
from tests.unit.signatures import build as cosign_build

DIGEST = registry_model.Digest("sha256:" + "ab" * 32)
OTHER = registry_model.Digest("sha256:" + "cd" * 32)
TARGET = model.Target(build.MANIFEST_TYPE, 555)
NOW = datetime.datetime.now(datetime.UTC)
RELEASE = "x509.subject: C=US, ST=WA, O=Acme, CN=release"


@pytest.fixture(scope="module")
def root() -> pki.Issued:
    return pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme Root"))


@pytest.fixture(scope="module")
def signer(root: pki.Issued) -> pki.Issued:
    return pki.leaf(root)


def authority(
    *roots: pki.Issued,
    name: str = "acme",
    identities: Sequence[str] = (RELEASE,),
    sa: Sequence[pki.Issued] = (),
    tsa: Sequence[pki.Issued] = (),
    **options: Any,
) -> verify.NotationAuthority:
    def store(certs: Sequence[pki.Issued]) -> trust.Store:
        return trust.Store(tuple(c.der for c in certs))

    policy = trust.build_policy(
        authority=name,
        ca=store(roots),
        signing_authority=store(sa),
        tsa=store(tsa),
        identities=identities,
        **options,
    )
    return verify.NotationAuthority(name=name, policy=policy)


def signatures(*envelopes: tuple[bytes, str]) -> verify.SignatureSet:
    manifests = []
    blobs = {}
    for envelope, media_type in envelopes:
        manifests.append(build.signature_manifest(envelope, DIGEST, media_type=media_type))
        blobs[build.digest_of(envelope)] = envelope
    return verify.SignatureSet(bundle_manifests=tuple(manifests), blobs=blobs)


JWS = "application/jose+json"
COSE = "application/cose"


def run(
    found: verify.SignatureSet,
    *authorities: verify.Authority,
    threshold: int = 1,
    target: model.Target | None = TARGET,
    **kwargs: Any,
) -> verify.VerificationResult:
    return verify.verify(DIGEST, found, list(authorities), threshold, target=target, **kwargs)


def reason(result: verify.VerificationResult) -> str:
    (outcome,) = result.outcomes
    assert not outcome.verified, outcome
    return outcome.reason


@pytest.mark.parametrize("key", ["p256", "p384", "rsa"])
@pytest.mark.parametrize("media_type", [JWS, COSE])
def test_signed_by_a_trusted_ca_and_an_allowed_identity(
    root: pki.Issued, key: str, media_type: str
) -> None:
    signer = pki.leaf(root, key=key)
    make = build.jws if media_type == JWS else build.cose
    envelope = make(signer, [root], build.payload(DIGEST))
    result = run(signatures((envelope, media_type)), authority(root))
    assert result.passed, result.message
    (attempt,) = result.attempts
    assert (attempt.format, attempt.result) == ("notation", "verified")


def test_untrusted_ca(signer: pki.Issued, root: pki.Issued) -> None:
    other = pki.ca(pki.name(C="US", ST="WA", O="Other", CN="Other Root"))
    found = signatures((build.jws(signer, [root], build.payload(DIGEST)), JWS))
    assert reason(run(found, authority(other))) == (
        "certificate chain does not reach the trustStore (signed by "
        "CN=release,O=Acme,ST=WA,C=US, chain ends at CN=Acme Root,O=Acme,ST=WA,C=US)"
    )


def test_identity_not_trusted(signer: pki.Issued, root: pki.Issued) -> None:
    found = signatures((build.cose(signer, [root], build.payload(DIGEST)), COSE))
    wanted = "x509.subject: C=US, ST=WA, O=Acme, CN=qa"
    assert reason(run(found, authority(root, identities=[wanted]))) == (
        "identity not trusted: signing certificate subject CN=release,O=Acme,ST=WA,C=US is "
        f"not in trustedIdentities ({wanted})"
    )


def test_identity_is_a_subset_of_the_subject(root: pki.Issued) -> None:
    signer = pki.leaf(root, pki.name(C="US", ST="WA", L="Seattle", O="Acme", OU="Build", CN="ci"))
    found = signatures((build.jws(signer, [root], build.payload(DIGEST)), JWS))
    assert run(found, authority(root, identities=["x509.subject: C=US, ST=WA, O=Acme"])).passed
    assert run(
        found, authority(root, identities=["x509.subject: C=US,S=WA,O=Acme,OU=Build"])
    ).passed
    assert not run(found, authority(root, identities=["x509.subject: C=US, ST=WA, O=acme"])).passed


def test_wildcard_identity(signer: pki.Issued, root: pki.Issued) -> None:
    found = signatures((build.jws(signer, [root], build.payload(DIGEST)), JWS))
    assert run(found, authority(root, identities=["*"])).passed


def test_expired_signing_certificate_without_timestamp(root: pki.Issued) -> None:
    expired = pki.leaf(
        root,
        not_before=NOW - datetime.timedelta(days=2),
        not_after=NOW - datetime.timedelta(days=1),
    )
    envelope = build.jws(
        expired,
        [root],
        build.payload(DIGEST),
        signing_time=NOW - datetime.timedelta(days=1, hours=1),
    )
    found = signatures((envelope, JWS))
    text = reason(run(found, authority(root)))
    assert text.startswith(
        "signature expired: certificate CN=release,O=Acme,ST=WA,C=US expired at "
    )
    assert text.endswith("and the signature has no timestamp countersignature")
    # permissive and audit only log authentic-timestamp failures (the spec's table)
    assert run(found, authority(root, level="permissive")).passed
    assert run(found, authority(root, level="audit")).passed
    assert not run(
        found, authority(root, level="permissive", override={"authenticTimestamp": "enforce"})
    ).passed


def test_signature_expiry(signer: pki.Issued, root: pki.Issued) -> None:
    envelope = build.cose(
        signer,
        [root],
        build.payload(DIGEST),
        signing_time=NOW - datetime.timedelta(hours=2),
        expiry=NOW - datetime.timedelta(hours=1),
    )
    found = signatures((envelope, COSE))
    assert reason(run(found, authority(root))).startswith("signature expired on ")
    assert run(found, authority(root, override={"expiry": "log"})).passed


@pytest.mark.parametrize("media_type", [JWS, COSE])
def test_a_signature_of_another_image(
    signer: pki.Issued, root: pki.Issued, media_type: str
) -> None:
    make = build.jws if media_type == JWS else build.cose
    found = signatures((make(signer, [root], build.payload(OTHER)), media_type))
    result = run(found, authority(root))
    assert reason(result) == "signature names another digest sha256:cdcdcdcdcdcd… (targetArtifact)"
    assert result.attempts[0].result == "wrong_digest"


def test_the_signed_descriptor_media_type_and_size(signer: pki.Issued, root: pki.Issued) -> None:
    index = build.payload(DIGEST, media_type="application/vnd.oci.image.index.v1+json")
    found = signatures((build.jws(signer, [root], index), JWS))
    assert reason(run(found, authority(root))) == (
        "signature names media type application/vnd.oci.image.index.v1+json, the manifest is "
        "application/vnd.oci.image.manifest.v1+json"
    )
    found = signatures((build.jws(signer, [root], build.payload(DIGEST, size=556)), JWS))
    assert (
        reason(run(found, authority(root))) == "signature names size 556, the manifest is 555 bytes"
    )
    found = signatures((build.jws(signer, [root], build.payload(DIGEST)), JWS))
    assert reason(run(found, authority(root), target=None)) == (
        "the admitted manifest's media type and size are unknown here"
    )


@pytest.mark.parametrize("media_type", [JWS, COSE])
def test_tampered_envelope(signer: pki.Issued, root: pki.Issued, media_type: str) -> None:
    make = build.jws if media_type == JWS else build.cose
    envelope = make(signer, [root], build.payload(OTHER), tamper_payload=build.payload(DIGEST))
    result = run(signatures((envelope, media_type)), authority(root))
    kind = "JWS" if media_type == JWS else "COSE"
    assert reason(result) == (
        f"{kind} envelope signature does not verify with its signing certificate "
        "(tampered envelope)"
    )
    assert result.attempts[0].result == "invalid_signature"


def test_a_signature_from_a_certificate_an_attacker_made(root: pki.Issued) -> None:
    """The envelope carries the real root, but the attacker's leaf is not issued by it."""
    attacker_root = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme Root"))
    attacker = pki.leaf(attacker_root)
    found = signatures((build.jws(attacker, [root], build.payload(DIGEST)), JWS))
    text = reason(run(found, authority(root)))
    assert "is not issued by the next certificate" in text


def test_unknown_critical_header_refuses(signer: pki.Issued, root: pki.Issued) -> None:
    envelope = build.jws(
        signer,
        [root],
        build.payload(DIGEST),
        crit=["io.cncf.notary.signingScheme", "com.example.mustUnderstand"],
        extra_protected={"com.example.mustUnderstand": "x"},
    )
    assert reason(run(signatures((envelope, JWS)), authority(root))) == (
        "unknown critical header 'com.example.mustUnderstand'"
    )
    plugin = build.cose(
        signer,
        [root],
        build.payload(DIGEST),
        crit=["io.cncf.notary.signingScheme", "io.cncf.notary.verificationPlugin"],
        extra_protected={"io.cncf.notary.verificationPlugin": "com.example.plugin"},
    )
    assert "requires a Notation verification plugin" in reason(
        run(signatures((plugin, COSE)), authority(root))
    )


def test_required_headers_must_be_critical(signer: pki.Issued, root: pki.Issued) -> None:
    envelope = build.jws(
        signer,
        [root],
        build.payload(DIGEST),
        expiry=NOW + datetime.timedelta(days=1),
        crit=["io.cncf.notary.signingScheme"],
    )
    assert reason(run(signatures((envelope, JWS)), authority(root))) == (
        "headers not marked critical: io.cncf.notary.expiry"
    )


def test_algorithm_must_follow_the_signing_key(signer: pki.Issued, root: pki.Issued) -> None:
    envelope = build.jws(signer, [root], build.payload(DIGEST), alg="ES384")
    assert reason(run(signatures((envelope, JWS)), authority(root))) == (
        "the envelope says ES384 but its signing certificate's key signs with ES256"
    )


def test_signing_authority_scheme_needs_its_own_store(signer: pki.Issued, root: pki.Issued) -> None:
    envelope = build.jws(
        signer, [root], build.payload(DIGEST), scheme="notary.x509.signingAuthority"
    )
    found = signatures((envelope, JWS))
    assert reason(run(found, authority(root))) == (
        "signing scheme notary.x509.signingAuthority needs a signingAuthorityTrustStore, which "
        "this authority does not have"
    )
    assert run(found, authority(sa=[root])).passed
    # ...and a CA root is no signing authority: the stores are separate (signing-scheme spec)
    cose = build.cose(signer, [root], build.payload(DIGEST))
    assert "needs a trustStore" in reason(run(signatures((cose, COSE)), authority(sa=[root])))


def test_audit_level_counts_an_untrusted_signature_but_never_a_tampered_one(
    signer: pki.Issued, root: pki.Issued
) -> None:
    other = pki.ca()
    found = signatures((build.jws(signer, [root], build.payload(DIGEST)), JWS))
    assert run(found, authority(other, level="audit")).passed
    tampered = build.jws(signer, [root], build.payload(OTHER), tamper_payload=build.payload(DIGEST))
    assert not run(signatures((tampered, JWS)), authority(other, level="audit")).passed


@pytest.mark.parametrize(
    ("make_leaf", "message"),
    [
        (
            lambda root: pki.leaf(root, ekus=[oid.ExtendedKeyUsageOID.SERVER_AUTH]),
            "extendedKeyUsage must not have serverAuth",
        ),
        (
            lambda root: pki.leaf(root, ekus=[oid.ObjectIdentifier("1.3.6.1.4.1.311.10.3.13")]),
            "extendedKeyUsage lacks codeSigning",
        ),
        (
            lambda root: pki.leaf(root, key_usage_critical=False),
            "keyUsage must be present and critical",
        ),
    ],
)
def test_certificate_requirements(root: pki.Issued, make_leaf: Any, message: str) -> None:
    bad = make_leaf(root)
    found = signatures((build.jws(bad, [root], build.payload(DIGEST)), JWS))
    assert message in reason(run(found, authority(root, identities=["*"])))


def test_chain_must_end_with_its_root(root: pki.Issued) -> None:
    intermediate = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Acme Issuing"), issuer=root)
    signer = pki.leaf(intermediate)
    complete = build.jws(signer, [intermediate, root], build.payload(DIGEST))
    assert run(signatures((complete, JWS)), authority(root)).passed
    # A store may pin the intermediate, as notation allows (any chain certificate matches).
    assert run(signatures((complete, JWS)), authority(intermediate)).passed
    partial = build.jws(signer, [intermediate], build.payload(DIGEST))
    assert "is not self-signed" in reason(run(signatures((partial, JWS)), authority(root)))
    constrained = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Tight"), path_length=0)
    middle = pki.ca(pki.name(C="US", ST="WA", O="Acme", CN="Middle"), issuer=constrained)
    deep = build.jws(pki.leaf(middle), [middle, constrained], build.payload(DIGEST))
    assert "pathLenConstraint 0" in reason(run(signatures((deep, JWS)), authority(constrained)))


def test_a_cosign_key_does_not_read_notation_and_vice_versa(
    signer: pki.Issued, root: pki.Issued
) -> None:
    key = cosign_build.generate("p256")
    notation_only = signatures((build.jws(signer, [root], build.payload(DIGEST)), JWS))
    assert reason(run(notation_only, cosign_build.key_authority("release", key))) == (
        "no signature found for cosign (only Notation signatures, which need a notation authority)"
    )
    legacy_manifest, legacy_blobs = cosign_build.legacy_manifest(
        cosign_build.legacy_layer(key, DIGEST)
    )
    cosign_only = verify.SignatureSet(legacy_manifests=(legacy_manifest,), blobs=legacy_blobs)
    assert reason(run(cosign_only, authority(root))) == (
        "no Notation signature found (only cosign signatures)"
    )
    assert reason(run(verify.SignatureSet(), authority(root))) == "no Notation signature found"
    assert run(verify.SignatureSet(), authority(root)).outcomes[0].missing


def test_threshold_counts_cosign_and_notation_signers(signer: pki.Issued, root: pki.Issued) -> None:
    key = cosign_build.generate("p256")
    legacy_manifest, legacy_blobs = cosign_build.legacy_manifest(
        cosign_build.legacy_layer(key, DIGEST)
    )
    envelope = build.jws(signer, [root], build.payload(DIGEST))
    both = verify.SignatureSet(
        legacy_manifests=(legacy_manifest,),
        bundle_manifests=(build.signature_manifest(envelope, DIGEST),),
        blobs={**legacy_blobs, build.digest_of(envelope): envelope},
    )
    cosign_key = cosign_build.key_authority("release", key)
    result = run(both, cosign_key, authority(root), threshold=2)
    assert result.passed and result.distinct_signers == 2
    # The same certificate under two notation authorities is one signer.
    twice = run(
        both,
        authority(root, name="a"),
        authority(root, name="b", identities=["*"]),
        threshold=2,
    )
    assert twice.verified == ("a", "b") and twice.distinct_signers == 1 and not twice.passed


def test_revocation_on_needs_a_status(signer: pki.Issued, root: pki.Issued) -> None:
    found = signatures((build.jws(signer, [root], build.payload(DIGEST)), JWS))
    strict = authority(root, override={"revocation": "enforce"})
    text = reason(run(found, strict))
    assert (
        "revocation status of certificate CN=release,O=Acme,ST=WA,C=US could not be determined"
        in text
    )
    good = {
        revocation.fingerprint(c.cert): revocation.Status("good", "CRL") for c in (signer, root)
    }
    assert run(found, strict, revocation=good).passed
    revoked = {**good, revocation.fingerprint(signer.cert): revocation.Status("revoked", "CRL: x")}
    assert reason(run(found, strict, revocation=revoked)) == (
        "certificate CN=release,O=Acme,ST=WA,C=US is revoked (CRL: x)"
    )
    assert run(found, authority(root, override={"revocation": "log"})).passed


# -- hostile envelopes: each a refusal naming what is wrong, never an exception ----------


def _cose_with(protected: dict[Any, Any], unprotected: Any = None) -> bytes:
    raw = cbor2.dumps(protected)
    return cbor2.dumps(
        cbor2.CBORTag(18, [raw, unprotected if unprotected is not None else {}, b"{}", b"x"])
    )


HOSTILE: list[tuple[str, bytes, str, str]] = [
    ("junk", b"\x00\xff" * 10, JWS, "JWS envelope is not valid JSON"),
    ("junk cose", b"\xff" * 10, COSE, "COSE envelope"),
    ("a JSON array", b"[]", JWS, "JWS envelope is not a JSON object"),
    (
        "duplicate keys",
        b'{"payload":"e30","payload":"e30","protected":"e30","header":{},"signature":"AA"}',
        JWS,
        "duplicate key 'payload'",
    ),
    (
        "general serialization",
        b'{"payload":"e30","signatures":[]}',
        JWS,
        "JWS envelope has members ['signatures'] (flattened JSON only)",
    ),
    (
        "padded base64",
        b'{"payload":"e30=","protected":"e30","header":{},"signature":"AA"}',
        JWS,
        "JWS payload is not unpadded base64url text",
    ),
    (
        "crit in the unprotected header",
        b'{"payload":"e30","protected":"e30","header":{"crit":["x"]},"signature":"AA"}',
        JWS,
        "JWS crit must be a protected header",
    ),
    ("indefinite cbor", b"\xd2\x9f\xff", COSE, "indefinite-length"),
    ("cbor duplicate key", b"\xa2\x01\x01\x01\x02", COSE, "a CBOR map with a key twice"),
    ("deep cbor", b"\x81" * 40 + b"\x00", COSE, "nests or counts too many CBOR items"),
    ("a cbor bomb of sharing tags", b"\xd8\x1c\x81\x00", COSE, "CBOR tag 28"),
    ("not tag 18", cbor2.dumps([b"", {}, b"", b""]), COSE, "is not a COSE_Sign1_Tagged"),
    (
        "no algorithm",
        _cose_with({3: build.PAYLOAD_TYPE}),
        COSE,
        "COSE algorithm None",
    ),
    (
        "a hash envelope",
        _cose_with({1: -7, 258: -16}),
        COSE,
        "COSE Hash Envelope",
    ),
    (
        "detached payload",
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7}), {}, None, b""])),
        COSE,
        "COSE payload is detached",
    ),
    (
        "trailing bytes",
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -7}), {}, b"", b""])) + b"\x00",
        COSE,
        "bytes after its CBOR item",
    ),
]


@pytest.mark.parametrize(
    ("what", "blob", "media_type", "message"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_hostile_envelopes_are_refusals(
    root: pki.Issued, what: str, blob: bytes, media_type: str, message: str
) -> None:
    result = run(signatures((blob, media_type)), authority(root))
    text = reason(result)
    assert message in text, text
    assert result.attempts[0].result in ("malformed", "unsupported")


def test_oversized_chain_is_refused(signer: pki.Issued, root: pki.Issued) -> None:
    envelope = build.jws(signer, [root] * 12, build.payload(DIGEST))
    assert "over the limit of 10" in reason(run(signatures((envelope, JWS)), authority(root)))


def test_manifest_with_two_layers(root: pki.Issued, signer: pki.Issued) -> None:
    envelope = build.jws(signer, [root], build.payload(DIGEST))
    manifest = json.loads(build.signature_manifest(envelope, DIGEST))
    manifest["layers"].append(manifest["layers"][0])
    found = verify.SignatureSet(
        bundle_manifests=(json.dumps(manifest).encode(),),
        blobs={build.digest_of(envelope): envelope},
    )
    assert reason(run(found, authority(root))) == (
        "Notation signature manifest must have exactly one layer (the envelope)"
    )


def test_missing_or_tampered_envelope_blob(signer: pki.Issued, root: pki.Issued) -> None:
    envelope = build.jws(signer, [root], build.payload(DIGEST))
    manifest = build.signature_manifest(envelope, DIGEST)
    missing = verify.SignatureSet(bundle_manifests=(manifest,))
    assert "was not fetched" in reason(run(missing, authority(root)))
    swapped = verify.SignatureSet(
        bundle_manifests=(manifest,), blobs={build.digest_of(envelope): envelope + b" "}
    )
    assert "tampered payload: digest mismatch" in reason(run(swapped, authority(root)))
    over = verify.SignatureSet(
        bundle_manifests=(manifest,),
        problems={build.digest_of(envelope): "is 9999999 bytes, over the limit of 262144"},
    )
    assert "over the limit of 262144" in reason(run(over, authority(root)))
