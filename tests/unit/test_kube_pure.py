"""Where the operator finds the apiserver inside a pod (no cluster needed)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

# Not `imageward.main`: importing it registers every Kopf handler in this process, and a
# test that runs Kopf in-process (test_controlplane's KopfRunner) would run them too.
from imageward import kube


@pytest.mark.parametrize(
    ("environ", "server"),
    [
        (
            {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
            "https://10.96.0.1:443",
        ),
        (
            {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
            "https://[fd00::1]:6443",
        ),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, None),
        ({}, None),
    ],
)
def test_in_cluster_server_is_what_the_kubelet_gives_every_pod(
    environ: dict[str, str], server: str | None
) -> None:
    assert kube.build_in_cluster_server(environ) == server


def test_kopf_logs_in_at_that_address_not_at_a_dns_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kopf's own service-account login says https://kubernetes.default.svc, which only
    resolves with cluster DNS (the chart's pods on a node without it never ran their
    controllers); imageward's login keeps Kopf's token and CA and the kubelet's address."""
    found = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t", ca_path="/ca")

    def service_account(**_: Any) -> kopf.ConnectionInfo:
        return found

    monkeypatch.setattr(kopf, "login_with_service_account", service_account)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    login = kube.login
    info = login(settings=kopf.OperatorSettings(), logger=None)
    assert info is not None
    assert (info.server, info.token, info.ca_path) == ("https://10.96.0.1:443", "t", "/ca")

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert login(settings=kopf.OperatorSettings(), logger=None) == found
