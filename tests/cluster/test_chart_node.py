"""The Helm chart installed for real: `helm install charts/imageward` with the operator
image built here (pushed to a registry the node pulls from, pinned by digest) onto the
real kubelet node, then used, upgraded and uninstalled as a user would.

The session's own operator (`imageward_operator`, webhook configurations by URL) stays in
the cluster throughout, so the release must not fight it: its own release name and
namespace, webhook configurations and ClusterRoles named after the release, and its own
Kopf peering (`peering.name`). For the module's duration the session operator is set
aside, and put back at the end (the last test shows it works as before):
- its controllers are paused the way Kopf lets one operator pause another, a peer of
  higher priority in its ClusterKopfPeering: every ImagePolicy status and PrePull
  DaemonSet seen here is the chart's operator's work;
- its webhooks skip the namespaces these tests use (labelled CHART_NAMESPACE_LABEL):
  every admission decision there is the chart's (its pods' metrics show it too).

The registry is one of this module, listening on the node's address: pods cannot reach
the session's registries (127.0.0.1 is the host's loopback), and image references must
name the same registry for the kubelet, which pulls, and the operator in its pod, which
checks, as in a cluster with an in-cluster registry.

The tests run in file order and share one release (module fixture); the last one
uninstalls it. Figures (install time, failed admissions while a replica is deleted and
during the upgrade's rollout) are printed: run with -s to see them. Pod logs are kept in
/tmp/imageward-chart-node-logs/run-<pid>.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import os
import pathlib
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import parser as prometheus_parser

import imageward
from imageward.localcluster import (
    controlplane,
    cosign,
    images,
    operatorimage,
    prometheus,
    realnode,
    registries,
)
from tests import utils
from tests.cluster import helpers
from tests.conftest import RunningOperator
from tests.unit.chart import chart

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

RELEASE = "chart-node"
NAMESPACE = "chart-node-system"
#: The release's full name: Deployment, Service, ClusterRoles, webhook configurations and
#: (peering.name) its ClusterKopfPeering. It sorts before the session's "imageward", so the
#: apiserver, which calls mutating webhook configurations in name order, asks the chart's
#: pin-digest webhook first (the session's then finds the image pinned already).
FULLNAME = f"{RELEASE}-imageward"
#: The session operator's ClusterKopfPeering and webhook configurations (the chart's
#: defaults for release "imageward", tests/conftest.py).
SESSION_PEERING = "imageward"
SESSION_WEBHOOKS = (
    ("validatingwebhookconfiguration", "imageward"),
    ("mutatingwebhookconfiguration", "imageward"),
)
#: The peer that pauses the session operator's controllers while the release runs.
PAUSING_PEER = "chart-node-tests"
#: Namespaces of these tests: the chart's webhooks check them, the session's do not.
CHART_NAMESPACE_LABEL = "imageward.io/chart-node-test"
SELECTOR = f"app.kubernetes.io/name=imageward,app.kubernetes.io/instance={RELEASE}"
AGENT_SELECTOR = f"app.kubernetes.io/name=imageward-agent,app.kubernetes.io/instance={RELEASE}"
UPGRADED_METRICS_PORT = 9090
LOG_ROOT = pathlib.Path(tempfile.gettempdir()) / "imageward-chart-node-logs"


# -- the session operator, set aside while the release runs --------------------------------------


class SessionAside:
    """The session operator, set aside: its controllers paused by a Kopf peer of higher
    priority than any replica in its ClusterKopfPeering (Kopf never pauses its webhook
    server), and its webhooks told to skip namespaces labelled CHART_NAMESPACE_LABEL.
    `restore()` undoes both."""

    def __init__(self, cluster: controlplane.ControlPlane, operator: RunningOperator) -> None:
        self.cluster = cluster
        self.operator = operator
        self.paused = False
        self.selectors: dict[tuple[str, str], Any] = {}

    def _patch_peering(self, entry: dict[str, Any] | None) -> None:
        self.cluster.kubectl(
            "patch",
            "clusterkopfpeering",
            SESSION_PEERING,
            "--type=merge",
            "-p",
            json.dumps({"status": {PAUSING_PEER: entry}}),
        )

    def _patch_selector(self, kind: str, name: str, selector: Any) -> None:
        operation = [{"op": "replace", "path": "/webhooks/0/namespaceSelector", "value": selector}]
        self.cluster.kubectl("patch", kind, name, "--type=json", "-p", json.dumps(operation))

    def set_aside(self) -> None:
        for kind, name in SESSION_WEBHOOKS:
            (webhook,) = self.cluster.get_json(kind, name)["webhooks"]
            selector = webhook.get("namespaceSelector") or {}
            self.selectors[(kind, name)] = selector
            skip = {"key": CHART_NAMESPACE_LABEL, "operator": "DoesNotExist"}
            expressions = [*selector.get("matchExpressions", []), skip]
            self._patch_selector(kind, name, {**selector, "matchExpressions": expressions})
        lastseen = datetime.datetime.now(datetime.UTC).isoformat()
        # Priorities of replicas are at most 2**31 - 1 (operator_runner._priority).
        self._patch_peering({"priority": 2**40, "lifetime": 3600, "lastseen": lastseen})
        self.paused = True
        utils.wait_for(
            "the session operator to pause its controllers",
            lambda: "pausing operations in favour of" in self._log().lower(),
            timeout=30,
        )

    def restore(self) -> None:
        for (kind, name), selector in list(self.selectors.items()):
            self._patch_selector(kind, name, selector)
            del self.selectors[(kind, name)]
        if not self.paused:
            return
        mark = self._log().lower().count("resuming operations")
        self._patch_peering(None)
        self.paused = False
        utils.wait_for(
            "the session operator to resume its controllers",
            lambda: self._log().lower().count("resuming operations") > mark,
            timeout=30,
        )

    def _log(self) -> str:
        return self.operator.process.log_tail(2_000_000)


# -- the release -------------------------------------------------------------------------------


@dataclasses.dataclass
class Release:
    cluster: controlplane.ControlPlane
    node: realnode.RealNode
    env: dict[str, str]
    values_file: pathlib.Path
    values: dict[str, Any]
    image: images.Pushed
    registry: registries.Registry
    install_seconds: float = 0.0
    notes: str = ""
    installed: bool = False

    def helm(self, *args: str, check: bool = True) -> str:
        return chart.helm(*args, env=self.env, check=check).stdout

    def pods(self, selector: str = SELECTOR) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.cluster.get_json(
            "pods", "-n", NAMESPACE, "-l", selector
        )["items"]
        return found

    def ready_pods(self) -> list[dict[str, Any]]:
        return [
            p for p in self.pods() if _is_ready(p) and not p["metadata"].get("deletionTimestamp")
        ]

    def metrics_port(self) -> int:
        port: int = self.values.get("metrics", {}).get("port", 8080)
        return port

    def metrics(self, pod: dict[str, Any]) -> str:
        url = f"http://{pod['status']['podIP']}:{self.metrics_port()}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def admissions(self, decision: str) -> float:
        """Pod CREATE reviews the chart's replicas (those running now) decided so."""
        return sum(
            _sample(
                self.metrics(pod),
                "imageward_admission_requests_total",
                resource="pods",
                operation="CREATE",
                decision=decision,
            )
            for pod in self.ready_pods()
        )

    def log(self, pod: str) -> str:
        return self.cluster.kubectl("logs", "-n", NAMESPACE, pod, check=False).stdout

    def explain(self, pod: str) -> str:
        """What a person looks at when a pod misbehaves: its description and log."""
        described = self.cluster.kubectl("describe", "pod", pod, "-n", NAMESPACE, check=False)
        logs = self.cluster.kubectl(
            "logs", "-n", NAMESPACE, pod, "--all-containers", "--prefix", check=False
        )
        return f"{described.stdout[-4000:]}\n--- log:\n{logs.stdout[-20000:]}{logs.stderr}"

    def keep_logs(self) -> pathlib.Path:
        """The description and whole log of every release pod on the real node (kwok's
        have no logs), kept after the run like the real node's own logs, in
        /tmp/imageward-chart-node-logs/run-<pid>."""
        directory = LOG_ROOT / f"run-{os.getpid()}"
        directory.mkdir(parents=True, exist_ok=True)
        for pod in self.pods("app.kubernetes.io/instance=" + RELEASE):
            if pod["spec"].get("nodeName") != self.node.name:
                continue
            name = pod["metadata"]["name"]
            described = self.cluster.kubectl("describe", "pod", name, "-n", NAMESPACE, check=False)
            logs = self.cluster.kubectl(
                "logs", "-n", NAMESPACE, name, "--all-containers", check=False
            )
            (directory / f"{name}.log").write_text(
                f"{described.stdout}\n--- log:\n{logs.stdout}{logs.stderr}"
            )
        return directory

    def wait_rolled_out(self) -> None:
        self.cluster.kubectl(
            "rollout",
            "status",
            f"deployment/{FULLNAME}",
            "-n",
            NAMESPACE,
            "--timeout=180s",
            timeout=200,
        )


def _is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


@pytest.fixture(scope="module")
def node_registry(
    real_node: realnode.RealNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[registries.Registry]:
    """A registry on the node's address: the kubelet pulls from it, pods reach it."""
    with registries.start_anonymous(
        workdir=tmp_path_factory.mktemp("node-registry"), address=real_node.node_ip
    ) as registry:
        real_node.add_registry(registry.host)
        yield registry


@pytest.fixture(scope="module")
def session_aside(
    cluster: controlplane.ControlPlane, imageward_operator: RunningOperator
) -> Iterator[SessionAside]:
    aside = SessionAside(cluster, imageward_operator)
    try:
        aside.set_aside()
        yield aside
    finally:
        aside.restore()


@pytest.fixture
def chart_namespace(cluster: controlplane.ControlPlane) -> Iterator[str]:
    """A fresh namespace only the chart's webhooks check."""
    name = f"t-{helpers.uid()}"
    cluster.create_namespace(name, labels={CHART_NAMESPACE_LABEL: "true"})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _values(
    node: realnode.RealNode, image: images.Pushed, registry: registries.Registry
) -> dict[str, Any]:
    return {
        "image": {"repository": image.name, "digest": image.digest},
        **node.placement,
        "peering": {"name": FULLNAME},
        "registry": {"insecure": [registry.host]},
        # On the node already (pre-pull pods never pull it); registry.k8s.io is unreachable.
        "prepull": {"pauseImage": node.pause_image},
        "agent": {"containerdSocket": str(node.socket)},
        # The tests sign an image between two admissions (production: 30 s and 5 s).
        "extraEnv": [
            {"name": "IMAGEWARD_SIGNATURE_CACHE_TTL", "value": "1"},
            {"name": "IMAGEWARD_NEGATIVE_CACHE_TTL", "value": "1"},
        ],
    }


@pytest.fixture(scope="module")
def release(
    cluster: controlplane.ControlPlane,
    real_node: realnode.RealNode,
    node_registry: registries.Registry,
    operator_image: operatorimage.BuiltImage,
    session_aside: SessionAside,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    home = tmp_path_factory.mktemp("helm")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),  # helm's kube discovery cache goes to $HOME/.kube
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    image = operatorimage.push(
        operator_image, node_registry, repository="chart-node/imageward", tag=imageward.__version__
    )
    values = _values(real_node, image, node_registry)
    values_file = home / "values.json"
    values_file.write_text(json.dumps(values))
    installed = Release(cluster, real_node, env, values_file, values, image, node_registry)
    try:
        started = time.monotonic()
        # A failed install still leaves objects (webhook configurations that refuse every
        # pod): whatever happens, uninstall below.
        installed.installed = True
        # CRDs are the session's already (helm never updates or deletes crds/ anyway).
        installed.notes = installed.helm(
            "install",
            RELEASE,
            str(chart.CHART),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--skip-crds",
            "--values",
            str(values_file),
            "--wait",
            "--timeout=300s",
        )
        installed.install_seconds = time.monotonic() - started
        print(f"\nhelm install --wait: {installed.install_seconds:.1f}s")
        yield installed
    finally:
        installed.keep_logs()
        if installed.installed:
            installed.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


# -- 1. installed --------------------------------------------------------------------------


def test_both_replicas_become_ready_on_the_real_node(release: Release) -> None:
    pods = release.ready_pods()
    assert len(pods) == 2, [p["metadata"]["name"] for p in release.pods()]
    for pod in pods:
        assert pod["spec"]["nodeName"] == release.node.name
        (status,) = pod["status"]["containerStatuses"]
        assert status["imageID"].endswith(release.image.digest), status
        assert status["restartCount"] == 0, release.log(pod["metadata"]["name"])[-3000:]
    # The chart's one privileged part, the Layers-mode node agent, runs there too.
    agents = [p for p in release.pods(AGENT_SELECTOR) if p["spec"]["nodeName"] == release.node.name]
    assert len(agents) == 1, [p["spec"]["nodeName"] for p in release.pods(AGENT_SELECTOR)]
    agent = agents[0]["metadata"]["name"]
    try:
        utils.wait_for(
            f"the node agent {agent} Ready",
            lambda: _is_ready(release.cluster.get_json("pod", agent, "-n", NAMESPACE)),
            timeout=60,
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\n{release.explain(agent)}") from None
    assert "helm uninstall" in release.notes


# -- 2. the webhooks, through the Service ----------------------------------------------------------


def _dry_run_pod(cluster: controlplane.ControlPlane, namespace: str, image: str) -> str:
    pod = helpers.pod(f"dry-{helpers.uid()}", image)
    result = cluster.kubectl(
        "create",
        "--dry-run=server",
        "-n",
        namespace,
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(pod),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_webhook_configurations_point_at_the_service_and_the_apiserver_reaches_it(
    release: Release, cluster: controlplane.ControlPlane, chart_namespace: str
) -> None:
    secret = cluster.get_json("secret", f"{FULLNAME}-tls", "-n", NAMESPACE)
    ca_bundle = secret["data"]["ca.crt"]
    for kind, path in (
        ("validatingwebhookconfiguration", "/imageward-validate"),
        ("mutatingwebhookconfiguration", "/imageward-pin-digest"),
    ):
        (webhook,) = cluster.get_json(kind, FULLNAME)["webhooks"]
        service = webhook["clientConfig"]["service"]
        assert service == {"name": FULLNAME, "namespace": NAMESPACE, "path": path, "port": 443}
        # Patched in by the operator from the Secret the replicas share.
        assert webhook["clientConfig"]["caBundle"] == ca_bundle
        assert webhook["failurePolicy"] == "Fail"
    slices = cluster.get_json(
        "endpointslices", "-n", NAMESPACE, "-l", f"kubernetes.io/service-name={FULLNAME}"
    )["items"]
    addresses = {a for s in slices for e in s["endpoints"] for a in e["addresses"]}
    assert addresses == {p["status"]["podIP"] for p in release.ready_pods()}

    before = {p["metadata"]["name"]: _served(release, p) for p in release.ready_pods()}
    for _ in range(16):
        _dry_run_pod(cluster, chart_namespace, "registry.k8s.io/pause:3.10")
    after = {p["metadata"]["name"]: _served(release, p) for p in release.ready_pods()}
    served = {name: after[name] - before[name] for name in before}
    # The apiserver reached the Service's pods (aggregator routing: it dials an endpoint of
    # the Service, picked at random, and keeps that connection for the next calls).
    assert sum(served.values()) == 16, served
    print(f"\n16 reviews through the Service, by pod: {served}")


def _served(release: Release, pod: dict[str, Any]) -> float:
    return _sample(release.metrics(pod), "imageward_admission_requests_total", resource="pods")


# -- 3. peering -------------------------------------------------------------------------------


def _paused(release: Release, pod: str) -> bool:
    """Whether Kopf last paused this replica's controllers (its log says so)."""
    log = release.log(pod).lower()
    return log.rfind("pausing operations in favour of") > log.rfind("resuming operations")


def test_peering_elects_one_controller(
    release: Release, cluster: controlplane.ControlPlane
) -> None:
    names = sorted(p["metadata"]["name"] for p in release.ready_pods())

    def both_peered() -> dict[str, Any] | None:
        status = cluster.get_json("clusterkopfpeering", FULLNAME).get("status") or {}
        return status if set(names) <= set(status) else None

    peers = utils.wait_for("both replicas in the release's peering", both_peered, timeout=30)
    assert peers[names[0]]["priority"] != peers[names[1]]["priority"]
    standby = min(names, key=lambda n: peers[n]["priority"])
    controller = max(names, key=lambda n: peers[n]["priority"])
    utils.wait_for(f"{standby} to pause", lambda: _paused(release, standby), timeout=30)
    assert not _paused(release, controller), release.log(controller)[-3000:]
    # Neither joined the session operator's peering.
    session = cluster.get_json("clusterkopfpeering", SESSION_PEERING).get("status") or {}
    assert not set(names) & set(session)


# -- 4. admission by the chart's operator; the image signs itself ----------------------------------


def _signature_policy(name: str, pattern: str, key: cosign.KeyPair) -> dict[str, Any]:
    return {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "ImagePolicy",
        "metadata": {"name": name},
        "spec": {
            "mode": "Enforce",
            "match": {"images": [pattern]},
            "rules": {
                "signatures": {
                    "threshold": 1,
                    "authorities": [{"name": "release-key", "key": {"pem": key.public_pem}}],
                }
            },
            "pinDigest": True,
        },
    }


def _node_pod(node: realnode.RealNode, name: str, image: str, *command: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "app", "image": image, "command": list(command)}],
            "restartPolicy": "Never",
            "dnsPolicy": "Default",  # no cluster DNS in the harness
            "terminationGracePeriodSeconds": 5,
            **node.placement,
        },
    }


def _ready_condition(cluster: controlplane.ControlPlane, kind: str, *args: str) -> dict[str, Any]:
    status = cluster.get_json(kind, *args).get("status") or {}
    for condition in status.get("conditions") or []:
        if condition["type"] == "Ready":
            return dict(condition)
    return {}


@pytest.fixture(scope="module")
def signed_image(release: Release, operator_image: operatorimage.BuiltImage) -> images.Pushed:
    """The operator image again, in a repository of its own that the policy below covers."""
    return operatorimage.push(
        operator_image,
        release.registry,
        repository=f"chart-node-{helpers.uid()}/imageward",
        tag=imageward.__version__,
    )


def test_unsigned_refused_then_the_image_signs_itself_and_is_admitted_pinned(
    release: Release,
    cluster: controlplane.ControlPlane,
    chart_namespace: str,
    signed_image: images.Pushed,
    cosign_tool: cosign.Cosign,
) -> None:
    key = cosign_tool.generate_key_pair(f"chart-node-{helpers.uid()}")
    name = f"chart-node-signed-{helpers.uid()}"
    repository = signed_image.repository.split("/")[0]
    cluster.apply(_signature_policy(name, f"{signed_image.host}/{repository}/**", key))
    try:
        # Ready is written by the chart's controller: the session's is paused.
        utils.wait_for(
            f"ImagePolicy {name} Ready",
            lambda: _ready_condition(cluster, "imagepolicy", name).get("status") == "True",
            timeout=30,
        )
        denied, allowed = release.admissions("deny"), release.admissions("allow")

        pod = _node_pod(release.node, "unsigned", signed_image.ref, "imageward", "--version")
        refused = helpers.create(cluster, chart_namespace, pod)
        assert refused.returncode != 0
        assert f"ImagePolicy {name}: {signed_image.ref}" in refused.stderr, refused.stderr
        assert "verified by 0 of 1 authorities" in refused.stderr, refused.stderr
        assert release.admissions("deny") >= denied + 1

        cosign_tool.sign(signed_image.pinned, key)
        pod["metadata"]["name"] = "signed"

        def admitted() -> bool:
            return helpers.create(cluster, chart_namespace, pod).returncode == 0

        utils.wait_for("the signed image to be admitted", admitted, timeout=30)
        assert release.admissions("allow") >= allowed + 1
        created = cluster.get_json("pod", "signed", "-n", chart_namespace)
        assert created["spec"]["containers"][0]["image"] == (
            f"{signed_image.ref}@{signed_image.digest}"
        )

        def finished() -> dict[str, Any] | None:
            got: dict[str, Any] = cluster.get_json("pod", "signed", "-n", chart_namespace)
            phase = got.get("status", {}).get("phase")
            assert phase != "Failed", got["status"]
            return got if phase == "Succeeded" else None

        utils.wait_for("the signed pod to run on the real node", finished, timeout=120)
        logs = cluster.kubectl("logs", "-n", chart_namespace, "signed").stdout
        assert logs.strip() == f"imageward {imageward.__version__}"
    finally:
        cluster.kubectl("delete", "imagepolicy", name, "--ignore-not-found", check=False)


# -- 5. a PrePull on the real node ------------------------------------------------------------


def test_a_prepull_completes_on_the_real_node(
    release: Release,
    cluster: controlplane.ControlPlane,
    chart_namespace: str,
) -> None:
    registry = release.registry
    repository = f"chart-node-pp/{helpers.uid()}"
    pushed = registry.client().push(
        repository,
        images.small_image(f"pp-{helpers.uid()}", user="65532", platform=realnode.host_platform()),
        tag="1.0",
    )
    prepull = {
        "apiVersion": "imageward.io/v1alpha1",
        "kind": "PrePull",
        "metadata": {"name": "web", "namespace": chart_namespace},
        "spec": {"images": [pushed.ref], **release.node.placement},
    }
    cluster.apply(prepull)

    def ready() -> dict[str, Any] | None:
        status = cluster.get_json("prepull", "web", "-n", chart_namespace).get("status") or {}
        ready_ = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        return status if ready_ and ready_[0]["status"] == "True" else None

    try:
        status = utils.wait_for("the PrePull to be Ready on the real node", ready, timeout=120)
    except AssertionError as e:
        described = cluster.kubectl("describe", "prepull,daemonset,pods", "-n", chart_namespace)
        raise AssertionError(f"{e}\n{described.stdout[-4000:]}") from None
    assert status["nodes"] == {"desired": 1, "ready": 1, "failed": 0}
    assert [i["digest"] for i in status["images"]] == [pushed.digest]
    # The DaemonSet is the chart's operator's: its helper image is the release's image.
    (daemonset,) = cluster.get_json("daemonsets", "-n", chart_namespace)["items"]
    helper = daemonset["spec"]["template"]["spec"]["initContainers"][0]["image"]
    assert helper == release.image.pinned
    # The kubelet pulled the planned image into the node's containerd.
    listed = release.node.containerd.ctr("images", "ls").stdout
    assert pushed.digest in listed, listed


# -- 6. Prometheus, configured as the chart's ServiceMonitor says ------------------------------


@pytest.fixture(scope="module")
def scraping(
    release: Release, cluster: controlplane.ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[prometheus.Prometheus]:
    """The harness Prometheus scraping what the chart's ServiceMonitor selects, as
    prometheus-operator would configure it (this apiserver has no prometheus-operator,
    and Debian's Prometheus no Kubernetes discovery: the harness reads the Service's
    EndpointSlices for it, every second)."""
    rendered = chart.render(
        {
            **release.values,
            "serviceMonitor": {"enabled": True, "interval": "2s", "scrapeTimeout": "1s"},
        },
        release=RELEASE,
        namespace=NAMESPACE,
    )
    workdir = tmp_path_factory.mktemp("prometheus")

    def listed(namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = cluster.get_json("services,endpointslices", "-n", namespace)[
            "items"
        ]
        return items

    discovery = prometheus.ServiceMonitorDiscovery(
        chart.find(rendered, "ServiceMonitor"), listed, workdir
    )
    discovery.start()
    try:
        with prometheus.Prometheus(
            scrape_configs=discovery.scrape_configs(), workdir=workdir
        ) as server:
            yield server
    finally:
        discovery.stop()
    assert discovery.error is None, discovery.error


def _scraped(server: prometheus.Prometheus, pods: set[str], port: int) -> list[dict[str, Any]]:
    up = server.query(f'up{{job="{FULLNAME}"}}')
    live = [s for s in up if s["value"][1] == "1"]
    seen = {s["metric"].get("pod") for s in live}
    if seen != pods or not all(s["metric"]["instance"].endswith(f":{port}") for s in live):
        return []
    return up


def test_prometheus_scrapes_the_pods_through_their_service(
    release: Release, scraping: prometheus.Prometheus
) -> None:
    pods = {p["metadata"]["name"] for p in release.ready_pods()}
    up = utils.wait_for(
        "Prometheus to scrape both replicas",
        lambda: _scraped(scraping, pods, release.metrics_port()),
        timeout=60,
    )
    for series in up:
        assert series["metric"]["namespace"] == NAMESPACE
        assert series["metric"]["service"] == FULLNAME
        assert series["metric"]["endpoint"] == "metrics"
    # imageward's own series, from each replica (one may have answered no review yet: the
    # apiserver keeps to the connection it has).
    exported = scraping.query(f'count by (pod) ({{job="{FULLNAME}", __name__=~"imageward_.+"}})')
    assert {s["metric"]["pod"] for s in exported} == pods


# -- 7. a replica deleted under admission load ----------------------------------------------------


@dataclasses.dataclass
class Failure:
    at: float
    status: int
    message: str


class AdmissionLoad:
    """Server-side dry-run pod creations, back to back on `connections` keep-alive
    connections to the apiserver: each is reviewed by both webhooks like a real one."""

    def __init__(
        self,
        cluster: controlplane.ControlPlane,
        namespace: str,
        image: str,
        *,
        connections: int = 3,
    ) -> None:
        self.cluster = cluster
        self.path = f"/api/v1/namespaces/{namespace}/pods?dryRun=All"
        self.body = json.dumps(helpers.pod("load", image)).encode()
        self.connections = connections
        self.sent = 0
        self.failures: list[Failure] = []
        self.seconds = 0.0
        self._started = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def __enter__(self) -> AdmissionLoad:
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            for i in range(self.connections)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        self.seconds = self.elapsed()

    def _run(self) -> None:
        context = self.cluster.ssl_context()
        connection: http.client.HTTPSConnection | None = None
        while not self._stop.is_set():
            if connection is None:
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", self.cluster.port, context=context, timeout=40
                )
            try:
                connection.request(
                    "POST", self.path, self.body, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                data = response.read()
                status, message = response.status, ""
                if status != 201:
                    message = str(json.loads(data).get("message", data[:500]))
            except (OSError, http.client.HTTPException, ValueError) as e:
                connection.close()
                connection = None
                status, message = 0, f"client: {e!r}"
            with self._lock:
                self.sent += 1
                if status != 201:
                    self.failures.append(Failure(self.elapsed(), status, message))
        if connection is not None:
            connection.close()

    def report(self, what: str) -> str:
        lines = [
            f"{what}: {self.sent} pod reviews in {self.seconds:.1f}s "
            f"({self.sent / max(self.seconds, 0.001):.0f}/s), {len(self.failures)} failed"
        ]
        lines += [f"  t={f.at:.2f}s {f.status}: {f.message[:300]}" for f in self.failures[:10]]
        return "\n".join(lines)


@pytest.fixture(scope="module")
def load_image(
    release: Release, cluster: controlplane.ControlPlane, cosign_tool: cosign.Cosign
) -> Iterator[str]:
    """A signed image under a signature policy that pins: each review does the whole
    check (from the caches) and the pin."""
    registry = release.registry
    repository = f"chart-node-load-{helpers.uid()}/app"
    pushed = registry.client().push(repository, images.small_image(repository), tag="1.0")
    key = cosign_tool.generate_key_pair(f"load-{helpers.uid()}")
    cosign_tool.sign(pushed.pinned, key)
    name = f"chart-node-load-{helpers.uid()}"
    pattern = f"{registry.host}/{repository.split('/')[0]}/**"
    cluster.apply(_signature_policy(name, pattern, key))
    utils.wait_for(
        f"ImagePolicy {name} Ready",
        lambda: _ready_condition(cluster, "imagepolicy", name).get("status") == "True",
        timeout=30,
    )
    try:
        yield pushed.ref
    finally:
        cluster.kubectl("delete", "imagepolicy", name, "--ignore-not-found", check=False)


def _controller(release: Release) -> str | None:
    """The one ready replica Kopf has not paused (None while that is not settled)."""
    running = [p["metadata"]["name"] for p in release.ready_pods()]
    active = [name for name in running if not _paused(release, name)]
    return active[0] if len(running) == 2 and len(active) == 1 else None


def test_deleting_a_replica_under_admission_load(
    release: Release, cluster: controlplane.ControlPlane, chart_namespace: str, load_image: str
) -> None:
    _dry_run_pod(cluster, chart_namespace, load_image)  # warm the caches
    victim = utils.wait_for("one controller among the replicas", lambda: _controller(release))
    survivor = next(
        p["metadata"]["name"] for p in release.ready_pods() if p["metadata"]["name"] != victim
    )
    with AdmissionLoad(cluster, chart_namespace, load_image) as load:
        time.sleep(4)
        deleted_at = load.elapsed()
        cluster.kubectl("delete", "pod", victim, "-n", NAMESPACE, "--wait=false")
        utils.wait_for(
            "a replacement replica to be Ready",
            lambda: len([p for p in release.ready_pods() if p["metadata"]["name"] != victim]) == 2,
            timeout=180,
        )
        replaced_at = load.elapsed()
        cluster.kubectl(
            "wait", "--for=delete", f"pod/{victim}", "-n", NAMESPACE, "--timeout=90s", timeout=100
        )
        gone_at = load.elapsed()
        time.sleep(3)
    print(
        "\n"
        + load.report(f"replica {victim} deleted at t={deleted_at:.1f}s")
        + f"\n  replacement Ready at t={replaced_at:.1f}s, {victim} gone at t={gone_at:.1f}s"
    )
    # The standby took over the controllers when the controller went away.
    assert "resuming operations" in release.log(survivor).lower(), release.log(survivor)[-3000:]
    utils.wait_for("one controller again", lambda: _controller(release), timeout=60)
    assert load.sent > 0


# -- 8. helm upgrade ---------------------------------------------------------------------------


def test_helm_upgrade_with_a_changed_value_rolls_out_and_takes_effect(
    release: Release,
    cluster: controlplane.ControlPlane,
    chart_namespace: str,
    load_image: str,
    scraping: prometheus.Prometheus,
) -> None:
    before = {p["metadata"]["name"] for p in release.ready_pods()}
    ca_bundle = cluster.get_json("validatingwebhookconfiguration", FULLNAME)["webhooks"][0][
        "clientConfig"
    ]["caBundle"]
    release.values["metrics"] = {"port": UPGRADED_METRICS_PORT}
    release.values_file.write_text(json.dumps(release.values))
    with AdmissionLoad(cluster, chart_namespace, load_image) as load:
        started = time.monotonic()
        release.helm(
            "upgrade",
            RELEASE,
            str(chart.CHART),
            "--namespace",
            NAMESPACE,
            "--skip-crds",
            "--values",
            str(release.values_file),
            "--wait",
            "--timeout=300s",
        )
        release.wait_rolled_out()
        utils.wait_for(
            "the old replicas to be gone",
            lambda: not {p["metadata"]["name"] for p in release.pods()} & before,
            timeout=120,
        )
        upgraded = time.monotonic() - started
        time.sleep(2)
    print("\n" + load.report(f"helm upgrade (rolled out in {upgraded:.1f}s)"))

    pods = release.ready_pods()
    assert len(pods) == 2 and not {p["metadata"]["name"] for p in pods} & before
    for pod in pods:
        ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == UPGRADED_METRICS_PORT
        assert "imageward_admission_requests_total" in release.metrics(pod)  # on the new port
    service = cluster.get_json("service", FULLNAME, "-n", NAMESPACE)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["metrics"] == (
        UPGRADED_METRICS_PORT
    )
    # Prometheus follows the Service to the new pods and port without being told.
    names = {p["metadata"]["name"] for p in pods}
    utils.wait_for(
        "Prometheus to scrape the new replicas on the new port",
        lambda: _scraped(scraping, names, UPGRADED_METRICS_PORT),
        timeout=60,
    )
    # The CA the operator patched in survives the upgrade (the chart keeps the live value).
    (webhook,) = cluster.get_json("validatingwebhookconfiguration", FULLNAME)["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == ca_bundle
    _dry_run_pod(cluster, chart_namespace, load_image)


# -- 9. helm uninstall ---------------------------------------------------------------------------

#: Every namespace has these (Kubernetes makes them): they stay with the namespace.
NAMESPACE_DEFAULTS = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}


def _left_in_namespace(cluster: controlplane.ControlPlane) -> set[tuple[str, str]]:
    kinds = cluster.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout
    wanted = [k for k in kinds.split() if k not in ("events", "events.events.k8s.io")]
    items = cluster.get_json(",".join(wanted), "-n", NAMESPACE)["items"]
    return {(item["kind"], item["metadata"]["name"]) for item in items}


def _left_in_cluster(cluster: controlplane.ControlPlane) -> set[tuple[str, str]]:
    kinds = cluster.kubectl(
        "api-resources", "--verbs=list", "--namespaced=false", "-o", "name"
    ).stdout
    items = cluster.get_json(
        ",".join(kinds.split()), "-l", f"app.kubernetes.io/instance={RELEASE}"
    )["items"]
    return {(item["kind"], item["metadata"]["name"]) for item in items}


def test_helm_uninstall_leaves_only_what_the_notes_say(
    release: Release,
    cluster: controlplane.ControlPlane,
    chart_namespace: str,
    session_aside: SessionAside,
    registry_set: registries.Registries,
    cosign_tool: cosign.Cosign,
) -> None:
    notes = release.helm("get", "notes", RELEASE, "--namespace", NAMESPACE)
    assert _left_in_cluster(cluster)  # the release's ClusterRoles, webhooks, peering...
    release.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout=180s")
    release.installed = False
    tls_secret = ("Secret", f"{FULLNAME}-tls")

    def settled() -> set[tuple[str, str]] | None:
        left = _left_in_namespace(cluster)
        return left if left == NAMESPACE_DEFAULTS | {tls_secret} else None

    try:
        utils.wait_for("the release's objects to be gone", settled, timeout=120)
    except AssertionError:
        raise AssertionError(
            f"left in {NAMESPACE}: {sorted(_left_in_namespace(cluster))}"
        ) from None
    assert _left_in_cluster(cluster) == set()
    # What stays is what the NOTES said would: the operator's own Secrets (this one made
    # at start-up; the agent key only once a Layers-mode PrePull ran) and the CRDs.
    assert f"{FULLNAME}-tls" in notes and f"{FULLNAME}-agent-key" in notes
    assert "CRDs" in notes
    for crd in ("imagepolicies.imageward.io", "prepulls.imageward.io"):
        assert cluster.kubectl("get", "crd", crd, check=False).returncode == 0

    # The session's operator works as before: controllers back, and its webhooks check
    # the namespaces they skipped meanwhile.
    session_aside.restore()
    registry = registry_set.anonymous
    repository = f"chart-node-after-{helpers.uid()}/app"
    pushed = registry.client().push(repository, images.small_image(repository), tag="1.0")
    key = cosign_tool.generate_key_pair(f"after-{helpers.uid()}")
    name = f"chart-node-after-{helpers.uid()}"
    cluster.apply(_signature_policy(name, f"{registry.host}/{repository.split('/')[0]}/**", key))
    try:
        utils.wait_for(
            f"ImagePolicy {name} Ready (the session operator's controller)",
            lambda: _ready_condition(cluster, "imagepolicy", name).get("status") == "True",
            timeout=30,
        )
        refused = helpers.create(cluster, chart_namespace, helpers.pod("unsigned", pushed.ref))
        assert refused.returncode != 0 and f"ImagePolicy {name}" in refused.stderr, refused.stderr
        cosign_tool.sign(pushed.pinned, key)
        utils.wait_for(
            "the signed pod to be admitted by the session operator",
            lambda: (
                helpers.create(
                    cluster, chart_namespace, helpers.pod("signed", pushed.ref)
                ).returncode
                == 0
            ),
            timeout=30,
        )
        created = cluster.get_json("pod", "signed", "-n", chart_namespace)
        # Pinned as imageward pins: the tag kept for people, the digest for the runtime.
        assert created["spec"]["containers"][0]["image"] == f"{pushed.ref}@{pushed.digest}"
    finally:
        cluster.kubectl("delete", "imagepolicy", name, "--ignore-not-found", check=False)
