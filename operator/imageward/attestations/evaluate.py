"""One policy's attestation entry against what an image carries: pass, fail or error.

An attestation counts, as a signature does, only for the digest it names: for an
index, the index's own attestations, or, for each platform manifest a node could
select, that manifest's (with the index's signers counted too); one attested entry
never vouches for its siblings. The threshold counts distinct signers of statements
of the entry's predicate type; the rules judge the newest verified statement.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Literal

from imageward.attestations import cel, rules
from imageward.attestations import verify as attestations_verify
from imageward.policy import model
from imageward.registry import model as registry_model
from imageward.signatures import coverage as signatures_coverage
from imageward.signatures import verify as signatures_verify

Result = Literal["pass", "fail", "error"]


@dataclasses.dataclass(frozen=True, slots=True)
class LoadedEntry:
    """An entry as the checker uses it: authorities resolved, conditions compiled."""

    rule: model.Attestation
    authorities: tuple[signatures_verify.Authority, ...]
    programs: tuple[cel.Program, ...] = ()

    @property
    def name(self) -> str:
        return self.rule.name


@dataclasses.dataclass(frozen=True, slots=True)
class Pulled:
    """A platform manifest a node could select, and its attestations' verification."""

    label: str
    digest: registry_model.Digest
    verification: attestations_verify.Verification


@dataclasses.dataclass(frozen=True, slots=True)
class EntryResult:
    name: str
    result: Result
    message: str
    """What failed (fail), what passed (pass) or which lookup failed (error)."""

    changes_at: datetime.datetime | None = None
    """When a `pass` or `fail` could change by time alone (a cache must not keep it)."""


def _threshold_text(entry: LoadedEntry, verified: int, failures: Sequence[tuple[str, str]]) -> str:
    total = len(entry.authorities)
    reasons = "; ".join(f"{name}: {reason}" for name, reason in failures)
    return (
        f"is verified by {verified} of {total} authorities, under threshold "
        f"{entry.rule.threshold}" + (f" ({reasons})" if reasons else "")
    )


def evaluate_entry(
    entry: LoadedEntry,
    top: attestations_verify.Verification,
    pulled: Sequence[Pulled] = (),
    *,
    now: datetime.datetime,
) -> EntryResult:
    """`top`: the referenced digest's attestations; `pulled`: for an index whose own do
    not meet the threshold, those of every platform manifest a node could select."""
    rule = entry.rule
    names = [a.name for a in entry.authorities]
    coverage = signatures_coverage.evaluate_coverage(
        names,
        top.result,
        [signatures_coverage.Pulled(p.label, p.digest, p.verification.result) for p in pulled],
    )
    anything_verified = bool(top.statements) or any(p.verification.statements for p in pulled)
    if not anything_verified and not rule.required:
        found = top.found + sum(p.verification.found for p in pulled)
        unusable = f" ({found} found, none verified)" if found else ""
        return EntryResult(rule.name, "pass", f"no attestation present{unusable}: optional")
    if coverage.verified < rule.threshold:
        if (
            not anything_verified
            and top.found == 0
            and not any(p.verification.found for p in pulled)
        ):
            return EntryResult(
                rule.name,
                "fail",
                f"has no attestation of predicateType {rule.predicate_type} (required)",
            )
        return EntryResult(
            rule.name, "fail", _threshold_text(entry, coverage.verified, coverage.failures)
        )
    # Which statements each digest the runtime may pull is judged by.
    top_vouches = top.result.distinct_signers >= rule.threshold
    judged: list[tuple[str | None, Sequence[attestations_verify.Statement]]] = []
    if top_vouches or not pulled:
        judged.append((None, top.statements))
    else:
        for item in pulled:
            judged.append((item.label, (*top.statements, *item.verification.statements)))
    failures: list[str] = []
    notes: list[str] = []
    changes: list[datetime.datetime] = []
    for label, statements in judged:
        if not statements:
            continue
        statement = rules.newest(statements, rule.predicate_type)
        verdict = rules.judge(rule, entry.programs, statement, now)
        where = f"{label}: " if label else ""
        failures += [f"{where}{text}" for text in verdict.failures]
        if not notes:
            notes += verdict.notes
        if verdict.changes_at is not None:
            changes.append(verdict.changes_at)
    changes_at = min(changes) if changes else None
    if failures:
        return EntryResult(rule.name, "fail", "; ".join(failures), changes_at)
    signers = ", ".join(o.authority for o in top.result.outcomes if o.verified) or ", ".join(
        sorted({o.authority for p in pulled for o in p.verification.result.outcomes if o.verified})
    )
    message = "; ".join([f"verified by {signers}", *notes])
    return EntryResult(rule.name, "pass", message, changes_at)
