"""Evaluate parsed ImagePolicies against references, registry facts and signature results.

Pure and synchronous: callers fetch facts and verify signatures, then hand the results
in as data. A `Violation` is data, never an exception; `combine` turns the violations
of every applicable policy into one `Decision` according to each policy's mode and
failure policy.

Messages have one shape:

    ImagePolicy <policy>: <image> (<digest>[, <os/arch>]) <what was measured>, <rule limit>

e.g. `ImagePolicy prod-images: ghcr.io/acme/web:1.4 (sha256:9f2c1a7b3d4e…) is 812.4MiB
compressed, over maxCompressedSize 500Mi`. The image is quoted as written in the pod;
digests are shortened to their first 12 hex digits and "…" (as `docker images` shows
ids: short enough to read, long enough to find), and left out when the image as written
already carries its digest or no digest is known. Limits are quoted as the policy wrote
them. Each message names its rule id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from imageward import constants, errors, records
from imageward.policy import globs, model, quantities, selectors
from imageward.registry import model as registry_model
from imageward.registry import reference as registry_reference

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (PEP 781)

if TYPE_CHECKING:
    from typing import Literal

SHORT_DIGEST_HEX = 12

Measure = int | str | None


_set = object.__setattr__  # how a frozen Record's __init__ sets its fields


class Violation(records.Record):
    """One rule one image broke, under one policy: data, not an exception."""

    __slots__ = ("digest", "image", "limit", "measured", "message", "platform", "policy", "rule")
    policy: str
    """Name of the ImagePolicy."""

    rule: str
    """Rule id from `imageward.constants` (RULE_*)."""

    image: str
    """The image as written (the reference's `original`, else its normalised text)."""

    digest: registry_model.Digest | None
    """What the reference resolved to (the index digest for an index), when known."""

    message: str
    """The full human-readable sentence, ready for an admission response or the CLI."""

    measured: Measure
    """The measured value: bytes or counts as int, tags/users/hosts/errors as text."""

    limit: Measure
    """The policy's limit: bytes or counts as int, otherwise the policy's text."""

    platform: str | None
    """`os/arch[/variant]` of the platform image measured, for image indexes."""

    def __init__(
        self,
        policy: str,
        rule: str,
        image: str,
        digest: registry_model.Digest | None,
        message: str,
        measured: Measure = None,
        limit: Measure = None,
        platform: str | None = None,
    ) -> None:
        _set(self, "policy", policy)
        _set(self, "rule", rule)
        _set(self, "image", image)
        _set(self, "digest", digest)
        _set(self, "message", message)
        _set(self, "measured", measured)
        _set(self, "limit", limit)
        _set(self, "platform", platform)


class PolicyResult(records.Record):
    """The violations one applicable policy found for one image, with how to treat them."""

    __slots__ = ("failure_policy", "mode", "policy", "violations")
    policy: str
    mode: model.Mode
    failure_policy: model.FailurePolicy
    violations: tuple[Violation, ...]

    def __init__(
        self,
        policy: str,
        mode: model.Mode,
        failure_policy: model.FailurePolicy,
        violations: tuple[Violation, ...] = (),
    ) -> None:
        _set(self, "policy", policy)
        _set(self, "mode", mode)
        _set(self, "failure_policy", failure_policy)
        _set(self, "violations", violations)


class Decision(records.Record):
    """The verdict on one admission or check: allowed, and the violations behind it."""

    __slots__ = ("allowed", "audits", "violations", "warned", "warnings")
    allowed: bool
    violations: tuple[Violation, ...]
    """Violations that deny (mode Enforce; lookups only under failurePolicy Fail)."""

    warnings: tuple[str, ...]
    """Admission warning texts (mode Warn, and lookups under failurePolicy Ignore)."""

    warned: tuple[Violation, ...]
    """The violations behind `warnings`, for metrics and the CLI."""

    audits: tuple[Violation, ...]
    """Violations of Audit-mode policies: allowed; the caller posts an Event and a metric."""

    def __init__(
        self,
        allowed: bool,
        violations: tuple[Violation, ...] = (),
        warnings: tuple[str, ...] = (),
        warned: tuple[Violation, ...] = (),
        audits: tuple[Violation, ...] = (),
    ) -> None:
        _set(self, "allowed", allowed)
        _set(self, "violations", violations)
        _set(self, "warnings", warnings)
        _set(self, "warned", warned)
        _set(self, "audits", audits)

    @property
    def outcome(self) -> Literal["allow", "deny", "warn"]:
        """The CLI's `decision` field and the admission metric's `decision` label."""
        if not self.allowed:
            return "deny"
        return "warn" if self.warnings else "allow"


# ---------------------------------------------------------------------------- messages


def build_short_digest(digest: str) -> str:
    """`sha256:9f2c1a7b3d4e…`: the algorithm and the first 12 hex digits."""
    algorithm, _, hex_digits = digest.partition(":")
    if len(hex_digits) <= SHORT_DIGEST_HEX:
        return digest
    return f"{algorithm}:{hex_digits[:SHORT_DIGEST_HEX]}…"


def _image_text(reference: registry_model.ImageReference) -> str:
    return reference.original or str(reference)


def _subject(image: str, digest: str | None, platform: str | None) -> str:
    details = []
    if digest and digest not in image:
        details.append(build_short_digest(digest))
    if platform:
        details.append(platform)
    return f"{image} ({', '.join(details)})" if details else image


def _size_pair(measured: int, limit: quantities.Quantity) -> tuple[str, str]:
    measured_text = quantities.format_bytes(measured)
    limit_text = limit.text
    if limit_text.isdigit():
        # A bare byte count is unreadable next to "812.4MiB": add the same unit.
        limit_text = f"{limit_text} ({quantities.format_bytes(limit.bytes)})"
    if quantities.format_bytes(limit.bytes) == measured_text:
        # One decimal can hide the difference ("500.0MiB, over 500Mi"): show bytes.
        measured_text = f"{measured_text} ({measured} bytes)"
    return measured_text, limit_text


def _build(
    policy_name: str,
    rule: str,
    reference: registry_model.ImageReference,
    digest: registry_model.Digest | None,
    predicate: str,
    *,
    measured: Measure = None,
    limit: Measure = None,
    platform: str | None = None,
) -> Violation:
    image = _image_text(reference)
    return Violation(
        policy=policy_name,
        rule=rule,
        image=image,
        digest=digest,
        message=f"ImagePolicy {policy_name}: {_subject(image, digest, platform)} {predicate}",
        measured=measured,
        limit=limit,
        platform=platform,
    )


def _list_text(items: Iterable[str]) -> str:
    return "[" + ", ".join(items) + "]"


# ---------------------------------------------------------------------------- matching


def _as_reference(
    image: str | registry_model.ImageReference,
) -> registry_model.ImageReference:
    if isinstance(image, registry_model.ImageReference):
        return image
    return registry_reference.parse_reference(image)


def evaluate_match(
    policy: model.ImagePolicy | model.Match,
    image: str | registry_model.ImageReference,
    *,
    namespace_labels: Mapping[str, str] | None = None,
    pod_labels: Mapping[str, str] | None = None,
) -> bool:
    """Whether the policy applies to the image (in that namespace, for that pod).

    Labels left None are not checked (the CLI has neither): then only `images` and
    `excludeImages` select. Accepts a bare `Match` so that a policy `parse_policy`
    refused can still be scoped with `model.parse_match`. Raises
    errors.InvalidReferenceError for an image text that is no valid reference.
    """
    match = policy.match if isinstance(policy, model.ImagePolicy) else policy
    reference = _as_reference(image)
    # Fail safe where a tag or digest pattern cannot be decided before resolution:
    # apply the policy when unsure, exclude the image only when sure.
    if not any(
        globs.evaluate_image_pattern(pattern, reference, when_unknown=True)
        for pattern in match.images
    ):
        return False
    if any(
        globs.evaluate_image_pattern(pattern, reference, when_unknown=False)
        for pattern in match.exclude_images
    ):
        return False
    if namespace_labels is not None and not selectors.evaluate_label_selector(
        match.namespace_selector, namespace_labels
    ):
        return False
    return pod_labels is None or selectors.evaluate_label_selector(match.pod_selector, pod_labels)


def needs_platform_images(policy: model.ImagePolicy) -> bool:
    """Whether a rule reads platform manifests: sizes, layer counts or the config user."""
    rules = policy.rules
    return (
        rules.max_compressed_size is not None
        or rules.max_layers is not None
        or rules.max_layer_size is not None
        or rules.forbid_root_user
    )


def needs_config(policy: model.ImagePolicy) -> bool:
    """Whether a rule reads image config blobs (only forbidRootUser does)."""
    return policy.rules.forbid_root_user


def needs_registry(policy: model.ImagePolicy) -> bool:
    """Whether evaluating the policy needs any registry lookup (facts, signatures, pin)."""
    return (
        needs_platform_images(policy)
        or policy.rules.signatures is not None
        or bool(policy.rules.attestations)
        or policy.pin_digest
    )


# ---------------------------------------------------------------------------- static rules


def evaluate_static(
    policy: model.ImagePolicy, reference: registry_model.ImageReference
) -> list[Violation]:
    """Rules decided by the reference alone: allowedRegistries, forbiddenTags, requireDigest."""
    rules = policy.rules
    violations: list[Violation] = []
    digest = reference.digest
    host = registry_reference.build_canonical_host(reference.registry)
    if rules.allowed_registries is not None and not any(
        globs.evaluate_host_pattern(pattern, host) for pattern in rules.allowed_registries
    ):
        allowed = [pattern.text for pattern in rules.allowed_registries]
        violations.append(
            _build(
                policy.name,
                constants.RULE_ALLOWED_REGISTRIES,
                reference,
                digest,
                f"is from registry {host}, not in allowedRegistries {_list_text(allowed)}",
                measured=host,
                limit=", ".join(allowed),
            )
        )
    tag = reference.tag
    if tag is None and digest is None:
        tag = "latest"  # kubelet's default, in case a caller built the reference by hand
    forbidden = [
        pattern.text for pattern in rules.forbidden_tags if globs.evaluate_tag_pattern(pattern, tag)
    ]
    if forbidden:
        implied = (
            " (implied: no tag given)"
            if reference.original and not registry_reference.has_explicit_tag(reference.original)
            else ""
        )
        listed = [pattern.text for pattern in rules.forbidden_tags]
        violations.append(
            _build(
                policy.name,
                constants.RULE_FORBIDDEN_TAGS,
                reference,
                digest,
                f"uses tag {tag}{implied}, forbidden by forbiddenTags {_list_text(listed)}",
                measured=tag,
                limit=", ".join(listed),
            )
        )
    if rules.require_digest and digest is None:
        violations.append(
            _build(
                policy.name,
                constants.RULE_REQUIRE_DIGEST,
                reference,
                None,
                f"is not pinned by digest (tag {tag}), required by requireDigest",
                measured=tag,
                limit="digest",
            )
        )
    return violations


# ---------------------------------------------------------------------------- facts rules


def _platform_of(image: registry_model.PlatformImage) -> registry_model.Platform | None:
    if image.platform is not None:
        return image.platform
    config = image.config
    if config.os and config.architecture:
        return registry_model.Platform(os=config.os, architecture=config.architecture)
    return None


_GO_INT = r"[+-]?[0-9]+"  # compiled when first used (re caches it), not at import


def parse_uid(user: str | None) -> int | None:
    """The uid a config `User` runs as when it is numeric, read as containerd reads it.

    The part before ":" (the group) is the user; containerd and kubelet parse it with
    Go's `strconv.Atoi`, which takes a sign and leading zeros: "0", "00", "+0" and "-0"
    are all uid 0. None for a name (or anything Atoi refuses, which is looked up as a
    name in the image's /etc/passwd). "" (no User) is root.
    """
    name = (user or "").partition(":")[0]
    if name.strip() == "":
        return 0  # no user (blank counts as none: it never names a non-root account)
    if not re.fullmatch(_GO_INT, name):
        return None
    value = int(name)
    if not -(2**63) <= value < 2**63:
        return None  # Atoi: out of range, so a name
    return value


def _evaluate_user(user: str | None, *, require_numeric: bool) -> tuple[str, str] | None:
    """(what is wrong, measured) for a root (or unverifiable) config User, else None."""
    uid = parse_uid(user)
    described = f'config User "{user}"' if user and user.strip() else "no config User"
    if uid == 0:
        return f"runs as root ({described}), forbidden by forbidRootUser", user or ""
    name = (user or "").partition(":")[0]
    if uid is None and name == "root":
        return f"runs as root ({described}), forbidden by forbidRootUser", user or ""
    if uid is None and require_numeric:
        return (
            f"runs as named user {name!r} ({described}), which cannot be verified as non-root "
            "(requireNumericUser: a uid is required, as kubelet's runAsNonRoot requires)",
            user or "",
        )
    return None


def _evaluate_platform_image(
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    digest: registry_model.Digest,
    image: registry_model.PlatformImage,
    platform: str | None,
) -> list[Violation]:
    rules = policy.rules
    found: list[tuple[str, str, Measure, Measure]] = []  # rule, predicate, measured, limit
    size = image.compressed_size
    if rules.max_compressed_size is not None and size > rules.max_compressed_size.bytes:
        size_text, limit_text = _size_pair(size, rules.max_compressed_size)
        found.append(
            (
                constants.RULE_MAX_COMPRESSED_SIZE,
                f"is {size_text} compressed, over maxCompressedSize {limit_text}",
                size,
                rules.max_compressed_size.bytes,
            )
        )
    count = len(image.layers)
    if rules.max_layers is not None and count > rules.max_layers:
        found.append(
            (
                constants.RULE_MAX_LAYERS,
                f"has {count} layers, over maxLayers {rules.max_layers}",
                count,
                rules.max_layers,
            )
        )
    largest = image.largest_layer
    if (
        rules.max_layer_size is not None
        and largest is not None
        and largest.size > rules.max_layer_size.bytes
    ):
        size_text, limit_text = _size_pair(largest.size, rules.max_layer_size)
        found.append(
            (
                constants.RULE_MAX_LAYER_SIZE,
                f"has a {size_text} layer {build_short_digest(largest.digest)}, "
                f"over maxLayerSize {limit_text}",
                largest.size,
                rules.max_layer_size.bytes,
            )
        )
    if rules.forbid_root_user:
        if image.config_problem is not None:
            found.append(
                (
                    constants.RULE_FORBID_ROOT_USER,
                    f"cannot be checked for forbidRootUser: its image config "
                    f"{build_short_digest(image.config_digest)} {image.config_problem}",
                    image.config_problem,
                    "non-root",
                )
            )
        else:
            wrong = _evaluate_user(image.config.user, require_numeric=rules.require_numeric_user)
            if wrong is not None:
                predicate, measured = wrong
                found.append((constants.RULE_FORBID_ROOT_USER, predicate, measured, "non-root"))
    return [
        _build(
            policy.name,
            rule,
            reference,
            digest,
            predicate,
            measured=measured,
            limit=limit,
            platform=platform,
        )
        for rule, predicate, measured, limit in found
    ]


def evaluate_facts(
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    facts: registry_model.ImageFacts,
    *,
    platform: object = None,
) -> list[Violation]:
    """Size, layer and user rules against every platform image of `facts`.

    `facts.images` are the platform manifests nodes the pod may run on would select
    (the registry client chooses them as containerd does): every one must pass. None
    at all (an index with nothing such a node runs) refuses under the rules that
    needed one. Violations name the platform only for an index. `platform`, the pod's
    platform choice, only words that refusal.
    """
    if not needs_platform_images(policy):
        return []
    if not facts.images:
        where = f" for {platform}" if platform is not None else ""
        what = (
            f"the image index has no entry a node{where} would run"
            if facts.is_index
            else "no image manifest was found"
        )
        return [build_content_violation(policy, reference, what, digest=facts.digest)]
    violations: list[Violation] = []
    for image in facts.images:
        shown = _platform_of(image) if facts.is_index else None
        violations.extend(
            _evaluate_platform_image(
                policy,
                reference,
                facts.digest,
                image,
                str(shown) if shown is not None else None,
            )
        )
    return violations


# ---------------------------------------------------------------------------- signatures, lookups


def build_signatures_violation(
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    *,
    digest: registry_model.Digest | None,
    verified: int,
    failures: Sequence[tuple[str, str]],
) -> Violation:
    """A `signatures` violation: `failures` are (authority name, what failed) pairs."""
    signatures = policy.rules.signatures
    threshold = signatures.threshold if signatures is not None else 1
    total = len(signatures.authorities) if signatures is not None else len(failures) + verified
    reasons = "; ".join(f"{name}: {reason}" for name, reason in failures)
    return _build(
        policy.name,
        constants.RULE_SIGNATURES,
        reference,
        digest,
        f"is verified by {verified} of {total} authorities, under signatures threshold "
        f"{threshold}" + (f" ({reasons})" if reasons else ""),
        measured=verified,
        limit=threshold,
    )


def evaluate_signatures(
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    *,
    digest: registry_model.Digest | None,
    results: Mapping[str, str | None],
) -> list[Violation]:
    """Apply the threshold to per-authority results from the signatures package.

    `results` maps authority name to None when that authority verified the image, else
    to the reason it did not ("no signature found", "signature does not verify with key
    release-key", "payload names sha256:… not sha256:…"). Authorities missing from
    `results` count as not verified.
    """
    signatures = policy.rules.signatures
    if signatures is None:
        return []
    verified = 0
    failures: list[tuple[str, str]] = []
    for authority in signatures.authorities:
        if authority.name not in results:
            failures.append((authority.name, "not checked"))
        elif results[authority.name] is None:
            verified += 1
        else:
            failures.append((authority.name, str(results[authority.name])))
    if verified >= signatures.threshold:
        return []
    return [
        build_signatures_violation(
            policy, reference, digest=digest, verified=verified, failures=failures
        )
    ]


def build_attestation_violation(
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    *,
    digest: registry_model.Digest | None,
    name: str,
    detail: str,
) -> Violation:
    """An `attestations` violation: `detail` says what the entry `name` found wrong."""
    return _build(
        policy.name,
        constants.RULE_ATTESTATIONS,
        reference,
        digest,
        f"attestation {name}: {detail}",
        measured=detail,
        limit=name,
    )


#: The rules that need registry facts, in the order a refusal names them.
_FACT_RULES = (
    constants.RULE_SIGNATURES,
    constants.RULE_ATTESTATIONS,
    constants.RULE_MAX_COMPRESSED_SIZE,
    constants.RULE_MAX_LAYERS,
    constants.RULE_MAX_LAYER_SIZE,
    constants.RULE_FORBID_ROOT_USER,
)


def fact_rules(policy: model.ImagePolicy) -> list[str]:
    """The policy's rules that read registry facts (pinDigest when it only pins)."""
    rules = policy.rules
    present = {
        constants.RULE_SIGNATURES: rules.signatures is not None,
        constants.RULE_ATTESTATIONS: bool(rules.attestations),
        constants.RULE_MAX_COMPRESSED_SIZE: rules.max_compressed_size is not None,
        constants.RULE_MAX_LAYERS: rules.max_layers is not None,
        constants.RULE_MAX_LAYER_SIZE: rules.max_layer_size is not None,
        constants.RULE_FORBID_ROOT_USER: rules.forbid_root_user,
    }
    found = [rule for rule in _FACT_RULES if present[rule]]
    return found or ([constants.RULE_PIN_DIGEST] if policy.pin_digest else [])


def build_content_violation(
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    error_text: str,
    *,
    digest: registry_model.Digest | None = None,
) -> Violation:
    """A refusal for what the registry served that cannot be used (missing, malformed,
    over a cap, tampered): not `lookup`, so failurePolicy Ignore never admits it. The
    rule id is the first rule that needed the facts; the message names all of them."""
    rules = fact_rules(policy) or [constants.RULE_LOOKUP]
    return _build(
        policy.name,
        rules[0],
        reference,
        digest,
        f"cannot be checked for {', '.join(rules)}: {error_text}",
        measured=error_text,
    )


def build_lookup_violation(
    policy: model.ImagePolicy,
    reference: registry_model.ImageReference,
    error_text: str,
    *,
    digest: registry_model.Digest | None = None,
) -> Violation:
    """A `lookup` violation: facts needed by the policy could not be fetched or found."""
    return _build(
        policy.name,
        constants.RULE_LOOKUP,
        reference,
        digest,
        f"lookup failed: {error_text}",
        measured=error_text,
    )


# ---------------------------------------------------------------------------- decisions


def build_policy_result(policy: model.ImagePolicy, violations: Iterable[Violation]) -> PolicyResult:
    return PolicyResult(
        policy=policy.name,
        mode=policy.mode,
        failure_policy=policy.failure_policy,
        violations=tuple(violations),
    )


def build_unusable_result(
    error: errors.PolicyError,
    reference: registry_model.ImageReference,
    *,
    rule: str = constants.RULE_LOOKUP,
) -> PolicyResult:
    """Fail closed for an image matched by a policy that cannot be used.

    Enforce and Fail whatever the policy asked for: its mode may be the broken part,
    and an unusable policy must not quietly stop protecting what it matches.
    """
    violation = _build(
        error.policy,
        rule,
        reference,
        reference.digest,
        f"cannot be checked: the policy is not usable: {error.reason}",
        measured=error.reason,
    )
    return PolicyResult(
        policy=error.policy,
        mode=model.Mode.ENFORCE,
        failure_policy=model.FailurePolicy.FAIL,
        violations=(violation,),
    )


def combine(policy_results: Iterable[PolicyResult]) -> Decision:
    """Apply every applicable policy's mode and failure policy (all must pass: AND).

    Enforce denies; Warn turns violations into admission warnings; Audit allows and
    reports them in `audits`. Under failurePolicy Ignore, a `lookup` violation of an
    Enforce policy becomes a warning instead of a denial.
    """
    denied: list[Violation] = []
    warned: list[Violation] = []
    warnings: list[str] = []
    audits: list[Violation] = []
    for result in policy_results:
        for violation in result.violations:
            if result.mode is model.Mode.AUDIT:
                audits.append(violation)
            elif result.mode is model.Mode.WARN:
                warned.append(violation)
                warnings.append(violation.message)
            elif (
                violation.rule == constants.RULE_LOOKUP
                and result.failure_policy is model.FailurePolicy.IGNORE
            ):
                warned.append(violation)
                # First, so the apiserver's 256-character cut never hides why it was allowed.
                warnings.append(f"allowed by failurePolicy Ignore: {violation.message}")
            else:
                denied.append(violation)
    return Decision(
        allowed=not denied,
        violations=tuple(denied),
        warnings=tuple(dict.fromkeys(warnings)),  # de-duplicated, order kept
        warned=tuple(warned),
        audits=tuple(audits),
    )
