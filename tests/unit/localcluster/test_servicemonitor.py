"""The chart's ServiceMonitor translated as prometheus-operator and Kubernetes discovery
would (no cluster or Prometheus here; tests/cluster/test_chart_node.py runs the result
against the installed chart)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from imageward.localcluster import prometheus
from tests.unit.chart import chart


def _slice(
    service: str, namespace: str, port: tuple[str, int], *endpoints: tuple[str, str, bool]
) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-x1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": port[0], "port": port[1]}, {"name": "webhook", "port": 9443}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod},
            }
            for ip, pod, ready in endpoints
        ],
    }


@pytest.fixture(scope="module")
def rendered() -> list[chart.Manifest]:
    return chart.render({"serviceMonitor": {"enabled": True, "interval": "5s"}})


def test_the_charts_service_monitor_finds_the_ready_pods_of_its_service_on_the_metrics_port(
    rendered: list[chart.Manifest],
) -> None:
    monitor = chart.find(rendered, "ServiceMonitor")
    service = chart.find(rendered, "Service")
    other = json.loads(json.dumps(service))
    other["metadata"]["name"] = "someone-else"
    other["metadata"]["labels"]["app.kubernetes.io/instance"] = "another-release"
    objects = [
        service,
        other,
        _slice(
            "imageward",
            chart.NAMESPACE,
            ("metrics", 8080),
            ("10.0.0.1", "imageward-a", True),
            ("10.0.0.2", "imageward-b", False),  # not ready: listed all the same
        ),
        _slice("someone-else", chart.NAMESPACE, ("metrics", 8080), ("10.0.0.9", "x", True)),
        _slice("imageward", "elsewhere", ("metrics", 8080), ("10.0.1.1", "y", True)),
    ]

    (groups,) = prometheus.build_servicemonitor_targets(monitor, objects)

    labels = {
        "namespace": chart.NAMESPACE,
        "service": "imageward",
        "endpoint": "metrics",
        "job": "imageward",
    }
    assert groups == [
        {"targets": ["10.0.0.1:8080"], "labels": {**labels, "pod": "imageward-a"}},
        {"targets": ["10.0.0.2:8080"], "labels": {**labels, "pod": "imageward-b"}},
    ]


def test_one_scrape_job_per_endpoint_reads_its_targets_file(
    rendered: list[chart.Manifest],
) -> None:
    monitor = chart.find(rendered, "ServiceMonitor")
    (config,) = prometheus.build_servicemonitor_scrape_configs(monitor, [pathlib.Path("/t/0")])
    assert config == {
        "job_name": f"serviceMonitor/{chart.NAMESPACE}/imageward/0",
        "honor_labels": True,
        "metrics_path": "/metrics",
        "scheme": "http",
        "file_sd_configs": [{"files": ["/t/0"], "refresh_interval": "1s"}],
        "scrape_interval": "5s",
        "scrape_timeout": "10s",
    }


def test_discovery_rewrites_the_file_only_when_the_targets_change(
    rendered: list[chart.Manifest], tmp_path: pathlib.Path
) -> None:
    monitor = chart.find(rendered, "ServiceMonitor")
    service = chart.find(rendered, "Service")
    pods = [("10.0.0.1", "imageward-a", True)]
    discovery = prometheus.ServiceMonitorDiscovery(
        monitor,
        lambda namespace: [service, _slice("imageward", namespace, ("metrics", 8080), *pods)],
        tmp_path,
    )
    discovery.refresh()
    (path,) = discovery.files
    first = path.stat().st_mtime_ns
    discovery.refresh()
    assert path.stat().st_mtime_ns == first
    pods.append(("10.0.0.3", "imageward-c", True))
    discovery.refresh()
    targets = [g["targets"][0] for g in json.loads(path.read_text())]
    assert targets == ["10.0.0.1:8080", "10.0.0.3:8080"]


def test_selectors_it_cannot_translate_are_refused() -> None:
    monitor = {
        "metadata": {"name": "m", "namespace": "n"},
        "spec": {
            "selector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
            "endpoints": [{"port": "metrics"}],
        },
    }
    service = {"kind": "Service", "metadata": {"name": "s", "namespace": "n"}}
    with pytest.raises(ValueError, match="matchLabels"):
        prometheus.build_servicemonitor_targets(monitor, [service])
