"""Whether the signatures found vouch for what the runtime will pull.

A signature counts only for the digest it names. The runtime pulls the digest the pod
references (a single manifest, or an index) and, for an index, the platform manifest
its node selects. So an index is signed when its own digest verifies, or when every
platform manifest a node could select for the pod verifies (each on its own or
through the index's signature): one signed entry never vouches for its siblings.

The threshold counts distinct signers (see `verify.count_signers`) on the weakest of
those digests: three authorities that verified linux/amd64 and one that verified
linux/arm64 meet `threshold: 1`, not `threshold: 3`, because a node pulling arm64
runs something only one signer vouched for.

Pure: the checker verifies each digest's signatures (`verify.verify`) and hands the
results in.
"""

from __future__ import annotations

from collections.abc import Sequence

from imageward import records
from imageward.registry import model as registry_model
from imageward.signatures import model, verify

_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class Pulled(records.Record):
    """One platform manifest a node could select, and what verified its digest."""

    __slots__ = ("digest", "label", "result")
    label: str  # "linux/arm64 (sha256:9f2c1a7b3d4e…)", for messages
    digest: registry_model.Digest
    result: verify.VerificationResult

    def __init__(
        self,
        label: str,
        digest: registry_model.Digest,
        result: verify.VerificationResult,
    ) -> None:
        _set(self, "label", label)
        _set(self, "digest", digest)
        _set(self, "result", result)


class Coverage(records.Record):
    """How far the authorities vouch for everything the runtime may pull."""

    __slots__ = ("failures", "verified")
    verified: int
    """Distinct signers vouching for the least-covered digest the runtime may pull."""

    failures: tuple[tuple[str, str], ...]
    """(authority, why it does not vouch for everything pulled), in policy order."""

    def __init__(
        self,
        verified: int,
        failures: tuple[tuple[str, str], ...],
    ) -> None:
        _set(self, "verified", verified)
        _set(self, "failures", failures)


def _outcomes(result: verify.VerificationResult) -> dict[str, verify.AuthorityOutcome]:
    return {outcome.authority: outcome for outcome in result.outcomes}


def _missing(outcome: verify.AuthorityOutcome | None) -> bool:
    """No signature of the authority's format at all (not one that failed)."""
    return outcome is None or outcome.missing or outcome.reason == verify.NO_SIGNATURE


def _signers(outcome: verify.AuthorityOutcome | None) -> frozenset[str]:
    return outcome.signers if outcome is not None and outcome.verified else frozenset()


def evaluate_coverage(
    authorities: Sequence[str],
    top: verify.VerificationResult,
    pulled: Sequence[Pulled] = (),
) -> Coverage:
    """How far `authorities` vouch for an image: `top` is the result for the digest the
    pod references; `pulled`, for an index, the results of the platform manifests its
    nodes could select (empty for a single manifest)."""
    on_top = _outcomes(top)
    per_entry = [(entry, _outcomes(entry.result)) for entry in pulled]

    def vouching(entry_outcomes: dict[str, verify.AuthorityOutcome] | None) -> int:
        sets = []
        for name in authorities:
            signers = _signers(on_top.get(name))
            if entry_outcomes is not None:
                signers = signers | _signers(entry_outcomes.get(name))
            if signers:
                sets.append(signers)
        return verify.count_signers(sets)

    verified = min(vouching(outcomes) for _, outcomes in per_entry) if per_entry else vouching(None)
    failures: list[tuple[str, str]] = []
    for name in authorities:
        top_outcome = on_top.get(name)
        if top_outcome is not None and top_outcome.verified:
            continue
        top_reason = top_outcome.reason if top_outcome is not None else verify.NO_SIGNATURE
        top_missing = _missing(top_outcome)
        if not per_entry:
            failures.append((name, top_reason))
            continue
        signed = [entry for entry, outcomes in per_entry if _signers(outcomes.get(name))]
        missing = [
            (entry, outcomes.get(name))
            for entry, outcomes in per_entry
            if not _signers(outcomes.get(name))
        ]
        if not missing:
            continue
        first, first_outcome = missing[0]
        entry_reason = first_outcome.reason if first_outcome is not None else verify.NO_SIGNATURE
        entry_missing = _missing(first_outcome)
        if signed:
            failures.append(
                (
                    name,
                    f"signs {', '.join(e.label for e in signed)} but not the index or "
                    f"{', '.join(e.label for e, _ in missing)} ({first.label}: {entry_reason})",
                )
            )
        elif top_missing and not entry_missing:
            failures.append((name, f"{first.label}: {entry_reason}"))
        elif top_missing:
            where = ", ".join(e.label for e, _ in missing)
            failures.append((name, f"{top_reason} on the index or on {where}"))
        else:
            failures.append((name, top_reason))
    return Coverage(verified=verified, failures=tuple(failures))


def build_label(image: registry_model.PlatformImage) -> str:
    shown = str(image.platform) if image.platform is not None else "platform manifest"
    return f"{shown} ({model.short(image.digest)})"
