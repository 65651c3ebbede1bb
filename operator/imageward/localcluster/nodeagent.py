"""The chart's node agent (PrePull Layers mode) as a real pod on a real node.

`charts/imageward` rendered with helm, of which only the agent's objects are applied (its
ServiceAccount, RBAC and DaemonSet): the operator runs elsewhere (a local `imageward run`
in the tests and `imageward dev`). The values are what a real node of the local cluster
needs, as a user would set them for theirs:

- `image`: the operator image built by `make image` (`operatorimage`), pushed to a local
  registry and named by digest; the kubelet pulls it like any image;
- `agent.containerdSocket`: the real node's own containerd socket (not
  /run/containerd/containerd.sock: the node's containerd has a root of its own);
- `agent.nodeSelector` / `agent.tolerations`: the real node only (it is tainted), so the
  kwok nodes, which run nothing, get no agent pod;
- `registry.insecure` and `registry.mirrors`: the local registries listen on 127.0.0.1,
  which inside a pod is the pod itself, so each is reached through a mirror on the node's
  address (e.g. a `faultproxy.FaultProxy(bind=node_ip)`), as a cluster reaches a registry
  through a pull-through mirror; image references keep the registry's own name, so the
  blobs the agent writes carry the labels the kubelet's pulls look for.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from imageward.localcluster import controlplane, tools

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
CHART = REPO_ROOT / "charts" / "imageward"
RELEASE = "imageward"
NAMESPACE = "imageward-system"
COMPONENT_LABEL = "app.kubernetes.io/component"


class NodeAgentError(RuntimeError):
    """The agent's pod did not come up; the message says what the pod says."""


def build_values(
    *,
    repository: str,
    digest: str,
    containerd_socket: pathlib.Path | str,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, str]],
    insecure: Iterable[str] = (),
    mirrors: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Chart values for an agent on one real node (see the module docstring)."""
    return {
        "replicaCount": 1,
        "podDisruptionBudget": {"enabled": False},
        "image": {"repository": repository, "digest": digest, "pullPolicy": "IfNotPresent"},
        "registry": {
            "insecure": sorted(set(insecure)),
            "mirrors": dict(sorted((mirrors or {}).items())),
        },
        "agent": {
            "enabled": True,
            "containerdSocket": str(containerd_socket),
            "nodeSelector": dict(node_selector),
            "tolerations": [dict(t) for t in tolerations],
        },
    }


def render_chart(
    values: Mapping[str, Any], *, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """`helm template` of charts/imageward with `values` (no cluster involved)."""
    result = subprocess.run(
        [
            str(tools.find("helm")),
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--values",
            "-",
        ],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise NodeAgentError(f"helm template failed ({result.returncode}):\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def select_agent_objects(manifests: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The agent's ServiceAccount, RBAC and DaemonSet (component label `agent`)."""
    return [
        dict(m)
        for m in manifests
        if ((m.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL) == "agent"
    ]


#: What the operator must be told to find and feed the agent pods (the chart sets them on
#: its own Deployment; an operator started by hand must be given them).
OPERATOR_ENV = ("IMAGEWARD_AGENT_ENABLED", "IMAGEWARD_AGENT_SELECTOR", "IMAGEWARD_AGENT_KEY_SECRET")


def select_operator_env(manifests: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """The chart Deployment's `OPERATOR_ENV` values (the agent's label selector and key
    Secret, as this release names them)."""
    (deployment,) = [m for m in manifests if m.get("kind") == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {
        e["name"]: str(e["value"])
        for e in container.get("env") or []
        if e["name"] in OPERATOR_ENV and "value" in e
    }


def find_daemonset(objects: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    found = [dict(o) for o in objects if o.get("kind") == "DaemonSet"]
    if len(found) != 1:
        raise NodeAgentError(f"expected one agent DaemonSet in the chart, found {len(found)}")
    return found[0]


def build_selector_text(daemonset: Mapping[str, Any]) -> str:
    labels = daemonset["spec"]["selector"]["matchLabels"]
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def apply(plane: controlplane.ControlPlane, objects: Sequence[Mapping[str, Any]]) -> None:
    plane.apply(*(dict(o) for o in objects))


def _pod_problem(pod: Mapping[str, Any]) -> str | None:
    """What keeps a pod from running for good (a pull refused, a crash loop), if anything."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff"):
            return f"{waiting['reason']}: {waiting.get('message', '')}"
    return None


def wait_ready(
    plane: controlplane.ControlPlane,
    daemonset: Mapping[str, Any],
    *,
    node: str,
    timeout: float = 180.0,
    tolerate_problems: float = 60.0,
) -> str:
    """The name of the agent's pod on `node` once it is Ready (listed its plans, read its
    node). A pull refused or a crash loop for longer than `tolerate_problems` seconds
    fails at once with the pod's own words."""
    namespace = daemonset["metadata"]["namespace"]
    selector = build_selector_text(daemonset)
    deadline = time.monotonic() + timeout
    first_problem: float | None = None
    last = "no pod yet"
    while time.monotonic() < deadline:
        pods = plane.get_json("pods", "-n", namespace, "-l", selector)["items"]
        for pod in pods:
            if pod["spec"].get("nodeName") != node or pod["metadata"].get("deletionTimestamp"):
                continue
            conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
            if conditions.get("Ready") == "True":
                return str(pod["metadata"]["name"])
            last = f"pod {pod['metadata']['name']}: {pod['status'].get('phase')}"
            problem = _pod_problem(pod)
            if problem:
                first_problem = first_problem or time.monotonic()
                if time.monotonic() - first_problem > tolerate_problems:
                    raise NodeAgentError(f"the agent pod on {node} does not start: {problem}")
                last += f" ({problem})"
        time.sleep(0.5)
    raise NodeAgentError(f"the agent pod on {node} was not Ready within {timeout:.0f}s: {last}")


def delete(plane: controlplane.ControlPlane, daemonset: Mapping[str, Any]) -> None:
    """Delete the DaemonSet (its RBAC stays: the operator's chart objects may share it)."""
    plane.kubectl(
        "delete",
        "daemonset",
        daemonset["metadata"]["name"],
        "-n",
        daemonset["metadata"]["namespace"],
        "--ignore-not-found",
        "--wait=false",
        check=False,
    )
