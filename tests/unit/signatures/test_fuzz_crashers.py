"""Inputs the fuzzer (`make fuzz`) found that made a signature format module raise.

Kept in `tests/fuzz/crashers/<target>/`. `verify.verify` catches what a format module
lets out and refuses that signature as "cannot be read", so none of these admitted
anything; but the format modules promise a `Check` (or `Refused` from their parse
helpers), and the refusal now says what is wrong instead of naming a Python exception.
"""

from __future__ import annotations

import json

import pytest

from imageward.signatures import bundle, keyless, legacy, model
from tests.fuzz import targets


def crasher(target: str, name: str) -> bytes:
    return (targets.CRASHERS / target / name).read_bytes()


def test_a_payload_type_with_a_lone_surrogate_is_malformed() -> None:
    # It parsed, then bundle.pae() raised UnicodeEncodeError in verify_with_key.
    raw = crasher("bundle", "payload-type-lone-surrogate")
    assert "\ud800" in json.loads(raw)["dsseEnvelope"]["payloadType"]
    with pytest.raises(model.Refused) as excinfo:
        bundle.parse_bundle(raw)
    assert excinfo.value.check == model.Check(
        "malformed", "bundle dsseEnvelope payloadType is not valid Unicode"
    )


def test_a_statement_type_that_is_not_a_string_is_not_a_signature() -> None:
    # `_type` {} is unhashable: `in STATEMENT_TYPES` raised TypeError.
    data = crasher("dsse_statement", "statement-type-object")
    check = bundle.check_statement(bundle.INTOTO_PAYLOAD_TYPE, data[1:], targets.DIGEST)
    assert check == model.Check("not_a_signature", "signed statement has _type {}")


def test_a_certificate_with_an_unsupported_curve_refuses_the_keyless_bundle() -> None:
    # sigstore refuses the bundle; naming why, _signed_by_certificate read the leaf's key
    # and cryptography raised UnsupportedAlgorithm, which is no ValueError.
    parsed = bundle.parse_bundle(crasher("bundle", "certificate-unsupported-curve"))
    check = keyless.verify_bundle(
        parsed,
        targets.DIGEST,
        targets.keyless_identity(),
        targets.keyless_root(),
        authority="github-actions",
    )
    assert check == model.Check(
        "invalid_signature", "signature does not verify with its certificate (github-actions)"
    )


def test_a_rekor_bundle_annotation_with_a_lone_surrogate_is_malformed() -> None:
    # Found by the unit suite's smoke run: `annotation.encode()` raised UnicodeEncodeError.
    data = crasher("keyless_legacy", "rekor-bundle-lone-surrogate")
    (signature,) = legacy.parse_signature_manifest(data)
    assert signature.rekor_bundle is not None and "\ud800" in signature.rekor_bundle
    check = keyless.verify_legacy(
        signature,
        targets.keyless_payload(),
        targets.DIGEST,
        targets.keyless_identity(),
        targets.keyless_root(),
        authority="github-actions",
    )
    assert check == model.Check("malformed", "Rekor bundle annotation is not valid Unicode")


def test_a_certificate_with_an_invalid_x509_version_is_malformed() -> None:
    # Found in a 120 s run: cryptography raises InvalidVersion, which is no ValueError.
    data = crasher("keyless_legacy", "certificate-invalid-version")
    (signature,) = legacy.parse_signature_manifest(data)
    check = keyless.verify_legacy(
        signature,
        targets.keyless_payload(),
        targets.DIGEST,
        targets.keyless_identity(),
        targets.keyless_root(),
        authority="github-actions",
    )
    assert check == model.Check(
        "malformed",
        "signature certificate is not PEM certificates: 34 is not a valid X509 version",
    )
