"""Keyless signatures against a fabricated Sigstore (CA, CT log, Rekor), offline."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from imageward.registry import model as registry_model
from imageward.signatures import keyless, model, verify

from . import build, fakesigstore

EVIL = "https://github.com/evil/web/.github/workflows/release.yml@refs/heads/main"


def _bundle_outcome(
    digest: registry_model.Digest, authority: verify.Authority, signed: dict[str, Any]
) -> verify.AuthorityOutcome:
    manifest, blobs = build.referrer_manifest(signed, digest)
    signatures = verify.SignatureSet(bundle_manifests=(manifest,), blobs=blobs)
    (outcome,) = verify.verify(digest, signatures, [authority], threshold=1).outcomes
    return outcome


def _legacy_outcome(
    digest: registry_model.Digest, authority: verify.Authority, layer: build.LegacyLayer
) -> verify.AuthorityOutcome:
    manifest, blobs = build.legacy_manifest(layer)
    signatures = verify.SignatureSet(legacy_manifests=(manifest,), blobs=blobs)
    (outcome,) = verify.verify(digest, signatures, [authority], threshold=1).outcomes
    return outcome


# -- trusted root and identity ----------------------------------------------------------


def test_trusted_root_is_parsed(
    sigstore: fakesigstore.FakeSigstore, trusted_root: keyless.TrustedRoot
) -> None:
    (ca,) = trusted_root.certificate_authorities
    assert ca.certificates == (sigstore.intermediate, sigstore.root)
    (tlog,) = trusted_root.tlogs
    assert tlog.key_id == fakesigstore.key_id(sigstore.rekor_key.public_key())
    assert tlog.valid_from is not None and tlog.valid_until is None
    assert len(trusted_root.ctlogs) == 1
    again = keyless.parse_trusted_root(sigstore.trusted_root_json(), authority="x")
    assert again == trusted_root  # equal JSON, equal roots: a cache key


def _root_error(document: object) -> str:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    with pytest.raises(model.AuthorityError) as caught:
        keyless.parse_trusted_root(raw, authority="github-actions")
    assert str(caught.value).startswith("authority github-actions: ")
    return caught.value.reason


def test_trusted_root_errors(sigstore: fakesigstore.FakeSigstore) -> None:
    assert _root_error(b"{").startswith("trusted root is not valid JSON")
    good = sigstore.trusted_root()
    assert _root_error({**good, "mediaType": "x"}).startswith("trusted root has mediaType 'x'")
    assert _root_error({**good, "certificateAuthorities": []}) == (
        "trusted root has no certificateAuthorities"
    )
    assert _root_error({**good, "tlogs": []}) == "trusted root has no tlogs"
    assert _root_error({**good, "ctlogs": []}) == "trusted root has no ctlogs"
    broken_ca = [{"certChain": {"certificates": [{"rawBytes": build.b64(b"junk")}]}}]
    assert "holds a bad certificate" in _root_error({**good, "certificateAuthorities": broken_ca})


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"subject": "a"}, "keyless needs issuer or issuerRegExp"),
        ({"issuer": "i"}, "keyless needs subject or subjectRegExp"),
        ({"issuer": "i", "subject": "a", "subject_regexp": "a"}, "give subject or subjectRegExp"),
        ({"issuer": "i", "subject_regexp": "("}, "subjectRegExp '(' is not a valid regular"),
        ({"issuer": "", "subject": "a"}, "issuer is empty"),
    ],
)
def test_identity_errors(kwargs: dict[str, str], reason: str) -> None:
    with pytest.raises(model.AuthorityError) as caught:
        keyless.parse_identity(authority="gha", **kwargs)
    assert caught.value.reason.startswith(reason)


def test_certificate_identity(sigstore: fakesigstore.FakeSigstore) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    assert keyless.certificate_identity(leaf.certificate) == (build.GITHUB, (build.WORKFLOW,))
    v1_only = sigstore.issue(
        subject="dev@acme.test", issuer="https://accounts.google.com", issuer_v2=False
    )
    assert keyless.certificate_identity(v1_only.certificate) == (
        "https://accounts.google.com",
        ("dev@acme.test",),
    )


def test_regexp_is_searched_like_cosign(sigstore: fakesigstore.FakeSigstore) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    unanchored = keyless.parse_identity(
        authority="a", issuer=build.GITHUB, subject_regexp="acme/web"
    )
    assert keyless.match_identity(leaf.certificate, unanchored).verified
    anchored = keyless.parse_identity(
        authority="a", issuer=build.GITHUB, subject_regexp="^acme/web"
    )
    assert not keyless.match_identity(leaf.certificate, anchored).verified


# -- bundles ----------------------------------------------------------------------------


def test_bundle_with_matching_identity_verifies(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    signed = build.keyless_bundle(sigstore, leaf, build.statement(digest))
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.verified, outcome.reason
    assert outcome.kind == "keyless" and outcome.format == "bundle"


def test_bundle_with_exact_subject_and_v1_issuer_only(
    sigstore: fakesigstore.FakeSigstore,
    trusted_root: keyless.TrustedRoot,
    digest: registry_model.Digest,
) -> None:
    authority = build.keyless_authority(trusted_root, subject=build.WORKFLOW, subject_regexp=None)
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB, issuer_v2=False)
    signed = build.keyless_bundle(sigstore, leaf, build.statement(digest))
    assert _bundle_outcome(digest, authority, signed).verified


def test_bundle_of_another_subject(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=EVIL, issuer=build.GITHUB)
    signed = build.keyless_bundle(sigstore, leaf, build.statement(digest))
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.reason == (
        f"identity mismatch: issuer {build.GITHUB} subject {EVIL} "
        f"(want issuer {build.GITHUB}, subject matching ^https://github.com/acme/)"
    )


def test_bundle_of_another_issuer(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer="https://gitlab.test")
    signed = build.keyless_bundle(sigstore, leaf, build.statement(digest))
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.reason.startswith(
        f"identity mismatch: issuer https://gitlab.test subject {build.WORKFLOW}"
    )


def test_bundle_from_another_sigstore_is_untrusted(
    github_authority: verify.KeylessAuthority, digest: registry_model.Digest
) -> None:
    # The same identity, certified by a CA (and logged by a log) the root does not trust.
    rogue = fakesigstore.FakeSigstore(name="rogue")
    leaf = rogue.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    signed = build.keyless_bundle(rogue, leaf, build.statement(digest))
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.reason.startswith("keyless signature not trusted by github-actions: ")


def test_bundle_without_sct_is_untrusted(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB, sct=False)
    signed = build.keyless_bundle(sigstore, leaf, build.statement(digest))
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.reason.startswith("keyless signature not trusted by github-actions: ")
    assert "SCT" in outcome.reason


def test_bundle_whose_log_entry_records_another_payload(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    signed = build.keyless_bundle(
        sigstore, leaf, build.statement(digest), log_payload=build.statement(other_digest)
    )
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.reason.startswith("keyless signature not trusted by github-actions: ")


def test_keyless_bundle_for_another_image(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    signed = build.keyless_bundle(sigstore, leaf, build.statement(other_digest))
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.reason == f"signed payload names another digest {other_digest}"


def test_keyless_bundle_with_tampered_statement(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    signed = build.keyless_bundle(sigstore, leaf, build.statement(other_digest))
    signed["dsseEnvelope"]["payload"] = build.b64(build.statement(digest))
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.reason == "signature does not verify with its certificate (github-actions)"


def test_key_authority_never_trusts_a_certificate(
    sigstore: fakesigstore.FakeSigstore,
    release_authority: verify.KeyAuthority,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    signed = build.keyless_bundle(sigstore, leaf, build.statement(digest))
    outcome = _bundle_outcome(digest, release_authority, signed)
    assert outcome.reason == "signature does not verify with key release-key"


def test_keyless_authority_refuses_a_key_bundle(
    release_key: build.PrivateKey,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    signed = build.key_bundle(build.envelope(build.statement(digest), release_key))
    outcome = _bundle_outcome(digest, github_authority, signed)
    assert outcome.reason.startswith("bundle cannot be read for keyless verification")


# -- legacy keyless -------------------------------------------------------------------


def test_legacy_keyless_with_matching_identity_verifies(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    layer = build.keyless_legacy_layer(sigstore, leaf, digest)
    outcome = _legacy_outcome(digest, github_authority, layer)
    assert outcome.verified, outcome.reason


def test_legacy_keyless_identity_mismatch(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=EVIL, issuer=build.GITHUB)
    layer = build.keyless_legacy_layer(sigstore, leaf, digest)
    outcome = _legacy_outcome(digest, github_authority, layer)
    assert outcome.reason.startswith(f"identity mismatch: issuer {build.GITHUB} subject {EVIL}")


def test_legacy_keyless_for_another_image(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    layer = build.keyless_legacy_layer(sigstore, leaf, other_digest)
    outcome = _legacy_outcome(digest, github_authority, layer)
    assert outcome.reason == f"signed payload names another digest {other_digest}"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no rekor bundle", "keyless signature has no transparency log entry"),
        ("rogue log", "Rekor entry is from log "),
        ("log records another payload", "Rekor entry records another payload"),
        ("signed after expiry", "certificate does not chain to the trusted root at "),
        ("rogue ca", "certificate does not chain to the trusted root at "),
        ("no sct", "certificate has no embedded SCT"),
        ("set tampered", "Rekor SignedEntryTimestamp does not verify"),
    ],
)
def test_legacy_keyless_untrusted(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
    other_digest: registry_model.Digest,
    case: str,
    reason: str,
) -> None:
    rogue = fakesigstore.FakeSigstore(name="rogue")
    issuer = rogue if case == "rogue ca" else sigstore
    leaf = issuer.issue(subject=build.WORKFLOW, issuer=build.GITHUB, sct=case != "no sct")
    layer = build.keyless_legacy_layer(
        sigstore,
        leaf,
        digest,
        with_rekor_bundle=case != "no rekor bundle",
        rekor=rogue if case == "rogue log" else None,
        log_payload=build.simplesigning_payload(other_digest)
        if case == "log records another payload"
        else None,
        integrated_time=sigstore.now + datetime.timedelta(hours=1)
        if case == "signed after expiry"
        else None,
    )
    if case == "set tampered":
        annotation = json.loads(layer.annotations["dev.sigstore.cosign/bundle"])
        annotation["Payload"]["integratedTime"] += 1
        layer.annotations["dev.sigstore.cosign/bundle"] = json.dumps(annotation)
    outcome = _legacy_outcome(digest, github_authority, layer)
    assert not outcome.verified
    assert outcome.reason.startswith(reason), outcome.reason


def test_legacy_keyless_signature_by_another_key(
    sigstore: fakesigstore.FakeSigstore,
    github_authority: verify.KeylessAuthority,
    attacker_key: build.PrivateKey,
    digest: registry_model.Digest,
) -> None:
    leaf = sigstore.issue(subject=build.WORKFLOW, issuer=build.GITHUB)
    layer = build.keyless_legacy_layer(sigstore, leaf, digest)
    layer.signature = build.sign(attacker_key, layer.payload)
    outcome = _legacy_outcome(digest, github_authority, layer)
    assert outcome.reason == "signature does not verify with its certificate (github-actions)"


def test_legacy_key_signature_has_no_certificate_for_keyless(
    release_key: build.PrivateKey,
    github_authority: verify.KeylessAuthority,
    digest: registry_model.Digest,
) -> None:
    outcome = _legacy_outcome(digest, github_authority, build.legacy_layer(release_key, digest))
    assert outcome.reason == ("signature carries no certificate (dev.sigstore.cosign/certificate)")
