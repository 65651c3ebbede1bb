"""The chart against the real apiserver and the alerts and dashboard against a real
Prometheus.

The rendered chart (all-on values, minus the parts whose CRDs this apiserver lacks) is
applied: CRDs, RBAC, ServiceAccount, Service, Deployment, PDB, ConfigMaps and Secrets for
real in the test namespace, the webhook configurations and the peering object with
`--dry-run=server` (real ones would send every later pod of the session to a webhook that
is not running). Then `kubectl auth can-i --as` the chart's ServiceAccount shows the RBAC
grants what the operator needs and refuses what it does not.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

from imageward.localcluster import controlplane, prometheus
from tests import utils
from tests.unit.chart import chart

pytestmark = pytest.mark.cluster

FIELD_MANAGER = "imageward-tests"
# Applied with --dry-run=server only: admission-affecting or cluster-wide singletons.
DRY_RUN_KINDS = {
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ClusterKopfPeering",
}
# Needs the apiserver to have these CRDs (cert-manager, prometheus-operator): left out.
WITHOUT_FOREIGN_CRDS = {
    "tls": {"certManager": {"enabled": False}},
    "serviceMonitor": {"enabled": False},
    "prometheusRule": {"enabled": False},
}


def _apply(
    cluster: controlplane.ControlPlane, manifests: list[chart.Manifest], *, dry_run: bool
) -> list[chart.Manifest]:
    args = ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-o", "json"]
    if dry_run:
        args.append("--dry-run=server")
    result = cluster.kubectl(
        *args,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
    )
    applied = json.loads(result.stdout)
    items: list[chart.Manifest] = applied["items"] if applied["kind"] == "List" else [applied]
    return items


class Installed:
    """What the test applied: release name, namespace, rendered and server-returned objects."""

    def __init__(self, release: str, namespace: str, manifests: list[chart.Manifest]) -> None:
        self.release = release
        self.namespace = namespace
        self.manifests = manifests
        self.applied: dict[tuple[str, str], chart.Manifest] = {}

    def name_of(self, kind: str) -> str:
        name: str = chart.find(self.manifests, kind)["metadata"]["name"]
        return name


@pytest.fixture
def installed(cluster: controlplane.ControlPlane, namespace: str) -> Iterator[Installed]:
    release = namespace  # unique cluster-scoped names (ClusterRole, webhook configurations)
    manifests = chart.render(
        WITHOUT_FOREIGN_CRDS,
        files=[chart.ALL_ON],
        release=release,
        namespace=namespace,
        include_crds=True,
    )
    crds = chart.find_all(manifests, "CustomResourceDefinition")
    rest = [m for m in manifests if m["kind"] != "CustomResourceDefinition"]
    real = [m for m in rest if m["kind"] not in DRY_RUN_KINDS]
    dry = [m for m in rest if m["kind"] in DRY_RUN_KINDS]
    assert len(dry) == len(DRY_RUN_KINDS)
    installed = Installed(release, namespace, rest)
    cluster_scoped = [m for m in real if "namespace" not in m["metadata"]]
    try:
        # CRDs the way Helm installs crds/: first, and for real (the imageward ones are
        # the same files every other cluster test applies).
        cluster.apply(*crds)
        for crd in crds:
            cluster.kubectl(
                "wait",
                "--for=condition=Established",
                f"crd/{crd['metadata']['name']}",
                "--timeout=30s",
            )
        for item in _apply(cluster, real, dry_run=False) + _apply(cluster, dry, dry_run=True):
            installed.applied[(item["kind"], item["metadata"]["name"])] = item
        yield installed
    finally:
        for manifest in cluster_scoped:
            cluster.kubectl(
                "delete",
                manifest["kind"].lower(),
                manifest["metadata"]["name"],
                "--ignore-not-found",
                "--wait=false",
                check=False,
            )


def test_every_object_is_accepted_by_the_apiserver(installed: Installed) -> None:
    kinds = {kind for kind, _ in installed.applied}
    assert kinds >= {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "DaemonSet",  # the node agent of Layers mode
        "PodDisruptionBudget",
        "ConfigMap",
        "Secret",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ClusterKopfPeering",
    }
    # The server filled in its defaults and kept what the chart said.
    validating = installed.applied[
        ("ValidatingWebhookConfiguration", installed.name_of("ValidatingWebhookConfiguration"))
    ]
    (webhook,) = validating["webhooks"]
    assert webhook["clientConfig"]["service"]["path"] == "/imageward-validate"
    assert webhook["matchPolicy"] == "Equivalent"
    mutating = installed.applied[
        ("MutatingWebhookConfiguration", installed.name_of("MutatingWebhookConfiguration"))
    ]
    assert mutating["webhooks"][0]["reinvocationPolicy"] == "IfNeeded"


def test_deployment_places_two_replicas_on_different_nodes(
    cluster: controlplane.ControlPlane, installed: Installed
) -> None:
    name = installed.name_of("Deployment")
    ns = installed.namespace

    def ready() -> bool:
        status = cluster.get_json("deployment", name, "-n", ns).get("status", {})
        return bool(status.get("readyReplicas") == 2)

    utils.wait_for(f"deployment {ns}/{name} ready", ready, timeout=90)
    # The Deployment's own selector: the release's agent DaemonSet has pods there too.
    selector = chart.find(installed.manifests, "Deployment")["spec"]["selector"]["matchLabels"]
    pods = cluster.get_json(
        "pods", "-n", ns, "-l", ",".join(f"{k}={v}" for k, v in selector.items())
    )["items"]
    nodes = {
        pod["spec"]["nodeName"] for pod in pods if not pod["metadata"].get("deletionTimestamp")
    }
    assert len(nodes) == 2  # the all-on values ask for hard anti-affinity
    (pod_spec,) = {json.dumps(pod["spec"]["securityContext"], sort_keys=True) for pod in pods}
    assert json.loads(pod_spec)["runAsNonRoot"] is True


def _can_i(cluster: controlplane.ControlPlane, installed: Installed, *args: str) -> bool:
    subject = f"system:serviceaccount:{installed.namespace}:{installed.name_of('ServiceAccount')}"
    result = cluster.kubectl("auth", "can-i", *args, f"--as={subject}", check=False)
    answer = result.stdout.strip()
    assert answer in {"yes", "no"}, f"kubectl auth can-i {args}: {result.stdout}{result.stderr}"
    return answer == "yes"


def _agent_key(installed: Installed) -> str:
    env = chart.env_of(chart.find(installed.manifests, "Deployment"))
    name: str = env["IMAGEWARD_AGENT_KEY_SECRET"]
    return name


def test_service_account_may_do_what_the_operator_needs(
    cluster: controlplane.ControlPlane, installed: Installed
) -> None:
    ns = installed.namespace
    tls = chart.env_of(chart.find(installed.manifests, "Deployment"))["IMAGEWARD_TLS_SECRET"]
    validating = installed.name_of("ValidatingWebhookConfiguration")
    mutating = installed.name_of("MutatingWebhookConfiguration")
    needed: list[tuple[str, ...]] = [
        # Controllers and admission inputs.
        ("watch", "imagepolicies.imageward.io"),
        ("patch", "imagepolicies.imageward.io", "--subresource=status"),
        ("list", "prepulls.imageward.io", "--all-namespaces"),
        ("patch", "prepulls.imageward.io", "--subresource=status", "-n", "shop"),
        ("list", "pods", "--all-namespaces"),
        ("watch", "nodes"),
        ("list", "namespaces"),
        ("watch", "statefulsets.apps", "--all-namespaces"),
        ("list", "cronjobs.batch", "--all-namespaces"),
        ("get", "serviceaccounts", "-n", "shop"),
        ("get", "secrets", "-n", "shop"),  # pull secrets, one by name
        ("create", "events", "-n", "shop"),
        # PrePull's own objects.
        ("create", "daemonsets.apps", "-n", "shop"),
        ("patch", "daemonsets.apps", "-n", "shop"),
        ("delete", "daemonsets.apps", "-n", "shop"),
        # Layers-mode plans, in the operator's namespace only; the agent's sealing key.
        ("create", "configmaps", "-n", ns),
        ("watch", "configmaps", "-n", ns),
        ("delete", "configmaps", "-n", ns),
        ("get", f"secrets/{_agent_key(installed)}", "-n", ns),
        ("get", "configmaps", "-n", "shop"),  # keyless trustedRoot, by name
        # Key material granted by name to be watched (keyMaterial.watch).
        ("watch", "secrets/release-key", "-n", "default"),
        ("watch", "configmaps/trusted-root", "-n", "default"),
        # TLS: its Secret, and the CA patched into its two configurations.
        ("create", "secrets", "-n", ns),
        ("patch", f"secrets/{tls}", "-n", ns),
        ("patch", f"validatingwebhookconfigurations/{validating}"),
        ("patch", f"mutatingwebhookconfigurations/{mutating}"),
        # Kopf.
        ("patch", "clusterkopfpeerings.kopf.dev/imageward"),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    refused = [args for args in needed if not _can_i(cluster, installed, *args)]
    assert not refused


def test_service_account_may_not_do_more(
    cluster: controlplane.ControlPlane, installed: Installed
) -> None:
    ns = installed.namespace
    validating = installed.name_of("ValidatingWebhookConfiguration")
    unneeded: list[tuple[str, ...]] = [
        ("delete", "secrets", "--all-namespaces"),
        ("list", "secrets", "-n", "shop"),
        ("watch", "secrets", "--all-namespaces"),
        ("watch", "secrets", "-n", "default"),  # only the named key
        ("list", "secrets/another-secret", "-n", "default"),
        ("create", "secrets", "-n", "shop"),
        ("patch", "secrets/some-other-secret", "-n", ns),
        ("delete", f"secrets/{installed.name_of('Secret')}", "-n", ns),
        ("create", "clusterrolebindings"),
        ("bind", "clusterroles"),
        ("escalate", "clusterroles"),
        ("impersonate", "serviceaccounts"),
        ("create", "serviceaccounts/token", "-n", ns),
        ("create", "pods", "-n", "shop"),
        ("create", "pods", "-n", ns),
        ("create", "configmaps", "-n", "shop"),
        ("update", "configmaps", "-n", "shop"),
        ("list", "configmaps", "-n", "shop"),
        ("patch", f"secrets/{_agent_key(installed)}", "-n", ns),
        ("delete", f"secrets/{_agent_key(installed)}", "-n", ns),
        ("delete", "pods", "-n", "shop"),
        ("create", "pods/exec", "-n", "shop"),
        ("update", "deployments.apps", "-n", "shop"),
        ("delete", "imagepolicies.imageward.io"),
        ("create", "validatingwebhookconfigurations"),
        ("patch", "validatingwebhookconfigurations/someone-elses-webhook"),
        ("delete", f"validatingwebhookconfigurations/{validating}"),
        ("patch", "mutatingwebhookconfigurations/someone-elses-webhook"),
        ("patch", "clusterkopfpeerings.kopf.dev/another-operator"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "nodes"),
    ]
    granted = [args for args in unneeded if _can_i(cluster, installed, *args)]
    assert not granted


# -- a real Prometheus -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus_with_alerts(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[prometheus.Prometheus]:
    # Nothing to scrape: parsing and rule loading need no data.
    with prometheus.Prometheus(
        [],
        rule_files=[chart.ALERTS],
        workdir=tmp_path_factory.mktemp("prometheus"),
    ) as server:
        yield server


@pytest.mark.parametrize(
    "expression",
    chart.dashboard_expressions() + [rule["expr"] for rule in chart.alert_rules()],
)
def test_expression_parses_in_prometheus(
    prometheus_with_alerts: prometheus.Prometheus, expression: str
) -> None:
    prometheus_with_alerts.query(expression)  # PrometheusError on a parse error


def test_a_broken_expression_is_reported(prometheus_with_alerts: prometheus.Prometheus) -> None:
    with pytest.raises(prometheus.PrometheusError, match="parse error"):
        prometheus_with_alerts.query("sum by (le (rate(imageward_admission_requests_total[1m]))")


def test_prometheus_loads_the_alert_rules_file(
    prometheus_with_alerts: prometheus.Prometheus,
) -> None:
    expected = {rule["alert"] for rule in chart.alert_rules()}

    def evaluated() -> dict[str, Any] | None:
        groups = prometheus_with_alerts.api("rules", type="alert")["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        if set(rules) == expected and all(r["health"] == "ok" for r in rules.values()):
            return rules
        return None

    rules = utils.wait_for("the alert rules evaluated", evaluated, timeout=30)
    for rule in chart.alert_rules():
        loaded = rules[rule["alert"]]
        assert loaded["labels"]["severity"] == rule["labels"]["severity"]
        assert loaded["state"] == "inactive"  # no data, nothing fires


# -- helm itself -------------------------------------------------------------------------------


def test_helm_install_upgrade_keeps_the_ca_bundle_the_operator_patched(
    cluster: controlplane.ControlPlane, namespace: str, tmp_path: pathlib.Path
) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }
    values = tmp_path / "values.json"
    values.write_text(
        json.dumps(
            {
                **WITHOUT_FOREIGN_CRDS,
                # One standalone replica: no ClusterKopfPeering "imageward" left for the
                # operators other tests run.
                "replicaCount": 1,
                "peering": {"enabled": False},
                # Real webhook configurations that select no namespace of the session.
                "webhook": {
                    "failurePolicy": "Ignore",
                    "namespaceSelectorExpressions": [
                        {"key": "imageward.io/chart-test", "operator": "In", "values": [namespace]}
                    ],
                },
            }
        )
    )
    release = namespace
    common = ["--namespace", namespace, "--values", str(chart.ALL_ON), "--values", str(values)]
    chart.helm("install", release, str(chart.CHART), *common, "--wait", "--timeout=90s", env=env)
    configuration = f"{release}-imageward"
    try:
        # What the operator does at start-up: patch its CA into the configuration.
        ca_bundle = base64.b64encode(cluster.ca.cert_pem).decode()
        cluster.kubectl(
            "patch",
            "validatingwebhookconfiguration",
            configuration,
            "--type=json",
            "-p",
            json.dumps(
                [{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": ca_bundle}]
            ),
        )
        chart.helm(
            "upgrade",
            release,
            str(chart.CHART),
            *common,
            "--set=webhook.timeoutSeconds=20",
            "--wait",
            "--timeout=90s",
            env=env,
        )
        (webhook,) = cluster.get_json("validatingwebhookconfiguration", configuration)["webhooks"]
        assert webhook["timeoutSeconds"] == 20
        assert webhook["clientConfig"]["caBundle"] == ca_bundle
    finally:
        chart.helm("uninstall", release, "--namespace", namespace, "--wait", env=env, check=False)
    gone = cluster.kubectl("get", "validatingwebhookconfiguration", configuration, check=False)
    assert gone.returncode != 0
