"""The PrePull CRD and the manifests imageward builds for it, against the real apiserver.

The schema's defaults, its two forms of spec.images, the mistakes it refuses at
`kubectl apply` time, the printer columns, and the DaemonSets and ConfigMap the pure
builders make: accepted by the apiserver, within the "restricted" Pod Security Standard
in Images mode, scheduled on every node, and garbage-collected with their PrePull.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from imageward.localcluster import controlplane
from imageward.prepull import daemonset, model, planner, plans, sealing, status
from imageward.registry import model as registry_model
from tests import utils

pytestmark = pytest.mark.cluster

CRD = pathlib.Path(__file__).parents[2] / "crds" / "prepulls.yaml"
WEB = model.ResolvedImage("ghcr.io/acme/web:1.4", registry_model.Digest("sha256:" + "a" * 64))
API = model.ResolvedImage("ghcr.io/acme/api:2.0", registry_model.Digest("sha256:" + "b" * 64))


@pytest.fixture(scope="module")
def crd(cluster: controlplane.ControlPlane) -> Iterator[None]:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/prepulls.imageward.io", "--timeout=30s"
    )
    # Established comes a moment before discovery serves the short name.
    utils.wait_for(
        "kubectl to know pp",
        lambda: cluster.kubectl("get", "pp", "-A", check=False).returncode == 0,
    )
    yield


def prepull(namespace: str, spec: dict[str, Any], name: str = "web-tier") -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "PrePull",
        # Paused: these tests write status themselves; the operator (running in the
        # same session) must not reconcile over it.
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {"imageward.io/paused": "true"},
        },
        "spec": spec,
    }


def test_names_and_category_are_accepted(cluster: controlplane.ControlPlane, crd: None) -> None:
    accepted = cluster.get_json("crd", "prepulls.imageward.io")["status"]["acceptedNames"]
    assert accepted["kind"] == "PrePull"
    assert accepted["shortNames"] == ["pp"]
    assert accepted["categories"] == ["imageward"]

    # The OpenAPI document behind `kubectl explain` is published a little later still.
    def explained() -> str | None:
        result = cluster.kubectl("explain", "pp.spec.images", check=False)
        return result.stdout if result.returncode == 0 else None

    assert "object with image and an optional" in utils.wait_for("kubectl explain", explained)


def test_defaults_and_both_image_forms(
    cluster: controlplane.ControlPlane, crd: None, namespace: str
) -> None:
    images = ["ghcr.io/acme/web:1.4", {"image": "ghcr.io/acme/api:2.0", "weight": 3}]
    cluster.apply(prepull(namespace, {"images": images, "fromWorkloads": {}}))
    stored = cluster.get_json("pp", "web-tier", "-n", namespace)
    spec = stored["spec"]
    assert spec["images"] == images
    assert spec["mode"] == "Images"
    assert spec["pullMethod"] == "InitContainer"
    assert spec["layers"] == {"minShare": 1}
    assert spec["maxUnavailable"] == "10%"
    assert spec["refreshInterval"] == "1h"
    assert spec["fromWorkloads"] == {"kinds": ["Deployment", "StatefulSet", "DaemonSet", "CronJob"]}
    # What the apiserver stores, the parser takes.
    parsed = model.parse_prepull(stored)
    assert parsed.images == (
        model.ImageEntry("ghcr.io/acme/web:1.4", 1),
        model.ImageEntry("ghcr.io/acme/api:2.0", 3),
    )
    assert parsed.from_workloads is not None
    assert parsed.from_workloads.namespace_selector is None


def test_what_the_schema_cannot_refuse_the_parser_does(
    cluster: controlplane.ControlPlane, crd: None, namespace: str
) -> None:
    # The object form of an image is not pruned (see the CRD's header): a typo survives
    # the apiserver and becomes a PrePullError naming it (the controller's condition).
    cluster.apply(prepull(namespace, {"images": [{"image": "nginx", "wieght": 2}]}))
    stored = cluster.get_json("pp", "web-tier", "-n", namespace)
    with pytest.raises(model.PrePullError) as excinfo:
        model.parse_prepull(stored)
    assert excinfo.value.field == "spec.images[0].wieght"
    # A quantity the pattern allows but that is not whole bytes.
    cluster.apply(prepull(namespace, {"images": ["nginx"], "layers": {"budgetPerNode": "1.5"}}))
    with pytest.raises(model.PrePullError, match="whole number of bytes"):
        model.parse_prepull(cluster.get_json("pp", "web-tier", "-n", namespace))


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({}, "spec.images: Required value"),
        ({"images": [7]}, "spec.images[0]"),
        ({"images": [{"weight": 2}]}, "spec.images[0]"),
        ({"images": [""]}, "spec.images[0]"),
        ({"images": [{"image": "a", "weight": 0}]}, "spec.images[0].weight"),
        ({"images": ["a"], "mode": "Whole"}, "spec.mode"),
        ({"images": ["a"], "pullMethod": "Job"}, "spec.pullMethod"),
        ({"images": ["a"], "layers": {"minShare": 0}}, "spec.layers.minShare"),
        ({"images": ["a"], "layers": {"budgetPerNode": "20GB"}}, "spec.layers.budgetPerNode"),
        ({"images": ["a"], "layers": {"budgetPerNode": -1}}, "must not be negative"),
        ({"images": ["a"], "maxUnavailable": 0}, "must be at least 1"),
        ({"images": ["a"], "maxUnavailable": "0%"}, "spec.maxUnavailable"),
        ({"images": ["a"], "refreshInterval": "5s"}, "must be at least 10s"),
        ({"images": ["a"], "refreshInterval": "1d"}, "spec.refreshInterval"),
        ({"images": ["a"], "tolerations": [{"value": "x"}]}, "an empty key needs operator Exists"),
        ({"images": ["a"], "fromWorkloads": {"kinds": ["Job"]}}, "spec.fromWorkloads.kinds[0]"),
        ({"images": ["a"], "imagePullSecrets": [{"name": "a"}, {"name": "a"}]}, "Duplicate"),
    ],
)
def test_mistakes_are_refused_at_apply_time(
    cluster: controlplane.ControlPlane,
    crd: None,
    namespace: str,
    spec: dict[str, Any],
    words: str,
) -> None:
    result = cluster.kubectl(
        "apply", "-f", "-", check=False, input=json.dumps(prepull(namespace, spec))
    )
    assert result.returncode != 0, result.stdout
    assert words in result.stderr


def patch_status(
    cluster: controlplane.ControlPlane, namespace: str, fields: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "patch",
        "pp",
        "web-tier",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": fields}),
        check=False,
    )


def test_status_built_by_the_status_module_is_accepted_and_printed(
    cluster: controlplane.ControlPlane, crd: None, namespace: str
) -> None:
    cluster.apply(prepull(namespace, {"images": ["ghcr.io/acme/web:1.4"]}))
    failure = status.Failure("kwok-node-1", "ghcr.io/acme/web:1.4", "ErrImagePull", "not found")
    nodes = status.NodeStatus(desired=40, ready=12, failed=1, failures=(failure,))
    fields = {
        "observedGeneration": 1,
        "conditions": status.build_conditions(nodes, generation=1, now="2025-01-02T03:04:05Z"),
        "images": [{"image": WEB.image, "digest": WEB.digest, "bytes": 1234, "layers": 3}],
        "plan": {"layers": 37, "bytes": 4123456789, "savedBytes": 9876543210},
        **status.build_status_fields(nodes),
    }
    patched = patch_status(cluster, namespace, fields)
    assert patched.returncode == 0, patched.stderr
    stored = cluster.get_json("pp", "web-tier", "-n", namespace)["status"]
    assert stored["readyText"] == "12/40"
    assert stored["failures"] == [
        {
            "node": "kwok-node-1",
            "image": "ghcr.io/acme/web:1.4",
            "reason": "ErrImagePull",
            "message": "not found",
        }
    ]

    table = cluster.kubectl("get", "pp", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODE", "READY", "BYTES", "AGE"]
    assert table[1].split()[:4] == ["web-tier", "Images", "12/40", "4123456789"]
    wide = cluster.kubectl("get", "pp", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "MODE", "READY", "BYTES", "FAILED", "SAVED", "REASON", "AGE"]
    assert wide[1].split()[4:7] == ["1", "9876543210", "PullFailed"]
    # The category lists PrePulls next to ImagePolicies.
    assert (
        "prepull.imageward.io/web-tier"
        in cluster.kubectl("get", "imageward", "-n", namespace, "-o", "name").stdout
    )

    too_many = [{"node": f"n{i}", "image": "x", "reason": "ErrImagePull"} for i in range(21)]
    refused = patch_status(cluster, namespace, {"failures": too_many})
    assert refused.returncode != 0
    assert "status.failures" in refused.stderr


def dry_run(cluster: controlplane.ControlPlane, obj: dict[str, Any]) -> tuple[Any, str]:
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(obj)
    )
    return json.loads(result.stdout), result.stderr


def build(namespace: str, uid: str, spec: model.PrePullSpec, **kwargs: Any) -> dict[str, Any]:
    return daemonset.build_daemonset(
        "web-tier",
        namespace,
        uid,
        spec,
        [WEB, API],
        helper_image="helper:1",
        pause_image="pause:3.10",
        **kwargs,
    )


def test_built_manifests_are_valid_and_images_mode_is_restricted(
    cluster: controlplane.ControlPlane, crd: None, namespace: str
) -> None:
    cluster.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/warn-version=latest",
    )
    cluster.apply(prepull(namespace, {"images": [WEB.image, API.image]}))
    uid = cluster.get_json("pp", "web-tier", "-n", namespace)["metadata"]["uid"]
    spec = model.parse_prepull(
        prepull(
            namespace,
            {
                "images": [WEB.image],
                "tolerations": [{"operator": "Exists"}],
                "imagePullSecrets": [{"name": "regcred"}],
                "nodeSelector": {"type": "kwok"},
                "maxUnavailable": 2,
            },
        )
    )

    stored, warnings = dry_run(cluster, build(namespace, uid, spec))
    assert "PodSecurity" not in warnings, warnings
    assert len(stored["spec"]["template"]["spec"]["initContainers"]) == 3

    volume_spec = model.parse_prepull(
        prepull(namespace, {"images": [WEB.image], "pullMethod": "ImageVolume"})
    )
    stored, warnings = dry_run(cluster, build(namespace, uid, volume_spec))
    # Without the ImageVolume feature the apiserver drops image volumes silently; the
    # controller must notice that on the stored object.
    missing = daemonset.evaluate_missing_image_volumes(stored, [WEB, API])
    assert missing in ([], daemonset.build_pinned_references([WEB, API]))
    assert "PodSecurity" not in warnings, warnings

    # Layers mode puts nothing in the PrePull's namespace: its plan is a ConfigMap of the
    # operator's namespace (here: any namespace, as a dry run), valid as built.
    layer = registry_model.Layer(WEB.digest, 10, "application/vnd.oci.image.layer.v1.tar+gzip")
    plan = planner.build_plan([planner.PlanImage(WEB.image, WEB.digest, (layer,))], budget=None)
    document = plans.build_plan_document(
        "web-tier",
        namespace,
        uid,
        plan,
        {WEB.image: registry_model.ImageReference("ghcr.io", "acme/web", "1.4")},
        pull_secrets=["regcred"],
        node_selector={"kubernetes.io/os": "linux"},
    )
    configmap = plans.build_plan_configmap(
        document,
        namespace=namespace,
        plan_text=plans.build_plan_text(document),
        sealed_credentials=sealing.seal(sealing.generate_key(), b"{}", context="k"),
        content_hash="h",
    )
    stored, _ = dry_run(cluster, configmap)
    assert plans.parse_plan_identity(stored) == (namespace, "web-tier", uid)


def test_daemonset_covers_every_node_and_goes_with_its_prepull(
    cluster: controlplane.ControlPlane, crd: None, namespace: str
) -> None:
    cluster.apply(prepull(namespace, {"images": [WEB.image, API.image]}))
    uid = cluster.get_json("pp", "web-tier", "-n", namespace)["metadata"]["uid"]
    spec = model.parse_prepull(prepull(namespace, {"images": [WEB.image, API.image]}))
    built = build(namespace, uid, spec)
    cluster.apply(built)
    name = built["metadata"]["name"]
    # The kwok nodes: a real node the session started is tainted, and this PrePull
    # tolerates nothing.
    nodes = len(cluster.get_json("nodes", "-l", "type=kwok")["items"])

    def scheduled() -> int | None:
        ds = cluster.get_json("daemonset", name, "-n", namespace)
        count = ds.get("status", {}).get("currentNumberScheduled", 0)
        return count if count == nodes else None

    utils.wait_for(f"{nodes} pre-pull pods", scheduled)
    current = built["spec"]["template"]["metadata"]["annotations"][daemonset.ANNOTATION_DIGEST_HASH]

    def counted() -> status.NodeStatus | None:
        pods = cluster.get_json("pods", "-n", namespace, "-l", "imageward.io/prepull=web-tier")[
            "items"
        ]
        node_status = status.build_node_status(pods, nodes, current_hash=current)
        return node_status if node_status.ready == nodes else None

    assert utils.wait_for("every node ready", counted).failed == 0

    cluster.kubectl("delete", "pp", "web-tier", "-n", namespace)

    def collected() -> bool:
        result = cluster.kubectl("get", "daemonset", name, "-n", namespace, check=False)
        return result.returncode != 0 and "NotFound" in result.stderr

    utils.wait_for("the DaemonSet to be garbage-collected", collected)
