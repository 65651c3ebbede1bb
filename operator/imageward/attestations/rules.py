"""What a verified statement must satisfy: the built-in rules and CEL conditions.

Pure: `now` comes in. Each rule says what is wrong in words a developer can act on,
and when its answer could change by time alone (`changes_at`), so that a cached
pass never outlives the scan age, an ignore's `until` or the statement's age limit.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any, Final

from imageward.attestations import cel
from imageward.attestations import verify as attestations_verify
from imageward.policy import model

#: How far in the future a signed time may be (clocks differ) before it is refused:
#: a scan "finished" next year would otherwise stay fresh for a year.
CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
#: A condition that reads `now` is re-evaluated at least this often.
NOW_RESOLUTION: Final = datetime.timedelta(seconds=60)
MAX_LISTED: Final = 5

SLSA_V1: Final = "https://slsa.dev/provenance/v1"
SLSA_V02: Final = "https://slsa.dev/provenance/v0.2"
SPDX: Final = "https://spdx.dev/Document"
CYCLONEDX: Final = "https://cyclonedx.org/bom"
COSIGN_CUSTOM: Final = "https://cosign.sigstore.dev/attestation/v1"

#: Where each predicate type records when it was made (the first present wins).
TIME_FIELDS: Final[tuple[tuple[str, tuple[tuple[str, ...], ...]], ...]] = (
    (model.VULN_PREDICATE_TYPE, (("metadata", "scanFinishedOn"),)),
    (SLSA_V1, (("runDetails", "metadata", "finishedOn"), ("runDetails", "metadata", "startedOn"))),
    (SLSA_V02, (("metadata", "buildFinishedOn"), ("metadata", "buildStartedOn"))),
    ("https://slsa.dev/provenance/v0.1", (("metadata", "buildFinishedOn"),)),
    (SPDX, (("creationInfo", "created"),)),
    (CYCLONEDX, (("metadata", "timestamp"),)),
    ("https://openvex.dev/ns", (("timestamp",),)),
)
#: cosign's generic predicate (`--type custom` or a URI): {"Data": …, "Timestamp": …}.
COSIGN_TIMESTAMP: Final = ("Timestamp",)


@dataclasses.dataclass(frozen=True, slots=True)
class Judgement:
    failures: tuple[str, ...]
    notes: tuple[str, ...]  # what passed, for `imageward check`'s message
    changes_at: datetime.datetime | None = None


def _lookup(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _time_paths(predicate_type: str) -> tuple[tuple[str, ...], ...]:
    for known, paths in TIME_FIELDS:
        if predicate_type == known or predicate_type.startswith(known + "/"):
            return paths
    return (COSIGN_TIMESTAMP,)


def statement_time(
    predicate_type: str, predicate: Any
) -> tuple[datetime.datetime | None, str | None]:
    """When the statement's predicate says it was made, and the field it says so in."""
    for path in _time_paths(predicate_type):
        value = _lookup(predicate, path)
        if value is None:
            continue
        try:
            return model.parse_time(value), ".".join(path)
        except (ValueError, TypeError):
            return None, ".".join(path)
    return None, None


def newest(
    statements: Sequence[attestations_verify.Statement], predicate_type: str
) -> attestations_verify.Statement:
    """The statement the rules judge: the newest by its own time (the last found among
    equals or untimed ones)."""
    floor = datetime.datetime.min.replace(tzinfo=datetime.UTC)

    def key(item: tuple[int, attestations_verify.Statement]) -> tuple[datetime.datetime, int]:
        when, _ = statement_time(predicate_type, item[1].predicate)
        return (when or floor, item[0])

    return max(enumerate(statements), key=key)[1]


def describe_age(age: datetime.timedelta) -> str:
    seconds = int(age.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


def _stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _earliest(*times: datetime.datetime | None) -> datetime.datetime | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


def _age_rule(
    when: datetime.datetime | None,
    field: str | None,
    limit: model.Duration,
    now: datetime.datetime,
    *,
    rule: str,
    verb: str,
) -> tuple[str | None, str | None, datetime.datetime | None]:
    """(failure, note, changes_at) of an age limit."""
    if when is None:
        if field is not None:
            return f"{field} is not an RFC 3339 time, required by {rule} {limit.text}", None, None
        return None, None, None
    if when > now + CLOCK_SKEW:
        return (
            f"{field} {_stamp(when)} is in the future, refused by {rule} {limit.text}",
            None,
            None,
        )
    age = max(now - when, datetime.timedelta(0))
    if age > limit.delta:
        return (
            f"{verb} {describe_age(age)} ago ({field} {_stamp(when)}), over {rule} {limit.text}",
            None,
            None,
        )
    return None, f"{verb} {describe_age(age)} ago", when + limit.delta


def _findings(predicate: Any) -> list[tuple[str, str]] | str:
    """(id, severity) of every finding of a Trivy report, or why it cannot be read."""
    result = _lookup(predicate, ("scanner", "result"))
    if not isinstance(result, dict):
        return "has no scanner.result object (the cosign vulnerability predicate)"
    targets = result.get("Results")
    if targets is None:
        # Trivy always writes Results (one entry per target, findings or not): a report
        # without it is some other scanner's, whose findings imageward cannot see.
        return "has no scanner.result.Results list (imageward reads Trivy's report layout)"
    if not isinstance(targets, list):
        return "has a scanner.result.Results that is not a list"
    found: list[tuple[str, str]] = []
    for target in targets:
        if not isinstance(target, dict):
            return "has a scanner.result.Results entry that is not an object"
        findings = target.get("Vulnerabilities")
        if findings is None:
            continue
        if not isinstance(findings, list):
            return "has Vulnerabilities that are not a list"
        for finding in findings:
            identifier = finding.get("VulnerabilityID") if isinstance(finding, dict) else None
            severity = finding.get("Severity") if isinstance(finding, dict) else None
            if not isinstance(identifier, str) or not isinstance(severity, str):
                return "has a finding without a VulnerabilityID and Severity"
            found.append((identifier, severity.upper()))
    return found


def _vulnerabilities(
    rule: model.Vulnerabilities, predicate: Any, now: datetime.datetime
) -> tuple[list[str], list[str], datetime.datetime | None]:
    failures: list[str] = []
    notes: list[str] = []
    changes: list[datetime.datetime | None] = []
    if rule.max_scan_age is not None:
        when, field = statement_time(model.VULN_PREDICATE_TYPE, predicate)
        if field is None:
            failures.append(
                f"has no metadata.scanFinishedOn, required by vulnerabilities.maxScanAge "
                f"{rule.max_scan_age.text}"
            )
        else:
            failure, note, change = _age_rule(
                when,
                f"metadata.{field.rpartition('.')[2]}",
                rule.max_scan_age,
                now,
                rule="vulnerabilities.maxScanAge",
                verb="was scanned",
            )
            failures += [failure] if failure else []
            notes += [note] if note else []
            changes.append(change)
    if rule.forbidden_severities:
        findings = _findings(predicate)
        if isinstance(findings, str):
            failures.append(f"scan {findings}")
            return failures, notes, _earliest(*changes)
        ignores = {ignore.id.upper(): ignore for ignore in rule.ignore}
        forbidden: dict[str, str] = {}
        for identifier, severity in findings:
            if severity not in rule.forbidden_severities:
                continue
            ignore = ignores.get(identifier.upper())
            if ignore is not None and (ignore.until is None or now < ignore.until):
                changes.append(ignore.until)
                continue
            shown = severity
            if ignore is not None and ignore.until is not None:
                shown = f"{severity}, its ignore expired {_stamp(ignore.until)}"
            forbidden.setdefault(identifier, shown)
        listed = ", ".join(rule.forbidden_severities)
        if forbidden:
            items = [f"{identifier} ({shown})" for identifier, shown in forbidden.items()]
            text = ", ".join(items[:MAX_LISTED])
            if len(items) > MAX_LISTED:
                text += f" and {len(items) - MAX_LISTED} more"
            count = len(items)
            failures.append(
                f"has {count} finding{'s' if count != 1 else ''} of a severity forbidden by "
                f"vulnerabilities.forbiddenSeverities [{listed}]: {text}"
            )
        else:
            notes.append(f"no {listed} finding")
    return failures, notes, _earliest(*changes)


def judge(
    rule: model.Attestation,
    programs: Sequence[cel.Program],
    statement: attestations_verify.Statement,
    now: datetime.datetime,
) -> Judgement:
    """Every rule of an attestation entry against its newest verified statement."""
    failures: list[str] = []
    notes: list[str] = []
    changes: list[datetime.datetime | None] = []
    predicate = statement.predicate
    if rule.vulnerabilities is not None:
        found, noted, change = _vulnerabilities(rule.vulnerabilities, predicate, now)
        failures += found
        notes += noted
        changes.append(change)
    if rule.max_age is not None:
        when, field = statement_time(rule.predicate_type, predicate)
        if field is None:
            failures.append(
                f"has no time imageward can read for predicateType {rule.predicate_type} "
                f"(looked for {', '.join('.'.join(p) for p in _time_paths(rule.predicate_type))}), "
                f"required by maxAge {rule.max_age.text}"
            )
        else:
            failure, note, change = _age_rule(
                when, f"predicate.{field}", rule.max_age, now, rule="maxAge", verb="was made"
            )
            failures += [failure] if failure else []
            notes += [note] if note else []
            changes.append(change)
    for condition, program in zip(rule.conditions, programs, strict=True):
        answer = cel.evaluate(program, statement.statement, predicate, now)
        if program.uses_now:
            changes.append(now + NOW_RESOLUTION)
        if answer.error:
            failures.append(
                f"condition {condition.expression!r} could not be evaluated: {answer.error}"
            )
        elif answer.value is False:
            failures.append(
                f"condition failed: {condition.message}"
                if condition.message
                else f"condition failed: {condition.expression}"
            )
    if rule.conditions and not any(f.startswith("condition") for f in failures):
        count = len(rule.conditions)
        notes.append(f"{count} condition{'s hold' if count != 1 else ' holds'}")
    return Judgement(tuple(failures), tuple(notes), _earliest(*changes))
