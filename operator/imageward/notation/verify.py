"""One Notation signature against one `notation` authority.

The order is the trust-policy specification's, and so notation's own:

1. integrity (always enforced): the envelope parses (JWS or COSE, by the layer's media
   type), its signed attributes follow the rules (`envelope`), its chain meets the
   certificate requirements (`chain`), and its signature verifies with the signing
   certificate's key;
2. authenticity: a certificate of the chain is in the trust store of the signing
   scheme (`trustStore` for notary.x509, `signingAuthorityTrustStore` for
   notary.x509.signingAuthority), then the signing certificate's subject matches a
   trusted identity;
3. expiry: the signer's `io.cncf.notary.expiry`, when set, is still ahead;
4. authentic timestamp: for notary.x509, with a `timestampTrustStore` (and
   `verifyTimestamp: always`, or `afterCertExpiry` once the chain expired) the RFC 3161
   countersignature is required and its range must lie within every certificate's
   validity; otherwise every certificate must be valid now. For a signing authority,
   the authentic signing time must lie within every certificate's validity;
5. revocation (when the authority turns it on): every certificate's status, looked up
   by `revocation` beforehand, must be good;
6. the signed payload's `targetArtifact` names the admitted manifest: media type,
   digest and size (always enforced).

Steps 2 to 5 are enforced or only logged as the authority's verification level (and
override) says; a logged failure is written to the operator's log and the signature
still counts. Nothing from the envelope is trusted before the step that checks it:
the certificates it carries are candidates for a chain, never anchors.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
from collections.abc import Mapping
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imageward.notation import chain, envelope, timestamp, trust
from imageward.notation import revocation as notation_revocation
from imageward.registry import model as registry_model
from imageward.signatures import model

ARTIFACT_TYPE: Final = "application/vnd.cncf.notary.signature"
ENVELOPE_TYPES: Final = frozenset({envelope.JWS_MEDIA_TYPE, envelope.COSE_MEDIA_TYPE})

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class SignatureRef:
    """The envelope layer a Notation signature manifest names."""

    layer_digest: str
    media_type: str

    @property
    def label(self) -> str:
        kind = "JWS" if self.media_type == envelope.JWS_MEDIA_TYPE else "COSE"
        return f"Notation {kind} signature {model.short(self.layer_digest)}"


def artifact_type_of(document: Mapping[str, Any]) -> str | None:
    artifact_type = document.get("artifactType")
    if isinstance(artifact_type, str):
        return artifact_type
    config = document.get("config")  # before OCI 1.1 artifactType, the config's media type
    media_type = config.get("mediaType") if isinstance(config, dict) else None
    return media_type if isinstance(media_type, str) else None


def is_signature_layer(media_type: str) -> bool:
    return media_type in ENVELOPE_TYPES


def parse_signature_manifest(manifest: bytes) -> tuple[SignatureRef, ...] | None:
    """The envelope of a Notation signature manifest; None when it is another artifact.

    The specification allows exactly one layer, of an envelope media type.
    """
    document = model.parse_json(manifest, what="referrer manifest")
    if artifact_type_of(document) != ARTIFACT_TYPE:
        return None
    layers = document.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise model.Refused(
            "malformed", "Notation signature manifest must have exactly one layer (the envelope)"
        )
    (layer,) = layers
    media_type, digest = layer.get("mediaType"), layer.get("digest")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise model.Refused("malformed", "Notation signature layer has no mediaType or digest")
    if media_type not in ENVELOPE_TYPES:
        raise model.Refused("unsupported", f"Notation signature envelope of type {media_type!r}")
    return (SignatureRef(digest, media_type),)


def signer_of(cert: x509.Certificate) -> str:
    """A threshold counts the signing key, whatever format signed: the same key in a
    cosign `key` authority and in a Notation certificate is one signer."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "key sha256:" + hashlib.sha256(spki).hexdigest()


def _when(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Run:
    """One verification: applies the policy's action to each validation's failure."""

    def __init__(
        self, policy: trust.TrustPolicy, authority: str, label: str, *, quiet: bool = False
    ) -> None:
        self.policy = policy
        self.authority = authority
        self.label = label
        self.quiet = quiet
        self.logged: list[str] = []

    def fail(self, action: trust.Action, result: model.Result, reason: str) -> None:
        if action == "enforce":
            raise model.Refused(result, reason)
        if action == "log":
            self.logged.append(reason)
            if self.quiet:
                return
            logger.warning(
                "notation authority %s: %s: %s (logged, not enforced: verificationLevel %s)",
                self.authority,
                self.label,
                reason,
                self.policy.level,
            )


def verify_signature(
    ref: SignatureRef,
    blobs: Mapping[str, bytes],
    digest: registry_model.Digest,
    target: model.Target | None,
    policy: trust.TrustPolicy,
    *,
    authority: str,
    now: datetime.datetime | None = None,
    revocation: notation_revocation.Statuses | None = None,
) -> model.Check:
    """Whether this signature vouches for `digest` under `policy`; Refused becomes data."""
    try:
        check, _ = _verify(
            ref, blobs, digest, target, policy, authority=authority, now=now, revocation=revocation
        )
    except model.Refused as refused:
        return refused.check
    return check


def trusted_chain(
    ref: SignatureRef,
    blobs: Mapping[str, bytes],
    digest: registry_model.Digest,
    target: model.Target | None,
    policy: trust.TrustPolicy,
    *,
    authority: str,
) -> tuple[x509.Certificate, ...] | None:
    """The chain of a signature that passes every validation but revocation and whose
    chain reaches the trust store (whatever the level logs): the only certificates whose
    OCSP and CRL addresses the operator may call. None for any other signature."""
    try:
        check, chain_ = _verify(
            ref,
            blobs,
            digest,
            target,
            dataclasses.replace(policy, revocation="skip"),
            authority=authority,
            now=None,
            revocation=None,
            quiet=True,
        )
    except model.Refused:
        return None
    if not check.verified or chain_ is None:
        return None
    ders = [c.public_bytes(serialization.Encoding.DER) for c in chain_]
    stores = (policy.ca, policy.signing_authority)
    return chain_ if any(der in store for store in stores for der in ders) else None


def _verify(
    ref: SignatureRef,
    blobs: Mapping[str, bytes],
    digest: registry_model.Digest,
    target: model.Target | None,
    policy: trust.TrustPolicy,
    *,
    authority: str,
    now: datetime.datetime | None,
    revocation: notation_revocation.Statuses | None,
    quiet: bool = False,
) -> tuple[model.Check, tuple[x509.Certificate, ...] | None]:
    now = now or datetime.datetime.now(datetime.UTC)
    run = _Run(policy, authority, ref.label, quiet=quiet)
    raw = model.check_blob(ref.layer_digest, blobs.get(ref.layer_digest), what="Notation envelope")

    # 1. integrity
    parsed = envelope.parse_envelope(ref.media_type, raw)
    certificates = parsed.certificates
    chain.validate_code_signing_chain(certificates)
    if not envelope.verify_signature(parsed):
        raise model.Refused(
            "invalid_signature",
            f"{parsed.kind} envelope signature does not verify with its signing certificate "
            "(tampered envelope)",
        )

    # 2. authenticity: the trust store of the scheme, then the identity
    leaf = certificates[0]
    subject = trust.format_subject(leaf)
    if parsed.signing_scheme == envelope.SCHEME_X509:
        store, store_name = policy.ca, "trustStore"
    else:
        store, store_name = policy.signing_authority, "signingAuthorityTrustStore"
    ders = [c.public_bytes(serialization.Encoding.DER) for c in certificates]
    if not store:
        run.fail(
            policy.authenticity,
            "untrusted",
            f"signing scheme {parsed.signing_scheme} needs a {store_name}, which this "
            "authority does not have",
        )
    elif not any(der in store for der in ders):
        root = certificates[-1].subject.rfc4514_string()
        run.fail(
            policy.authenticity,
            "untrusted",
            f"certificate chain does not reach the {store_name} (signed by {subject}, "
            f"chain ends at {root})",
        )
    if policy.identities is not None:
        try:
            fields = trust.certificate_subject(leaf)
        except trust.DNError as e:
            run.fail(
                policy.authenticity,
                "identity_mismatch",
                f"identity not trusted: signing certificate subject {subject} {e}",
            )
        else:
            if not any(identity.matches(fields) for identity in policy.identities):
                run.fail(
                    policy.authenticity,
                    "identity_mismatch",
                    f"identity not trusted: signing certificate subject {subject} is not in "
                    f"trustedIdentities ({policy.describe_identities()})",
                )

    # 3. expiry
    if parsed.expiry is not None and now >= parsed.expiry:
        run.fail(policy.expiry, "expired", f"signature expired on {_when(parsed.expiry)}")

    # 4. authentic timestamp
    _check_time(parsed, policy, run, now)

    # 5. revocation
    if policy.revocation != "skip":
        _check_revocation(certificates, revocation, policy, run)

    # 6. the signed descriptor
    _check_payload(parsed.payload, digest, target)
    return model.Check("verified", signer=signer_of(leaf)), certificates


def _check_time(
    parsed: envelope.Envelope, policy: trust.TrustPolicy, run: _Run, now: datetime.datetime
) -> None:
    certificates = parsed.certificates
    if parsed.signing_scheme == envelope.SCHEME_SIGNING_AUTHORITY:
        moment = parsed.authentic_signing_time
        assert moment is not None  # the envelope parser requires it for this scheme
        for cert in certificates:
            if not chain.valid_at(cert, moment):
                run.fail(
                    policy.authentic_timestamp,
                    "expired",
                    f"certificate {cert.subject.rfc4514_string()} was not valid at the "
                    f"authentic signing time {_when(moment)}",
                )
                return
        return
    use_timestamp = bool(policy.tsa) and (
        policy.verify_timestamp == "always"
        or any(now > cert.not_valid_after_utc for cert in certificates)
    )
    if not use_timestamp:
        for cert in certificates:
            name = cert.subject.rfc4514_string()
            if now < cert.not_valid_before_utc:
                run.fail(
                    policy.authentic_timestamp,
                    "expired",
                    f"certificate {name} is not valid before {_when(cert.not_valid_before_utc)}",
                )
                return
            if now > cert.not_valid_after_utc:
                tail = (
                    " and the signature has no timestamp countersignature"
                    if parsed.timestamp is None
                    else " (no timestampTrustStore to check its timestamp with)"
                )
                run.fail(
                    policy.authentic_timestamp,
                    "expired",
                    f"signature expired: certificate {name} expired at "
                    f"{_when(cert.not_valid_after_utc)}{tail}",
                )
                return
        return
    if parsed.timestamp is None:
        run.fail(
            policy.authentic_timestamp,
            "expired",
            "no timestamp countersignature, which the timestampTrustStore requires"
            + (
                " (the signing certificate chain has expired)"
                if any(now > c.not_valid_after_utc for c in certificates)
                else ""
            ),
        )
        return
    try:
        stamp = timestamp.verify_token(parsed.timestamp, parsed.signature, policy.tsa.parsed())
    except model.Refused as refused:
        run.fail(policy.authentic_timestamp, refused.check.result, refused.check.reason)
        return
    for cert in certificates:
        if not stamp.within(cert):
            run.fail(
                policy.authentic_timestamp,
                "expired",
                f"signature expired: timestamp {_when(stamp.lower)}..{_when(stamp.upper)} "
                f"is outside the validity of certificate {cert.subject.rfc4514_string()} "
                f"({_when(cert.not_valid_before_utc)}..{_when(cert.not_valid_after_utc)})",
            )
            return


def _check_revocation(
    certificates: tuple[x509.Certificate, ...],
    statuses: notation_revocation.Statuses | None,
    policy: trust.TrustPolicy,
    run: _Run,
) -> None:
    for cert in certificates:
        name = cert.subject.rfc4514_string()
        status = (statuses or {}).get(notation_revocation.fingerprint(cert))
        if status is None:
            run.fail(
                policy.revocation,
                "revoked",
                f"revocation status of certificate {name} could not be determined "
                "(revocation checking is on and was not done)",
            )
            return
        if status.state == "revoked":
            run.fail(
                policy.revocation, "revoked", f"certificate {name} is revoked ({status.detail})"
            )
            return
        if status.state == "unavailable":
            run.fail(
                policy.revocation,
                "revoked",
                f"revocation status of certificate {name} could not be determined: {status.detail}",
            )
            return


def _check_payload(payload: bytes, digest: str, target: model.Target | None) -> None:
    document = model.parse_json(payload, what="Notation payload")
    artifact = document.get("targetArtifact")
    if not isinstance(artifact, dict):
        raise model.Refused("malformed", "Notation payload has no targetArtifact")
    named, media_type, size = (
        artifact.get("digest"),
        artifact.get("mediaType"),
        artifact.get("size"),
    )
    if not isinstance(named, str) or not isinstance(media_type, str) or not isinstance(size, int):
        raise model.Refused(
            "malformed", "Notation payload targetArtifact lacks mediaType, digest or size"
        )
    if named != digest:
        raise model.Refused(
            "wrong_digest", f"signature names another digest {model.short(named)} (targetArtifact)"
        )
    if target is None:
        raise model.Refused(
            "wrong_digest", "the admitted manifest's media type and size are unknown here"
        )
    if media_type != target.media_type:
        raise model.Refused(
            "wrong_digest",
            f"signature names media type {media_type}, the manifest is {target.media_type}",
        )
    if size != target.size or isinstance(size, bool):
        raise model.Refused(
            "wrong_digest", f"signature names size {size}, the manifest is {target.size} bytes"
        )
