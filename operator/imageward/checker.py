"""Check a set of images against the loaded policies: the one path shared by admission
and `imageward check`.

Order of work per image, cheapest first and nothing fetched that no rule needs:
parse the reference, match policies (no I/O), static rules, then (only if a matching
policy needs them) registry facts and signatures, fetched concurrently under one deadline.
Every image of a request is checked concurrently; identical lookups share one request in
the registry client's cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import cachetools

from imageward import constants, errors, metrics
from imageward.policy import evaluate, model
from imageward.policystore import LoadedPolicy
from imageward.registry import auth as registry_auth
from imageward.registry import model as registry_model
from imageward.registry import reference as registry_reference
from imageward.signatures import verify as signatures_verify


class ImageSource(Protocol):
    """What the checker needs from the registry side (registry client + signature fetch)."""

    async def fetch_facts(
        self,
        reference: registry_model.ImageReference,
        *,
        platform: registry_model.Platform | None,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> registry_model.ImageFacts: ...

    async def fetch_signatures(
        self,
        reference: registry_model.ImageReference,
        digest: registry_model.Digest,
        *,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> signatures_verify.SignatureSet: ...

    async def resolve(
        self,
        reference: registry_model.ImageReference,
        *,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> registry_model.Digest: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """Where the images run: selectors' inputs, platform choice, registry credentials."""

    namespace_labels: Mapping[str, str] | None = None
    pod_labels: Mapping[str, str] | None = None
    platform: registry_model.Platform | None = None
    credentials: Sequence[registry_auth.DockerConfig] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ImageOutcome:
    image: str
    digest: registry_model.Digest | None
    decision: evaluate.Decision
    results: tuple[evaluate.PolicyResult, ...]
    pin: registry_model.Digest | None  # set when a matching policy pins and the image is allowed


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    images: tuple[ImageOutcome, ...]
    decision: evaluate.Decision


def _needs_facts(policy: model.ImagePolicy) -> bool:
    return evaluate.needs_registry(policy) or policy.pin_digest


async def check_images(
    images: Sequence[str],
    policies: Sequence[LoadedPolicy],
    context: Context,
    *,
    source: ImageSource,
    deadline: float,
) -> Outcome:
    """Check every distinct image concurrently; `deadline` is in seconds from now."""
    distinct = list(dict.fromkeys(images))
    until = time.monotonic() + deadline
    outcomes = await asyncio.gather(
        *(_check_image(image, policies, context, source, until) for image in distinct)
    )
    by_image = dict(zip(distinct, outcomes, strict=True))
    ordered = tuple(by_image[image] for image in distinct)
    decision = evaluate.combine([r for outcome in ordered for r in outcome.results])
    return Outcome(images=ordered, decision=decision)


async def _check_image(
    image: str,
    policies: Sequence[LoadedPolicy],
    context: Context,
    source: ImageSource,
    until: float,
) -> ImageOutcome:
    try:
        reference = registry_reference.parse_reference(image)
    except errors.InvalidReferenceError as e:
        # Kubelet would not pull it either; refuse rather than guess what a policy meant.
        invalid = tuple(
            evaluate.PolicyResult(
                policy=p.name,
                mode=model.Mode.ENFORCE,
                failure_policy=model.FailurePolicy.FAIL,
                violations=(
                    evaluate.Violation(
                        policy=p.name,
                        rule=constants.RULE_LOOKUP,
                        image=image,
                        digest=None,
                        message=f"ImagePolicy {p.name}: {e}",
                    ),
                ),
            )
            for p in policies
        )
        return ImageOutcome(image, None, evaluate.combine(invalid), invalid, None)

    matched = [
        p
        for p in policies
        if evaluate.evaluate_match(
            p.match,
            reference,
            namespace_labels=context.namespace_labels,
            pod_labels=context.pod_labels,
        )
    ]
    if not matched:
        allowed = evaluate.combine([])
        return ImageOutcome(image, reference.digest, allowed, (), None)

    results: list[evaluate.PolicyResult] = []
    usable: list[tuple[LoadedPolicy, model.ImagePolicy]] = []
    for loaded in matched:
        if loaded.policy is None:
            assert loaded.error is not None
            results.append(evaluate.build_unusable_result(loaded.error, reference))
        else:
            usable.append((loaded, loaded.policy))

    facts: registry_model.ImageFacts | None = None
    lookup_error: str | None = None
    early: dict[registry_model.Digest, signatures_verify.SignatureSet | str] = {}
    if any(_needs_facts(policy) for _, policy in usable):
        try:
            async with asyncio.timeout_at(_loop_deadline(until)):
                if any(policy.rules.signatures for _, policy in usable):
                    # Resolve the tag first, then fetch facts and signatures side by side:
                    # one round trip less on the critical path than one after the other.
                    resolved = reference.digest or await source.resolve(
                        reference, credentials=context.credentials
                    )
                    facts, found = await asyncio.gather(
                        source.fetch_facts(
                            reference.with_digest(resolved),
                            platform=context.platform,
                            credentials=context.credentials,
                        ),
                        _fetch_signature_set(reference, resolved, context, source, until),
                    )
                    early[resolved] = found
                else:
                    facts = await source.fetch_facts(
                        reference, platform=context.platform, credentials=context.credentials
                    )
        except TimeoutError:
            lookup_error = (
                f"registry {reference.registry} did not answer within the admission deadline"
            )
        except errors.ImagewardError as e:
            lookup_error = str(e)

    digest = facts.digest if facts else reference.digest
    signature_sets = await _fetch_signature_sets(
        usable, reference, facts, context, source, until, early=early
    )

    for loaded, policy in usable:
        violations = evaluate.evaluate_static(policy, reference)
        if _needs_facts(policy):
            if facts is None:
                violations.append(
                    evaluate.build_lookup_violation(policy, reference, lookup_error or "unknown")
                )
            else:
                violations += evaluate.evaluate_facts(
                    policy, reference, facts, platform=context.platform
                )
                if policy.rules.signatures is not None:
                    violations += _signature_violations(
                        loaded, policy, reference, facts, signature_sets
                    )
        result = evaluate.build_policy_result(policy, violations)
        _count_evaluations(policy, violations)
        results.append(result)

    decision = evaluate.combine(results)
    pin = None
    if (
        facts is not None
        and decision.allowed
        and reference.digest is None
        and any(policy.pin_digest for _, policy in usable)
    ):
        pin = facts.digest
    return ImageOutcome(image, digest, decision, tuple(results), pin)


def _loop_deadline(until: float) -> float:
    # asyncio's clock may differ from time.monotonic(); convert the remaining time.
    return asyncio.get_running_loop().time() + max(0.0, until - time.monotonic())


def _signed_digests(facts: registry_model.ImageFacts) -> list[registry_model.Digest]:
    """A signature on the index or on any selected platform manifest counts."""
    digests = [facts.digest]
    digests += [image.digest for image in facts.images if image.digest != facts.digest]
    return digests


async def _fetch_signature_set(
    reference: registry_model.ImageReference,
    digest: registry_model.Digest,
    context: Context,
    source: ImageSource,
    until: float,
) -> signatures_verify.SignatureSet | str:
    """The signatures of one digest, or the reason they could not be fetched."""
    try:
        async with asyncio.timeout_at(_loop_deadline(until)):
            return await source.fetch_signatures(reference, digest, credentials=context.credentials)
    except TimeoutError:
        return "signature lookup did not finish within the admission deadline"
    except errors.ImagewardError as e:
        return f"signature lookup failed: {e}"


async def _fetch_signature_sets(
    usable: Sequence[tuple[LoadedPolicy, model.ImagePolicy]],
    reference: registry_model.ImageReference,
    facts: registry_model.ImageFacts | None,
    context: Context,
    source: ImageSource,
    until: float,
    *,
    early: Mapping[registry_model.Digest, signatures_verify.SignatureSet | str],
) -> dict[registry_model.Digest, signatures_verify.SignatureSet | str]:
    """Signatures per digest (index and platform manifests), reusing those fetched early."""
    if facts is None or not any(p.rules.signatures for _, p in usable):
        return {}
    digests = _signed_digests(facts)
    missing = [d for d in digests if d not in early]
    fetched = await asyncio.gather(
        *(_fetch_signature_set(reference, d, context, source, until) for d in missing)
    )
    found = {**early, **dict(zip(missing, fetched, strict=True))}
    return {d: found[d] for d in digests}


# Verification results per (digest, authorities, signature set). The registry side hands
# out the same SignatureSet object while it is fresh, so a warm admission of a signed
# image costs a lookup here instead of parsing and checking every signature again.
_VERIFIED: cachetools.LRUCache[
    tuple[str, tuple[signatures_verify.Authority, ...], int],
    tuple[signatures_verify.SignatureSet, signatures_verify.VerificationResult],
] = cachetools.LRUCache(maxsize=4096)


def _verify(
    digest: registry_model.Digest,
    found: signatures_verify.SignatureSet,
    authorities: tuple[signatures_verify.Authority, ...],
) -> signatures_verify.VerificationResult:
    key = (digest, authorities, id(found))
    hit = _VERIFIED.get(key)
    if hit is not None and hit[0] is found:  # the id of a collected object can be reused
        return hit[1]
    result = signatures_verify.verify(digest, found, authorities, threshold=1)
    _VERIFIED[key] = (found, result)
    return result


def _signature_violations(
    loaded: LoadedPolicy,
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    facts: registry_model.ImageFacts,
    signature_sets: Mapping[registry_model.Digest, signatures_verify.SignatureSet | str],
) -> list[evaluate.Violation]:
    rule = policy.rules.signatures
    assert rule is not None
    lookup_failures = [s for s in signature_sets.values() if isinstance(s, str)]
    # Per authority: verified on any of the digests (index or platform manifest) counts.
    reasons: dict[str, str | None] = {a.name: "no signature found" for a in loaded.authorities}
    for digest, found in signature_sets.items():
        if isinstance(found, str):
            continue
        result = _verify(digest, found, loaded.authorities)
        for attempt in result.attempts:
            metrics.signature_verifications.labels(
                policy=policy.name,
                authority=attempt.authority,
                format=attempt.format,
                result=attempt.result,
            ).inc()
        for outcome in result.outcomes:
            if outcome.verified:
                reasons[outcome.authority] = None
            elif reasons.get(outcome.authority) is not None and (
                digest == facts.digest or reasons[outcome.authority] == "no signature found"
            ):
                reasons[outcome.authority] = outcome.reason
    verified = sum(1 for reason in reasons.values() if reason is None)
    if verified < rule.threshold and lookup_failures and verified == 0:
        return [
            evaluate.build_lookup_violation(
                policy, reference, lookup_failures[0], digest=facts.digest
            )
        ]
    return evaluate.evaluate_signatures(policy, reference, digest=facts.digest, results=reasons)


def _count_evaluations(policy: model.ImagePolicy, violations: Sequence[evaluate.Violation]) -> None:
    failed = {v.rule for v in violations}
    for rule in _rules_of(policy):
        if rule in failed:
            result = "error" if rule == constants.RULE_LOOKUP else "fail"
        else:
            result = "pass"
        metrics.policy_evaluations.labels(policy=policy.name, rule=rule, result=result).inc()
    if constants.RULE_LOOKUP in failed:
        metrics.policy_evaluations.labels(
            policy=policy.name, rule=constants.RULE_LOOKUP, result="error"
        ).inc()


def _rules_of(policy: model.ImagePolicy) -> list[str]:
    rules = policy.rules
    present = [
        (rules.allowed_registries is not None, constants.RULE_ALLOWED_REGISTRIES),
        (bool(rules.forbidden_tags), constants.RULE_FORBIDDEN_TAGS),
        (rules.require_digest, constants.RULE_REQUIRE_DIGEST),
        (rules.max_compressed_size is not None, constants.RULE_MAX_COMPRESSED_SIZE),
        (rules.max_layers is not None, constants.RULE_MAX_LAYERS),
        (rules.max_layer_size is not None, constants.RULE_MAX_LAYER_SIZE),
        (rules.forbid_root_user, constants.RULE_FORBID_ROOT_USER),
        (rules.signatures is not None, constants.RULE_SIGNATURES),
    ]
    return [rule for enabled, rule in present if enabled]
