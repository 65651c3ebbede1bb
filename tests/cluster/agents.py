"""The chart's node agent, as far as kwok nodes allow: its DaemonSet and ServiceAccount are
the chart's, applied to the test cluster (its pods are kwok's: nothing runs), and a real
`imageward agent --from-cluster` process stands in for the pod of one node. It runs under
the agent's own ServiceAccount token, against the harness's real containerd, and reports
into that kwok pod's status, exactly as the pod would."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from imageward.localcluster import containerd, controlplane, processes
from tests import utils
from tests.unit.chart import chart

NAMESPACE = "imageward-system"  # the session operator's (tests/conftest.py)
RELEASE = "imageward"


def render_agent() -> list[dict[str, Any]]:
    """The chart's agent objects, rendered with the values the session operator uses."""
    manifests = chart.render(
        {"replicaCount": 1, "podDisruptionBudget": {"enabled": False}},
        release=RELEASE,
        namespace=NAMESPACE,
    )
    return [m for m in manifests if chart.component_of(m) == "agent"]


def apply_daemonset(cluster: controlplane.ControlPlane) -> dict[str, Any]:
    """The chart's agent DaemonSet (its RBAC is applied with the operator's)."""
    daemonset = chart.find(render_agent(), "DaemonSet", component="agent")
    cluster.apply(daemonset)
    return daemonset


def service_account() -> str:
    name: str = chart.find(render_agent(), "ServiceAccount", component="agent")["metadata"]["name"]
    return name


def identity(cluster: controlplane.ControlPlane, directory: pathlib.Path) -> pathlib.Path:
    """A kubeconfig with the agent ServiceAccount's token (not the admin's certificate)."""
    account = service_account()
    path = directory / "agent-kubeconfig"
    cluster.write_token_kubeconfig(
        path,
        cluster.service_account_token(NAMESPACE, account, seconds=3600),
        f"system:serviceaccount:{NAMESPACE}:{account}",
    )
    return path


def labelled_node(cluster: controlplane.ControlPlane, label: str) -> str:
    """A new kwok node carrying `imageward-test/agent=<label>`, for PrePulls to select."""
    (name,) = cluster.add_nodes(1, prefix=f"agent-{uuid.uuid4().hex[:6]}-")
    cluster.kubectl("label", "node", name, f"imageward-test/agent={label}")
    return name


def agent_pod(cluster: controlplane.ControlPlane, node: str) -> str:
    """The name of the agent DaemonSet's pod on `node` (once the DaemonSet made it)."""
    selector = ",".join(
        f"{k}={v}"
        for k, v in chart.find(render_agent(), "DaemonSet", component="agent")["spec"]["selector"][
            "matchLabels"
        ].items()
    )

    def found() -> str | None:
        for pod in cluster.get_json("pods", "-n", NAMESPACE, "-l", selector)["items"]:
            if pod["spec"].get("nodeName") == node and not pod["metadata"].get("deletionTimestamp"):
                return str(pod["metadata"]["name"])
        return None

    return utils.wait_for(f"the agent pod on {node}", found, timeout=60)


def write_key(cluster: controlplane.ControlPlane, path: pathlib.Path) -> bool:
    """What the kubelet puts in the agent pod's key volume: the operator's key Secret."""
    result = cluster.kubectl(
        "get", "secret", f"{RELEASE}-agent-key", "-n", NAMESPACE, "-o", "json", check=False
    )
    if result.returncode != 0:
        return False
    path.write_bytes(base64.b64decode(json.loads(result.stdout)["data"]["key"]))
    return True


def conditions(cluster: controlplane.ControlPlane, pod: str) -> dict[str, dict[str, Any]]:
    """The agent pod's per-plan conditions by type."""
    body = cluster.get_json("pod", pod, "-n", NAMESPACE)
    return {
        c["type"]: c
        for c in (body.get("status") or {}).get("conditions") or []
        if c["type"].startswith("prepull.imageward.io/")
    }


def start(
    *,
    kubeconfig: pathlib.Path,
    node: str,
    pod: str | None,
    daemon: containerd.Containerd,
    key: pathlib.Path,
    insecure: Sequence[str],
    log_dir: pathlib.Path,
    extra: Sequence[str] = (),
) -> tuple[processes.ManagedProcess, str]:
    """`imageward agent --from-cluster` for one node; returns it and its base URL."""
    port = processes.free_port()
    argv = [
        sys.executable,
        "-m",
        "imageward",
        "agent",
        "--from-cluster",
        "--namespace",
        NAMESPACE,
        "--node",
        node,
        "--kubeconfig",
        str(kubeconfig),
        "--containerd-socket",
        str(daemon.socket),
        "--credentials-key",
        str(key),
        "--listen",
        f"127.0.0.1:{port}",
        "--poll-interval",
        "0.5",
        "--report-interval",
        "1s",
        *extra,
    ]
    if pod:
        argv += ["--pod", pod]
    for host in insecure:
        argv += ["--insecure-registry", host]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWARD_")}
    env.pop("KUBECONFIG", None)
    for name in ("POD_NAME", "POD_NAMESPACE", "NODE_NAME"):
        env.pop(name, None)
    process = processes.ManagedProcess(
        f"agent-{node}", argv, log_dir=log_dir, env=env, grace=20
    ).start()
    base = f"http://127.0.0.1:{port}"
    processes.wait_for_http(f"{base}/healthz", timeout=30, expect_status=200, process=process)
    return process, base
