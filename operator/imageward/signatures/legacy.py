"""The legacy cosign format: the `sha256-<hex>.sig` manifest and its simple-signing layers.

One layer per signature, of media type `application/vnd.dev.cosign.simplesigning.v1+json`.
The layer blob is the signed payload::

    {"critical": {"identity": {"docker-reference": "ghcr.io/acme/web"},
                  "image": {"docker-manifest-digest": "sha256:…"},
                  "type": "cosign container image signature"},
     "optional": {…}}

and the annotation `dev.cosignproject.cosign/signature` is the base64 signature over
the blob's raw bytes. Keyless signatures add `dev.sigstore.cosign/certificate`,
`dev.sigstore.cosign/chain` and `dev.sigstore.cosign/bundle` (a Rekor SET); key
authorities ignore those, since key material carried by a signature is never trusted.

`critical.identity.docker-reference` is deliberately NOT compared with the admitted
reference: cosign does not either (by default), and images are copied between
registries and mirrors with their signatures; what binds a signature to an image is
the digest, which is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from imageward import records
from imageward.registry import model as registry_model
from imageward.signatures import keys, model

MEDIA_TYPE: Final = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION: Final = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION: Final = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION: Final = "dev.sigstore.cosign/chain"
REKOR_BUNDLE_ANNOTATION: Final = "dev.sigstore.cosign/bundle"
SIGNATURE_TYPE: Final = "cosign container image signature"


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class LegacySignature(records.Record):
    """One simple-signing layer of a `.sig` manifest: annotations as written, undecoded."""

    __slots__ = ("certificate", "chain", "layer_digest", "rekor_bundle", "signature")
    layer_digest: str
    signature: str | None  # base64, from dev.cosignproject.cosign/signature
    certificate: str | None  # PEM leaf (keyless)
    chain: str | None  # PEM intermediates and root (keyless)
    rekor_bundle: str | None  # JSON {"SignedEntryTimestamp", "Payload"} (keyless)

    def __init__(
        self,
        layer_digest: str,
        signature: str | None,
        certificate: str | None = None,
        chain: str | None = None,
        rekor_bundle: str | None = None,
    ) -> None:
        _set(self, "layer_digest", layer_digest)
        _set(self, "signature", signature)
        _set(self, "certificate", certificate)
        _set(self, "chain", chain)
        _set(self, "rekor_bundle", rekor_bundle)

    @property
    def label(self) -> str:
        return f"legacy signature layer {model.short(self.layer_digest)}"


def parse_signature_manifest(manifest: bytes) -> tuple[LegacySignature, ...]:
    """The simple-signing layers of a `.sig` manifest; other layers are skipped.

    Raises `Refused(malformed)` when the manifest itself cannot be read.
    """
    document = model.parse_json(manifest, what="legacy signature manifest")
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise model.Refused("malformed", "legacy signature manifest has no layers list")
    found = []
    for layer in layers:
        if not isinstance(layer, dict) or layer.get("mediaType") != MEDIA_TYPE:
            continue  # cosign ignores foreign layers too
        digest = layer.get("digest")
        annotations = layer.get("annotations")
        if not isinstance(annotations, dict):
            annotations = {}
        if not isinstance(digest, str):
            continue  # a layer with no digest names no payload; its siblings may be fine

        def text(name: str, annotations: dict[str, Any] = annotations) -> str | None:
            value = annotations.get(name)
            return value if isinstance(value, str) and value else None

        found.append(
            LegacySignature(
                layer_digest=digest,
                signature=text(SIGNATURE_ANNOTATION),
                certificate=text(CERTIFICATE_ANNOTATION),
                chain=text(CHAIN_ANNOTATION),
                rekor_bundle=text(REKOR_BUNDLE_ANNOTATION),
            )
        )
    return tuple(found)


def read_payload(signature: LegacySignature, blobs: Mapping[str, bytes]) -> bytes:
    """The payload blob of a layer, refused as `tampered` when it hashes elsewhere."""
    return model.check_blob(
        signature.layer_digest, blobs.get(signature.layer_digest), what="payload blob"
    )


def signature_bytes(signature: LegacySignature) -> bytes:
    if signature.signature is None:
        raise model.Refused(
            "malformed", f"{signature.label} has no {SIGNATURE_ANNOTATION} annotation"
        )
    return model.decode_base64(signature.signature, what=f"{signature.label} signature")


def _lookup(obj: dict[str, Any], name: str, *, what: str) -> Any:
    """A key matched case-insensitively, as Go's encoding/json (and so cosign) reads it.

    Older cosign wrote `Docker-manifest-digest`. Two keys differing only by case would
    let two readers disagree, so that is refused.
    """
    matches = [key for key in obj if key.lower() == name]
    if len(matches) > 1:
        raise model.Refused("malformed", f"{what} has keys {matches} differing only by case")
    return obj[matches[0]] if matches else None


def check_payload(payload: bytes, digest: registry_model.Digest) -> model.Check:
    """Whether a verified simple-signing payload is an image signature for `digest`."""
    try:
        document = model.parse_json(payload, what="signed payload")
        critical = _lookup(document, "critical", what="signed payload")
        if not isinstance(critical, dict):
            raise model.Refused("malformed", "signed payload has no `critical` object")
        kind = _lookup(critical, "type", what="signed payload `critical`")
        if kind != SIGNATURE_TYPE:
            raise model.Refused(
                "not_a_signature",
                f"signed payload is of type {kind!r}, not {SIGNATURE_TYPE!r}",
            )
        image = _lookup(critical, "image", what="signed payload `critical`")
        if not isinstance(image, dict):
            raise model.Refused("malformed", "signed payload has no `critical.image` object")
        named = _lookup(image, "docker-manifest-digest", what="signed payload `critical.image`")
        if not isinstance(named, str):
            raise model.Refused(
                "malformed", "signed payload has no `critical.image.docker-manifest-digest`"
            )
        if named.lower() != digest.lower():
            raise model.Refused("wrong_digest", f"signed payload names another digest {named}")
    except model.Refused as refused:
        return refused.check
    return model.VERIFIED


def verify_with_key(
    signature: LegacySignature,
    payload: bytes,
    digest: registry_model.Digest,
    key: keys.PublicKey,
    *,
    authority: str,
) -> model.Check:
    """Check one legacy signature (its payload already read) against a policy key.

    Certificate, chain and Rekor annotations are ignored: the policy's key is the only
    key material trusted for a key authority.
    """
    try:
        raw = signature_bytes(signature)
    except model.Refused as refused:
        return refused.check
    if not keys.verify_signature(key, raw, payload):
        return model.Check("invalid_signature", f"signature does not verify with key {authority}")
    return check_payload(payload, digest)
