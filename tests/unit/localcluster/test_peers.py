"""The pure builders of `imageward.localcluster.peers` (no peer binary needed)."""

from __future__ import annotations

import base64
import pathlib

from cryptography import x509

from imageward import pki
from imageward.localcluster import peers


def test_override_flags_replaces_in_place_and_appends_the_rest() -> None:
    args = ["--servicePort=443", "--webhookServerPort=9443", "--v=2", "--webhookServerPort=1"]
    result = peers.override_flags(args, {"webhookServerPort": "8443", "serverIP": "127.0.0.1:8443"})
    assert result == [
        "--servicePort=443",
        "--webhookServerPort=8443",
        "--v=2",
        "--serverIP=127.0.0.1:8443",
    ]


def test_resolve_env_takes_values_and_the_downward_api_fields() -> None:
    env = [
        {"name": "INIT_CONFIG", "value": "kyverno"},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}},
    ]
    assert peers.resolve_env(env, namespace="kyverno", pod_name="p") == {
        "INIT_CONFIG": "kyverno",
        "NS": "kyverno",
        "POD": "p",
    }


def _chart() -> list[peers.Manifest]:
    return [
        {"kind": "ConfigMap", "metadata": {"name": "kyverno", "namespace": "kyverno"}},
        {
            "kind": "Deployment",
            "metadata": {"name": "kyverno-admission-controller"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "kyverno",
                                "args": ["--webhookServerPort=9443", "--metricsPort=8000"],
                                "env": [{"name": "KYVERNO_SVC", "value": "kyverno-svc"}],
                            }
                        ]
                    }
                }
            },
        },
    ]


def test_kyverno_runs_out_of_cluster_on_its_own_ports(tmp_path: pathlib.Path) -> None:
    command = peers.build_kyverno_command(
        _chart(),
        binary="/bin/kyverno",
        kubeconfig=tmp_path / "kubeconfig",
        port=1234,
        metrics_port=1235,
        runtime_metrics_port=1236,
        home=tmp_path,
    )
    assert command.argv[0] == "/bin/kyverno"
    assert "--serverIP=127.0.0.1:1234" in command.argv
    assert "--webhookServerPort=1234" in command.argv
    assert "--metricsPort=1235" in command.argv
    assert "--webhookServerPort=9443" not in command.argv
    assert command.env["KYVERNO_SVC"] == "kyverno-svc"
    assert command.env["HOME"] == str(tmp_path)
    assert [d["kind"] for d in peers.kyverno_install_objects(_chart())] == ["ConfigMap"]


def test_policy_controller_webhooks_are_what_knative_reconciles_but_by_url() -> None:
    configurations = peers.build_policy_controller_webhooks("https://127.0.0.1:9/", b"CA")
    by_name = {(c["kind"], c["metadata"]["name"]): c["webhooks"][0] for c in configurations}
    validating = by_name[("ValidatingWebhookConfiguration", "policy.sigstore.dev")]
    mutating = by_name[("MutatingWebhookConfiguration", "policy.sigstore.dev")]
    assert validating["clientConfig"] == {
        "url": "https://127.0.0.1:9/validations",
        "caBundle": base64.b64encode(b"CA").decode(),
    }
    assert mutating["clientConfig"]["url"] == "https://127.0.0.1:9/mutations"
    assert mutating["reinvocationPolicy"] == "IfNeeded"
    # Pods: the ephemeral containers subresource too, CREATE/UPDATE, sorted as knative does.
    assert validating["rules"][0] == {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["pods/ephemeralcontainers", "pods"],
    }
    groups = [
        (r["apiGroups"][0], r["apiVersions"][0], r["resources"][0]) for r in validating["rules"]
    ]
    assert groups == sorted(groups)
    assert mutating["rules"][0]["resources"] == ["pods", "pods/status"]
    expressions = validating["namespaceSelector"]["matchExpressions"]
    assert {"key": peers.POLICY_INCLUDE_LABEL, "operator": "In", "values": ["true"]} in expressions
    assert {"key": peers.KNATIVE_EXCLUDE_LABEL, "operator": "DoesNotExist"} in expressions
    cip = by_name[("ValidatingWebhookConfiguration", peers.POLICY_CIP_VALIDATING)]
    assert cip["clientConfig"]["url"] == "https://127.0.0.1:9/validating"
    assert all("DELETE" in r["operations"] for r in cip["rules"])


def test_conversion_webhook_gets_a_url_and_other_crds_stay_as_they_are() -> None:
    crd = {
        "kind": "CustomResourceDefinition",
        "spec": {
            "conversion": {
                "strategy": "Webhook",
                "webhook": {"clientConfig": {"service": {"name": "webhook"}}},
            }
        },
    }
    patched = peers.with_conversion_url(crd, "https://127.0.0.1:9/resource-conversion", b"CA")
    config = patched["spec"]["conversion"]["webhook"]["clientConfig"]
    assert config["url"] == "https://127.0.0.1:9/resource-conversion" and "service" not in config
    assert crd["spec"]["conversion"]["webhook"]["clientConfig"] == {"service": {"name": "webhook"}}
    plain = {"kind": "CustomResourceDefinition", "spec": {}}
    assert peers.with_conversion_url(plain, "https://x", b"CA") == plain


def test_knative_secret_certificate_covers_the_service_names_and_loopback() -> None:
    ca = pki.CertificateAuthority.create("test")
    secret = peers.build_knative_cert_secret(
        ca, service="webhook", namespace="cosign-system", secret="webhook-certs"
    )
    assert set(secret["data"]) == set(peers.KNATIVE_CERT_KEYS)
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["server-cert.pem"]))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "webhook.cosign-system.svc" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert base64.b64decode(secret["data"]["ca-cert.pem"]) == ca.cert_pem


def test_the_three_policies_say_the_same_thing() -> None:
    ours = peers.build_imagepolicy("p", "bench/size", "PEM", max_size="2Gi")
    assert ours["spec"]["match"]["images"] == ["**/bench/size/**"]
    assert ours["spec"]["pinDigest"] is True
    assert ours["spec"]["rules"]["maxCompressedSize"] == "2Gi"
    kyverno = peers.build_kyverno_policy("p", "bench/size", "PEM", bundle=True, max_size="2Gi")
    verify = kyverno["spec"]["rules"][0]["verifyImages"][0]
    assert verify["imageReferences"] == ["*/bench/size/*"]
    assert verify["mutateDigest"] and verify["type"] == "SigstoreBundle"
    size = kyverno["spec"]["rules"][1]["validate"]["foreach"][0]
    assert size["context"][0]["imageRegistry"]["jmesPath"] == "sum(manifest.layers[*].size)"
    assert (
        "type"
        not in peers.build_kyverno_policy("p", "x", "PEM")["spec"]["rules"][0]["verifyImages"][0]
    )
    cip = peers.build_cluster_image_policy("p", "bench/legacy", "PEM")
    assert cip["spec"]["images"] == [{"glob": "**/bench/legacy/**"}]
    assert cip["spec"]["authorities"][0]["key"]["data"] == "PEM"
