"""The watch-fed cache's pure pieces: stores that index and report changes, pre-pull pod
and DaemonSet projections, and which PrePulls a cache update concerns."""

from __future__ import annotations

import asyncio
import copy
import sys
import types
from typing import Any

import kubernetes

from imageward import kube, settings
from imageward.prepull import controller, inventory, model, reflector, reports, status
from tests.unit.prepull import test_status

PINNED = test_status.WEB_PINNED


def labelled_pod(
    name: str, node: str | None, *, prepull: str = "web", owner: str = "prepull-web", **kw: Any
) -> dict[str, Any]:
    body = test_status.pod(node, **kw)
    body["metadata"].update(
        name=name,
        namespace="shop",
        labels={"imageward.io/prepull": prepull},
        ownerReferences=[{"kind": "DaemonSet", "name": owner, "controller": True}],
    )
    return body


def daemonset_body(
    *, desired: int | None, observed: int | None, rv: str = "7", generation: int = 1
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": "prepull-web",
            "namespace": "shop",
            "resourceVersion": rv,
            "generation": generation,
        },
        "spec": {"template": {"metadata": {"annotations": {"imageward.io/digest-hash": "h1"}}}},
        "status": {},
    }
    if desired is not None:
        body["status"]["desiredNumberScheduled"] = desired
    if observed is not None:
        body["status"]["observedGeneration"] = observed
    return body


# -- Store ------------------------------------------------------------------------------


def test_the_store_groups_by_index_and_reports_every_change() -> None:
    changes: list[tuple[str, Any, Any]] = []
    store: reflector.Store[status.PodView] = reflector.Store(
        status.project_pod,
        max_items=10,
        index=lambda view: (view.namespace, view.prepull),
        on_update=lambda key, before, after: changes.append((key, before, after)),
    )
    a = labelled_pod("a", "n1", ready=True)
    b = labelled_pod("b", "n2", prepull="api", owner="prepull-api")
    assert store.replace([a, b])
    assert sorted(store.group(("shop", "web"))) == ["shop/a"]
    assert sorted(store.group(("shop", "api"))) == ["shop/b"]
    assert [key for key, before, _ in changes] == ["shop/a", "shop/b"]
    assert all(before is None for _, before, _ in changes)

    changes.clear()
    # A status change the projection does not keep is no change at all.
    unchanged = copy.deepcopy(a)
    unchanged["status"]["startTime"] = "2025-01-01T00:00:00Z"
    assert not store.apply("MODIFIED", unchanged)
    assert not store.replace([unchanged, b]) and not changes

    # Moving to another group (relabelled) leaves the old group.
    moved = copy.deepcopy(a)
    moved["metadata"]["labels"]["imageward.io/prepull"] = "api"
    assert store.apply("MODIFIED", moved)
    assert store.group(("shop", "web")) == {} and ("shop", "web") not in store.groups
    assert sorted(store.group(("shop", "api"))) == ["shop/a", "shop/b"]
    (key, before, after) = changes[-1]
    assert key == "shop/a" and before.prepull == "web" and after.prepull == "api"

    # A re-list drops what is gone, and says so.
    changes.clear()
    assert store.replace([b])
    assert changes == [("shop/a", after, None)]
    assert list(store.items) == ["shop/b"]


def test_a_full_store_keeps_what_it_has_and_says_it_overflowed() -> None:
    store: reflector.Store[status.PodView] = reflector.Store(status.project_pod, max_items=1)
    store.replace([labelled_pod("a", "n1"), labelled_pod("b", "n2")])
    assert list(store.items) == ["shop/a"] and store.overflowed
    assert not store.apply("ADDED", labelled_pod("c", "n3"))
    assert store.apply("MODIFIED", labelled_pod("a", "n1", ready=True))


# -- projections ------------------------------------------------------------------------


def test_a_pod_keeps_only_what_status_needs() -> None:
    body = labelled_pod(
        "a",
        "n1",
        init=[test_status.waiting("pull-1", "ErrImagePull", "rpc error: code = X desc = boom")],
    )
    view = status.project_pod(body)
    assert view == status.PodView(
        namespace="shop",
        prepull="web",
        owner="prepull-web",
        node="n1",
        ready=False,
        template_hash="h1",
        deleting=False,
        failures=(status.Failure("n1", PINNED, "ErrImagePull", "boom"),),
    )
    unlabelled = test_status.pod("n1")
    assert status.project_pod(unlabelled) is None
    # A view is a few hundred bytes whatever the pod's size.
    assert sys.getsizeof(view) < 200


def test_a_daemonset_counts_only_once_its_controller_has_seen_it() -> None:
    fresh = status.project_daemonset(daemonset_body(desired=None, observed=None))
    assert fresh is not None and not fresh.counted and fresh.desired == 0
    counted = status.project_daemonset(daemonset_body(desired=3, observed=1, rv="9"))
    assert counted is not None and counted.counted and counted.desired == 3
    assert counted.template_hash == "h1"
    # The resourceVersion is kept but never makes two views differ.
    again = status.project_daemonset(daemonset_body(desired=3, observed=1, rv="10"))
    assert again == counted
    # A changed spec (new digests, new node selector): the old count is not the new one.
    changed = status.project_daemonset(daemonset_body(desired=3, observed=1, generation=2))
    assert changed is not None and not changed.counted


def test_node_status_from_views_matches_the_one_from_pods() -> None:
    pods = [
        labelled_pod("a", "n1", ready=True),
        labelled_pod("b", "n2", ready=True, template_hash="old"),
        labelled_pod("c", "n3", init=[test_status.waiting("pull-1", "ImagePullBackOff")]),
        labelled_pod("d", None),
    ]
    views = [v for p in pods if (v := status.project_pod(p)) is not None]
    images = {PINNED: "ghcr.io/acme/web:1.4"}
    from_views = status.build_node_status_from_views(views, 4, current_hash="h1", images=images)
    assert from_views == status.build_node_status(pods, 4, current_hash="h1", images=images)
    assert (from_views.ready, from_views.failed) == (1, 1)
    assert from_views.failures[0].image == "ghcr.io/acme/web:1.4"


# -- which PrePulls a change concerns ---------------------------------------------------


def state() -> controller.PrePullState:
    client = kube.Kube(kubernetes.client.ApiClient())
    runtime = types.SimpleNamespace(kube=client, settings=settings.Settings())
    return controller.PrePullState(runtime)  # type: ignore[arg-type]


def prepull(name: str, uid: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": uid},
        "spec": {"images": ["x"], **spec},
    }


def tracked(found: controller.PrePullState, name: str, uid: str, **spec: Any) -> controller.Tracker:
    body = prepull(name, uid, **spec)
    tracker = found.track(body)
    tracker.spec = model.parse_prepull(body)
    return tracker


def agent(reports_: dict[str, reports.Report], node: str = "n1") -> reports.AgentPod:
    return reports.AgentPod(name=f"agent-{node}", node=node, deleting=False, reports=reports_)


def test_a_pod_or_daemonset_concerns_only_its_prepull() -> None:
    found = state()
    web, api = tracked(found, "web", "u1"), tracked(found, "api", "u2")
    pod = status.project_pod(labelled_pod("a", "n1"))
    assert found.concerned(inventory.CACHE_PODS, None, pod) == [web]
    assert found.concerned(inventory.CACHE_PODS, pod, None) == [web]
    other = status.project_pod(labelled_pod("b", "n1", prepull="nobody"))
    assert found.concerned(inventory.CACHE_PODS, None, other) == []
    ds = status.DaemonSetView("shop", "prepull-api", 3, "h")
    assert found.concerned(inventory.CACHE_DAEMONSETS, None, ds) == [api]


def test_an_agent_report_concerns_the_prepull_of_that_plan_only() -> None:
    found = state()
    one = tracked(found, "one", "u1", mode="Layers")
    two = tracked(found, "two", "u2", mode="Layers")
    tracked(found, "images", "u3")
    kind_one = reports.build_condition_type(one.plan_key)
    kind_two = reports.build_condition_type(two.plan_key)
    pending = reports.Report("h", False, reports.REASON_FETCHING, "")
    held = reports.Report("h", True, reports.REASON_HELD, "")
    before = agent({kind_one: pending, kind_two: pending})
    after = agent({kind_one: held, kind_two: pending})
    assert found.concerned(inventory.CACHE_AGENTS, before, after) == [one]
    # A new agent pod (or one moving, going) changes which nodes are served: every
    # Layers-mode PrePull, and no Images-mode one.
    assert set(found.concerned(inventory.CACHE_AGENTS, None, after)) == {one, two}
    assert set(found.concerned(inventory.CACHE_NODES, None, object())) == {one, two}


def test_a_workload_change_marks_only_prepulls_that_read_workloads() -> None:
    found = state()
    plain = tracked(found, "plain", "u1")
    reading = tracked(found, "reading", "u2", fromWorkloads={"kinds": ["Deployment"]})
    assert found.concerned(inventory.CACHE_WORKLOADS, None, object()) == [reading]
    assert reading.inputs_changed and not plain.inputs_changed


def test_a_prepull_made_again_gets_a_new_tracker_and_the_old_is_forgotten() -> None:
    found = state()
    old = tracked(found, "web", "u1")
    new = tracked(found, "web", "u2")
    assert new is not old and found.trackers[("shop", "web")] is new
    assert old.wake.is_set()  # its follower looks again
    pod = status.project_pod(labelled_pod("a", "n1"))
    assert found.concerned(inventory.CACHE_PODS, None, pod) == [new]
    found.untrack(new)
    assert found.concerned(inventory.CACHE_PODS, None, pod) == []
    assert not found.trackers


# -- Reflector retries -------------------------------------------------------------------


class _MissingResource:
    """What kube.Kube makes of a resource whose CRD is not installed: the list is a 404,
    which `call` returns as None; the watch's own request raises the 404."""

    def __init__(self) -> None:
        self.lists = 0

    async def call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.lists += 1
        return None

    @staticmethod
    def list_fn(*args: Any, **kwargs: Any) -> Any:
        raise kubernetes.client.ApiException(status=404, reason="Not Found")


def test_a_watch_that_fails_at_once_backs_off_although_its_list_succeeds(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(reflector, "_BACKOFF_FIRST", 0.02)
    monkeypatch.setattr(reflector, "_BACKOFF_MAX", 0.16)
    missing = _MissingResource()

    async def run() -> None:
        follower: reflector.Reflector[str] = reflector.Reflector(
            missing,  # type: ignore[arg-type]
            what="reports",
            list_fn=missing.list_fn,
            project=lambda o: "x",
            max_items=10,
        )
        await follower.start(wait=1.0)  # an empty list is a list: start returns
        await asyncio.sleep(0.6)
        await follower.close()

    asyncio.run(run())
    # Doubling from 0.02 s to 0.16 s: about 5 lists in 0.6 s. Reset after every list
    # (the old behaviour), each retry waited 0.02 s: about 25.
    assert 2 <= missing.lists <= 8, missing.lists
