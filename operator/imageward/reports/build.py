"""From check results to PolicyReports, `status.violations` and gauges. Pure.

Per workload (a `targets.Target`) and per policy rule, one result: `fail` (Enforce and
Audit policies: the report is where Audit results go), `warn` (Warn policies), `error`
(the rule could not be decided: an outage, a policy that cannot be used), `skip` (an
ImagePolicyException waived it; the result names the exception), or `pass` (every image
of the workload that the policy matches passes the rule). Exceptions are applied here,
at the time of the build, so an exception that expires turns its `skip` into `fail`
without a registry lookup.

Reports are bounded: the summary counts every result, the list keeps the first
`max_results` (fail first, then error, warn, skip, pass) within `MAX_REPORT_BYTES`; the
annotation `imageward.io/results-omitted` says how many were left out. Timestamps are
when a result was first seen as it is (kept across builds), so a report whose results
did not change is byte for byte the same and is not written again.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from imageward import constants, errors
from imageward.exceptions import evaluate as exceptions_evaluate
from imageward.exceptions import model as exceptions_model
from imageward.policy import evaluate, model
from imageward.registry import model as registry_model
from imageward.registry import reference as registry_reference
from imageward.reports import targets

REPORT_GROUP: Final = "wgpolicyk8s.io"
REPORT_VERSION: Final = "v1alpha2"
REPORT_API_VERSION: Final = f"{REPORT_GROUP}/{REPORT_VERSION}"
POLICY_REPORTS: Final = "policyreports"
CLUSTER_POLICY_REPORTS: Final = "clusterpolicyreports"
REPORT_NAME: Final = "imageward"
SOURCE: Final = "imageward"
LABELS: Final = {constants.LABEL_MANAGED_BY: constants.MANAGER_NAME}
SELECTOR: Final = f"{constants.LABEL_MANAGED_BY}={constants.MANAGER_NAME}"
ANNOTATION_OMITTED: Final = "imageward.io/results-omitted"

RESULTS: Final = ("fail", "error", "warn", "skip", "pass")
_RANK: Final = {result: rank for rank, result in enumerate(RESULTS)}
#: A report's results, serialised, stay under this (etcd takes 1.5 MiB per object).
MAX_REPORT_BYTES: Final = 512 * 1024
MAX_MESSAGE: Final = 1024
MAX_LISTED: Final = 5  # images / namespaces named in one result before "and N more"

CheckKey = tuple[targets.View, tuple[tuple[str, str], ...]]

#: Rules decided by the image reference alone (never undecided by an outage).
STATIC_RULES: Final = frozenset(
    {
        constants.RULE_ALLOWED_REGISTRIES,
        constants.RULE_FORBIDDEN_TAGS,
        constants.RULE_REQUIRE_DIGEST,
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class ImageResult:
    """One image of one view, checked: its digest and one result per matching policy."""

    digest: registry_model.Digest | None
    results: Mapping[str, evaluate.PolicyResult]


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyInfo:
    name: str
    mode: model.Mode
    rules: tuple[str, ...]
    allow_exceptions: bool
    usable: bool


@dataclasses.dataclass(slots=True)
class _Entry:
    messages: dict[str, None] = dataclasses.field(default_factory=dict)
    images: dict[str, None] = dataclasses.field(default_factory=dict)
    digests: dict[str, None] = dataclasses.field(default_factory=dict)
    reason: str = ""
    expires: datetime.datetime | None = None


EntryKey = tuple[str, str, str, str]  # policy, rule, result, exception ("" for none)
SeenKey = tuple[str, ...]


@dataclasses.dataclass(slots=True)
class Rendered:
    reports: dict[str, dict[str, Any]]
    """PolicyReport bodies by namespace (a namespace with no result has none)."""

    cluster: dict[str, Any]
    """The ClusterPolicyReport body."""

    violations: dict[str, int]
    """Per policy: workloads with a fail or warn result."""

    running: dict[tuple[str, str], int]
    """Per (policy, rule): workloads with a fail or warn result."""

    worst: dict[targets.TargetKey, str]
    """Per workload: its worst result, "none" when no policy matches its images."""

    first_seen: dict[SeenKey, int]
    next_change: datetime.datetime | None
    """When an exception in use expires (the build changes then)."""


def build_rules(policy: model.ImagePolicy) -> tuple[str, ...]:
    """The rule ids a policy checks (what a `pass` result is given for)."""
    rules = policy.rules
    present = (
        (rules.allowed_registries is not None, constants.RULE_ALLOWED_REGISTRIES),
        (bool(rules.forbidden_tags), constants.RULE_FORBIDDEN_TAGS),
        (rules.require_digest, constants.RULE_REQUIRE_DIGEST),
        (rules.max_compressed_size is not None, constants.RULE_MAX_COMPRESSED_SIZE),
        (rules.max_layers is not None, constants.RULE_MAX_LAYERS),
        (rules.max_layer_size is not None, constants.RULE_MAX_LAYER_SIZE),
        (rules.forbid_root_user, constants.RULE_FORBID_ROOT_USER),
        (rules.signatures is not None, constants.RULE_SIGNATURES),
        (bool(rules.attestations), constants.RULE_ATTESTATIONS),
    )
    found = tuple(rule for enabled, rule in present if enabled)
    return found or ((constants.RULE_PIN_DIGEST,) if policy.pin_digest else ())


def build_policy_info(name: str, policy: model.ImagePolicy | None) -> PolicyInfo:
    if policy is None:
        return PolicyInfo(name, model.Mode.ENFORCE, (), False, False)
    return PolicyInfo(name, policy.mode, build_rules(policy), policy.allow_exceptions, True)


def classify(mode: model.Mode, rule: str) -> str:
    if rule == constants.RULE_LOOKUP:
        return "error"
    return "warn" if mode is model.Mode.WARN else "fail"


def _listed(items: Iterable[str], *, limit: int = MAX_LISTED) -> str:
    found = list(items)
    text = ", ".join(found[:limit])
    return f"{text} and {len(found) - limit} more" if len(found) > limit else text


def _message(entry: _Entry) -> str:
    messages = list(entry.messages)
    text = "; ".join(messages[:MAX_LISTED])
    if len(messages) > MAX_LISTED:
        text += f"; and {len(messages) - MAX_LISTED} more"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _evaluate_target(
    target: targets.Target,
    checks: Mapping[CheckKey, Mapping[str, ImageResult]],
    labels: tuple[tuple[str, str], ...],
    policies: Mapping[str, PolicyInfo],
    exceptions: Sequence[exceptions_model.PolicyException],
    now: datetime.datetime,
) -> tuple[dict[EntryKey, _Entry], datetime.datetime | None]:
    entries: dict[EntryKey, _Entry] = {}
    matched: dict[str, dict[str, None]] = {}
    next_change: datetime.datetime | None = None
    allows = {p.name: p.allow_exceptions for p in policies.values() if p.usable}
    views = sorted(target.views, key=lambda v: (v.images, v.labels))
    for view in views:
        per_image = checks.get((view, labels))
        if per_image is None:
            continue  # not scanned yet
        for image, found in per_image.items():
            results = [r for name, r in found.results.items() if name in policies]
            for result in results:
                matched.setdefault(result.policy, {})[image] = None
            try:
                reference = registry_reference.parse_reference(image)
            except errors.InvalidReferenceError:
                uses: list[exceptions_evaluate.Use] = []
            else:
                results, uses = exceptions_evaluate.apply_exceptions(
                    results,
                    reference=reference,
                    image=image,
                    namespace=view.namespace,
                    pod_labels=view.pod_labels,
                    exceptions=exceptions,
                    allows=allows,
                    now=now,
                )
            for result in results:
                for violation in result.violations:
                    key = (result.policy, violation.rule, classify(result.mode, violation.rule), "")
                    entry = entries.setdefault(key, _Entry())
                    entry.messages[violation.message] = None
                    entry.images[image] = None
                    if found.digest:
                        entry.digests[found.digest] = None
            for use in uses:
                if use.state != "applied":
                    continue
                next_change = use.expires if next_change is None else min(next_change, use.expires)
                for violation in use.waived:
                    entry = entries.setdefault(
                        (use.policy, violation.rule, "skip", use.name), _Entry()
                    )
                    entry.messages[
                        f"waived by ImagePolicyException {use.key} until "
                        f"{exceptions_evaluate.build_time_text(use.expires)} ({use.reason}): "
                        f"{violation.message}"
                    ] = None
                    entry.images[image] = None
                    entry.reason = use.reason
                    entry.expires = use.expires
    for policy, images in matched.items():
        info = policies[policy]
        if not info.usable:
            continue
        undecided = any(k[0] == policy and k[2] == "error" for k in entries)
        for rule in info.rules:
            if any(k[0] == policy and k[1] == rule for k in entries):
                continue
            if undecided and rule not in STATIC_RULES:
                continue  # its facts could not be fetched: neither pass nor fail
            entry = entries.setdefault((policy, rule, "pass", ""), _Entry())
            verb = "passes" if len(images) == 1 else "pass"
            entry.messages[f"ImagePolicy {policy}: {_listed(images)} {verb} {rule}"] = None
            entry.images.update(images)
    return entries, next_change


def _timestamp(seen: dict[SeenKey, int], key: SeenKey, now: int) -> dict[str, int]:
    return {"seconds": seen.setdefault(key, now), "nanos": 0}


def _result(
    target: targets.Target,
    key: EntryKey,
    entry: _Entry,
    policies: Mapping[str, PolicyInfo],
    seen: dict[SeenKey, int],
    now: int,
) -> dict[str, Any]:
    policy, rule, result, exception = key
    properties = {"images": _listed(entry.images)}
    if entry.digests:
        properties["digests"] = _listed(entry.digests)
    if policy in policies:
        properties["mode"] = policies[policy].mode.value
    if exception:
        properties["exception"] = exception
        if entry.expires is not None:
            properties["expires"] = exceptions_evaluate.build_time_text(entry.expires)
    resource = {
        "apiVersion": target.api_version,
        "kind": target.kind,
        "name": target.name,
        "namespace": target.namespace,
    }
    if target.uid:
        resource["uid"] = target.uid
    return {
        "source": SOURCE,
        "policy": policy,
        "rule": rule,
        "result": result,
        "message": _message(entry),
        "scored": True,
        "resources": [resource],
        "properties": properties,
        "timestamp": _timestamp(seen, (target.namespace, target.kind, target.name, *key), now),
    }


def _sort_key(result: Mapping[str, Any]) -> tuple[Any, ...]:
    resource = result.get("resources", [{}])[0]
    return (
        _RANK[result["result"]],
        resource.get("kind", ""),
        resource.get("name", ""),
        result["policy"],
        result["rule"],
        result.get("properties", {}).get("exception", ""),
    )


def _bounded(results: list[dict[str, Any]], max_results: int) -> tuple[list[dict[str, Any]], int]:
    results.sort(key=_sort_key)
    kept: list[dict[str, Any]] = []
    size = 0
    for result in results[:max_results]:
        size += len(json.dumps(result, separators=(",", ":"))) + 1
        if size > MAX_REPORT_BYTES:
            break
        kept.append(result)
    return kept, len(results) - len(kept)


def _summary(results: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(("pass", "fail", "warn", "error", "skip"), 0)
    for result in results:
        counts[result["result"]] += 1
    return counts


def _report(
    kind: str,
    results: list[dict[str, Any]],
    *,
    namespace: str | None,
    max_results: int,
) -> dict[str, Any]:
    summary = _summary(results)
    kept, omitted = _bounded(results, max_results)
    metadata: dict[str, Any] = {"name": REPORT_NAME, "labels": dict(LABELS)}
    if namespace is not None:
        metadata["namespace"] = namespace
    if omitted:
        metadata["annotations"] = {ANNOTATION_OMITTED: str(omitted)}
    return {
        "apiVersion": REPORT_API_VERSION,
        "kind": kind,
        "metadata": metadata,
        "summary": summary,
        "results": kept,
    }


def build_reports(
    targets_: Mapping[targets.TargetKey, targets.Target],
    checks: Mapping[CheckKey, Mapping[str, ImageResult]],
    namespace_labels: Mapping[str, tuple[tuple[str, str], ...]],
    policies: Mapping[str, PolicyInfo],
    exceptions: Mapping[str, Sequence[exceptions_model.PolicyException]],
    *,
    now: datetime.datetime,
    first_seen: Mapping[SeenKey, int],
    max_results: int,
) -> Rendered:
    seconds = int(now.timestamp())
    seen: dict[SeenKey, int] = {}
    previous = dict(first_seen)
    per_namespace: dict[str, list[dict[str, Any]]] = {}
    violations = dict.fromkeys((p for p in policies), 0)
    running: dict[tuple[str, str], int] = {}
    worst: dict[targets.TargetKey, str] = {}
    cluster: dict[tuple[str, str, str], dict[str, dict[str, None]]] = {}
    next_change: datetime.datetime | None = None
    for key in sorted(targets_):
        target = targets_[key]
        entries, changes = _evaluate_target(
            target,
            checks,
            namespace_labels.get(target.namespace, ()),
            policies,
            exceptions.get(target.namespace, ()),
            now,
        )
        if changes is not None:
            next_change = changes if next_change is None else min(next_change, changes)
        if not entries:
            worst[key] = "none"
            continue
        worst[key] = min((k[2] for k in entries), key=_RANK.__getitem__)
        bad_policies: set[str] = set()
        for entry_key, entry in entries.items():
            policy, rule, result, _ = entry_key
            if result in ("fail", "warn"):
                bad_policies.add(policy)
                running[(policy, rule)] = running.get((policy, rule), 0) + 1
            cluster.setdefault((policy, rule, result), {}).setdefault(target.namespace, {})[
                f"{target.kind}/{target.name}"
            ] = None
            seen_key: SeenKey = (target.namespace, target.kind, target.name, *entry_key)
            if seen_key in previous:
                seen[seen_key] = previous[seen_key]
            per_namespace.setdefault(target.namespace, []).append(
                _result(target, entry_key, entry, policies, seen, seconds)
            )
        for policy in bad_policies:
            violations[policy] = violations.get(policy, 0) + 1
    reports = {
        namespace: _report("PolicyReport", results, namespace=namespace, max_results=max_results)
        for namespace, results in per_namespace.items()
    }
    cluster_results = []
    for (policy, rule, result), namespaces in cluster.items():
        count = sum(len(names) for names in namespaces.values())
        verb = {
            "fail": "fail",
            "warn": "fail (Warn mode)",
            "error": "could not be checked for",
            "skip": "are let off by ImagePolicyExceptions for",
            "pass": "pass",
        }[result]
        seen_key = ("", "ImagePolicy", policy, policy, rule, result, "")
        if seen_key in previous:
            seen[seen_key] = previous[seen_key]
        cluster_results.append(
            {
                "source": SOURCE,
                "policy": policy,
                "rule": rule,
                "result": result,
                "message": (
                    f"{count} running workload{'s' if count != 1 else ''} {verb} {rule} of "
                    f"ImagePolicy {policy}, in namespace{'s' if len(namespaces) != 1 else ''} "
                    f"{_listed(sorted(namespaces))}"
                ),
                "scored": True,
                "resources": [
                    {"apiVersion": constants.API_VERSION, "kind": "ImagePolicy", "name": policy}
                ],
                "properties": {
                    "workloads": str(count),
                    "namespaces": _listed(sorted(namespaces), limit=20),
                },
                "timestamp": _timestamp(seen, seen_key, seconds),
            }
        )
    cluster_body = _report(
        "ClusterPolicyReport", cluster_results, namespace=None, max_results=max_results
    )
    cluster_body["summary"] = _summary(
        result for results in per_namespace.values() for result in results
    )
    return Rendered(
        reports=reports,
        cluster=cluster_body,
        violations=violations,
        running=running,
        worst=worst,
        first_seen=seen,
        next_change=next_change,
    )


def parse_first_seen(body: Mapping[str, Any]) -> dict[SeenKey, int]:
    """The timestamps of a report written before (after a restart, results that did not
    change keep them, so the report is not rewritten)."""
    found: dict[SeenKey, int] = {}
    cluster = body.get("kind") == "ClusterPolicyReport"
    for result in body.get("results") or []:
        if not isinstance(result, Mapping):
            continue
        seconds = (result.get("timestamp") or {}).get("seconds")
        resources = result.get("resources") or [{}]
        resource = resources[0] if isinstance(resources[0], Mapping) else {}
        exception = (result.get("properties") or {}).get("exception", "")
        if not isinstance(seconds, int):
            continue
        policy, rule, outcome = (
            str(result.get("policy", "")),
            str(result.get("rule", "")),
            str(result.get("result", "")),
        )
        if cluster:
            key: SeenKey = ("", "ImagePolicy", policy, policy, rule, outcome, "")
        else:
            key = (
                str(resource.get("namespace", "")),
                str(resource.get("kind", "")),
                str(resource.get("name", "")),
                policy,
                rule,
                outcome,
                str(exception),
            )
        found[key] = seconds
    return found


# -- ImagePolicyException status -----------------------------------------------------------


def build_exception_status(
    item: exceptions_model.Parsed,
    policies: Mapping[str, PolicyInfo],
    now: datetime.datetime,
) -> dict[str, Any]:
    """`status` of an ImagePolicyException: Active, Expired or Invalid, and why."""
    if isinstance(item, exceptions_model.InvalidException):
        state, message = "Invalid", f"never applies: {item.reason}"
    elif item.expired(now):
        state = "Expired"
        message = (
            f"expired at {exceptions_evaluate.build_time_text(item.expires)}: it no longer "
            "waives anything"
        )
    else:
        state = "Active"
        parts = []
        for ref in item.policies:
            rules = f" ({', '.join(ref.rules)})" if ref.rules else ""
            info = policies.get(ref.name)
            if info is None:
                parts.append(f"ImagePolicy {ref.name}{rules}: no such policy")
            elif not info.usable:
                parts.append(f"ImagePolicy {ref.name}{rules}: not usable, never waived")
            elif not info.allow_exceptions:
                parts.append(f"ImagePolicy {ref.name}{rules}: sets allowExceptions: false, ignored")
            else:
                parts.append(f"ImagePolicy {ref.name}{rules}")
        message = (
            f"waives {'; '.join(parts)} in namespace {item.namespace} until "
            f"{exceptions_evaluate.build_time_text(item.expires)}"
        )
    return {"state": state, "message": message[:4096], "observedGeneration": item.generation}
