from __future__ import annotations

from typing import Any

import pytest

from imageward import constants, errors
from imageward.policy import evaluate, model
from imageward.registry import model as registry_model
from imageward.registry import platforms as registry_platforms
from imageward.registry import reference as registry_reference

DIGEST = registry_model.Digest("sha256:9f2c1a7b3d4e" + "0" * 52)
SHORT = "sha256:9f2c1a7b3d4e…"
LINUX_AMD64 = registry_model.Platform("linux", "amd64")
LINUX_ARM64 = registry_model.Platform("linux", "arm64")
MiB = 1 << 20


def policy(rules: dict[str, Any] | None = None, **spec: Any) -> model.ImagePolicy:
    return model.parse_policy(
        {"metadata": {"name": "prod-images"}, "spec": {"rules": rules or {}, **spec}}
    )


def ref(text: str) -> registry_model.ImageReference:
    return registry_reference.parse_reference(text)


def layer_digest(index: int) -> registry_model.Digest:
    return registry_model.Digest(f"sha256:{index:064x}")


def image(
    sizes: list[int],
    *,
    user: str | None = "1000",
    platform: registry_model.Platform | None = None,
    digest_index: int = 1000,
) -> registry_model.PlatformImage:
    return registry_model.PlatformImage(
        digest=layer_digest(digest_index),
        platform=platform,
        media_type="application/vnd.oci.image.manifest.v1+json",
        layers=tuple(
            registry_model.Layer(
                digest=layer_digest(index),
                size=size,
                media_type="application/vnd.oci.image.layer.v1.tar+gzip",
            )
            for index, size in enumerate(sizes)
        ),
        config_digest=layer_digest(digest_index + 1),
        config=registry_model.ImageConfig(
            user=user,
            os=platform.os if platform else "linux",
            architecture=platform.architecture if platform else "amd64",
            created=None,
        ),
    )


def facts(
    reference: registry_model.ImageReference, *images: registry_model.PlatformImage
) -> registry_model.ImageFacts:
    is_index = len(images) != 1 or images[0].platform is not None
    return registry_model.ImageFacts(
        reference=reference,
        digest=DIGEST,
        media_type=(
            "application/vnd.oci.image.index.v1+json"
            if is_index
            else "application/vnd.oci.image.manifest.v1+json"
        ),
        is_index=is_index,
        images=images,
    )


def messages(violations: list[evaluate.Violation]) -> list[str]:
    return [violation.message for violation in violations]


# ---------------------------------------------------------------------------- matching


def test_match_images_and_excludes() -> None:
    p = policy(match={"images": ["ghcr.io/acme/**"], "excludeImages": ["ghcr.io/acme/tools/*"]})
    assert evaluate.evaluate_match(p, "ghcr.io/acme/web:1.4")
    assert evaluate.evaluate_match(p, ref("ghcr.io/acme/web:1.4"))
    assert not evaluate.evaluate_match(p, "ghcr.io/acme/tools/debug")
    assert not evaluate.evaluate_match(p, "ghcr.io.evil.com/acme/web")
    assert not evaluate.evaluate_match(p, "nginx")


def test_exclusions_by_tag_cannot_be_borrowed_by_a_digest() -> None:
    p = policy(match={"images": ["ghcr.io/acme/**"], "excludeImages": ["ghcr.io/acme/web:1.*"]})
    assert not evaluate.evaluate_match(p, "ghcr.io/acme/web:1.4")
    # The tag is decorative next to a digest: the policy must still apply.
    assert evaluate.evaluate_match(p, f"ghcr.io/acme/web:1.4@{DIGEST}")
    scoped = policy(match={"images": ["ghcr.io/acme/web:1.*"]})
    assert evaluate.evaluate_match(scoped, "ghcr.io/acme/web:1.4")
    assert not evaluate.evaluate_match(scoped, "ghcr.io/acme/web:2.0")
    # Pinned by digest alone, the tag is unknown: applying the policy is the safe side.
    assert evaluate.evaluate_match(scoped, f"ghcr.io/acme/web@{DIGEST}")


def test_match_selectors() -> None:
    p = policy(
        match={
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "podSelector": {
                "matchExpressions": [{"key": "imageward.io/skip", "operator": "DoesNotExist"}]
            },
        }
    )
    assert evaluate.evaluate_match(p, "nginx", namespace_labels={"env": "prod"}, pod_labels={})
    assert not evaluate.evaluate_match(p, "nginx", namespace_labels={"env": "dev"}, pod_labels={})
    assert not evaluate.evaluate_match(
        p, "nginx", namespace_labels={"env": "prod"}, pod_labels={"imageward.io/skip": "yes"}
    )
    # The CLI passes no labels: only images/excludeImages select.
    assert evaluate.evaluate_match(p, "nginx")


def test_match_accepts_a_bare_match() -> None:
    match = model.parse_match({"spec": {"match": {"images": ["nginx"]}}})
    assert evaluate.evaluate_match(match, "nginx:1.25")
    assert not evaluate.evaluate_match(match, "redis")


def test_match_refuses_invalid_references() -> None:
    with pytest.raises(errors.InvalidReferenceError):
        evaluate.evaluate_match(policy(), "ghcr.io/ACME/web")


@pytest.mark.parametrize(
    ("rules", "pin", "expected"),
    [
        ({}, False, False),
        (
            {"allowedRegistries": ["ghcr.io"], "forbiddenTags": ["latest"], "requireDigest": True},
            False,
            False,
        ),
        ({}, True, True),
        ({"maxCompressedSize": "1Gi"}, False, True),
        ({"maxLayers": 3}, False, True),
        ({"maxLayerSize": "1Gi"}, False, True),
        ({"forbidRootUser": True}, False, True),
        ({"forbidRootUser": False}, False, False),
        (
            {
                "signatures": {
                    "authorities": [
                        {"name": "k", "key": {"secretRef": {"namespace": "a", "name": "b"}}}
                    ]
                }
            },
            False,
            True,
        ),
    ],
)
def test_needs_registry(rules: dict[str, Any], pin: bool, expected: bool) -> None:
    assert evaluate.needs_registry(policy(rules, pinDigest=pin)) is expected


def test_needs_config_only_for_root_user() -> None:
    assert evaluate.needs_config(policy({"forbidRootUser": True}))
    assert not evaluate.needs_config(policy({"maxLayers": 3}))
    assert evaluate.needs_platform_images(policy({"maxLayers": 3}))
    assert not evaluate.needs_platform_images(policy(pinDigest=True))


# ---------------------------------------------------------------------------- static rules


def test_allowed_registries() -> None:
    p = policy({"allowedRegistries": ["ghcr.io", "registry.acme.internal:5000"]})
    assert evaluate.evaluate_static(p, ref("ghcr.io/acme/web:1.4")) == []
    assert evaluate.evaluate_static(p, ref("GHCR.IO:443/acme/web")) == []
    assert evaluate.evaluate_static(p, ref("registry.acme.internal:5000/web")) == []
    [violation] = evaluate.evaluate_static(p, ref("nginx:1.25"))
    assert violation == evaluate.Violation(
        policy="prod-images",
        rule=constants.RULE_ALLOWED_REGISTRIES,
        image="nginx:1.25",
        digest=None,
        message=(
            "ImagePolicy prod-images: nginx:1.25 is from registry docker.io, "
            "not in allowedRegistries [ghcr.io, registry.acme.internal:5000]"
        ),
        measured="docker.io",
        limit="ghcr.io, registry.acme.internal:5000",
    )
    assert messages(evaluate.evaluate_static(p, ref(f"ghcr.io.evil.com/acme/web@{DIGEST}"))) == [
        f"ImagePolicy prod-images: ghcr.io.evil.com/acme/web@{DIGEST} is from registry "
        "ghcr.io.evil.com, not in allowedRegistries [ghcr.io, registry.acme.internal:5000]"
    ]


def test_forbidden_tags() -> None:
    p = policy({"forbiddenTags": ["latest", "*-dev"]})
    assert evaluate.evaluate_static(p, ref("ghcr.io/acme/web:1.4")) == []
    assert evaluate.evaluate_static(p, ref(f"ghcr.io/acme/web@{DIGEST}")) == []
    assert messages(evaluate.evaluate_static(p, ref("ghcr.io/acme/web:latest"))) == [
        "ImagePolicy prod-images: ghcr.io/acme/web:latest uses tag latest, "
        "forbidden by forbiddenTags [latest, *-dev]"
    ]
    [violation] = evaluate.evaluate_static(p, ref("ghcr.io/acme/web"))
    assert violation.message == (
        "ImagePolicy prod-images: ghcr.io/acme/web uses tag latest (implied: no tag given), "
        "forbidden by forbiddenTags [latest, *-dev]"
    )
    assert (violation.rule, violation.measured, violation.limit) == (
        "forbiddenTags",
        "latest",
        "latest, *-dev",
    )
    assert messages(evaluate.evaluate_static(p, ref(f"ghcr.io/acme/web:2.0-dev@{DIGEST}"))) == [
        f"ImagePolicy prod-images: ghcr.io/acme/web:2.0-dev@{DIGEST} uses tag 2.0-dev, "
        "forbidden by forbiddenTags [latest, *-dev]"
    ]


def test_require_digest() -> None:
    p = policy({"requireDigest": True})
    assert evaluate.evaluate_static(p, ref(f"ghcr.io/acme/web:1.4@{DIGEST}")) == []
    [violation] = evaluate.evaluate_static(p, ref("ghcr.io/acme/web:1.4"))
    assert violation.message == (
        "ImagePolicy prod-images: ghcr.io/acme/web:1.4 is not pinned by digest (tag 1.4), "
        "required by requireDigest"
    )
    assert (violation.rule, violation.measured, violation.limit) == (
        "requireDigest",
        "1.4",
        "digest",
    )


def test_static_rules_report_every_violation() -> None:
    p = policy(
        {"allowedRegistries": ["ghcr.io"], "forbiddenTags": ["latest"], "requireDigest": True}
    )
    assert [v.rule for v in evaluate.evaluate_static(p, ref("nginx"))] == [
        "allowedRegistries",
        "forbiddenTags",
        "requireDigest",
    ]


# ---------------------------------------------------------------------------- facts rules

WEB = "ghcr.io/acme/web:1.4"


def test_max_compressed_size_product_example() -> None:
    p = policy({"maxCompressedSize": "500Mi"})
    reference = ref(WEB)
    [violation] = evaluate.evaluate_facts(
        p, reference, facts(reference, image([800_000_000, 51_863_142]))
    )
    assert violation == evaluate.Violation(
        policy="prod-images",
        rule="maxCompressedSize",
        image=WEB,
        digest=DIGEST,
        message=(
            f"ImagePolicy prod-images: {WEB} ({SHORT}) is 812.4MiB compressed, "
            "over maxCompressedSize 500Mi"
        ),
        measured=851_863_142,
        limit=500 * MiB,
    )
    assert evaluate.evaluate_facts(p, reference, facts(reference, image([500 * MiB]))) == []


def test_size_messages_disambiguate_rounding_and_bare_numbers() -> None:
    reference = ref(WEB)
    over_by_one = facts(reference, image([500 * MiB + 1]))
    assert messages(
        evaluate.evaluate_facts(policy({"maxCompressedSize": "500Mi"}), reference, over_by_one)
    ) == [
        f"ImagePolicy prod-images: {WEB} ({SHORT}) is 500.0MiB (524288001 bytes) compressed, "
        "over maxCompressedSize 500Mi"
    ]
    assert messages(
        evaluate.evaluate_facts(policy({"maxCompressedSize": 100 * MiB}), reference, over_by_one)
    ) == [
        f"ImagePolicy prod-images: {WEB} ({SHORT}) is 500.0MiB compressed, "
        "over maxCompressedSize 104857600 (100.0MiB)"
    ]


def test_max_layers() -> None:
    p = policy({"maxLayers": 3})
    reference = ref(WEB)
    assert evaluate.evaluate_facts(p, reference, facts(reference, image([1, 2, 3]))) == []
    [violation] = evaluate.evaluate_facts(p, reference, facts(reference, image([1, 2, 3, 4])))
    assert violation.message == (
        f"ImagePolicy prod-images: {WEB} ({SHORT}) has 4 layers, over maxLayers 3"
    )
    assert (violation.rule, violation.measured, violation.limit) == ("maxLayers", 4, 3)


def test_max_layer_size() -> None:
    p = policy({"maxLayerSize": "200Mi"})
    reference = ref(WEB)
    assert evaluate.evaluate_facts(p, reference, facts(reference, image([200 * MiB, 5]))) == []
    [violation] = evaluate.evaluate_facts(
        p, reference, facts(reference, image([5, 312 * MiB, 250 * MiB]))
    )
    assert violation.message == (
        f"ImagePolicy prod-images: {WEB} ({SHORT}) has a 312.0MiB layer "
        "sha256:000000000000…, over maxLayerSize 200Mi"
    )
    assert (violation.rule, violation.measured, violation.limit) == (
        "maxLayerSize",
        312 * MiB,
        200 * MiB,
    )


def test_max_layer_size_without_layers() -> None:
    reference = ref(WEB)
    p = policy({"maxLayerSize": "1Mi"})
    assert evaluate.evaluate_facts(p, reference, facts(reference, image([]))) == []


@pytest.mark.parametrize(
    ("user", "described"),
    [
        (None, "no config User"),
        ("", "no config User"),
        ("  ", "no config User"),
        ("root", 'config User "root"'),
        ("0", 'config User "0"'),
        ("00", 'config User "00"'),
        ("0:0", 'config User "0:0"'),
        ("0:1000", 'config User "0:1000"'),
        ("root:wheel", 'config User "root:wheel"'),
        (":1000", 'config User ":1000"'),
        # Go's strconv.Atoi (containerd, kubelet) reads a sign: these are uid 0 too.
        ("+0", 'config User "+0"'),
        ("-0", 'config User "-0"'),
        ("+000:0", 'config User "+000:0"'),
    ],
)
def test_forbid_root_user_refuses(user: str | None, described: str) -> None:
    reference = ref(WEB)
    [violation] = evaluate.evaluate_facts(
        policy({"forbidRootUser": True}), reference, facts(reference, image([1], user=user))
    )
    assert violation.message == (
        f"ImagePolicy prod-images: {WEB} ({SHORT}) runs as root ({described}), "
        "forbidden by forbidRootUser"
    )
    assert (violation.rule, violation.measured, violation.limit) == (
        "forbidRootUser",
        user or "",
        "non-root",
    )


@pytest.mark.parametrize("user", ["1000", "1000:0", "app", "nobody:nogroup", "65532", "10"])
def test_forbid_root_user_allows(user: str) -> None:
    reference = ref(WEB)
    p = policy({"forbidRootUser": True})
    assert evaluate.evaluate_facts(p, reference, facts(reference, image([1], user=user))) == []


@pytest.mark.parametrize(
    ("user", "uid"),
    [("0", 0), ("+0", 0), ("-0", 0), ("007", 7), ("+1000:0", 1000), ("-1", -1), ("", 0)],
)
def test_parse_uid_reads_as_go_atoi(user: str, uid: int) -> None:
    assert evaluate.parse_uid(user) == uid


@pytest.mark.parametrize("user", ["app", "0x0", " 0", "0 ", "1e3", "99999999999999999999"])
def test_parse_uid_names_are_not_uids(user: str) -> None:
    assert evaluate.parse_uid(user) is None


def test_require_numeric_user_refuses_names_as_runasnonroot_does() -> None:
    reference = ref(WEB)
    p = policy({"requireNumericUser": True})
    assert p.rules.forbid_root_user  # implied
    [violation] = evaluate.evaluate_facts(p, reference, facts(reference, image([1], user="app")))
    assert violation.rule == "forbidRootUser"
    assert violation.message == (
        f"ImagePolicy prod-images: {WEB} ({SHORT}) runs as named user 'app' (config User "
        '"app"), which cannot be verified as non-root (requireNumericUser: a uid is required, '
        "as kubelet's runAsNonRoot requires)"
    )
    assert evaluate.evaluate_facts(p, reference, facts(reference, image([1], user="1000"))) == []
    # Without it, a name is taken at its word (documented in the CRD).
    plain = policy({"forbidRootUser": True})
    assert evaluate.evaluate_facts(plain, reference, facts(reference, image([1], user="app"))) == []


def test_unreadable_config_refuses_only_the_user_rule() -> None:
    from imageward import records

    reference = ref(WEB)
    broken = records.replace(
        image([1]), config_problem="is 9437184 bytes (per its descriptor), over the limit"
    )
    p = policy({"forbidRootUser": True, "maxLayers": 5}, failurePolicy="Ignore")
    [violation] = evaluate.evaluate_facts(p, reference, facts(reference, broken))
    assert violation.rule == "forbidRootUser"
    assert "cannot be checked for forbidRootUser: its image config sha256:" in violation.message
    assert "over the limit" in violation.message
    assert (
        evaluate.evaluate_facts(policy({"maxLayers": 5}), reference, facts(reference, broken)) == []
    )


def test_content_violation_names_the_rules_that_needed_the_facts() -> None:
    reference = ref(WEB)
    p = policy({"maxLayers": 5, **SIGNED}, failurePolicy="Ignore")
    violation = evaluate.build_content_violation(p, reference, "manifest x: not JSON")
    assert violation.rule == "signatures"
    assert violation.message == (
        f"ImagePolicy prod-images: {WEB} cannot be checked for signatures, maxLayers: "
        "manifest x: not JSON"
    )
    # Not a lookup: failurePolicy Ignore does not admit it.
    assert not evaluate.combine([evaluate.build_policy_result(p, [violation])]).allowed
    pin_only = policy(pinDigest=True)
    assert evaluate.build_content_violation(pin_only, reference, "x").rule == "pinDigest"


def test_forbid_root_user_off_allows_root() -> None:
    reference = ref(WEB)
    p = policy({"forbidRootUser": False, "maxLayers": 10})
    assert evaluate.evaluate_facts(p, reference, facts(reference, image([1], user="0"))) == []


def test_digest_not_repeated_when_written_in_the_image() -> None:
    reference = ref(f"ghcr.io/acme/web@{DIGEST}")
    assert messages(
        evaluate.evaluate_facts(
            policy({"maxLayers": 1}), reference, facts(reference, image([1, 2]))
        )
    ) == [f"ImagePolicy prod-images: ghcr.io/acme/web@{DIGEST} has 2 layers, over maxLayers 1"]


def test_no_facts_rules_ignore_facts() -> None:
    reference = ref(WEB)
    empty_index = registry_model.ImageFacts(
        reference=reference, digest=DIGEST, media_type="x", is_index=True, images=()
    )
    assert evaluate.evaluate_facts(policy(pinDigest=True), reference, empty_index) == []


# ---------------------------------------------------------------------------- image indexes

ATTESTATION = registry_model.Platform("unknown", "unknown")


def multi_arch(reference: registry_model.ImageReference) -> registry_model.ImageFacts:
    return facts(
        reference,
        image([100 * MiB], platform=LINUX_AMD64, digest_index=1),
        image([900 * MiB], platform=LINUX_ARM64, digest_index=2),
        image([50 * MiB], platform=registry_model.Platform("linux", "arm", "v7"), digest_index=3),
        image([5_000 * MiB], platform=registry_model.Platform("windows", "amd64"), digest_index=4),
        image([5_000 * MiB], user="0", platform=ATTESTATION, digest_index=5),
    )


def test_index_checks_every_image_the_client_selected() -> None:
    # The registry client selects what nodes would run (registry.platforms); every one
    # of them must pass, Windows included when the pod does not exclude Windows nodes.
    reference = ref(WEB)
    p = policy({"maxCompressedSize": "500Mi", "forbidRootUser": True})
    violations = evaluate.evaluate_facts(p, reference, multi_arch(reference))
    # (multi_arch lists an unknown/unknown entry the client would never select.)
    assert [(v.platform, v.rule) for v in violations] == [
        ("linux/arm64", "maxCompressedSize"),
        ("windows/amd64", "maxCompressedSize"),
        ("unknown/unknown", "maxCompressedSize"),
        ("unknown/unknown", "forbidRootUser"),
    ]
    assert violations[0].message == (
        f"ImagePolicy prod-images: {WEB} ({SHORT}, linux/arm64) is 900.0MiB compressed, "
        "over maxCompressedSize 500Mi"
    )
    assert violations[0].digest == DIGEST


def test_index_with_nothing_a_node_runs_is_refused_not_a_lookup() -> None:
    # Content the registry served, not an outage: failurePolicy Ignore must not admit it.
    reference = ref(WEB)
    p = policy({"maxLayers": 10}, failurePolicy="Ignore")
    empty = registry_model.ImageFacts(
        reference=reference, digest=DIGEST, media_type="x", is_index=True, images=()
    )
    [violation] = evaluate.evaluate_facts(
        p,
        reference,
        empty,
        platform=registry_platforms.PlatformChoice("linux", "s390x"),
    )
    assert violation.rule == constants.RULE_MAX_LAYERS
    assert violation.message == (
        f"ImagePolicy prod-images: {WEB} ({SHORT}) cannot be checked for maxLayers: the image "
        "index has no entry a node for linux/s390x would run"
    )
    assert not evaluate.combine([evaluate.build_policy_result(p, [violation])]).allowed


def test_index_without_linux_checks_what_is_there() -> None:
    reference = ref(WEB)
    windows_only = facts(
        reference, image([900 * MiB], platform=registry_model.Platform("windows", "amd64"))
    )
    assert [
        v.platform
        for v in evaluate.evaluate_facts(
            policy({"maxCompressedSize": "1Mi"}), reference, windows_only
        )
    ] == ["windows/amd64"]


def test_single_manifest_is_checked_whatever_the_platform() -> None:
    reference = ref(WEB)
    single = facts(reference, image([2 * MiB]))
    assert [
        v.platform
        for v in evaluate.evaluate_facts(
            policy({"maxCompressedSize": "1Mi"}), reference, single, platform=LINUX_ARM64
        )
    ] == [None]


# ---------------------------------------------------------------------------- signatures, lookups

SIGNED = {
    "signatures": {
        "threshold": 2,
        "authorities": [
            {"name": "release-key", "key": {"secretRef": {"namespace": "a", "name": "k"}}},
            {"name": "ci-key", "key": {"secretRef": {"namespace": "a", "name": "c"}}},
            {
                "name": "github-actions",
                "keyless": {"issuer": "https://i", "subjectRegExp": "^https://github.com/acme/.*$"},
            },
        ],
    }
}


def test_signatures_threshold() -> None:
    p = policy(SIGNED)
    reference = ref(WEB)
    passing = {"release-key": None, "ci-key": None, "github-actions": "no signature found"}
    assert evaluate.evaluate_signatures(p, reference, digest=DIGEST, results=passing) == []
    [violation] = evaluate.evaluate_signatures(
        p,
        reference,
        digest=DIGEST,
        results={"release-key": None, "ci-key": "signature does not verify with key ci-key"},
    )
    assert violation.message == (
        f"ImagePolicy prod-images: {WEB} ({SHORT}) is verified by 1 of 3 authorities, "
        "under signatures threshold 2 (ci-key: signature does not verify with key ci-key; "
        "github-actions: not checked)"
    )
    assert (violation.rule, violation.measured, violation.limit) == ("signatures", 1, 2)


def test_signatures_without_rule() -> None:
    assert evaluate.evaluate_signatures(policy(), ref(WEB), digest=DIGEST, results={}) == []


def test_lookup_violation() -> None:
    p = policy({"maxLayers": 3})
    violation = evaluate.build_lookup_violation(
        p, ref(WEB), "ghcr.io/acme/web:1.4: timed out: no answer within 8s"
    )
    assert violation.message == (
        f"ImagePolicy prod-images: {WEB} lookup failed: "
        "ghcr.io/acme/web:1.4: timed out: no answer within 8s"
    )
    assert (violation.rule, violation.digest, violation.limit) == ("lookup", None, None)


def test_short_digest() -> None:
    assert evaluate.build_short_digest(DIGEST) == SHORT
    assert evaluate.build_short_digest("sha256:abc") == "sha256:abc"


# ---------------------------------------------------------------------------- decisions


def violation_of(p: model.ImagePolicy, rule: str, text: str = "x") -> evaluate.Violation:
    return evaluate.Violation(
        policy=p.name, rule=rule, image=WEB, digest=None, message=f"{p.name}: {text}"
    )


def result(
    rule: str = constants.RULE_MAX_LAYERS, *, mode: str = "Enforce", failure: str = "Fail"
) -> evaluate.PolicyResult:
    p = model.parse_policy(
        {
            "metadata": {"name": f"{mode.lower()}-{failure.lower()}"},
            "spec": {"mode": mode, "failurePolicy": failure},
        }
    )
    return evaluate.build_policy_result(p, [violation_of(p, rule)])


def test_no_policy_allows() -> None:
    decision = evaluate.combine([])
    assert decision == evaluate.Decision(allowed=True)
    assert decision.outcome == "allow"


def test_enforce_denies() -> None:
    decision = evaluate.combine([result()])
    assert not decision.allowed
    assert decision.outcome == "deny"
    assert [v.message for v in decision.violations] == ["enforce-fail: x"]


def test_warn_warns() -> None:
    decision = evaluate.combine([result(mode="Warn")])
    assert decision.allowed
    assert decision.outcome == "warn"
    assert decision.warnings == ("warn-fail: x",)
    assert [v.rule for v in decision.warned] == ["maxLayers"]


def test_audit_allows_and_reports() -> None:
    decision = evaluate.combine([result(mode="Audit"), result(constants.RULE_LOOKUP, mode="Audit")])
    assert decision.allowed
    assert decision.outcome == "allow"
    assert decision.warnings == ()
    assert [v.rule for v in decision.audits] == ["maxLayers", "lookup"]


def test_failure_policy_ignore_turns_lookups_into_warnings() -> None:
    decision = evaluate.combine([result(constants.RULE_LOOKUP, failure="Ignore")])
    assert decision.allowed
    assert decision.warnings == ("allowed by failurePolicy Ignore: enforce-ignore: x",)
    # ... but only lookups: a measured violation still denies.
    assert not evaluate.combine([result(failure="Ignore")]).allowed
    assert not evaluate.combine([result(constants.RULE_LOOKUP)]).allowed


def test_all_policies_must_pass() -> None:
    clean = evaluate.build_policy_result(policy(), [])
    decision = evaluate.combine([clean, result(mode="Warn"), result()])
    assert not decision.allowed
    assert decision.warnings == ("warn-fail: x",)
    assert len(decision.violations) == 1


def test_identical_warnings_are_sent_once() -> None:
    decision = evaluate.combine([result(mode="Warn"), result(mode="Warn")])
    assert decision.warnings == ("warn-fail: x",)
    assert len(decision.warned) == 2


def test_unusable_policy_fails_closed_whatever_its_mode() -> None:
    error = errors.PolicyError(
        "broken", "spec.rules.signatures.authorities[0]: Secret a/k not found"
    )
    unusable = evaluate.build_unusable_result(error, ref(WEB), rule=constants.RULE_SIGNATURES)
    decision = evaluate.combine([unusable])
    assert not decision.allowed
    [violation] = decision.violations
    assert violation.rule == "signatures"
    assert violation.message == (
        f"ImagePolicy broken: {WEB} cannot be checked: the policy is not usable: "
        "spec.rules.signatures.authorities[0]: Secret a/k not found"
    )


def test_end_to_end_product_example() -> None:
    p = policy(
        {"maxCompressedSize": "500Mi", "forbiddenTags": ["latest"]},
        match={"images": ["ghcr.io/acme/**"]},
    )
    reference = ref(WEB)
    assert evaluate.evaluate_match(p, reference)
    assert evaluate.needs_registry(p)
    violations = evaluate.evaluate_static(p, reference) + evaluate.evaluate_facts(
        p, reference, facts(reference, image([851_863_142]))
    )
    decision = evaluate.combine([evaluate.build_policy_result(p, violations)])
    assert decision.outcome == "deny"
    assert [v.message for v in decision.violations] == [
        f"ImagePolicy prod-images: {WEB} ({SHORT}) is 812.4MiB compressed, "
        "over maxCompressedSize 500Mi"
    ]
