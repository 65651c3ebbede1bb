"""Session fixtures: one real local control plane (and registries, containerd) per run.

Tests marked `cluster` use them. `make test` and CI run everything; while iterating,
`pytest -m "not cluster"` runs only the pure unit tests.
"""

from __future__ import annotations

import os
import pathlib
import sys
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from imageward.localcluster import containerd, controlplane, cosign, processes, registries


@pytest.fixture(scope="session")
def cluster() -> Iterator[controlplane.ControlPlane]:
    with controlplane.ControlPlane(nodes=3) as plane:
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(plane.kubeconfig)
        try:
            yield plane
        finally:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous


@pytest.fixture
def namespace(cluster: controlplane.ControlPlane) -> Iterator[str]:
    """A fresh namespace per test (its default ServiceAccount already made)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.create_namespace(name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def registry_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[registries.Registries]:
    """The three real registry variants: anonymous, htpasswd (Basic) and token (Bearer)."""
    with registries.start_all(workdir=tmp_path_factory.mktemp("registries")) as started:
        yield started


@pytest.fixture(scope="session")
def containerd_daemon() -> Iterator[containerd.Containerd]:
    with containerd.Containerd() as daemon:
        yield daemon


@pytest.fixture(scope="session")
def cosign_tool(tmp_path_factory: pytest.TempPathFactory) -> cosign.Cosign:
    return cosign.Cosign(tmp_path_factory.mktemp("cosign"))


class RunningOperator:
    """`imageward run` as a real process against the session's control plane."""

    def __init__(self, process: processes.ManagedProcess, webhook_url: str, metrics_url: str):
        self.process = process
        self.webhook_url = webhook_url
        self.metrics_url = metrics_url

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text: str = response.read().decode()
            return text


@pytest.fixture(scope="session")
def imageward_operator(
    cluster: controlplane.ControlPlane,
    registry_set: registries.Registries,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningOperator]:
    """The operator, its CRDs and webhook configurations; removed again at the end."""
    repo_root = pathlib.Path(__file__).resolve().parents[1]
    for crd in sorted((repo_root / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(crd), "--timeout=30s")
    cluster.create_namespace("imageward-system")
    port, metrics_port = processes.free_port(), processes.free_port()
    webhook_url = f"https://127.0.0.1:{port}"
    env = dict(
        os.environ,
        KUBECONFIG=str(cluster.kubeconfig),
        IMAGEWARD_NAMESPACE="imageward-system",
        IMAGEWARD_WEBHOOK_HOST="127.0.0.1",
        IMAGEWARD_WEBHOOK_PORT=str(port),
        IMAGEWARD_WEBHOOK_URL=webhook_url,
        IMAGEWARD_METRICS_PORT=str(metrics_port),
        IMAGEWARD_INSECURE_REGISTRIES=",".join(r.host for r in registry_set),
        IMAGEWARD_ADMISSION_DEADLINE="4",
        IMAGEWARD_WEBHOOK_TIMEOUT="10",
    )
    process = processes.ManagedProcess(
        "imageward-operator",
        [sys.executable, "-m", "imageward", "run", "--standalone"],
        log_dir=tmp_path_factory.mktemp("operator"),
        env=env,
    )
    process.start()
    running = RunningOperator(process, webhook_url, f"http://127.0.0.1:{metrics_port}/metrics")
    try:
        processes.wait_for_http(running.metrics_url, timeout=60, expect_status=200, process=process)

        def webhook_answers() -> bool:
            probe = cluster.kubectl(
                "run",
                "probe",
                "-n",
                "imageward-tests-probe",
                "--image=registry.k8s.io/pause:3.10",
                "--dry-run=server",
                check=False,
            )
            return probe.returncode == 0

        cluster.create_namespace("imageward-tests-probe")
        cluster.wait_for("the imageward webhook to answer the apiserver", webhook_answers)
        yield running
    finally:
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            cluster.kubectl("delete", kind, "imageward", "--ignore-not-found", check=False)
        process.stop()
        if process.returncode not in (0, -15, None):
            print(process.log_tail())
