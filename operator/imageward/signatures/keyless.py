"""Keyless (Fulcio certificate) signatures against an offline trusted root and an identity.

Bundles are verified by the `sigstore` package (sigstore-python), offline, against the
authority's trusted_root.json. It checks, in order: a verified signing time (the
Rekor entry's integrated time when bound by its signed entry timestamp, and/or RFC 3161
timestamps from the root's timestampAuthorities); the certificate chain to one of the
root's certificateAuthorities at that time; the embedded SCT against the root's
ctlogs; key usage (digitalSignature) and extended key usage (codeSigning); the
identity (below); the Merkle inclusion proof and the signed checkpoint of the Rekor
entry, and its SET, against the root's tlogs; the signing time inside the
certificate's validity; the DSSE signature with the certificate's key; and that the
Rekor entry records this very envelope (payload hash and signature). Then the signed
statement must name the admitted digest (`bundle.check_statement`).

Legacy keyless signatures (`.sig` layers with certificate, chain and Rekor bundle
annotations) carry only a SET, no inclusion proof, which sigstore-python refuses, so
they are checked here, as cosign v2 does: the SET against the root's tlogs (the
log's key must be valid at the integrated time) gives the signing time; the chain to
a certificateAuthority valid at that time (certificates from the chain annotation are
only untrusted intermediates); the embedded SCT against the root's ctlogs; key usage;
the identity; the signature over the payload with the certificate's key; and that
the Rekor `hashedrekord` entry records this payload hash, this signature and this
certificate. Not checked for legacy signatures: a Merkle inclusion proof (none is
carried) and RFC 3161 timestamps (`dev.sigstore.cosign/rfc3161timestamp`).

Identity: the OIDC issuer comes from extension 1.3.6.1.4.1.57264.1.8 (DER UTF8String),
else the deprecated 1.3.6.1.4.1.57264.1.1 (raw bytes); the subject is any SAN URI,
email or Sigstore otherName (1.3.6.1.4.1.57264.1.7). Exact values compare equal;
regular expressions are searched, unanchored, exactly as cosign's
`--certificate-identity-regexp` (Go `regexp.MatchString`): anchor them (`^…$`) to
pin a prefix.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import certificate_transparency, verification
from sigstore import errors as sg_errors
from sigstore import models as sg_models
from sigstore.verify import verifier as sg_verifier
from sigstore_models.trustroot import v1 as trustroot_v1

from imageward import records
from imageward.registry import model as registry_model
from imageward.signatures import bundle, keys, legacy, model

OIDC_ISSUER_V1: Final = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2: Final = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SIGSTORE_OTHERNAME: Final = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.7")
TRUSTED_ROOT_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"

_UTC: Final = datetime.UTC
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=_UTC)


# -- identity -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who must have signed: an OIDC issuer and a certificate subject, exact or regexp."""

    issuer: str | None = None
    issuer_regexp: re.Pattern[str] | None = None
    subject: str | None = None
    subject_regexp: re.Pattern[str] | None = None

    def __str__(self) -> str:
        issuer = (
            f"issuer {self.issuer}"
            if self.issuer is not None
            else f"issuer matching {self.issuer_regexp.pattern if self.issuer_regexp else '?'}"
        )
        subject = (
            f"subject {self.subject}"
            if self.subject is not None
            else f"subject matching {self.subject_regexp.pattern if self.subject_regexp else '?'}"
        )
        return f"{issuer}, {subject}"


def parse_identity(
    *,
    authority: str,
    issuer: str | None = None,
    issuer_regexp: str | None = None,
    subject: str | None = None,
    subject_regexp: str | None = None,
) -> Identity:
    """Validate a keyless identity: one issuer form and one subject form, as cosign requires."""

    def one(exact: str | None, pattern: str | None, name: str) -> re.Pattern[str] | None:
        if exact is not None and pattern is not None:
            raise model.AuthorityError(authority, f"give {name} or {name}RegExp, not both")
        if exact is None and pattern is None:
            raise model.AuthorityError(
                authority,
                f"keyless needs {name} or {name}RegExp (an unpinned {name} trusts anyone)",
            )
        if exact is not None and not exact:
            raise model.AuthorityError(authority, f"{name} is empty")
        if pattern is None:
            return None
        try:
            return re.compile(pattern)
        except re.error as e:
            raise model.AuthorityError(
                authority, f"{name}RegExp {pattern!r} is not a valid regular expression: {e}"
            ) from e

    return Identity(
        issuer=issuer,
        issuer_regexp=one(issuer, issuer_regexp, "issuer"),
        subject=subject,
        subject_regexp=one(subject, subject_regexp, "subject"),
    )


def _der_string(raw: bytes) -> str | None:
    """The text of a DER string (UTF8String, IA5String, PrintableString), else None."""
    if len(raw) < 2 or raw[0] not in (0x0C, 0x16, 0x13):
        return None
    length, offset = raw[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(raw) < 2 + count:
            return None
        length, offset = int.from_bytes(raw[2 : 2 + count], "big"), 2 + count
    if len(raw) != offset + length:
        return None
    try:
        return raw[offset:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def certificate_identity(cert: x509.Certificate) -> tuple[str | None, tuple[str, ...]]:
    """The OIDC issuer and the SAN subjects a Fulcio certificate was issued for."""
    issuer: str | None = None
    for oid, decode in (
        (OIDC_ISSUER_V2, _der_string),
        (OIDC_ISSUER_V1, lambda raw: raw.decode("utf-8", "replace")),
    ):
        try:
            extension = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        if isinstance(extension, x509.UnrecognizedExtension):
            issuer = decode(extension.value)
            if issuer is not None:
                break
    subjects: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        subjects.extend(san.get_values_for_type(x509.UniformResourceIdentifier))
        subjects.extend(san.get_values_for_type(x509.RFC822Name))
        for other in san.get_values_for_type(x509.OtherName):
            if other.type_id == SIGSTORE_OTHERNAME and (text := _der_string(other.value)):
                subjects.append(text)
    return issuer, tuple(subjects)


def match_identity(cert: x509.Certificate, identity: Identity) -> model.Check:
    issuer, subjects = certificate_identity(cert)

    def matches(value: str, exact: str | None, pattern: re.Pattern[str] | None) -> bool:
        if exact is not None:
            return value == exact
        return pattern is not None and pattern.search(value) is not None

    issuer_ok = issuer is not None and matches(issuer, identity.issuer, identity.issuer_regexp)
    subject_ok = any(
        matches(subject, identity.subject, identity.subject_regexp) for subject in subjects
    )
    if issuer_ok and subject_ok:
        return model.VERIFIED
    shown = ", ".join(subjects) if subjects else "(none)"
    return model.Check(
        "identity_mismatch",
        f"identity mismatch: issuer {issuer or '(none)'} subject {shown} (want {identity})",
    )


# -- trusted root ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LogKey:
    """A transparency or CT log's key from trusted_root.json, and when it was in service."""

    key_id: bytes  # the log id: sha256 of the DER public key unless the root says otherwise
    key: keys.PublicKey
    valid_from: datetime.datetime | None
    valid_until: datetime.datetime | None

    def valid_at(self, when: datetime.datetime) -> bool:
        return _within(when, self.valid_from, self.valid_until)


@dataclasses.dataclass(frozen=True, slots=True)
class CertificateAuthority:
    certificates: tuple[x509.Certificate, ...]  # leaf-most first, root last
    valid_from: datetime.datetime | None
    valid_until: datetime.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class TrustedRoot:
    """A parsed trusted_root.json (sigstore protobuf-specs TrustedRoot, version 0.1).

    Equal roots have equal `digest` (sha256 of the JSON bytes): a cache key.
    """

    digest: str
    certificate_authorities: tuple[CertificateAuthority, ...] = dataclasses.field(compare=False)
    tlogs: tuple[LogKey, ...] = dataclasses.field(compare=False)
    ctlogs: tuple[LogKey, ...] = dataclasses.field(compare=False)
    sigstore_root: sg_models.TrustedRoot = dataclasses.field(compare=False, repr=False)


def _within(
    when: datetime.datetime, start: datetime.datetime | None, end: datetime.datetime | None
) -> bool:
    return (start is None or start <= when) and (end is None or when <= end)


_FRACTION = re.compile(r"\.(\d{6})\d+")


def _timestamp(value: Any, *, authority: str, what: str) -> datetime.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise model.AuthorityError(authority, f"trusted root {what} is not a timestamp")
    # protobuf JSON timestamps may carry nanoseconds; Python parses microseconds at most.
    text = _FRACTION.sub(r".\1", value.strip())
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError as e:
        raise model.AuthorityError(authority, f"trusted root {what} {value!r}: {e}") from e
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_UTC)


def _validity(
    obj: dict[str, Any], *, authority: str, what: str
) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    valid_for = model.field(obj, "validFor", "valid_for")
    if not isinstance(valid_for, dict):
        return None, None
    return (
        _timestamp(valid_for.get("start"), authority=authority, what=f"{what} validFor.start"),
        _timestamp(valid_for.get("end"), authority=authority, what=f"{what} validFor.end"),
    )


def _bytes(value: Any, *, authority: str, what: str) -> bytes:
    try:
        return model.decode_base64(value, what=what)
    except model.Refused as refused:
        raise model.AuthorityError(authority, f"trusted root {refused.check.reason}") from None


def _log_keys(document: dict[str, Any], name: str, *, authority: str) -> tuple[LogKey, ...]:
    logs = document.get(name)
    if not isinstance(logs, list) or not logs:
        raise model.AuthorityError(authority, f"trusted root has no {name}")
    found = []
    for index, log in enumerate(logs):
        what = f"{name}[{index}]"
        public = model.field(log, "publicKey", "public_key") if isinstance(log, dict) else None
        if not isinstance(log, dict) or not isinstance(public, dict):
            raise model.AuthorityError(authority, f"trusted root {what} has no publicKey")
        raw = _bytes(
            model.field(public, "rawBytes", "raw_bytes"), authority=authority, what=f"{what} key"
        )
        key = keys.load_der_public_key(raw, authority=authority)
        log_id = model.field(log, "logId", "log_id")
        declared = model.field(log_id, "keyId", "key_id") if isinstance(log_id, dict) else None
        key_id = (
            _bytes(declared, authority=authority, what=f"{what} logId")
            if declared is not None
            else hashlib.sha256(key.spki).digest()
        )
        start, end = _validity(public, authority=authority, what=what)
        found.append(LogKey(key_id=key_id, key=key, valid_from=start, valid_until=end))
    return tuple(found)


def _authorities(document: dict[str, Any], *, authority: str) -> tuple[CertificateAuthority, ...]:
    cas = model.field(document, "certificateAuthorities", "certificate_authorities")
    if not isinstance(cas, list) or not cas:
        raise model.AuthorityError(authority, "trusted root has no certificateAuthorities")
    found = []
    for index, ca in enumerate(cas):
        what = f"certificateAuthorities[{index}]"
        chain = model.field(ca, "certChain", "cert_chain") if isinstance(ca, dict) else None
        entries = chain.get("certificates") if isinstance(chain, dict) else None
        if not isinstance(ca, dict) or not isinstance(entries, list) or not entries:
            raise model.AuthorityError(authority, f"trusted root {what} has no certChain")
        certificates = []
        for entry in entries:
            raw = model.field(entry, "rawBytes", "raw_bytes") if isinstance(entry, dict) else None
            der = _bytes(raw, authority=authority, what=f"{what} certificate")
            try:
                certificates.append(x509.load_der_x509_certificate(der))
            except ValueError as e:
                raise model.AuthorityError(
                    authority, f"trusted root {what} holds a bad certificate: {e}"
                ) from e
        start, end = _validity(ca, authority=authority, what=what)
        found.append(CertificateAuthority(tuple(certificates), start, end))
    return tuple(found)


def parse_trusted_root(raw: str | bytes, *, authority: str) -> TrustedRoot:
    """Parse trusted_root.json, or raise `AuthorityError` naming what is wrong with it."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    try:
        document = model.parse_json(data, what="trusted root")
    except model.Refused as refused:
        raise model.AuthorityError(authority, refused.check.reason) from None
    media_type = model.field(document, "mediaType", "media_type")
    if media_type != TRUSTED_ROOT_MEDIA_TYPE:
        raise model.AuthorityError(
            authority,
            f"trusted root has mediaType {media_type!r}, expected {TRUSTED_ROOT_MEDIA_TYPE!r}",
        )
    certificate_authorities = _authorities(document, authority=authority)
    tlogs = _log_keys(document, "tlogs", authority=authority)
    ctlogs = _log_keys(document, "ctlogs", authority=authority)
    try:
        # TrustedRoot(inner) is how sigstore's own from_file builds one; there is no
        # public from-bytes constructor in sigstore 4.x.
        sigstore_root = sg_models.TrustedRoot(trustroot_v1.TrustedRoot.from_json(data))
    except Exception as e:  # pydantic ValidationError, sigstore Error: any means unusable
        raise model.AuthorityError(authority, f"trusted root cannot be read: {e}") from e
    return TrustedRoot(
        digest=model.sha256_digest(data),
        certificate_authorities=certificate_authorities,
        tlogs=tlogs,
        ctlogs=ctlogs,
        sigstore_root=sigstore_root,
    )


# -- bundles (sigstore-python) --------------------------------------------------------


class _IdentityMismatch(sg_errors.VerificationError):
    def __init__(self, check: model.Check) -> None:
        self.check = check
        super().__init__(check.reason)


@dataclasses.dataclass(frozen=True, slots=True)
class _IdentityPolicy:
    """sigstore's VerificationPolicy protocol, answering with our identity rules."""

    identity: Identity

    def verify(self, cert: x509.Certificate) -> None:
        check = match_identity(cert, self.identity)
        if not check.verified:
            raise _IdentityMismatch(check)


def verify_bundle(
    parsed: bundle.Bundle,
    digest: registry_model.Digest,
    identity: Identity,
    root: TrustedRoot,
    *,
    authority: str,
    check_statement: Callable[[str, bytes, registry_model.Digest], model.Check] = (
        bundle.check_statement
    ),
) -> model.Check:
    """Check a bundle against a keyless authority (see the module docstring).

    `check_statement` judges the verified DSSE payload: cosign's image signature
    statement by default; attestations pass their own (another predicate type).
    """
    envelope = parsed.envelope
    if envelope is None:
        return bundle.describe_unverifiable(parsed)
    try:
        sigstore_bundle = sg_models.Bundle.from_json(parsed.raw)
    except Exception as e:  # attacker-supplied bytes: any parse failure refuses the bundle
        return model.Check("malformed", f"bundle cannot be read for keyless verification: {e}")
    try:
        verifier = sg_verifier.Verifier(trusted_root=root.sigstore_root)
        payload_type, payload = verifier.verify_dsse(sigstore_bundle, _IdentityPolicy(identity))
    except _IdentityMismatch as mismatch:
        return mismatch.check
    except Exception as e:  # sigstore raises VerificationError, and deeper errors on odd input
        if not _signed_by_certificate(envelope, sigstore_bundle.signing_certificate):
            return model.Check(
                "invalid_signature", f"signature does not verify with its certificate ({authority})"
            )
        return model.Check("untrusted", f"keyless signature not trusted by {authority}: {e}")
    return _signed_by(
        check_statement(payload_type, payload, digest), sigstore_bundle.signing_certificate
    )


def build_signer(cert: x509.Certificate) -> str:
    """The identity a Fulcio certificate was issued to, as thresholds count signers."""
    issuer, subjects = certificate_identity(cert)
    return f"keyless {issuer or '(no issuer)'} {' '.join(sorted(subjects)) or '(no subject)'}"


def _signed_by(check: model.Check, cert: x509.Certificate) -> model.Check:
    return records.replace(check, signer=build_signer(cert)) if check.verified else check


def _signed_by_certificate(envelope: bundle.DsseEnvelope, cert: x509.Certificate) -> bool:
    """Only to name the failure: a bad signature says more than a chain error after it."""
    try:
        key = keys.from_crypto_key(cert.public_key(), authority="certificate")
    except (model.AuthorityError, ValueError, crypto_exceptions.UnsupportedAlgorithm):
        return False  # an unusable key (an unsupported curve, say) signs nothing
    signed = bundle.pae(envelope.payload_type, envelope.payload)
    return any(keys.verify_signature(key, sig, signed) for sig in envelope.signatures)


# -- legacy signatures ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RekorEntry:
    """A Rekor entry whose SET verified: its body and the time the log vouches for."""

    body: bytes
    integrated_time: datetime.datetime


def _load_certificates(pem: str, *, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem.encode("utf-8"))
    except (ValueError, x509.InvalidVersion) as e:  # InvalidVersion is no ValueError
        raise model.Refused("malformed", f"{what} is not PEM certificates: {e}") from e


def verify_rekor_bundle(annotation: str | None, root: TrustedRoot) -> RekorEntry:
    """The `dev.sigstore.cosign/bundle` annotation, its SET checked against the root's tlogs.

    Raises `Refused` (untrusted or malformed) when it does not hold.
    """
    if annotation is None:
        raise model.Refused(
            "untrusted",
            f"keyless signature has no transparency log entry ({legacy.REKOR_BUNDLE_ANNOTATION})",
        )
    try:
        raw = annotation.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (`"\ud800"` in the manifest's JSON)
        raise model.Refused("malformed", "Rekor bundle annotation is not valid Unicode") from None
    document = model.parse_json(raw, what="Rekor bundle annotation")
    payload = document.get("Payload")
    if not isinstance(payload, dict):
        raise model.Refused("malformed", "Rekor bundle annotation has no Payload")
    body, integrated, index, log_id = (
        payload.get("body"),
        payload.get("integratedTime"),
        payload.get("logIndex"),
        payload.get("logID"),
    )
    if (
        not isinstance(body, str)
        or not isinstance(log_id, str)
        or not isinstance(integrated, int)
        or not isinstance(index, int)
        or isinstance(integrated, bool)
        or isinstance(index, bool)
    ):
        raise model.Refused("malformed", "Rekor bundle annotation Payload is incomplete")
    set_signature = model.decode_base64(
        document.get("SignedEntryTimestamp"), what="Rekor SignedEntryTimestamp"
    )
    try:
        log_key_id = bytes.fromhex(log_id)
    except ValueError as e:
        raise model.Refused("malformed", f"Rekor logID {log_id!r} is not hex") from e
    try:
        when = datetime.datetime.fromtimestamp(integrated, tz=_UTC)
    except (OverflowError, OSError, ValueError) as e:
        raise model.Refused("malformed", f"Rekor integratedTime {integrated} is not a time") from e
    # What Rekor signed: the RFC 8785 form of these four fields (sorted keys, no spaces;
    # the values are ASCII strings and integers, for which json.dumps is exactly that).
    signed = json.dumps(
        {"body": body, "integratedTime": integrated, "logID": log_id, "logIndex": index},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    candidates = [log for log in root.tlogs if log.key_id == log_key_id]
    if not candidates:
        raise model.Refused(
            "untrusted", f"Rekor entry is from log {log_id[:16]}…, not one of the trusted root's"
        )
    if not any(
        log.valid_at(when) and keys.verify_signature(log.key, set_signature, signed)
        for log in candidates
    ):
        raise model.Refused("untrusted", "Rekor SignedEntryTimestamp does not verify")
    return RekorEntry(model.decode_base64(body, what="Rekor entry body"), when)


_CA_POLICY: Final = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
    x509.ExtendedKeyUsage, verification.Criticality.NON_CRITICAL, None
)
# Fulcio leaves carry codeSigning, not the clientAuth the client verifier expects: the
# EKU is checked separately below, every other WebPKI default is kept.
_EE_POLICY: Final = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.ExtendedKeyUsage, verification.Criticality.NON_CRITICAL, None
)


def _verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    root: TrustedRoot,
    when: datetime.datetime,
) -> list[x509.Certificate]:
    anchors = [
        cert
        for ca in root.certificate_authorities
        if _within(when, ca.valid_from, ca.valid_until)
        for cert in ca.certificates
    ]
    if not anchors:
        raise model.Refused(
            "untrusted", f"no certificate authority of the trusted root was valid at {when:%FT%TZ}"
        )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(anchors))
        .time(when)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        chain = verifier.verify(leaf, list(intermediates)).chain
    except (verification.VerificationError, x509.UnsupportedGeneralNameType, ValueError) as e:
        raise model.Refused(
            "untrusted",
            f"certificate does not chain to the trusted root at {when:%FT%TZ}: {e}",
        ) from e
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        extended = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as e:
        raise model.Refused("untrusted", f"certificate lacks {e.oid.dotted_string}") from e
    if not usage.digital_signature or x509.oid.ExtendedKeyUsageOID.CODE_SIGNING not in extended:
        raise model.Refused("untrusted", "certificate is not for code signing")
    return chain


def _verify_sct(
    leaf: x509.Certificate, chain: Sequence[x509.Certificate], root: TrustedRoot
) -> None:
    """An embedded SCT from one of the root's CT logs, over the precertificate (RFC 6962)."""
    try:
        scts = leaf.extensions.get_extension_for_class(
            x509.PrecertificateSignedCertificateTimestamps
        ).value
    except x509.ExtensionNotFound:
        raise model.Refused("untrusted", "certificate has no embedded SCT") from None
    if len(chain) < 2:
        raise model.Refused("untrusted", "certificate has no issuer to check its SCT against")
    issuer_key_hash = hashlib.sha256(
        chain[1]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).digest()
    tbs = leaf.tbs_precertificate_bytes
    for sct in scts:
        if sct.entry_type != certificate_transparency.LogEntryType.PRE_CERTIFICATE:
            continue
        when = sct.timestamp.replace(tzinfo=_UTC)
        millis = (when - _EPOCH) // datetime.timedelta(milliseconds=1)
        signed = (
            struct.pack("!BBQH", sct.version.value, 0, millis, sct.entry_type.value)
            + issuer_key_hash
            + len(tbs).to_bytes(3, "big")
            + tbs
            + struct.pack("!H", len(sct.extension_bytes))
            + sct.extension_bytes
        )
        for log in root.ctlogs:
            if (
                log.key_id == sct.log_id
                and log.valid_at(when)
                and keys.verify_signature(log.key, sct.signature, signed)
            ):
                return
    raise model.Refused("untrusted", "no SCT of the certificate verifies with the trusted ctlogs")


def _check_rekor_body(
    body: bytes, payload: bytes, signature: bytes, leaf: x509.Certificate
) -> None:
    """The Rekor entry must record this payload, this signature and this certificate."""
    entry = model.parse_json(body, what="Rekor entry body")
    if entry.get("kind") != "hashedrekord" or entry.get("apiVersion") != "0.0.1":
        raise model.Refused(
            "unsupported",
            f"Rekor entry kind {entry.get('kind')!r} {entry.get('apiVersion')!r} "
            "(legacy signatures are hashedrekord 0.0.1)",
        )
    spec = entry.get("spec")
    data = spec.get("data") if isinstance(spec, dict) else None
    hashed = data.get("hash") if isinstance(data, dict) else None
    recorded = spec.get("signature") if isinstance(spec, dict) else None
    public = recorded.get("publicKey") if isinstance(recorded, dict) else None
    if not (isinstance(hashed, dict) and isinstance(recorded, dict) and isinstance(public, dict)):
        raise model.Refused("malformed", "Rekor hashedrekord entry is incomplete")
    if (
        hashed.get("algorithm") != "sha256"
        or hashed.get("value") != hashlib.sha256(payload).hexdigest()
    ):
        raise model.Refused("untrusted", "Rekor entry records another payload")
    if model.decode_base64(recorded.get("content"), what="Rekor signature") != signature:
        raise model.Refused("untrusted", "Rekor entry records another signature")
    pem = model.decode_base64(public.get("content"), what="Rekor public key").decode(
        "utf-8", "replace"
    )
    logged = _load_certificates(pem, what="Rekor entry certificate")
    if not logged or logged[0] != leaf:
        raise model.Refused("untrusted", "Rekor entry records another certificate")


def verify_legacy(
    signature: legacy.LegacySignature,
    payload: bytes,
    digest: registry_model.Digest,
    identity: Identity,
    root: TrustedRoot,
    *,
    authority: str,
) -> model.Check:
    """Check one legacy signature (payload already read) against a keyless authority."""
    try:
        raw = legacy.signature_bytes(signature)
        if signature.certificate is None:
            raise model.Refused(
                "untrusted",
                f"signature carries no certificate ({legacy.CERTIFICATE_ANNOTATION})",
            )
        certificates = _load_certificates(signature.certificate, what="signature certificate")
        if len(certificates) != 1:
            raise model.Refused("malformed", "signature certificate annotation is not one PEM")
        leaf = certificates[0]
        intermediates = (
            _load_certificates(signature.chain, what="certificate chain") if signature.chain else []
        )
        entry = verify_rekor_bundle(signature.rekor_bundle, root)
        chain = _verify_chain(leaf, intermediates, root, entry.integrated_time)
        _verify_sct(leaf, chain, root)
        identity_check = match_identity(leaf, identity)
        if not identity_check.verified:
            return identity_check
        try:
            key = keys.from_crypto_key(leaf.public_key(), authority=authority)
        except model.AuthorityError as e:
            raise model.Refused("unsupported", f"certificate key: {e.reason}") from e
        except (ValueError, crypto_exceptions.UnsupportedAlgorithm) as e:
            raise model.Refused("malformed", f"certificate key cannot be read: {e}") from e
        if not keys.verify_signature(key, raw, payload):
            raise model.Refused(
                "invalid_signature", f"signature does not verify with its certificate ({authority})"
            )
        _check_rekor_body(entry.body, payload, raw, leaf)
    except model.Refused as refused:
        return refused.check
    return _signed_by(legacy.check_payload(payload, digest), leaf)
