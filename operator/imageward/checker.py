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
import contextvars
import datetime
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import cachetools

from imageward import constants, errors, records
from imageward.policy import evaluate, model
from imageward.policystore import LoadedPolicy
from imageward.registry import auth as registry_auth
from imageward.registry import model as registry_model
from imageward.registry import platforms as registry_platforms
from imageward.registry import reference as registry_reference
from imageward.signatures import coverage as signatures_coverage
from imageward.signatures import model as signatures_model
from imageward.signatures import verify as signatures_verify

if TYPE_CHECKING:
    from imageward.attestations import evaluate as attestations_evaluate
    from imageward.attestations import verify as attestations_verify
    from imageward.exceptions import evaluate as exceptions_evaluate
    from imageward.exceptions import model as exceptions_model
    from imageward.notation import revocation as notation_revocation_types


class ImageSource(Protocol):
    """What the checker needs from the registry side (registry client + signature fetch)."""

    async def fetch_facts(
        self,
        reference: registry_model.ImageReference,
        *,
        platform: registry_platforms.PlatformChoice | registry_model.Platform | None,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> registry_model.ImageFacts: ...

    async def fetch_signatures(
        self,
        reference: registry_model.ImageReference,
        digest: registry_model.Digest,
        *,
        credentials: Sequence[registry_auth.DockerConfig],
        attestations: bool = False,
    ) -> signatures_verify.SignatureSet: ...

    async def resolve(
        self,
        reference: registry_model.ImageReference,
        *,
        credentials: Sequence[registry_auth.DockerConfig],
    ) -> registry_model.Digest: ...


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class Context(records.Record):
    """Where the images run: selectors' inputs, platform choice, registry credentials."""

    __slots__ = (
        "count_metrics",
        "credentials",
        "exceptions",
        "namespace",
        "namespace_labels",
        "platform",
        "pod_labels",
    )
    namespace_labels: Mapping[str, str] | None
    pod_labels: Mapping[str, str] | None
    platform: registry_platforms.PlatformChoice | registry_model.Platform | None
    credentials: Sequence[registry_auth.DockerConfig]
    namespace: str | None
    #: ImagePolicyExceptions of `namespace` (exceptions/evaluate.py decides what they waive).
    exceptions: Sequence[exceptions_model.PolicyException]
    #: False for background scans (the evaluation and verification counters are
    #: admission's) and for `imageward check`, which exports no metrics: then
    #: prometheus_client is not even imported (metrics are imported where counted).
    count_metrics: bool

    def __init__(
        self,
        namespace_labels: Mapping[str, str] | None = None,
        pod_labels: Mapping[str, str] | None = None,
        platform: registry_platforms.PlatformChoice | registry_model.Platform | None = None,
        credentials: Sequence[registry_auth.DockerConfig] = (),
        namespace: str | None = None,
        exceptions: Sequence[exceptions_model.PolicyException] = (),
        count_metrics: bool = True,
    ) -> None:
        _set(self, "namespace_labels", namespace_labels)
        _set(self, "pod_labels", pod_labels)
        _set(self, "platform", platform)
        _set(self, "credentials", credentials)
        _set(self, "namespace", namespace)
        _set(self, "exceptions", exceptions)
        _set(self, "count_metrics", count_metrics)


class AttestationReport(records.Record):
    """One attestation entry of one policy, judged for one image (`imageward check`)."""

    __slots__ = ("message", "name", "policy", "result")
    policy: str
    name: str
    result: str  # pass | fail | error
    message: str

    def __init__(
        self,
        policy: str,
        name: str,
        result: str,
        message: str,
    ) -> None:
        _set(self, "policy", policy)
        _set(self, "name", name)
        _set(self, "result", result)
        _set(self, "message", message)


class ImageOutcome(records.Record):
    """The verdict on one image: every matching policy's result, and the pin."""

    __slots__ = ("attestations", "decision", "digest", "exceptions", "image", "pin", "results")
    image: str
    digest: registry_model.Digest | None
    decision: evaluate.Decision
    results: tuple[evaluate.PolicyResult, ...]
    pin: registry_model.Digest | None  # set when a matching policy pins and the image is allowed
    attestations: tuple[AttestationReport, ...]
    #: ImagePolicyExceptions that waived violations of this image (or would have, but
    #: had expired or were not allowed).
    exceptions: tuple[exceptions_evaluate.Use, ...]

    def __init__(
        self,
        image: str,
        digest: registry_model.Digest | None,
        decision: evaluate.Decision,
        results: tuple[evaluate.PolicyResult, ...],
        pin: registry_model.Digest | None,
        attestations: tuple[AttestationReport, ...] = (),
        exceptions: tuple[exceptions_evaluate.Use, ...] = (),
    ) -> None:
        _set(self, "image", image)
        _set(self, "digest", digest)
        _set(self, "decision", decision)
        _set(self, "results", results)
        _set(self, "pin", pin)
        _set(self, "attestations", attestations)
        _set(self, "exceptions", exceptions)


class Outcome(records.Record):
    """The verdict on a set of images: each image's, and the overall decision."""

    __slots__ = ("decision", "images")
    images: tuple[ImageOutcome, ...]
    decision: evaluate.Decision

    def __init__(
        self,
        images: tuple[ImageOutcome, ...],
        decision: evaluate.Decision,
    ) -> None:
        _set(self, "images", images)
        _set(self, "decision", decision)


class _Failure(records.Record):
    """Why registry facts are missing: an outage (`lookup`, failurePolicy applies) or
    content the registry served that cannot be used (a refusal, whatever the policy)."""

    __slots__ = ("outage", "text")
    outage: bool
    text: str

    def __init__(
        self,
        outage: bool,
        text: str,
    ) -> None:
        _set(self, "outage", outage)
        _set(self, "text", text)


def _failure(error: BaseException, registry: str) -> _Failure:
    if isinstance(error, TimeoutError):
        return _Failure(True, f"registry {registry} did not answer within the admission deadline")
    if isinstance(error, errors.RegistryError):
        return _Failure(error.outage, str(error))
    return _Failure(False, str(error))


_SignatureSet = signatures_verify.SignatureSet | _Failure

#: Whether this check counts in the evaluation and verification metrics (admission and
#: `imageward check` do; background scans have metrics of their own).
_COUNTING: contextvars.ContextVar[bool] = contextvars.ContextVar("imageward_counting", default=True)
#: The counter children a check counted in, for whoever gives its outcome again
#: (`admission.decisions`): a list shared by the check's tasks, or None.
_TALLY: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "imageward_tally", default=None
)
#: Labelled counter children by (metric, label values): `.labels()` validates and locks
#: on every call, and a warm review counts a dozen times.
_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def _count(metric: Any, *values: str) -> None:
    key = (id(metric), values)  # the metrics are module-level objects, never freed
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    child.inc()
    tally = _TALLY.get()
    if tally is not None:
        tally.append(child)


def _needs_images(policy: model.ImagePolicy) -> bool:
    return (
        evaluate.needs_platform_images(policy)
        or policy.rules.signatures is not None
        or bool(policy.rules.attestations)
    )


async def check_images(
    images: Sequence[str],
    policies: Sequence[LoadedPolicy],
    context: Context,
    *,
    source: ImageSource,
    deadline: float,
    tally: list[Any] | None = None,
) -> Outcome:
    """Check every distinct image concurrently; `deadline` is in seconds from now.
    `tally`, when given, receives each counter child the check counted in."""
    distinct = list(dict.fromkeys(images))
    until = time.monotonic() + deadline
    counting = _COUNTING.set(context.count_metrics)
    tallying = _TALLY.set(tally)
    try:
        outcomes = await asyncio.gather(
            *(_check_image(image, policies, context, source, until) for image in distinct)
        )
    finally:
        _TALLY.reset(tallying)
        _COUNTING.reset(counting)
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

    signed = [(loaded, policy) for loaded, policy in usable if policy.rules.signatures]
    attested = [(loaded, policy) for loaded, policy in usable if loaded.attestations]
    wants_sets = bool(signed or attested)
    with_attestations = bool(attested)
    facts: registry_model.ImageFacts | None = None
    resolved: registry_model.Digest | None = reference.digest
    failure: _Failure | None = None
    top_set: _SignatureSet | None = None
    try:
        async with asyncio.timeout_at(_loop_deadline(until)):
            if wants_sets:
                # Resolve the tag first, then fetch facts, signatures and attestations side
                # by side: one round trip less on the critical path than one after the other.
                resolved = resolved or await source.resolve(
                    reference, credentials=context.credentials
                )
                facts, top_set = await asyncio.gather(
                    source.fetch_facts(
                        reference.with_digest(resolved),
                        platform=context.platform,
                        credentials=context.credentials,
                    ),
                    _fetch_signature_set(
                        reference, resolved, context, source, until, with_attestations
                    ),
                )
            elif any(_needs_images(policy) for _, policy in usable):
                facts = await source.fetch_facts(
                    reference, platform=context.platform, credentials=context.credentials
                )
            elif resolved is None and any(policy.pin_digest for _, policy in usable):
                resolved = await source.resolve(reference, credentials=context.credentials)
    except (TimeoutError, errors.ImagewardError) as e:
        failure = _failure(e, reference.registry)

    digest = facts.digest if facts else resolved
    entry_sets: dict[registry_model.Digest, _SignatureSet] = {}
    statuses: dict[str, notation_revocation_types.Status] | None = None
    if facts is not None and top_set is not None:
        statuses = await _revocation_statuses(
            signed, [(facts.digest, _target(facts.media_type, facts.size), top_set)], until
        )
    if (
        facts is not None
        and facts.is_index
        and top_set is not None
        and not (
            all(
                _vouched_by_top(loaded, policy, facts, top_set, statuses)
                for loaded, policy in signed
            )
            and all(
                _attested_by_top(entry, facts.digest, top_set)
                for loaded, _ in attested
                for entry in loaded.attestations
            )
        )
    ):
        # The index itself is not signed (or attested) enough: each platform manifest a
        # node could select must be (another round trip, only for such images).
        digests = [i.digest for i in facts.images]
        fetched = await asyncio.gather(
            *(
                _fetch_signature_set(reference, d, context, source, until, with_attestations)
                for d in digests
            )
        )
        entry_sets = dict(zip(digests, fetched, strict=True))
        more = await _revocation_statuses(
            signed,
            [(i.digest, _target(i.media_type, i.size), entry_sets[i.digest]) for i in facts.images],
            until,
        )
        if more:
            statuses = {**(statuses or {}), **more}

    reports: list[AttestationReport] = []

    for loaded, policy in usable:
        violations = evaluate.evaluate_static(policy, reference)
        if _needs_images(policy) or policy.pin_digest:
            if failure is not None:
                violations.append(_failure_violation(policy, reference, failure, digest))
            elif facts is not None:
                violations += evaluate.evaluate_facts(
                    policy, reference, facts, platform=context.platform
                )
                if policy.rules.signatures is not None:
                    assert top_set is not None
                    violations += _signature_violations(
                        loaded, policy, reference, facts, top_set, entry_sets, statuses
                    )
                if loaded.attestations:
                    assert top_set is not None
                    found, judged = _attestation_violations(
                        loaded, policy, reference, facts, top_set, entry_sets
                    )
                    violations += found
                    reports += judged
            if failure is not None and loaded.attestations:
                reports += [
                    AttestationReport(policy.name, entry.name, "error", failure.text)
                    if failure.outage
                    else AttestationReport(policy.name, entry.name, "fail", failure.text)
                    for entry in loaded.attestations
                ]
        result = evaluate.build_policy_result(policy, violations)
        _count_evaluations(policy, violations)
        results.append(result)

    uses: list[exceptions_evaluate.Use] = []
    if context.exceptions:
        # Imported only when there are exceptions to apply: `imageward check` has none.
        from imageward.exceptions import evaluate as exceptions_evaluate

        results, uses = exceptions_evaluate.apply_exceptions(
            results,
            reference=reference,
            image=image,
            namespace=context.namespace,
            pod_labels=context.pod_labels,
            exceptions=context.exceptions,
            allows={policy.name: policy.allow_exceptions for _, policy in usable},
            now=datetime.datetime.now(datetime.UTC),
        )
    decision = evaluate.combine(results)
    pin = None
    if (
        digest is not None
        and failure is None
        and decision.allowed
        and reference.digest is None
        and any(policy.pin_digest for _, policy in usable)
    ):
        pin = digest
    return ImageOutcome(image, digest, decision, tuple(results), pin, tuple(reports), tuple(uses))


def _failure_violation(
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    failure: _Failure,
    digest: registry_model.Digest | None,
) -> evaluate.Violation:
    if failure.outage:
        return evaluate.build_lookup_violation(policy, reference, failure.text, digest=digest)
    return evaluate.build_content_violation(policy, reference, failure.text, digest=digest)


def _loop_deadline(until: float) -> float:
    # asyncio's clock may differ from time.monotonic(); convert the remaining time.
    return asyncio.get_running_loop().time() + max(0.0, until - time.monotonic())


async def _fetch_signature_set(
    reference: registry_model.ImageReference,
    digest: registry_model.Digest,
    context: Context,
    source: ImageSource,
    until: float,
    attestations: bool = False,
) -> _SignatureSet:
    """The signatures (and attestations) of one digest, or why they could not be fetched."""
    try:
        async with asyncio.timeout_at(_loop_deadline(until)):
            if attestations:
                return await source.fetch_signatures(
                    reference, digest, credentials=context.credentials, attestations=True
                )
            return await source.fetch_signatures(reference, digest, credentials=context.credentials)
    except (TimeoutError, errors.ImagewardError) as e:
        failure = _failure(e, reference.registry)
        return records.replace(failure, text=f"signature lookup failed: {failure.text}")


# Verification results per (digest, authorities, signature set). The registry side hands
# out the same SignatureSet object while it is fresh, so a warm admission of a signed
# image costs a lookup here instead of parsing and checking every signature again.
# Bounded by the bytes of the sets it keeps alive (each up to 1 MiB of signature blobs).
_VERIFIED: cachetools.LRUCache[
    tuple[
        str,
        signatures_model.Target | None,
        tuple[signatures_verify.Authority, ...],
        int,
    ],
    tuple[signatures_verify.SignatureSet, signatures_verify.VerificationResult],
] = cachetools.LRUCache(maxsize=32 * 1024 * 1024, getsizeof=lambda hit: 1024 + hit[0].size)


def _target(media_type: str, size: int | None) -> signatures_model.Target | None:
    """What a Notation payload must name besides the digest (the manifest's descriptor)."""
    return None if size is None else signatures_model.Target(media_type, size)


def _verify(
    digest: registry_model.Digest,
    found: signatures_verify.SignatureSet,
    authorities: tuple[signatures_verify.Authority, ...],
    target: signatures_model.Target | None = None,
    statuses: notation_revocation_types.Statuses | None = None,
) -> signatures_verify.VerificationResult:
    key = (digest, target, authorities, id(found))
    hit = _VERIFIED.get(key)
    if hit is not None and hit[0] is found:  # the id of a collected object can be reused
        return hit[1]
    result = signatures_verify.verify(
        digest, found, authorities, threshold=1, target=target, revocation=statuses
    )
    if not _time_dependent(authorities):
        _VERIFIED[key] = (found, result)
    return result


def _time_dependent(authorities: Sequence[signatures_verify.Authority]) -> bool:
    """Notation verdicts change with time (certificate validity, expiry): never cached."""
    return any(isinstance(a, signatures_verify.NotationAuthority) for a in authorities)


def _result_of(
    digest: registry_model.Digest,
    found: _SignatureSet,
    authorities: tuple[signatures_verify.Authority, ...],
    target: signatures_model.Target | None = None,
    statuses: notation_revocation_types.Statuses | None = None,
) -> signatures_verify.VerificationResult:
    """The verification of one digest; a set that could not be fetched verifies nothing
    (and, when the registry served something unusable, says what)."""
    if isinstance(found, _Failure):
        problems = {} if found.outage else {"signatures": found.text}
        return signatures_verify.verify(
            digest, signatures_verify.SignatureSet(problems=problems), authorities, threshold=1
        )
    return _verify(digest, found, authorities, target, statuses)


async def _revocation_statuses(
    signed: Sequence[tuple[LoadedPolicy, model.ImagePolicy]],
    sets: Sequence[tuple[registry_model.Digest, signatures_model.Target | None, _SignatureSet]],
    until: float,
) -> dict[str, notation_revocation_types.Status] | None:
    """Revocation statuses for the Notation authorities that check revocation: looked up
    (OCSP, then CRL) only for chains that already reached their trust store; what the
    deadline cuts short is `unavailable`, which fails the check (fail closed)."""
    wanting = [
        authority
        for loaded, _ in signed
        for authority in loaded.authorities
        if isinstance(authority, signatures_verify.NotationAuthority)
        and authority.policy.revocation != "skip"
    ]
    if not wanting:
        return None
    chains = [
        chain
        for digest, target, found in sets
        if not isinstance(found, _Failure)
        for chain in signatures_verify.revocation_chains(digest, found, wanting, target=target)
    ]
    if not chains:
        return {}
    from imageward.notation import revocation

    try:
        async with asyncio.timeout_at(_loop_deadline(until)):
            looked_up = await asyncio.gather(*(revocation.fetch_statuses(c) for c in chains))
    except TimeoutError:
        late = revocation.Status("unavailable", "the admission deadline passed during the look-up")
        return {revocation.fingerprint(cert): late for chain in chains for cert in chain}
    merged: dict[str, notation_revocation_types.Status] = {}
    for statuses in looked_up:
        merged.update(statuses)
    return merged


def _vouched_by_top(
    loaded: LoadedPolicy,
    policy: model.ImagePolicy,
    facts: registry_model.ImageFacts,
    top: _SignatureSet,
    statuses: notation_revocation_types.Statuses | None = None,
) -> bool:
    """Whether the index's own signatures meet the policy's threshold (then the platform
    manifests' signatures need not be fetched)."""
    rule = policy.rules.signatures
    assert rule is not None
    if isinstance(top, _Failure):
        return False
    target = _target(facts.media_type, facts.size)
    verified = _verify(facts.digest, top, loaded.authorities, target, statuses)
    return verified.distinct_signers >= rule.threshold


def _signature_violations(
    loaded: LoadedPolicy,
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    facts: registry_model.ImageFacts,
    top_set: _SignatureSet,
    entry_sets: Mapping[registry_model.Digest, _SignatureSet],
    statuses: notation_revocation_types.Statuses | None = None,
) -> list[evaluate.Violation]:
    rule = policy.rules.signatures
    assert rule is not None
    authorities = loaded.authorities
    top = _result_of(
        facts.digest, top_set, authorities, _target(facts.media_type, facts.size), statuses
    )
    _count_attempts(policy, top)
    pulled: list[signatures_coverage.Pulled] = []
    if facts.is_index and entry_sets:
        for image in facts.images:
            found = entry_sets.get(image.digest)
            if found is None:
                continue
            result = _result_of(
                image.digest, found, authorities, _target(image.media_type, image.size), statuses
            )
            _count_attempts(policy, result)
            pulled.append(
                signatures_coverage.Pulled(
                    signatures_coverage.build_label(image), image.digest, result
                )
            )
    coverage = signatures_coverage.evaluate_coverage([a.name for a in authorities], top, pulled)
    if coverage.verified >= rule.threshold:
        return []
    outages = [
        s.text
        for s in (top_set, *(entry_sets.get(i.digest) for i in facts.images))
        if isinstance(s, _Failure) and s.outage
    ]
    if outages:
        # Undecidable, not refused: what was needed could not be fetched.
        return [evaluate.build_lookup_violation(policy, reference, outages[0], digest=facts.digest)]
    return [
        evaluate.build_signatures_violation(
            policy,
            reference,
            digest=facts.digest,
            verified=coverage.verified,
            failures=coverage.failures,
        )
    ]


# -- attestations -----------------------------------------------------------------------

# Verifications of one digest's attestations of one predicate type by one set of
# authorities, per signature set (as _VERIFIED): parsing envelopes and checking
# signatures happens once per set, whichever policies ask.
_ATTESTED: cachetools.LRUCache[
    tuple[str, str, tuple[signatures_verify.Authority, ...], int],
    tuple[signatures_verify.SignatureSet, attestations_verify.Verification],
] = cachetools.LRUCache(maxsize=64 * 1024 * 1024, getsizeof=lambda hit: 1024 + hit[0].size)

# Judged entries: by digest, policy generation, entry and the content of the sets
# judged (manifests name every blob by digest), until the time a verdict could change.
_JUDGED: cachetools.LRUCache[
    tuple[str, str, int, str, str],
    tuple[attestations_evaluate.EntryResult, float | None],
] = cachetools.LRUCache(maxsize=16384)
_FINGERPRINTS: cachetools.LRUCache[int, tuple[signatures_verify.SignatureSet, str]] = (
    cachetools.LRUCache(maxsize=4096)
)


def _fingerprint(found: _SignatureSet) -> str:
    if isinstance(found, _Failure):
        return f"failure {found.outage} {found.text}"
    hit = _FINGERPRINTS.get(id(found))
    if hit is not None and hit[0] is found:
        return hit[1]
    digest = hashlib.sha256()
    for part in (
        *found.legacy_manifests,
        *found.bundle_manifests,
        *found.attestation_manifests,
        *(f"{k}={v}".encode() for k, v in sorted(found.problems.items())),
    ):
        digest.update(hashlib.sha256(part).digest())
    text = digest.hexdigest()
    _FINGERPRINTS[id(found)] = (found, text)
    return text


def _attestation_verification(
    digest: registry_model.Digest,
    found: _SignatureSet,
    entry: attestations_evaluate.LoadedEntry,
) -> attestations_verify.Verification:
    from imageward.attestations import verify as attestations_verify

    if isinstance(found, _Failure):
        problems = {} if found.outage else {"attestations": found.text}
        return attestations_verify.verify(
            digest,
            signatures_verify.SignatureSet(problems=problems),
            entry.authorities,
            entry.rule.predicate_type,
            threshold=entry.rule.threshold,
        )
    key = (digest, entry.rule.predicate_type, entry.authorities, id(found))
    hit = _ATTESTED.get(key)
    if hit is not None and hit[0] is found:
        return hit[1]
    verification = attestations_verify.verify(
        digest,
        found,
        entry.authorities,
        entry.rule.predicate_type,
        threshold=entry.rule.threshold,
    )
    _ATTESTED[key] = (found, verification)
    return verification


def _attested_by_top(
    entry: attestations_evaluate.LoadedEntry, digest: registry_model.Digest, top: _SignatureSet
) -> bool:
    """Whether the index's own attestations meet the entry's threshold (or, for an
    optional entry, the index has none at all), so platform manifests need not be read."""
    if isinstance(top, _Failure):
        return False
    verification = _attestation_verification(digest, top, entry)
    return verification.result.distinct_signers >= entry.rule.threshold


def _attestation_violations(
    loaded: LoadedPolicy,
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    facts: registry_model.ImageFacts,
    top_set: _SignatureSet,
    entry_sets: Mapping[registry_model.Digest, _SignatureSet],
) -> tuple[list[evaluate.Violation], list[AttestationReport]]:
    violations: list[evaluate.Violation] = []
    reports: list[AttestationReport] = []
    now = datetime.datetime.now(datetime.UTC)
    pulled_sets = [
        (image, entry_sets[image.digest]) for image in facts.images if image.digest in entry_sets
    ]
    fingerprint = "|".join(
        [_fingerprint(top_set), *(_fingerprint(found) for _, found in pulled_sets)]
    )
    for entry in loaded.attestations:
        key = (facts.digest, policy.name, policy.generation, entry.name, fingerprint)
        cached = _JUDGED.get(key)
        if cached is not None and (cached[1] is None or cached[1] > now.timestamp()):
            judged = cached[0]
        else:
            judged = _judge_entry(entry, facts, top_set, pulled_sets, now)
            if judged.result != "error":
                expires = judged.changes_at.timestamp() if judged.changes_at else None
                _JUDGED[key] = (judged, expires)
        if _COUNTING.get():
            from imageward import metrics

            _count(metrics.attestation_verifications, policy.name, entry.name, judged.result)
        reports.append(AttestationReport(policy.name, entry.name, judged.result, judged.message))
        if judged.result == "error":
            violations.append(
                evaluate.build_lookup_violation(
                    policy,
                    reference,
                    f"attestation {entry.name}: {judged.message}",
                    digest=facts.digest,
                )
            )
        elif judged.result == "fail":
            violations.append(
                evaluate.build_attestation_violation(
                    policy, reference, digest=facts.digest, name=entry.name, detail=judged.message
                )
            )
    return violations, reports


def _judge_entry(
    entry: attestations_evaluate.LoadedEntry,
    facts: registry_model.ImageFacts,
    top_set: _SignatureSet,
    pulled_sets: Sequence[tuple[registry_model.PlatformImage, _SignatureSet]],
    now: datetime.datetime,
) -> attestations_evaluate.EntryResult:
    from imageward.attestations import evaluate as attestations_evaluate

    top = _attestation_verification(facts.digest, top_set, entry)
    pulled = [
        attestations_evaluate.Pulled(
            signatures_coverage.build_label(image),
            image.digest,
            _attestation_verification(image.digest, found, entry),
        )
        for image, found in pulled_sets
    ]
    judged = attestations_evaluate.evaluate_entry(entry, top, pulled, now=now)
    if judged.result == "pass":
        return judged
    outages = [
        found.text
        for found in (top_set, *(found for _, found in pulled_sets))
        if isinstance(found, _Failure) and found.outage
    ]
    if outages:
        # Undecidable, not refused: what was needed could not be fetched.
        return attestations_evaluate.EntryResult(entry.name, "error", outages[0])
    return judged


def _count_attempts(
    policy: model.ImagePolicy, result: signatures_verify.VerificationResult
) -> None:
    if not _COUNTING.get():
        return
    from imageward import metrics

    for attempt in result.attempts:
        _count(
            metrics.signature_verifications,
            policy.name,
            attempt.authority,
            attempt.format,
            attempt.result,
        )


def _count_evaluations(policy: model.ImagePolicy, violations: Sequence[evaluate.Violation]) -> None:
    if not _COUNTING.get():
        return
    from imageward import metrics

    failed = {v.rule for v in violations}
    for rule in _rules_of(policy):
        if rule in failed:
            result = "error" if rule == constants.RULE_LOOKUP else "fail"
        else:
            result = "pass"
        _count(metrics.policy_evaluations, policy.name, rule, result)
    if constants.RULE_LOOKUP in failed:
        _count(metrics.policy_evaluations, policy.name, constants.RULE_LOOKUP, "error")


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
        (bool(rules.attestations), constants.RULE_ATTESTATIONS),
    ]
    return [rule for enabled, rule in present if enabled]
