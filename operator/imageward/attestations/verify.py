"""Which authorities vouch for an attestation of a predicate type naming a digest.

`verify(digest, found, authorities, predicate_type)` checks every candidate of
`envelopes.read_candidates` against every authority, as `signatures.verify` does for
signatures: a key authority checks the DSSE signature over the PAE with the policy's
key only (key hints, certificates and log entries inside the envelope are never
trusted); a keyless authority verifies a bundle with sigstore against its offline
trusted root and identity. Then the signed statement must be an in-toto statement of
exactly `predicate_type` whose subject names `digest`.

The result has the shape of a signature verification (so that thresholds, index
coverage and metrics work the same way) plus the statements that verified.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from imageward import records
from imageward.attestations import envelopes
from imageward.registry import model as registry_model
from imageward.signatures import bundle, keys, model
from imageward.signatures import verify as signatures_verify

NO_ATTESTATION = "no attestation found"


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    """A statement one or more authorities verified: parsed, with where it came from."""

    label: str
    format: model.Format
    statement: dict[str, Any]
    payload_size: int

    @property
    def predicate(self) -> Any:
        return self.statement.get("predicate")


@dataclasses.dataclass(frozen=True, slots=True)
class Verification:
    result: signatures_verify.VerificationResult
    statements: tuple[Statement, ...]
    """Statements that verified with at least one authority, in the order found."""

    found: int
    """Attestations that may be of the type (announced so, or not announced)."""


def check_statement(
    payload_type: str, payload: bytes, digest: registry_model.Digest, predicate_type: str
) -> tuple[model.Check, dict[str, Any] | None]:
    """Whether a verified payload is an in-toto statement of `predicate_type` for `digest`."""
    try:
        if payload_type != bundle.INTOTO_PAYLOAD_TYPE:
            raise model.Refused(
                "not_a_signature",
                f"DSSE payload type is {payload_type!r}, not {bundle.INTOTO_PAYLOAD_TYPE!r}",
            )
        statement = model.parse_json(payload, what="signed in-toto statement")
        kind = statement.get("_type")
        if kind not in bundle.STATEMENT_TYPES:
            raise model.Refused("not_a_signature", f"signed statement has _type {kind!r}")
        signed_type = statement.get("predicateType")
        if signed_type != predicate_type:
            raise model.Refused(
                "not_a_signature",
                f"signed statement is of predicateType {signed_type!r}, not {predicate_type}",
            )
        named = _subject_digests(statement)
        if not named:
            raise model.Refused("malformed", "signed statement has no sha256 subject digest")
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or hex_digest.lower() not in named:
            raise model.Refused(
                "wrong_digest",
                f"attestation names another digest sha256:{named[0][:12]}… (subject), "
                f"not {model.short(digest)}",
            )
    except model.Refused as refused:
        return refused.check, None
    return model.VERIFIED, statement


def _subject_digests(statement: dict[str, Any]) -> list[str]:
    subjects = statement.get("subject")
    found = []
    for subject in subjects if isinstance(subjects, list) else []:
        digests = subject.get("digest") if isinstance(subject, dict) else None
        value = digests.get("sha256") if isinstance(digests, dict) else None
        if isinstance(value, str):
            found.append(value.lower())
    return found


def _check(
    candidate: envelopes.Candidate,
    digest: registry_model.Digest,
    authority: signatures_verify.Authority,
    predicate_type: str,
) -> tuple[model.Check, dict[str, Any] | None]:
    if candidate.broken is not None:
        return candidate.broken, None
    envelope = candidate.envelope
    assert envelope is not None
    if isinstance(authority, signatures_verify.NotationAuthority):
        # The policy model refuses these; kept so that no other path can count one.
        return model.Check("unsupported", "Notation authorities do not verify attestations"), None
    if isinstance(authority, signatures_verify.KeyAuthority):
        signed = bundle.pae(envelope.payload_type, envelope.payload)
        # keyid fields are unsigned hints: every signature is tried with the policy key.
        if not any(
            keys.verify_signature(authority.key, sig, signed) for sig in envelope.signatures
        ):
            return (
                model.Check(
                    "invalid_signature",
                    f"attestation signature does not verify with key {authority.name}",
                ),
                None,
            )
        check, statement = check_statement(
            envelope.payload_type, envelope.payload, digest, predicate_type
        )
        if check.verified:
            check = records.replace(check, signer=f"key {authority.key.fingerprint}")
        return check, statement
    if candidate.bundle is None:
        return (
            model.Check(
                "unsupported",
                "keyless attestations are verified in the Sigstore bundle format only "
                "(cosign attest --new-bundle-format, cosign v3's default)",
            ),
            None,
        )
    from imageward.signatures import keyless

    parsed: dict[str, Any] = {}

    def judge(payload_type: str, payload: bytes, digest: registry_model.Digest) -> model.Check:
        check, statement = check_statement(payload_type, payload, digest, predicate_type)
        if statement is not None:
            parsed["statement"] = statement
        return check

    check = keyless.verify_bundle(
        candidate.bundle,
        digest,
        authority.identity,
        authority.trusted_root,
        authority=authority.name,
        check_statement=judge,
    )
    return check, parsed.get("statement")


def verify(
    digest: registry_model.Digest,
    found: signatures_verify.SignatureSet,
    authorities: Sequence[signatures_verify.Authority],
    predicate_type: str,
    *,
    threshold: int = 1,
) -> Verification:
    """Check every authority against the attestations of `predicate_type` for `digest`."""
    candidates = envelopes.read_candidates(found, predicate_type)
    attempts: list[signatures_verify.Attempt] = []
    outcomes: list[signatures_verify.AuthorityOutcome] = []
    statements: dict[int, Statement] = {}
    for authority in authorities:
        best: tuple[model.Check, envelopes.Candidate] | None = None
        signers: set[str] = set()
        for index, candidate in enumerate(candidates):
            try:
                check, statement = _check(candidate, digest, authority, predicate_type)
            except Exception as e:  # content a pusher controls: refuse it, never escape
                check, statement = (
                    model.Check("malformed", f"{candidate.label} cannot be read: {e}"),
                    None,
                )
            attempts.append(
                signatures_verify.Attempt(
                    authority.name, candidate.format, candidate.label, check.result, check.reason
                )
            )
            if best is None or check.progress > best[0].progress:
                best = (check, candidate)
            if check.verified and statement is not None:
                signers.add(check.signer or f"{authority.kind} {authority.name}")
                envelope = candidate.envelope
                statements.setdefault(
                    index,
                    Statement(
                        candidate.label,
                        candidate.format,
                        statement,
                        len(envelope.payload) if envelope is not None else 0,
                    ),
                )
        if best is None:
            outcomes.append(
                signatures_verify.AuthorityOutcome(
                    authority.name, authority.kind, False, NO_ATTESTATION
                )
            )
            continue
        check, candidate = best
        outcomes.append(
            signatures_verify.AuthorityOutcome(
                authority.name,
                authority.kind,
                bool(signers),
                "" if signers else check.reason,
                candidate.format,
                frozenset(signers),
            )
        )
    result = signatures_verify.VerificationResult(
        digest=digest,
        threshold=threshold,
        outcomes=tuple(outcomes),
        attempts=tuple(attempts),
        signatures_found=len(candidates),
    )
    ordered = tuple(statements[i] for i in sorted(statements))
    return Verification(result=result, statements=ordered, found=len(candidates))
