"""The ImagePolicy CRD against the real apiserver: mistakes refused at `kubectl apply`
time by the schema and its CEL rules (before the operator ever sees them), defaults,
names, and the columns `kubectl get ipol` prints once the operator has set Ready."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from imageward.localcluster import controlplane
from tests import utils
from tests.cluster import helpers
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster

PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE3zbpmSv6pryzzqp5PN2b3AeDtvEm\n"
    "pN2jYbp7O1ztQ9PHNh6jcBZ2r6lg8PFJ2aSwDcJm8DCmhKm6r6bDoXcy4A==\n"
    "-----END PUBLIC KEY-----\n"
)


@pytest.fixture
def created(
    cluster: controlplane.ControlPlane, imageward_operator: RunningOperator
) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        cluster.kubectl("delete", "ipol", name, "--ignore-not-found", check=False)


def _apply(
    cluster: controlplane.ControlPlane, names: list[str], spec: dict[str, Any]
) -> tuple[str, subprocess.CompletedProcess[str]]:
    name = f"crd-{helpers.uid()}"
    names.append(name)
    body = {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": spec,
    }
    return name, cluster.kubectl("apply", "-f", "-", input=json.dumps(body), check=False)


def _key(name: str) -> dict[str, Any]:
    return {"name": name, "key": {"pem": PEM}}


CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

KEYLESS = {"issuer": "https://token.actions.githubusercontent.com", "subject": "x"}

MISTAKES: list[tuple[str, dict[str, Any], str]] = [
    (
        "threshold above the number of authorities",
        {"signatures": {"threshold": 3, "authorities": [_key("a"), _key("b")]}},
        'spec.rules.signatures: Invalid value: "object": '
        "threshold must not exceed the number of authorities",
    ),
    (
        "an authority with both key and keyless",
        {
            "signatures": {
                "authorities": [{"name": "both", "key": {"pem": PEM}, "keyless": KEYLESS}]
            }
        },
        'spec.rules.signatures.authorities[0]: Invalid value: "object": '
        "set exactly one of key, keyless and notation",
    ),
    (
        "an authority with neither",
        {"signatures": {"authorities": [{"name": "none"}]}},
        "set exactly one of key, keyless and notation",
    ),
    (
        "a notation authority without a trust store",
        {"signatures": {"authorities": [{"name": "n", "notation": {"trustedIdentities": ["*"]}}]}},
        "set trustStore or signingAuthorityTrustStore",
    ),
    (
        "a notation trust store given inline and from a ConfigMap",
        {
            "signatures": {
                "authorities": [
                    {
                        "name": "n",
                        "notation": {
                            "trustStore": {
                                "pem": CERT_PEM,
                                "configMapRef": {"namespace": "n", "name": "c"},
                            },
                            "trustedIdentities": ["*"],
                        },
                    }
                ]
            }
        },
        "set exactly one of pem, secretRef and configMapRef",
    ),
    (
        "a notation verification level notation has but imageward does not (skip)",
        {
            "signatures": {
                "authorities": [
                    {
                        "name": "n",
                        "notation": {
                            "trustStore": {"pem": CERT_PEM},
                            "trustedIdentities": ["*"],
                            "verificationLevel": "skip",
                        },
                    }
                ]
            }
        },
        'Unsupported value: "skip"',
    ),
    (
        "a key given inline and from a Secret",
        {
            "signatures": {
                "authorities": [
                    {"name": "k", "key": {"pem": PEM, "secretRef": {"namespace": "n", "name": "s"}}}
                ]
            }
        },
        "set exactly one of pem and secretRef",
    ),
    (
        "keyless with subject and subjectRegExp",
        {
            "signatures": {
                "authorities": [{"name": "k", "keyless": {**KEYLESS, "subjectRegExp": "^x$"}}]
            }
        },
        "set exactly one of subject and subjectRegExp",
    ),
    (
        "two authorities of one name",
        {"signatures": {"authorities": [_key("same"), _key("same")]}},
        'spec.rules.signatures.authorities[1]: Duplicate value: {"name":"same"}',
    ),
    (
        "a size that is no quantity",
        {"maxCompressedSize": "500 MB"},
        'spec.rules.maxCompressedSize: Invalid value: "500 MB": '
        "spec.rules.maxCompressedSize in body should match",
    ),
    (
        "a negative size",
        {"maxLayerSize": -1},
        'spec.rules.maxLayerSize: Invalid value: "": must be greater than 0',
    ),
    (
        "zero layers",
        {"maxLayers": 0},
        "spec.rules.maxLayers: Invalid value: 0: spec.rules.maxLayers in body should be "
        "greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(
    ("rules", "message"), [(r, m) for _, r, m in MISTAKES], ids=[what for what, _, _ in MISTAKES]
)
def test_mistakes_are_refused_at_apply_time(
    cluster: controlplane.ControlPlane, created: list[str], rules: dict[str, Any], message: str
) -> None:
    name, result = _apply(cluster, created, {"rules": rules})
    assert result.returncode != 0
    assert f'The ImagePolicy "{name}" is invalid' in result.stderr
    assert message in result.stderr, result.stderr
    assert cluster.kubectl("get", "ipol", name, check=False).returncode != 0


def test_mode_and_failure_policy_are_enums(
    cluster: controlplane.ControlPlane, created: list[str]
) -> None:
    _, result = _apply(cluster, created, {"mode": "Deny", "rules": {"maxLayers": 3}})
    assert result.returncode != 0
    assert 'spec.mode: Unsupported value: "Deny": supported values: "Enforce", "Warn", "Audit"' in (
        result.stderr
    )
    _, result = _apply(cluster, created, {"failurePolicy": "Open", "rules": {"maxLayers": 3}})
    assert 'spec.failurePolicy: Unsupported value: "Open"' in result.stderr


def test_defaults_and_printer_columns(
    cluster: controlplane.ControlPlane, created: list[str]
) -> None:
    good, result = _apply(
        cluster, created, {"rules": {"maxLayers": 40, "maxCompressedSize": "500Mi"}}
    )
    assert result.returncode == 0, result.stderr
    spec = cluster.get_json("ipol", good)["spec"]
    assert spec["mode"] == "Enforce" and spec["failurePolicy"] == "Fail"
    assert spec["match"] == {"images": ["**"]}
    assert spec["pinDigest"] is False
    assert spec["allowExceptions"] is True
    broken, result = _apply(
        cluster,
        created,
        {
            "mode": "Audit",
            "rules": {"signatures": {"authorities": [{"name": "k", "key": {"pem": "not a key"}}]}},
        },
    )
    assert result.returncode == 0, result.stderr  # only the operator can tell a PEM is bad

    def rows() -> dict[str, list[str]] | None:
        out = cluster.kubectl("get", "ipol").stdout.splitlines()
        table = {line.split()[0]: line.split() for line in out[1:]}
        if table.get(good, [""] * 3)[2] != "True" or table.get(broken, [""] * 3)[2] != "False":
            return None
        return {"header": out[0].split(), **table}

    table = utils.wait_for("kubectl get ipol to show READY", rows, timeout=30)
    assert table["header"] == ["NAME", "MODE", "READY", "VIOLATIONS", "AGE"]
    assert table[good][:3] == [good, "Enforce", "True"]
    assert table[broken][:3] == [broken, "Audit", "False"]

    def wide_rows() -> list[str] | None:
        # VIOLATIONS stays empty until the background scanner's first pass writes it.
        lines = cluster.kubectl("get", "ipol", broken, "-o", "wide").stdout.splitlines()
        return lines if len(lines[1].split()) == 7 else None

    wide = utils.wait_for("status.violations in kubectl get ipol", wide_rows, timeout=30)
    assert wide[0].split() == [
        "NAME",
        "MODE",
        "READY",
        "VIOLATIONS",
        "FAILURE-POLICY",
        "REASON",
        "AGE",
    ]
    assert wide[1].split()[:6] == [broken, "Audit", "False", "0", "Fail", "InvalidPolicy"]
    category = cluster.kubectl("get", "imageward").stdout
    assert f"imagepolicy.imageward.io/{good}" in category
