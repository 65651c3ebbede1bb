"""fromWorkloads: cross-namespace selection is a cluster admin's grant, never a tenant's;
workloads are read from a watch-fed cache of projections."""

from __future__ import annotations

from typing import Any

from imageward.policy import selectors
from imageward.prepull import model, reflector, workloads

LABELS = {
    "shop": {"team": "shop"},
    "bank": {"team": "bank", "pci": "true"},
    "imageward-system": {},
    "platform-tools": {},
}


def source(selector: dict[str, Any] | None) -> model.FromWorkloads:
    spec: dict[str, Any] = {"images": ["x"], "fromWorkloads": {"kinds": ["Deployment"]}}
    if selector is not None:
        spec["fromWorkloads"]["namespaceSelector"] = selector
    parsed = model.parse_prepull({"metadata": {"name": "p"}, "spec": spec}).from_workloads
    assert parsed is not None
    return parsed


def scope(namespace: str, selector: dict[str, Any] | None) -> workloads.NamespaceScope:
    return workloads.evaluate_namespace_scope(
        namespace,
        source(selector),
        operator_namespace="imageward-system",
        allowed=("platform-tools",),
        namespace_labels=LABELS,
    )


def test_a_tenant_cannot_read_other_namespaces_workloads() -> None:
    # {} selects every namespace: from a tenant's PrePull it reads that tenant's only.
    for selector in ({}, {"matchLabels": {"pci": "true"}}):
        found = scope("shop", selector)
        assert found.namespaces == ("shop",)
        assert found.note is not None
        assert "namespaceSelector is ignored" in found.note
        assert "imageward-system, platform-tools" in found.note
        assert "IMAGEWARD_PREPULL_CROSS_NAMESPACE" in found.note
        assert "reads shop only" in found.note


def test_the_operators_namespace_and_admin_listed_ones_may() -> None:
    assert scope("imageward-system", {"matchLabels": {"pci": "true"}}) == (
        workloads.NamespaceScope(("bank",))
    )
    assert scope("platform-tools", {}).namespaces == tuple(sorted(LABELS))
    assert scope("platform-tools", {}).note is None


def test_without_a_selector_a_prepull_reads_its_own_namespace() -> None:
    assert scope("shop", None) == workloads.NamespaceScope(("shop",))


def deployment(name: str, namespace: str, replicas: Any = 2, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "template": {
                "spec": {
                    "initContainers": [{"name": "i", "image": "init:1"}],
                    "containers": [
                        {"name": "a", "image": "app:1"},
                        {"name": "b", "image": "app:1"},
                    ],
                }
            },
        },
    }


def test_the_cache_keeps_only_what_fromworkloads_reads() -> None:
    view = workloads.project_workload(
        model.WorkloadKind.DEPLOYMENT, {**deployment("web", "shop", tier="web"), "status": {"x": 1}}
    )
    assert view == workloads.WorkloadView(
        kind=model.WorkloadKind.DEPLOYMENT,
        namespace="shop",
        name="web",
        labels={"tier": "web"},
        images=("init:1", "app:1"),
        replicas=2,
    )
    deleting = deployment("old", "shop")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert workloads.project_workload(model.WorkloadKind.DEPLOYMENT, deleting) is None
    many = deployment("many", "shop")
    many["spec"]["template"]["spec"]["containers"] = [
        {"name": f"c{i}", "image": f"img:{i}"} for i in range(500)
    ]
    projected = workloads.project_workload(model.WorkloadKind.DEPLOYMENT, many)
    assert projected is not None
    assert len(projected.images) == workloads.MAX_IMAGES_PER_WORKLOAD


def test_weights_from_views() -> None:
    views = [
        workloads.project_workload(
            model.WorkloadKind.DEPLOYMENT, deployment("a", "shop", 3, t="w")
        ),
        workloads.project_workload(
            model.WorkloadKind.DEPLOYMENT, deployment("b", "shop", 0, t="w")
        ),
        workloads.project_workload(model.WorkloadKind.DEPLOYMENT, deployment("c", "shop", 9)),
        workloads.project_workload(
            model.WorkloadKind.DAEMON_SET,
            {**deployment("ds", "shop", None, t="w"), "kind": "DaemonSet"},
        ),
        workloads.project_workload(
            model.WorkloadKind.DAEMON_SET,
            deployment("prepull-x", "shop", None, **{"imageward.io/prepull": "x", "t": "w"}),
        ),
    ]
    found = workloads.build_images_from_views(
        [v for v in views if v is not None],
        {model.WorkloadKind.DEPLOYMENT, model.WorkloadKind.DAEMON_SET},
        label_selector=selectors.parse_label_selector({"matchLabels": {"t": "w"}}),
        node_count=5,
    )
    # 3 + max(1, 0) + 5 nodes; c is not selected; imageward's own DaemonSet never counts.
    assert found == [("app:1", 9), ("init:1", 9)]


def test_the_store_applies_listings_and_events_within_its_cap() -> None:
    store: reflector.Store[workloads.WorkloadView | None] = reflector.Store(
        lambda body: workloads.project_workload(model.WorkloadKind.DEPLOYMENT, body), max_items=2
    )
    store.replace([deployment("a", "shop"), deployment("b", "bank")])
    assert sorted(store.items) == ["bank/b", "shop/a"]
    assert not store.overflowed
    assert not store.apply("MODIFIED", deployment("a", "shop"))  # nothing it keeps changed
    assert store.apply("MODIFIED", deployment("a", "shop", 7))
    assert not store.apply("ADDED", deployment("c", "shop"))
    assert store.overflowed and "shop/c" not in store.items
    assert store.apply("DELETED", deployment("b", "bank"))
    assert not store.apply("BOOKMARK", deployment("z", "shop"))
    deleting = deployment("a", "shop")
    deleting["metadata"]["deletionTimestamp"] = "now"
    assert store.apply("MODIFIED", deleting) and "shop/a" not in store.items
