"""Pure pieces of serving the webhook: configurations, caBundle patches, certificates,
settings from the environment."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509

from imageward import errors, settings
from imageward.admission import tls, webhooks


def test_configurations_point_at_the_handler_paths_and_exclude_namespaces() -> None:
    service = webhooks.Endpoint(service_name="imageward", service_namespace="iw")
    validating = webhooks.build_validating_configuration(
        "imageward", service, b"CA", excluded_namespaces=["kube-system", "iw"], timeout_seconds=7
    )
    hook = validating["webhooks"][0]
    assert hook["clientConfig"]["service"] == {
        "name": "imageward",
        "namespace": "iw",
        "port": 443,
        "path": "/imageward-validate",
    }
    assert hook["timeoutSeconds"] == 7 and hook["failurePolicy"] == "Fail"
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["iw", "kube-system"]
    resources = {r for rule in hook["rules"] for r in rule["resources"]}
    assert {"pods", "pods/ephemeralcontainers", "deployments", "cronjobs"} <= resources

    url = webhooks.Endpoint(url="https://127.0.0.1:9443/")
    mutating = webhooks.build_mutating_configuration(
        "imageward", url, b"CA", excluded_namespaces=[], timeout_seconds=5, failure_policy="Ignore"
    )
    hook = mutating["webhooks"][0]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/imageward-pin-digest"
    assert hook["reinvocationPolicy"] == "IfNeeded" and hook["failurePolicy"] == "Ignore"


def test_ca_bundle_patch_only_touches_stale_webhooks() -> None:
    endpoint = webhooks.Endpoint(url="https://127.0.0.1:1")
    configuration = webhooks.build_validating_configuration(
        "x", endpoint, b"OLD", excluded_namespaces=[], timeout_seconds=5
    )
    assert webhooks.build_ca_bundle_patch(configuration, b"OLD") == []
    patch = webhooks.build_ca_bundle_patch(configuration, b"NEW")
    assert patch == [
        {
            "op": "add",
            "path": "/webhooks/0/clientConfig/caBundle",
            "value": base64.b64encode(b"NEW").decode(),
        }
    ]


def test_renewal_keeps_the_ca_and_survives_a_secret_round_trip() -> None:
    material = tls.build_material(["imageward.iw.svc"], ["127.0.0.1"])
    assert not material.needs_renewal()
    later = material.not_after - tls.RENEW_BEFORE + datetime.timedelta(seconds=1)
    assert material.needs_renewal(now=later)
    renewed = tls.build_renewed(material, ["imageward.iw.svc"])
    assert renewed.ca_cert_pem == material.ca_cert_pem and renewed.cert_pem != material.cert_pem
    cert = x509.load_pem_x509_certificate(renewed.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["imageward.iw.svc"]
    assert tls.Material.from_secret_data(renewed.to_secret_data()) == renewed
    assert tls.Material.from_secret_data({"tls.crt": "x"}) is None


def test_settings_errors_name_the_variable() -> None:
    config = settings.from_env(
        environ={"IMAGEWARD_WEBHOOK_PORT": "8443", "IMAGEWARD_INSECURE_REGISTRIES": "a:5000, b"}
    )
    assert config.admission.port == 8443
    assert config.registry.insecure_registries == ("a:5000", "b")
    with pytest.raises(errors.ConfigurationError, match="IMAGEWARD_WEBHOOK_PORT='x'"):
        settings.from_env(environ={"IMAGEWARD_WEBHOOK_PORT": "x"})
    with pytest.raises(errors.ConfigurationError, match="IMAGEWARD_ADMISSION_DEADLINE"):
        settings.from_env(
            environ={"IMAGEWARD_ADMISSION_DEADLINE": "12", "IMAGEWARD_WEBHOOK_TIMEOUT": "10"}
        )
    with pytest.raises(errors.ConfigurationError, match="IMAGEWARD_WEBHOOK_FAILURE_POLICY"):
        settings.from_env(environ={"IMAGEWARD_WEBHOOK_FAILURE_POLICY": "Maybe"})
    with pytest.raises(errors.ConfigurationError, match="IMAGEWARD_SHUTDOWN_DRAIN='-1'"):
        settings.from_env(environ={"IMAGEWARD_SHUTDOWN_DRAIN": "-1"})
    with pytest.raises(errors.ConfigurationError, match="IMAGEWARD_PEERING_NAME='Not_A_Name'"):
        settings.from_env(environ={"IMAGEWARD_PEERING_NAME": "Not_A_Name"})


def test_peering_name_defaults_to_imageward_and_can_be_another() -> None:
    assert settings.from_env(environ={}).peering_name == "imageward"
    config = settings.from_env(environ={"IMAGEWARD_PEERING_NAME": "imageward-staging"})
    assert config.peering_name == "imageward-staging"
