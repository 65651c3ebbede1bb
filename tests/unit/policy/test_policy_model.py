from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from imageward import errors
from imageward.policy import model, selectors

PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"

# The product specification's example, as a user would write it in a file.
PRODUCT_EXAMPLE = f"""
apiVersion: imageward.io/v1alpha1
kind: ImagePolicy
metadata: {{name: prod-images, generation: 3}}
spec:
  mode: Enforce
  failurePolicy: Fail
  match:
    images: ["ghcr.io/acme/**"]
    excludeImages: []
    namespaceSelector: {{}}
    podSelector: {{}}
  rules:
    allowedRegistries: ["ghcr.io", "registry.acme.internal:5000"]
    forbiddenTags: ["latest"]
    requireDigest: false
    maxCompressedSize: 500Mi
    maxLayers: 40
    maxLayerSize: 200Mi
    forbidRootUser: true
    signatures:
      threshold: 1
      authorities:
        - name: release-key
          key:
            pem: {json.dumps(PEM)}
        - name: from-secret
          key:
            secretRef: {{namespace: imageward, name: keys}}
        - name: github-actions
          keyless:
            issuer: https://token.actions.githubusercontent.com
            subjectRegExp: "^https://github.com/acme/.*"
            trustedRoot: {{configMapRef: {{namespace: imageward, name: roots}}}}
  pinDigest: true
"""


def example() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PRODUCT_EXAMPLE)
    return loaded


def parse_error(obj: dict[str, Any]) -> str:
    with pytest.raises(errors.PolicyError) as excinfo:
        model.parse_policy(obj)
    return excinfo.value.reason


def test_product_example() -> None:
    policy = model.parse_policy(example())
    assert policy.name == "prod-images"
    assert policy.generation == 3
    assert policy.mode is model.Mode.ENFORCE
    assert policy.failure_policy is model.FailurePolicy.FAIL
    assert policy.pin_digest is True
    assert [p.normalised for p in policy.match.images] == ["ghcr.io/acme/**"]
    assert policy.match.exclude_images == ()
    assert policy.match.namespace_selector == selectors.EMPTY
    rules = policy.rules
    assert rules.allowed_registries is not None
    assert [h.text for h in rules.allowed_registries] == ["ghcr.io", "registry.acme.internal:5000"]
    assert [t.text for t in rules.forbidden_tags] == ["latest"]
    assert rules.require_digest is False
    assert rules.max_compressed_size is not None
    assert (rules.max_compressed_size.text, rules.max_compressed_size.bytes) == ("500Mi", 500 << 20)
    assert rules.max_layers == 40
    assert rules.max_layer_size is not None and rules.max_layer_size.bytes == 200 << 20
    assert rules.forbid_root_user is True
    assert rules.signatures == model.Signatures(
        threshold=1,
        authorities=(
            model.Authority(name="release-key", key=model.KeyAuthority(pem=PEM)),
            model.Authority(
                name="from-secret",
                key=model.KeyAuthority(
                    secret_ref=model.SecretKeyRef(
                        namespace="imageward", name="keys", key="cosign.pub"
                    )
                ),
            ),
            model.Authority(
                name="github-actions",
                keyless=model.KeylessAuthority(
                    issuer="https://token.actions.githubusercontent.com",
                    subject_regexp="^https://github.com/acme/.*",
                    trusted_root=model.ConfigMapKeyRef(
                        namespace="imageward", name="roots", key="trusted_root.json"
                    ),
                ),
            ),
        ),
    )


def test_defaults() -> None:
    policy = model.parse_policy({"metadata": {"name": "minimal"}, "spec": {}})
    assert policy.generation == 0
    assert policy.mode is model.Mode.ENFORCE
    assert policy.failure_policy is model.FailurePolicy.FAIL
    assert [p.text for p in policy.match.images] == ["**"]
    assert policy.rules == model.Rules()
    assert policy.pin_digest is False
    assert model.parse_policy({"metadata": {"name": "no-spec"}}).rules == model.Rules()


def test_apiserver_defaulted_object() -> None:
    # The shape the API server returns after CRD defaulting (null-free, extra metadata).
    obj = {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": "st", "generation": 1, "uid": "x", "managedFields": []},
        "spec": {
            "failurePolicy": "Fail",
            "match": {"images": ["**"]},
            "mode": "Warn",
            "pinDigest": False,
            "rules": {"forbidRootUser": False, "maxLayerSize": 1000000000, "requireDigest": False},
        },
        "status": {"observedGeneration": 1, "conditions": []},
    }
    policy = model.parse_policy(obj)
    assert policy.mode is model.Mode.WARN
    assert policy.rules.max_layer_size is not None
    assert policy.rules.max_layer_size.bytes == 10**9


def modified(path: str, value: Any) -> dict[str, Any]:
    """The product example with one field (dotted path, [n] for list items) replaced."""
    obj = copy.deepcopy(example())
    target: Any = obj
    keys = [
        int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")
    ]
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return obj


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("kind", "Pod", "kind: 'Pod' is not ImagePolicy"),
        (
            "apiVersion",
            "imageward.io/v1",
            "apiVersion: 'imageward.io/v1' is not imageward.io/v1alpha1",
        ),
        ("metadata.name", _DELETE, "metadata.name: required"),
        ("metadata.name", "Prod", "metadata.name: 'Prod' is not a valid Kubernetes object name"),
        ("spec.mode", "Block", "spec.mode: 'Block' is not one of Enforce, Warn, Audit"),
        ("spec.failurePolicy", "fail", "spec.failurePolicy: 'fail' is not one of Fail, Ignore"),
        ("spec.pinDigest", "yes", "spec.pinDigest: must be true or false, not 'yes'"),
        (
            "spec.extra",
            1,
            "spec.extra: unknown field (known: allowExceptions, failurePolicy, match, mode, "
            "pinDigest, rules)",
        ),
        (
            "spec.match.images",
            [],
            "spec.match.images: empty: the policy would match nothing (omit for all)",
        ),
        ("spec.match.images", "ghcr.io/**", "spec.match.images: must be a list"),
        (
            "spec.match.images[0]",
            "ghcr.io/Acme/**",
            "spec.match.images[0]: 'ghcr.io/Acme/**': repository paths are lowercase",
        ),
        ("spec.match.images[0]", 5, "spec.match.images[0]: must be a string"),
        (
            "spec.match.excludeImages",
            ["ghcr.io/acme/a**"],
            "spec.match.excludeImages[0]: 'ghcr.io/acme/a**': ** must be a whole path segment",
        ),
        (
            "spec.match.podSelector",
            {"matchLabels": {"a": 1}},
            "spec.match.podSelector.matchLabels[a]: label value 1 must be a string (quote it)",
        ),
        (
            "spec.match.namespaceSelector",
            {"matchExpressions": [{"key": "a", "operator": "Has"}]},
            (
                "spec.match.namespaceSelector.matchExpressions[0].operator: 'Has' is not one of "
                "In, NotIn, Exists, DoesNotExist"
            ),
        ),
        (
            "spec.rules.maxCompresedSize",
            "1Gi",
            (
                "spec.rules.maxCompresedSize: unknown field (known: allowedRegistries, "
                "attestations, forbidRootUser, forbiddenTags, maxCompressedSize, maxLayerSize, "
                "maxLayers, requireDigest, requireNumericUser, signatures)"
            ),
        ),
        (
            "spec.rules.maxCompressedSize",
            "500MB",
            (
                "spec.rules.maxCompressedSize: '500MB' is not a Kubernetes quantity (expected e.g. "
                "500Mi, 1Gi, 1500M) (Kubernetes writes 500Mi or 500M, not 500MB or 500mb)"
            ),
        ),
        (
            "spec.rules.maxCompressedSize",
            "500m",
            (
                "spec.rules.maxCompressedSize: '500m' is not a whole number of bytes "
                "(did you mean M, the mega suffix, not m?)"
            ),
        ),
        ("spec.rules.maxLayerSize", 0, "spec.rules.maxLayerSize: must be greater than 0"),
        ("spec.rules.maxLayers", 0, "spec.rules.maxLayers: must be at least 1"),
        ("spec.rules.maxLayers", "40", "spec.rules.maxLayers: must be an integer, not '40'"),
        ("spec.rules.maxLayers", True, "spec.rules.maxLayers: must be an integer, not True"),
        (
            "spec.rules.allowedRegistries",
            [],
            "spec.rules.allowedRegistries: empty: no image could pass (omit to allow any registry)",
        ),
        (
            "spec.rules.allowedRegistries[0]",
            "ghcr.io/acme",
            (
                "spec.rules.allowedRegistries[0]: 'ghcr.io/acme': a registry is a host[:port], "
                "without path"
            ),
        ),
        (
            "spec.rules.forbiddenTags[0]",
            "a/b",
            "spec.rules.forbiddenTags[0]: 'a/b': a tag pattern cannot contain '/', ':' or '@'",
        ),
        (
            "spec.rules.forbidRootUser",
            "true",
            "spec.rules.forbidRootUser: must be true or false, not 'true'",
        ),
        (
            "spec.rules.signatures.threshold",
            4,
            (
                "spec.rules.signatures.threshold: 4 is more than the 3 authorities listed: "
                "no image could ever pass"
            ),
        ),
        (
            "spec.rules.signatures.threshold",
            0,
            "spec.rules.signatures.threshold: must be at least 1",
        ),
        (
            "spec.rules.signatures.authorities",
            [],
            "spec.rules.signatures.authorities: at least one authority is required",
        ),
        (
            "spec.rules.signatures.authorities[1].name",
            "release-key",
            "spec.rules.signatures.authorities[1].name: duplicate authority 'release-key'",
        ),
        (
            "spec.rules.signatures.authorities[1].name",
            "bad name",
            (
                "spec.rules.signatures.authorities[1].name: 'bad name': at most 63 alphanumerics, "
                "'-', '_' or '.', starting and ending with an alphanumeric"
            ),
        ),
        (
            "spec.rules.signatures.authorities[0].name",
            _DELETE,
            "spec.rules.signatures.authorities[0].name: required",
        ),
        (
            "spec.rules.signatures.authorities[0].keyless",
            {"issuer": "x", "subject": "y"},
            "spec.rules.signatures.authorities[0]: set exactly one of key, keyless and notation",
        ),
        (
            "spec.rules.signatures.authorities[0].key",
            _DELETE,
            "spec.rules.signatures.authorities[0]: set exactly one of key, keyless and notation",
        ),
        (
            "spec.rules.signatures.authorities[0].key.secretRef",
            {"namespace": "a", "name": "b"},
            "spec.rules.signatures.authorities[0].key: set exactly one of pem and secretRef",
        ),
        (
            "spec.rules.signatures.authorities[0].key.pem",
            "cosign.pub",
            (
                "spec.rules.signatures.authorities[0].key.pem: is not PEM text (-----BEGIN PUBLIC "
                "KEY----- ...)"
            ),
        ),
        (
            "spec.rules.signatures.authorities[1].key.secretRef.name",
            _DELETE,
            "spec.rules.signatures.authorities[1].key.secretRef.name: required",
        ),
        (
            "spec.rules.signatures.authorities[1].key.secretRef.namespace",
            "Bad_NS",
            (
                "spec.rules.signatures.authorities[1].key.secretRef.namespace: 'Bad_NS' is not a "
                "valid Kubernetes object name"
            ),
        ),
        (
            "spec.rules.signatures.authorities[2].keyless.subjectRegExp",
            "^(",
            (
                "spec.rules.signatures.authorities[2].keyless.subjectRegExp: invalid regular "
                "expression: missing ), unterminated subpattern at position 1"
            ),
        ),
        (
            "spec.rules.signatures.authorities[2].keyless.subjectRegExp",
            _DELETE,
            (
                "spec.rules.signatures.authorities[2].keyless: set exactly one of subject and "
                "subjectRegExp"
            ),
        ),
        (
            "spec.rules.signatures.authorities[2].keyless.issuerRegExp",
            ".*",
            (
                "spec.rules.signatures.authorities[2].keyless: set exactly one of issuer and "
                "issuerRegExp"
            ),
        ),
        (
            "spec.rules.signatures.authorities[2].keyless.trustedRoot",
            {"configMapRef": {"name": "x"}},
            (
                "spec.rules.signatures.authorities[2].keyless.trustedRoot.configMapRef.namespace: "
                "required"
            ),
        ),
        (
            "spec.rules.signatures.authorities[2].keyless.trustedRoot",
            {"configMap": {}},
            (
                "spec.rules.signatures.authorities[2].keyless.trustedRoot.configMap: unknown field "
                "(known: configMapRef)"
            ),
        ),
    ],
)
def test_parse_errors(path: str, value: Any, reason: str) -> None:
    assert parse_error(modified(path, value)) == reason


def test_policy_error_names_the_policy() -> None:
    with pytest.raises(errors.PolicyError) as excinfo:
        model.parse_policy(modified("spec.rules.maxLayers", -1))
    assert excinfo.value.policy == "prod-images"
    assert str(excinfo.value) == "ImagePolicy prod-images: spec.rules.maxLayers: must be at least 1"
    assert excinfo.value.__cause__ is None


def test_unnamed_policy() -> None:
    with pytest.raises(errors.PolicyError) as excinfo:
        model.parse_policy({"spec": {}})
    assert str(excinfo.value) == "ImagePolicy <unnamed>: metadata.name: required"


def test_parse_match_of_an_unusable_policy() -> None:
    obj = modified("spec.rules.maxCompressedSize", "lots")
    with pytest.raises(errors.PolicyError):
        model.parse_policy(obj)
    match = model.parse_match(obj)
    assert [p.text for p in match.images] == ["ghcr.io/acme/**"]
    assert [p.text for p in model.parse_match({"metadata": {"name": "x"}}).images] == ["**"]
    with pytest.raises(errors.PolicyError) as excinfo:
        model.parse_match(modified("spec.match.images", ["ghcr.io/ACME/**"]))
    assert excinfo.value.reason == (
        "spec.match.images[0]: 'ghcr.io/ACME/**': repository paths are lowercase"
    )


def test_policies_are_frozen_and_hashable() -> None:
    policy = model.parse_policy(example())
    assert policy == model.parse_policy(example())
    hash(policy)
    with pytest.raises(AttributeError):
        policy.name = "other"  # type: ignore[misc]
