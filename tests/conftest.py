"""Session fixtures: one real local control plane (and registries, containerd) per run.

Tests marked `cluster` use them. `make test` and CI run everything; while iterating,
`pytest -m "not cluster"` runs only the pure unit tests.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from imageward.admission import webhooks
from imageward.localcluster import (
    containerd,
    controlplane,
    cosign,
    notation,
    processes,
    realnode,
    registries,
)


@pytest.fixture(scope="session")
def cluster() -> Iterator[controlplane.ControlPlane]:
    # Advertised on this machine's address (not 127.0.0.1) so that pods of the real node,
    # when a test asks for it, reach the apiserver through the `kubernetes` Service.
    with controlplane.ControlPlane(
        nodes=3, advertise_address=controlplane.primary_address()
    ) as plane:
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
def real_node(
    cluster: controlplane.ControlPlane,
    registry_set: registries.Registries,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[realnode.RealNode]:
    """The machine's one real kubelet node, joined to the session's cluster and shared by
    every test that asks for it (a real node changes the host: never two at once).

    It is tainted: put a pod on it with `real_node.placement` (nodeSelector + toleration).
    The session registries are in its containerd's pull configuration; add others with
    `real_node.add_registry(host)`. `real_node.containerd.ctr(...)` inspects its content
    store. Its logs are in /tmp/imageward-realnode-logs/run-<pid>. Stopping restores
    the host; a node left by a crashed run is cleaned up when this one starts.
    """
    if os.geteuid() != 0:
        pytest.skip("a real node needs root (kubelet, containerd, iptables)")
    if not cluster.advertise_address:
        pytest.skip("this machine has no address besides 127.0.0.1 for pods to reach")
    # Logs outside pytest's temporary directories, which other test runs on the machine
    # rotate away: each run's stay in run-<pid> until a later run finds that pid gone.
    logs = pathlib.Path(tempfile.gettempdir()) / "imageward-realnode-logs"
    for old in logs.glob("run-*"):
        if not pathlib.Path("/proc", old.name.removeprefix("run-")).exists():
            shutil.rmtree(old, ignore_errors=True)
    log_dir = logs / f"run-{os.getpid()}"
    # Another test run on this machine may hold the machine's one real node: wait for it.
    node = realnode.RealNode(cluster, log_dir=log_dir, lock_timeout=1200)
    for registry in registry_set:
        node.add_registry(registry.host)
    node.start()
    _session_real_nodes.append(node)
    try:
        yield node
    finally:
        _session_real_nodes.remove(node)
        node.stop()


_session_real_nodes: list[realnode.RealNode] = []


@pytest.fixture
def real_node_slot() -> Iterator[None]:
    """For a test that starts a real node of its own (`imageward dev --real-node`): one
    real node per machine, so the session's, if it runs, stops for the test and starts
    again after it."""
    if os.geteuid() != 0:
        pytest.skip("a real node needs root (kubelet, containerd, iptables)")
    paused = [node for node in _session_real_nodes if node.running]
    for node in paused:
        node.stop()
    yield
    for node in paused:
        node.start()


@pytest.fixture(scope="session")
def cosign_tool(tmp_path_factory: pytest.TempPathFactory) -> cosign.Cosign:
    return cosign.Cosign(tmp_path_factory.mktemp("cosign"))


@pytest.fixture(scope="session")
def notation_tool(tmp_path_factory: pytest.TempPathFactory) -> notation.Notation:
    return notation.Notation(tmp_path_factory.mktemp("notation"))


#: Where the session operator's pre-pull pods take /imageward-helper from (the operator
#: image, which holds it), a tag of the session's anonymous registry.
HELPER_REPOSITORY = "imageward/operator"
HELPER_TAG = "session"


def helper_image_reference(registry_set: registries.Registries) -> str:
    return f"{registry_set.anonymous.host}/{HELPER_REPOSITORY}:{HELPER_TAG}"


class RunningOperator:
    """`imageward run` as a real process against the session's control plane."""

    def __init__(
        self,
        process: processes.ManagedProcess,
        webhook_url: str,
        metrics_url: str,
        kubeconfig: pathlib.Path,
        namespace: str,
    ) -> None:
        self.process = process
        self.webhook_url = webhook_url
        self.metrics_url = metrics_url
        self.kubeconfig = kubeconfig  # the operator's own identity (chart ServiceAccount)
        self.namespace = namespace

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text: str = response.read().decode()
            return text


# What of the chart the local operator uses: its identity and permissions, its webhook
# configurations and peering object. Not the Deployment or Service (no pod runs here).
_CHART_KINDS = {
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ClusterKopfPeering",
}


@pytest.fixture(scope="session")
def imageward_operator(
    cluster: controlplane.ControlPlane,
    registry_set: registries.Registries,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningOperator]:
    """`imageward run` under the Helm chart's ServiceAccount and RBAC (a token, not the
    admin certificate), with the chart's webhook configurations pointed at it by URL (a
    local apiserver has no cluster DNS for the Service). Every test that uses it proves
    the chart's permissions suffice for what it exercises."""
    from tests.unit.chart import chart

    namespace = "imageward-system"
    manifests = chart.render(
        {
            "replicaCount": 1,
            "podDisruptionBudget": {"enabled": False},
            # What pre-pull pods run, pullable on the real node: the operator image (pushed
            # there by `session_helper_image` when a real-node test needs it) and the pause
            # image the real node already has. kwok nodes pull nothing.
            "prepull": {
                "helperImage": helper_image_reference(registry_set),
                "pauseImage": realnode.PAUSE_IMAGE,
            },
        },
        release="imageward",
        namespace=namespace,
        include_crds=True,
    )
    crds = chart.find_all(manifests, "CustomResourceDefinition")
    cluster.apply(*crds)
    for crd in crds:
        cluster.kubectl(
            "wait",
            "--for=condition=Established",
            f"crd/{crd['metadata']['name']}",
            "--timeout=30s",
        )
    cluster.create_namespace(namespace)
    cluster.apply(*(m for m in manifests if m["kind"] in _CHART_KINDS))
    environment = {
        k: v
        for k, v in chart.env_of(chart.find(manifests, "Deployment")).items()
        if isinstance(v, str)
    }
    port, metrics_port = processes.free_port(), processes.free_port()
    webhook_url = f"https://127.0.0.1:{port}"
    endpoint = webhooks.Endpoint(url=webhook_url)
    excluded = ["kube-system", namespace]
    placeholder = b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
    configurations = [
        webhooks.build_validating_configuration(
            environment["IMAGEWARD_VALIDATING_WEBHOOK"],
            endpoint,
            placeholder,
            excluded_namespaces=excluded,
            timeout_seconds=10,
        ),
        webhooks.build_mutating_configuration(
            environment["IMAGEWARD_MUTATING_WEBHOOK"],
            endpoint,
            placeholder,
            excluded_namespaces=excluded,
            timeout_seconds=10,
        ),
    ]
    cluster.apply(*configurations)
    account = chart.find(manifests, "ServiceAccount")["metadata"]["name"]
    kubeconfig = tmp_path_factory.mktemp("operator-identity") / "kubeconfig"
    cluster.write_token_kubeconfig(
        kubeconfig,
        cluster.service_account_token(namespace, account, seconds=24 * 3600),
        f"system:serviceaccount:{namespace}:{account}",
    )
    env = {**os.environ, **environment}
    env.update(
        KUBECONFIG=str(kubeconfig),
        IMAGEWARD_NAMESPACE=namespace,
        IMAGEWARD_WEBHOOK_HOST="127.0.0.1",
        IMAGEWARD_WEBHOOK_PORT=str(port),
        IMAGEWARD_WEBHOOK_URL=webhook_url,
        IMAGEWARD_METRICS_PORT=str(metrics_port),
        IMAGEWARD_INSECURE_REGISTRIES=",".join(r.host for r in registry_set),
        IMAGEWARD_ADMISSION_DEADLINE="4",
        IMAGEWARD_WEBHOOK_TIMEOUT="10",
        IMAGEWARD_TLS_CHECK_INTERVAL="2",
        # Tests sign images between two admissions; in production 30 s is the default.
        IMAGEWARD_SIGNATURE_CACHE_TTL="1",
        # Background scans (tests/cluster/test_reports.py waits for an interval scan);
        # in production 1h is the default.
        IMAGEWARD_SCAN_INTERVAL="20",
    )
    env.pop("IMAGEWARD_WEBHOOK_SERVICE", None)
    process = processes.ManagedProcess(
        "imageward-operator",
        [sys.executable, "-m", "imageward", "run"],
        log_dir=tmp_path_factory.mktemp("operator"),
        env=env,
    )
    process.start()
    running = RunningOperator(
        process, webhook_url, f"http://127.0.0.1:{metrics_port}/metrics", kubeconfig, namespace
    )
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
        for configuration in configurations:
            cluster.kubectl(
                "delete",
                configuration["kind"].lower(),
                configuration["metadata"]["name"],
                "--ignore-not-found",
                check=False,
            )
        process.stop()
        refusals = re.compile(r"APIForbiddenError|HTTP 403|\(403\)|is forbidden")
        # A namespace being deleted refuses new objects with a 403 too: that is no RBAC
        # refusal (the operator may still act in a test's namespace while it goes).
        forbidden = [
            line
            for line in process.log_tail(500_000).splitlines()
            if refusals.search(line) and "because it is being terminated" not in line
        ]
        assert not forbidden, "the chart's RBAC refused the operator:\n" + "\n".join(forbidden[:20])
