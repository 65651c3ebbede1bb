"""The harness is real: CRDs are served, controllers and the scheduler run pods on kwok
nodes, and the apiserver calls a Kopf webhook over TLS made with `cryptography`."""

from __future__ import annotations

import json
import pathlib
import sys
import uuid

import pytest
from kopf.testing import KopfRunner

from imageward.admission import pki
from imageward.localcluster import controlplane, processes
from tests import utils

pytestmark = pytest.mark.cluster

HERE = pathlib.Path(__file__).parent


def test_server_version_is_the_built_one(cluster: controlplane.ControlPlane) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["major"] == "1"
    assert int(version["serverVersion"]["minor"]) >= 34


def test_custom_resource_definition_is_served(
    cluster: controlplane.ControlPlane, namespace: str
) -> None:
    cluster.apply(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.harness.imageward.io"},
            "spec": {
                "group": "harness.imageward.io",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {"size": {"type": "integer", "maximum": 10}},
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.harness.imageward.io", "--timeout=30s"
    )
    cluster.apply(
        {
            "apiVersion": "harness.imageward.io/v1",
            "kind": "Widget",
            "metadata": {"name": "w", "namespace": namespace},
            "spec": {"size": 3},
        }
    )
    assert cluster.get_json("widget", "w", "-n", namespace)["spec"]["size"] == 3
    # The schema is enforced by the real apiserver.
    refused = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        input=json.dumps(
            {
                "apiVersion": "harness.imageward.io/v1",
                "kind": "Widget",
                "metadata": {"name": "too-big"},
                "spec": {"size": 11},
            }
        ),
    )
    assert refused.returncode != 0
    assert "spec.size" in refused.stderr


def test_daemonset_pods_run_on_every_kwok_node(
    cluster: controlplane.ControlPlane, namespace: str
) -> None:
    # kwok nodes only: a real node the session started (tainted, pulling for real) is not
    # what this test is about.
    nodes = {n["metadata"]["name"] for n in cluster.get_json("nodes", "-l", "type=kwok")["items"]}
    assert len(nodes) >= 3
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "everywhere", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "everywhere"}},
                "template": {
                    "metadata": {"labels": {"app": "everywhere"}},
                    "spec": {
                        "nodeSelector": {"type": "kwok"},
                        "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}],
                    },
                },
            },
        }
    )

    def running_nodes() -> set[str] | None:
        pods = cluster.get_json("pods", "-n", namespace, "-l", "app=everywhere")["items"]
        running = {
            p["spec"].get("nodeName") for p in pods if p.get("status", {}).get("phase") == "Running"
        }
        return running if running >= nodes else None

    # Created by the DaemonSet controller, bound (nodeName) and marked Running by kwok.
    assert utils.wait_for("DaemonSet pods Running on every node", running_nodes) == nodes
    status = utils.wait_for(
        "DaemonSet status to count ready pods",
        lambda: (
            (s := cluster.get_json("daemonset", "everywhere", "-n", namespace)["status"]).get(
                "numberReady"
            )
            == len(nodes)
            and s
        ),
    )
    assert status["desiredNumberScheduled"] == len(nodes)


def test_scheduler_binds_a_plain_pod(cluster: controlplane.ControlPlane, namespace: str) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "solo", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
        }
    )
    pod = utils.wait_for(
        "the scheduler to bind the pod",
        lambda: (
            (p := cluster.get_json("pod", "solo", "-n", namespace))["spec"].get("nodeName") and p
        ),
    )
    assert pod["spec"]["nodeName"].startswith("kwok-node-")


def test_kopf_webhook_refusal_reaches_the_client(
    cluster: controlplane.ControlPlane,
    namespace: str,
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = pki.CertificateAuthority.create("harness-webhook-ca")
    cert, key = ca.issue("127.0.0.1", ip_addresses=["127.0.0.1"], server=True).write(
        tmp_path, "webhook"
    )
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    # Kopf names each webhook "<handler id>.<configuration name>": a domain of 3+ labels.
    config_name = f"harness-{uuid.uuid4().hex[:6]}.imageward.io"
    monkeypatch.setenv("HARNESS_WEBHOOK_PORT", str(processes.free_port()))
    monkeypatch.setenv("HARNESS_WEBHOOK_CERT", str(cert))
    monkeypatch.setenv("HARNESS_WEBHOOK_KEY", str(key))
    monkeypatch.setenv("HARNESS_WEBHOOK_CA", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("HARNESS_WEBHOOK_CONFIG", config_name)
    operator_file = str(HERE / "webhook_operator.py")
    # KopfRunner runs every handler of this process's default registry: had a test module
    # imported imageward.main, the session operator's handlers would run here too (and
    # patch its webhook configurations' caBundle with a CA of their own).
    assert "imageward.main" not in sys.modules, "a test imported imageward.main"
    try:
        with KopfRunner(["run", "--standalone", "-A", operator_file], timeout=60):
            utils.wait_for(
                "Kopf to register its ValidatingWebhookConfiguration",
                lambda: (
                    cluster.kubectl(
                        "get", "validatingwebhookconfiguration", config_name, check=False
                    ).returncode
                    == 0
                ),
            )

            def refused() -> str | None:
                result = cluster.kubectl(
                    "create",
                    "configmap",
                    "bad",
                    "-n",
                    namespace,
                    "--from-literal=forbidden=1",
                    check=False,
                )
                # Until the server is listening the apiserver reports a call failure;
                # the test waits for the handler's own message.
                return result.stderr if "is not allowed" in result.stderr else None

            message = utils.wait_for("the webhook to refuse the ConfigMap", refused)
            assert 'admission webhook "refuse-forbidden' in message
            assert "harness webhook: key 'forbidden' is not allowed" in message
            allowed = cluster.kubectl(
                "create",
                "configmap",
                "good",
                "-n",
                namespace,
                "--from-literal=fine=1",
                check=False,
            )
            assert allowed.returncode == 0, allowed.stderr
    finally:
        cluster.kubectl("delete", "validatingwebhookconfiguration", config_name, check=False)


def test_hundreds_of_kwok_nodes_on_request() -> None:
    with controlplane.ControlPlane(nodes=200) as plane:
        nodes = plane.get_json("nodes")["items"]
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        assert len(ready) == 200
    assert not plane.workdir.exists()  # stop() leaves no temporary directory behind
