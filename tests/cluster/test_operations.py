"""What SREs and platform teams rely on around the running operator: certificate
rotation without losing the webhook, least privilege under the chart's ServiceAccount,
and a real Prometheus answering every dashboard and alert expression with data."""

from __future__ import annotations

import json
import re
import socket
import ssl
import uuid
from typing import Any

import pytest

from imageward.admission import tls
from imageward.localcluster import controlplane, cosign, images, processes, prometheus, registries
from tests import utils
from tests.cluster import helpers
from tests.conftest import RunningOperator
from tests.unit.chart import chart

pytestmark = pytest.mark.cluster


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def _served_certificate(url: str) -> bytes:
    host, port = url.removeprefix("https://").split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return der


def _policy(name: str, images_: list[str], rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {"match": {"images": images_}, "rules": rules},
    }


def _pod(name: str, namespace: str, image: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "app", "image": image}]},
        }
    )


def _wait_policy_ready(cluster: controlplane.ControlPlane, name: str) -> None:
    utils.wait_for(
        f"ImagePolicy {name} Ready",
        lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (cluster.get_json("imagepolicy", name).get("status") or {}).get(
                "conditions", []
            )
        ),
        timeout=30,
    )


def test_serving_certificate_rotation_keeps_the_webhook_reachable(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    registry_set: registries.Registries,
) -> None:
    registry = registry_set.anonymous
    repository = f"rot/{_uid()}"
    registry.client().push(repository, images.many_layer_image(f"rot-{_uid()}", count=5), tag="1")
    image = f"{registry.host}/{repository}:1"
    name = f"rotation-{_uid()}"
    cluster.apply(_policy(name, [f"{registry.host}/rot/**"], {"maxLayers": 2}))
    try:
        _wait_policy_ready(cluster, name)
        before = _served_certificate(imageward_operator.webhook_url)

        # Rotate as another replica would: a new serving certificate from the same CA,
        # written to the shared Secret.
        secret_name = next(
            v
            for k, v in chart.env_of(
                chart.find(
                    chart.render({"replicaCount": 1}, namespace=imageward_operator.namespace),
                    "Deployment",
                )
            ).items()
            if k == "IMAGEWARD_TLS_SECRET"
        )
        secret = cluster.get_json("secret", secret_name, "-n", imageward_operator.namespace)
        current = tls.Material.from_secret_data(secret["data"])
        assert current is not None
        renewed = tls.build_renewed(current, ["localhost"], ["127.0.0.1"])
        secret["data"] = renewed.to_secret_data()
        cluster.kubectl("replace", "-f", "-", input=json.dumps(secret))

        after = utils.wait_for(
            "the webhook to serve the rotated certificate",
            lambda: (
                (cert := _served_certificate(imageward_operator.webhook_url)) != before and cert
            ),
            timeout=30,
        )
        assert after != before
        refused = cluster.kubectl(
            "apply", "-f", "-", input=_pod("rotated", namespace, image), check=False
        )
        assert refused.returncode != 0
        assert f"ImagePolicy {name}" in refused.stderr and "over maxLayers 2" in refused.stderr
    finally:
        cluster.kubectl("delete", "imagepolicy", name, "--ignore-not-found", check=False)


def test_operator_identity_is_least_privilege(
    cluster: controlplane.ControlPlane, imageward_operator: RunningOperator
) -> None:
    def as_operator(*args: str) -> Any:
        return cluster.kubectl(*args, kubeconfig=imageward_operator.kubeconfig, check=False)

    assert as_operator("auth", "can-i", "patch", "imagepolicies/status").stdout.strip() == "yes"
    assert as_operator("auth", "can-i", "create", "daemonsets", "-n", "default").stdout.strip() == (
        "yes"
    )
    for verb in (
        ("delete", "secrets", "-A"),
        ("create", "clusterrolebindings"),
        ("delete", "namespaces"),
        ("create", "pods", "-n", "default"),
        ("update", "validatingwebhookconfigurations"),
    ):
        assert as_operator("auth", "can-i", *verb).stdout.strip() == "no", verb
    refused = as_operator("delete", "namespace", "default", "--dry-run=server")
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bimageward_[a-z_]+?(?=_bucket\b|_sum\b|_count\b|\b)", expression))


def test_prometheus_answers_every_dashboard_and_alert_expression(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    registry_set: registries.Registries,
    cosign_tool: cosign.Cosign,
) -> None:
    registry = registry_set.anonymous
    client = registry.client()
    repository = f"obs/{_uid()}"
    signed = client.push(repository, images.nonroot_image(f"obs-{_uid()}"), tag="signed")
    layered = images.many_layer_image(f"obs-{_uid()}", count=4)
    client.push(repository, layered, tag="layers")
    client.push(repository, layered, tag="excused")
    key = cosign_tool.generate_key_pair(f"obs-{_uid()}")
    cosign_tool.sign(f"{registry.host}/{repository}@{signed.digest}", key)
    unreachable = f"127.0.0.1:{processes.free_port()}"
    names = [f"obs-sig-{_uid()}", f"obs-size-{_uid()}", f"obs-down-{_uid()}"]
    cluster.apply(
        _policy(
            names[0],
            [f"{registry.host}/{repository}:signed"],
            {
                "signatures": {
                    "authorities": [{"name": "release", "key": {"pem": key.public_pem}}]
                },
                # Optional and absent: checked (and counted) on every admission of the image.
                "attestations": [
                    {
                        "name": "scan",
                        "predicateType": "https://cosign.sigstore.dev/attestation/vuln/v1",
                        "required": False,
                        "authorities": [{"name": "release", "key": {"pem": key.public_pem}}],
                    }
                ],
            },
        ),
        _policy(
            names[1],
            [f"{registry.host}/{repository}:layers", f"{registry.host}/{repository}:excused"],
            {"maxLayers": 2},
        ),
        _policy(names[2], [f"{unreachable}/**"], {"maxLayers": 2}),
    )
    try:
        for name in names:
            _wait_policy_ready(cluster, name)
        for pod, image in (
            ("signed", f"{registry.host}/{repository}:signed"),
            ("layers", f"{registry.host}/{repository}:layers"),
            ("down", f"{unreachable}/x/y:1"),
        ):
            cluster.kubectl("apply", "-f", "-", input=_pod(pod, namespace, image), check=False)
        cluster.apply(
            {
                "apiVersion": "imageward.io/v1alpha1",
                "kind": "ImagePolicyException",
                "metadata": {"name": "obs", "namespace": namespace},
                "spec": {
                    "policies": [{"name": names[1]}],
                    "images": [f"{registry.host}/{repository}:excused"],
                    "reason": "the exceptions panel needs one use",
                    "expires": "2099-01-01T00:00:00Z",
                },
            }
        )
        excused = _pod("excused", namespace, f"{registry.host}/{repository}:excused")
        utils.wait_for(
            "the exception to let a pod in",
            lambda: cluster.kubectl("apply", "-f", "-", input=excused, check=False).returncode == 0,
            timeout=30,
        )
        cluster.apply(
            {
                "apiVersion": "imageward.io/v1alpha1",
                "kind": "PrePull",
                "metadata": {"name": "obs", "namespace": namespace},
                "spec": {"images": [f"{registry.host}/{repository}:signed"]},
            }
        )
        utils.wait_for(
            "the PrePull's node gauge",
            lambda: (
                'imageward_prepull_nodes{namespace="' + namespace in imageward_operator.metrics()
            ),
            timeout=40,
        )
        target = imageward_operator.metrics_url.removeprefix("http://").removesuffix("/metrics")
        with prometheus.Prometheus([target], rule_files=[chart.ALERTS]) as server:
            server.wait_for_scrape()
            utils.wait_for(
                "a second scrape, so rate() has two samples",
                lambda: (
                    server.query('count_over_time(up{job="imageward"}[1m])')
                    and float(
                        server.query('count_over_time(up{job="imageward"}[1m])')[0]["value"][1]
                    )
                    >= 3
                ),
                timeout=30,
            )
            empty = []
            for expression in chart.dashboard_expressions():
                if any(name.startswith("imageward_agent_") for name in _metric_names(expression)):
                    continue  # the node agent exports these, not the operator
                if not server.query(expression):
                    empty.append(expression)
            assert not empty, "dashboard expressions without data:\n" + "\n".join(empty)
            for rule in chart.alert_rules():
                server.query(rule["expr"])  # parses (raises PrometheusError otherwise)
                for metric in _metric_names(rule["expr"]):
                    assert server.query(f'{{__name__=~"{metric}.*"}}'), (rule["alert"], metric)
    finally:
        for name in names:
            cluster.kubectl("delete", "imagepolicy", name, "--ignore-not-found", check=False)


def test_standby_replica_serves_current_policies(
    cluster: controlplane.ControlPlane,
    namespace: str,
    imageward_operator: RunningOperator,
    registry_set: registries.Registries,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A second replica (lowest peering priority: Kopf pauses its controllers) still
    answers admission with the policies of now, not of its start-up."""
    env = dict(imageward_operator.process.env or {})
    port = processes.free_port()
    env.update(
        IMAGEWARD_PEERING_PRIORITY="0",
        IMAGEWARD_WEBHOOK_PORT=str(port),
        IMAGEWARD_WEBHOOK_URL=f"https://127.0.0.1:{port}",
        IMAGEWARD_METRICS_PORT=str(processes.free_port()),
        IMAGEWARD_CREATE_WEBHOOK_CONFIGURATIONS="false",
    )
    standby = processes.ManagedProcess(
        "imageward-standby",
        imageward_operator.process.argv,
        log_dir=tmp_path_factory.mktemp("standby"),
        env=env,
    )
    registry = registry_set.anonymous
    repository = f"standby/{_uid()}"
    registry.client().push(repository, images.many_layer_image(f"sb-{_uid()}", count=5), tag="1")
    image = f"{registry.host}/{repository}:1"
    name = f"standby-{_uid()}"
    with standby:
        processes.wait_for_http(
            f"https://127.0.0.1:{port}/",
            timeout=60,
            process=standby,
            ssl_context=helpers.insecure_context(),
        )
        # Created after the standby started: only its own watch can tell it.
        cluster.apply(_policy(name, [f"{registry.host}/standby/**"], {"maxLayers": 2}))
        try:
            _wait_policy_ready(cluster, name)

            def refused_by_standby() -> str | None:
                review = _review(namespace, image)
                answer = _post_review(f"https://127.0.0.1:{port}/imageward-validate", review)
                response = answer["response"]
                return None if response["allowed"] else response["status"]["message"]

            message = utils.wait_for("the standby to refuse", refused_by_standby, timeout=20)
            assert f"ImagePolicy {name}" in message and "over maxLayers 2" in message
            # Its webhook serves from a process of its own, which can answer before the
            # controllers' process has seen the other replica's peering record.
            utils.wait_for(
                "the standby's controllers to be paused by Kopf peering",
                lambda: "pausing" in standby.log_tail(200_000).lower(),
                timeout=30,
            )
        finally:
            cluster.kubectl("delete", "imagepolicy", name, "--ignore-not-found", check=False)


def _review(namespace: str, image: str) -> dict[str, Any]:
    return helpers.pod_review(namespace, json.loads(_pod("standby", namespace, image)))


def _post_review(url: str, review: dict[str, Any]) -> Any:
    return helpers.post_review(url, review)
