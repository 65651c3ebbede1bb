"""The two forms cosign writes attestations in, read into candidates (bytes in, data out).

Legacy (`cosign attest --new-bundle-format=false`, cosign <= v2's default): the
manifest at tag `sha256-<hex>.att`, one layer per attestation, of media type
`application/vnd.dsse.envelope.v1+json`, whose blob is the DSSE envelope itself
(`{"payload", "payloadType", "signatures": [{"keyid", "sig"}]}`); the layer's
`predicateType` annotation names the statement's type (a hint: not signed), and
keyless attestations add the certificate, chain and Rekor annotations signatures have.

Bundle (cosign v3's default): a referrer manifest of artifactType
`application/vnd.dev.sigstore.bundle.v0.3+json` whose annotation
`dev.sigstore.bundle.predicateType` names the type, and whose layer is a Sigstore
bundle with a `dsseEnvelope` (the same envelope as above).

Candidates of another announced type are skipped before anything is parsed (an SBOM
is not read for a vulnerability rule); the announcement is not trusted beyond that:
what a signature verifies is checked for its own predicate type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

from imageward.signatures import bundle, legacy, model
from imageward.signatures import verify as signatures_verify

DSSE_MEDIA_TYPE: Final = "application/vnd.dsse.envelope.v1+json"
LEGACY_PREDICATE_ANNOTATION: Final = "predicateType"


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """One attestation found for a digest, read once for every authority."""

    format: model.Format
    label: str  # "attestation bundle sha256:…", "attestation layer sha256:…"
    predicate_hint: str | None = None
    envelope: bundle.DsseEnvelope | None = None
    bundle: bundle.Bundle | None = None  # bundles: what keyless verification reads
    legacy: legacy.LegacySignature | None = None  # legacy: certificate/Rekor annotations
    broken: model.Check | None = None


def _unreadable(error: Exception, label: str) -> model.Check:
    if isinstance(error, model.Refused):
        return error.check
    return model.Check("malformed", f"{label} cannot be read: {type(error).__name__}: {error}")


def parse_envelope(raw: bytes, *, what: str) -> bundle.DsseEnvelope:
    """A DSSE envelope's JSON (a legacy layer blob), or `Refused(malformed)`."""
    document = model.parse_json(raw, what=what)
    payload_type = model.field(document, "payloadType", "payload_type")
    if not isinstance(payload_type, str):
        raise model.Refused("malformed", f"{what} has no payloadType")
    payload = model.decode_base64(document.get("payload"), what=f"{what} payload")
    entries = document.get("signatures")
    if not isinstance(entries, list) or not entries:
        raise model.Refused("malformed", f"{what} has no signatures")
    signatures = tuple(
        model.decode_base64(
            entry.get("sig") if isinstance(entry, dict) else None, what=f"{what} signature"
        )
        for entry in entries
    )
    return bundle.DsseEnvelope(payload_type, payload, signatures)


def _wanted(hint: str | None, predicate_type: str) -> bool:
    return hint is None or hint == predicate_type


def _announced(document: dict[str, Any]) -> str | None:
    annotations = document.get("annotations")
    value = annotations.get(bundle.PREDICATE_ANNOTATION) if isinstance(annotations, dict) else None
    return value if isinstance(value, str) else None


def _bundle_layers(manifest: bytes) -> tuple[str | None, list[str]] | None:
    """(announced predicate type, bundle layer digests) of a referrer, None for others."""
    document = model.parse_json(manifest, what="referrer manifest")
    artifact_type = document.get("artifactType")
    if not isinstance(artifact_type, str):
        config = document.get("config")
        artifact_type = config.get("mediaType") if isinstance(config, dict) else None
    if not isinstance(artifact_type, str) or not artifact_type.startswith(bundle.MEDIA_TYPE_PREFIX):
        return None
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise model.Refused("malformed", "referrer manifest has no layers list")
    digests = [
        layer["digest"]
        for layer in layers
        if isinstance(layer, dict)
        and isinstance(layer.get("mediaType"), str)
        and layer["mediaType"].startswith(bundle.MEDIA_TYPE_PREFIX)
        and isinstance(layer.get("digest"), str)
    ]
    return _announced(document), digests


def _problem(problems: Mapping[str, str], digest: str, label: str) -> model.Check | None:
    problem = problems.get(digest)
    return model.Check("malformed", f"{label} {problem}") if problem is not None else None


def read_candidates(found: signatures_verify.SignatureSet, predicate_type: str) -> list[Candidate]:
    """Every attestation of `found` that may be of `predicate_type`, parsed or broken."""
    candidates: list[Candidate] = []
    for index, manifest in enumerate(found.bundle_manifests):
        label = f"referrer manifest #{index}"
        try:
            read = _bundle_layers(manifest)
        except Exception as e:
            candidates.append(Candidate("bundle", label, broken=_unreadable(e, label)))
            continue
        if read is None:
            continue
        hint, digests = read
        if hint == bundle.SIGN_PREDICATE_TYPE or not _wanted(hint, predicate_type):
            continue  # an image signature, or an attestation of another type
        for blob_digest in digests:
            digest = blob_digest
            label = f"attestation bundle {model.short(digest)}"
            broken = _problem(found.problems, digest, label)
            if broken is not None:
                candidates.append(Candidate("bundle", label, hint, broken=broken))
                continue
            try:
                raw = model.check_blob(digest, found.blobs.get(digest), what="bundle blob")
                parsed = bundle.parse_bundle(raw)
            except Exception as e:
                candidates.append(Candidate("bundle", label, hint, broken=_unreadable(e, label)))
                continue
            if parsed.envelope is None:
                broken_check = bundle.describe_unverifiable(parsed)
                candidates.append(Candidate("bundle", label, hint, broken=broken_check))
                continue
            candidates.append(
                Candidate("bundle", label, hint, envelope=parsed.envelope, bundle=parsed)
            )
    for index, manifest in enumerate(found.attestation_manifests):
        label = f"legacy attestation manifest #{index}"
        try:
            document = model.parse_json(manifest, what="legacy attestation manifest")
            layers = document.get("layers")
            if not isinstance(layers, list):
                raise model.Refused("malformed", "legacy attestation manifest has no layers list")
        except Exception as e:
            candidates.append(Candidate("legacy", label, broken=_unreadable(e, label)))
            continue
        for layer in layers:
            if not isinstance(layer, dict) or layer.get("mediaType") != DSSE_MEDIA_TYPE:
                continue
            layer_digest = layer.get("digest")
            if not isinstance(layer_digest, str):
                continue
            digest = layer_digest
            annotations = layer.get("annotations")
            annotations = annotations if isinstance(annotations, dict) else {}
            raw_hint = annotations.get(LEGACY_PREDICATE_ANNOTATION)
            hint = raw_hint if isinstance(raw_hint, str) else None
            if not _wanted(hint, predicate_type):
                continue

            def text(name: str, annotations: dict[str, Any] = annotations) -> str | None:
                value = annotations.get(name)
                return value if isinstance(value, str) and value else None

            keyless_material = legacy.LegacySignature(
                layer_digest=digest,
                signature=None,
                certificate=text(legacy.CERTIFICATE_ANNOTATION),
                chain=text(legacy.CHAIN_ANNOTATION),
                rekor_bundle=text(legacy.REKOR_BUNDLE_ANNOTATION),
            )
            layer_label = f"attestation layer {model.short(digest)}"
            broken = _problem(found.problems, digest, layer_label)
            if broken is not None:
                candidates.append(Candidate("legacy", layer_label, hint, broken=broken))
                continue
            try:
                raw = model.check_blob(digest, found.blobs.get(digest), what="attestation blob")
                envelope = parse_envelope(raw, what=layer_label)
            except Exception as e:
                candidates.append(
                    Candidate("legacy", layer_label, hint, broken=_unreadable(e, layer_label))
                )
                continue
            candidates.append(
                Candidate("legacy", layer_label, hint, envelope=envelope, legacy=keyless_material)
            )
    return candidates
