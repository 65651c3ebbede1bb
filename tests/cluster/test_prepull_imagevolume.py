"""PrePull pullMethod ImageVolume through a real kubelet.

Image volumes need the ImageVolume feature gate (beta and off by default in Kubernetes
1.34) on the apiserver and the kubelet, and a CRI that mounts them: Debian's containerd
1.6.20 does not (with the gate on, the kubelet pulls the volume's image, then containerd
fails the container with `CreateContainerError: failed to generate spec: failed to mkdir
"": mkdir : no such file or directory`, the image mount's empty host path); containerd
2.1 does. So this module runs a control plane of its own with the gate on, the machine's
real node on containerd 2.1 (`bin/containerd2`, built by `make tools`) with the gate on,
and `imageward run` against them, pausing the session's real node (one per machine)
meanwhile. The session's control plane keeps the gate off: `test_prepull.py` checks that
an ImageVolume PrePull there says `ImageVolumeUnsupported`.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from imageward.localcluster import (
    controlplane,
    faultproxy,
    images,
    processes,
    realnode,
    registries,
    tools,
)
from imageward.prepull import daemonset, model
from imageward.registry import model as registry_model
from tests import utils

pytestmark = pytest.mark.cluster

CRDS = pathlib.Path(__file__).resolve().parents[2] / "crds"
NAMESPACE = "imageward-system"


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _install_crds(plane: controlplane.ControlPlane) -> None:
    for crd in sorted(CRDS.glob("*.yaml")):
        plane.kubectl("apply", "--server-side", "-f", str(crd))

        def established(path: pathlib.Path = crd) -> bool:
            conditions = plane.get_json("-f", str(path)).get("status", {}).get("conditions")
            return any(
                c["type"] == "Established" and c["status"] == "True" for c in conditions or []
            )

        utils.wait_for(f"{crd.name} Established", established, timeout=60)


@pytest.fixture
def gated(
    tmp_path: pathlib.Path, real_node_slot: None
) -> Iterator[tuple[controlplane.ControlPlane, realnode.RealNode]]:
    """A control plane and the real node (containerd 2.1), both with ImageVolume on."""
    address = controlplane.primary_address()
    if address is None:
        pytest.skip("this machine has no address besides 127.0.0.1 for pods to reach")
    gates = {"ImageVolume": True}
    with controlplane.ControlPlane(
        nodes=0, advertise_address=address, feature_gates=gates, workdir=tmp_path / "plane"
    ) as plane:
        node = realnode.RealNode(
            plane, log_dir=tmp_path / "node", lock_timeout=1200, containerd_tool="containerd2"
        )
        yield plane, node


def _start_operator(
    plane: controlplane.ControlPlane,
    node: realnode.RealNode,
    insecure: list[str],
    log_dir: pathlib.Path,
) -> processes.ManagedProcess:
    metrics_port = processes.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWARD_")}
    env.update(
        KUBECONFIG=str(plane.kubeconfig),
        IMAGEWARD_NAMESPACE=NAMESPACE,
        IMAGEWARD_INSECURE_REGISTRIES=",".join(insecure),
        IMAGEWARD_METRICS_PORT=str(metrics_port),
        IMAGEWARD_WEBHOOK_HOST="127.0.0.1",
        IMAGEWARD_WEBHOOK_PORT=str(processes.free_port()),
        IMAGEWARD_PAUSE_IMAGE=node.pause_image,  # ImageVolume pods run only pause
    )
    process = processes.ManagedProcess(
        "imageward-operator",
        [sys.executable, "-m", "imageward", "run", "--standalone"],
        log_dir=log_dir,
        env=env,
    )
    process.start()
    processes.wait_for_http(
        f"http://127.0.0.1:{metrics_port}/metrics", timeout=60, expect_status=200, process=process
    )
    return process


def test_image_volume_prepull_completes_on_a_real_node_with_containerd_2(
    gated: tuple[controlplane.ControlPlane, realnode.RealNode],
    anonymous_registry: registries.Registry,
    tmp_path: pathlib.Path,
) -> None:
    plane, node = gated
    started = time.monotonic()
    name = f"iv-{_uid()}"
    pause = images.layer_from_files(
        {
            "pause": (tools.find("imageward-pause").read_bytes(), 0o755),
            "set": (name.encode(), 0o644),
        }
    )
    manifest = images.build_image(
        [pause, images.random_layer(1024 * 1024, seed=f"{name}-data")],
        platform=realnode.host_platform(),
        user=images.NONROOT_USER,
        env=(),
        entrypoint=["/pause"],
    )
    pushed = anonymous_registry.client().push(f"{name}/app", manifest, tag="1.0")
    with faultproxy.FaultProxy(anonymous_registry.url) as link:
        node.add_registry(anonymous_registry.host, endpoint=link.url)
        with node:
            version = node.containerd.ctr("version").stdout
            assert "Version:  v2." in version or "Version: v2." in version, version
            _install_crds(plane)
            plane.create_namespace(NAMESPACE)
            plane.create_namespace("apps")
            operator = _start_operator(plane, node, [anonymous_registry.host], tmp_path / "op")
            try:
                plane.apply(
                    {
                        "apiVersion": "imageward.io/v1alpha1",
                        "kind": "PrePull",
                        "metadata": {"name": "volumes", "namespace": "apps"},
                        "spec": {
                            "images": [pushed.ref],
                            "pullMethod": "ImageVolume",
                            "nodeSelector": node.node_selector,
                            "tolerations": [node.toleration],
                        },
                    }
                )

                def ready() -> dict[str, Any] | None:
                    status = plane.get_json("prepull", "volumes", "-n", "apps").get("status") or {}
                    conditions = {c["type"]: c for c in status.get("conditions") or []}
                    done = conditions.get("Ready", {}).get("status") == "True"
                    return (
                        status if done and (status.get("nodes") or {}).get("ready") == 1 else None
                    )

                try:
                    status = utils.wait_for("the ImageVolume PrePull Ready", ready, timeout=180)
                except AssertionError as e:
                    pods = plane.kubectl("describe", "pods", "-n", "apps", check=False).stdout
                    got = plane.get_json("prepull", "volumes", "-n", "apps").get("status")
                    raise AssertionError(f"{e}\n{json.dumps(got)}\n{pods[-3000:]}") from None
                ready_seconds = time.monotonic() - started
                assert status["nodes"] == {"desired": 1, "ready": 1, "failed": 0}, status

                # The apiserver kept the image volume (with the gate off it drops it).
                (stored,) = plane.get_json("daemonsets", "-n", "apps")["items"]
                resolved = [model.ResolvedImage(pushed.ref, registry_model.Digest(pushed.digest))]
                assert daemonset.evaluate_missing_image_volumes(stored, resolved) == []
                # The kubelet pulled the image for the volume: it is in the node's containerd.
                present = node.containerd.ctr("images", "ls", "-q").stdout.split()
                assert pushed.pinned in present, present
                layers = {layer.digest for layer in manifest.layers}
                assert layers <= node.containerd.content_digests()
                fetched = {d: link.count(f"/blobs/{d}", method="GET") for d in layers}
                assert fetched == dict.fromkeys(layers, 1)

                # A pod of the image later fetches no layer.
                link.reset_counts()
                plane.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {"name": "later", "namespace": "apps"},
                        "spec": {
                            "containers": [{"name": "app", "image": pushed.ref}],
                            "dnsPolicy": "Default",
                            "terminationGracePeriodSeconds": 0,
                            **node.placement,
                        },
                    }
                )
                utils.wait_for(
                    "the later pod Running",
                    lambda: (
                        plane.get_json("pod", "later", "-n", "apps").get("status", {}).get("phase")
                        == "Running"
                    ),
                    timeout=120,
                )
                assert not [d for d in layers if link.count(f"/blobs/{d}")]
                print(
                    f"\nImageVolume PrePull Ready on the real node (containerd 2) "
                    f"{ready_seconds:.1f}s after the start"
                )
            finally:
                operator.stop()
