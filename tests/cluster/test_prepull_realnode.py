"""Pre-pull through a real kubelet: PrePulls of the session operator completing on the real
node, checked in that node's containerd and at the registry.

The registry (the session's anonymous one) is reached by the node through a counting
proxy on the node's address: containerd's hosts.toml sends the kubelet's pulls there, and
the chart's agent, a real pod, is given it as the registry's mirror (127.0.0.1 in a pod
is the pod). So every byte either of them fetches is counted per blob.

- Images mode (InitContainer): the DaemonSet's pod on the real node makes the kubelet
  pull every image; afterwards the node's containerd has each image and every blob, and a
  pod of the image fetches no layer at all.
- Layers mode: the chart's agent DaemonSet runs as a pod on the real node with the
  operator image, pointed at the node's containerd socket and fed by the session
  operator's plan ConfigMap; after the PrePull is Ready the planned blobs are in that
  containerd (held by the PrePull's lease, labelled with their source), the planned
  prefix of each image is unpacked into committed chain-ID snapshots the lease holds,
  and a pod of a planned image fetches exactly its unplanned layers, byte for byte,
  its kubelet unpacking only those.

ImageVolume cannot be tried here: the session's apiserver keeps the feature off
(`test_prepull.py::test_image_volume_without_the_feature_is_reported`), and with it on,
containerd 1.6's CRI cannot create the container (`test_image_volume_needs_a_newer_containerd`
below, which shows what each component answers).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from imageward.localcluster import (
    controlplane,
    faultproxy,
    images,
    nodeagent,
    realnode,
    registries,
    tools,
)
from imageward.prepull import agent, plans, unpack
from imageward.prepull import containerd as ctrd
from tests import utils
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster

BLOB_RE = re.compile(r"/blobs/(sha256:[0-9a-f]{64})$")


def _uid() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def link(
    cluster: controlplane.ControlPlane,
    real_node: realnode.RealNode,
    registry_set: registries.Registries,
) -> Iterator[faultproxy.FaultProxy]:
    """The node's way to the session's anonymous registry: a counting proxy on the node's
    address (the kubelet's pulls through hosts.toml, the agent's through its mirror)."""
    registry = registry_set.anonymous
    assert cluster.advertise_address
    with faultproxy.FaultProxy(registry.url, bind=cluster.advertise_address) as proxy:
        real_node.add_registry(registry.host, endpoint=proxy.url)
        try:
            yield proxy
        finally:
            real_node.add_registry(registry.host)


def _runnable_images(
    registry: registries.Registry, count: int, *, base: int, base_size: int, own_size: int
) -> list[tuple[images.Pushed, images.Manifest]]:
    """`count` images sharing `base` random layers and the pause binary (their entrypoint),
    each with one random layer of its own on top; pushed to `registry`."""
    name = f"rn-{_uid()}"
    # The pause binary beside a file naming the set: not the node's own pause image layer.
    pause = images.layer_from_files(
        {
            "pause": (tools.find("imageward-pause").read_bytes(), 0o755),
            "set": (name.encode(), 0o644),
        }
    )
    shared = [images.random_layer(base_size, seed=f"{name}-base-{i}") for i in range(base)]
    pushed = []
    for index in range(count):
        manifest = images.build_image(
            [pause, *shared, images.random_layer(own_size, seed=f"{name}-own-{index}")],
            platform=realnode.host_platform(),
            user=images.NONROOT_USER,
            env=(),
            entrypoint=["/pause"],
        )
        result = registry.client().push(f"{name}/app-{index}", manifest, tag="1.0")
        pushed.append((result, manifest))
    return pushed


def _snapshot_labels(node: realnode.RealNode, key: str) -> dict[str, str]:
    info = json.loads(node.containerd.ctr("snapshots", "info", key).stdout)
    return dict(info.get("Labels") or {})


async def _lease_snapshots(node: realnode.RealNode, marker: str) -> set[str]:
    """Snapshot keys the leases whose labels hold `marker` hold."""
    async with ctrd.Client(str(node.containerd.socket), node.containerd.namespace) as client:
        held: set[str] = set()
        for lease in await client.list_leases():
            if marker in [f"{k}={v}" for k, v in lease.labels.items()]:
                held |= {
                    r.id
                    for r in await client.list_resources(lease.id)
                    if r.type == ctrd.build_snapshot_resource("overlayfs")
                }
        return held


def _prepull(
    node: realnode.RealNode, name: str, refs: Sequence[str], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "PrePull",
        "metadata": {"name": name},
        "spec": {
            "images": list(refs),
            "nodeSelector": node.node_selector,
            "tolerations": [node.toleration],
            **spec,
        },
    }


def _apply_in(cluster: controlplane.ControlPlane, namespace: str, body: dict[str, Any]) -> None:
    cluster.apply({**body, "metadata": {**body["metadata"], "namespace": namespace}})


def _condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return next((dict(c) for c in status.get("conditions") or [] if c["type"] == kind), {})


def _wait_prepull_ready(
    cluster: controlplane.ControlPlane, namespace: str, name: str, *, timeout: float = 180
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status = cluster.get_json("prepull", name, "-n", namespace).get("status") or {}
        nodes = status.get("nodes") or {}
        if _condition(status, "Ready").get("status") == "True" and nodes.get("ready") == 1:
            return dict(status)
        return None

    try:
        return utils.wait_for(f"PrePull {namespace}/{name} Ready", ready, timeout=timeout)
    except AssertionError as e:
        status = cluster.get_json("prepull", name, "-n", namespace).get("status")
        pods = cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        raise AssertionError(f"{e}\nstatus: {json.dumps(status)}\n{pods}") from None


def _pod(node: realnode.RealNode, name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": image}],
            "dnsPolicy": "Default",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            **node.placement,
        },
    }


def _wait_running(
    cluster: controlplane.ControlPlane, namespace: str, name: str, *, timeout: float = 120
) -> dict[str, Any]:
    def running() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.get_json("pod", name, "-n", namespace)
        return pod if pod.get("status", {}).get("phase") == "Running" else None

    try:
        return utils.wait_for(f"pod {namespace}/{name} Running", running, timeout=timeout)
    except AssertionError as e:
        described = cluster.kubectl("describe", "pod", name, "-n", namespace, check=False)
        raise AssertionError(f"{e}\n{described.stdout[-3000:]}") from None


def _blob_requests(proxy: faultproxy.FaultProxy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for seen in proxy.seen:
        match = BLOB_RE.search(seen.path)
        if match and seen.method == "GET":
            counts[match[1]] = counts.get(match[1], 0) + 1
    return counts


def _blob_bytes(proxy: faultproxy.FaultProxy) -> dict[str, int]:
    sent: dict[str, int] = {}
    for _method, path, size in proxy.sent:
        match = BLOB_RE.search(path)
        if match:
            sent[match[1]] = sent.get(match[1], 0) + size
    return sent


def _cri_images(node: realnode.RealNode) -> set[str]:
    return set(node.containerd.ctr("images", "ls", "-q").stdout.split())


def test_images_mode_puts_whole_images_into_the_real_nodes_containerd(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    real_node: realnode.RealNode,
    registry_set: registries.Registries,
    session_helper_image: images.Pushed,
    link: faultproxy.FaultProxy,
    namespace: str,
) -> None:
    started = time.monotonic()
    pushed = _runnable_images(
        registry_set.anonymous, 2, base=2, base_size=1024 * 1024, own_size=256 * 1024
    )
    link.reset_counts()
    _apply_in(cluster, namespace, _prepull(real_node, "whole", [p.ref for p, _ in pushed]))
    status = _wait_prepull_ready(cluster, namespace, "whole")
    assert status["nodes"] == {"desired": 1, "ready": 1, "failed": 0}, status
    pods = cluster.get_json("pods", "-n", namespace)["items"]
    assert [p["spec"]["nodeName"] for p in pods] == [real_node.name]
    ready_seconds = time.monotonic() - started

    # The kubelet pulled each image by digest: the node's CRI image store has them, and
    # its content store every blob of them.
    present = _cri_images(real_node)
    content = real_node.containerd.content_digests()
    for result, manifest in pushed:
        assert result.pinned in present, sorted(present)
        assert {b.digest for b in manifest.blobs} | {manifest.digest} <= content
    # Each layer crossed the link once, the shared ones too (one pod, images in turn).
    fetched = _blob_requests(link)
    layers = {layer.digest for _, m in pushed for layer in m.layers}
    assert {d: fetched.get(d, 0) for d in layers} == dict.fromkeys(layers, 1)

    # A pod of the image later (by its tag, as workloads name it) fetches no layer.
    link.reset_counts()
    _apply_in(cluster, namespace, _pod(real_node, "later", pushed[0][0].ref))
    _wait_running(cluster, namespace, "later")
    assert not set(_blob_requests(link)) & layers, _blob_requests(link)
    print(
        f"\nImages mode on the real node: Ready in {ready_seconds:.1f}s; a later pod "
        f"fetched {sum(_blob_bytes(link).values())} blob bytes"
    )


@pytest.fixture(scope="module")
def real_agent(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    real_node: realnode.RealNode,
    registry_set: registries.Registries,
    session_helper_image: images.Pushed,
    link: faultproxy.FaultProxy,
) -> Iterator[str]:
    """The chart's agent DaemonSet, its pod on the real node (the operator image, the
    node's containerd socket, the registry through the node-address mirror); the pod's
    name once it is Ready."""
    registry = registry_set.anonymous
    values = nodeagent.build_values(
        repository=session_helper_image.name,
        digest=session_helper_image.digest,
        containerd_socket=real_node.socket,
        node_selector=real_node.node_selector,
        tolerations=[real_node.toleration],
        insecure=[*(r.host for r in registry_set), link.host],
        mirrors={registry.host: link.host},
    )
    objects = nodeagent.select_agent_objects(
        nodeagent.render_chart(values, namespace=imageward_operator.namespace)
    )
    daemonset = nodeagent.find_daemonset(objects)
    started = time.monotonic()
    nodeagent.apply(cluster, objects)
    try:
        pod = nodeagent.wait_ready(cluster, daemonset, node=real_node.name)
        print(f"\nthe agent pod {pod} was Ready in {time.monotonic() - started:.1f}s")
        yield pod
    finally:
        nodeagent.delete(cluster, daemonset)


def test_layers_mode_agent_pod_puts_planned_blobs_and_a_later_pod_fetches_the_rest(
    cluster: controlplane.ControlPlane,
    imageward_operator: RunningOperator,
    real_node: realnode.RealNode,
    registry_set: registries.Registries,
    link: faultproxy.FaultProxy,
    real_agent: str,
    namespace: str,
) -> None:
    pushed = _runnable_images(
        registry_set.anonymous, 2, base=2, base_size=1024 * 1024, own_size=384 * 1024
    )
    shared = {layer.digest for layer in pushed[0][1].layers} & {
        layer.digest for layer in pushed[1][1].layers
    }
    own = {layer.digest: layer.size for layer in pushed[0][1].layers if layer.digest not in shared}
    assert len(shared) == 3 and len(own) == 1
    link.reset_counts()
    started = time.monotonic()
    _apply_in(
        cluster,
        namespace,
        _prepull(
            real_node,
            "shared",
            [p.ref for p, _ in pushed],
            mode="Layers",
            layers={"minShare": 2},
        ),
    )
    status = _wait_prepull_ready(cluster, namespace, "shared")
    ready_seconds = time.monotonic() - started
    assert status["nodes"] == {"desired": 1, "ready": 1, "failed": 0}, status
    assert status["plan"]["layers"] == 3, status["plan"]

    # The plan is the operator's ConfigMap; the agent pod reports it held.
    uid = cluster.get_json("prepull", "shared", "-n", namespace)["metadata"]["uid"]
    key = plans.build_prepull_key(namespace, "shared", uid)
    cluster.get_json("configmap", plans.build_plan_name(key), "-n", imageward_operator.namespace)
    agent_pod = cluster.get_json("pod", real_agent, "-n", imageward_operator.namespace)
    reports = {c["type"]: c for c in agent_pod["status"].get("conditions") or []}
    assert reports[f"prepull.imageward.io/{key}"]["status"] == "True", reports

    # The planned blobs are in the node's containerd, nothing else of these images.
    content = real_node.containerd.content_digests()
    assert shared <= content
    assert not set(own) & content
    # Held by the PrePull's lease, labelled with their source as containerd's pulls do.
    leases = real_node.containerd.ctr("leases", "ls").stdout
    assert f"{agent.LABEL_PREPULL_NAME}=shared" in leases, leases
    host = agent.build_source_host(registry_set.anonymous.host)
    listing = real_node.containerd.ctr("content", "ls").stdout
    for digest in shared:
        (row,) = [line for line in listing.splitlines() if line.startswith(digest)]
        assert f"containerd.io/distribution.source.{host}=" in row, row
    # The agent fetched each planned blob once, through the mirror.
    fetched = _blob_requests(link)
    assert {d: fetched.get(d, 0) for d in shared} == dict.fromkeys(shared, 1)
    mirror_queries = {s.query for s in link.seen if BLOB_RE.search(s.path)}
    assert all(f"ns={registry_set.anonymous.host}" in q for q in mirror_queries), mirror_queries
    # The planned prefix (every layer but the image's own top one) is unpacked before
    # Ready: committed overlayfs snapshots in k8s.io named by chain ID, each on the one
    # below, held by the PrePull's lease; the unplanned top layer is not.
    chain = unpack.build_chain_ids(layer.diff_id for layer in pushed[0][1].layers)
    assert len(chain) == 4
    found = real_node.containerd.snapshots()
    assert [found.get(c) for c in chain[:3]] == [
        ("", "Committed"),
        (chain[0], "Committed"),
        (chain[1], "Committed"),
    ], found
    assert chain[3] not in found
    assert not [key for key in found if key.startswith(unpack.KEY_PREFIX)], found
    marker = f"{agent.LABEL_PREPULL_NAME}=shared"
    assert set(chain[:3]) <= asyncio.run(_lease_snapshots(real_node, marker))
    made_by_agent = {c: _snapshot_labels(real_node, c) for c in chain[:3]}
    assert all(
        labels.get("app.kubernetes.io/managed-by") == "imageward"
        for labels in made_by_agent.values()
    ), made_by_agent

    # A later pod of the image fetches its unplanned layer and nothing else, byte for byte.
    link.reset_counts()
    _apply_in(cluster, namespace, _pod(real_node, "later", pushed[0][0].ref))
    _wait_running(cluster, namespace, "later")
    layer_bytes = {d: n for d, n in _blob_bytes(link).items() if d in shared or d in own}
    assert layer_bytes == own, (layer_bytes, own)
    assert not set(_blob_requests(link)) & shared
    # The kubelet's unpacker kept the agent's snapshots and unpacked only the top layer.
    found = real_node.containerd.snapshots()
    assert found.get(chain[3]) == (chain[2], "Committed"), found
    assert {c: _snapshot_labels(real_node, c) for c in chain[:3]} == made_by_agent
    print(
        f"\nLayers mode on the real node: Ready in {ready_seconds:.1f}s; a later pod fetched "
        f"{sum(layer_bytes.values())} layer bytes = the unplanned {sum(own.values())}"
    )

    # Deleting the PrePull releases its blobs on the node at once.
    cluster.kubectl("delete", "prepull", "shared", "-n", namespace)
    utils.wait_for(
        "the agent to drop the PrePull's lease",
        lambda: (
            f"{agent.LABEL_PREPULL_NAME}=shared"
            not in real_node.containerd.ctr("leases", "ls").stdout
        ),
        timeout=60,
    )
