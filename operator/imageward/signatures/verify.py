"""The entry point: which authorities vouch for a digest, and why the others do not.

`verify(digest, signatures, authorities, threshold)` takes what the registry client
found for one digest (the legacy `.sig` manifest, the bundle referrer manifests and
their blobs) and returns a `VerificationResult`: data for a policy `Violation`, for
the refusal message, and for `imageward_signature_verifications_total`.

An authority verifies when any one signature verifies with it. Each authority that
does not gets the reason of the signature that got furthest (see `model.PROGRESS`),
"no signature found" when there was none at all.

Three formats: cosign's legacy `.sig` payloads and Sigstore bundles (for `key` and
`keyless` authorities) and Notary Project signatures (for `notation` authorities; see
`imageward.notation`). An authority only reads its own format: a Notation signature
never counts for a cosign key, nor a cosign signature for a Notation trust store, and
when an image carries only the other format the reason says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from cryptography.hazmat.primitives import hashes

from imageward import records
from imageward.registry import model as registry_model
from imageward.signatures import bundle, legacy, model

# Defined in `authorities` (policy loading needs them, not verification) and re-exported:
# callers name them `verify.KeyAuthority` and the like.
from imageward.signatures.authorities import Authority as Authority
from imageward.signatures.authorities import KeyAuthority as KeyAuthority
from imageward.signatures.authorities import KeylessAuthority as KeylessAuthority
from imageward.signatures.authorities import NotationAuthority as NotationAuthority

if TYPE_CHECKING:
    # cryptography.x509 is loaded by the formats that read certificates (keyless,
    # Notation), not for key authorities; sigstore costs a third of a second to import:
    # only keyless authorities load it.
    from cryptography import x509

    from imageward.notation import revocation as notation_revocation
    from imageward.notation import verify as notation_verify

    # For `_Candidate.__init__`, whose parameters `legacy` and `bundle` hide the modules.
    from imageward.signatures.bundle import Bundle
    from imageward.signatures.legacy import LegacySignature

NO_SIGNATURE = "no signature found"
NO_NOTATION_SIGNATURE = "no Notation signature found"


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class SignatureSet(records.Record):
    """What the registry holds for one digest, as fetched (bytes, unverified).

    `legacy_manifests`: the manifest at tag `sha256-<hex>.sig` (none when that tag does
    not exist). `bundle_manifests`: referrer manifests of the digest (from the
    referrers API or the `sha256-<hex>` tag index): Sigstore bundles and Notation
    signatures; other artifacts are skipped.
    `blobs`: layer blobs by digest, for both (payloads and bundles); a blob is checked
    against its digest again here.
    """

    __slots__ = (
        "attestation_manifests",
        "blobs",
        "bundle_manifests",
        "legacy_manifests",
        "problems",
    )
    legacy_manifests: tuple[bytes, ...]
    bundle_manifests: tuple[bytes, ...]
    blobs: Mapping[str, bytes]
    #: The manifest at tag `sha256-<hex>.att` (legacy attestations: DSSE envelopes as
    #: layers), when attestations were asked for; attestation bundles are referrers,
    #: among `bundle_manifests`.
    attestation_manifests: tuple[bytes, ...]
    #: What the registry served but could not be used, by blob digest (or by the
    #: manifest or list it concerns): missing, over a size cap, tampered. Each such
    #: signature is refused with its reason; the others still count.
    problems: Mapping[str, str]

    def __init__(
        self,
        legacy_manifests: tuple[bytes, ...] = (),
        bundle_manifests: tuple[bytes, ...] = (),
        blobs: Mapping[str, bytes] = records.FACTORY,
        attestation_manifests: tuple[bytes, ...] = (),
        problems: Mapping[str, str] = records.FACTORY,
    ) -> None:
        if blobs is records.FACTORY:
            blobs = {}
        if problems is records.FACTORY:
            problems = {}
        _set(self, "legacy_manifests", legacy_manifests)
        _set(self, "bundle_manifests", bundle_manifests)
        _set(self, "blobs", blobs)
        _set(self, "attestation_manifests", attestation_manifests)
        _set(self, "problems", problems)

    @property
    def size(self) -> int:
        """Bytes held: what a cache of signature sets is bounded by."""
        return (
            sum(len(m) for m in self.legacy_manifests)
            + sum(len(m) for m in self.bundle_manifests)
            + sum(len(m) for m in self.attestation_manifests)
            + sum(len(b) for b in self.blobs.values())
        )


class Attempt(records.Record):
    """One signature checked against one authority: a metric sample and a log line."""

    __slots__ = ("authority", "format", "reason", "result", "signature")
    authority: str
    format: model.Format
    signature: str  # which one: "bundle sha256:…", "legacy signature layer sha256:…"
    result: model.Result
    reason: str  # empty when verified

    def __init__(
        self,
        authority: str,
        format: model.Format,
        signature: str,
        result: model.Result,
        reason: str,
    ) -> None:
        _set(self, "authority", authority)
        _set(self, "format", format)
        _set(self, "signature", signature)
        _set(self, "result", result)
        _set(self, "reason", reason)


class AuthorityOutcome(records.Record):
    """Whether one authority of a policy vouches for the digest, and why not."""

    __slots__ = ("authority", "format", "kind", "missing", "reason", "signers", "verified")
    authority: str
    kind: Literal["key", "keyless", "notation"]
    verified: bool
    reason: str  # empty when verified
    format: model.Format | None  # of the signature that verified, or that got furthest
    #: Every signer (key or certificate identity) whose signature verified for it.
    signers: frozenset[str]
    #: No signature of the authority's format was found at all.
    missing: bool

    def __init__(
        self,
        authority: str,
        kind: Literal["key", "keyless", "notation"],
        verified: bool,
        reason: str,
        format: model.Format | None = None,
        signers: frozenset[str] = frozenset(),
        missing: bool = False,
    ) -> None:
        _set(self, "authority", authority)
        _set(self, "kind", kind)
        _set(self, "verified", verified)
        _set(self, "reason", reason)
        _set(self, "format", format)
        _set(self, "signers", signers)
        _set(self, "missing", missing)


class VerificationResult(records.Record):
    """What `verify` found for one digest: each authority's outcome and every attempt."""

    __slots__ = ("attempts", "digest", "outcomes", "signatures_found", "threshold")
    digest: registry_model.Digest
    threshold: int
    outcomes: tuple[AuthorityOutcome, ...]
    attempts: tuple[Attempt, ...]
    signatures_found: int

    def __init__(
        self,
        digest: registry_model.Digest,
        threshold: int,
        outcomes: tuple[AuthorityOutcome, ...],
        attempts: tuple[Attempt, ...],
        signatures_found: int,
    ) -> None:
        _set(self, "digest", digest)
        _set(self, "threshold", threshold)
        _set(self, "outcomes", outcomes)
        _set(self, "attempts", attempts)
        _set(self, "signatures_found", signatures_found)

    @property
    def verified(self) -> tuple[str, ...]:
        """Names of the authorities that verified, in policy order."""
        return tuple(outcome.authority for outcome in self.outcomes if outcome.verified)

    @property
    def failures(self) -> tuple[AuthorityOutcome, ...]:
        return tuple(outcome for outcome in self.outcomes if not outcome.verified)

    @property
    def distinct_signers(self) -> int:
        """How many authorities verified with a signer of their own (see count_signers)."""
        return count_signers([o.signers for o in self.outcomes if o.verified])

    @property
    def passed(self) -> bool:
        return self.distinct_signers >= self.threshold

    @property
    def message(self) -> str:
        """One line for a refusal: how many verified, then each failing authority's reason."""
        head = f"{len(self.verified)} of {self.threshold} required authorities verified"
        details = "; ".join(f"{f.authority}: {f.reason}" for f in self.failures)
        return f"{head} ({details})" if details else head


class _Candidate(records.Record):
    """One signature found, read once for every authority; `broken` when unreadable."""

    __slots__ = ("broken", "bundle", "format", "generic", "label", "legacy", "notation", "payload")
    format: model.Format
    label: str
    legacy: LegacySignature | None
    payload: bytes | None  # legacy payload, digest-checked
    bundle: Bundle | None
    notation: notation_verify.SignatureRef | None
    broken: model.Check | None
    #: A problem of the whole lookup (a referrers list that cannot be read): it
    #: concerns every authority, whatever its format.
    generic: bool

    def __init__(
        self,
        format: model.Format,
        label: str,
        legacy: LegacySignature | None = None,
        payload: bytes | None = None,
        bundle: Bundle | None = None,
        notation: notation_verify.SignatureRef | None = None,
        broken: model.Check | None = None,
        generic: bool = False,
    ) -> None:
        _set(self, "format", format)
        _set(self, "label", label)
        _set(self, "legacy", legacy)
        _set(self, "payload", payload)
        _set(self, "bundle", bundle)
        _set(self, "notation", notation)
        _set(self, "broken", broken)
        _set(self, "generic", generic)

    @property
    def is_notation(self) -> bool:
        return self.format == "notation"


def _unreadable(error: Exception, label: str) -> model.Check:
    """The refusal for bytes that could not be read.

    The bytes come from the registry, so from whoever can push there. Input no parser
    expected must refuse that signature, never escape: a raised error could be taken
    for a lookup failure, which `failurePolicy: Ignore` lets through.
    """
    if isinstance(error, model.Refused):
        return error.check
    return model.Check("malformed", f"{label} cannot be read: {type(error).__name__}: {error}")


def _problem(signatures: SignatureSet, digest: str, label: str) -> _Candidate | None:
    problem = signatures.problems.get(digest)
    if problem is None:
        return None
    return _Candidate("legacy", label, broken=model.Check("malformed", f"{label} {problem}"))


def _candidates(signatures: SignatureSet) -> list[_Candidate]:
    found: list[_Candidate] = []
    named: set[str] = set()
    # Bundles first: cosign v3 writes them by default, so they usually decide.
    for index, manifest in enumerate(signatures.bundle_manifests):
        label = f"referrer manifest #{index}"
        try:
            notation_refs = _notation_refs(manifest)
        except Exception as e:
            found.append(_Candidate("notation", label, broken=_unreadable(e, label)))
            continue
        if notation_refs is not None:
            for notation_ref in notation_refs:
                named.add(notation_ref.layer_digest)
                problem = _problem(signatures, notation_ref.layer_digest, notation_ref.label)
                found.append(
                    records.replace(problem, format="notation")
                    if problem is not None
                    else _Candidate("notation", notation_ref.label, notation=notation_ref)
                )
            continue
        try:
            refs = bundle.parse_referrer_manifest(manifest)
        except Exception as e:
            found.append(_Candidate("bundle", label, broken=_unreadable(e, label)))
            continue
        for ref in refs:
            named.add(ref.layer_digest)
            problem = _problem(signatures, ref.layer_digest, ref.label)
            if problem is not None:
                found.append(records.replace(problem, format="bundle"))
                continue
            try:
                parsed = bundle.read_bundle(ref, signatures.blobs)
            except Exception as e:
                found.append(_Candidate("bundle", ref.label, broken=_unreadable(e, ref.label)))
            else:
                found.append(_Candidate("bundle", ref.label, bundle=parsed))
    for index, manifest in enumerate(signatures.legacy_manifests):
        label = f"legacy signature manifest #{index}"
        try:
            layers = legacy.parse_signature_manifest(manifest)
        except Exception as e:
            found.append(_Candidate("legacy", label, broken=_unreadable(e, label)))
            continue
        for layer in layers:
            named.add(layer.layer_digest)
            problem = _problem(signatures, layer.layer_digest, layer.label)
            if problem is not None:
                found.append(records.replace(problem, legacy=layer))
                continue
            try:
                payload = legacy.read_payload(layer, signatures.blobs)
            except Exception as e:
                broken = _unreadable(e, layer.label)
                found.append(_Candidate("legacy", layer.label, legacy=layer, broken=broken))
            else:
                found.append(_Candidate("legacy", layer.label, legacy=layer, payload=payload))
    # Problems with no layer to hang on (a signature manifest or the referrers list
    # itself could not be used) still say why nothing verified.
    for what, reason in signatures.problems.items():
        if what not in named:
            found.append(
                _Candidate("bundle", what, broken=model.Check("malformed", reason), generic=True)
            )
    return found


def _notation_refs(manifest: bytes) -> tuple[notation_verify.SignatureRef, ...] | None:
    """The envelope of a Notation signature manifest, None for any other referrer."""
    if b"application/vnd.cncf.notary.signature" not in manifest:
        return None  # cheap: most referrers are cosign bundles
    from imageward.notation import verify as notation_verify

    return notation_verify.parse_signature_manifest(manifest)


class _Context(records.Record):
    """What a Notation check needs beyond the digest (cosign payloads name only that)."""

    __slots__ = ("blobs", "revocation", "target")
    blobs: Mapping[str, bytes]
    target: model.Target | None
    revocation: notation_revocation.Statuses | None

    def __init__(
        self,
        blobs: Mapping[str, bytes] = records.FACTORY,
        target: model.Target | None = None,
        revocation: notation_revocation.Statuses | None = None,
    ) -> None:
        if blobs is records.FACTORY:
            blobs = {}
        _set(self, "blobs", blobs)
        _set(self, "target", target)
        _set(self, "revocation", revocation)


def _check(
    candidate: _Candidate,
    digest: registry_model.Digest,
    authority: Authority,
    context: _Context,
) -> model.Check:
    try:
        return _check_unguarded(candidate, digest, authority, context)
    except Exception as e:  # see `_unreadable`: refuse this signature, never escape
        return _unreadable(e, candidate.label)


def _check_unguarded(
    candidate: _Candidate,
    digest: registry_model.Digest,
    authority: Authority,
    context: _Context,
) -> model.Check:
    if candidate.broken is not None:
        return candidate.broken
    if isinstance(authority, NotationAuthority):
        assert candidate.notation is not None
        from imageward.notation import verify as notation_verify

        return notation_verify.verify_signature(
            candidate.notation,
            context.blobs,
            digest,
            context.target,
            authority.policy,
            authority=authority.name,
            revocation=context.revocation,
        )
    if candidate.bundle is not None:
        if isinstance(authority, KeyAuthority):
            return bundle.verify_with_key(
                candidate.bundle, digest, authority.key, authority=authority.name
            )
        from imageward.signatures import keyless

        return keyless.verify_bundle(
            candidate.bundle,
            digest,
            authority.identity,
            authority.trusted_root,
            authority=authority.name,
        )
    assert candidate.legacy is not None and candidate.payload is not None
    if isinstance(authority, KeyAuthority):
        return legacy.verify_with_key(
            candidate.legacy, candidate.payload, digest, authority.key, authority=authority.name
        )
    from imageward.signatures import keyless

    return keyless.verify_legacy(
        candidate.legacy,
        candidate.payload,
        digest,
        authority.identity,
        authority.trusted_root,
        authority=authority.name,
    )


def _reads(authority: Authority, candidate: _Candidate) -> bool:
    """Whether an authority reads a signature: its own format (or a lookup problem)."""
    if candidate.generic:
        return True
    return candidate.is_notation == isinstance(authority, NotationAuthority)


def _missing(authority: Authority, candidates: Sequence[_Candidate]) -> str:
    """Why an authority found nothing it reads, naming the other format when present."""
    notation = isinstance(authority, NotationAuthority)
    others = sum(1 for c in candidates if c.is_notation != notation and not c.generic)
    if notation:
        return (
            f"{NO_NOTATION_SIGNATURE} (only cosign signatures)" if others else NO_NOTATION_SIGNATURE
        )
    if others:
        return (
            f"{NO_SIGNATURE} for cosign (only Notation signatures, which need a notation authority)"
        )
    return NO_SIGNATURE


def verify(
    digest: registry_model.Digest,
    signatures: SignatureSet,
    authorities: Sequence[Authority],
    threshold: int,
    *,
    target: model.Target | None = None,
    revocation: notation_revocation.Statuses | None = None,
) -> VerificationResult:
    """Check every authority against the signatures found for `digest`.

    `target` is the media type and size of the manifest `digest` names (a Notation
    payload names all three); `revocation` the statuses `notation.revocation` looked up
    for authorities that check revocation.
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, not {threshold}")
    candidates = _candidates(signatures)
    context = _Context(blobs=signatures.blobs, target=target, revocation=revocation)
    attempts: list[Attempt] = []
    outcomes: list[AuthorityOutcome] = []
    for authority in authorities:
        best: tuple[model.Check, _Candidate] | None = None
        signers: set[str] = set()
        for candidate in candidates:
            if not _reads(authority, candidate):
                continue
            check = _check(candidate, digest, authority, context)
            attempts.append(
                Attempt(
                    authority.name, candidate.format, candidate.label, check.result, check.reason
                )
            )
            if best is None or check.progress > best[0].progress:
                best = (check, candidate)
            if check.verified:
                if isinstance(authority, KeyAuthority):
                    # One key is one signer, whatever it signed: no need to look further.
                    signers.add(f"key {authority.key.fingerprint}")
                    break
                # Keyless and Notation: every signer may count towards a threshold.
                signers.add(check.signer or f"{authority.kind} {authority.name}")
        if best is None:
            outcomes.append(
                AuthorityOutcome(
                    authority.name,
                    authority.kind,
                    False,
                    _missing(authority, candidates),
                    missing=True,
                )
            )
            continue
        check, candidate = best
        outcomes.append(
            AuthorityOutcome(
                authority.name,
                authority.kind,
                check.verified,
                check.reason,
                candidate.format,
                frozenset(signers),
            )
        )
    return VerificationResult(
        digest=digest,
        threshold=threshold,
        outcomes=tuple(outcomes),
        attempts=tuple(attempts),
        signatures_found=len(candidates),
    )


def revocation_chains(
    digest: registry_model.Digest,
    signatures: SignatureSet,
    authorities: Sequence[Authority],
    *,
    target: model.Target | None = None,
) -> list[tuple[x509.Certificate, ...]]:
    """The chains whose revocation status the authorities that check it need: those of
    Notation signatures that pass everything else and reach the trust store."""
    wanting = [
        a for a in authorities if isinstance(a, NotationAuthority) and a.policy.revocation != "skip"
    ]
    if not wanting:
        return []
    from imageward.notation import verify as notation_verify

    chains: dict[bytes, tuple[x509.Certificate, ...]] = {}
    for candidate in _candidates(signatures):
        if candidate.notation is None or candidate.broken is not None:
            continue
        for authority in wanting:
            try:
                found = notation_verify.trusted_chain(
                    candidate.notation,
                    signatures.blobs,
                    digest,
                    target,
                    authority.policy,
                    authority=authority.name,
                )
            except Exception:  # a signature that cannot be read has no chain to look up
                found = None
            if found is not None:
                chains[b"".join(c.fingerprint(hashes.SHA256()) for c in found)] = found
    return list(chains.values())


def count_signers(signer_sets: Sequence[frozenset[str]]) -> int:
    """How many authorities can each be credited to a different signer.

    A threshold of N means N independent signers: one key listed under two authority
    names, or one certificate identity two keyless authorities both accept, is one
    signer. This is the size of a maximum matching between the verified authorities
    and the signers that verified them (augmenting paths; a policy has at most a few
    dozen authorities).
    """
    owner: dict[str, int] = {}

    def assign(index: int, seen: set[str]) -> bool:
        for signer in sorted(signer_sets[index]):
            if signer in seen:
                continue
            seen.add(signer)
            if signer not in owner or assign(owner[signer], seen):
                owner[signer] = index
                return True
        return False

    return sum(1 for index in range(len(signer_sets)) if assign(index, set()))
