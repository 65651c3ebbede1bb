"""Attestations through the real webhook and `imageward check`: attestations written by
real `cosign attest` (both formats: the Sigstore bundle, cosign v3's default, and the
legacy `.att` tag with `--new-bundle-format=false`) into real registries, for each
predicate type people gate on (Trivy's cosign-vuln scan, SPDX JSON, CycloneDX JSON,
SLSA provenance v1 and v0.2, a custom type); keyless ones as a local Sigstore signs
them (`tests.unit.signatures.fakesigstore`). There is no vulnerability database offline,
so the scan's JSON is written here in Trivy's cosign-vuln layout. Each refusal asserts
the sentence a developer reads."""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from imageward.localcluster import controlplane, cosign, images, registries
from tests.cluster import helpers
from tests.cluster.test_check_cli import Check
from tests.conftest import RunningOperator
from tests.unit.signatures import build, fakesigstore

pytestmark = pytest.mark.cluster

DENIED = 'admission webhook "validate.imageward.io" denied the request'
VULN = "https://cosign.sigstore.dev/attestation/vuln/v1"
SPDX = "https://spdx.dev/Document"
CYCLONEDX = "https://cyclonedx.org/bom"
SLSA_V1 = "https://slsa.dev/provenance/v1"
SLSA_V02 = "https://slsa.dev/provenance/v0.2"
CUSTOM = "https://acme.example/release-review/v1"
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _stamp(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def scanner_key(cosign_tool: cosign.Cosign) -> cosign.KeyPair:
    return cosign_tool.generate_key_pair(f"scanner-{helpers.uid()}")


@pytest.fixture(scope="module")
def other_key(cosign_tool: cosign.Cosign) -> cosign.KeyPair:
    return cosign_tool.generate_key_pair(f"other-{helpers.uid()}")


@pytest.fixture
def prefix() -> str:
    return f"att{helpers.uid()}"


@pytest.fixture
def check(tmp_path: pathlib.Path, registry_set: registries.Registries) -> Check:
    return Check(tmp_path, registry_set)


@pytest.fixture
def predicates(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    yield tmp_path


# -- predicates, as the generators write them ---------------------------------------------


def vuln_scan(
    findings: list[tuple[str, str]], *, finished: datetime.datetime = NOW, targets: int = 1
) -> dict[str, Any]:
    """Trivy's `--format cosign-vuln` output: the scan report under scanner.result."""
    results: list[dict[str, Any]] = [
        {"Target": "app (debian 12.8)", "Class": "os-pkgs", "Type": "debian"}
    ]
    if findings:
        results[0]["Vulnerabilities"] = [
            {
                "VulnerabilityID": identifier,
                "PkgName": f"pkg-{index}",
                "InstalledVersion": "1.0.0",
                "FixedVersion": "1.0.1",
                "Severity": severity,
                "Title": f"finding {identifier}",
            }
            for index, (identifier, severity) in enumerate(findings)
        ]
    results += [
        {"Target": f"lib-{i}", "Class": "lang-pkgs", "Type": "pip"} for i in range(1, targets)
    ]
    return {
        "invocation": {"parameters": None, "uri": "", "event_id": "", "builder.id": ""},
        "scanner": {
            "uri": "pkg:github/aquasecurity/trivy@v0.58.1",
            "version": "0.58.1",
            "db": {"uri": "", "version": ""},
            "result": {
                "SchemaVersion": 2,
                "CreatedAt": _stamp(finished),
                "ArtifactName": "app",
                "ArtifactType": "container_image",
                "Results": results,
            },
        },
        "metadata": {
            "scanStartedOn": _stamp(finished - datetime.timedelta(seconds=40)),
            "scanFinishedOn": _stamp(finished),
        },
    }


def spdx_document() -> dict[str, Any]:
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": "app",
        "documentNamespace": f"https://acme.example/spdx/app-{helpers.uid()}",
        "creationInfo": {"created": _stamp(NOW), "creators": ["Tool: syft-1.18.1"]},
        "packages": [
            {
                "name": "openssl",
                "SPDXID": "SPDXRef-Package-openssl",
                "versionInfo": "3.0.15",
                "licenseConcluded": "Apache-2.0",
                "downloadLocation": "NOASSERTION",
            }
        ],
    }


def cyclonedx_bom() -> dict[str, Any]:
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{helpers.uid()}-0000-0000-0000-000000000000",
        "version": 1,
        "metadata": {"timestamp": _stamp(NOW), "tools": [{"name": "syft", "version": "1.18.1"}]},
        "components": [{"type": "library", "name": "openssl", "version": "3.0.15"}],
    }


def slsa_v1() -> dict[str, Any]:
    return {
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {
                "workflow": {"ref": "refs/heads/main", "repository": "acme/app"}
            },
            "resolvedDependencies": [],
        },
        "runDetails": {
            "builder": {"id": "https://github.com/acme/app/.github/workflows/release.yml"},
            "metadata": {
                "invocationId": "run-1",
                "startedOn": _stamp(NOW - datetime.timedelta(minutes=3)),
                "finishedOn": _stamp(NOW),
            },
        },
    }


def slsa_v02() -> dict[str, Any]:
    return {
        "builder": {"id": "https://github.com/acme/app/.github/workflows/release.yml"},
        "buildType": "https://github.com/slsa-framework/slsa-github-generator/generic@v1",
        "invocation": {"configSource": {"uri": "git+https://github.com/acme/app@refs/heads/main"}},
        "metadata": {
            "buildStartedOn": _stamp(NOW - datetime.timedelta(minutes=3)),
            "buildFinishedOn": _stamp(NOW),
            "completeness": {"parameters": True, "environment": False, "materials": False},
        },
        "materials": [{"uri": "git+https://github.com/acme/app", "digest": {"sha1": "0" * 40}}],
    }


def custom_review() -> dict[str, Any]:
    return {"reviewer": "security-team", "decision": "approved", "ticket": "SEC-1234"}


# (cosign --type, predicateType, predicate, a condition that holds for it)
TYPES: list[tuple[str, str, Any, str]] = [
    ("vuln", VULN, vuln_scan([("CVE-2026-0100", "LOW")]), "predicate.scanner.version != ''"),
    ("spdxjson", SPDX, spdx_document(), "predicate.packages.exists(p, p.name == 'openssl')"),
    ("cyclonedx", CYCLONEDX, cyclonedx_bom(), "predicate.components.size() > 0"),
    (
        "slsaprovenance1",
        SLSA_V1,
        slsa_v1(),
        "predicate.runDetails.builder.id.startsWith('https://github.com/acme/')",
    ),
    (
        "slsaprovenance02",
        SLSA_V02,
        slsa_v02(),
        "predicate.builder.id.startsWith('https://github.com/acme/')",
    ),
    # A type cosign does not know: the JSON goes in as it is, and has no time of its own.
    (CUSTOM, CUSTOM, custom_review(), "predicate.decision == 'approved'"),
]


def _authority(name: str, key: cosign.KeyPair) -> dict[str, Any]:
    return {"name": name, "key": {"pem": key.public_pem}}


def _policy(name: str, images_: list[str], attestations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {"match": {"images": images_}, "rules": {"attestations": attestations}},
    }


def _attest(
    tool: cosign.Cosign,
    directory: pathlib.Path,
    image: str,
    key: cosign.KeyPair,
    predicate: Any,
    kind: str,
    *,
    legacy: bool = False,
) -> None:
    path = directory / f"predicate-{helpers.uid()}.json"
    path.write_text(json.dumps(predicate))
    tool.attest(image, key, path, predicate_type=kind, legacy=legacy)


def _dry_run(
    cluster: controlplane.ControlPlane, namespace: str, obj: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(obj),
        check=False,
    )


# -- every predicate type, both formats, real cosign ------------------------------------------


def test_each_predicate_type_in_both_formats_verifies_as_cosign_does(
    check: Check,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    scanner_key: cosign.KeyPair,
    predicates: pathlib.Path,
    prefix: str,
) -> None:
    documents = []
    expected: dict[str, tuple[str, str]] = {}
    for index, (kind, predicate_type, predicate, condition) in enumerate(TYPES):
        entry = {
            "name": f"type-{index}",
            "predicateType": predicate_type,
            "authorities": [_authority("builder", scanner_key)],
            "conditions": [{"expression": condition, "message": "the predicate is as expected"}],
        }
        if predicate_type != CUSTOM:
            entry["maxAge"] = "24h"
        documents.append(
            _policy(f"type-{index}", [f"{anonymous.host}/{prefix}/t{index}-*/**"], [entry])
        )
        for legacy in (False, True):
            image, digest = helpers.push(
                anonymous,
                images.nonroot_image(f"{prefix}-{index}-{legacy}"),
                prefix=f"{prefix}/t{index}-{'legacy' if legacy else 'bundle'}",
            )
            pinned = helpers.pinned(image, digest)
            _attest(cosign_tool, predicates, pinned, scanner_key, predicate, kind, legacy=legacy)
            verified = cosign_tool.verify_attestation(pinned, scanner_key, predicate_type=kind)
            assert verified.returncode == 0, verified.stderr  # cosign agrees
            expected[image] = (f"type-{index}", predicate_type)
    policy = check.policy_file(*documents)

    status, report = check.json("--policy", policy, *expected)
    denied = [(i["image"], i["attestations"]) for i in report["images"] if i["decision"] != "allow"]
    assert status == 0, json.dumps(denied, indent=1)
    for item in report["images"]:
        name, predicate_type = expected[item["image"]]
        assert item["decision"] == "allow", item
        (result,) = item["attestations"]
        assert result["policy"] == name and result["name"] == name
        assert result["result"] == "pass", (predicate_type, result)
        assert "verified by builder" in result["message"]
        assert "1 condition holds" in result["message"]
        if predicate_type != CUSTOM:
            assert "was made" in result["message"]  # maxAge found the type's own time


# -- refusals and admissions through the webhook and imageward check ------------------------

GATE = {
    "name": "no-critical-cves",
    "predicateType": VULN,
    "vulnerabilities": {
        "forbiddenSeverities": ["CRITICAL"],
        "maxScanAge": "168h",
        "ignore": [
            {"id": "CVE-2026-3000", "until": "2099-01-01T00:00:00Z", "reason": "not reachable"},
            {"id": "CVE-2026-4000", "until": "2026-01-01T00:00:00Z", "reason": "was to be fixed"},
        ],
    },
    "conditions": [
        {
            "expression": "predicate.scanner.result.Results.all(r, "
            "!has(r.Vulnerabilities) || r.Vulnerabilities.size() <= 3)",
            "message": "at most 3 findings per target",
        }
    ],
}
SBOM = {"name": "sbom", "predicateType": SPDX, "required": False}

# (id, findings, scan finished, signer ("scanner"/"other"/None), legacy, admitted, says)
CASES: list[tuple[str, list[tuple[str, str]], datetime.timedelta, str | None, bool, bool, str]] = [
    ("clean", [("CVE-2026-0001", "LOW")], datetime.timedelta(hours=1), "scanner", False, True, ""),
    (
        "critical",
        [("CVE-2026-1111", "CRITICAL"), ("CVE-2026-1112", "HIGH")],
        datetime.timedelta(hours=1),
        "scanner",
        True,
        False,
        "attestation no-critical-cves: has 1 finding of a severity forbidden by "
        "vulnerabilities.forbiddenSeverities [CRITICAL]: CVE-2026-1111 (CRITICAL)",
    ),
    (
        "stale",
        [],
        datetime.timedelta(days=10),
        "scanner",
        False,
        False,
        "attestation no-critical-cves: was scanned 10d0h ago (metadata.scanFinishedOn ",
    ),
    (
        "ignored",
        [("CVE-2026-3000", "CRITICAL")],
        datetime.timedelta(hours=1),
        "scanner",
        True,
        True,
        "",
    ),
    (
        "ignore-expired",
        [("CVE-2026-4000", "CRITICAL")],
        datetime.timedelta(hours=1),
        "scanner",
        False,
        False,
        "CVE-2026-4000 (CRITICAL, its ignore expired 2026-01-01T00:00:00Z)",
    ),
    (
        "other-key",
        [],
        datetime.timedelta(hours=1),
        "other",
        False,
        False,
        "attestation no-critical-cves: is verified by 0 of 1 authorities, under threshold 1 "
        "(scanner: attestation signature does not verify with key scanner)",
    ),
    (
        "missing",
        [],
        datetime.timedelta(hours=1),
        None,
        False,
        False,
        f"attestation no-critical-cves: has no attestation of predicateType {VULN} (required)",
    ),
    (
        "condition",
        [(f"CVE-2026-50{i}", "LOW") for i in range(4)],
        datetime.timedelta(hours=1),
        "scanner",
        True,
        False,
        "attestation no-critical-cves: condition failed: at most 3 findings per target",
    ),
]


def _gate(key: cosign.KeyPair) -> list[dict[str, Any]]:
    return [
        {**GATE, "authorities": [_authority("scanner", key)]},
        {**SBOM, "authorities": [_authority("scanner", key)]},
    ]


def test_refusals_and_admissions_through_the_webhook_and_check(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    scanner_key: cosign.KeyPair,
    other_key: cosign.KeyPair,
    check: Check,
    predicates: pathlib.Path,
    prefix: str,
) -> None:
    keys = {"scanner": scanner_key, "other": other_key}
    pushed: dict[str, tuple[str, str]] = {}
    for case, findings, age, signer, legacy, _, _ in CASES:
        image, digest = helpers.push(
            anonymous, images.nonroot_image(f"{prefix}-{case}"), prefix=prefix
        )
        pushed[case] = (image, digest)
        if signer is not None:
            scan = vuln_scan(findings, finished=NOW - age)
            _attest(
                cosign_tool,
                predicates,
                helpers.pinned(image, digest),
                keys[signer],
                scan,
                "vuln",
                legacy=legacy,
            )
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], {"attestations": _gate(scanner_key)})
    cli_policy = check.policy_file(
        _policy(name, [f"{anonymous.host}/{prefix}/**"], _gate(scanner_key))
    )
    status, report = check.json("--policy", cli_policy, *(image for image, _ in pushed.values()))
    assert status == 1
    by_image = {item["image"]: item for item in report["images"]}

    for case, _, _, _, _, admitted, says in CASES:
        image, digest = pushed[case]
        answer = _dry_run(cluster, namespace, helpers.pod("app", image))
        item = by_image[image]
        results = {a["name"]: a for a in item["attestations"]}
        assert results["sbom"]["result"] == "pass", results  # optional and absent
        if admitted:
            assert answer.returncode == 0, (case, answer.stderr)
            assert item["decision"] == "allow", (case, item)
            assert results["no-critical-cves"]["result"] == "pass"
            continue
        assert answer.returncode != 0, case
        assert DENIED in answer.stderr
        head = f"ImagePolicy {name}: {image} (sha256:{digest[7:19]}…) "
        assert head + says.split(": ", 1)[0] in answer.stderr or head in answer.stderr, case
        assert says in answer.stderr, (case, answer.stderr)
        # imageward check says the same, under the same rule id.
        assert item["decision"] == "deny", (case, item)
        (violation,) = item["violations"]
        assert violation["rule"] == "attestations"
        assert says in violation["message"], (case, violation)
        assert results["no-critical-cves"]["result"] == "fail"
        assert (
            says.removeprefix("attestation no-critical-cves: ")
            in (results["no-critical-cves"]["message"])
        )


def test_an_attestation_copied_to_another_digest_is_refused(
    check: Check,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    scanner_key: cosign.KeyPair,
    predicates: pathlib.Path,
    prefix: str,
) -> None:
    """A pusher copies a clean scan of one image onto another image's tags, in both
    formats: the signature verifies, but the statement names the first digest."""
    client = anonymous.client()
    repository = f"{prefix}/copy"
    scanned = client.push(repository, images.nonroot_image(f"{prefix}-scanned"), tag="scanned")
    target = client.push(repository, images.nonroot_image(f"{prefix}-target"), tag="1.0")
    _attest(cosign_tool, predicates, scanned.pinned, scanner_key, vuln_scan([]), "vuln")
    _attest(
        cosign_tool, predicates, scanned.pinned, scanner_key, vuln_scan([]), "vuln", legacy=True
    )
    for suffix in ("", ".att"):
        source = client.get_manifest(repository, f"sha256-{scanned.digest[7:]}{suffix}")
        client.push_manifest(
            repository, f"sha256-{target.digest[7:]}{suffix}", source.body, source.media_type
        )
    policy = check.policy_file(
        _policy("copied", [f"{anonymous.host}/{prefix}/**"], _gate(scanner_key)[:1])
    )
    image = f"{anonymous.host}/{repository}:1.0"
    status, report = check.json("--policy", policy, image)
    assert status == 1
    (violation,) = report["images"][0]["violations"]
    assert violation["rule"] == "attestations"
    assert (
        f"is verified by 0 of 1 authorities, under threshold 1 (scanner: attestation names "
        f"another digest sha256:{scanned.digest[7:19]}… (subject), not "
    ) in violation["message"]


def test_a_deployment_with_a_critical_finding_is_refused_at_apply_time(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    scanner_key: cosign.KeyPair,
    predicates: pathlib.Path,
    prefix: str,
) -> None:
    image, digest = helpers.push(anonymous, images.nonroot_image(f"{prefix}-dep"), prefix=prefix)
    scan = vuln_scan([(f"CVE-2026-70{i}", "CRITICAL") for i in range(7)])
    _attest(cosign_tool, predicates, helpers.pinned(image, digest), scanner_key, scan, "vuln")
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], {"attestations": _gate(scanner_key)})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }
    refused = helpers.create(cluster, namespace, deployment)
    assert refused.returncode != 0
    assert DENIED in refused.stderr
    # At most five ids, then a count.
    assert (
        f"ImagePolicy {name}: {image} (sha256:{digest[7:19]}…) attestation no-critical-cves: "
        "has 7 findings of a severity forbidden by vulnerabilities.forbiddenSeverities "
        "[CRITICAL]: CVE-2026-700 (CRITICAL), CVE-2026-701 (CRITICAL), CVE-2026-702 (CRITICAL), "
        "CVE-2026-703 (CRITICAL), CVE-2026-704 (CRITICAL) and 2 more"
    ) in refused.stderr


# -- keyless, a bad expression, metrics ---------------------------------------------------------


def _push_attestation_bundle(
    registry: registries.Registry, repository: str, digest: str, bundle: dict[str, Any]
) -> None:
    """An attestation bundle as cosign v3 attaches it without a referrers API."""
    client = registry.client()
    subject = client.get_manifest(repository, digest)
    raw = json.dumps(bundle).encode()
    referrer = images.build_artifact(
        [images.Blob.of(raw, build.BUNDLE_V03)],
        artifact_type=build.BUNDLE_V03,
        subject=images.Manifest(subject.body, subject.media_type, subject.digest),
        annotations={
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": VULN,
        },
    )
    client.push(repository, referrer)
    tag = digest.replace(":", "-")
    index = {
        "schemaVersion": 2,
        "mediaType": images.OCI_INDEX,
        "manifests": [referrer.descriptor()],
    }
    client.push_manifest(repository, tag, images.canonical_json(index), images.OCI_INDEX)


def _keyless_statement(digest: str, scan: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "app", "digest": {"sha256": digest[7:]}}],
            "predicateType": VULN,
            "predicate": scan,
        }
    ).encode()


def test_keyless_attestations_are_checked_against_identity_and_trusted_root(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    sigstore = fakesigstore.FakeSigstore(name=f"local{helpers.uid()}")
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "sigstore-root", "namespace": namespace},
            "data": {"trusted_root.json": sigstore.trusted_root_json().decode()},
        }
    )
    evil_subject = "https://github.com/evil/app/.github/workflows/scan.yml@refs/heads/main"
    made = {}
    for case, subject, findings in (
        ("good", build.WORKFLOW, [("CVE-2026-0001", "LOW")]),
        ("critical", build.WORKFLOW, [("CVE-2026-9999", "CRITICAL")]),
        ("evil", evil_subject, []),
    ):
        image, digest = helpers.push(
            anonymous, images.nonroot_image(f"{prefix}-{case}"), prefix=prefix
        )
        leaf = sigstore.issue(subject=subject, issuer=build.GITHUB)
        signed = build.keyless_bundle(
            sigstore, leaf, _keyless_statement(digest, vuln_scan(findings))
        )
        _push_attestation_bundle(anonymous, helpers.repository_of(image)[1], digest, signed)
        made[case] = (image, digest)
    authority = {
        "name": "ci-scanner",
        "keyless": {
            "issuer": build.GITHUB,
            "subject": build.WORKFLOW,
            "trustedRoot": {"configMapRef": {"namespace": namespace, "name": "sigstore-root"}},
        },
    }
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"],
        {"attestations": [{**GATE, "authorities": [authority]}]},
    )
    good = _dry_run(cluster, namespace, helpers.pod("good", made["good"][0]))
    assert good.returncode == 0, good.stderr
    critical = _dry_run(cluster, namespace, helpers.pod("critical", made["critical"][0]))
    assert critical.returncode != 0
    assert "CVE-2026-9999 (CRITICAL)" in critical.stderr
    evil = _dry_run(cluster, namespace, helpers.pod("evil", made["evil"][0]))
    assert evil.returncode != 0
    assert (
        f"ImagePolicy {name}: {made['evil'][0]} (sha256:{made['evil'][1][7:19]}…) attestation "
        f"no-critical-cves: is verified by 0 of 1 authorities, under threshold 1 (ci-scanner: "
        f"identity mismatch: issuer {build.GITHUB} subject {evil_subject}"
    ) in evil.stderr

    samples: dict[str, float] = {}
    for line in imageward_operator.metrics().splitlines():
        if line.startswith("imageward_attestation_verifications_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels["policy"] == name:
                samples[labels["result"]] = float(line.rsplit(" ", 1)[1])
    assert samples.get("pass", 0) >= 1 and samples.get("fail", 0) >= 2, samples


def test_a_condition_that_does_not_compile_makes_the_policy_unusable(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    scanner_key: cosign.KeyPair,
    prefix: str,
) -> None:
    image, _ = helpers.push(anonymous, images.nonroot_image(f"{prefix}-bad"), prefix=prefix)
    entry = {
        "name": "typo",
        "predicateType": VULN,
        "authorities": [_authority("scanner", scanner_key)],
        "conditions": [{"expression": "predicate.scanner.result.Results.size() > 0 && prediate.x"}],
    }
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"], {"attestations": [entry]}, ready="False"
    )
    condition = policies.ready_condition(name)
    assert condition is not None and condition["reason"] == "InvalidPolicy"
    assert (
        "spec.rules.attestations[typo].conditions[0]: CEL expression "
        "'predicate.scanner.result.Results.size() > 0 && prediate.x' does not compile: "
        "ERROR: <input>:1:"
    ) in condition["message"]
    assert "undeclared reference to 'prediate.x'" in condition["message"]
    refused = _dry_run(cluster, namespace, helpers.pod("app", image))
    assert refused.returncode != 0
    assert "the policy is not usable" in refused.stderr and "undeclared reference" in refused.stderr
