"""Background scans and PolicyReports, through the real operator (the session's, under the
chart's RBAC), real registries and real cosign signatures.

The session operator scans every IMAGEWARD_SCAN_INTERVAL (tests/conftest.py sets it
short); policy and workload changes are scanned as they happen.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from imageward.localcluster import controlplane, cosign, images, registries
from tests import utils
from tests.cluster import helpers
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster

#: A policy or workload change reaches the report within this (a few seconds on a quiet
#: machine; the suite runs on two busy cores).
REACTION = 45.0
#: The session operator's IMAGEWARD_SCAN_INTERVAL is 20 s; a full scan then takes a few.
INTERVAL_WAIT = 75.0


def report(cluster: controlplane.ControlPlane, namespace: str) -> dict[str, Any] | None:
    found = cluster.kubectl(
        "get",
        "policyreports.wgpolicyk8s.io",
        "imageward",
        "-n",
        namespace,
        "-o",
        "json",
        check=False,
    )
    if found.returncode != 0:
        return None
    body: dict[str, Any] = json.loads(found.stdout)
    return body


def results_for(
    cluster: controlplane.ControlPlane, namespace: str, name: str, policy: str
) -> list[dict[str, Any]]:
    body = report(cluster, namespace) or {}
    return [
        r
        for r in body.get("results") or []
        if r["policy"] == policy and r["resources"][0]["name"] == name
    ]


def violations(cluster: controlplane.ControlPlane, policy: str) -> int | None:
    value = (cluster.get_json("imagepolicy", policy).get("status") or {}).get("violations")
    return value if isinstance(value, int) else None


def _run(cluster: controlplane.ControlPlane, namespace: str, name: str, image: str) -> None:
    created = helpers.create(cluster, namespace, helpers.pod(name, image))
    assert created.returncode == 0, created.stderr


@pytest.fixture
def prefix() -> str:
    return f"rep{helpers.uid()}"


def test_a_policy_applied_after_admission_reports_the_running_pod(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    imageward_operator: RunningOperator,
    prefix: str,
) -> None:
    image, digest = helpers.push(anonymous, images.root_image(f"r-{helpers.uid()}"), prefix=prefix)
    _run(cluster, namespace, "app", image)  # no policy yet: admitted
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], {"forbidRootUser": True})

    def failing() -> list[dict[str, Any]] | None:
        found = [r for r in results_for(cluster, namespace, "app", name) if r["result"] == "fail"]
        return found or None

    (result,) = utils.wait_for(
        "the PolicyReport to show the pod failing", failing, timeout=REACTION
    )
    assert result["rule"] == "forbidRootUser"
    assert result["source"] == "imageward"
    assert result["message"].startswith(f"ImagePolicy {name}: {image} (sha256:{digest[7:19]}…")
    assert "runs as root" in result["message"]
    (resource,) = result["resources"]
    assert (resource["kind"], resource["name"], resource["namespace"]) == ("Pod", "app", namespace)
    assert resource["uid"] == cluster.get_json("pod", "app", "-n", namespace)["metadata"]["uid"]
    assert result["properties"]["mode"] == "Enforce"
    body = report(cluster, namespace)
    assert body is not None and body["summary"]["fail"] >= 1
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "imageward"}
    utils.wait_for("status.violations 1", lambda: violations(cluster, name) == 1, timeout=REACTION)
    columns = cluster.kubectl("get", "ipol", name).stdout.splitlines()
    assert columns[0].split()[3] == "VIOLATIONS" and columns[1].split()[3] == "1"
    cluster_report = cluster.get_json("clusterpolicyreports.wgpolicyk8s.io", "imageward")
    assert any(
        r["policy"] == name and r["result"] == "fail" and namespace in r["message"]
        for r in cluster_report["results"]
    )
    assert f'imageward_running_violations{{policy="{name}",rule="forbidRootUser"}} 1.0' in (
        imageward_operator.metrics()
    )

    cluster.kubectl("delete", "pod", "app", "-n", namespace, "--wait=false")

    def cleared() -> bool:
        return not results_for(cluster, namespace, "app", name) and violations(cluster, name) == 0

    utils.wait_for("the report and status.violations to clear", cleared, timeout=REACTION)


def test_a_signature_deleted_after_admission_is_reported_by_the_next_interval_scan(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    prefix: str,
) -> None:
    key = cosign_tool.generate_key_pair(f"scan-{helpers.uid()}")
    image, digest = helpers.push(
        anonymous, images.nonroot_image(f"s-{helpers.uid()}"), prefix=prefix
    )
    cosign_tool.sign(helpers.pinned(image, digest), key, legacy=True)
    name = policies.apply(
        [f"{anonymous.host}/{prefix}/**"],
        {"signatures": {"authorities": [{"name": "release", "key": {"pem": key.public_pem}}]}},
    )
    _run(cluster, namespace, "signed", image)

    def passing() -> bool:
        return any(
            r["result"] == "pass" and r["rule"] == "signatures"
            for r in results_for(cluster, namespace, "signed", name)
        )

    utils.wait_for("the signed pod to pass", passing, timeout=REACTION)

    _, repository = helpers.repository_of(image)
    client = anonymous.client()
    signature = client.manifest_digest(repository, f"sha256-{digest[7:]}.sig")
    assert signature is not None
    client.delete_manifest(repository, signature)

    def failing() -> dict[str, Any] | None:
        for r in results_for(cluster, namespace, "signed", name):
            if r["result"] == "fail" and r["rule"] == "signatures":
                return r
        return None

    result = utils.wait_for("the next interval scan to report it", failing, timeout=INTERVAL_WAIT)
    assert "is verified by 0 of 1 authorities" in result["message"]
    assert "no signature found" in result["message"]
    assert violations(cluster, name) == 1


def test_audit_and_warn_policies_report_fail_and_warn(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    image, _ = helpers.push(anonymous, images.root_image(f"m-{helpers.uid()}"), prefix=prefix)
    scope = [f"{anonymous.host}/{prefix}/**"]
    audit = policies.apply(scope, {"forbidRootUser": True}, mode="Audit")
    warn = policies.apply(scope, {"forbidRootUser": True}, mode="Warn")
    _run(cluster, namespace, "both", image)  # Audit and Warn admit it

    def results() -> dict[str, str] | None:
        found = {
            policy: r["result"]
            for policy in (audit, warn)
            for r in results_for(cluster, namespace, "both", policy)
            if r["rule"] == "forbidRootUser"
        }
        return found if len(found) == 2 else None

    found = utils.wait_for("Audit and Warn results", results, timeout=REACTION)
    assert found == {audit: "fail", warn: "warn"}
    utils.wait_for(
        "both counted in status.violations",
        lambda: violations(cluster, audit) == 1 and violations(cluster, warn) == 1,
        timeout=REACTION,
    )


def test_workload_templates_are_reported_once_for_their_pods(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    prefix: str,
) -> None:
    image, _ = helpers.push(anonymous, images.root_image(f"d-{helpers.uid()}"), prefix=prefix)
    name = policies.apply([f"{anonymous.host}/{prefix}/**"], {"forbidRootUser": True}, mode="Audit")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }
    created = helpers.create(cluster, namespace, deployment)
    assert created.returncode == 0, created.stderr

    def reported() -> set[tuple[str, str, str]] | None:
        body = report(cluster, namespace) or {}
        found = {
            (r["resources"][0]["kind"], r["resources"][0]["name"], r["result"])
            for r in body.get("results") or []
            if r["policy"] == name
        }
        # Its three pods (through their ReplicaSet) are the Deployment's, not results of
        # their own.
        return found if found == {("Deployment", "web", "fail")} else None

    utils.wait_for("the Deployment alone in the report", reported, timeout=REACTION)
    utils.wait_for("one workload counted", lambda: violations(cluster, name) == 1, timeout=REACTION)
