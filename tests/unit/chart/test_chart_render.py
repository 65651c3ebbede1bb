"""charts/imageward rendered by the real helm: lint, schema, and what each object says."""

from __future__ import annotations

import json
import pathlib
import tarfile
from typing import Any

import pytest
import yaml

from imageward import settings
from tests.unit.chart import chart

VALUE_SETS = {"default": (), "all-on": (chart.ALL_ON,)}


@pytest.fixture(scope="module")
def default() -> list[chart.Manifest]:
    return chart.render()


@pytest.fixture(scope="module")
def all_on() -> list[chart.Manifest]:
    return chart.render(files=[chart.ALL_ON])


# -- lint, template, schema --------------------------------------------------------------------


@pytest.mark.parametrize("files", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_is_clean(files: tuple[pathlib.Path, ...]) -> None:
    args = ["lint", str(chart.CHART), "--strict", "--namespace", chart.NAMESPACE]
    for path in files:
        args += ["--values", str(path)]
    output = chart.helm(*args).stdout
    assert "[WARNING]" not in output and "[ERROR]" not in output, output
    assert "0 chart(s) failed" in output


@pytest.mark.parametrize("files", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_template_renders_unique_named_objects(files: tuple[pathlib.Path, ...]) -> None:
    manifests = chart.render(files=files, include_crds=True)
    keys = [(m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]) for m in manifests]
    assert len(keys) == len(set(keys))
    for manifest in manifests:
        assert manifest["apiVersion"] and manifest["metadata"]["name"]
        labels = manifest["metadata"].get("labels", {})
        if manifest["kind"] != "CustomResourceDefinition":
            assert labels["app.kubernetes.io/instance"] == chart.RELEASE, manifest["kind"]
        # Roles granting a watch of named key material live in that object's namespace.
        if manifest["kind"] in {"Deployment", "Service", "ConfigMap", "Secret", "Role"} and (
            chart.component_of(manifest) != "key-material"
        ):
            assert manifest["metadata"]["namespace"] == chart.NAMESPACE


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"webhook": {"failurePolicy": "Maybe"}}, "/webhook/failurePolicy"),
        ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
        ({"webhook": {"excludedNamespaces": ["Not_A_Namespace"]}}, "/webhook/excludedNamespaces"),
        ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
        ({"podAntiAffinity": "sometimes"}, "/podAntiAffinity"),
        ({"registry": {"insecure": ["http://registry:5000"]}}, "/registry/insecure"),
        ({"tls": {"certManager": {"issuerRef": {"kind": "Vault"}}}}, "/tls/certManager/issuerRef"),
        ({"prometheusRule": {"disabledAlerts": ["NoSuchAlert"]}}, "/prometheusRule"),
        ({"replicas": 2}, "replicas"),  # a typo of replicaCount
    ],
)
def test_schema_refuses_a_bad_value(values: dict[str, Any], complaint: str) -> None:
    error = chart.render_error(values)
    assert "schema" in error and complaint in error, error


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"webhook": {"timeoutSeconds": 8, "admissionDeadline": 8}}, "admissionDeadline"),
        ({"peering": {"enabled": False}}, "replicaCount: 1"),
        (
            {"registry": {"credentials": {"existingSecret": "a", "dockerConfigJson": "{}"}}},
            "not both",
        ),
    ],
)
def test_values_that_contradict_each_other_are_refused(
    values: dict[str, Any], complaint: str
) -> None:
    assert complaint in chart.render_error(values)


# -- the Deployment ----------------------------------------------------------------------------


def test_deployment_runs_two_hardened_replicas(default: list[chart.Manifest]) -> None:
    deployment = chart.find(default, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["args"] == ["run", "--liveness=http://0.0.0.0:8081/healthz"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"webhook": 9443, "metrics": 8080, "health": 8081}
    # Soft spreading: preferred anti-affinity per node, zone spread that never blocks.
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert spread["labelSelector"]["matchLabels"] == selector
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # Only /tmp is writable.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]


def test_operator_environment_names_the_objects_the_chart_made(
    default: list[chart.Manifest],
) -> None:
    env = chart.env_of(chart.find(default, "Deployment"))
    service = chart.find(default, "Service")["metadata"]["name"]
    validating = chart.find(default, "ValidatingWebhookConfiguration")["metadata"]["name"]
    mutating = chart.find(default, "MutatingWebhookConfiguration")["metadata"]["name"]
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["IMAGEWARD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["IMAGEWARD_WEBHOOK_SERVICE"] == service
    assert env["IMAGEWARD_VALIDATING_WEBHOOK"] == validating
    assert env["IMAGEWARD_MUTATING_WEBHOOK"] == mutating
    assert env["IMAGEWARD_TLS_SECRET"] == "imageward-tls"
    assert env["IMAGEWARD_CERT_MANAGER"] == "false"
    assert "IMAGEWARD_CERT_DIR" not in env
    assert env["IMAGEWARD_CREATE_WEBHOOK_CONFIGURATIONS"] == "false"
    assert env["IMAGEWARD_WEBHOOK_FAILURE_POLICY"] == "Fail"
    assert env["IMAGEWARD_WEBHOOK_PORT"] == "9443"
    assert env["IMAGEWARD_WEBHOOK_TIMEOUT"] == "10"
    assert env["IMAGEWARD_ADMISSION_DEADLINE"] == "8"
    assert env["IMAGEWARD_METRICS_PORT"] == "8080"
    assert env["IMAGEWARD_EXCLUDED_NAMESPACES"] == f"kube-system,{chart.NAMESPACE}"
    image = chart.find(default, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/imageward/imageward:0.1.0"
    assert env["IMAGEWARD_HELPER_IMAGE"] == image
    agent = chart.find(default, "DaemonSet", component="agent")
    assert agent["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert env["IMAGEWARD_AGENT_ENABLED"] == "true"
    assert env["IMAGEWARD_AGENT_SELECTOR"] == (
        "app.kubernetes.io/name=imageward-agent,app.kubernetes.io/instance=imageward"
    )
    assert env["IMAGEWARD_AGENT_KEY_SECRET"] == "imageward-agent-key"
    assert env["IMAGEWARD_PREPULL_MAX_LAYERS"] == "256"
    assert env["IMAGEWARD_PREPULL_MAX_LAYERS_PER_NAMESPACE"] == "32"
    assert "IMAGEWARD_PREPULL_CROSS_NAMESPACE" not in env
    assert env["IMAGEWARD_PAUSE_IMAGE"].startswith("registry.k8s.io/pause:")
    for absent in (
        "IMAGEWARD_DOCKER_CONFIG",
        "IMAGEWARD_DOCKER_CONFIG_REGISTRIES",
        "IMAGEWARD_REGISTRY_CA_BUNDLE",
    ):
        assert absent not in env


def test_all_on_mounts_registry_credentials_and_ca(all_on: list[chart.Manifest]) -> None:
    deployment = chart.find(all_on, "Deployment")
    env = chart.env_of(deployment)
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["IMAGEWARD_DOCKER_CONFIG"] == mounts["registry-credentials"] + "/config.json"
    assert env["IMAGEWARD_REGISTRY_CA_BUNDLE"] == mounts["registry-ca"] + "/ca.crt"
    secret = chart.find(all_on, "Secret")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert volumes["registry-credentials"]["secret"]["secretName"] == secret["metadata"]["name"]
    configmaps = {m["metadata"]["name"] for m in chart.find_all(all_on, "ConfigMap")}
    assert volumes["registry-ca"]["configMap"]["name"] in configmaps
    assert env["IMAGEWARD_INSECURE_REGISTRIES"] == "registry.local:5000"
    # The operator's credentials are scoped to the registries named.
    assert env["IMAGEWARD_DOCKER_CONFIG_REGISTRIES"] == "registry.local:5000,*.acme.io"
    assert env["IMAGEWARD_REGISTRY_MIRRORS"] == (
        "docker.io=mirror.local:5000,ghcr.io=mirror.local:5001"
    )
    assert env["IMAGEWARD_EXCLUDED_NAMESPACES"] == (
        f"kube-system,{chart.NAMESPACE},cert-manager,monitoring"
    )
    assert pod["containers"][0]["image"].startswith("ghcr.io/imageward/imageward@sha256:")
    assert pod["containers"][0]["args"][0] == "--verbose"


def test_standalone_single_replica_has_no_peering_and_no_pdb() -> None:
    manifests = chart.render({"replicaCount": 1, "peering": {"enabled": False}})
    container = chart.find(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert "--standalone" in container["args"]
    assert not chart.find_all(manifests, "PodDisruptionBudget")
    assert not chart.find_all(manifests, "ClusterKopfPeering")


# -- Service, PDB, webhooks --------------------------------------------------------------------


def test_service_exposes_webhook_on_443_and_metrics(default: list[chart.Manifest]) -> None:
    service = chart.find(default, "Service")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"webhook": (443, "webhook"), "metrics": (8080, "metrics")}
    pod_labels = chart.find(default, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_pdb_keeps_one_webhook_server(default: list[chart.Manifest]) -> None:
    pdb = chart.find(default, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    selector = chart.find(default, "Deployment")["spec"]["selector"]
    assert pdb["spec"]["selector"] == selector


def test_peering_object_is_the_operators(default: list[chart.Manifest]) -> None:
    peering = chart.find(default, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "imageward"
    assert chart.env_of(chart.find(default, "Deployment"))["IMAGEWARD_PEERING_NAME"] == "imageward"


def test_a_second_installation_peers_under_its_own_name() -> None:
    """Two releases in one cluster: each one's replicas elect a controller among themselves
    (one shared peering would leave a single controller for both, or pause both)."""
    manifests = chart.render({"peering": {"name": "imageward-canary"}})
    assert chart.find(manifests, "ClusterKopfPeering")["metadata"]["name"] == "imageward-canary"
    env = chart.env_of(chart.find(manifests, "Deployment"))
    assert env["IMAGEWARD_PEERING_NAME"] == "imageward-canary"
    rules = _rules(chart.find(manifests, "ClusterRole"))
    assert _verbs_for(rules, "kopf.dev", "clusterkopfpeerings")["patch"] == {"imageward-canary"}
    assert settings.from_env(environ=_operator_environ(manifests)).peering_name == (
        "imageward-canary"
    )
    assert "/peering/name" in chart.render_error({"peering": {"name": "Imageward"}})


def _expected_selector(*extra: str) -> dict[str, Any]:
    excluded = ["kube-system", chart.NAMESPACE, *extra]
    return {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}
        ]
    }


def test_validating_webhook(default: list[chart.Manifest]) -> None:
    configuration = chart.find(default, "ValidatingWebhookConfiguration")
    (webhook,) = configuration["webhooks"]
    assert webhook["clientConfig"] == {
        "service": {
            "name": chart.find(default, "Service")["metadata"]["name"],
            "namespace": chart.NAMESPACE,
            "path": "/imageward-validate",
            "port": 443,
        }
    }
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["operations"]))
        for r in webhook["rules"]
    }
    assert rules == {
        (("",), ("pods",), ("CREATE", "UPDATE")),
        (("",), ("pods/ephemeralcontainers",), ("UPDATE",)),
        (
            ("apps",),
            ("deployments", "replicasets", "statefulsets", "daemonsets"),
            ("CREATE", "UPDATE"),
        ),
        (("batch",), ("jobs", "cronjobs"), ("CREATE", "UPDATE")),
    }
    assert webhook["namespaceSelector"] == _expected_selector()
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["timeoutSeconds"] == 10
    assert webhook["sideEffects"] == "NoneOnDryRun"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["matchPolicy"] == "Equivalent"
    assert "annotations" not in configuration["metadata"]


def test_mutating_webhook_pins_digests_of_new_images(default: list[chart.Manifest]) -> None:
    (webhook,) = chart.find(default, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["clientConfig"]["service"]["path"] == "/imageward-pin-digest"
    assert "caBundle" not in webhook["clientConfig"]
    # Created pods, images an update changes, ephemeral containers (kubectl debug).
    assert [(r["resources"], r["operations"]) for r in webhook["rules"]] == [
        (["pods"], ["CREATE", "UPDATE"]),
        (["pods/ephemeralcontainers"], ["UPDATE"]),
    ]
    assert webhook["reinvocationPolicy"] == "IfNeeded"
    assert webhook["namespaceSelector"] == _expected_selector()
    assert webhook["sideEffects"] == "NoneOnDryRun"


def test_webhook_values_reach_both_configurations(all_on: list[chart.Manifest]) -> None:
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        (webhook,) = chart.find(all_on, kind)["webhooks"]
        assert webhook["failurePolicy"] == "Ignore"
        assert webhook["timeoutSeconds"] == 15
        expected = _expected_selector("cert-manager", "monitoring")
        expected["matchExpressions"].append(
            {"key": "imageward.io/ignore", "operator": "DoesNotExist"}
        )
        assert webhook["namespaceSelector"] == expected
        assert webhook["objectSelector"]["matchExpressions"][0]["key"] == "imageward.io/skip"


def test_mutating_webhook_can_be_turned_off() -> None:
    manifests = chart.render({"webhook": {"mutating": {"enabled": False}}})
    assert not chart.find_all(manifests, "MutatingWebhookConfiguration")
    # Empty, not absent: the operator's default names one, whose pins it would ask for.
    assert chart.env_of(chart.find(manifests, "Deployment"))["IMAGEWARD_MUTATING_WEBHOOK"] == ""
    resources = {
        resource
        for rule in chart.find(manifests, "ClusterRole")["rules"]
        for resource in rule["resources"]
    }
    assert "mutatingwebhookconfigurations" not in resources


# -- RBAC --------------------------------------------------------------------------------------


def _rules(manifest: chart.Manifest) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = manifest["rules"]
    return rules


def _verbs_for(rules: list[dict[str, Any]], group: str, resource: str) -> dict[str, set[str]]:
    """verb -> resourceNames ('*' for any name) granted on group/resource."""
    granted: dict[str, set[str]] = {}
    for rule in rules:
        if group in rule["apiGroups"] and resource in rule["resources"]:
            for verb in rule["verbs"]:
                granted.setdefault(verb, set()).update(rule.get("resourceNames") or ["*"])
    return granted


def test_rbac_has_no_wildcards_and_reads_secrets_only_by_name(
    default: list[chart.Manifest],
) -> None:
    cluster_rules = _rules(chart.find(default, "ClusterRole"))
    for rule in cluster_rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
    assert _verbs_for(cluster_rules, "", "secrets") == {"get": {"*"}}
    for group, resource in [
        ("rbac.authorization.k8s.io", "clusterrolebindings"),
        ("rbac.authorization.k8s.io", "clusterroles"),
        ("", "serviceaccounts/token"),
        ("", "pods/exec"),
    ]:
        assert not _verbs_for(cluster_rules, group, resource)
    assert set(_verbs_for(cluster_rules, "", "pods")) == {"get", "list", "watch"}
    assert set(_verbs_for(cluster_rules, "apps", "deployments")) == {"get", "list", "watch"}
    assert "create" in _verbs_for(cluster_rules, "apps", "daemonsets")
    assert set(_verbs_for(cluster_rules, "imageward.io", "imagepolicies/status")) <= {
        "get",
        "patch",
    }
    assert _verbs_for(cluster_rules, "kopf.dev", "clusterkopfpeerings")["patch"] == {"imageward"}


def test_rbac_patches_only_the_charts_webhook_configurations(
    default: list[chart.Manifest],
) -> None:
    rules = _rules(chart.find(default, "ClusterRole"))
    group = "admissionregistration.k8s.io"
    for kind, resource in [
        ("ValidatingWebhookConfiguration", "validatingwebhookconfigurations"),
        ("MutatingWebhookConfiguration", "mutatingwebhookconfigurations"),
    ]:
        name = chart.find(default, kind)["metadata"]["name"]
        assert _verbs_for(rules, group, resource) == {"get": {name}, "patch": {name}}


def test_tls_secret_is_handled_by_a_role_in_the_release_namespace(
    default: list[chart.Manifest],
) -> None:
    role = chart.find(default, "Role")
    assert role["metadata"]["namespace"] == chart.NAMESPACE
    granted = _verbs_for(_rules(role), "", "secrets")
    assert granted.pop("create") == {"*"}
    assert granted.pop("get") == {"imageward-tls", "imageward-agent-key"}
    assert granted == {verb: {"imageward-tls"} for verb in ("list", "watch", "update", "patch")}
    # Layers-mode plans are ConfigMaps of the release namespace; elsewhere configmaps are
    # only read by name (keyless trustedRoot), never written.
    assert set(_verbs_for(_rules(role), "", "configmaps")) == {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
    }
    assert _verbs_for(_rules(chart.find(default, "ClusterRole")), "", "configmaps") == {
        "get": {"*"}
    }
    service_account = chart.find(default, "ServiceAccount")["metadata"]["name"]
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        (subject,) = chart.find(default, kind)["subjects"]
        assert subject == {
            "kind": "ServiceAccount",
            "name": service_account,
            "namespace": chart.NAMESPACE,
        }
    pod = chart.find(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == service_account


# -- the node agent of Layers mode -------------------------------------------------------------


def test_one_agent_daemonset_in_the_release_namespace(default: list[chart.Manifest]) -> None:
    agent = chart.find(default, "DaemonSet", component="agent")
    assert agent["metadata"]["namespace"] == chart.NAMESPACE
    pod = agent["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "imageward-agent"
    (container,) = pod["containers"]
    assert container["args"][:2] == ["agent", "--from-cluster"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    context = container["securityContext"]
    assert context["runAsUser"] == 0 and context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["containerd"]["hostPath"] == {
        "path": "/run/containerd/containerd.sock",
        "type": "Socket",
    }
    # The only Secret it sees: the sealing key, as a file; optional, as the operator makes it.
    assert volumes["agent-key"]["secret"]["secretName"] == "imageward-agent-key"
    assert volumes["agent-key"]["secret"]["optional"] is True
    secret_volumes = [v for v in pod["volumes"] if "secret" in v]
    assert [v["name"] for v in secret_volumes] == ["agent-key"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_agent_pods_are_never_selected_as_webhook_servers(default: list[chart.Manifest]) -> None:
    agent_labels = chart.find(default, "DaemonSet", component="agent")["spec"]["template"][
        "metadata"
    ]["labels"]
    for kind, path in [
        ("Service", ("spec", "selector")),
        ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
        ("Deployment", ("spec", "selector", "matchLabels")),
    ]:
        selector: Any = chart.find(default, kind)
        for key in path:
            selector = selector[key]
        assert not selector.items() <= agent_labels.items(), kind
    env = chart.env_of(chart.find(default, "Deployment"))
    wanted = dict(item.split("=") for item in env["IMAGEWARD_AGENT_SELECTOR"].split(","))
    assert wanted.items() <= agent_labels.items()


def test_agent_rbac_reads_no_secret_and_patches_only_pod_status(
    default: list[chart.Manifest],
) -> None:
    role = _rules(chart.find(default, "Role", component="agent"))
    cluster_role = _rules(chart.find(default, "ClusterRole", component="agent"))
    for rules in (role, cluster_role):
        for rule in rules:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], rule
        assert not _verbs_for(rules, "", "secrets")
    assert set(_verbs_for(role, "", "configmaps")) == {"get", "list", "watch"}
    assert set(_verbs_for(role, "", "pods")) == {"get"}
    assert set(_verbs_for(role, "", "pods/status")) == {"patch"}
    assert set(_verbs_for(cluster_role, "", "nodes")) == {"get"}
    granted = {
        (r, v) for rule in [*role, *cluster_role] for r in rule["resources"] for v in rule["verbs"]
    }
    assert granted == {
        ("configmaps", "get"),
        ("configmaps", "list"),
        ("configmaps", "watch"),
        ("pods", "get"),
        ("pods/status", "patch"),
        ("nodes", "get"),
    }
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        (subject,) = chart.find(default, kind, component="agent")["subjects"]
        assert subject["name"] == "imageward-agent"


def test_agent_values_reach_the_daemonset() -> None:
    manifests = chart.render(
        {
            "agent": {
                "containerdSocket": "/run/k3s/containerd/containerd.sock",
                "maxBytesPerSecond": "50Mi",
                "leaseTTL": "12h",
                "tolerations": [],
                "priorityClassName": "system-node-critical",
            },
            "registry": {"insecure": ["registry.local:5000"]},
            "prepull": {"crossNamespace": {"namespaces": ["platform-tools"]}},
        }
    )
    agent = chart.find(manifests, "DaemonSet", component="agent")
    pod = agent["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--containerd-socket=/run/k3s/containerd/containerd.sock" in container["args"]
    assert "--max-bytes-per-second=50Mi" in container["args"]
    assert "--lease-ttl=12h" in container["args"]
    assert {"name": "IMAGEWARD_INSECURE_REGISTRIES", "value": "registry.local:5000"} in container[
        "env"
    ]
    assert pod["priorityClassName"] == "system-node-critical"
    assert "tolerations" not in pod
    env = chart.env_of(chart.find(manifests, "Deployment"))
    assert env["IMAGEWARD_PREPULL_CROSS_NAMESPACE"] == "platform-tools"


def test_without_the_agent_layers_mode_is_refused_not_waited_for() -> None:
    manifests = chart.render({"agent": {"enabled": False}})
    assert not [m for m in manifests if chart.component_of(m) == "agent"]
    env = chart.env_of(chart.find(manifests, "Deployment"))
    assert env["IMAGEWARD_AGENT_ENABLED"] == "false"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"agent": {"containerdSocket": "run/containerd.sock"}}, "/agent/containerdSocket"),
        ({"agent": {"maxBytesPerSecond": "fast"}}, "/agent/maxBytesPerSecond"),
        ({"agent": {"enable": True}}, "enable"),
        ({"prepull": {"maxLayersPrePulls": 1000}}, "/prepull/maxLayersPrePulls"),
        ({"prepull": {"crossNamespace": {"namespaces": ["Bad_NS"]}}}, "/prepull/crossNamespace"),
    ],
)
def test_schema_refuses_bad_agent_values(values: dict[str, Any], complaint: str) -> None:
    error = chart.render_error(values)
    assert "schema" in error and complaint in error, error


# -- cert-manager ------------------------------------------------------------------------------


def test_cert_manager_issues_the_certificate_and_injects_the_ca(
    all_on: list[chart.Manifest],
) -> None:
    certificate = chart.find(all_on, "Certificate")
    issuer = chart.find(all_on, "Issuer")
    service = chart.find(all_on, "Service")["metadata"]["name"]
    assert certificate["spec"]["secretName"] == "imageward-tls"
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert f"{service}.{chart.NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    inject = f"{chart.NAMESPACE}/{certificate['metadata']['name']}"
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        configuration = chart.find(all_on, kind)
        assert configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == inject
    deployment = chart.find(all_on, "Deployment")
    env = chart.env_of(deployment)
    assert env["IMAGEWARD_CERT_MANAGER"] == "true"
    assert "IMAGEWARD_TLS_SECRET" not in env
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["IMAGEWARD_CERT_DIR"] == mounts["tls"]
    assert volumes["tls"]["secret"]["secretName"] == certificate["spec"]["secretName"]
    # The operator reads no Secret of its namespace but the agent key, and does not touch
    # the configurations.
    role = chart.find(all_on, "Role")
    assert _verbs_for(_rules(role), "", "secrets") == {
        "create": {"*"},
        "get": {"imageward-agent-key"},
    }
    assert not any(
        "admissionregistration.k8s.io" in rule["apiGroups"]
        for rule in _rules(chart.find(all_on, "ClusterRole"))
    )


def test_cert_manager_with_an_existing_issuer() -> None:
    issuer_ref = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    manifests = chart.render({"tls": {"certManager": {"enabled": True, "issuerRef": issuer_ref}}})
    assert not chart.find_all(manifests, "Issuer")
    assert chart.find(manifests, "Certificate")["spec"]["issuerRef"] == issuer_ref


# -- monitoring objects ------------------------------------------------------------------------


def test_monitoring_objects_are_optional(
    default: list[chart.Manifest], all_on: list[chart.Manifest]
) -> None:
    assert not chart.find_all(default, "ServiceMonitor")
    assert not chart.find_all(default, "PrometheusRule")
    monitor = chart.find(all_on, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True  # keeps imageward_prepull_*'s own `namespace`
    service = chart.find(all_on, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_is_the_alerts_file() -> None:
    manifests = chart.render({"prometheusRule": {"enabled": True}})
    rendered = chart.find(manifests, "PrometheusRule")["spec"]["groups"]
    source = yaml.safe_load(chart.ALERTS.read_text())["groups"]
    for group in (*rendered, *source):
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].strip()
    assert rendered == source


def test_prometheus_rule_values(all_on: list[chart.Manifest]) -> None:
    (group,) = chart.find(all_on, "PrometheusRule")["spec"]["groups"]
    rules = {rule["alert"]: rule for rule in group["rules"]}
    latency = rules["ImagewardAdmissionLatencyNearTimeout"]["expr"]
    assert latency.rstrip().endswith("> 12")
    assert all(rule["labels"]["team"] == "platform" for rule in rules.values())
    assert rules["ImagewardWebhookErrors"]["labels"]["severity"] == "critical"

    manifests = chart.render(
        {"prometheusRule": {"enabled": True, "disabledAlerts": ["ImagewardRefusalSpike"]}}
    )
    (group,) = chart.find(manifests, "PrometheusRule")["spec"]["groups"]
    assert "ImagewardRefusalSpike" not in {rule["alert"] for rule in group["rules"]}


def test_dashboard_configmap_carries_the_dashboard_file(default: list[chart.Manifest]) -> None:
    (configmap,) = [
        m
        for m in chart.find_all(default, "ConfigMap")
        if m["metadata"]["name"].endswith("dashboard")
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["imageward.json"]) == chart.dashboard()
    off = chart.render({"dashboard": {"enabled": False}})
    assert not chart.find_all(off, "ConfigMap")


# -- CRDs: one source --------------------------------------------------------------------------


def _crd_documents(paths: list[pathlib.Path]) -> dict[str, chart.Manifest]:
    documents = {}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                documents[doc["metadata"]["name"]] = doc
    return documents


def test_chart_crds_are_the_repository_crds() -> None:
    link = chart.CHART / "crds" / "imageward"
    assert link.is_symlink() and link.resolve() == chart.CRDS.resolve()
    repository = _crd_documents(sorted(chart.CRDS.glob("*.yaml")))
    assert "imagepolicies.imageward.io" in repository
    rendered = {
        m["metadata"]["name"]: m
        for m in chart.find_all(chart.render(include_crds=True), "CustomResourceDefinition")
    }
    imageward = {name: doc for name, doc in rendered.items() if name.endswith(".imageward.io")}
    assert imageward == repository
    assert set(rendered) - set(imageward) == {
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
        *POLICY_REPORT_CRDS,
    }


POLICY_REPORT_CRDS = {"policyreports.wgpolicyk8s.io", "clusterpolicyreports.wgpolicyk8s.io"}


def test_policy_report_crds_are_installed_unless_turned_off() -> None:
    rendered = chart.find_all(chart.render(), "CustomResourceDefinition")
    crds = {m["metadata"]["name"]: m for m in rendered}
    assert set(crds) == POLICY_REPORT_CRDS  # templates, so a value can turn them off
    for crd in crds.values():
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        served = {v["name"] for v in crd["spec"]["versions"] if v["served"]}
        assert "v1alpha2" in served
    for values in (
        {"policyReports": {"installCRDs": False}},
        {"policyReports": {"enabled": False}},
    ):
        assert not chart.find_all(chart.render(values), "CustomResourceDefinition")


def test_rbac_for_scans_reports_and_exceptions(default: list[chart.Manifest]) -> None:
    rules = _rules(chart.find(default, "ClusterRole"))
    for resource in ("policyreports", "clusterpolicyreports"):
        assert _verbs_for(rules, "wgpolicyk8s.io", resource) == {
            "list": {"*"},
            "watch": {"*"},
            "create": {"*"},
            "update": {"imageward"},
            "delete": {"imageward"},
        }
    assert _verbs_for(rules, "imageward.io", "imagepolicyexceptions") == {
        "list": {"*"},
        "watch": {"*"},
    }
    assert _verbs_for(rules, "imageward.io", "imagepolicyexceptions/status") == {"patch": {"*"}}
    # No one is granted exceptions by the chart: no Role or binding names the kind
    # other than the operator's own read access.
    for manifest in default:
        if manifest["kind"] in ("Role", "ClusterRole") and manifest is not chart.find(
            default, "ClusterRole"
        ):
            assert not _verbs_for(_rules(manifest), "imageward.io", "imagepolicyexceptions")
    without = _rules(chart.find(chart.render({"policyReports": {"enabled": False}}), "ClusterRole"))
    assert not _verbs_for(without, "wgpolicyk8s.io", "policyreports")


def test_scan_values_reach_the_operator() -> None:
    values = {
        "scan": {"interval": "15m", "concurrency": 3, "registryRequestsPerMinute": 120},
        "policyReports": {"maxResults": 50},
    }
    env = chart.env_of(chart.find(chart.render(values), "Deployment"))
    assert env["IMAGEWARD_SCAN_INTERVAL"] == "15m"
    assert env["IMAGEWARD_SCAN_CONCURRENCY"] == "3"
    assert env["IMAGEWARD_SCAN_REGISTRY_REQUESTS_PER_MINUTE"] == "120"
    assert env["IMAGEWARD_REPORT_MAX_RESULTS"] == "50"
    config = settings.from_env(environ={k: v for k, v in env.items() if isinstance(v, str)})
    assert config.scan.interval == 900 and config.scan.concurrency == 3


def test_packaged_chart_holds_the_crd_files(tmp_path: pathlib.Path) -> None:
    chart.helm("package", str(chart.CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("imageward-*.tgz")
    with tarfile.open(package) as archive:
        packaged = {
            pathlib.PurePosixPath(member.name).name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive.getmembers()
            if member.name.startswith("imageward/crds/imageward/")
        }
        names = archive.getnames()
    assert packaged == {path.name: path.read_bytes() for path in chart.CRDS.glob("*.yaml")}
    for needed in (
        "imageward/crds/kopf-peerings.yaml",
        "imageward/dashboards/imageward.json",
        "imageward/alerts/imageward-rules.yaml",
        "imageward/values.schema.json",
        "imageward/policyreport-crds/wgpolicyk8s.io_policyreports.yaml",
        "imageward/policyreport-crds/wgpolicyk8s.io_clusterpolicyreports.yaml",
    ):
        assert needed in names
    assert not any(name.startswith("imageward/ci/") for name in names)


# -- the chart and the operator's settings agree -----------------------------------------------

# Set by the chart for parts of the operator still being written (PrePull images, the
# cert-manager flag); every other IMAGEWARD_* variable must be one settings.py reads.
NOT_YET_READ = {
    # Informational: with cert-manager the chart also sets IMAGEWARD_CERT_DIR, which is
    # what the operator acts on.
    "IMAGEWARD_CERT_MANAGER",
}


def _operator_environ(manifests: list[chart.Manifest]) -> dict[str, str]:
    env = chart.env_of(chart.find(manifests, "Deployment"))
    fields = {"metadata.namespace": chart.NAMESPACE, "metadata.name": "imageward-0"}
    return {
        name: value if isinstance(value, str) else fields[value["fieldRef"]["fieldPath"]]
        for name, value in env.items()
    }


@pytest.mark.parametrize("files", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_settings_read_what_the_chart_sets(files: tuple[pathlib.Path, ...]) -> None:
    environ = _operator_environ(chart.render(files=files))
    known = {"IMAGEWARD_" + suffix for suffix in settings._ENV_TABLE}
    unknown = {name for name in environ if name.startswith("IMAGEWARD_")} - known
    assert unknown <= NOT_YET_READ
    settings.from_env(environ=environ)  # raises ConfigurationError naming a bad variable


def test_replicas_drain_before_they_stop(default: list[chart.Manifest]) -> None:
    """A deleted replica answers on for 5 s, each connection closed after its next answer
    (measured on the real node: without it, reviews failed with EOF under Fail)."""
    config = settings.from_env(environ=_operator_environ(default))
    assert config.admission.shutdown_drain == 5
    grace = chart.find(default, "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert config.admission.shutdown_drain < grace
    off = chart.render({"webhook": {"shutdownDrainSeconds": 0}})
    assert settings.from_env(environ=_operator_environ(off)).admission.shutdown_drain == 0
    assert "/webhook/shutdownDrainSeconds" in chart.render_error(
        {"webhook": {"shutdownDrainSeconds": 30}}
    )


def test_the_webhook_runs_in_its_own_process_unless_the_values_say_shared(
    default: list[chart.Manifest],
) -> None:
    assert settings.from_env(environ=_operator_environ(default)).admission.process == "own"
    shared = chart.render({"webhook": {"process": "shared"}})
    assert settings.from_env(environ=_operator_environ(shared)).admission.process == "shared"
    assert "/webhook/process" in chart.render_error({"webhook": {"process": "thread"}})


def test_settings_from_the_default_chart(default: list[chart.Manifest]) -> None:
    config = settings.from_env(environ=_operator_environ(default))
    names = {m["kind"]: m["metadata"]["name"] for m in default}
    assert config.namespace == chart.NAMESPACE
    assert config.metrics_port == 8080
    assert config.admission.port == 9443
    assert config.admission.webhook_timeout == 10
    assert config.admission.deadline == 8
    assert config.admission.service == names["Service"]
    assert config.admission.validating_configuration == names["ValidatingWebhookConfiguration"]
    assert config.admission.mutating_configuration == names["MutatingWebhookConfiguration"]
    assert config.admission.tls_secret == "imageward-tls"
    assert config.admission.create_configurations is False
    assert set(config.admission.excluded_namespaces) == {"kube-system", chart.NAMESPACE}


def _key_material(manifests: list[chart.Manifest], kind: str) -> list[chart.Manifest]:
    return [m for m in chart.find_all(manifests, kind) if chart.component_of(m) == "key-material"]


def test_key_material_is_watched_only_by_the_names_listed(
    default: list[chart.Manifest], all_on: list[chart.Manifest]
) -> None:
    env = chart.env_of(chart.find(default, "Deployment"))
    assert env["IMAGEWARD_KEY_MATERIAL_REFRESH"] == "15"
    assert chart.env_of(chart.find(all_on, "Deployment"))["IMAGEWARD_KEY_MATERIAL_REFRESH"] == "30"
    assert not _key_material(default, "Role")
    roles = _key_material(all_on, "Role")
    granted = {
        (role["metadata"]["namespace"], resource, name): tuple(rule["verbs"])
        for role in roles
        for rule in _rules(role)
        for resource in rule["resources"]
        for name in rule["resourceNames"]
    }
    assert granted == {
        ("default", "secrets", "release-key"): ("get", "list", "watch"),
        ("default", "configmaps", "trusted-root"): ("get", "list", "watch"),
    }
    bindings = {b["roleRef"]["name"]: b["subjects"] for b in _key_material(all_on, "RoleBinding")}
    account = chart.find(all_on, "ServiceAccount")["metadata"]["name"]
    assert set(bindings) == {r["metadata"]["name"] for r in roles}
    assert all(s[0]["name"] == account for s in bindings.values())


def test_the_decision_memo_ttl_is_a_value() -> None:
    default = chart.render({})
    assert settings.from_env(environ=_operator_environ(default)).admission.decision_cache_ttl == 1
    off = chart.render({"webhook": {"decisionCacheTTL": 0}})
    assert settings.from_env(environ=_operator_environ(off)).admission.decision_cache_ttl == 0
    assert "/webhook/decisionCacheTTL" in chart.render_error({"webhook": {"decisionCacheTTL": -1}})
