from __future__ import annotations

from typing import Any

import pytest

from imageward import errors
from imageward.admission import workloads
from imageward.registry import platforms as registry_platforms

from . import samples

KINDS = list(samples.SPEC_POINTERS)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_reads_its_pod_template(kind: str) -> None:
    view = workloads.parse_pod_view(samples.body_of(kind))
    spec = samples.SPEC_POINTERS[kind]
    assert view.kind == kind
    assert view.name == "web"
    assert view.namespace == "shop"
    assert view.spec_pointer == spec
    assert view.pod_labels == {"app": "web", "tier": "front"}
    assert view.service_account == "web"
    assert view.image_pull_secrets == ("ghcr", "acme")
    assert (view.node_arch, view.node_os) == ("arm64", "linux")
    assert view.containers == (
        workloads.ContainerImage(
            "containers", 0, "web", "ghcr.io/acme/web:1.4", f"{spec}/containers/0/image"
        ),
        workloads.ContainerImage(
            "containers", 1, "sidecar", "envoyproxy/envoy:v1.30", f"{spec}/containers/1/image"
        ),
        workloads.ContainerImage(
            "initContainers",
            0,
            "migrate",
            "ghcr.io/acme/migrate:2",
            f"{spec}/initContainers/0/image",
        ),
    )
    assert view.images == (
        "ghcr.io/acme/web:1.4",
        "envoyproxy/envoy:v1.30",
        "ghcr.io/acme/migrate:2",
    )


def test_kind_argument_wins_over_the_body() -> None:
    body = samples.workload("Deployment")
    del body["kind"]
    view = workloads.parse_pod_view(body, kind="Deployment")
    assert view.spec_pointer == "/spec/template/spec"


def test_workload_labels_are_the_templates_not_the_objects() -> None:
    view = workloads.parse_pod_view(samples.workload("Deployment"))
    assert "owner" not in view.pod_labels


def test_ephemeral_containers_are_read_with_their_pointer() -> None:
    body = samples.pod(
        ephemeralContainers=[
            {"name": "debugger", "image": "busybox:1.36", "targetContainerName": "web"}
        ]
    )
    view = workloads.parse_pod_view(body)
    assert view.containers[-1] == workloads.ContainerImage(
        "ephemeralContainers", 0, "debugger", "busybox:1.36", "/spec/ephemeralContainers/0/image"
    )


def test_same_image_twice_is_looked_up_once() -> None:
    body = samples.pod(
        containers=[
            {"name": "a", "image": "nginx:1.25"},
            {"name": "b", "image": "nginx:1.25"},
        ],
        initContainers=None,
    )
    view = workloads.parse_pod_view(body)
    assert len(view.containers) == 2
    assert view.images == ("nginx:1.25",)


def test_defaults_for_missing_and_null_fields() -> None:
    body: dict[str, Any] = {
        "kind": "Pod",
        "metadata": None,
        "spec": {"containers": [{"image": "nginx"}]},
    }
    view = workloads.parse_pod_view(body, namespace="from-request")
    assert view.name == ""
    assert view.namespace == "from-request"
    assert view.labels == ()
    assert view.service_account == "default"
    assert view.image_pull_secrets == ()
    assert (view.node_arch, view.node_os) == (None, None)
    assert view.containers == (
        workloads.ContainerImage("containers", 0, "", "nginx", "/spec/containers/0/image"),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_no_spec_at_all(kind: str) -> None:
    view = workloads.parse_pod_view({"kind": kind, "metadata": {"name": "x"}})
    assert view.containers == ()
    assert view.service_account == "default"
    assert view.spec_pointer == samples.SPEC_POINTERS[kind]


def test_cronjob_with_null_job_template() -> None:
    view = workloads.parse_pod_view({"kind": "CronJob", "spec": {"jobTemplate": None}})
    assert view.containers == ()


def test_containers_without_image_and_null_entries_are_skipped() -> None:
    body = samples.pod(
        containers=[
            None,
            {"name": "noimage"},
            {"name": "empty", "image": ""},
            {"name": "ok", "image": "a"},
        ],
        initContainers=None,
    )
    view = workloads.parse_pod_view(body)
    assert [(c.name, c.index) for c in view.containers] == [("ok", 3)]


def test_generate_name_stands_in_for_the_name() -> None:
    body = samples.pod()
    body["metadata"] = {"generateName": "web-7d9f-", "namespace": "shop"}
    assert workloads.parse_pod_view(body).name == "web-7d9f-"


def test_body_namespace_wins_over_the_request_namespace() -> None:
    assert workloads.parse_pod_view(samples.pod(), namespace="other").namespace == "shop"


def test_deprecated_service_account_field() -> None:
    body = samples.pod(serviceAccountName=None, serviceAccount="legacy")
    assert workloads.parse_pod_view(body).service_account == "legacy"
    body = samples.pod(serviceAccountName="", serviceAccount=None)
    assert workloads.parse_pod_view(body).service_account == "default"


def test_pull_secrets_skip_empty_names_and_duplicates() -> None:
    body = samples.pod(
        imagePullSecrets=[{"name": "a"}, {}, None, {"name": ""}, {"name": "b"}, {"name": "a"}]
    )
    assert workloads.parse_pod_view(body).image_pull_secrets == ("a", "b")


# ---------------------------------------------------------------------------- platform


def affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": list(term)} for term in terms]
            }
        }
    }


def arch_in(*values: str, key: str = "kubernetes.io/arch") -> dict[str, Any]:
    return {"key": key, "operator": "In", "values": list(values)}


def platform_of(**spec: Any) -> registry_platforms.PlatformChoice:
    body = samples.pod(**{"nodeSelector": None, **spec})
    return workloads.parse_platform(workloads.parse_pod_view(body))


def choice(os: str | None, architecture: str | None) -> registry_platforms.PlatformChoice:
    # An OS the pod does not name stays open: Windows nodes may run it too.
    return registry_platforms.PlatformChoice(os=os, architecture=architecture)


def test_platform_from_node_selector() -> None:
    assert platform_of(nodeSelector={"kubernetes.io/arch": "arm64"}) == choice(None, "arm64")
    assert platform_of(
        nodeSelector={"kubernetes.io/arch": "amd64", "kubernetes.io/os": "windows"}
    ) == choice("windows", "amd64")


def test_platform_from_beta_labels() -> None:
    assert platform_of(nodeSelector={"beta.kubernetes.io/arch": "s390x"}) == choice(None, "s390x")


def test_no_platform_without_an_arch() -> None:
    assert platform_of() == choice(None, None)
    assert platform_of(nodeSelector={"kubernetes.io/os": "linux"}) == choice("linux", None)
    assert platform_of(nodeSelector={"kubernetes.io/arch": ""}) == choice(None, None)
    assert platform_of(os={"name": "windows"}) == choice("windows", None)


def test_platform_from_affinity_pinning_one_arch() -> None:
    assert platform_of(affinity=affinity([arch_in("arm64")])) == choice(None, "arm64")
    # Every term pins the same value: still pinned.
    assert platform_of(
        affinity=affinity(
            [arch_in("arm64")], [arch_in("arm64"), {"key": "zone", "operator": "Exists"}]
        )
    ) == choice(None, "arm64")
    # Two expressions of one term intersect.
    assert platform_of(
        affinity=affinity([arch_in("amd64", "arm64"), arch_in("arm64", "ppc64le")])
    ) == choice(None, "arm64")


@pytest.mark.parametrize(
    "terms",
    [
        [[arch_in("amd64", "arm64")]],  # several values
        [[arch_in("amd64")], [arch_in("arm64")]],  # terms disagree
        [[arch_in("amd64")], [{"key": "zone", "operator": "Exists"}]],  # a term leaves it open
        [[{"key": "kubernetes.io/arch", "operator": "NotIn", "values": ["amd64"]}]],
        [[{"key": "kubernetes.io/arch", "operator": "Exists"}]],
        [[arch_in("amd64"), arch_in("arm64")]],  # contradiction: matches no node
        [],
    ],
)
def test_affinity_that_does_not_pin_one_arch(terms: list[list[dict[str, Any]]]) -> None:
    assert platform_of(affinity=affinity(*terms)).architecture is None


def test_node_selector_wins_over_affinity() -> None:
    assert platform_of(
        nodeSelector={"kubernetes.io/arch": "amd64"}, affinity=affinity([arch_in("arm64")])
    ) == choice(None, "amd64")


def test_os_from_affinity_and_pod_os() -> None:
    os_term = arch_in("windows", key="kubernetes.io/os")
    assert platform_of(
        nodeSelector={"kubernetes.io/arch": "amd64"}, affinity=affinity([os_term])
    ) == choice("windows", "amd64")
    assert platform_of(
        nodeSelector={"kubernetes.io/arch": "amd64"}, os={"name": "windows"}
    ) == choice("windows", "amd64")


# ---------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda b: b["spec"].update(containers={"name": "x"}), "spec.containers"),
        (lambda b: b["spec"].update(containers=["nginx"]), "spec.containers[0]"),
        (lambda b: b["spec"]["containers"][1].update(image=42), "spec.containers[1].image"),
        (lambda b: b["spec"]["containers"][0].update(name=["x"]), "spec.containers[0].name"),
        (lambda b: b["spec"].update(initContainers="x"), "spec.initContainers"),
        (lambda b: b.update(spec=[]), "spec"),
        (lambda b: b.update(metadata="x"), "metadata"),
        (lambda b: b["metadata"].update(name=1), "metadata.name"),
        (lambda b: b["metadata"].update(labels={"a": 1}), "metadata.labels.a"),
        (lambda b: b["metadata"].update(labels=["a"]), "metadata.labels"),
        (
            lambda b: b["spec"].update(nodeSelector={"kubernetes.io/arch": 1}),
            "spec.nodeSelector[kubernetes.io/arch]",
        ),
        (lambda b: b["spec"].update(imagePullSecrets={"name": "x"}), "spec.imagePullSecrets"),
        (
            lambda b: b["spec"].update(imagePullSecrets=[{"name": 3}]),
            "spec.imagePullSecrets[0].name",
        ),
        (lambda b: b["spec"].update(serviceAccountName=True), "spec.serviceAccountName"),
        (
            lambda b: b["spec"].update(
                affinity={
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "x"}
                    }
                }
            ),
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
        ),
        (lambda b: b["spec"].update(os={"name": 5}), "spec.os.name"),
    ],
)
def test_wrong_types_raise_a_typed_error_with_the_path(mutate: Any, path: str) -> None:
    body = samples.pod()
    mutate(body)
    with pytest.raises(errors.MalformedObjectError) as caught:
        workloads.parse_pod_view(body)
    assert caught.value.kind == "Pod"
    assert caught.value.path == path
    assert path in str(caught.value)


def test_workload_paths_name_the_template() -> None:
    body = samples.workload("CronJob")
    body["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = None
    body["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][1]["image"] = 1.5
    with pytest.raises(errors.MalformedObjectError) as caught:
        workloads.parse_pod_view(body)
    assert caught.value.path == "spec.jobTemplate.spec.template.spec.containers[1].image"
    assert "must be a string, not number" in str(caught.value)


@pytest.mark.parametrize("body", [None, [], "Pod", 3, {"kind": 3}, {"kind": ""}, {}])
def test_not_an_object_or_no_kind(body: object) -> None:
    with pytest.raises(errors.MalformedObjectError):
        workloads.parse_pod_view(body)


def test_unsupported_kind() -> None:
    with pytest.raises(errors.MalformedObjectError, match="not read from a Service"):
        workloads.parse_pod_view({"kind": "Service", "spec": {}})


# ---------------------------------------------------------------------------- paths


def test_json_pointer_escaping() -> None:
    assert workloads.build_json_pointer(()) == ""
    assert (
        workloads.build_json_pointer(("spec", "containers", 0, "image"))
        == "/spec/containers/0/image"
    )
    assert (
        workloads.build_json_pointer(("metadata", "labels", "a/b~c")) == "/metadata/labels/a~1b~0c"
    )
    # "~1" in a key must not read back as "/": "~" is escaped first.
    assert workloads.build_json_pointer(("~1",)) == "/~01"
    assert workloads.build_json_pointer(("",)) == "/"


def test_field_path() -> None:
    assert (
        workloads.build_field_path(("spec", "containers", 0, "image")) == "spec.containers[0].image"
    )
    assert workloads.build_field_path(("spec", "nodeSelector", "kubernetes.io/os")) == (
        "spec.nodeSelector[kubernetes.io/os]"
    )


# ---------------------------------------------------------------------------- images_changed


def test_create_has_no_old_object() -> None:
    assert workloads.images_changed(None, samples.pod(), "Pod")
    assert not workloads.images_changed(None, {"kind": "Pod", "spec": {}}, "Pod")


@pytest.mark.parametrize("kind", KINDS)
def test_unchanged_images(kind: str) -> None:
    old = samples.body_of(kind)
    new = samples.body_of(kind)
    new["metadata"]["labels"] = {"changed": "yes"}
    assert not workloads.images_changed(old, new, kind)


def _spec(body: dict[str, Any], kind: str) -> dict[str, Any]:
    spec: Any = body
    for segment in samples.SPEC_POINTERS[kind].strip("/").split("/"):
        spec = spec[segment]
    assert isinstance(spec, dict)
    return spec


@pytest.mark.parametrize("kind", KINDS)
def test_changed_image(kind: str) -> None:
    old = samples.body_of(kind)
    new = samples.clone(old)
    _spec(new, kind)["initContainers"][0]["image"] = "ghcr.io/acme/migrate:3"
    assert workloads.images_changed(old, new, kind)


def test_ephemeral_container_added() -> None:
    old = samples.pod()
    new = samples.pod(ephemeralContainers=[{"name": "debug", "image": "busybox"}])
    assert workloads.images_changed(old, new, "Pod")


def test_container_added_with_an_image_already_used_elsewhere() -> None:
    old = samples.pod()
    new = samples.clone(old)
    new["spec"]["containers"].append({"name": "web2", "image": "ghcr.io/acme/web:1.4"})
    assert workloads.images_changed(old, new, "Pod")


def test_reordering_is_not_a_change() -> None:
    old = samples.workload("Deployment")
    new = samples.clone(old)
    new["spec"]["template"]["spec"]["containers"].reverse()
    assert not workloads.images_changed(old, new, "Deployment")


def test_duplicate_names_cannot_hide_a_change() -> None:
    old = samples.pod(containers=[{"name": "a", "image": "one"}, {"name": "a", "image": "two"}])
    new = samples.pod(containers=[{"name": "a", "image": "evil"}, {"name": "a", "image": "two"}])
    assert workloads.images_changed(old, new, "Pod")


def test_removing_a_container_is_not_a_change() -> None:
    old = samples.workload("Deployment")
    new = samples.clone(old)
    new["spec"]["template"]["spec"]["initContainers"] = []
    assert not workloads.images_changed(old, new, "Deployment")


def test_platform_change_is_a_change() -> None:
    old = samples.workload("Deployment")
    new = samples.clone(old)
    new["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"] = "amd64"
    assert workloads.images_changed(old, new, "Deployment")


def test_malformed_old_object_counts_as_changed() -> None:
    assert workloads.images_changed({"spec": {"containers": 3}}, samples.pod(), "Pod")


def test_malformed_new_object_raises() -> None:
    with pytest.raises(errors.MalformedObjectError):
        workloads.images_changed(samples.pod(), {"spec": {"containers": 3}}, "Pod")
