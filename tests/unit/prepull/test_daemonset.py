from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from imageward.prepull import daemonset, model
from imageward.registry import model as registry_model

HELPER = "ghcr.io/acme/imageward-helper:0.1"
PAUSE = "registry.k8s.io/pause:3.10"
UID = "5f0c7d1e-0000-4000-8000-000000000001"


def digest(char: str) -> registry_model.Digest:
    return registry_model.Digest("sha256:" + char * 64)


WEB = model.ResolvedImage("ghcr.io/acme/web:1.4", digest("a"))
API = model.ResolvedImage("registry.acme.internal:5000/team/api:2.0", digest("b"))
SCRATCH = model.ResolvedImage("scratch-tool", digest("c"))


def parse(**spec: Any) -> model.PrePullSpec:
    return model.parse_prepull(
        {"metadata": {"name": "web-tier", "namespace": "shop"}, "spec": {"images": ["x"], **spec}}
    )


def build(
    spec: model.PrePullSpec,
    images: Sequence[model.ResolvedImage] = (WEB, API, SCRATCH),
    **kwargs: Any,
) -> dict[str, Any]:
    return daemonset.build_daemonset(
        "web-tier",
        "shop",
        UID,
        spec,
        images,
        helper_image=HELPER,
        pause_image=PAUSE,
        **kwargs,
    )


def pod_spec(ds: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


def all_containers(ds: dict[str, Any]) -> list[dict[str, Any]]:
    pod = pod_spec(ds)
    return [*pod.get("initContainers", []), *pod["containers"]]


# -- Images mode, init containers ------------------------------------------------------


def test_one_daemonset_owned_by_the_prepull() -> None:
    ds = build(parse())
    assert (ds["apiVersion"], ds["kind"]) == ("apps/v1", "DaemonSet")
    assert ds["metadata"]["name"] == "prepull-web-tier"
    assert ds["metadata"]["namespace"] == "shop"
    assert ds["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "imageward.io/v1alpha1",
            "kind": "PrePull",
            "name": "web-tier",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    selector = {"imageward.io/prepull": "web-tier"}
    assert ds["spec"]["selector"] == {"matchLabels": selector}
    template_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= template_labels.items()
    assert template_labels["app.kubernetes.io/managed-by"] == "imageward"


def test_caller_labels_are_added_but_cannot_move_the_selector() -> None:
    ds = build(parse(), labels={"team": "shop", "imageward.io/prepull": "other"})
    for labels in (ds["metadata"]["labels"], ds["spec"]["template"]["metadata"]["labels"]):
        assert labels["team"] == "shop"
        assert labels["imageward.io/prepull"] == "web-tier"


def test_rolling_update_paced_by_max_unavailable() -> None:
    assert build(parse())["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0},
    }
    strategy = build(parse(maxUnavailable=2))["spec"]["updateStrategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 2


def test_init_containers_copy_the_helper_then_pull_each_image_by_digest() -> None:
    pod = pod_spec(build(parse()))
    helper, *pulls = pod["initContainers"]
    assert helper["image"] == HELPER
    assert helper["command"] == ["/imageward-helper", "copy", "/iw/imageward-helper"]
    assert helper["volumeMounts"] == [{"name": "helper", "mountPath": "/iw"}]
    # Sorted pinned references, tags dropped.
    assert [c["image"] for c in pulls] == [
        "ghcr.io/acme/web@" + digest("a"),
        "registry.acme.internal:5000/team/api@" + digest("b"),
        "scratch-tool@" + digest("c"),
    ]
    assert [c["name"] for c in pulls] == ["pull-0", "pull-1", "pull-2"]
    for container in pulls:
        assert container["command"] == ["/iw/imageward-helper"]
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert container["volumeMounts"] == [
            {"name": "helper", "mountPath": "/iw", "readOnly": True}
        ]
        assert container["workingDir"] == "/"
    assert [c["name"] for c in pod["containers"]] == ["pause"]
    assert pod["containers"][0]["image"] == PAUSE
    assert pod["volumes"] == [
        {"name": "helper", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}
    ]


def test_every_container_is_locked_down_and_tiny() -> None:
    ds = build(parse())
    for container in all_containers(ds):
        assert container["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }, container["name"]
        assert container["resources"] == {
            "requests": {"cpu": "1m", "memory": "8Mi"},
            "limits": {"memory": "16Mi"},
        }
    pod = pod_spec(ds)
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] == 0
    assert pod["enableServiceLinks"] is False


def test_optional_pod_fields_only_when_set() -> None:
    pod = pod_spec(build(parse()))
    assert "tolerations" not in pod
    assert "imagePullSecrets" not in pod
    assert "priorityClassName" not in pod
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}

    pod = pod_spec(
        build(
            parse(
                tolerations=[
                    {"operator": "Exists"},
                    {"key": "k", "value": "v", "effect": "NoExecute", "tolerationSeconds": 60},
                ],
                imagePullSecrets=[{"name": "regcred"}],
                priorityClassName="prepull-low",
                nodeSelector={"tier": "web", "kubernetes.io/os": "windows"},
            )
        )
    )
    assert pod["tolerations"] == [
        {"operator": "Exists"},
        {
            "operator": "Equal",
            "key": "k",
            "value": "v",
            "effect": "NoExecute",
            "tolerationSeconds": 60,
        },
    ]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "prepull-low"
    # The user's choice of OS is kept (their helper image may support it).
    assert pod["nodeSelector"] == {"tier": "web", "kubernetes.io/os": "windows"}


def test_building_is_deterministic_and_json_serialisable() -> None:
    first = build(parse(), (WEB, API, SCRATCH))
    second = build(parse(), (SCRATCH, WEB, API, WEB))
    assert first == second
    assert json.loads(json.dumps(first)) == first


# -- digest hash -----------------------------------------------------------------------


def template_hash(ds: dict[str, Any]) -> str:
    value: str = ds["spec"]["template"]["metadata"]["annotations"]["imageward.io/digest-hash"]
    return value


def test_hash_changes_exactly_when_a_digest_does() -> None:
    base = daemonset.build_digest_hash([WEB, API])
    assert base == daemonset.build_digest_hash([API, WEB, API])
    assert len(base) == 16
    retagged = model.ResolvedImage("ghcr.io/acme/web:1.4.0", WEB.digest)
    assert daemonset.build_digest_hash([retagged, API]) == base
    moved = model.ResolvedImage(WEB.image, digest("d"))
    assert daemonset.build_digest_hash([moved, API]) != base
    assert daemonset.build_digest_hash([WEB]) != base
    assert daemonset.build_digest_hash([WEB, API], plan_hash="p") != base
    assert template_hash(build(parse(), [WEB, API])) == base


def test_a_retag_to_the_same_digest_builds_the_same_daemonset() -> None:
    retagged = model.ResolvedImage("ghcr.io/acme/web:stable", WEB.digest)
    assert build(parse(), [WEB, API]) == build(parse(), [API, retagged])


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("nginx", "nginx@sha256:"),
        ("nginx:1.27", "nginx@sha256:"),
        ("localhost:5000/web", "localhost:5000/web@sha256:"),
        ("localhost:5000/web:1", "localhost:5000/web@sha256:"),
        ("ghcr.io/a/b:1@sha256:" + "9" * 64, "ghcr.io/a/b@sha256:"),
    ],
)
def test_pinned_reference(image: str, pinned: str) -> None:
    assert daemonset.build_pinned_reference(image, digest("e")) == pinned + "e" * 64


# -- Images mode, image volumes --------------------------------------------------------


def test_image_volumes_mounted_into_pause_without_helper() -> None:
    pod = pod_spec(build(parse(pullMethod="ImageVolume"), [WEB, API]))
    assert "initContainers" not in pod
    assert pod["volumes"] == [
        {
            "name": "image-0",
            "image": {"reference": "ghcr.io/acme/web@" + digest("a"), "pullPolicy": "IfNotPresent"},
        },
        {
            "name": "image-1",
            "image": {
                "reference": "registry.acme.internal:5000/team/api@" + digest("b"),
                "pullPolicy": "IfNotPresent",
            },
        },
    ]
    (pause,) = pod["containers"]
    assert pause["image"] == PAUSE
    assert pause["volumeMounts"] == [
        {"name": "image-0", "mountPath": "/images/0", "readOnly": True},
        {"name": "image-1", "mountPath": "/images/1", "readOnly": True},
    ]
    assert pause["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


def test_missing_image_volumes_are_detected_on_the_stored_object() -> None:
    sent = build(parse(pullMethod="ImageVolume"), [WEB, API])
    assert daemonset.evaluate_missing_image_volumes(sent, [WEB, API]) == []
    # What an API server without the ImageVolume feature stores.
    stored = json.loads(json.dumps(sent))
    del stored["spec"]["template"]["spec"]["volumes"]
    assert daemonset.evaluate_missing_image_volumes(stored, [WEB, API]) == [
        "ghcr.io/acme/web@" + digest("a"),
        "registry.acme.internal:5000/team/api@" + digest("b"),
    ]


# -- Layers mode -----------------------------------------------------------------------


def test_layers_mode_has_no_daemonset_in_the_prepulls_namespace() -> None:
    # The node agent is root with containerd's socket: it runs once, in the operator's
    # namespace, never on behalf of whoever may create a PrePull (see test_plans).
    with pytest.raises(ValueError, match="Layers mode has no DaemonSet"):
        build(parse(mode="Layers"))


def test_images_mode_pods_meet_the_restricted_pod_security_standard() -> None:
    for method in ("InitContainer", "ImageVolume"):
        pod = pod_spec(build(parse(pullMethod=method, imagePullSecrets=[{"name": "regcred"}])))
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
        assert all("hostPath" not in volume for volume in pod.get("volumes") or [])
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0
            assert "ports" not in container or all(
                "hostPort" not in port for port in container["ports"]
            )


# -- names -----------------------------------------------------------------------------


def test_long_and_dotted_names_stay_valid_and_distinct() -> None:
    long_name = "a" * 200
    name = daemonset.build_resource_name(long_name)
    assert len(name) <= 63
    assert name.startswith("prepull-aaa")
    dotted = daemonset.build_resource_name("web.tier")
    assert dotted != daemonset.build_resource_name("web-tier")
    assert "." not in dotted
    value = daemonset.build_selector_value(long_name)
    assert len(value) <= 63
    assert value != daemonset.build_selector_value("a" * 199)
    assert daemonset.build_selector_value("web.tier") == "web.tier"
