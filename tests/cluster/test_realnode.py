"""A real kubelet node beside the kwok ones: real pods run, `kubectl logs/exec` reach the
kubelet through the apiserver, pods reach the apiserver through the `kubernetes` Service,
and the host is back as it was after stop, also after a killed kubelet or a crashed run.

The tests share the session's `real_node`; the last three stop and start it again (it is
usable afterwards), so they run last in this module.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from imageward.localcluster import (
    controlplane,
    faultproxy,
    hoststate,
    images,
    realnode,
    registries,
    tools,
)
from tests import utils

pytestmark = pytest.mark.cluster

HELPER_OUTPUT = "imageward-helper: ok"


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _pod(
    node: realnode.RealNode,
    name: str,
    image: str,
    *,
    command: list[str] | None = None,
    restart: str = "Never",
    **container: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "main", "image": image, **container}
    if command is not None:
        spec["command"] = command
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [spec],
            "restartPolicy": restart,
            "dnsPolicy": "Default",  # no cluster DNS in the harness
            "terminationGracePeriodSeconds": 5,
            **node.placement,
        },
    }


def _create(cluster: controlplane.ControlPlane, namespace: str, pod: dict[str, Any]) -> None:
    pod["metadata"]["namespace"] = namespace
    cluster.apply(pod)


def _wait_phase(
    cluster: controlplane.ControlPlane,
    namespace: str,
    name: str,
    phase: str,
    timeout: float = 90,
    node: realnode.RealNode | None = None,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        pod: dict[str, Any] = cluster.get_json("pod", name, "-n", namespace)
        status = pod.get("status", {})
        if status.get("phase") == "Failed" and phase != "Failed":
            raise AssertionError(f"pod {namespace}/{name} failed: {status}")
        return pod if status.get("phase") == phase else None

    try:
        return utils.wait_for(f"pod {namespace}/{name} {phase}", reached, timeout=timeout)
    except AssertionError as e:
        # What a person needs to see why: the pod's events, and the kubelet's last words.
        described = cluster.kubectl("describe", "pod", name, "-n", namespace, check=False)
        kubelet = ""
        if node is not None and node.running:
            kubelet = f"\n--- kubelet ({node.kubelet.log_path}):\n{node.kubelet.log_tail(3000)}"
        raise AssertionError(f"{e}\n{described.stdout[-3000:]}{kubelet}") from None


def _tools_image() -> images.Manifest:
    """The static pause and helper binaries in one image (no shell, no libc)."""
    layer = images.layer_from_files(
        {
            "pause": (tools.find("imageward-pause").read_bytes(), 0o755),
            "imageward-helper": (tools.find("imageward-helper").read_bytes(), 0o755),
        }
    )
    return images.build_image(
        [layer],
        platform=realnode.host_platform(),
        user=images.NONROOT_USER,
        env=(),
        entrypoint=["/pause"],
    )


@pytest.fixture(scope="module")
def tools_image(anonymous_registry: registries.Registry, real_node: realnode.RealNode) -> str:
    real_node.add_registry(anonymous_registry.host)
    pushed = anonymous_registry.client().push("realnode/tools", _tools_image(), tag="1.0")
    return pushed.ref


def test_node_is_ready_with_its_label_taint_and_runtime(
    real_node: realnode.RealNode, cluster: controlplane.ControlPlane
) -> None:
    node = cluster.get_json("node", real_node.name)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", node["status"]["conditions"]
    assert node["metadata"]["labels"][realnode.NODE_LABEL_KEY] == realnode.NODE_LABEL_VALUE
    assert {"key": realnode.TAINT_KEY, "value": "true", "effect": "NoSchedule"} in node["spec"][
        "taints"
    ]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.34.4"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == cluster.advertise_address
    print(f"\nreal node started in {real_node.start_seconds:.1f}s")


def test_pod_of_a_registry_image_runs_and_its_logs_show_its_output(
    real_node: realnode.RealNode,
    cluster: controlplane.ControlPlane,
    namespace: str,
    tools_image: str,
) -> None:
    name = f"hello-{_uid()}"
    _create(cluster, namespace, _pod(real_node, name, tools_image, command=["/imageward-helper"]))
    pod = _wait_phase(cluster, namespace, name, "Succeeded", node=real_node)
    assert pod["spec"]["nodeName"] == real_node.name
    logs = cluster.kubectl("logs", "-n", namespace, name).stdout
    assert logs.strip() == HELPER_OUTPUT
    # The kubelet pulled it through CRI into the node's own containerd.
    assert tools_image in real_node.containerd.ctr("images", "ls", "-q").stdout.split()


def test_exec_runs_a_command_in_a_running_container(
    real_node: realnode.RealNode,
    cluster: controlplane.ControlPlane,
    namespace: str,
    tools_image: str,
) -> None:
    name = f"paused-{_uid()}"
    _create(cluster, namespace, _pod(real_node, name, tools_image, restart="Always"))
    _wait_phase(cluster, namespace, name, "Running", node=real_node)
    result = cluster.kubectl("exec", "-n", namespace, name, "--", "/imageward-helper", "x")
    assert result.stdout.strip() == HELPER_OUTPUT


def test_kubelet_pulls_can_go_through_another_endpoint(
    real_node: realnode.RealNode,
    cluster: controlplane.ControlPlane,
    namespace: str,
    anonymous_registry: registries.Registry,
    tools_image: str,
) -> None:
    # What a benchmark does to put the node's pulls behind a slow link: the registry's
    # hosts.toml names the fault proxy as the host to pull from.
    image = images.build_image(
        [*_tools_image().layers, images.random_layer(256 * 1024, seed=_uid())],
        platform=realnode.host_platform(),
        user=images.NONROOT_USER,
        env=(),
        entrypoint=["/imageward-helper"],
    )
    pushed = anonymous_registry.client().push(f"realnode/proxied-{_uid()}", image, tag="1.0")
    with faultproxy.FaultProxy(anonymous_registry.url) as proxy:
        real_node.add_registry(anonymous_registry.host, endpoint=proxy.url)
        try:
            name = f"proxied-{_uid()}"
            _create(cluster, namespace, _pod(real_node, name, pushed.ref))
            _wait_phase(cluster, namespace, name, "Succeeded", node=real_node)
        finally:
            real_node.add_registry(anonymous_registry.host)
        top = image.layers[-1]
        assert proxy.count(f"/blobs/{top.digest}") == 1
        assert proxy.sent_bytes(f"/blobs/{top.digest}") == top.size


def test_kubelet_pulls_from_a_token_registry_with_the_pods_pull_secret(
    real_node: realnode.RealNode,
    cluster: controlplane.ControlPlane,
    namespace: str,
    registry_set: registries.Registries,
) -> None:
    registry = registry_set.token  # Bearer tokens from its issuer, as real registries do
    pushed = registry.client().push(f"realnode/private-{_uid()}", _tools_image(), tag="1.0")
    config = base64.b64encode(json.dumps(registry.docker_config()).encode()).decode()
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pull", "namespace": namespace},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": config},
        }
    )
    # First without the secret (before anything put the image on the node: a present image
    # is not pulled again, so its credentials are not checked; KEP-2535 is off in 1.34).
    without = f"nosecret-{_uid()}"
    _create(cluster, namespace, _pod(real_node, without, pushed.ref, command=["/imageward-helper"]))

    def pull_refused() -> str | None:
        status = cluster.get_json("pod", without, "-n", namespace)["status"]
        for container in status.get("containerStatuses", []):
            reason = container["state"].get("waiting", {}).get("reason")
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                return str(container["state"]["waiting"].get("message", reason))
        return None

    message = utils.wait_for("the pull without a secret to be refused", pull_refused)
    assert "authorization failed" in message, message
    name = f"secret-{_uid()}"
    pod = _pod(real_node, name, pushed.ref, command=["/imageward-helper"])
    pod["spec"]["imagePullSecrets"] = [{"name": "pull"}]
    _create(cluster, namespace, pod)
    _wait_phase(cluster, namespace, name, "Succeeded", node=real_node)
    assert cluster.kubectl("logs", "-n", namespace, name).stdout.strip() == HELPER_OUTPUT


def test_pod_reaches_the_apiserver_through_the_kubernetes_service(
    real_node: realnode.RealNode,
    cluster: controlplane.ControlPlane,
    namespace: str,
    anonymous_registry: registries.Registry,
) -> None:
    # kubectl is a static Go binary: in a pod it uses the in-cluster configuration, i.e.
    # KUBERNETES_SERVICE_HOST (the ClusterIP, DNAT-ed by kube-proxy), the ServiceAccount
    # token and the cluster CA mounted by the kubelet.
    layer = images.layer_from_files(
        {"kubectl": (tools.find("kubectl").read_bytes(), 0o755)}, compresslevel=1
    )
    image = images.build_image([layer], platform=realnode.host_platform(), env=())
    pushed = anonymous_registry.client().push("realnode/kubectl", image, tag="1.34")
    name = f"whoami-{_uid()}"
    pod = _pod(
        real_node,
        name,
        pushed.ref,
        command=[
            "/kubectl",
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
            "-v=6",
        ],
        env=[{"name": "HOME", "value": "/tmp"}],
        volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}],
        securityContext={"runAsUser": 65532, "runAsNonRoot": True},
    )
    pod["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    _create(cluster, namespace, pod)
    _wait_phase(cluster, namespace, name, "Succeeded", timeout=120, node=real_node)
    logs = cluster.kubectl("logs", "-n", namespace, name).stdout
    assert f"system:serviceaccount:{namespace}:default" in logs, logs
    assert "https://10.96.0.1:443/apis/authentication.k8s.io/v1/selfsubjectreviews" in logs, logs


def _assert_host_as_before(before: hoststate.Snapshot | None) -> None:
    assert before is not None
    changes = realnode.host_changes(before)
    assert not changes, "the real node left the host changed:\n" + "\n".join(changes)


def _start_again(node: realnode.RealNode, cluster: controlplane.ControlPlane) -> None:
    node.start()
    ready = cluster.kubectl(
        "get", "node", node.name, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'
    )
    assert ready.stdout == "True"


def _run_pause_pod(
    node: realnode.RealNode, cluster: controlplane.ControlPlane, namespace: str
) -> str:
    # The pause image is on the node already (never pulled): a running pod with a network
    # namespace, a veth, mounts and cgroups is what a crash would leave.
    name = f"sleeper-{_uid()}"
    pod = _pod(node, name, node.pause_image, restart="Always", imagePullPolicy="Never")
    _create(cluster, namespace, pod)
    _wait_phase(cluster, namespace, name, "Running", node=node)
    return name


def test_stop_puts_the_host_back_and_a_second_start_works(
    real_node: realnode.RealNode, cluster: controlplane.ControlPlane, namespace: str
) -> None:
    _run_pause_pod(real_node, cluster, namespace)
    before = real_node.before
    real_node.stop()
    _assert_host_as_before(before)
    stopped = real_node.stop_seconds
    _start_again(real_node, cluster)
    print(f"\nreal node stopped in {stopped:.1f}s, started again in {real_node.start_seconds:.1f}s")


def test_a_kubelet_killed_mid_run_is_still_cleaned_up(
    real_node: realnode.RealNode, cluster: controlplane.ControlPlane, namespace: str
) -> None:
    _run_pause_pod(real_node, cluster, namespace)
    pid = real_node.kubelet.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    utils.wait_for("the kubelet to die", lambda: not real_node.kubelet.alive, timeout=10)
    before = real_node.before
    real_node.stop()
    _assert_host_as_before(before)
    _start_again(real_node, cluster)


def test_a_run_that_died_is_cleaned_up_by_the_next_start(
    real_node: realnode.RealNode,
    cluster: controlplane.ControlPlane,
    namespace: str,
    tmp_path: pathlib.Path,
) -> None:
    real_node.stop()
    before = realnode.take_host_snapshot()
    # Another process runs a node against the same control plane, then dies with its
    # kubelet (SIGKILL: no finalizer, no atexit) while a pod runs.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imageward.localcluster.realnode",
            "--attach",
            str(cluster.workdir),
            "--log-dir",
            str(tmp_path),
            # Another run on this machine may take the one real node meanwhile: wait.
            "--lock-timeout",
            "1200",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("ready kubelet_pid=" in x for x in output):
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
        ready = [line for line in output if "ready kubelet_pid=" in line]
        assert ready, "".join(output)
        kubelet_pid = int(ready[0].rsplit("=", 1)[1])
        _run_pause_pod(real_node, cluster, namespace)
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    os.kill(kubelet_pid, signal.SIGKILL)
    assert realnode.BASE_DIR.joinpath("journal.json").exists()

    _start_again(real_node, cluster)
    assert real_node.recovered
    assert real_node.before is not None
    changes = realnode.host_changes(before, real_node.before)
    assert not changes, "the next start did not clean up:\n" + "\n".join(changes)
    name = _run_pause_pod(real_node, cluster, namespace)  # the new node runs pods
    assert cluster.get_json("pod", name, "-n", namespace)["spec"]["nodeName"] == real_node.name
