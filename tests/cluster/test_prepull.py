"""The PrePull controller against the real control plane: one DaemonSet per PrePull, pods
on kwok nodes reported in status, rollouts only when a digest changes, clean deletion,
and problems reported as conditions with reasons."""

from __future__ import annotations

import time
import uuid
from typing import Any

import kubernetes
import pytest

from imageward import kube
from imageward.localcluster import controlplane, images, registries
from tests import utils
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _prepull(name: str, images_: list[Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "PrePull",
        "metadata": {"name": name},
        "spec": {"images": images_, **spec},
    }


def _apply(cluster: controlplane.ControlPlane, namespace: str, body: dict[str, Any]) -> None:
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    cluster.apply(body)


def _status(cluster: controlplane.ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("prepull", name, "-n", namespace).get("status") or {})


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in status.get("conditions") or []:
        if condition["type"] == kind:
            return dict(condition)
    return {}


def _daemonsets(cluster: controlplane.ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = cluster.get_json("daemonsets", "-n", namespace)["items"]
    return items


@pytest.fixture
def shared_images(registry_set: registries.Registries) -> list[str]:
    registry = registry_set.anonymous
    client = registry.client()
    refs = []
    for index, manifest in enumerate(images.shared_base_images(3)):
        repository = f"pp/{_uid()}"
        client.push(repository, manifest, tag="1.0")
        refs.append(f"{registry.host}/{repository}:1.0")
        del index
    return refs


def test_prepull_runs_one_daemonset_and_reports_nodes(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    _apply(
        cluster,
        namespace,
        _prepull("web", [shared_images[0], {"image": shared_images[1], "weight": 3}]),
    )

    def all_ready() -> dict[str, Any] | None:
        status = _status(cluster, namespace, "web")
        nodes = status.get("nodes") or {}
        ready = nodes.get("desired", 0) >= 3 and nodes.get("ready") == nodes.get("desired")
        return status if ready and _condition(status, "Ready").get("status") == "True" else None

    status = utils.wait_for("the PrePull to report every node ready", all_ready, timeout=60)
    assert [i["image"] for i in status["images"]] == shared_images[:2]
    assert all(i["digest"].startswith("sha256:") and i["bytes"] > 0 for i in status["images"])
    assert status["plan"]["bytes"] > 0 and status["plan"]["layers"] > 0
    # Shared base layers are counted once in the plan but save bytes for both images.
    assert status["plan"]["savedBytes"] > status["plan"]["bytes"]

    owned = [
        ds
        for ds in _daemonsets(cluster, namespace)
        if any(o["kind"] == "PrePull" for o in ds["metadata"].get("ownerReferences") or [])
    ]
    assert len(owned) == 1
    pod_spec = owned[0]["spec"]["template"]["spec"]
    pulled = [c["image"] for c in pod_spec["initContainers"][1:]]
    assert all("@sha256:" in image for image in pulled) and len(pulled) == 2
    assert pod_spec["automountServiceAccountToken"] is False

    listed = cluster.kubectl("get", "pp", "web", "-n", namespace).stdout
    assert f"{status['nodes']['ready']}/{status['nodes']['desired']}" in listed
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert any(
        e["reason"] == "DaemonSetCreated" and e["involvedObject"]["name"] == "web" for e in events
    )

    # A node added later gets its pod and shows up in status.
    before = status["nodes"]["desired"]
    added = cluster.add_nodes(1, prefix=f"late-{_uid()}-")
    try:
        utils.wait_for(
            "the new node to be counted ready",
            lambda: (
                (s := _status(cluster, namespace, "web").get("nodes") or {}).get("ready")
                == before + 1
                and s
            ),
            timeout=60,
        )
    finally:
        cluster.kubectl("delete", "node", *added, check=False)

    # Deleting the PrePull removes what it made (owner references, garbage collector).
    cluster.kubectl("delete", "prepull", "web", "-n", namespace)
    utils.wait_for(
        "the DaemonSet to be garbage-collected",
        lambda: (
            not any(
                ds["metadata"]["name"] == owned[0]["metadata"]["name"]
                for ds in _daemonsets(cluster, namespace)
            )
        ),
        timeout=60,
    )


def test_retagged_image_rolls_out_and_unchanged_does_not(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    registry_set: registries.Registries,
) -> None:
    registry = registry_set.anonymous
    client = registry.client()
    repository = f"pp/{_uid()}"
    first = client.push(repository, images.small_image(f"v1-{_uid()}"), tag="stable")
    image = f"{registry.host}/{repository}:stable"
    _apply(cluster, namespace, _prepull("retag", [image], refreshInterval="10s"))

    def daemonset() -> dict[str, Any] | None:
        found = [
            ds
            for ds in _daemonsets(cluster, namespace)
            if any(o["name"] == "retag" for o in ds["metadata"].get("ownerReferences") or [])
        ]
        return found[0] if found else None

    ds = utils.wait_for("the DaemonSet", daemonset, timeout=30)
    assert f"@{first.digest}" in ds["spec"]["template"]["spec"]["initContainers"][1]["image"]
    generation = ds["metadata"]["generation"]
    resolved = _status(cluster, namespace, "retag").get("lastResolved")

    # A refresh with an unchanged digest rewrites nothing.
    utils.wait_for(
        "a tag refresh",
        lambda: _status(cluster, namespace, "retag").get("lastResolved") not in (None, resolved),
        timeout=40,
    )
    current = daemonset()
    assert current is not None and current["metadata"]["generation"] == generation

    second = client.push(repository, images.small_image(f"v2-{_uid()}"), tag="stable")
    rolled = utils.wait_for(
        "the re-tagged digest to roll out",
        lambda: (
            (d := daemonset())
            and f"@{second.digest}" in d["spec"]["template"]["spec"]["initContainers"][1]["image"]
            and d
        ),
        timeout=60,
    )
    assert rolled["metadata"]["generation"] > generation
    status = _status(cluster, namespace, "retag")
    assert status["images"][0]["digest"] == second.digest


@pytest.mark.parametrize(
    ("spec", "reason", "text"),
    [
        ({"images": ["127.0.0.1:1/nothing/here:1.0"]}, "ResolveFailed", "127.0.0.1:1"),
        ({"layers": {"budgetPerNode": "1.5"}}, "InvalidSpec", "budgetPerNode"),
    ],
    ids=["registry-down", "bad-quantity"],
)
def test_problems_become_conditions_with_reasons(
    spec: dict[str, Any],
    reason: str,
    text: str,
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    body = _prepull("broken", [shared_images[0]])
    body["spec"].update(spec)
    _apply(cluster, namespace, body)

    def degraded() -> dict[str, Any] | None:
        condition = _condition(_status(cluster, namespace, "broken"), "Ready")
        return condition if condition.get("reason") == reason else None

    condition = utils.wait_for(f"Ready=False with reason {reason}", degraded, timeout=40)
    assert condition["status"] == "False"
    assert text in condition["message"]
    assert imageward_operator.process.alive


def test_budget_zero_plans_nothing(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    _apply(cluster, namespace, _prepull("zero", shared_images, layers={"budgetPerNode": 0}))
    status = utils.wait_for(
        "a plan",
        lambda: (s := _status(cluster, namespace, "zero")).get("plan") and s,
        timeout=30,
    )
    assert status["plan"]["bytes"] == 0 and status["plan"]["layers"] == 0


def test_pull_failures_on_a_node_are_reported(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    # kwok plays "kwok-unpullable" as a node that cannot reach the registry (see
    # localcluster/kwok-stages.yaml): its pre-pull pod reports ErrImagePull.
    cluster.apply(controlplane.build_kwok_node("kwok-unpullable"))
    try:
        _apply(cluster, namespace, _prepull("failing", [shared_images[0]]))

        def failed() -> dict[str, Any] | None:
            status = _status(cluster, namespace, "failing")
            return status if (status.get("nodes") or {}).get("failed") == 1 else None

        status = utils.wait_for("the failing node in status", failed, timeout=60)
        assert status["failures"] == [
            {
                "node": "kwok-unpullable",
                "image": shared_images[0],
                "reason": "ErrImagePull",
                "message": status["failures"][0]["message"],
            }
        ]
        assert "connection refused" in status["failures"][0]["message"]
        degraded = _condition(status, "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "PullFailed"
        assert "kwok-unpullable" in degraded["message"]
        listed = cluster.kubectl("get", "pp", "failing", "-n", namespace).stdout
        assert f"{status['nodes']['ready']}/{status['nodes']['desired']}" in listed
    finally:
        cluster.kubectl("delete", "node", "kwok-unpullable", "--ignore-not-found", check=False)


def test_daemonset_refused_by_a_policy_is_reported(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    # Pre-pull pods go through admission like any pod: a policy that refuses their images
    # (here: the pause and helper images' registries) must surface in the PrePull's status.
    guarded = f"guarded-{_uid()}"
    cluster.create_namespace(guarded, labels={"imageward-test": guarded})
    policy = f"only-internal-{_uid()}"
    cluster.apply(
        {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "ImagePolicy",
            "metadata": {"name": policy},
            "spec": {
                "match": {"namespaceSelector": {"matchLabels": {"imageward-test": guarded}}},
                "rules": {"allowedRegistries": ["registry.internal.example"]},
            },
        }
    )
    try:
        utils.wait_for(
            "the policy to be Ready",
            lambda: any(
                c["status"] == "True"
                for c in (cluster.get_json("imagepolicy", policy).get("status") or {}).get(
                    "conditions", []
                )
            ),
            timeout=30,
        )
        _apply(cluster, guarded, _prepull("refused", [shared_images[0]]))

        def refused() -> dict[str, Any] | None:
            condition = _condition(_status(cluster, guarded, "refused"), "Ready")
            return condition if condition.get("reason") == "DaemonSetRefused" else None

        condition = utils.wait_for("Ready=False with DaemonSetRefused", refused, timeout=40)
        assert f"ImagePolicy {policy}" in condition["message"]
        assert "not in allowedRegistries" in condition["message"]
        # Status written later keeps saying what the Event said (progress refreshes used
        # to turn it into "Pending: the DaemonSet has not been created yet").
        time.sleep(12)
        status = _status(cluster, guarded, "refused")
        for kind in ("Ready", "Degraded"):
            later = _condition(status, kind)
            assert later["reason"] == "DaemonSetRefused", later
            assert f"ImagePolicy {policy}" in later["message"]
        events = [
            e
            for e in cluster.get_json("events", "-n", guarded)["items"]
            if e["involvedObject"]["name"] == "refused"
        ]
        assert any(e["reason"] == "DaemonSetRefused" for e in events)
        # Without the policy the next attempt (every 30 s while refused) goes through.
        cluster.kubectl("delete", "imagepolicy", policy)
        utils.wait_for(
            "the DaemonSet once the policy is gone",
            lambda: _daemonsets(cluster, guarded),
            timeout=60,
        )
    finally:
        cluster.kubectl("delete", "imagepolicy", policy, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "namespace", guarded, "--wait=false", check=False)


def test_image_volume_without_the_feature_is_reported(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    # Kubernetes 1.34 ships the ImageVolume feature off: the apiserver silently drops
    # `image` volumes, which would leave pause-only pods that pull nothing yet report Ready.
    _apply(cluster, namespace, _prepull("volumes", [shared_images[0]], pullMethod="ImageVolume"))

    def unsupported() -> dict[str, Any] | None:
        condition = _condition(_status(cluster, namespace, "volumes"), "Ready")
        return condition if condition.get("reason") == "ImageVolumeUnsupported" else None

    condition = utils.wait_for("Ready=False with ImageVolumeUnsupported", unsupported, timeout=40)
    assert condition["status"] == "False" and "InitContainer" in condition["message"]


def test_images_of_workloads_are_taken_weighted_by_replicas(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "api", "namespace": namespace, "labels": {"tier": "web"}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"labels": {"app": "api"}},
                    "spec": {"containers": [{"name": "api", "image": shared_images[1]}]},
                },
            },
        }
    )
    _apply(
        cluster,
        namespace,
        _prepull(
            "workloads",
            [shared_images[0]],
            fromWorkloads={
                "kinds": ["Deployment"],
                "labelSelector": {"matchLabels": {"tier": "web"}},
            },
        ),
    )
    status = utils.wait_for(
        "both images resolved",
        lambda: len((s := _status(cluster, namespace, "workloads")).get("images") or []) == 2 and s,
        timeout=40,
    )
    weights = {i["image"]: i["weight"] for i in status["images"]}
    assert weights == {shared_images[0]: 1, shared_images[1]: 3}


def test_a_tenant_prepull_reads_only_its_own_namespaces_workloads(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    # Another tenant's Deployment, whose (private) image a tenant must not learn nor pull.
    other = f"other-{_uid()}"
    cluster.create_namespace(other, labels={"imageward-test/tenant": other})

    def deployment(ns: str, name: str, image: str) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": name, "image": image}]},
                },
            },
        }

    admin_prepull = f"admin-{_uid()}"
    try:
        cluster.apply(deployment(other, "secret-app", shared_images[2]))
        cluster.apply(deployment(namespace, "own-app", shared_images[1]))
        every_namespace = {"kinds": ["Deployment"], "namespaceSelector": {}}
        _apply(
            cluster,
            namespace,
            _prepull("greedy", [shared_images[0]], fromWorkloads=every_namespace),
        )

        def resolved(ns: str, name: str, count: int) -> dict[str, Any] | None:
            status = _status(cluster, ns, name)
            return status if len(status.get("images") or []) >= count else None

        status = utils.wait_for(
            "the tenant's PrePull resolved", lambda: resolved(namespace, "greedy", 2)
        )
        assert {i["image"] for i in status["images"]} == {shared_images[0], shared_images[1]}
        degraded = _condition(status, "Degraded")
        assert degraded["status"] == "True"
        assert degraded["reason"] == "CrossNamespaceNotAllowed"
        assert "imageward-system" in degraded["message"]
        assert f"reads {namespace} only" in degraded["message"]
        # Ignoring the selector does not stop it from pre-pulling its own namespace's images.
        utils.wait_for(
            "the tenant's PrePull Ready",
            lambda: (
                _condition(_status(cluster, namespace, "greedy"), "Ready").get("status") == "True"
            ),
            timeout=60,
        )

        # The operator's namespace is a cluster admin's: there the selector is honoured,
        # from the watch-fed cache (a Deployment made later is seen at the next refresh).
        cluster.apply(
            {
                **_prepull(
                    admin_prepull,
                    [shared_images[0]],
                    refreshInterval="10s",
                    fromWorkloads={
                        "kinds": ["Deployment"],
                        "namespaceSelector": {"matchLabels": {"imageward-test/tenant": other}},
                    },
                ),
                "metadata": {"name": admin_prepull, "namespace": imageward_operator.namespace},
            }
        )
        status = utils.wait_for(
            "the admin's PrePull resolved",
            lambda: resolved(imageward_operator.namespace, admin_prepull, 2),
        )
        weights = {i["image"]: i["weight"] for i in status["images"]}
        assert weights == {shared_images[0]: 1, shared_images[2]: 2}
        assert _condition(status, "Degraded").get("reason") != "CrossNamespaceNotAllowed"
        cluster.apply(deployment(other, "late-app", shared_images[1]))
        status = utils.wait_for(
            "the later Deployment at the next refresh",
            lambda: resolved(imageward_operator.namespace, admin_prepull, 3),
            timeout=40,
        )
        assert shared_images[1] in {i["image"] for i in status["images"]}
    finally:
        cluster.kubectl(
            "delete",
            "prepull",
            admin_prepull,
            "-n",
            imageward_operator.namespace,
            "--ignore-not-found",
            check=False,
        )
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


class Timeline:
    """Fast reads through the API (the Python client, no kubectl process per look), so
    a test can time when the cluster changed and when the PrePull's status followed."""

    def __init__(self, cluster: controlplane.ControlPlane, namespace: str) -> None:
        self.client = kube.build_api_client(str(cluster.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.namespace = namespace

    def prepull(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "imageward.io", "v1alpha1", self.namespace, "prepulls", name
        )
        return body

    def pods_on(self, node: str) -> list[Any]:
        items: list[Any] = self.core.list_namespaced_pod(
            self.namespace, field_selector=f"spec.nodeName={node}"
        ).items
        return items

    def desired(self, prepull: str) -> int:
        ds = self.apps.read_namespaced_daemon_set(f"prepull-{prepull}", self.namespace)
        return int(ds.status.desired_number_scheduled or 0)

    def until(self, what: str, probe: Any, *, timeout: float = 60) -> float:
        """Poll every 50 ms; the monotonic time the probe first held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def close(self) -> None:
        self.client.close()


def _pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _pull_failing(pod: Any) -> bool:
    return any(
        s.state and s.state.waiting and s.state.waiting.reason == "ErrImagePull"
        for s in pod.status.init_container_statuses or []
    )


def test_status_follows_changes_at_once_and_is_not_rewritten_when_nothing_changes(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    shared_images: list[str],
) -> None:
    """No polling: a node's pod becoming Ready shows in status within 2 s, a pull
    failure within 5 s, and while nothing changes status is not written at all."""
    timeline = Timeline(cluster, namespace)
    added: list[str] = []
    try:
        _apply(cluster, namespace, _prepull("watched", [shared_images[0]]))
        timeline.until(
            "every node ready",
            lambda: (
                (n := timeline.prepull("watched").get("status", {}).get("nodes") or {}).get("ready")
                == n.get("desired")
                and n.get("desired", 0) >= 3
            ),
        )
        settled = timeline.prepull("watched")
        version = settled["metadata"]["resourceVersion"]
        before = settled["status"]["nodes"]
        # Quiet: twice the old 5 s poll, and nothing is written (the resourceVersion of
        # a PrePull moves with every write, status included).
        time.sleep(11)
        quiet = timeline.prepull("watched")
        assert quiet["metadata"]["resourceVersion"] == version, quiet["status"]

        # A node joins: the DaemonSet counts it, its pod becomes Ready; status follows.
        (node,) = cluster.add_nodes(1, prefix=f"watch-{_uid()}-")
        added.append(node)
        counted = timeline.until(
            "the DaemonSet to count the new node",
            lambda: timeline.desired("watched") == before["desired"] + 1,
        )
        desired_shown = timeline.until(
            "status to count it",
            lambda: (
                (timeline.prepull("watched")["status"]["nodes"]["desired"]) == before["desired"] + 1
            ),
        )
        assert desired_shown - counted <= 2.0
        pod_ready = timeline.until(
            "the new node's pod Ready", lambda: any(_pod_ready(p) for p in timeline.pods_on(node))
        )
        ready_shown = timeline.until(
            "status to show it ready",
            lambda: timeline.prepull("watched")["status"]["nodes"]["ready"] == before["ready"] + 1,
        )
        assert ready_shown - pod_ready <= 2.0, f"{ready_shown - pod_ready:.2f}s"

        # A node that cannot pull: its pod reports ErrImagePull (kwok plays
        # "kwok-unpullable" so); status names it within 5 s.
        cluster.apply(controlplane.build_kwok_node("kwok-unpullable"))
        added.append("kwok-unpullable")
        failing = timeline.until(
            "the unpullable node's pod to fail",
            lambda: any(_pull_failing(p) for p in timeline.pods_on("kwok-unpullable")),
        )
        reported = timeline.until(
            "status to name the failing node",
            lambda: any(
                f["node"] == "kwok-unpullable"
                for f in timeline.prepull("watched")["status"].get("failures") or []
            ),
        )
        assert reported - failing <= 5.0, f"{reported - failing:.2f}s"
        status = timeline.prepull("watched")["status"]
        assert status["nodes"]["failed"] == 1
        assert _condition(status, "Degraded")["reason"] == "PullFailed"
    finally:
        timeline.close()
        if added:
            cluster.kubectl("delete", "node", *added, "--ignore-not-found", check=False)
