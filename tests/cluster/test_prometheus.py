"""A real Prometheus scrapes imageward's metrics endpoint and answers PromQL on them."""

from __future__ import annotations

import pytest

from imageward import metrics
from imageward.localcluster import processes, prometheus

pytestmark = pytest.mark.cluster


def test_prometheus_scrapes_imageward_metrics() -> None:
    port = processes.free_port()
    metrics.start_http_server(port, addr="127.0.0.1")
    metrics.observe_admission("pods", "CREATE", "deny", 0.004)
    with prometheus.Prometheus([f"127.0.0.1:{port}"]) as server:
        server.wait_for_scrape()
        result = server.query(
            'sum by (decision) (imageward_admission_requests_total{resource="pods"})'
        )
        assert {r["metric"]["decision"]: float(r["value"][1]) for r in result}["deny"] >= 1
        with pytest.raises(prometheus.PrometheusError, match="parse error"):
            server.query("sum(")
