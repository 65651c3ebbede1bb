"""Which workloads a scan reports on, from the projections its watches keep (pure)."""

from __future__ import annotations

from typing import Any

from imageward.reports import targets


def _meta(name: str, owner: tuple[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "uid": f"uid-{name}", **extra}
    if owner:
        metadata["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return metadata


def _template(image: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"labels": labels or {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": image}]},
    }


def pod(name: str, image: str, owner: tuple[str, str] | None = None, **status: Any) -> Any:
    body = {"metadata": _meta(name, owner, labels={"app": "web"}), "status": status}
    return targets.project_pod({**body, "spec": _template(image)["spec"]})


def deployment(name: str, image: str) -> Any:
    return targets.project_workload(
        "Deployment", {"metadata": _meta(name), "spec": {"template": _template(image)}}
    )


def replica_set(name: str, image: str, owner: tuple[str, str] | None) -> Any:
    return targets.project_replica_set(
        {"metadata": _meta(name, owner), "spec": {"template": _template(image)}}
    )


def test_pods_join_their_deployment_and_share_its_view() -> None:
    web = deployment("web", "r/web:2")
    rs = replica_set("web-1", "r/web:2", ("Deployment", "web"))
    old_rs = replica_set("web-0", "r/web:1", ("Deployment", "web"))
    pods = [pod(f"web-1-{i}", "r/web:2", ("ReplicaSet", "web-1")) for i in range(50)]
    pods.append(pod("web-0-a", "r/web:1", ("ReplicaSet", "web-0")))
    found = targets.build_targets(pods, [rs, old_rs], [web])
    assert list(found) == [("shop", "Deployment", "web")]
    target = found[("shop", "Deployment", "web")]
    assert target.uid == "uid-web" and target.api_version == "apps/v1"
    # The template's view, shared by its 50 pods, and the old pod's own.
    assert sorted(v.images for v in target.views) == [("r/web:1",), ("r/web:2",)]
    assert pods[0].view is pods[1].view is web.view  # interned


def test_bare_pods_and_unknown_controllers_are_their_own_targets() -> None:
    bare = pod("debug", "r/tool:1")
    orphan = pod("web-x", "r/web:1", ("ReplicaSet", "gone"))
    custom = pod("thing-0", "r/x:1", ("Thing", "thing"))
    found = targets.build_targets([bare, orphan, custom], [], [])
    assert set(found) == {
        ("shop", "Pod", "debug"),
        ("shop", "Pod", "web-x"),
        ("shop", "Pod", "thing-0"),
    }


def test_cronjob_jobs_and_finished_jobs() -> None:
    cron = targets.project_workload(
        "CronJob",
        {
            "metadata": _meta("nightly"),
            "spec": {"jobTemplate": {"spec": {"template": _template("r/batch:1")}}},
        },
    )
    job = targets.project_workload(
        "Job",
        {
            "metadata": _meta("nightly-1", ("CronJob", "nightly")),
            "spec": {"template": _template("r/batch:1")},
        },
    )
    done = targets.project_workload(
        "Job",
        {
            "metadata": _meta("once"),
            "spec": {"template": _template("r/once:1")},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]},
        },
    )
    running = pod("nightly-1-x", "r/batch:1", ("Job", "nightly-1"))
    found = targets.build_targets([running], [], [cron, job, done])
    assert set(found) == {("shop", "CronJob", "nightly")}


def test_ended_deleted_and_excluded_pods_are_left_out() -> None:
    assert pod("a", "r/x:1", phase="Succeeded") is None
    assert pod("b", "r/x:1", phase="Failed") is None
    gone = targets.project_pod(
        {
            "metadata": _meta("c", deletionTimestamp="2026-01-01T00:00:00Z"),
            "spec": _template("r/x:1")["spec"],
        }
    )
    assert gone is None
    found = targets.build_targets([pod("d", "r/x:1")], [], [], excluded=frozenset({"shop"}))
    assert found == {}
