"""ImagePolicy admission end to end: the operator runs as `imageward run`, the real
apiserver calls its webhooks, images live in real registries and are signed by real
cosign. Every assertion is about what a user sees: kubectl's answer, the created object,
an Event, the policy's status."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

from imageward.localcluster import controlplane, cosign, images, processes, registries
from tests import utils
from tests.cluster import helpers
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster


# -- size, layers, root user ------------------------------------------------------------


def test_pod_over_size_limit_is_refused_with_the_measured_value(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    big, digest = helpers.push(
        anonymous, images.large_image(f"big-{helpers.uid()}", size=3 * 1024 * 1024)
    )
    small, _ = helpers.push(anonymous, images.nonroot_image(f"small-{helpers.uid()}"))
    name = policies.apply([f"{anonymous.host}/adm/**"], {"maxCompressedSize": "1Mi"})

    refused = helpers.create(cluster, namespace, helpers.pod("big", big))
    assert refused.returncode != 0
    assert f"ImagePolicy {name}: {big} (sha256:{digest[7:19]}…)" in refused.stderr
    assert "compressed, over maxCompressedSize 1Mi" in refused.stderr
    assert 'admission webhook "validate.imageward.io" denied the request' in refused.stderr

    allowed = helpers.create(cluster, namespace, helpers.pod("small", small))
    assert allowed.returncode == 0, allowed.stderr


def test_deployment_is_refused_at_apply_time(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    root, _ = helpers.push(anonymous, images.root_image(f"root-{helpers.uid()}"))
    policies.apply([f"{anonymous.host}/adm/**"], {"forbidRootUser": True})
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "initContainers": [{"name": "init", "image": root}],
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }
    refused = helpers.create(cluster, namespace, deployment)
    assert refused.returncode != 0
    assert "runs as root" in refused.stderr and "forbidRootUser" in refused.stderr
    assert cluster.kubectl("get", "deployment", "web", "-n", namespace, check=False).returncode != 0


def test_warn_mode_warns_and_audit_mode_leaves_an_event(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    many, _ = helpers.push(anonymous, images.many_layer_image(f"many-{helpers.uid()}", count=12))
    policies.apply([f"{anonymous.host}/adm/**"], {"maxLayers": 5}, mode="Warn")
    warned = helpers.create(cluster, namespace, helpers.pod("warned", many))
    assert warned.returncode == 0, warned.stderr
    assert "Warning:" in warned.stderr and "has 12 layers, over maxLayers 5" in warned.stderr

    audit = policies.apply([f"{anonymous.host}/adm/**"], {"maxLayers": 3}, mode="Audit")
    audited = helpers.create(cluster, namespace, helpers.pod("audited", many))
    assert audited.returncode == 0, audited.stderr

    def audit_event() -> list[dict[str, Any]]:
        events = cluster.get_json("events", "-n", namespace)["items"]
        return [
            e
            for e in events
            if e["reason"] == "ImagePolicyAudit"
            and e["involvedObject"]["name"] == "audited"
            and f"ImagePolicy {audit}" in e["message"]
        ]

    event = utils.wait_for("an ImagePolicyAudit Event on the pod", audit_event, timeout=20)[0]
    assert "has 12 layers, over maxLayers 3" in event["message"]


def test_dry_run_is_answered_without_side_effects(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    many, _ = helpers.push(anonymous, images.many_layer_image(f"dry-{helpers.uid()}", count=6))
    policies.apply([f"{anonymous.host}/adm/**"], {"maxLayers": 2}, mode="Audit")
    result = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(helpers.pod("dry", many)),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    refused = policies.apply([f"{anonymous.host}/adm/**"], {"maxLayers": 2})
    denied = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(helpers.pod("dry", many)),
        check=False,
    )
    assert f"ImagePolicy {refused}" in denied.stderr
    events = cluster.get_json("events", "-n", namespace)["items"]
    assert not [e for e in events if e["reason"].startswith("ImagePolicy")]


# -- multi-arch -------------------------------------------------------------------------


def test_multiarch_platform_from_node_selector(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    amd = images.small_image(f"amd-{helpers.uid()}", platform=images.LINUX_AMD64, user="65532")
    arm = images.small_image(f"arm-{helpers.uid()}", platform=images.LINUX_ARM64, user="root")
    index = images.build_index([amd, arm], attestations=True)
    repository = f"adm/{helpers.uid()}"
    client = anonymous.client()
    for child in (amd, arm):
        client.push(repository, child)
    client.push(repository, index, tag="1.0")
    image = f"{anonymous.host}/{repository}:1.0"
    policies.apply([f"{anonymous.host}/adm/**"], {"forbidRootUser": True})

    on_amd = helpers.create(
        cluster, namespace, helpers.pod("amd", image, nodeSelector={"kubernetes.io/arch": "amd64"})
    )
    assert on_amd.returncode == 0, on_amd.stderr
    on_arm = helpers.create(
        cluster, namespace, helpers.pod("arm", image, nodeSelector={"kubernetes.io/arch": "arm64"})
    )
    assert on_arm.returncode != 0 and "linux/arm64" in on_arm.stderr
    anywhere = helpers.create(cluster, namespace, helpers.pod("anywhere", image))
    assert anywhere.returncode != 0 and "runs as root" in anywhere.stderr


# -- signatures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def release_key(cosign_tool: cosign.Cosign) -> cosign.KeyPair:
    return cosign_tool.generate_key_pair(f"release-{helpers.uid()}")


@pytest.fixture(scope="module")
def other_key(cosign_tool: cosign.Cosign) -> cosign.KeyPair:
    return cosign_tool.generate_key_pair(f"other-{helpers.uid()}")


def _signed_policy(
    policies: helpers.Policies, registry: registries.Registry, key: cosign.KeyPair
) -> str:
    return policies.apply(
        [f"{registry.host}/adm/**"],
        {"signatures": {"authorities": [{"name": "release", "key": {"pem": key.public_pem}}]}},
    )


@pytest.mark.parametrize("legacy", [False, True], ids=["bundle", "legacy"])
def test_signed_images_are_admitted_unsigned_and_wrong_key_refused(
    legacy: bool,
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
    other_key: cosign.KeyPair,
) -> None:
    signed, signed_digest = helpers.push(anonymous, images.nonroot_image(f"signed-{helpers.uid()}"))
    cosign_tool.sign(f"{signed.rsplit(':', 1)[0]}@{signed_digest}", release_key, legacy=legacy)
    unsigned, _ = helpers.push(anonymous, images.nonroot_image(f"unsigned-{helpers.uid()}"))
    foreign, foreign_digest = helpers.push(
        anonymous, images.nonroot_image(f"foreign-{helpers.uid()}")
    )
    cosign_tool.sign(f"{foreign.rsplit(':', 1)[0]}@{foreign_digest}", other_key, legacy=legacy)
    name = _signed_policy(policies, anonymous, release_key)

    ok = helpers.create(cluster, namespace, helpers.pod("signed", signed))
    assert ok.returncode == 0, ok.stderr
    missing = helpers.create(cluster, namespace, helpers.pod("unsigned", unsigned))
    assert (
        f"ImagePolicy {name}" in missing.stderr and "release: no signature found" in missing.stderr
    )
    wrong = helpers.create(cluster, namespace, helpers.pod("foreign", foreign))
    assert wrong.returncode != 0
    assert "does not verify with key release" in wrong.stderr


def test_signature_copied_from_another_image_is_refused(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    cosign_tool: cosign.Cosign,
    release_key: cosign.KeyPair,
) -> None:
    client = anonymous.client()
    repository = f"adm/{helpers.uid()}"
    good = client.push(repository, images.nonroot_image(f"good-{helpers.uid()}"), tag="good")
    evil = client.push(repository, images.nonroot_image(f"evil-{helpers.uid()}"), tag="evil")
    cosign_tool.sign(f"{anonymous.host}/{repository}@{good.digest}", release_key, legacy=True)
    # The attacker copies the valid signature manifest to the tag cosign looks up for evil.
    good_sig = client.get_manifest(repository, f"sha256-{good.digest[7:]}.sig")
    client.push_manifest(
        repository, f"sha256-{evil.digest[7:]}.sig", good_sig.body, good_sig.media_type
    )
    _signed_policy(policies, anonymous, release_key)
    refused = helpers.create(
        cluster, namespace, helpers.pod("evil", f"{anonymous.host}/{repository}:evil")
    )
    assert refused.returncode != 0
    assert "names another digest" in refused.stderr


# -- lookups and failure policy -----------------------------------------------------------


def test_unreachable_registry_fail_refuses_and_ignore_warns(
    cluster: controlplane.ControlPlane, namespace: str, policies: helpers.Policies
) -> None:
    unreachable = f"127.0.0.1:{_closed_port()}"
    image = f"{unreachable}/team/app:1.0"
    fail = policies.apply([f"{unreachable}/**"], {"maxLayers": 10}, failurePolicy="Fail")
    refused = helpers.create(cluster, namespace, helpers.pod("down", image))
    assert refused.returncode != 0
    assert f"ImagePolicy {fail}: {image}" in refused.stderr and "lookup failed" in refused.stderr
    cluster.kubectl("delete", "imagepolicy", fail)
    policies.apply([f"{unreachable}/**"], {"maxLayers": 10}, failurePolicy="Ignore")
    admitted = helpers.create(cluster, namespace, helpers.pod("down", image))
    assert admitted.returncode == 0, admitted.stderr
    assert "Warning: allowed by failurePolicy Ignore: ImagePolicy" in admitted.stderr


def _closed_port() -> int:
    return processes.free_port()  # nothing listens there


def test_pull_secret_of_the_pod_is_used(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    registry_set: registries.Registries,
) -> None:
    private = registry_set.htpasswd
    image, _ = helpers.push(private, images.nonroot_image(f"private-{helpers.uid()}"))
    policies.apply([f"{private.host}/adm/**"], {"maxLayers": 10})
    without = helpers.create(cluster, namespace, helpers.pod("nosecret", image))
    assert without.returncode != 0 and "unauthorized" in without.stderr.lower()
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "pull", "namespace": namespace},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {
                ".dockerconfigjson": base64.b64encode(
                    json.dumps(private.docker_config()).encode()
                ).decode()
            },
        }
    )
    with_secret = helpers.create(
        cluster, namespace, helpers.pod("secret", image, imagePullSecrets=[{"name": "pull"}])
    )
    assert with_secret.returncode == 0, with_secret.stderr


# -- digest pinning, invalid policies, policy changes ---------------------------------------


def test_pin_digest_is_visible_on_the_created_pod(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    image, digest = helpers.push(anonymous, images.nonroot_image(f"pin-{helpers.uid()}"))
    policies.apply([f"{anonymous.host}/adm/**"], {"maxLayers": 10}, pinDigest=True)
    created = helpers.create(cluster, namespace, helpers.pod("pinned", image))
    assert created.returncode == 0, created.stderr
    pod = cluster.get_json("pod", "pinned", "-n", namespace)
    assert pod["spec"]["containers"][0]["image"] == f"{image}@{digest}"


def test_a_pod_that_reaches_validation_without_the_pin_it_needs_is_refused(
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
    imageward_operator: RunningOperator,
) -> None:
    # What the validating webhook gets when the mutating one, a moment before, saw
    # another verdict (a signature not yet pushed) and so pinned nothing: admitted by
    # tag, the pod would run whatever the tag names when kubelet pulls it.
    image, digest = helpers.push(anonymous, images.nonroot_image(f"unpin-{helpers.uid()}"))
    name = policies.apply([f"{anonymous.host}/adm/**"], {"maxLayers": 10}, pinDigest=True)
    validate = f"{imageward_operator.webhook_url}/imageward-validate"

    def answer(reference: str) -> dict[str, Any]:
        pod = helpers.pod("unpinned", reference)
        pod["metadata"]["namespace"] = namespace
        response: dict[str, Any] = helpers.post_review(validate, helpers.pod_review(namespace, pod))
        return response["response"]

    def refusal() -> str | None:  # the webhook's process follows policies on its own watch
        got = answer(image)
        return None if got["allowed"] else str(got["status"]["message"])

    message = utils.wait_for(f"ImagePolicy {name} to ask for the pin", refusal, timeout=20)
    assert "not pinned by the mutating webhook" in message, message
    assert f"{image} (to {digest})" in message, message
    assert answer(f"{image}@{digest}")["allowed"]


def test_invalid_policy_is_not_ready_and_fails_closed(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    image, _ = helpers.push(anonymous, images.nonroot_image(f"closed-{helpers.uid()}"))
    name = policies.apply(
        [f"{anonymous.host}/adm/**"],
        {"signatures": {"authorities": [{"name": "broken", "key": {"pem": "not a key"}}]}},
        ready="False",
    )
    condition = policies.wait_ready(name, "False")
    assert condition["reason"] == "InvalidPolicy"
    refused = helpers.create(cluster, namespace, helpers.pod("closed", image))
    assert refused.returncode != 0
    assert f"ImagePolicy {name}" in refused.stderr and "not usable" in refused.stderr


def test_policy_changes_take_effect_without_restart(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    image, _ = helpers.push(anonymous, images.many_layer_image(f"chg-{helpers.uid()}", count=4))
    name = policies.apply([f"{anonymous.host}/adm/**"], {"maxLayers": 2})
    assert helpers.create(cluster, namespace, helpers.pod("first", image)).returncode != 0
    cluster.kubectl(
        "patch", "imagepolicy", name, "--type=merge", "-p", '{"spec":{"rules":{"maxLayers":10}}}'
    )

    def admitted() -> bool:
        return bool(helpers.create(cluster, namespace, helpers.pod("first", image)).returncode == 0)

    utils.wait_for("the raised limit to admit the pod", admitted, timeout=20)


def test_relabelling_a_pod_into_a_policys_pod_selector_is_checked(
    cluster: controlplane.ControlPlane,
    namespace: str,
    policies: helpers.Policies,
    anonymous: registries.Registry,
) -> None:
    # Without this, a pod created outside the payments policy (tier: web) with an image
    # it refuses became tier: payments by `kubectl label`, and took that Service's traffic.
    image, _ = helpers.push(anonymous, images.many_layer_image(f"lbl-{helpers.uid()}", count=5))
    name = policies.apply(
        [f"{anonymous.host}/adm/**"],
        {"maxLayers": 2},
        pod_selector={"matchLabels": {"tier": "payments"}},
    )
    web = helpers.pod("relabel", image)
    web["metadata"]["labels"] = {"tier": "web"}
    payments = helpers.pod("relabel", image)
    payments["metadata"]["labels"] = {"tier": "payments"}

    def policy_seen() -> bool:  # the webhook's process follows policies on its own watch
        return helpers.create(cluster, namespace, payments, dry_run=True).returncode != 0

    utils.wait_for(f"ImagePolicy {name} to refuse tier: payments", policy_seen, timeout=20)
    created = helpers.create(cluster, namespace, web)
    assert created.returncode == 0, created.stderr
    into = cluster.kubectl(
        "label", "pod", "relabel", "-n", namespace, "tier=payments", "--overwrite", check=False
    )
    assert into.returncode != 0
    assert f"ImagePolicy {name}" in into.stderr and "over maxLayers 2" in into.stderr, into.stderr
    pod = cluster.get_json("pod", "relabel", "-n", namespace)
    assert pod["metadata"]["labels"]["tier"] == "web"
    # A label no policy selects on is no reason to check what already runs.
    other = cluster.kubectl("label", "pod", "relabel", "-n", namespace, "team=a", check=False)
    assert other.returncode == 0, other.stderr


# -- the webhook server itself ------------------------------------------------------------


def test_malformed_admission_reviews_get_4xx_and_the_server_keeps_serving(
    cluster: controlplane.ControlPlane, namespace: str, imageward_operator: RunningOperator
) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    bodies: list[bytes] = [
        b"",
        b"not json",
        b"[]",
        b'{"request": null}',
        b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
        b'{"request": {"uid": "x", "object": {"kind": "Pod", "spec": {"containers": 5}}}}',
        json.dumps({"request": {"uid": 1, "userInfo": {}, "object": []}}).encode(),
        b"\xff\xfe\x00garbage",
    ]
    for body in bodies:
        request = urllib.request.Request(
            f"{imageward_operator.webhook_url}/imageward-validate",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                status = response.status
                payload = response.read()
        except urllib.error.HTTPError as e:
            status = e.code
            payload = e.read()
            e.close()
        if status == 200:
            # Kopf may answer a well-formed review with a refusal instead of an HTTP error.
            review = json.loads(payload)
            assert review["response"]["allowed"] is False, (body, review)
        else:
            assert 400 <= status < 500, (body, status, payload[:200])
    assert imageward_operator.process.alive
    still = helpers.create(
        cluster, namespace, helpers.pod("after-fuzz", "registry.k8s.io/pause:3.10")
    )
    assert still.returncode == 0, still.stderr


def test_metrics_count_admissions(imageward_operator: RunningOperator) -> None:
    text = imageward_operator.metrics()
    assert (
        'imageward_admission_requests_total{decision="deny",operation="CREATE",resource="pods"}'
        in text
    )
    assert "imageward_policy_evaluations_total" in text
