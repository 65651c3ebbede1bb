"""The webhook in its own process (`IMAGEWARD_ADMISSION_PROCESS`, the chart's `own`):
it decides with current policies, its counters reach the operator's `/metrics`, it is
started again when it dies, and it never outlives the operator."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from imageward.localcluster import controlplane, images, peers, processes, registries
from tests import utils
from tests.cluster import helpers
from tests.conftest import RunningOperator

pytestmark = pytest.mark.cluster

_WORKER = "imageward.admission.worker"


def _cmdline(pid: int) -> str:
    try:
        return (
            (pathlib.Path("/proc") / str(pid) / "cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode()
        )
    except OSError:
        return ""


def _workers(pid: int) -> list[int]:
    return [child for child in peers.process_tree(pid)[1:] if _WORKER in _cmdline(child)]


def _alive(pid: int) -> bool:
    try:
        state = (pathlib.Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _post(url: str, namespace: str, image: str) -> dict[str, Any]:
    pod = helpers.pod("worker", image)
    pod["metadata"]["namespace"] = namespace
    review = helpers.pod_review(namespace, pod)
    answer: dict[str, Any] = helpers.post_review(url, review)["response"]
    return answer


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        text: str = response.read().decode()
        return text


def _denied_count(metrics_text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == "imageward_admission_requests_total"
        and sample.labels == {"decision": "deny", "operation": "CREATE", "resource": "pods"}
    )


class _Replica:
    def __init__(self, process: processes.ManagedProcess, port: int, metrics: int, live: int):
        self.process = process
        self.validate_url = f"https://127.0.0.1:{port}/imageward-validate"
        self.metrics_url = f"http://127.0.0.1:{metrics}/metrics"
        self.liveness_url = f"http://127.0.0.1:{live}/healthz"


def _start_replica(
    imageward_operator: RunningOperator,
    tmp_path_factory: pytest.TempPathFactory,
    mode: str,
) -> _Replica:
    env = dict(imageward_operator.process.env or {})
    port, metrics_port, liveness_port = (processes.free_port() for _ in range(3))
    env.update(
        # A standby: Kopf pauses its controllers, the webhook serves regardless.
        IMAGEWARD_PEERING_PRIORITY="0",
        IMAGEWARD_WEBHOOK_PORT=str(port),
        IMAGEWARD_WEBHOOK_URL=f"https://127.0.0.1:{port}",
        IMAGEWARD_METRICS_PORT=str(metrics_port),
        IMAGEWARD_CREATE_WEBHOOK_CONFIGURATIONS="false",
        IMAGEWARD_ADMISSION_PROCESS=mode,
    )
    process = processes.ManagedProcess(
        f"imageward-{mode}",
        [*imageward_operator.process.argv, f"--liveness=http://127.0.0.1:{liveness_port}/healthz"],
        log_dir=tmp_path_factory.mktemp(f"admission-{mode}"),
        env=env,
    )
    process.start()
    replica = _Replica(process, port, metrics_port, liveness_port)
    processes.wait_for_http(replica.metrics_url, timeout=60, expect_status=200, process=process)
    # Kopf starts its liveness endpoint in a task of its own, not before the metrics.
    processes.wait_for_http(replica.liveness_url, timeout=30, expect_status=200, process=process)
    return replica


@pytest.fixture
def refused_image(
    cluster: controlplane.ControlPlane, registry_set: registries.Registries
) -> Iterator[str]:
    """An image of 5 layers under a policy that allows 2."""
    registry = registry_set.anonymous
    repository = f"worker/{helpers.uid()}"
    registry.client().push(repository, images.many_layer_image(helpers.uid(), count=5), tag="1")
    policies = helpers.Policies(cluster)
    policies.apply([f"{registry.host}/{repository}"], {"maxLayers": 2})
    try:
        yield f"{registry.host}/{repository}:1"
    finally:
        policies.delete_all()


def test_the_webhook_process_decides_counts_restarts_and_ends_with_the_operator(
    namespace: str,
    imageward_operator: RunningOperator,
    refused_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    replica = _start_replica(imageward_operator, tmp_path_factory, "own")
    try:
        operator_pid = replica.process.pid
        assert operator_pid is not None
        workers = _workers(operator_pid)
        assert len(workers) == 1, f"one admission process expected, found {workers}"
        first = workers[0]
        probe = json.loads(_get(replica.liveness_url))
        assert probe["admission"] == {"process": "own", "pid": first, "restarts": 0, "down": 0.0}

        answers = [_post(replica.validate_url, namespace, refused_image) for _ in range(3)]
        assert all(not a["allowed"] for a in answers)
        assert "over maxLayers 2" in answers[0]["status"]["message"]
        # Decided in the worker, counted there, shown by the operator's /metrics.
        assert _denied_count(_get(replica.metrics_url)) == 3

        os.kill(first, signal.SIGKILL)

        def answered_by_a_new_worker() -> int | None:
            found = [w for w in _workers(operator_pid) if w != first and _alive(w)]
            if not found:
                return None
            try:
                answer = _post(replica.validate_url, namespace, refused_image)
            except OSError:
                return None
            return found[0] if not answer["allowed"] else None

        second = utils.wait_for(
            "a new admission process to answer", answered_by_a_new_worker, timeout=30
        )
        log = replica.process.log_tail(200_000)
        assert f"admission process (pid {first}) exited with code -9" in log
        # The new worker counts from its start; the pod's counter goes on from the old
        # worker's 3 (a drop would be a counter reset to Prometheus).
        assert _denied_count(_get(replica.metrics_url)) == 4

        # The operator killed outright: its worker must not keep the webhook port.
        os.kill(operator_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(second) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(second), "the admission process outlived the operator"
    finally:
        replica.process.stop()


def test_shared_mode_serves_from_the_operators_own_loop(
    namespace: str,
    imageward_operator: RunningOperator,
    refused_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    replica = _start_replica(imageward_operator, tmp_path_factory, "shared")
    try:
        assert replica.process.pid is not None
        assert _workers(replica.process.pid) == []
        assert json.loads(_get(replica.liveness_url))["admission"] == {"process": "shared"}
        answer = _post(replica.validate_url, namespace, refused_image)
        assert not answer["allowed"] and "over maxLayers 2" in answer["status"]["message"]
        assert _denied_count(_get(replica.metrics_url)) == 1
    finally:
        replica.process.stop()
