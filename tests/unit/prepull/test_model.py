from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
import yaml

from imageward.policy import selectors
from imageward.prepull import model

# The product specification's example, as a user would write it.
PRODUCT_EXAMPLE = """
apiVersion: imageward.io/v1alpha1
kind: PrePull
metadata: {name: web-tier, namespace: shop}
spec:
  images: ["ghcr.io/acme/web:1.4", {image: "ghcr.io/acme/api:2.0", weight: 3}]
  fromWorkloads:
    kinds: [Deployment, StatefulSet, DaemonSet, CronJob]
    namespaceSelector: {}
    labelSelector: {}
  mode: Images
  pullMethod: InitContainer
  layers:
    minShare: 1
    budgetPerNode: 20Gi
  nodeSelector: {}
  tolerations: []
  imagePullSecrets: []
  maxUnavailable: 10%
  refreshInterval: 1h
  priorityClassName: ""
"""


def example() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PRODUCT_EXAMPLE)
    return loaded


def with_spec(**fields: Any) -> dict[str, Any]:
    obj = {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "PrePull",
        "metadata": {"name": "pp", "namespace": "ns"},
        "spec": {"images": ["nginx:1.27"], **fields},
    }
    return obj


def parse_error(obj: dict[str, Any]) -> model.PrePullError:
    with pytest.raises(model.PrePullError) as excinfo:
        model.parse_prepull(obj)
    return excinfo.value


def test_product_example_parses() -> None:
    spec = model.parse_prepull(example())
    assert spec.images == (
        model.ImageEntry("ghcr.io/acme/web:1.4", 1),
        model.ImageEntry("ghcr.io/acme/api:2.0", 3),
    )
    assert spec.from_workloads == model.FromWorkloads(
        kinds=tuple(model.WorkloadKind),
        namespace_selector=selectors.EMPTY,
        label_selector=selectors.EMPTY,
    )
    assert spec.mode is model.Mode.IMAGES
    assert spec.pull_method is model.PullMethod.INIT_CONTAINER
    assert spec.layers.min_share == 1
    assert spec.layers.budget_per_node is not None
    assert spec.layers.budget_per_node.bytes == 20 * 2**30
    assert spec.max_unavailable == "10%"
    assert spec.refresh_interval == datetime.timedelta(hours=1)
    assert spec.priority_class_name is None
    assert spec.node_selector == ()
    assert spec.tolerations == ()
    assert spec.image_pull_secrets == ()


def test_defaults_when_fields_are_left_out() -> None:
    spec = model.parse_prepull({"metadata": {"name": "x"}, "spec": {"images": ["nginx"]}})
    assert spec == model.PrePullSpec(images=(model.ImageEntry("nginx"),))
    assert spec.from_workloads is None
    assert spec.max_unavailable == "10%"
    assert spec.refresh_interval == datetime.timedelta(hours=1)


def test_left_out_namespace_selector_means_own_namespace_and_empty_means_all() -> None:
    own = model.parse_prepull(with_spec(fromWorkloads={}))
    assert own.from_workloads is not None
    assert own.from_workloads.namespace_selector is None
    assert own.from_workloads.kinds == model.DEFAULT_WORKLOAD_KINDS
    every = model.parse_prepull(with_spec(fromWorkloads={"namespaceSelector": {}}))
    assert every.from_workloads is not None
    assert every.from_workloads.namespace_selector == selectors.EMPTY


def test_fields_of_every_kind() -> None:
    spec = model.parse_prepull(
        with_spec(
            mode="Layers",
            pullMethod="ImageVolume",
            layers={"minShare": 2, "budgetPerNode": 1000},
            nodeSelector={"tier": "web", "a.example.com/zone": "z1"},
            tolerations=[
                {"operator": "Exists"},
                {"key": "gpu", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 30},
            ],
            imagePullSecrets=[{"name": "regcred"}, {"name": "other"}],
            maxUnavailable=3,
            refreshInterval="1h30m",
            priorityClassName="high",
            fromWorkloads={
                "kinds": ["CronJob", "CronJob"],
                "labelSelector": {"matchLabels": {"a": "b"}},
            },
        )
    )
    assert spec.mode is model.Mode.LAYERS
    assert spec.pull_method is model.PullMethod.IMAGE_VOLUME
    assert spec.layers.min_share == 2
    assert spec.layers.budget_per_node is not None
    assert spec.layers.budget_per_node.bytes == 1000
    # Sorted, so equal specs build equal DaemonSets.
    assert spec.node_selector == (("a.example.com/zone", "z1"), ("tier", "web"))
    assert spec.tolerations == (
        model.Toleration(operator="Exists"),
        model.Toleration(key="gpu", value="yes", effect="NoExecute", toleration_seconds=30),
    )
    assert spec.image_pull_secrets == ("regcred", "other")
    assert spec.max_unavailable == 3
    assert spec.refresh_interval == datetime.timedelta(minutes=90)
    assert spec.priority_class_name == "high"
    assert spec.from_workloads is not None
    assert spec.from_workloads.kinds == (model.WorkloadKind.CRON_JOB,)
    assert not spec.from_workloads.label_selector.is_empty


def test_budget_zero_is_allowed() -> None:
    spec = model.parse_prepull(with_spec(layers={"budgetPerNode": 0}))
    assert spec.layers.budget_per_node is not None
    assert spec.layers.budget_per_node.bytes == 0


def test_fields_are_frozen() -> None:
    spec = model.parse_prepull(example())
    with pytest.raises(AttributeError):
        spec.mode = model.Mode.LAYERS  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"images": [{"image": "a", "wieght": 2}]}, "spec.images[0].wieght", "unknown field"),
        ({"images": [{"weight": 2}]}, "spec.images[0].image", "required"),
        ({"images": [{"image": "a", "weight": 0}]}, "spec.images[0].weight", "between 1"),
        ({"images": [{"image": "a", "weight": 1.5}]}, "spec.images[0].weight", "integer"),
        ({"images": [{"image": "a", "weight": True}]}, "spec.images[0].weight", "integer"),
        ({"images": [7]}, "spec.images[0]", "image reference or an object"),
        ({"images": [None]}, "spec.images[0]", "image reference or an object"),
        ({"images": ["nginx", "nginx"]}, "spec.images[1]", "already listed at index 0"),
        ({"images": ["ghcr.io/Acme/web:1"]}, "spec.images[0]", "lowercase"),
        ({"images": ["Nginx"]}, "spec.images[0]", "lowercase"),
        ({"images": ["nginx :1"]}, "spec.images[0]", "white space"),
        ({"images": ["nginx@sha256:abc"]}, "spec.images[0]", "not a valid image reference"),
        ({"images": ["nginx@sha256:" + "A" * 64]}, "spec.images[0]", "64 lowercase hex"),
        ({"images": "nginx"}, "spec.images", "must be a list"),
        ({"images": []}, "spec.images", "at least one image, or set fromWorkloads"),
        ({"images": None}, "spec.images", "at least one image"),
        ({"mode": "Whole"}, "spec.mode", "'Whole' is not one of Images, Layers"),
        ({"pullMethod": "Job"}, "spec.pullMethod", "InitContainer, ImageVolume"),
        ({"layers": {"minShare": 0}}, "spec.layers.minShare", "between 1"),
        ({"layers": {"budgetPerNode": "500m"}}, "spec.layers.budgetPerNode", "whole number"),
        ({"layers": {"budgetPerNode": "20GB"}}, "spec.layers.budgetPerNode", "500Mi"),
        ({"layers": {"budgetPerNode": -1}}, "spec.layers.budgetPerNode", "negative"),
        ({"layers": {"budget": 1}}, "spec.layers.budget", "unknown field"),
        ({"nodeSelector": {"tier": 1}}, "spec.nodeSelector.matchLabels[tier]", "quote it"),
        ({"nodeSelector": {"bad key!": "x"}}, "spec.nodeSelector.matchLabels[bad key!]", "name"),
        ({"tolerations": [{"value": "x"}]}, "spec.tolerations[0].key", "needs operator Exists"),
        ({"tolerations": [{"operator": "Exists", "value": "x"}]}, "spec.tolerations[0].value", ""),
        ({"tolerations": [{"key": "k", "operator": "In"}]}, "spec.tolerations[0].operator", ""),
        ({"tolerations": [{"key": "k", "effect": "Never"}]}, "spec.tolerations[0].effect", ""),
        (
            {"tolerations": [{"key": "k", "tolerationSeconds": 5}]},
            "spec.tolerations[0].tolerationSeconds",
            "NoExecute",
        ),
        ({"imagePullSecrets": ["regcred"]}, "spec.imagePullSecrets[0]", "object with name"),
        ({"imagePullSecrets": [{"name": "Bad_Name"}]}, "spec.imagePullSecrets[0].name", "Secret"),
        (
            {"imagePullSecrets": [{"name": "a"}, {"name": "a"}]},
            "spec.imagePullSecrets[1].name",
            "twice",
        ),
        ({"maxUnavailable": 0}, "spec.maxUnavailable", "between 1"),
        ({"maxUnavailable": "0%"}, "spec.maxUnavailable", "1% to 100%"),
        ({"maxUnavailable": "101%"}, "spec.maxUnavailable", "1% to 100%"),
        ({"maxUnavailable": "ten"}, "spec.maxUnavailable", "percentage"),
        ({"refreshInterval": "1d"}, "spec.refreshInterval", "write 24h"),
        ({"refreshInterval": "5s"}, "spec.refreshInterval", "shorter than 10s"),
        ({"refreshInterval": 3600}, "spec.refreshInterval", "must be a string"),
        ({"priorityClassName": "High"}, "spec.priorityClassName", "PriorityClass"),
        ({"fromWorkloads": {"kinds": ["Job"]}}, "spec.fromWorkloads.kinds[0]", "'Job'"),
        ({"fromWorkloads": {"kinds": []}}, "spec.fromWorkloads.kinds", "non-empty"),
        ({"fromWorkloads": {"selector": {}}}, "spec.fromWorkloads.selector", "unknown field"),
        (
            {
                "fromWorkloads": {
                    "labelSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}
                }
            },
            "spec.fromWorkloads.labelSelector.matchExpressions[0].values",
            "non-empty",
        ),
        ({"imagesTypo": []}, "spec.imagesTypo", "unknown field"),
    ],
)
def test_errors_name_the_field(spec: dict[str, Any], field: str, words: str) -> None:
    error = parse_error(with_spec(**spec))
    assert error.field == field
    assert error.name == "ns/pp"
    assert str(error).startswith(f"PrePull ns/pp: {field}: ")
    assert words in error.reason


def test_header_errors() -> None:
    assert parse_error({"kind": "ImagePolicy", "metadata": {"name": "x"}}).field == "kind"
    assert parse_error({"apiVersion": "v1", "spec": {}}).field == "apiVersion"
    error = parse_error({"metadata": {"name": "x"}})
    assert (error.field, error.name) == ("spec", "x")
    with pytest.raises(model.PrePullError, match="not an object"):
        model.parse_prepull([])  # type: ignore[arg-type]


def test_valid_references_pass() -> None:
    images = [
        "nginx",
        "nginx:1.27",
        "docker.io/library/nginx:latest",
        "localhost:5000/team/web",
        "127.0.0.1:5000/a/b/c:v1.2-rc_3",
        "ghcr.io/acme/web:1.4@sha256:" + "a" * 64,
        "ghcr.io/acme/web@sha256:" + "0" * 64,
        "registry.example.com/a__b/c-d.e",
    ]
    spec = model.parse_prepull(with_spec(images=images))
    assert [entry.image for entry in spec.images] == images


def test_parsing_does_not_modify_the_input() -> None:
    obj = example()
    before = copy.deepcopy(obj)
    model.parse_prepull(obj)
    assert obj == before


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400), ("500ms", 0.5), ("2m3s", 123)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert model.parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "1h 30m", "-1h", "1d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        model.parse_duration(text)
