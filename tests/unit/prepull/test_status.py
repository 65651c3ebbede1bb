from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from imageward.prepull import model, status

WEB_PINNED = "ghcr.io/acme/web@sha256:" + "a" * 64
API_PINNED = "ghcr.io/acme/api@sha256:" + "b" * 64
NOW = "2025-01-02T03:04:05Z"
EARLIER = "2025-01-01T00:00:00Z"

PULL_MESSAGE = (
    'rpc error: code = NotFound desc = failed to pull and unpack image "'
    + WEB_PINNED
    + '": failed to resolve reference: not found'
)


def pod(
    node: str | None,
    *,
    ready: bool = False,
    template_hash: str = "h1",
    init: list[dict[str, Any]] | None = None,
    containers: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    volumes: Sequence[str] = (),
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": f"prepull-web-{node}",
        "annotations": {"imageward.io/digest-hash": template_hash},
    }
    if deleting:
        metadata["deletionTimestamp"] = NOW
    spec: dict[str, Any] = {
        "initContainers": [
            {"name": "install-helper", "image": "helper:1"},
            {"name": "pull-0", "image": API_PINNED},
            {"name": "pull-1", "image": WEB_PINNED},
        ],
        "containers": [{"name": "pause", "image": "pause:3.10"}],
        "volumes": [
            {"name": f"image-{i}", "image": {"reference": ref}} for i, ref in enumerate(volumes)
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "metadata": metadata,
        "spec": spec,
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "initContainerStatuses": init or [],
            "containerStatuses": containers or [],
        },
    }


def waiting(name: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"name": name, "state": {"waiting": {"reason": reason, "message": message}}}


def terminated(name: str, code: int, reason: str = "Error") -> dict[str, Any]:
    return {"name": name, "state": {"terminated": {"exitCode": code, "reason": reason}}}


# -- nodes -----------------------------------------------------------------------------


def test_ready_pods_count_per_node() -> None:
    pods = [pod("n1", ready=True), pod("n2", ready=True), pod("n3")]
    nodes = status.build_node_status(pods, 3)
    assert nodes == status.NodeStatus(desired=3, ready=2, failed=0, failures=())
    assert nodes.ready_text == "2/3"


def test_pull_failures_are_reported_with_the_image_as_written() -> None:
    pods = [
        pod("n1", init=[waiting("pull-1", "ErrImagePull", PULL_MESSAGE)]),
        pod("n2", init=[waiting("pull-1", "ImagePullBackOff", 'Back-off pulling image "x"')]),
        pod("n3", ready=True),
    ]
    nodes = status.build_node_status(pods, 3, images={WEB_PINNED: "ghcr.io/acme/web:1.4"})
    assert (nodes.ready, nodes.failed) == (1, 2)
    assert nodes.failures == (
        status.Failure(
            "n1",
            "ghcr.io/acme/web:1.4",
            "ErrImagePull",
            PULL_MESSAGE.removeprefix("rpc error: code = NotFound desc = "),
        ),
        status.Failure(
            "n2", "ghcr.io/acme/web:1.4", "ImagePullBackOff", 'Back-off pulling image "x"'
        ),
    )


@pytest.mark.parametrize(
    "reason",
    [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CrashLoopBackOff",
    ],
)
def test_failure_reasons(reason: str) -> None:
    nodes = status.build_node_status([pod("n1", init=[waiting("pull-0", reason)])], 1)
    assert nodes.failed == 1
    assert nodes.failures[0].reason == reason
    assert nodes.failures[0].image == API_PINNED


def test_waiting_for_other_reasons_is_not_a_failure() -> None:
    pods = [
        pod("n1", init=[waiting("pull-0", "PodInitializing")]),
        pod("n2", containers=[waiting("pause", "ContainerCreating")]),
    ]
    nodes = status.build_node_status(pods, 2)
    assert (nodes.ready, nodes.failed, nodes.failures) == (0, 0, ())


def test_terminated_non_zero_is_a_failure_zero_is_not() -> None:
    pods = [
        pod("n1", init=[terminated("install-helper", 0, "Completed"), terminated("pull-0", 127)]),
        pod("n2", init=[terminated("install-helper", 0, "Completed")]),
    ]
    nodes = status.build_node_status(pods, 2)
    assert nodes.failed == 1
    assert nodes.failures == (status.Failure("n1", API_PINNED, "Error", "exited with code 127"),)


def test_outdated_ready_pods_do_not_count_when_the_hash_is_known() -> None:
    pods = [pod("n1", ready=True, template_hash="old"), pod("n2", ready=True, template_hash="new")]
    assert status.build_node_status(pods, 2, current_hash="new").ready == 1
    assert status.build_node_status(pods, 2).ready == 2


def test_deleting_and_unscheduled_pods_are_ignored_and_nodes_counted_once() -> None:
    pods = [
        pod("n1", ready=True, deleting=True),
        pod(None, init=[waiting("pull-0", "ErrImagePull")]),
        pod("n2", ready=True),
        pod("n2", init=[waiting("pull-0", "ErrImagePull")]),
    ]
    nodes = status.build_node_status(pods, 2)
    assert (nodes.ready, nodes.failed, nodes.failures) == (1, 0, ())


def test_image_volume_failures_name_the_volume_image() -> None:
    message = f'failed to pull image "{WEB_PINNED}": not found'
    failing = pod(
        "n1",
        containers=[waiting("pause", "ErrImagePull", message)],
        volumes=[API_PINNED, WEB_PINNED],
    )
    failing["spec"]["initContainers"] = []
    (failure,) = status.build_node_status([failing], 1).failures
    assert failure.image == WEB_PINNED


def test_failures_are_capped_varied_and_sorted() -> None:
    pods = [
        pod(f"n{i:03d}", init=[waiting("pull-1", "ImagePullBackOff", "back-off")])
        for i in range(50)
    ]
    pods.append(pod("z-last", init=[waiting("pull-0", "ErrImagePull", "denied")]))
    nodes = status.build_node_status(list(reversed(pods)), 51)
    assert nodes.failed == 51
    assert len(nodes.failures) == 20
    # The lone different failure is kept although its node sorts last.
    assert nodes.failures[-1] == status.Failure("z-last", API_PINNED, "ErrImagePull", "denied")
    assert [f.node for f in nodes.failures[:-1]] == [f"n{i:03d}" for i in range(19)]
    assert status.build_node_status(pods, 51) == nodes


def test_messages_are_shortened_on_one_line() -> None:
    text = "line one\n   line two " + "x" * 500
    nodes = status.build_node_status([pod("n1", init=[waiting("pull-0", "ErrImagePull", text)])], 1)
    message = nodes.failures[0].message
    assert len(message) == status.MAX_FAILURE_MESSAGE
    assert message.startswith("line one line two x")
    assert message.endswith("…")


def test_status_fields() -> None:
    nodes = status.NodeStatus(
        desired=40,
        ready=12,
        failed=1,
        failures=(
            status.Failure("n1", "web:1", "ErrImagePull", "boom"),
            status.Failure("n2", "", "CrashLoopBackOff"),
        ),
    )
    assert status.build_status_fields(nodes) == {
        "nodes": {"desired": 40, "ready": 12, "failed": 1},
        "readyText": "12/40",
        "failures": [
            {"node": "n1", "image": "web:1", "reason": "ErrImagePull", "message": "boom"},
            {"node": "n2", "image": "", "reason": "CrashLoopBackOff"},
        ],
    }


# -- conditions ------------------------------------------------------------------------


def conditions(nodes: status.NodeStatus | None, **kwargs: Any) -> dict[str, dict[str, Any]]:
    built = status.build_conditions(nodes, generation=4, now=NOW, **kwargs)
    assert [c["type"] for c in built] == ["Ready", "Progressing", "Degraded"]
    for condition in built:
        assert condition["observedGeneration"] == 4
    return {c["type"]: c for c in built}


def summary(by_type: dict[str, dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {kind: (c["status"], c["reason"]) for kind, c in by_type.items()}


def test_all_ready() -> None:
    result = conditions(status.NodeStatus(3, 3, 0))
    assert summary(result) == {
        "Ready": ("True", "AllNodesReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("False", "AsExpected"),
    }
    assert result["Ready"]["message"] == "3 of 3 nodes are ready"
    assert result["Ready"]["lastTransitionTime"] == NOW


def test_rolling_out() -> None:
    result = conditions(status.NodeStatus(40, 12, 0))
    assert summary(result) == {
        "Ready": ("False", "RollingOut"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("False", "AsExpected"),
    }
    assert result["Progressing"]["message"] == "12 of 40 nodes are ready"


def test_failing_nodes_degrade_and_name_the_first_failure() -> None:
    failure = status.Failure("n7", "ghcr.io/acme/web:1.4", "ErrImagePull", "not found")
    result = conditions(status.NodeStatus(3, 1, 1, (failure,)))
    assert summary(result) == {
        "Ready": ("False", "PullFailed"),
        "Progressing": ("True", "RollingOut"),
        "Degraded": ("True", "PullFailed"),
    }
    assert result["Degraded"]["message"] == (
        "1 node fails, e.g. n7: ghcr.io/acme/web:1.4: ErrImagePull: not found"
    )


def test_stalled_when_every_waiting_node_fails() -> None:
    result = conditions(status.NodeStatus(3, 1, 2))
    assert summary(result)["Progressing"] == ("False", "Stalled")


def test_no_matching_nodes_is_ready() -> None:
    result = conditions(status.NodeStatus(0, 0, 0))
    assert summary(result)["Ready"] == ("True", "NoMatchingNodes")
    assert summary(result)["Progressing"] == ("False", "Complete")


def test_blocking_problem_without_daemonset() -> None:
    problem = status.Problem(status.REASON_INVALID_SPEC, "spec.layers.budgetPerNode: '500m' ...")
    result = conditions(None, problems=[problem])
    assert summary(result) == {
        "Ready": ("False", "InvalidSpec"),
        "Progressing": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
    }
    assert result["Degraded"]["message"] == problem.message


def test_pending_without_daemonset_or_problem() -> None:
    result = conditions(None)
    assert summary(result)["Ready"] == ("False", "Pending")
    assert summary(result)["Degraded"] == ("False", "Pending")


def test_partial_problem_keeps_progress() -> None:
    problem = status.Problem(status.REASON_RESOLVE_FAILED, "ghcr.io/acme/gone:1: not found")
    result = conditions(status.NodeStatus(2, 2, 0), problems=[problem])
    assert summary(result) == {
        "Ready": ("False", "ResolveFailed"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("True", "ResolveFailed"),
    }


def test_notes_degrade_without_blocking_readiness() -> None:
    note = status.Problem(status.REASON_CROSS_NAMESPACE, "namespaceSelector is ignored: ...")
    result = conditions(status.NodeStatus(2, 2, 0), notes=[note])
    assert summary(result) == {
        "Ready": ("True", "AllNodesReady"),
        "Progressing": ("False", "Complete"),
        "Degraded": ("True", "CrossNamespaceNotAllowed"),
    }
    assert result["Degraded"]["message"] == note.message
    # With a blocking problem too, Degraded names the problem first and the note after.
    problem = status.Problem(status.REASON_DAEMONSET_REFUSED, "denied by ImagePolicy p")
    blocked = conditions(None, problems=[problem], notes=[note])
    assert summary(blocked)["Ready"] == ("False", "DaemonSetRefused")
    assert blocked["Degraded"]["message"] == f"{problem.message}; {note.message}"


def test_pending_says_what_is_awaited() -> None:
    result = conditions(None, pending="the plan has not been written yet")
    assert result["Ready"]["message"] == "the plan has not been written yet"


def test_transition_time_moves_only_with_the_status() -> None:
    previous = [
        {"type": "Ready", "status": "True", "lastTransitionTime": EARLIER},
        {"type": "Progressing", "status": "True", "lastTransitionTime": EARLIER},
    ]
    result = conditions(status.NodeStatus(3, 3, 0), previous=previous)
    assert result["Ready"]["lastTransitionTime"] == EARLIER
    assert result["Progressing"]["lastTransitionTime"] == NOW
    assert result["Degraded"]["lastTransitionTime"] == NOW


# -- images of workloads ---------------------------------------------------------------


def deployment(
    name: str, images: list[str], replicas: int | None = 1, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {
            "spec": {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]}
        }
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"kind": "Deployment", "metadata": {"name": name, **extra}, "spec": spec}


ALL_KINDS = tuple(model.WorkloadKind)


def test_workload_images_weighted_by_replicas_and_summed() -> None:
    statefulset = deployment("db", ["postgres:16"], replicas=3)
    statefulset["kind"] = "StatefulSet"
    statefulset["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "init", "image": "busybox:1"}
    ]
    daemon = {
        "kind": "DaemonSet",
        "metadata": {"name": "agent"},
        "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "busybox:1"}]}}},
    }
    cron = {
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "jobTemplate": {
                "spec": {"template": {"spec": {"containers": [{"name": "j", "image": "web:1"}]}}}
            }
        },
    }
    workloads = [
        deployment("web", ["web:1", "sidecar:2", "web:1"], replicas=5),
        deployment("zero", ["sidecar:2"], replicas=0),
        deployment("unset", ["other:1"], replicas=None),
        statefulset,
        daemon,
        cron,
    ]
    images = status.build_images_from_workloads(workloads, ALL_KINDS, node_count=10)
    assert images == [
        ("busybox:1", 13),  # 3 (StatefulSet init container) + 10 (DaemonSet on 10 nodes)
        ("sidecar:2", 6),  # 5 + at least 1 for the scaled-to-zero Deployment
        ("web:1", 6),  # 5 (counted once per pod) + 1 (CronJob); ties sorted by image
        ("postgres:16", 3),
        ("other:1", 1),
    ]


def test_workload_kinds_deleting_and_own_daemonsets_are_filtered() -> None:
    own = deployment("prepull-web", ["ghcr.io/acme/web@sha256:" + "a" * 64])
    own["kind"] = "DaemonSet"
    own["metadata"]["labels"] = {"imageward.io/prepull": "web"}
    workloads = [
        deployment("web", ["web:1"]),
        deployment("gone", ["gone:1"], deletionTimestamp=NOW),
        own,
    ]
    assert status.build_images_from_workloads(workloads, ALL_KINDS, node_count=3) == [("web:1", 1)]
    assert (
        status.build_images_from_workloads(workloads, [model.WorkloadKind.CRON_JOB], node_count=3)
        == []
    )


def test_workloads_need_a_kind() -> None:
    nameless = deployment("web", ["web:1"])
    del nameless["kind"]
    with pytest.raises(ValueError, match="'web' has no kind"):
        status.build_images_from_workloads([nameless], ALL_KINDS, node_count=1)


def test_image_weights_merge_in_first_appearance_order() -> None:
    merged = status.build_image_weights([("a:1", 3), ("b:1", 1)], [("b:1", 5), ("c:1", 2)])
    assert merged == [("a:1", 3), ("b:1", 6), ("c:1", 2)]


# -- a DaemonSet its controller has not counted yet --------------------------------------


@pytest.mark.parametrize(
    ("daemonset", "pending"),
    [
        # Just created: no status at all, which reads as 0 desired nodes.
        ({"metadata": {"generation": 1}}, True),
        ({"metadata": {"generation": 1}, "status": {"desiredNumberScheduled": 0}}, True),
        # Updated, the controller still on the previous generation.
        ({"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}, True),
        ({"metadata": {"generation": 3}, "status": {"observedGeneration": 3}}, False),
    ],
)
def test_a_daemonset_not_yet_counted_is_pending_not_ready(
    daemonset: dict[str, Any], pending: bool
) -> None:
    """Found on a real node: a PrePull was Ready (NoMatchingNodes, 0 of 0) a moment after
    its DaemonSet was made, before the DaemonSet controller had counted the node."""
    why = status.evaluate_daemonset_pending(daemonset)
    assert (why is not None) == pending
    if why is not None:
        result = conditions(None, pending=why)
        assert summary(result)["Ready"] == ("False", "Pending")
        assert (
            result["Ready"]["message"] == "the DaemonSet controller has not counted the nodes yet"
        )
