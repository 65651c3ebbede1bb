"""The Sigstore bundle format: what cosign v3 attaches as an OCI referrer.

The referrer is an image manifest with `artifactType`
`application/vnd.dev.sigstore.bundle.v0.3+json`, `subject` = the signed image, and one
layer of that media type: the bundle (protobuf JSON, camelCase field names)::

    {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "verificationMaterial": {"publicKey": {"hint": …} | "certificate": {"rawBytes": …}
                              | "x509CertificateChain": {…}, "tlogEntries": […], …},
     "dsseEnvelope": {"payload": <base64 in-toto Statement>,
                      "payloadType": "application/vnd.in-toto+json",
                      "signatures": [{"sig": <base64>, "keyid": ""}]}}

The statement cosign signs: `_type` https://in-toto.io/Statement/v1, `predicateType`
https://sigstore.dev/cosign/sign/v1, `subject[].digest.sha256` = the image digest.

For key authorities only the DSSE signature over the PAE is checked, with the policy's
key: `verificationMaterial` (a key hint, a certificate, transparency-log entries) is
ignored, because key material carried by a bundle is attacker-controlled
(GHSA-fx35-mq7g-6g98). Keyless bundles go through `keyless.verify_bundle`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from imageward import records
from imageward.registry import model as registry_model
from imageward.signatures import keys, model

MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: Every bundle media type starts so (v0.1 and v0.2 are `…bundle+json;version=0.x`).
MEDIA_TYPE_PREFIX: Final = "application/vnd.dev.sigstore.bundle"
PREDICATE_ANNOTATION: Final = "dev.sigstore.bundle.predicateType"
SIGN_PREDICATE_TYPE: Final = "https://sigstore.dev/cosign/sign/v1"
INTOTO_PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPES: Final = frozenset(
    {"https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"}
)


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class BundleRef(records.Record):
    """A bundle layer named by a referrer manifest."""

    __slots__ = ("layer_digest", "predicate_type")
    layer_digest: str
    predicate_type: str | None  # the manifest's annotation, a hint only (not signed)

    def __init__(
        self,
        layer_digest: str,
        predicate_type: str | None,
    ) -> None:
        _set(self, "layer_digest", layer_digest)
        _set(self, "predicate_type", predicate_type)

    @property
    def label(self) -> str:
        return f"bundle {model.short(self.layer_digest)}"


class DsseEnvelope(records.Record):
    """A bundle's DSSE envelope, decoded (payload and signatures as bytes)."""

    __slots__ = ("payload", "payload_type", "signatures")
    payload_type: str
    payload: bytes
    signatures: tuple[bytes, ...]

    def __init__(
        self,
        payload_type: str,
        payload: bytes,
        signatures: tuple[bytes, ...],
    ) -> None:
        _set(self, "payload_type", payload_type)
        _set(self, "payload", payload)
        _set(self, "signatures", signatures)


class Bundle(records.Record, hidden=("raw",)):
    """A parsed bundle. `raw` is kept for the keyless verifier, which reads it itself."""

    __slots__ = ("envelope", "has_message_signature", "media_type", "raw")
    media_type: str
    envelope: DsseEnvelope | None
    has_message_signature: bool
    raw: bytes

    def __init__(
        self,
        media_type: str,
        envelope: DsseEnvelope | None,
        has_message_signature: bool,
        raw: bytes,
    ) -> None:
        _set(self, "media_type", media_type)
        _set(self, "envelope", envelope)
        _set(self, "has_message_signature", has_message_signature)
        _set(self, "raw", raw)


def parse_referrer_manifest(manifest: bytes) -> tuple[BundleRef, ...]:
    """The bundle layers of a referrer manifest; () for other artifacts.

    A bundle whose manifest announces another predicate type (an SLSA provenance or
    SBOM attestation sharing the referrers list) is not an image signature: skipped
    here so that it neither counts nor muddles the reason. The announcement is not
    signed, so a bundle that passes this filter still has its signed predicate checked.
    """
    document = model.parse_json(manifest, what="referrer manifest")
    artifact_type = document.get("artifactType")
    if not isinstance(artifact_type, str):
        # OCI 1.1: without artifactType, the config media type says what the artifact is.
        config = document.get("config")
        artifact_type = config.get("mediaType") if isinstance(config, dict) else None
    if not isinstance(artifact_type, str) or not artifact_type.startswith(MEDIA_TYPE_PREFIX):
        return ()
    annotations = document.get("annotations")
    predicate = annotations.get(PREDICATE_ANNOTATION) if isinstance(annotations, dict) else None
    if isinstance(predicate, str) and predicate != SIGN_PREDICATE_TYPE:
        return ()
    layers = document.get("layers")
    if not isinstance(layers, list):
        raise model.Refused("malformed", "referrer manifest has no layers list")
    found = []
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        media_type, digest = layer.get("mediaType"), layer.get("digest")
        if (
            isinstance(media_type, str)
            and media_type.startswith(MEDIA_TYPE_PREFIX)
            and isinstance(digest, str)
        ):
            found.append(BundleRef(digest, predicate if isinstance(predicate, str) else None))
    return tuple(found)


def read_bundle(ref: BundleRef, blobs: Mapping[str, bytes]) -> Bundle:
    """Fetch-checked and parsed: refused as `tampered` or `malformed`."""
    raw = model.check_blob(ref.layer_digest, blobs.get(ref.layer_digest), what="bundle blob")
    return parse_bundle(raw)


def parse_bundle(raw: bytes) -> Bundle:
    """Parse a bundle's JSON (either protobuf field spelling), or `Refused(malformed)`."""
    document = model.parse_json(raw, what="bundle")
    media_type = model.field(document, "mediaType", "media_type")
    if not isinstance(media_type, str) or not media_type.startswith(MEDIA_TYPE_PREFIX):
        raise model.Refused("malformed", f"bundle has media type {media_type!r}")
    message_signature = model.field(document, "messageSignature", "message_signature")
    envelope = model.field(document, "dsseEnvelope", "dsse_envelope")
    if envelope is None:
        if message_signature is None:
            raise model.Refused("malformed", "bundle has neither dsseEnvelope nor messageSignature")
        return Bundle(media_type, None, True, raw)
    return Bundle(media_type, _parse_envelope(envelope), message_signature is not None, raw)


def _parse_envelope(envelope: Any) -> DsseEnvelope:
    if not isinstance(envelope, dict):
        raise model.Refused("malformed", "bundle dsseEnvelope is not an object")
    payload_type = model.field(envelope, "payloadType", "payload_type")
    if not isinstance(payload_type, str):
        raise model.Refused("malformed", "bundle dsseEnvelope has no payloadType")
    try:
        payload_type.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (`"\ud800"`): no PAE to check a signature over
        raise model.Refused(
            "malformed", "bundle dsseEnvelope payloadType is not valid Unicode"
        ) from None
    payload = model.decode_base64(envelope.get("payload"), what="DSSE payload")
    entries = envelope.get("signatures")
    if not isinstance(entries, list) or not entries:
        raise model.Refused("malformed", "bundle dsseEnvelope has no signatures")
    signatures = tuple(
        model.decode_base64(
            entry.get("sig") if isinstance(entry, dict) else None, what="DSSE signature"
        )
        for entry in entries
    )
    return DsseEnvelope(payload_type, payload, signatures)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature signs.

    `DSSEv1 <len(type)> <type> <len(payload)> <payload>`, lengths as ASCII decimal
    byte counts, so neither part can be re-split into another (type, payload).
    """
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def check_statement(
    payload_type: str, payload: bytes, digest: registry_model.Digest
) -> model.Check:
    """Whether a verified DSSE payload is cosign's image signature statement for `digest`."""
    try:
        if payload_type != INTOTO_PAYLOAD_TYPE:
            raise model.Refused(
                "not_a_signature",
                f"DSSE payload type is {payload_type!r}, not {INTOTO_PAYLOAD_TYPE!r}",
            )
        statement = model.parse_json(payload, what="signed in-toto statement")
        statement_type = statement.get("_type")
        if not isinstance(statement_type, str) or statement_type not in STATEMENT_TYPES:
            raise model.Refused("not_a_signature", f"signed statement has _type {statement_type!r}")
        predicate_type = statement.get("predicateType")
        if predicate_type != SIGN_PREDICATE_TYPE:
            raise model.Refused(
                "not_a_signature",
                f"bundle is an attestation of predicateType {predicate_type!r}, "
                f"not an image signature ({SIGN_PREDICATE_TYPE})",
            )
        named = _subject_digests(statement)
        if not named:
            raise model.Refused("malformed", "signed statement has no sha256 subject digest")
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or hex_digest.lower() not in named:
            raise model.Refused(
                "wrong_digest", f"signed payload names another digest sha256:{named[0]}"
            )
    except model.Refused as refused:
        return refused.check
    return model.VERIFIED


def _subject_digests(statement: dict[str, Any]) -> list[str]:
    subjects = statement.get("subject")
    found = []
    for subject in subjects if isinstance(subjects, list) else []:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        value = digests.get("sha256") if isinstance(digests, dict) else None
        if isinstance(value, str):
            found.append(value.lower())
    return found


def describe_unverifiable(bundle: Bundle) -> model.Check:
    """Why a bundle without a DSSE envelope cannot be an image signature."""
    if bundle.has_message_signature:
        return model.Check(
            "unsupported",
            "bundle holds a messageSignature (cosign sign-blob), not a DSSE image signature",
        )
    return model.Check("malformed", "bundle has no dsseEnvelope")


def verify_with_key(
    bundle: Bundle, digest: registry_model.Digest, key: keys.PublicKey, *, authority: str
) -> model.Check:
    """Check a bundle against a policy key: one DSSE signature must verify, then the statement."""
    envelope = bundle.envelope
    if envelope is None:
        return describe_unverifiable(bundle)
    signed = pae(envelope.payload_type, envelope.payload)
    # The keyid fields are unsigned hints: every signature is tried with the policy key.
    if not any(keys.verify_signature(key, sig, signed) for sig in envelope.signatures):
        return model.Check("invalid_signature", f"signature does not verify with key {authority}")
    return check_statement(envelope.payload_type, envelope.payload, digest)
